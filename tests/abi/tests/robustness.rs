//! No shipped module traps on hostile or broken input, whatever its configuration: every
//! plugin configuration in `envoy/*.yaml` meets non-UTF-8 header values, broken JSON and
//! SSE bodies cut into single bytes, clients that go away, and polls that reset, time out
//! or answer garbage. A trap kills the VM for every later request on that worker, so each
//! scenario that traps is listed with the module's message.

use std::panic::{catch_unwind, AssertUnwindSafe};

use modelgate_abi_tests::configs::built_plugins;
use modelgate_abi_tests::{CallOutcome, Host, Vm};

type Scenario = (&'static str, fn(&mut Vm));

const JSON_POST: &[(&str, &str)] = &[
    (":method", "POST"),
    (":path", "/v1/chat/completions"),
    (":authority", "modelgate"),
    ("content-type", "application/json"),
];

fn non_utf8_request_headers(vm: &mut Vm) {
    let mut req = vm.http();
    req.request_headers_bytes(
        &[
            (":method", b"POST"),
            (":path", b"/v1/chat/completions?x=\xff\xfe"),
            (":authority", b"h\xe9"),
            ("content-type", b"application/json; charset=\xff"),
            ("x-modelgate-criticality", b"\xc3\x28"),
            ("x-modelgate-model", b"\xf0\x28\x8c\x28"),
        ],
        false,
    );
    req.request_body(br#"{"model":"sim-model","messages":[]}"#, true);
    req.response_headers(
        &[(":status", "200"), ("content-type", "application/json")],
        false,
    );
    req.response_body(b"{}", true);
    req.finish();
}

fn non_utf8_response_headers(vm: &mut Vm) {
    let mut req = vm.http();
    req.request_headers(JSON_POST, false);
    req.request_body(br#"{"model":"sim-model","messages":[]}"#, true);
    req.response_headers_bytes(
        &[
            (":status", b"200"),
            ("content-type", b"text/event-stream\xff"),
            ("x-modelgate-shed", b"\xff"),
            ("x-modelgate-gated", b"\xfe"),
            (
                "endpoint-load-metrics",
                b"TEXT application_utilization=\xff",
            ),
        ],
        false,
    );
    req.response_body(b"data: \xff\xfe\n\n", true);
    req.finish();
}

fn odd_statuses(vm: &mut Vm) {
    for status in ["abc", "", "99999", "429", "503"] {
        let mut req = vm.http();
        req.request_headers(JSON_POST, false);
        req.request_body(br#"{"model":"sim-model"}"#, true);
        req.response_headers(&[(":status", status)], true);
        req.finish();
    }
}

fn broken_json_in_single_bytes(vm: &mut Vm) {
    for body in [
        &br#"{"model":"sim-model","messages":[{"content":"unterminated"#[..],
        b"\xff\xfe{\"model\":",
        br#"{"model":{"nested":["model"]},"model":"x"}"#,
        b"",
        br#"[1,2,3]"#,
    ] {
        let mut req = vm.http();
        req.request_headers(JSON_POST, false);
        req.request_body_chunks(body, 1);
        req.response_headers(
            &[(":status", "400"), ("content-type", "application/json")],
            false,
        );
        req.response_body_chunks(br#"{"error":{"message":"bad"}}"#, 1);
        req.finish();
    }
}

fn garbage_sse_in_single_bytes(vm: &mut Vm) {
    let mut req = vm.http();
    req.request_headers(JSON_POST, false);
    req.request_body(br#"{"model":"sim-model","stream":true}"#, true);
    req.response_headers(
        &[(":status", "200"), ("content-type", "text/event-stream")],
        false,
    );
    let sse = b"data: {\"usage\":{\"prompt_tokens\":-1,\"completion_tokens\":1e99}}\n\ndata: {not json\n\n: comment\n\ndata: [DONE]\n\ndata: late\n\n\xff";
    req.response_body_chunks(sse, 1);
    req.finish();
}

fn client_goes_away(vm: &mut Vm) {
    // Headers only, then the stream ends (no body, no response).
    let mut req = vm.http();
    req.request_headers(JSON_POST, false);
    req.finish();
    // Half a body.
    let mut req = vm.http();
    req.request_headers(JSON_POST, false);
    req.request_body(br#"{"model":"sim"#, false);
    req.finish();
}

fn trailers(vm: &mut Vm) {
    let mut req = vm.http();
    req.request_headers(JSON_POST, false);
    req.request_body(br#"{"model":"sim-model"}"#, false);
    req.request_trailers(&[("x-trailer", "1")]);
    req.response_headers(&[(":status", "200")], false);
    req.response_body(b"{}", false);
    req.response_trailers(&[("grpc-status", "0")]);
    req.finish();
}

fn polls_that_fail(vm: &mut Vm) {
    if vm.tick_period_ms() == 0 {
        return;
    }
    let answers: [fn() -> CallOutcome; 6] = [
        || CallOutcome::Reset,
        CallOutcome::timeout,
        CallOutcome::connect_failure,
        || CallOutcome::text(200, "\u{fffd}garbage\nvllm:num_requests_waiting{ NaN\n"),
        || CallOutcome::Response {
            status: 200,
            headers: vec![("content-type".into(), b"\xff".to_vec())],
            body: vec![0xff, 0xfe, 0x00, 0x80],
            trailers: vec![],
        },
        || CallOutcome::status(200),
    ];
    for answer in answers {
        vm.host().advance_ms(60_000);
        vm.tick();
        vm.answer_all(|_| answer());
        vm.tick();
    }
}

const SCENARIOS: &[Scenario] = &[
    ("non-UTF-8 request headers", non_utf8_request_headers),
    ("non-UTF-8 response headers", non_utf8_response_headers),
    ("odd :status values", odd_statuses),
    (
        "broken JSON bodies, 1-byte chunks",
        broken_json_in_single_bytes,
    ),
    ("garbage SSE, 1-byte chunks", garbage_sse_in_single_bytes),
    ("client goes away", client_goes_away),
    ("trailers", trailers),
    ("polls reset, time out, answer garbage", polls_that_fail),
];

fn first_lines(msg: &str) -> String {
    msg.lines()
        .filter(|l| !l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .take(4)
        .collect::<Vec<_>>()
        .join(" | ")
}

#[test]
fn no_shipped_module_traps_on_hostile_input() {
    let configs = built_plugins();
    assert!(
        !configs.is_empty(),
        "no shipped module with a shipped configuration"
    );
    let mut traps = Vec::new();
    // Traps are collected, not printed one by one.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for p in &configs {
        for (name, scenario) in SCENARIOS {
            let host = Host::new();
            let vm = host
                .vm(&p.module)
                .root_id(&p.root_id)
                .vm_id(&p.vm_id)
                .configure(&p.configuration);
            let Ok(mut vm) = vm else { continue };
            // A first tick, as Envoy's timer fires soon after configure.
            if vm.tick_period_ms() > 0 {
                vm.tick();
            }
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| scenario(&mut vm))) {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                traps.push(format!(
                    "{} ({}) — {name}: {}",
                    p.module,
                    p.file.file_name().unwrap_or_default().to_string_lossy(),
                    first_lines(&msg)
                ));
            }
        }
    }
    std::panic::set_hook(default_hook);
    traps.sort();
    traps.dedup();
    assert!(traps.is_empty(), "modules trapped:\n{}", traps.join("\n"));
}
