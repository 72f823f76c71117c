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
    // Worker B learns A's in-flight count through shared data on the ticks.
    assert_eq!(
        request(&mut b, Some("sheddable"), true).0,
        Action::Continue,
        "B has not synced yet"
    );
    host.advance_ms(100);
    a.tick();
    b.tick();
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

#[test]
fn the_gateway_sheds_sheddable_when_the_pool_is_saturated() {
    let host = Host::new();
    let cfg =
        r#"{"gateway": {"utilization_threshold": 0.8, "report_ttl": "10s"}, "tick": "100ms"}"#;
    let mut vm = shedder(&host, cfg);
    vm.tick();
    for (i, util) in ["0.95", "0.9"].iter().enumerate() {
        let mut req = vm.http();
        req.property(&["xds", "cluster_name"], b"pool_a");
        req.property(
            &["upstream", "address"],
            format!("10.0.0.{i}:8000").as_bytes(),
        );
        req.request_headers(&[(":path", "/v1/completions"), (CRIT, "standard")], true);
        let orca = format!("TEXT application_utilization={util}, rps_fractional=5");
        req.response_headers(
            &[(":status", "200"), ("endpoint-load-metrics", orca.as_str())],
            false,
        );
        assert_eq!(
            req.response_header("endpoint-load-metrics"),
            None,
            "stripped before the client"
        );
        req.finish();
    }
    host.advance_ms(100);
    vm.tick();
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
