//! endpoint_picker.wasm through the ABI: a client-sent destination is always dropped, a
//! prefix sticks to one pod, load (in-flight streams, ORCA reports in shared data) makes it
//! spill, an all-saturated pool sheds sheddable requests, and the decision counters. With
//! flow control (issue 16), an all-saturated pool holds standard and sheddable requests
//! and releases them to the first pod with room.

use modelgate_abi_tests::{Action, Host, HttpStream, Vm};

const DEST: &str = "x-gateway-destination-endpoint";
const PODS: [&str; 3] = ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"];

fn picker(host: &Host, extra: &str) -> Vm {
    let cfg = format!(
        r#"{{"pools": {{"m": ["{}", "{}", "{}"]}}, "tick": "100ms" {extra}}}"#,
        PODS[0], PODS[1], PODS[2]
    );
    host.vm("endpoint_picker")
        .root_id("endpoint_picker")
        .configure(&cfg)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Starts a request as the router leaves it; the stream stays open (in flight).
fn start<'a>(
    vm: &'a mut Vm,
    model: Option<&str>,
    prefix: Option<&str>,
    class: &str,
    client_dest: Option<&str>,
) -> (HttpStream<'a>, Action) {
    let mut headers = vec![
        (":method", "POST"),
        (":path", "/v1/chat/completions"),
        ("x-modelgate-criticality", class),
    ];
    if let Some(m) = model {
        headers.push(("x-modelgate-model", m));
    }
    if let Some(p) = prefix {
        headers.push(("x-modelgate-prefix-hash", p));
    }
    if let Some(d) = client_dest {
        headers.push((DEST, d));
    }
    let mut req = vm.http();
    let action = req.request_headers(&headers, false);
    (req, action)
}

fn pick(vm: &mut Vm, prefix: &str) -> Option<String> {
    let (req, action) = start(vm, Some("m"), Some(prefix), "standard", None);
    assert_eq!(action, Action::Continue);
    let dest = req.request_header(DEST);
    req.finish();
    dest
}

#[test]
fn a_client_cannot_choose_the_pod() {
    let host = Host::new();
    let mut vm = picker(&host, "");
    // Not routed to a pool: the header is dropped and nothing is set.
    let (req, _) = start(&mut vm, None, None, "standard", Some(PODS[2]));
    assert_eq!(req.request_header(DEST), None);
    req.finish();
    let (req, _) = start(&mut vm, Some("other"), None, "standard", Some(PODS[2]));
    assert_eq!(req.request_header(DEST), None);
    req.finish();
    // Routed: the picker's choice replaces the client's.
    let chosen = pick(&mut vm, "00000000000000aa").unwrap();
    let (req, _) = start(
        &mut vm,
        Some("m"),
        Some("00000000000000aa"),
        "standard",
        Some("6.6.6.6:1"),
    );
    assert_eq!(req.request_header(DEST).as_deref(), Some(chosen.as_str()));
    req.finish();
}

#[test]
fn a_prefix_sticks_to_one_pod_and_prefixes_spread() {
    let host = Host::new();
    let mut vm = picker(&host, "");
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..60u64 {
        let prefix = format!("{:016x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let first = pick(&mut vm, &prefix).unwrap();
        assert!(PODS.contains(&first.as_str()), "{first}");
        assert_eq!(pick(&mut vm, &prefix).unwrap(), first);
        seen.insert(first);
    }
    assert_eq!(seen.len(), PODS.len(), "60 prefixes use every pod");
    // No prefix: still a pod (least loaded).
    let (req, _) = start(&mut vm, Some("m"), None, "standard", None);
    assert!(req.request_header(DEST).is_some());
    req.finish();
}

#[test]
fn open_streams_make_a_prefix_spill_then_all_saturated_sheds_sheddable() {
    let host = Host::new();
    let mut vm = picker(
        &host,
        r#", "cold_prefill_per_kb": 0, "saturation": {"in_flight": 1}"#,
    );
    let prefix = "0123456789abcdef";
    let home = pick(&mut vm, prefix).unwrap();
    // Hold one stream open on every pod, the prefix's own pod first.
    let mut held = Vec::new();
    for _ in 0..PODS.len() {
        let (req, _) = start(&mut vm, Some("m"), Some(prefix), "standard", None);
        held.push(req.id());
        let dest = req.request_header(DEST).unwrap();
        if held.len() == 1 {
            assert_eq!(dest, home);
        } else {
            assert_ne!(dest, home, "a busy pod is skipped");
        }
    }
    // Every pod has one in flight (= saturated): sheddable gets 429, standard queues.
    let (req, action) = start(&mut vm, Some("m"), Some(prefix), "sheddable", None);
    assert_eq!(action, Action::Pause);
    let reply = req.local_reply().expect("a local 429");
    assert_eq!(reply.status, 429);
    assert!(reply
        .headers
        .iter()
        .any(|(k, v)| k == "x-modelgate-shed" && v == b"pool_saturated"));
    req.finish();
    let (req, action) = start(&mut vm, Some("m"), Some(prefix), "critical", None);
    assert_eq!(action, Action::Continue);
    assert!(req.request_header(DEST).is_some());
    req.finish();
    // Ending the streams frees the pods: the prefix goes home again.
    for id in held {
        vm.stream(id).finish();
    }
    assert_eq!(pick(&mut vm, prefix).unwrap(), home);

    host.advance_ms(100);
    vm.tick();
    let picks = |pod: &str, reason: &str| {
        host.metric_value(&format!(
            "model_name=.=m;.;pod=.={pod};.;reason=.={reason};.;ml_picker_picks_total"
        ))
    };
    let all: i64 = PODS
        .iter()
        .flat_map(|p| ["affinity", "spill", "least_loaded", "queued"].map(|r| picks(p, r)))
        .sum();
    assert_eq!(all, 6, "home, 3 held, the queued critical, home again");
    assert_eq!(picks(&home, "affinity"), 3);
    assert_eq!(
        host.metric_value("model_name=.=m;.;ml_picker_shed_total"),
        1
    );
}

#[test]
fn orca_reports_in_shared_data_mark_pods_saturated() {
    let host = Host::new();
    let mut vm = picker(&host, "");
    let prefix = "00000000deadbeef";
    let home = pick(&mut vm, prefix).unwrap();
    // The gateway load shedder's pool table: the home pod reports utilisation 0.95.
    host.advance_ms(1000);
    let table = format!(
        r#"{{"clusters": {{"m": {{"{home}": {{"utilization": 0.95, "at_ms": {}}}}}}}}}"#,
        host.now_ms()
    );
    host.set_shared_data(&vm.vm_id(), "modelgate.shedder.pool.v1", table.as_bytes());
    vm.tick();
    assert_ne!(pick(&mut vm, prefix).unwrap(), home);
    assert_eq!(
        host.metric_value("model_name=.=m;.;ml_picker_saturated_pods"),
        1
    );
    // The report goes stale (default TTL 2 s): the pod is judged on in-flight alone again.
    host.advance_ms(3000);
    vm.tick();
    assert_eq!(pick(&mut vm, prefix).unwrap(), home);
    assert_eq!(
        host.metric_value("model_name=.=m;.;ml_picker_saturated_pods"),
        0
    );
}

#[test]
fn bad_configuration_is_refused_with_the_field_named() {
    let host = Host::new();
    let err = host
        .vm("endpoint_picker")
        .root_id("endpoint_picker")
        .configure(r#"{"pools": {"m": ["pod-a"]}}"#)
        .err()
        .expect("refused");
    assert!(format!("{err:#}").contains("pools.m"), "{err:#}");
}

// ---------------------------------------------------------------------------------------
// Flow control at the gateway (issue 16): hold while every pod is saturated.

/// One request in flight saturates a pod; short TTLs; `extra` goes into the flow block.
fn flow_picker(host: &Host, extra: &str) -> Vm {
    picker(
        host,
        &format!(
            r#", "cold_prefill_per_kb": 0, "saturation": {{"in_flight": 1}}, "flow": {{"standard": {{"ttl": "2s"}}, "sheddable": {{"ttl": "1s"}}{extra}}}"#
        ),
    )
}

/// Opens a request of `tenant` as the router leaves it (body to come); returns its id,
/// the action and the pod it was sent to.
fn open(vm: &mut Vm, tenant: &str, class: &str, prefix: &str) -> (u32, Action, Option<String>) {
    let mut req = vm.http();
    let action = req.request_headers(
        &[
            (":method", "POST"),
            (":path", "/v1/chat/completions"),
            ("x-modelgate-model", "m"),
            ("x-modelgate-prefix-hash", prefix),
            ("x-modelgate-criticality", class),
            ("x-modelgate-tenant", tenant),
            ("content-length", "20"),
            (DEST, "6.6.6.6:1"),
        ],
        false,
    );
    (req.id(), action, req.request_header(DEST))
}

/// Saturates every pod with one open stream each; returns (stream id, pod) pairs.
fn saturate(vm: &mut Vm) -> Vec<(u32, String)> {
    (0..PODS.len())
        .map(|i| {
            let (id, action, dest) = open(vm, "busy", "standard", &format!("{i:016x}"));
            assert_eq!(action, Action::Continue);
            (id, dest.expect("a pod"))
        })
        .collect()
}

fn flow_count(host: &Host, class: &str, outcome: &str) -> i64 {
    host.metric_value(&format!(
        "model_name=.=m;.;criticality=.={class};.;outcome=.={outcome};.;ml_picker_flow_requests_total"
    ))
}

fn shed_header(reply: &modelgate_abi_tests::LocalReply) -> Option<String> {
    reply.header("x-modelgate-shed")
}

#[test]
fn a_saturated_pool_holds_requests_and_releases_each_to_the_pod_that_gets_room() {
    let host = Host::new();
    let mut vm = flow_picker(&host, "");
    let busy = saturate(&mut vm);
    // Every pod saturated: standard and sheddable wait, paused, with no pod chosen (the
    // client's header is gone).
    let (std_id, action, dest) = open(&mut vm, "a", "standard", "00000000000000aa");
    assert_eq!((action, dest), (Action::Pause, None));
    assert_eq!(
        vm.stream(std_id)
            .request_body(b"{\"model\":\"m\"}      ", true),
        Action::Pause,
        "the body waits too"
    );
    let (shed_id, action, _) = open(&mut vm, "b", "sheddable", "00000000000000bb");
    assert_eq!(action, Action::Pause);
    assert_eq!(vm.stream(shed_id).local_reply(), None, "held, not shed");
    vm.advance_and_tick();
    assert_eq!(
        vm.stream(std_id).request_resumed(),
        0,
        "no pod has room yet"
    );
    // A stream ends: its pod takes the standard request at once (no tick in between).
    let (done, freed) = busy[1].clone();
    vm.stream(done).finish();
    assert_eq!(vm.stream(std_id).request_resumed(), 1);
    assert_eq!(vm.stream(std_id).request_header(DEST), Some(freed.clone()));
    assert_eq!(
        vm.stream(shed_id).request_resumed(),
        0,
        "standard went first"
    );
    // The next pod to free up takes the sheddable one.
    let (done, freed) = busy[2].clone();
    vm.stream(done).finish();
    assert_eq!(vm.stream(shed_id).request_header(DEST), Some(freed));
    assert!(vm.stream(shed_id).request_forwarded());
    vm.advance_and_tick();
    assert_eq!(flow_count(&host, "standard", "held"), 1);
    assert_eq!(flow_count(&host, "standard", "released"), 1);
    assert_eq!(flow_count(&host, "sheddable", "released"), 1);
    assert_eq!(
        host.metric_value("model_name=.=m;.;criticality=.=standard;.;ml_picker_flow_queued"),
        0
    );
    let waited = host
        .metric("model_name=.=m;.;criticality=.=standard;.;ml_picker_flow_wait_milliseconds")
        .expect("wait histogram");
    assert_eq!(waited.samples, vec![100], "held for one 100 ms tick");
    assert_eq!(
        host.metric_value("model_name=.=m;.;ml_picker_shed_total"),
        0
    );
}

#[test]
fn critical_is_never_held() {
    let host = Host::new();
    let mut vm = flow_picker(&host, "");
    saturate(&mut vm);
    let (held, action, _) = open(&mut vm, "a", "standard", "00000000000000aa");
    assert_eq!(action, Action::Pause);
    let (_, action, dest) = open(&mut vm, "a", "critical", "00000000000000aa");
    assert_eq!(action, Action::Continue);
    assert!(PODS.contains(&dest.as_deref().unwrap_or("")), "{dest:?}");
    assert_eq!(vm.stream(held).request_resumed(), 0);
}

#[test]
fn a_held_request_past_its_ttl_gets_429_with_retry_after() {
    let host = Host::new();
    let mut vm = flow_picker(&host, "");
    saturate(&mut vm);
    let (id, _, _) = open(&mut vm, "a", "sheddable", "00000000000000aa");
    // 1 s TTL: at 1 s it still waits, past it the answer is 429 in OpenAI's shape.
    host.advance_ms(1000);
    vm.tick();
    assert_eq!(vm.stream(id).local_reply(), None);
    host.advance_ms(100);
    vm.tick();
    let reply = vm.stream(id).local_reply().expect("answered");
    assert_eq!(reply.status, 429);
    assert_eq!(reply.json()["error"]["type"], "rate_limit_error");
    assert_eq!(reply.header("retry-after").as_deref(), Some("1"));
    assert_eq!(shed_header(&reply).as_deref(), Some("flow_timeout"));
    assert_eq!(vm.stream(id).request_resumed(), 0);
    vm.stream(id).finish();
    vm.tick();
    assert_eq!(flow_count(&host, "sheddable", "expired"), 1);
    assert_eq!(flow_count(&host, "sheddable", "abandoned"), 0);
}

#[test]
fn a_held_request_gets_503_when_the_pool_has_no_pod_left() {
    let host = Host::new();
    // No configured pod: one is discovered from its (saturated) report, then goes silent.
    let mut vm = host
        .vm("endpoint_picker")
        .root_id("endpoint_picker")
        .configure(
            r#"{"pools": {"m": []}, "tick": "100ms", "forget_after": "300ms",
                "flow": {"standard": {"ttl": "1s"}}}"#,
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    let table = format!(
        r#"{{"clusters": {{"m": {{"10.0.0.9:8000": {{"utilization": 0.95, "at_ms": {}}}}}}}}}"#,
        host.now_ms()
    );
    host.set_shared_data(&vm.vm_id(), "modelgate.shedder.pool.v1", table.as_bytes());
    vm.tick();
    let (id, action, _) = open(&mut vm, "a", "standard", "00000000000000aa");
    assert_eq!(action, Action::Pause);
    for _ in 0..12 {
        host.advance_ms(100);
        vm.tick();
    }
    let reply = vm.stream(id).local_reply().expect("answered");
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["error"]["type"], "server_error");
    assert!(reply.header("retry-after").is_some());
}

#[test]
fn a_client_that_gives_up_leaves_the_queue_at_once() {
    let host = Host::new();
    let mut vm = flow_picker(&host, "");
    let busy = saturate(&mut vm);
    let (quitter, _, _) = open(&mut vm, "q", "standard", "00000000000000aa");
    let (next, _, _) = open(&mut vm, "b", "standard", "00000000000000bb");
    vm.stream(quitter).finish();
    vm.advance_and_tick();
    assert_eq!(flow_count(&host, "standard", "abandoned"), 1);
    vm.stream(busy[0].0).finish();
    assert_eq!(
        vm.stream(next).request_resumed(),
        1,
        "the next one took the room"
    );
}

#[test]
fn bounds_refuse_the_flooding_tenant_and_the_lowest_band_first() {
    let host = Host::new();
    let mut vm = flow_picker(&host, r#", "tenant_max_requests": 1, "max_requests": 2"#);
    saturate(&mut vm);
    assert_eq!(
        open(&mut vm, "a", "standard", "00000000000000a1").1,
        Action::Pause
    );
    let (flood, action, _) = open(&mut vm, "a", "standard", "00000000000000a2");
    assert_eq!(action, Action::Pause);
    let reply = vm
        .stream(flood)
        .local_reply()
        .expect("tenant a holds its maximum");
    assert_eq!(reply.status, 429);
    assert_eq!(shed_header(&reply).as_deref(), Some("flow_full"));
    let (s, _, _) = open(&mut vm, "b", "sheddable", "00000000000000b1");
    assert_eq!(vm.stream(s).local_reply(), None, "held: the total is 2");
    // The total is full: a standard arrival takes the sheddable one's place.
    let (c, action, _) = open(&mut vm, "c", "standard", "00000000000000c1");
    assert_eq!(action, Action::Pause);
    vm.advance_and_tick();
    assert_eq!(vm.stream(c).local_reply(), None);
    let reply = vm.stream(s).local_reply().expect("displaced");
    assert_eq!(shed_header(&reply).as_deref(), Some("flow_full"));
    assert_eq!(flow_count(&host, "standard", "refused"), 1);
    assert_eq!(flow_count(&host, "sheddable", "refused"), 1);
    assert_eq!(
        host.metric_value("model_name=.=m;.;criticality=.=standard;.;ml_picker_flow_queued"),
        2
    );
}

#[test]
fn flow_configuration_errors_name_the_field() {
    let host = Host::new();
    for (flow, field) in [
        (r#"{"max_running": 4}"#, "flow.max_running"),
        (r#"{"standard": {"ttl": "0s"}}"#, "flow.standard.ttl"),
        (r#"{"bogus": 1}"#, "flow.bogus"),
    ] {
        let err = host
            .vm("endpoint_picker")
            .root_id("endpoint_picker")
            .configure(&format!(r#"{{"pools": {{"m": []}}, "flow": {flow}}}"#))
            .err()
            .expect("refused");
        assert!(format!("{err:#}").contains(field), "{field}: {err:#}");
    }
}
