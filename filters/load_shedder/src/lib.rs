//! load_shedder filter: proxy-wasm glue only; the policy lives in modelgate-core.
