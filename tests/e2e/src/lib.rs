//! End-to-end test support for modelgate: starts real processes (Envoy, modelgate-sim,
//! modelgate-loader) on free loopback ports and stops them by pid.

pub mod e2e;
pub use e2e::*;
