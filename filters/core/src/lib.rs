//! modelgate-core: the logic of every modelgate filter, free of proxy-wasm so it is
//! unit-tested natively (and on wasm32). The cdylibs under `filters/` only translate
//! between proxy-wasm calls and these types.

pub mod affinity;
pub mod chain;
pub mod config;
pub mod error;
pub mod flow;
pub mod json_scan;
pub mod lease;
pub mod metrics;
pub mod orca;
pub mod path;
pub mod picker;
pub mod prng;
pub mod prom;
pub mod readiness;
pub mod router;
pub mod scrape;
pub mod shed;
pub mod shed_monitor;
pub mod shed_tables;
pub mod sse;
pub mod state;
pub mod usage;
pub mod vocab;
pub mod wire;
