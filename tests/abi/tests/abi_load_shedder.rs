//! load_shedder.wasm through the ABI: the scrape on a tick, decisions per criticality from
//! the queue and KV cache, client criticality, concurrency shared between workers, stale
//! snapshots, ORCA reports in the sidecar and pool saturation in the gateway.

use modelgate_abi_tests::{Action, CallOutcome, Host, HttpCall, LocalReply, Vm};

const CRIT: &str = "x-modelgate-criticality";

fn sidecar(extra: &str) -> String {
    format!(
        r#"{{"scrape": {{"cluster": "model_server", "path": "/metrics", "period": "250ms"}} {extra}}}"#
    )
}

fn shedder(host: &Host, config: &str) -> Vm {
    host.vm("load_shedder")
        .root_id("load_shedder")
        .configure(config)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

fn vllm_metrics(waiting: f64, running: f64, kv: f64) -> String {
    format!(
        "# HELP vllm:num_requests_waiting Requests waiting.\n\
         # TYPE vllm:num_requests_waiting gauge\n\
         vllm:num_requests_waiting{{model_name=\"m\"}} {waiting}\n\
         vllm:num_requests_running{{model_name=\"m\"}} {running}\n\
         vllm:kv_cache_usage_perc{{model_name=\"m\"}} {kv}\n"
    )
}

/// Advances a scrape period, ticks, answers the scrape, ticks again to pick the snapshot up.
fn scrape(vm: &mut Vm, respond: impl Fn(&HttpCall) -> CallOutcome) {
    vm.host().advance_ms(250);
    vm.tick();
    vm.answer_all(|c| respond(c));
    vm.host().advance_ms(10);
    vm.tick();
}

fn load(waiting: f64, kv: f64) -> impl Fn(&HttpCall) -> CallOutcome {
    move |c: &HttpCall| {
        assert_eq!(
            (c.cluster.as_str(), c.path().as_str()),
            ("model_server", "/metrics")
        );
        CallOutcome::text(200, &vllm_metrics(waiting, 1.0, kv))
    }
}

/// Sends one request with an optional criticality; returns the action, the local reply
/// and the criticality header forwarded upstream. The stream stays open (in flight)
/// unless `finish`.
fn request(
    vm: &mut Vm,
    class: Option<&str>,
    finish: bool,
) -> (Action, Option<LocalReply>, Option<String>) {
    let mut headers = vec![
        (":method", "POST"),
        (":path", "/v1/chat/completions"),
        (":authority", "pod"),
    ];
    if let Some(c) = class {
        headers.push((CRIT, c));
    }
    let mut req = vm.http();
    let action = req.request_headers(&headers, false);
    let out = (action, req.local_reply(), req.request_header(CRIT));
    if finish {
        if out.1.is_none() {
            req.response_headers(&[(":status", "200")], true);
        }
        req.finish();
    }
    out
}

fn shed_reason(reply: &Option<LocalReply>) -> Option<String> {
    reply.as_ref().map(|r| {
        assert_eq!(r.status, 429);
        assert!(r.header("retry-after").is_some());
        assert_eq!(r.json()["error"]["type"], "rate_limit_error");
        r.header("x-modelgate-shed").unwrap_or_default()
    })
}

#[test]
fn configuration_errors_name_the_field() {
    for (cfg, field) in [
        ("{}", "scrape"),
        (r#"{"scrape": {"cluster": "m"}, "bogus": true}"#, "bogus"),
        (
            r#"{"scrape": {"cluster": "m"}, "on_stale": "panic"}"#,
            "on_stale",
        ),
        (
            r#"{"scrape": {"cluster": "m"}, "default_criticality": "vip"}"#,
            "default_criticality",
        ),
        (
            r#"{"scrape": {"cluster": "m"}, "thresholds": {"sheddable": {"queue": 50}}}"#,
            "thresholds.sheddable.queue",
        ),
        (r#"{"scrape": {"cluster": "m"}, "tick": "1h"}"#, "tick"),
    ] {
        let err = Host::load("load_shedder")
            .configure(cfg)
            .err()
            .unwrap_or_else(|| panic!("accepted {cfg}"));
        let msg = format!("{err:#}");
        assert!(msg.contains(&format!("`{field}`")), "{cfg}: {msg}");
    }
}

#[test]
fn the_scrape_is_a_get_to_the_configured_cluster_once_per_period() {
    let host = Host::new();
    let mut vm = shedder(&host, &sidecar(""));
    assert!(vm.tick_period_ms() <= 250);
    host.advance_ms(250);
    vm.tick();
    let calls = vm.pending_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].method(), "GET");
    assert_eq!(calls[0].authority(), "model_server");
    vm.tick();
    assert_eq!(
        vm.pending_calls().len(),
        1,
        "no second scrape while one is in flight"
    );
}

#[test]
fn queue_and_kv_cache_shed_sheddable_first() {
    let host = Host::new();
    let mut vm = shedder(&host, &sidecar(r#", "trust_criticality_header": true"#));
    // Idle server: everyone in.
    scrape(&mut vm, load(0.0, 0.1));
    for class in ["critical", "standard", "sheddable"] {
        assert_eq!(
            request(&mut vm, Some(class), true).0,
            Action::Continue,
            "{class}"
        );
    }
    // Queue of 10: above sheddable's 5, below standard's 20.
    scrape(&mut vm, load(10.0, 0.1));
    assert_eq!(
        shed_reason(&request(&mut vm, Some("sheddable"), true).1).as_deref(),
        Some("queue")
    );
    assert_eq!(request(&mut vm, Some("standard"), true).0, Action::Continue);
    // KV cache 0.97: above both defaults (0.8, 0.95); critical is never shed.
    scrape(&mut vm, load(0.0, 0.97));
    assert_eq!(
        shed_reason(&request(&mut vm, Some("sheddable"), true).1).as_deref(),
        Some("kv_cache")
    );
    assert_eq!(
        shed_reason(&request(&mut vm, Some("standard"), true).1).as_deref(),
        Some("kv_cache")
    );
    assert_eq!(request(&mut vm, Some("critical"), true).0, Action::Continue);

    // Counters are flushed on the tick, named with their labels.
    vm.tick();
    let h = vm.host();
    assert_eq!(
        h.metric_value("criticality=.=sheddable;.;reason=.=queue;.;modelgate_shedder_shed_total"),
        1
    );
    assert_eq!(
        h.metric_value("criticality=.=standard;.;reason=.=kv_cache;.;modelgate_shedder_shed_total"),
        1
    );
    assert_eq!(
        h.metric_value("criticality=.=critical;.;modelgate_shedder_admitted_total"),
        2
    );
    assert_eq!(h.metric_value("modelgate_scrape_attempts_total"), 3);
}

#[test]
fn an_untrusted_client_may_only_lower_its_criticality() {
    let host = Host::new();
    let mut vm = shedder(&host, &sidecar(""));
    scrape(&mut vm, load(10.0, 0.1));
    // Claims critical, gets the default (standard), and the header says so upstream.
    let (action, _, forwarded) = request(&mut vm, Some("critical"), true);
    assert_eq!(action, Action::Continue);
    assert_eq!(forwarded.as_deref(), Some("standard"));
    // Lowering is honoured.
    let (_, reply, _) = request(&mut vm, Some("sheddable"), true);
    assert_eq!(shed_reason(&reply).as_deref(), Some("queue"));
    // Nonsense is the default.
    assert_eq!(request(&mut vm, Some("VIP"), true).0, Action::Continue);
}

#[test]
fn a_non_utf8_criticality_header_does_not_trap() {
    let host = Host::new();
    let mut vm = shedder(&host, &sidecar(""));
    let mut req = vm.http();
    let action = req.request_headers_bytes(
        &[
            (":method", b"POST"),
            (":path", b"/v1/completions"),
            (CRIT, b"crit\xffcal"),
        ],
        false,
    );
    assert_eq!(action, Action::Continue);
}

#[test]
fn max_in_flight_counts_open_streams_across_workers() {
    let host = Host::new();
    let cfg = r#"{"thresholds": {"standard": {"max_in_flight": 2}, "sheddable": {"max_in_flight": 1}}, "tick": "100ms"}"#;
    let mut a = shedder(&host, cfg);
    let mut b = shedder(&host, cfg);
    let first = a.http().id();
    a.stream(first).request_headers(&[(":path", "/v1/x")], true);
    let second = a.http().id();
    a.stream(second)
        .request_headers(&[(":path", "/v1/x")], true);
    let (_, reply, _) = request(&mut a, None, false);
    assert_eq!(shed_reason(&reply).as_deref(), Some("concurrency"));
    // Worker B sees A's requests at once: each admission takes a slot in shared data.
    let (_, reply, _) = request(&mut b, Some("sheddable"), true);
    assert_eq!(shed_reason(&reply).as_deref(), Some("concurrency"));
    // A stream that ends frees its slot.
    a.stream(first)
        .response_headers(&[(":status", "200")], true);
    a.stream(first).finish();
    assert_eq!(request(&mut a, None, true).0, Action::Continue);
}

#[test]
fn a_stale_snapshot_follows_on_stale() {
    let host = Host::new();
    let mut vm = shedder(
        &host,
        &sidecar(r#", "stale_after": "1s", "on_stale": "shed_sheddable""#),
    );
    scrape(&mut vm, load(0.0, 0.1));
    assert_eq!(
        request(&mut vm, Some("sheddable"), true).0,
        Action::Continue
    );
    // The server stops answering: connection failures, then timeouts.
    for i in 0..6 {
        scrape(&mut vm, |_| {
            if i % 2 == 0 {
                CallOutcome::connect_failure()
            } else {
                CallOutcome::timeout()
            }
        });
    }
    let (_, reply, _) = request(&mut vm, Some("sheddable"), true);
    assert_eq!(shed_reason(&reply).as_deref(), Some("stale"));
    assert_eq!(request(&mut vm, Some("standard"), true).0, Action::Continue);
    assert!(
        vm.logs_text().contains("queue snapshot is stale"),
        "{}",
        vm.logs_text()
    );
    // A reset scrape is a failure too, not a trap.
    scrape(&mut vm, |_| CallOutcome::Reset);
    // And recovery.
    scrape(&mut vm, load(0.0, 0.1));
    assert_eq!(
        request(&mut vm, Some("sheddable"), true).0,
        Action::Continue
    );
}

#[test]
fn the_sidecar_reports_orca_load_on_responses() {
    let host = Host::new();
    let mut vm = shedder(&host, &sidecar(r#", "orca": {"capacity": 8}"#));
    scrape(&mut vm, load(3.0, 0.2));
    for _ in 0..5 {
        request(&mut vm, None, true);
        scrape(&mut vm, load(3.0, 0.2));
    }
    let mut req = vm.http();
    req.request_headers(&[(":path", "/v1/completions")], true);
    req.response_headers(
        &[(":status", "200"), ("content-type", "application/json")],
        false,
    );
    let orca = req
        .response_header("endpoint-load-metrics")
        .expect("ORCA header on the response");
    assert!(orca.starts_with("TEXT application_utilization="), "{orca}");
    assert!(orca.contains("rps_fractional="), "{orca}");
}

/// A gateway shedder after pods `10.0.0.{i}:8000` of `pool_a` reported `utils[i]` (ORCA
/// text, plus `extra` response headers) on standard requests, then a tick; every report is
/// stripped before the client.
fn gateway_with_reports(host: &Host, utils: &[&str], extra: &[(&str, &str)]) -> Vm {
    let cfg =
        r#"{"gateway": {"utilization_threshold": 0.8, "report_ttl": "10s"}, "tick": "100ms"}"#;
    let mut vm = shedder(host, cfg);
    vm.tick();
    for (i, util) in utils.iter().enumerate() {
        let mut req = vm.http();
        req.property(&["xds", "cluster_name"], b"pool_a");
        req.property(
            &["upstream", "address"],
            format!("10.0.0.{i}:8000").as_bytes(),
        );
        req.request_headers(&[(":path", "/v1/completions"), (CRIT, "standard")], true);
        let orca = format!("TEXT application_utilization={util}, rps_fractional=5");
        let mut headers = vec![(":status", "200"), ("endpoint-load-metrics", orca.as_str())];
        headers.extend_from_slice(extra);
        req.response_headers(&headers, false);
        assert!(
            req.response_headers_now()
                .iter()
                .all(|(k, _)| !k.starts_with("endpoint-load-metrics")),
            "stripped before the client"
        );
        req.finish();
    }
    host.advance_ms(100);
    vm.tick();
    vm
}

#[test]
fn the_gateway_sheds_sheddable_when_the_pool_is_saturated() {
    let host = Host::new();
    let mut vm = gateway_with_reports(&host, &["0.95", "0.9"], &[]);
    let mut req = vm.http();
    req.property(&["xds", "cluster_name"], b"pool_a");
    req.request_headers(&[(":path", "/v1/completions"), (CRIT, "sheddable")], true);
    assert_eq!(
        shed_reason(&req.local_reply()).as_deref(),
        Some("pool_saturated")
    );
    req.finish();
    // Another pool is not affected; standard is never shed for saturation.
    let mut req = vm.http();
    req.property(&["xds", "cluster_name"], b"pool_b");
    assert_eq!(
        req.request_headers(&[(":path", "/v1/x"), (CRIT, "sheddable")], true),
        Action::Continue
    );
    assert!(vm.logs_text().contains("pool saturated"));
}

/// Issue 11, finding 3: with the model port reachable without the gateway (PERMISSIVE
/// mTLS, a plaintext client), no shipped sidecar configuration lets a client claim
/// `critical`, which skips every check.
#[test]
fn no_shipped_sidecar_lets_an_unauthenticated_client_claim_critical() {
    let mut checked = 0;
    for p in modelgate_abi_tests::configs::plugins() {
        if p.module != "load_shedder" || p.configuration.contains("\"gateway\"") {
            continue;
        }
        let host = Host::new();
        let mut vm = host
            .vm("load_shedder")
            .root_id(&p.root_id)
            .configure(&p.configuration)
            .unwrap_or_else(|e| panic!("{}: {e:#}", p.file.display()));
        // A queue far above every threshold: only a critical request passes.
        scrape(&mut vm, load(1000.0, 0.99));
        // Refused or held (flow control), as the standard request it is.
        let (action, _, forwarded) = request(&mut vm, Some("critical"), true);
        assert_eq!(
            (action, forwarded.as_deref()),
            (Action::Pause, Some("standard")),
            "{}: a plaintext client was admitted as critical",
            p.file.display()
        );
        checked += 1;
    }
    assert!(checked >= 2, "sidecar configurations checked: {checked}");
}

#[test]
fn a_trusted_peer_may_raise_criticality_and_others_may_not() {
    let host = Host::new();
    let gateway = "spiffe://cluster.local/ns/gateway/sa/gateway";
    let mut vm = shedder(
        &host,
        &sidecar(&format!(r#", "trusted_principals": ["{gateway}"]"#)),
    );
    scrape(&mut vm, load(1000.0, 0.99));
    let send = |vm: &mut Vm, peer: Option<&str>| {
        let mut req = vm.http();
        if let Some(p) = peer {
            req.property(&["connection", "uri_san_peer_certificate"], p.as_bytes());
        }
        let action = req.request_headers(
            &[
                (":method", "POST"),
                (":path", "/v1/completions"),
                (CRIT, "critical"),
            ],
            false,
        );
        let out = (action, req.request_header(CRIT));
        if req.local_reply().is_none() {
            req.response_headers(&[(":status", "200")], true);
        }
        req.finish();
        out
    };
    assert_eq!(
        send(&mut vm, Some(gateway)),
        (Action::Continue, Some("critical".into()))
    );
    assert_eq!(send(&mut vm, None).0, Action::Pause, "plaintext");
    assert_eq!(
        send(&mut vm, Some("spiffe://cluster.local/ns/apps/sa/client")),
        (Action::Pause, Some("standard".into()))
    );
}

/// Issue 11, finding 4: the sidecar's report replaces whatever the model server sent
/// (Envoy reads the first value and prefers the binary form).
#[test]
fn the_sidecar_replaces_a_servers_own_orca_report() {
    let host = Host::new();
    let mut vm = shedder(&host, &sidecar(r#", "orca": {"capacity": 8}"#));
    for _ in 0..3 {
        scrape(&mut vm, load(6.0, 0.2));
    }
    for known in [true, false] {
        if !known {
            // No scrape answers: the load is unknown, and still nothing of the server's
            // passes.
            host.advance_ms(5000);
            vm.tick();
        }
        let mut req = vm.http();
        req.request_headers(&[(":path", "/v1/completions")], true);
        req.response_headers(
            &[
                (":status", "200"),
                (
                    "endpoint-load-metrics",
                    "TEXT application_utilization=0.001, rps_fractional=1000",
                ),
                ("endpoint-load-metrics-bin", "CgQIARAB"),
            ],
            false,
        );
        let headers = req.response_headers_now();
        let orca: Vec<_> = headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("endpoint-load-metrics"))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect();
        assert!(
            !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("endpoint-load-metrics-bin")),
            "binary report dropped"
        );
        if known {
            assert_eq!(orca.len(), 1, "{orca:?}");
            assert!(
                !orca[0].contains("0.001,"),
                "ours, not the server's: {orca:?}"
            );
        } else {
            assert!(orca.is_empty(), "{orca:?}");
        }
        req.finish();
    }
}

/// Issue 11, finding 4 at the gateway: one pod reporting absurd load cannot mark its
/// pool saturated.
#[test]
fn one_pod_reporting_absurd_load_does_not_saturate_the_pool() {
    let host = Host::new();
    let bin = [("endpoint-load-metrics-bin", "CgQIARAB")];
    let mut vm = gateway_with_reports(&host, &["1000", "0.3", "0.3"], &bin);
    let mut req = vm.http();
    req.property(&["xds", "cluster_name"], b"pool_a");
    assert_eq!(
        req.request_headers(&[(":path", "/v1/completions"), (CRIT, "sheddable")], true),
        Action::Continue
    );
}

// ---------------------------------------------------------------------------------------
// Flow control (issue 16)

/// Two running slots, no server-side queue, short TTLs; classes as the client says.
fn flow(extra: &str) -> String {
    sidecar(&format!(
        r#", "trust_criticality_header": true, "flow": {{"max_running": 2, "target_queue": 0, "standard": {{"ttl": "2s"}}, "sheddable": {{"ttl": "1s"}}{extra}}}"#
    ))
}

/// Opens a request (headers only, body to come) and returns its context id and action.
fn open(vm: &mut Vm, tenant: &str, class: &str) -> (u32, Action) {
    let mut req = vm.http();
    let action = req.request_headers(
        &[
            (":method", "POST"),
            (":path", "/v1/chat/completions"),
            ("x-modelgate-tenant", tenant),
            (CRIT, class),
            ("content-length", "20"),
        ],
        false,
    );
    (req.id(), action)
}

/// The upstream answers request `id` and the stream ends.
fn complete(vm: &mut Vm, id: u32) {
    let mut req = vm.stream(id);
    req.response_headers(&[(":status", "200")], true);
    req.finish();
}

/// A flow-control VM whose two running slots tenant `a` holds; the first request's id.
fn both_slots_taken(host: &Host) -> (Vm, u32) {
    let mut vm = shedder(host, &flow(""));
    scrape(&mut vm, load(0.0, 0.1));
    let (first, _) = open(&mut vm, "a", "standard");
    open(&mut vm, "a", "standard");
    (vm, first)
}

/// Fresh scrapes for 1.3 s: the sheddable TTL (1 s) passes.
fn past_sheddable_ttl(vm: &mut Vm) {
    for _ in 0..5 {
        scrape(vm, load(0.0, 0.1));
    }
}

fn resumed(vm: &mut Vm, ids: &[u32]) -> Vec<u32> {
    ids.iter()
        .copied()
        .filter(|id| vm.stream(*id).request_resumed() > 0)
        .collect()
}

fn flow_count(vm: &Vm, class: &str, outcome: &str) -> i64 {
    vm.metric(&format!(
        "criticality=.={class};.;outcome=.={outcome};.;modelgate_shedder_flow_requests_total"
    ))
}

#[test]
fn held_requests_go_by_band_then_tenant_turn_as_slots_free() {
    let host = Host::new();
    let mut vm = shedder(&host, &flow(""));
    scrape(&mut vm, load(0.0, 0.1));
    let (a1, act1) = open(&mut vm, "a", "standard");
    let (a2, act2) = open(&mut vm, "a", "standard");
    assert_eq!((act1, act2), (Action::Continue, Action::Continue));
    // Both slots taken: held, in arrival order per tenant.
    let (s1, _) = open(&mut vm, "c", "sheddable");
    let (a3, _) = open(&mut vm, "a", "standard");
    let (a4, _) = open(&mut vm, "a", "standard");
    let (b1, held) = open(&mut vm, "b", "standard");
    assert_eq!(held, Action::Pause);
    // The body of a held request waits too (Envoy would pass the headers on with it).
    assert_eq!(
        vm.stream(b1).request_body(b"{\"model\":\"m\"}      ", true),
        Action::Pause
    );
    // Critical is never held, even with every slot taken and requests waiting.
    let (crit, action) = open(&mut vm, "a", "critical");
    assert_eq!(action, Action::Continue);
    let held = [s1, a3, a4, b1];
    vm.advance_and_tick();
    assert!(resumed(&mut vm, &held).is_empty(), "no room yet");
    let mut order = Vec::new();
    for done in [a1, crit, a2, a3, b1, a4] {
        complete(&mut vm, done);
        vm.advance_and_tick();
        for id in resumed(&mut vm, &held) {
            if !order.contains(&id) {
                order.push(id);
            }
        }
    }
    // Standard before sheddable; tenants a and b take turns, FCFS within a.
    assert_eq!(order, vec![a3, b1, a4, s1]);
    assert!(vm.stream(b1).request_forwarded());
    assert_eq!(flow_count(&vm, "standard", "released"), 3);
    assert_eq!(flow_count(&vm, "sheddable", "released"), 1);
}

/// The slot an ending stream frees goes to the next held request at once: waiting for
/// the tick would cap a pod's throughput at a batch per tick.
#[test]
fn a_freed_slot_resumes_the_next_held_request_without_waiting_for_a_tick() {
    let host = Host::new();
    let (mut vm, a1) = both_slots_taken(&host);
    let (b1, held) = open(&mut vm, "b", "standard");
    let (b2, _) = open(&mut vm, "b", "standard");
    assert_eq!(held, Action::Pause);
    complete(&mut vm, a1);
    assert_eq!(resumed(&mut vm, &[b1, b2]), vec![b1], "no tick in between");
    assert!(vm.stream(b1).request_forwarded());
    complete(&mut vm, b1);
    assert_eq!(resumed(&mut vm, &[b2]), vec![b2]);
}

#[test]
fn a_held_request_past_its_ttl_gets_429_or_503_without_a_server() {
    let host = Host::new();
    let (mut vm, _) = both_slots_taken(&host);
    let (s, _) = open(&mut vm, "b", "sheddable");
    past_sheddable_ttl(&mut vm);
    let reply = vm.stream(s).local_reply();
    assert_eq!(shed_reason(&reply).as_deref(), Some("flow_timeout"));
    assert_eq!(flow_count(&vm, "sheddable", "expired"), 1);
    // The scrape target goes away: past the TTL the answer is 503 (no server known).
    let (t, _) = open(&mut vm, "b", "standard");
    for _ in 0..30 {
        host.advance_ms(100);
        vm.tick();
    }
    let reply = vm.stream(t).local_reply().expect("answered");
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["error"]["type"], "server_error");
    assert!(reply.header("retry-after").is_some());
}

#[test]
fn a_held_request_whose_reply_the_host_refuses_goes_on_instead_of_hanging() {
    let host = Host::new();
    let (mut vm, _) = both_slots_taken(&host);
    let (s, held) = open(&mut vm, "b", "sheddable");
    assert_eq!(held, Action::Pause);
    vm.refuse("proxy_send_local_response", 10);
    past_sheddable_ttl(&mut vm);
    assert_eq!(flow_count(&vm, "sheddable", "expired"), 1);
    assert_eq!(vm.stream(s).local_reply(), None);
    assert_eq!(
        vm.stream(s).request_resumed(),
        1,
        "resumed, not left paused"
    );
    // The host answers again: the next expired request gets its 429.
    vm.allow("proxy_send_local_response");
    let (t, _) = open(&mut vm, "b", "sheddable");
    past_sheddable_ttl(&mut vm);
    let reply = vm.stream(t).local_reply();
    assert_eq!(shed_reason(&reply).as_deref(), Some("flow_timeout"));
}

#[test]
fn a_client_that_gives_up_leaves_the_queue_at_once() {
    let host = Host::new();
    let (mut vm, a1) = both_slots_taken(&host);
    let (quitter, _) = open(&mut vm, "q", "standard");
    let (next, _) = open(&mut vm, "b", "standard");
    vm.stream(quitter).finish();
    assert_eq!(
        flow_count(&vm, "standard", "abandoned"),
        0,
        "flushed on the tick"
    );
    vm.advance_and_tick();
    assert_eq!(flow_count(&vm, "standard", "abandoned"), 1);
    complete(&mut vm, a1);
    vm.advance_and_tick();
    assert_eq!(
        resumed(&mut vm, &[next]),
        vec![next],
        "the next one took the slot"
    );
}

#[test]
fn bounds_refuse_the_flooding_tenant_and_the_lowest_band_first() {
    let host = Host::new();
    let mut vm = shedder(
        &host,
        &flow(r#", "tenant_max_requests": 2, "max_requests": 3"#),
    );
    scrape(&mut vm, load(0.0, 0.1));
    open(&mut vm, "a", "standard");
    open(&mut vm, "a", "standard");
    assert_eq!(open(&mut vm, "a", "standard").1, Action::Pause);
    assert_eq!(open(&mut vm, "a", "standard").1, Action::Pause);
    let (third, _) = open(&mut vm, "a", "standard");
    assert_eq!(
        shed_reason(&vm.stream(third).local_reply()).as_deref(),
        Some("flow_full"),
        "tenant a holds its maximum"
    );
    let (s, _) = open(&mut vm, "b", "sheddable");
    assert_eq!(vm.stream(s).local_reply(), None, "held: the total is 3");
    // A standard request finds the total full: the sheddable one makes room.
    let (b, action) = open(&mut vm, "b", "standard");
    assert_eq!(action, Action::Pause);
    vm.advance_and_tick();
    assert_eq!(
        shed_reason(&vm.stream(s).local_reply()).as_deref(),
        Some("flow_full")
    );
    assert_eq!(vm.stream(b).local_reply(), None);
}

/// The in-flight cap is exact across worker VMs: each admission takes a slot in the
/// shared worker table (CAS), not a count as of the other workers' last tick.
#[test]
fn the_in_flight_cap_holds_across_workers_between_ticks() {
    let host = Host::new();
    let cfg =
        r#"{"thresholds": {"standard": {"max_in_flight": 2}, "sheddable": {"max_in_flight": 2}}}"#;
    let mut w1 = shedder(&host, cfg);
    let mut w2 = shedder(&host, cfg);
    w1.tick();
    w2.tick();
    assert_eq!(open(&mut w1, "a", "standard").1, Action::Continue);
    assert_eq!(open(&mut w2, "a", "standard").1, Action::Continue);
    // No tick since: worker 1 must still see worker 2's request.
    let (id, action) = open(&mut w1, "a", "standard");
    assert_eq!(action, Action::Pause);
    assert_eq!(
        shed_reason(&w1.stream(id).local_reply()).as_deref(),
        Some("concurrency")
    );
}
