//! ml_metrics filter: proxy-wasm glue only; the policy lives in modelgate-core.
