//! The dispatcher's per-stream state is bounded: streams that end without the callback that
//! frees their state (a client gone while the router reads its body, with no `on_log`
//! exported) are dropped oldest first past `modelgate_glue::dispatch::MAX_STREAMS` (16384),
//! and the VM keeps serving.

use modelgate_abi_tests::{Action, Host, LogLevel};

const MAX_STREAMS: usize = 16384;

#[test]
fn abandoned_streams_are_dropped_oldest_first_and_the_vm_keeps_routing() {
    let mut vm = Host::load("model_router")
        .configure(r#"{"models": [{"name": "llama-3-8b", "aliases": ["llama3"]}]}"#)
        .unwrap();
    let headers = [
        (":method", "POST"),
        (":path", "/v1/chat/completions"),
        (":authority", "gw"),
        ("content-type", "application/json"),
    ];
    for _ in 0..MAX_STREAMS + 10 {
        let mut req = vm.http();
        assert_eq!(req.request_headers(&headers, false), Action::Pause);
    }
    assert!(
        vm.logged(LogLevel::Warn, "streams open in this VM"),
        "{}",
        vm.logs_text()
    );
    let mut req = vm.http();
    assert_eq!(req.request_headers(&headers, false), Action::Pause);
    assert_eq!(
        req.request_body(br#"{"model":"llama3"}"#, true),
        Action::Continue
    );
    assert_eq!(
        req.request_header("x-modelgate-model").as_deref(),
        Some("llama-3-8b")
    );
    req.finish();
}
