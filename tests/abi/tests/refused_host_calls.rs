//! Envoy may answer a host call with an error status instead of doing it, and the SDK's own
//! wrappers panic on such a status (a trap that kills the VM for every later request). For
//! every shipped plugin configuration and every host call a filter makes, the host refuses
//! that call while the VM configures, ticks, polls and serves requests. The VM must not trap,
//! no request may be left hanging (each is forwarded or answered), and once the host answers
//! again the VM serves requests exactly as a VM that never saw a refusal.

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};

use modelgate_abi_tests::configs::{built_plugins, Plugin};
use modelgate_abi_tests::{Action, CallOutcome, Host, HttpCall, Vm};

// Envoy's WasmResult codes.
const NOT_FOUND: i32 = 1;
const BAD_ARGUMENT: i32 = 2;
const INTERNAL_FAILURE: i32 = 10;

/// Each call with the status Envoy answers when it refuses it.
const REFUSED: &[(&str, i32)] = &[
    ("proxy_get_header_map_value", BAD_ARGUMENT),
    ("proxy_replace_header_map_value", BAD_ARGUMENT),
    ("proxy_remove_header_map_value", BAD_ARGUMENT),
    ("proxy_get_buffer_bytes", NOT_FOUND),
    ("proxy_set_buffer_bytes", BAD_ARGUMENT),
    ("proxy_send_local_response", INTERNAL_FAILURE),
    ("proxy_define_metric", BAD_ARGUMENT),
    ("proxy_increment_metric", NOT_FOUND),
    ("proxy_record_metric", NOT_FOUND),
    ("proxy_get_shared_data", INTERNAL_FAILURE),
    ("proxy_set_shared_data", INTERNAL_FAILURE),
    ("proxy_http_call", INTERNAL_FAILURE),
    ("proxy_get_property", INTERNAL_FAILURE),
    ("proxy_set_effective_context", BAD_ARGUMENT),
    ("proxy_continue_stream", NOT_FOUND),
    ("proxy_set_tick_period_milliseconds", INTERNAL_FAILURE),
];

/// Calls without which a filter cannot start: refused while configuring, the configuration
/// is rejected (Envoy keeps the previous one); these are then refused only after it.
const NEEDED_TO_CONFIGURE: &[&str] = &[
    "proxy_get_buffer_bytes",
    "proxy_set_tick_period_milliseconds",
];

const CHAT: &[(&str, &str)] = &[
    (":method", "POST"),
    (":path", "/v1/chat/completions"),
    (":authority", "modelgate"),
    ("content-type", "application/json"),
    ("x-modelgate-criticality", "sheddable"),
];
const CHAT_BODY: &[u8] =
    br#"{"model":"sim-model","messages":[{"role":"user","content":"hello there"}],"stream":true}"#;
const QWEN_BODY: &[u8] = br#"{"model":"qwen","messages":[{"role":"user","content":"hi"}]}"#;
const MODELS: &[(&str, &str)] = &[
    (":method", "GET"),
    (":path", "/v1/models"),
    (":authority", "modelgate"),
];

type Headers = &'static [(&'static str, &'static str)];

/// The requests of one round: a chat for the sidecars' model, one the gateway routes, a GET.
const CASES: [(&str, Headers, Option<&[u8]>); 3] = [
    ("chat", CHAT, Some(CHAT_BODY)),
    ("qwen", CHAT, Some(QWEN_BODY)),
    ("models", MODELS, None),
];

/// The same answer to every poll for every VM, by path.
fn answer(call: &HttpCall) -> CallOutcome {
    let path = call.path();
    if path.starts_with("/v1/models") {
        CallOutcome::json(200, r#"{"object":"list","data":[{"id":"sim-model"}]}"#)
    } else if path.starts_with("/metrics") {
        CallOutcome::text(
            200,
            "vllm:num_requests_running{model_name=\"sim-model\"} 1\nvllm:num_requests_waiting{model_name=\"sim-model\"} 0\nvllm:gpu_cache_usage_perc{model_name=\"sim-model\"} 0.1\n",
        )
    } else {
        CallOutcome::json(200, r#"{"status":"ready","ready":true}"#)
    }
}

/// Ticks twice with the polls answered, a second apart.
fn poll(vm: &mut Vm) {
    if vm.tick_period_ms() == 0 {
        return;
    }
    for _ in 0..2 {
        vm.host().advance_ms(1_000);
        vm.tick();
        vm.answer_all(answer);
    }
}

/// One request through the VM; what the client and the upstream saw. `hung` when the
/// request was neither forwarded nor answered.
fn request(vm: &mut Vm, headers: &[(&str, &str)], body: Option<&[u8]>) -> (String, bool) {
    let mut req = vm.http();
    let mut actions = vec![req.request_headers(headers, body.is_none())];
    if let Some(b) = body {
        actions.push(req.request_body(b, true));
    }
    actions.push(req.response_headers(
        &[
            (":status", "200"),
            ("content-type", "text/event-stream"),
            ("endpoint-load-metrics", "TEXT application_utilization=0.5"),
        ],
        false,
    ));
    actions.push(req.response_body(
        b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: {\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\ndata: [DONE]\n\n",
        true,
    ));
    let reply = req.local_reply();
    let hung = reply.is_none() && !req.request_forwarded();
    let routing: Vec<_> = req
        .request_headers_now()
        .into_iter()
        .filter(|(k, _)| k.starts_with("x-modelgate") || k.starts_with("x-gateway"))
        .collect();
    let orca = req.response_header("endpoint-load-metrics");
    let forwarded = req.forwarded_request_body().len();
    req.finish();
    let reply = reply.map(|r| (r.status, r.body_text()));
    let pauses = actions.iter().filter(|a| **a == Action::Pause).count();
    (
        format!("{reply:?} {routing:?} {orca:?} body {forwarded} pauses {pauses}"),
        hung,
    )
}

/// The traffic of one round: what each request saw, and the requests left hanging.
fn traffic(vm: &mut Vm) -> (Vec<String>, Vec<&'static str>) {
    let mut seen = Vec::new();
    let mut hung = Vec::new();
    for (name, headers, body) in CASES {
        let (s, h) = request(vm, headers, body);
        seen.push(format!("{name}: {s}"));
        if h {
            hung.push(name);
        }
    }
    (seen, hung)
}

fn start(p: &Plugin, refused: Option<(&str, i32)>) -> anyhow::Result<Vm> {
    let mut b = Host::new()
        .vm(&p.module)
        .root_id(&p.root_id)
        .vm_id(&p.vm_id)
        .allow_on_headers_stop_iteration(p.allow_stop);
    if let Some((call, status)) = refused {
        b = b.host_call_status(call, status);
    }
    b.configure(&p.configuration)
}

/// Runs `p` with `call` refused, then answered again; `Err` says what went wrong.
fn run(p: &Plugin, call: &str, status: i32) -> Result<(), String> {
    let mut control = start(p, None).map_err(|e| format!("control VM: {e}"))?;
    let mut vm = match start(p, Some((call, status))) {
        Ok(vm) => vm,
        Err(_) if NEEDED_TO_CONFIGURE.contains(&call) => {
            let mut vm = start(p, None).map_err(|e| e.to_string())?;
            vm.refuse(call, status);
            vm
        }
        Err(e) => return Err(format!("configuration rejected: {e}")),
    };
    // Refused: the VM polls and serves; nothing may hang.
    poll(&mut vm);
    let (_, hung) = traffic(&mut vm);
    if !hung.is_empty() {
        return Err(format!("requests left hanging: {hung:?}"));
    }
    // Answered again: the same as a VM that never saw a refusal, after the same steps.
    vm.allow(call);
    poll(&mut control);
    traffic(&mut control);
    // What the refusal changed in the traffic (e.g. a chain's gate that could not poll
    // refused requests its load shedder would have counted) lives on in ORCA's request
    // rate, a moving average: both VMs idle past it (30 s of polls), then serve one round
    // the same way, so the compared round shows what each counts after the refusal.
    for v in [&mut vm, &mut control] {
        for _ in 0..15 {
            poll(v);
        }
        let (_, hung) = traffic(v);
        if !hung.is_empty() {
            return Err(format!("requests hang after the refusal: {hung:?}"));
        }
        poll(v);
    }
    let (after, hung) = traffic(&mut vm);
    let (want, _) = traffic(&mut control);
    if !hung.is_empty() {
        return Err(format!("requests hang after the refusal: {hung:?}"));
    }
    if after != want {
        return Err(format!(
            "serves differently after the refusal:\n    got  {after:?}\n    want {want:?}"
        ));
    }
    Ok(())
}

#[test]
fn no_filter_traps_or_hangs_when_the_host_refuses_a_call() {
    let configs: Vec<Plugin> = built_plugins()
        .into_iter()
        // Templates whose sample values leave a field unset are not configurations.
        .filter(|p| start(p, None).is_ok())
        .collect();
    let modules: BTreeSet<&str> = configs.iter().map(|p| p.module.as_str()).collect();
    assert!(
        modules.len() >= 5,
        "every filter needs a shipped configuration; found {modules:?}"
    );
    let mut failures = Vec::new();
    // Traps are collected, not printed one by one.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for p in &configs {
        for &(call, status) in REFUSED {
            let outcome = catch_unwind(AssertUnwindSafe(|| run(p, call, status)));
            let why = match outcome {
                Ok(Ok(())) => continue,
                Ok(Err(why)) => why,
                Err(panic) => panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
                    .lines()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join(" | "),
            };
            failures.push(format!(
                "{} ({}) with {call} refused: {why}",
                p.module,
                p.file.file_name().unwrap_or_default().to_string_lossy(),
            ));
        }
    }
    std::panic::set_hook(default_hook);
    assert!(
        failures.is_empty(),
        "{} of {} runs failed:\n{}",
        failures.len(),
        configs.len() * REFUSED.len(),
        failures.join("\n")
    );
}
