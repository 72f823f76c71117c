//! What each shipped module costs in calls across the VM boundary. Envoy skips every callback
//! a module does not export, so each module must export exactly the callbacks its filter
//! uses (a new one is a VM call per request: add it here on purpose); and one request of
//! the shape `make bench` sends makes a known number of callbacks and host calls, and at
//! most a known number of wasm instructions (wasmtime's fuel) inside the module.

use std::collections::{BTreeMap, BTreeSet};

use modelgate_abi_tests::configs::{plugins, Plugin};
use modelgate_abi_tests::vm::compiled;
use modelgate_abi_tests::{module_path, CallCounts, CallOutcome, Host, HttpCall, Vm};

/// Exported by every module: what Envoy needs to load it, the root callbacks (no
/// per-request cost) and `proxy_on_context_create` (one call per request: it names the
/// stream's root, which differs between listeners that configure a module differently).
const ROOT: &[&str] = &[
    "memory",
    "_initialize",
    "proxy_abi_version_0_2_1",
    "proxy_on_memory_allocate",
    "proxy_on_context_create",
    "proxy_on_vm_start",
    "proxy_on_configure",
    "proxy_on_tick",
    "proxy_on_http_call_response",
];

/// Host calls, allocations, wasm instructions.
type Budget = (u64, u64, u64);

/// Each module's stream callbacks, and the most host calls, allocations (the host's calls
/// into the module to hand over data, each a VM call) and wasm instructions (measured plus
/// about a quarter, for compiler versions) one bench request may take.
const MODULES: &[(&str, &[&str], Budget)] = &[
    (
        "readiness_gate",
        &["proxy_on_request_headers"],
        (1, 1, 3_500),
    ),
    (
        "model_router",
        &[
            "proxy_on_request_headers",
            "proxy_on_request_body",
            "proxy_on_request_trailers",
        ],
        (7, 2, 48_000),
    ),
    (
        "load_shedder",
        &[
            "proxy_on_request_headers",
            "proxy_on_request_body",
            "proxy_on_request_trailers",
            "proxy_on_response_headers",
            "proxy_on_log",
        ],
        (3, 1, 4_500),
    ),
    (
        "ml_metrics",
        &[
            "proxy_on_request_headers",
            "proxy_on_request_body",
            "proxy_on_response_headers",
            "proxy_on_response_body",
            "proxy_on_log",
        ],
        (12, 5, 43_000),
    ),
    (
        "endpoint_picker",
        &[
            "proxy_on_request_headers",
            "proxy_on_request_body",
            "proxy_on_request_trailers",
            "proxy_on_log",
        ],
        (4, 1, 12_500),
    ),
    // The gateway's four filters in one module: every callback any of them uses, once.
    (
        "chain",
        &[
            "proxy_on_request_headers",
            "proxy_on_request_body",
            "proxy_on_request_trailers",
            "proxy_on_response_headers",
            "proxy_on_response_body",
            "proxy_on_log",
        ],
        (22, 7, 150_000),
    ),
];

fn shipped() -> impl Iterator<Item = (&'static str, &'static [&'static str], Budget)> {
    MODULES.iter().copied().filter(|(m, _, _)| {
        let there = module_path(m).exists();
        assert!(
            there || std::env::var_os("MODELGATE_REQUIRE_ALL_FILTERS").is_none(),
            "{m}.wasm missing"
        );
        there
    })
}

#[test]
fn each_module_exports_exactly_its_callbacks() {
    for (module, stream, _) in shipped() {
        let got: BTreeSet<String> = compiled(&module_path(module))
            .unwrap()
            .exports()
            .map(|e| e.name().to_string())
            .collect();
        let want: BTreeSet<String> = ROOT.iter().chain(stream).map(|s| s.to_string()).collect();
        assert_eq!(got, want, "{module}: exports");
    }
}

/// The module's configuration in `envoy/gateway.yaml` (the gate's in `envoy/sidecar.yaml`):
/// the shipped chain's, or that filter's stage of it.
fn shipped_config(module: &str) -> Plugin {
    let file = if module == "readiness_gate" {
        "sidecar.yaml"
    } else {
        "gateway.yaml"
    };
    plugins()
        .into_iter()
        .find(|p| p.module == module && p.file.ends_with(format!("envoy/{file}")))
        .unwrap_or_else(|| panic!("{module}: no config in envoy/{file}"))
}

fn healthy(call: &HttpCall) -> CallOutcome {
    match call.path().as_str() {
        "/v1/models" => CallOutcome::json(200, r#"{"object":"list","data":[{"id":"sim-model"}]}"#),
        "/ready" => CallOutcome::json(200, r#"{"state":"ready","revision":"r1"}"#),
        "/metrics" => CallOutcome::text(200, "vllm:num_requests_waiting 0\n"),
        _ => CallOutcome::status(200),
    }
}

/// One bench request through `vm`: a 1 KiB chat completion (with the headers the router
/// sets before the shedder and picker), its JSON answer, the stream's end.
fn bench_request(vm: &mut Vm) -> (CallCounts, BTreeMap<String, u64>) {
    let body = format!(
        r#"{{"model":"llama3","messages":[{{"role":"user","content":"{}"}}],"max_tokens":16}}"#,
        "lorem ipsum ".repeat(78)
    );
    let answer = br#"{"id":"c","object":"chat.completion","model":"llama-3-8b","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":1,"total_tokens":10}}"#;
    let len = body.len().to_string();
    let before = (vm.call_counts(), vm.host_calls());
    let mut req = vm.http();
    req.request_headers(
        &[
            (":method", "POST"),
            (":path", "/v1/chat/completions"),
            (":authority", "gw"),
            ("content-type", "application/json"),
            ("content-length", &len),
            ("x-modelgate-model", "llama-3-8b"),
            ("x-modelgate-criticality", "critical"),
        ],
        false,
    );
    req.request_body(body.as_bytes(), true);
    req.response_headers(
        &[
            (":status", "200"),
            ("content-type", "application/json"),
            ("content-length", &answer.len().to_string()),
        ],
        false,
    );
    req.response_body(answer, true);
    req.finish();
    let mut by_name = vm.host_calls();
    for (name, n) in before.1 {
        if let Some(m) = by_name.get_mut(&name) {
            *m -= n;
        }
    }
    by_name.retain(|_, n| *n > 0);
    (vm.call_counts() - before.0, by_name)
}

#[test]
fn one_bench_request_makes_few_calls_across_the_vm_boundary() {
    let mut over = Vec::new();
    for (module, stream, (calls, allocations, ops)) in shipped() {
        let p = shipped_config(module);
        let mut vm = Host::new()
            .vm(module)
            .root_id(&p.root_id)
            .vm_id(&p.vm_id)
            .allow_on_headers_stop_iteration(p.allow_stop)
            .configure(&p.configuration)
            .unwrap_or_else(|e| panic!("{module}: {e:#}"));
        if vm.tick_period_ms() > 0 {
            vm.host().advance_ms(1000);
            vm.tick();
            vm.answer_all(healthy);
            vm.tick();
        }
        bench_request(&mut vm); // first use: lazily defined metrics, caches
        let (c, by_name) = bench_request(&mut vm);
        eprintln!(
            "{module}: {} callbacks, {} host calls, {} allocations, {} wasm instructions per \
             request: {by_name:?}",
            c.callbacks, c.host_calls, c.allocations, c.wasm_ops
        );
        // Context create, then each exported callback but trailers (the request has none).
        let callbacks = 1 + stream.iter().filter(|c| !c.ends_with("trailers")).count() as u64;
        if c.callbacks != callbacks
            || c.host_calls > calls
            || c.allocations > allocations
            || c.wasm_ops > ops
        {
            over.push(format!(
                "{module}: {c:?}, want {callbacks} callbacks, at most {calls} host calls, \
                 {allocations} allocations and {ops} wasm instructions"
            ));
        }
    }
    assert!(over.is_empty(), "{over:#?}");
}
