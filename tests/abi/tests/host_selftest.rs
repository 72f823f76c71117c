//! The host's own tests, on a small hand-written module: each checks one piece of Envoy
//! behaviour the filter tests rely on.

use modelgate_abi_tests::wire::{encode_pairs, pairs_from};
use modelgate_abi_tests::{Action, Host, LogLevel, Vm};

fn wat_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:02x}")).collect()
}

/// A module exercising the host calls; `set_mode` picks what request headers answer
/// (0 Continue, 1 Pause, 2 local reply).
fn test_module() -> String {
    let call_headers = encode_pairs(&pairs_from(&[(":method", "GET"), (":path", "/health")]));
    let good_call = encode_pairs(&pairs_from(&[
        (":method", "GET"),
        (":path", "/auth"),
        (":authority", "auth"),
    ]));
    let reply_headers = encode_pairs(&pairs_from(&[("x-why", "test")]));
    format!(
        r#"(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs" (func $pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $hval (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response" (func $reply (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $buf (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_shared_data" (func $sget (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data" (func $sset (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_http_call" (func $call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_tick_period_milliseconds" (func $tick (param i32) (result i32)))
  (import "env" "proxy_register_shared_queue" (func $qreg (param i32 i32 i32) (result i32)))
  (import "env" "proxy_enqueue_shared_queue" (func $qpush (param i32 i32 i32) (result i32)))
  (import "env" "proxy_dequeue_shared_queue" (func $qpop (param i32 i32 i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $effective (param i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fdw (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 8192))
  (global $mode (mut i32) (i32.const 0))
  (global $waiting (mut i32) (i32.const 0))
  (data (i32.const 100) "boom: the module panicked")
  (data (i32.const 200) ":path")
  (data (i32.const 300) "k")
  (data (i32.const 310) "v1")
  (data (i32.const 400) "denied")
  (data (i32.const 500) "{call_headers}")
  (data (i32.const 700) "cluster")
  (data (i32.const 800) "{reply_headers}")
  (data (i32.const 1000) "\f0\03\00\00\0d\00\00\00hello stderr\n")
  (data (i32.const 1100) "q")
  (data (i32.const 1110) "item")
  (data (i32.const 1200) "{good_call}")
  (func (export "_initialize"))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (local.get $p))
  (func $digit (param $s i32)
    (i32.store8 (i32.const 16) (i32.add (i32.const 48) (local.get $s)))
    (drop (call $log (i32.const 2) (i32.const 16) (i32.const 1))))
  (func $log_out
    (drop (call $log (i32.const 2) (i32.load (i32.const 0)) (i32.load (i32.const 4)))))
  (func (export "set_mode") (param $m i32) (result i32) (global.set $mode (local.get $m)) (i32.const 0))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $tick (i32.const 1000))) (i32.const 1))
  (func (export "proxy_on_tick") (param i32)
    (drop (call $log (i32.const 5) (i32.const 100) (i32.const 25)))
    unreachable)
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $pairs (i32.const 0) (i32.const 0) (i32.const 4)))
    (call $log_out)
    (if (i32.eq (global.get $mode) (i32.const 3))
      (then
        (global.set $waiting (local.get 0))
        (drop (call $call (i32.const 700) (i32.const 7) (i32.const 1200) (i32.const {good_len})
                          (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 500) (i32.const 40)))
        (return (i32.const 1))))
    (if (i32.eq (global.get $mode) (i32.const 2))
      (then
        (drop (call $reply (i32.const 403) (i32.const 0) (i32.const 0) (i32.const 400) (i32.const 6)
                           (i32.const 800) (i32.const {reply_len}) (i32.const -1)))
        (return (i32.const 0))))
    (global.get $mode))
  (func (export "proxy_on_request_body") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (call $digit (call $hval (i32.const 0) (i32.const 200) (i32.const 5) (i32.const 0) (i32.const 4)))
    (i32.store (i32.const 0) (i32.const 0)) (i32.store (i32.const 4) (i32.const 0))
    (drop (call $buf (i32.const 0) (i32.const 0) (local.get $size) (i32.const 0) (i32.const 4)))
    (call $log_out)
    (i32.eqz (local.get $eos)))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $pairs (i32.const 2) (i32.const 0) (i32.const 4)))
    (call $log_out)
    (i32.const 0))
  (func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32)
    (drop (call $effective (global.get $waiting)))
    (drop (call $continue (i32.const 0))))
  (func (export "queue_register") (result i32)
    (call $qreg (i32.const 1100) (i32.const 1) (i32.const 32)))
  (func (export "queue_push") (result i32)
    (call $qpush (i32.load (i32.const 32)) (i32.const 1110) (i32.const 4)))
  (func (export "proxy_on_queue_ready") (param i32 i32)
    (drop (call $qpop (local.get 1) (i32.const 0) (i32.const 4)))
    (call $log_out))
  (func (export "cas_read") (result i32)
    (call $sget (i32.const 300) (i32.const 1) (i32.const 0) (i32.const 4) (i32.const 8)))
  (func (export "cas_write") (result i32)
    (call $sset (i32.const 300) (i32.const 1) (i32.const 310) (i32.const 2) (i32.load (i32.const 8))))
  (func (export "clock") (param $id i32) (result i32)
    (call $clock (local.get $id) (i64.const 0) (i32.const 24)))
  (func (export "clock_ms") (result i32)
    (i32.wrap_i64 (i64.div_u (i64.load (i32.const 24)) (i64.const 1000000000))))
  (func (export "stderr") (result i32)
    (call $fdw (i32.const 2) (i32.const 1000) (i32.const 1) (i32.const 20)))
  (func (export "bad_call") (result i32)
    (call $call (i32.const 700) (i32.const 7) (i32.const 500) (i32.const {call_len})
                (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1000) (i32.const 40)))
)"#,
        call_headers = wat_bytes(&call_headers),
        call_len = call_headers.len(),
        good_call = wat_bytes(&good_call),
        good_len = good_call.len(),
        reply_headers = wat_bytes(&reply_headers),
        reply_len = reply_headers.len(),
    )
}

fn vm(host: &Host) -> Vm {
    host.vm_from_wat(&test_module()).configure("{}").unwrap()
}

fn last_log(vm: &Vm) -> String {
    vm.logs().last().unwrap().message.clone()
}

#[test]
fn header_pairs_are_serialised_like_envoy() {
    let mut vm = vm(&Host::new());
    let headers = [
        (":method", "POST"),
        (":path", "/v1/chat"),
        ("X-Mixed", "Case"),
    ];
    vm.http().request_headers(&headers, false);
    let want = encode_pairs(&pairs_from(&headers));
    assert_eq!(last_log(&vm).as_bytes(), want.as_slice());
    assert!(String::from_utf8_lossy(&want).contains("x-mixed"));
}

#[test]
#[should_panic(expected = "boom: the module panicked")]
fn a_trap_fails_the_test_with_the_module_message() {
    let mut vm = vm(&Host::new());
    vm.tick();
}

#[test]
fn trap_report_names_the_callback_and_keeps_the_vm_dead() {
    let mut vm = vm(&Host::new());
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| vm.tick())).unwrap_err();
    let msg = err.downcast_ref::<String>().unwrap();
    assert!(msg.contains("proxy_on_tick"), "{msg}");
    assert!(msg.contains("[Critical] boom"), "{msg}");
    let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        vm.http();
    }))
    .unwrap_err();
    assert!(again
        .downcast_ref::<String>()
        .unwrap()
        .contains("dead after an earlier trap"));
}

#[test]
fn body_is_buffered_across_pause_and_forwarded_on_continue() {
    let mut vm = vm(&Host::new());
    vm.call_export("set_mode", &[1]);
    let mut req = vm.http();
    assert_eq!(
        req.request_headers(&[(":path", "/x")], false),
        Action::Pause
    );
    assert_eq!(req.request_body(b"ab", false), Action::Pause);
    assert_eq!(req.request_body(b"cd", false), Action::Pause);
    assert_eq!(req.request_body(b"ef", true), Action::Continue);
    assert_eq!(req.forwarded_request_body(), b"abcdef");
    let logs: Vec<String> = vm.logs().into_iter().map(|l| l.message).collect();
    // Each body call first reports get_header_map_value's status (0: headers readable).
    assert_eq!(&logs[1..], &["0", "ab", "0", "abcd", "0", "abcdef"]);
}

#[test]
fn request_headers_are_gone_once_headers_continued() {
    let mut vm = vm(&Host::new());
    let mut req = vm.http();
    assert_eq!(
        req.request_headers(&[(":path", "/x")], false),
        Action::Continue
    );
    req.request_body(b"z", true);
    // Envoy: BadArgument (2), which proxy-wasm's get_http_request_header turns into a panic.
    assert!(vm.logs().iter().any(|l| l.message == "2"));
}

#[test]
fn local_reply_is_sent_after_the_callback_and_seen_by_response_headers() {
    let mut vm = vm(&Host::new());
    vm.call_export("set_mode", &[2]);
    let mut req = vm.http();
    req.request_headers(&[(":path", "/x")], false);
    let reply = req.local_reply().expect("local reply");
    assert_eq!(reply.status, 403);
    assert_eq!(reply.body_text(), "denied");
    assert_eq!(reply.header("x-why").as_deref(), Some("test"));
    assert_eq!(reply.header("content-type").as_deref(), Some("text/plain"));
    assert_eq!(reply.header("content-length").as_deref(), Some("6"));
    assert!(
        !req.request_forwarded(),
        "send_local_response stops the iteration"
    );
    assert_eq!(req.request_body(b"late", true), Action::NotCalled);
    // The filter's on_response_headers saw the reply's headers.
    assert!(String::from_utf8_lossy(last_log(&vm).as_bytes()).contains("403"));
}

#[test]
fn shared_data_cas_is_shared_between_vms() {
    let host = Host::new();
    let mut a = vm(&host);
    let mut b = vm(&host);
    assert_eq!(
        a.call_export("cas_read", &[]),
        Some(1),
        "absent key: NotFound"
    );
    assert_eq!(a.call_export("cas_write", &[]), Some(0));
    assert_eq!(a.call_export("cas_read", &[]), Some(0));
    assert_eq!(b.call_export("cas_read", &[]), Some(0));
    assert_eq!(
        a.call_export("cas_write", &[]),
        Some(0),
        "A's CAS is current"
    );
    assert_eq!(
        b.call_export("cas_write", &[]),
        Some(8),
        "B's CAS is stale: CasMismatch"
    );
    assert_eq!(host.shared_text("modelgate", "k").as_deref(), Some("v1"));
    // Another vm_id has its own namespace.
    let mut c = host
        .vm_from_wat(&test_module())
        .vm_id("other")
        .configure("{}")
        .unwrap();
    assert_eq!(c.call_export("cas_read", &[]), Some(1));
}

#[test]
fn clock_is_the_host_clock_and_monotonic_is_unsupported_like_envoy() {
    let host = Host::new();
    let mut vm = vm(&host);
    host.set_now_ms(5_000_000);
    assert_eq!(vm.call_export("clock", &[0]), Some(0));
    assert_eq!(vm.call_export("clock_ms", &[]), Some(5_000));
    assert_eq!(
        vm.call_export("clock", &[1]),
        Some(58),
        "ENOTSUP for CLOCK_MONOTONIC"
    );
}

#[test]
fn stderr_becomes_an_error_log() {
    let mut vm = vm(&Host::new());
    assert_eq!(vm.call_export("stderr", &[]), Some(0));
    assert!(vm.logged(LogLevel::Error, "hello stderr"));
}

#[test]
fn http_call_without_authority_is_a_bad_argument() {
    let mut vm = vm(&Host::new());
    assert_eq!(vm.call_export("bad_call", &[]), Some(2));
    assert!(vm.pending_calls().is_empty());
}

#[test]
fn ticks_need_a_period_and_use_it() {
    let vm = vm(&Host::new());
    assert_eq!(vm.tick_period_ms(), 1000);
}

#[test]
fn a_module_importing_what_envoy_lacks_does_not_load() {
    let wat = r#"(module
      (import "wasi_snapshot_preview1" "poll_oneoff" (func (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "_initialize"))
      (func (export "malloc") (param i32) (result i32) (i32.const 0)))"#;
    let err = Host::new().vm_from_wat(wat).configure("{}").err().unwrap();
    assert!(format!("{err:#}").contains("poll_oneoff"), "{err:#}");
    let module = wasmtime::Module::new(&wasmtime::Engine::default(), wat).unwrap();
    let problems = modelgate_abi_tests::imports::envoy_load_problems(&module);
    assert!(
        problems.iter().any(|p| p.contains("poll_oneoff")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("ABI version")),
        "{problems:?}"
    );
}

#[test]
fn a_stream_paused_on_an_http_call_resumes_through_the_effective_context() {
    let mut vm = vm(&Host::new());
    vm.call_export("set_mode", &[3]);
    let id = {
        let mut req = vm.http();
        assert_eq!(
            req.request_headers(&[(":path", "/x")], false),
            Action::Pause
        );
        assert!(!req.request_forwarded());
        req.id()
    };
    let calls = vm.pending_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        (calls[0].cluster.as_str(), calls[0].path().as_str()),
        ("cluster", "/auth")
    );
    assert_eq!(calls[0].context_id, id, "dispatched from the stream");
    assert_eq!(calls[0].timeout_ms, 500);
    vm.host().advance_ms(499);
    assert!(vm.expire_calls().is_empty());
    vm.host().advance_ms(1);
    // Envoy's answer to an expired call is a 504 response; the module resumes either way.
    assert_eq!(vm.expire_calls().len(), 1);
    assert!(vm.pending_calls().is_empty());
    let req = vm.stream(id);
    assert_eq!(req.request_resumed(), 1);
    assert!(req.request_forwarded());
}

#[test]
fn shared_queues_deliver_on_queue_ready_to_the_registering_vm() {
    let host = Host::new();
    let mut owner = vm(&host);
    let mut producer = vm(&host);
    assert_eq!(owner.call_export("queue_register", &[]), Some(0));
    // Same name in the same vm_id: the same queue.
    assert_eq!(producer.call_export("queue_register", &[]), Some(0));
    assert_eq!(producer.call_export("queue_push", &[]), Some(0));
    assert_eq!(host.queue_items("modelgate", "q"), vec![b"item".to_vec()]);
    producer.deliver_queues();
    owner.deliver_queues();
    let delivered: Vec<_> = [&producer, &owner]
        .iter()
        .map(|v| v.logs().iter().any(|l| l.message == "item"))
        .collect();
    assert_eq!(
        delivered.iter().filter(|d| **d).count(),
        1,
        "one VM gets the item"
    );
    assert!(host.queue_items("modelgate", "q").is_empty());
}

#[test]
fn callbacks_the_module_does_not_export_are_skipped_like_envoy() {
    let wat = r#"(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param i32) (result i32) (i32.const 4096))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $log (i32.const 2) (i32.const 0) (i32.const 0)))
    (i32.const 0)))"#;
    let mut vm = Host::new().vm_from_wat(wat).configure("{}").unwrap();
    let before = vm.call_counts();
    let mut req = vm.http();
    assert_eq!(
        req.request_headers(&[(":path", "/")], false),
        Action::Continue
    );
    assert_eq!(req.request_body(b"x", true), Action::Continue);
    assert_eq!(
        req.response_headers(&[(":status", "200")], true),
        Action::Continue
    );
    req.finish();
    let c = vm.call_counts() - before;
    assert_eq!((c.callbacks, c.host_calls), (1, 1));
}
