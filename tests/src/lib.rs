//! Test support for modelgate: `e2e` starts real processes (Envoy, modelgate-sim) on
//! free loopback ports and stops them by pid; `abi` is a proxy-wasm host on wasmtime.

pub mod e2e;
