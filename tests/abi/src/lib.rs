//! modelgate-abi-tests: a proxy-wasm host on wasmtime that runs the shipped `.wasm` modules
//! through the ABI the way Envoy 1.40 does, for fast, deterministic filter tests.
//!
//! ```no_run
//! use modelgate_abi_tests::{Action, Host};
//! let mut vm = Host::load("readiness_gate").configure(r#"{"cluster":"vllm"}"#).unwrap();
//! let mut req = vm.http();
//! assert_eq!(req.request_headers(&[(":path", "/v1/models")], true), Action::Pause);
//! ```
//!
//! Layout: [`host`] is the proxy shared by VMs (shared data, metrics, clock), [`vm`] one
//! VM and its root context, [`http`] one HTTP stream, [`imports`] the host functions and
//! the list of what Envoy provides, [`wire`] the ABI's byte formats.

pub mod configs;
pub mod host;
pub mod http;
pub mod imports;
pub mod vm;
pub mod wire;

pub use host::{Host, Metric, MetricKind};
pub use http::{Action, HttpStream, LocalReply};
pub use vm::{
    dist_dir, module_path, CallCounts, CallOutcome, HttpCall, LogLevel, LogLine, Vm, VmBuilder,
};

/// The request headers of a chat completion POST with a JSON body of `len` bytes.
pub fn chat_post_headers(len: usize) -> Vec<(&'static str, String)> {
    vec![
        (":method", "POST".into()),
        (":path", "/v1/chat/completions".into()),
        (":authority", "gw".into()),
        ("content-type", "application/json".into()),
        ("content-length", len.to_string()),
    ]
}

/// Headers as the `&str` pairs the stream calls take.
pub fn header_refs<'a>(h: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    h.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Every way to cut a body of `len` bytes into two chunks (cut at 0..=len), for tests of
/// streaming parsers. Add `[a, b]` pairs with [`two_cuts`] when three chunks matter.
pub fn one_cut(len: usize) -> impl Iterator<Item = Vec<usize>> {
    (0..=len).map(|c| vec![c])
}

/// Every way to cut a body into three chunks (quadratic: keep bodies short).
pub fn two_cuts(len: usize) -> impl Iterator<Item = Vec<usize>> {
    (0..=len).flat_map(move |a| (a..=len).map(move |b| vec![a, b]))
}

/// Problems that would stop Envoy 1.40 from loading the module at `path` (empty: loads).
pub fn envoy_load_problems(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    Ok(imports::envoy_load_problems(&vm::compiled(path)?))
}
