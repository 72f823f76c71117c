//! endpoint_picker.wasm through the ABI: a client-sent destination is always dropped, a
//! prefix sticks to one pod, load (in-flight streams, ORCA reports in shared data) makes it
//! spill, an all-saturated pool sheds sheddable requests, and the decision counters.

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
        r#", "spill_slack": 0, "saturation": {"in_flight": 1}"#,
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
