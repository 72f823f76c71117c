//! model_router filter: proxy-wasm glue only; the policy lives in modelgate-core.
