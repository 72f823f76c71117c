//! End-to-end test support for modelgate: starts real processes (Envoy, modelgate-sim,
//! modelgate-loader) on free loopback ports and stops them by pid; builds their Envoy
//! bootstraps ([`bootstrap`]); a model server that misbehaves on demand ([`faults`]).

pub mod bootstrap;
pub mod e2e;
pub mod faults;
pub mod prometheus;
pub use bootstrap::{shipped, stats_tags_yaml, Bootstrap, Listener, Shipped, WasmFilter};
pub use e2e::*;
pub use prometheus::{Prometheus, Target};
