//! readiness_gate.wasm through the ABI: configuration, the poll round on a tick, the gate
//! and the probe, shared snapshots between VMs, failures of the polls.

use modelgate_abi_tests::{Action, CallOutcome, Host, HttpCall, LogLevel, Vm};

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";
const SNAPSHOT_KEY: &str = "modelgate.readiness.v1";

type Responder = Box<dyn Fn(&HttpCall) -> CallOutcome>;

fn config(extra: &str) -> String {
    format!(
        r#"{{"model": "{MODEL}",
            "health": {{"cluster": "model_server", "path": "/health"}},
            "models_path": "/v1/models",
            "period": "1s", "timeout": "500ms", "retry_after": "5s",
            "probe_path": "/modelgate/ready", "gated_prefixes": ["/v1/"] {extra}}}"#
    )
}

fn gate(host: &Host, extra: &str) -> Vm {
    host.vm("readiness_gate")
        .root_id("readiness_gate")
        .configure(&config(extra))
        .unwrap()
}

fn models_list(ids: &[&str]) -> String {
    let data: Vec<String> = ids
        .iter()
        .map(|id| format!(r#"{{"id": "{id}", "object": "model"}}"#))
        .collect();
    format!(r#"{{"object": "list", "data": [{}]}}"#, data.join(","))
}

/// The answers of a healthy server that serves MODEL.
fn healthy(call: &HttpCall) -> CallOutcome {
    match call.path().as_str() {
        "/health" => CallOutcome::status(200),
        "/v1/models" => CallOutcome::json(200, &models_list(&[MODEL])),
        "/ready" => CallOutcome::json(200, r#"{"state":"ready","revision":"r1"}"#),
        other => panic!("unexpected poll {other}"),
    }
}

/// One poll round: tick (after a period, so the lease is free), answer every call.
fn round(vm: &mut Vm, respond: impl FnMut(&HttpCall) -> CallOutcome) -> Vec<HttpCall> {
    vm.host().advance_ms(1000);
    vm.tick();
    vm.answer_all(respond)
}

/// Status, gated header and JSON body of a gated request.
fn send(vm: &mut Vm, path: &str) -> (Action, Option<modelgate_abi_tests::LocalReply>) {
    let mut req = vm.http();
    let action = req.request_headers(
        &[
            (":method", "POST"),
            (":path", path),
            (":authority", "pod"),
            ("content-type", "application/json"),
        ],
        false,
    );
    let reply = req.local_reply();
    req.finish();
    (action, reply)
}

#[test]
fn configuration_errors_name_the_field() {
    for (cfg, field) in [
        (config(r#", "bogus": 1"#), "bogus"),
        (r#"{"model": "  "}"#.to_string(), "model"),
        (config(r#", "max_age": "10ms""#), "max_age"),
        (
            r#"{"model": "m", "period": "1s", "timeout": "2s"}"#.to_string(),
            "timeout",
        ),
        (r#"{"model": "m", "period": "soon"}"#.to_string(), "period"),
        (
            r#"{"model": "m", "gated_prefixes": ["v1"]}"#.to_string(),
            "gated_prefixes[0]",
        ),
        ("not json".to_string(), ""),
    ] {
        let err = Host::load("readiness_gate")
            .configure(&cfg)
            .err()
            .unwrap_or_else(|| panic!("accepted {cfg}"));
        let msg = format!("{err:#}");
        assert!(
            msg.contains("[Error] readiness_gate: invalid configuration"),
            "{msg}"
        );
        assert!(msg.contains(&format!("`{field}")), "{cfg}: {msg}");
    }
}

#[test]
fn minimal_configuration_uses_the_defaults() {
    let mut vm = Host::load("readiness_gate")
        .configure(&format!(r#"{{"model": "{MODEL}"}}"#))
        .unwrap();
    assert_eq!(
        vm.tick_period_ms(),
        250,
        "a quarter of the default 1s period"
    );
    vm.tick();
    let calls = vm.pending_calls();
    let paths: Vec<String> = calls.iter().map(HttpCall::path).collect();
    assert_eq!(paths, ["/health", "/v1/models"]);
    for c in &calls {
        assert_eq!(c.cluster, "model_server");
        assert_eq!(c.authority(), "model_server");
        assert_eq!(c.method(), "GET");
        assert_eq!(c.timeout_ms, 500);
    }
}

#[test]
fn before_the_first_round_gated_paths_get_503_and_others_pass() {
    let mut vm = gate(&Host::new(), "");
    let (action, reply) = send(&mut vm, "/v1/chat/completions");
    assert_eq!(action, Action::Pause);
    let reply = reply.expect("gated");
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("retry-after").as_deref(), Some("5"));
    assert_eq!(
        reply.header("x-modelgate-gated").as_deref(),
        Some("unknown")
    );
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("application/json")
    );
    let body = reply.json();
    assert_eq!(body["error"]["code"], "model_not_ready");
    assert!(body["error"]["message"].as_str().unwrap().contains(MODEL));

    let (action, reply) = send(&mut vm, "/metrics");
    assert_eq!(action, Action::Continue);
    assert!(reply.is_none());

    let (_, probe) = send(&mut vm, "/modelgate/ready");
    let probe = probe.expect("probe answered locally");
    assert_eq!(probe.status, 503);
    assert_eq!(probe.header("cache-control").as_deref(), Some("no-store"));
    assert_eq!(probe.json()["status"], "unknown");
}

#[test]
fn a_healthy_round_opens_the_gate_and_publishes_the_snapshot() {
    let host = Host::new();
    let mut vm = gate(&host, "");
    let calls = round(&mut vm, healthy);
    assert_eq!(calls.len(), 2);
    let snapshot: serde_json::Value = serde_json::from_str(
        &host
            .shared_text("modelgate", SNAPSHOT_KEY)
            .expect("published"),
    )
    .unwrap();
    assert_eq!(snapshot["status"], "ready");
    assert_eq!(snapshot["model"], MODEL);
    assert_eq!(snapshot["seq"], 1);
    assert!(vm.logged(LogLevel::Info, "unknown -> ready"));

    let (action, reply) = send(&mut vm, "/v1/chat/completions");
    assert_eq!((action, reply), (Action::Continue, None));
    let (_, probe) = send(&mut vm, "/modelgate/ready?verbose=1");
    let probe = probe.unwrap();
    assert_eq!(probe.status, 200);
    assert_eq!(probe.json()["status"], "ready");
}

#[test]
fn each_failing_check_keeps_the_gate_closed_with_its_reason() {
    let cases: Vec<(&str, Responder, &str)> = vec![
        (
            "health 503",
            Box::new(|c: &HttpCall| {
                if c.path() == "/health" {
                    CallOutcome::status(503)
                } else {
                    healthy(c)
                }
            }),
            "health: status 503",
        ),
        (
            "model not listed",
            Box::new(|c: &HttpCall| {
                if c.path() == "/v1/models" {
                    CallOutcome::json(200, &models_list(&["other"]))
                } else {
                    healthy(c)
                }
            }),
            "is not listed yet",
        ),
        (
            "models not a list",
            Box::new(|c: &HttpCall| {
                if c.path() == "/v1/models" {
                    CallOutcome::text(200, "<html>")
                } else {
                    healthy(c)
                }
            }),
            "not an OpenAI model list",
        ),
        (
            "health timeout",
            Box::new(|c: &HttpCall| {
                if c.path() == "/health" {
                    CallOutcome::timeout()
                } else {
                    healthy(c)
                }
            }),
            "health: status 504",
        ),
        (
            "connection refused",
            Box::new(|_: &HttpCall| CallOutcome::connect_failure()),
            "status 503",
        ),
    ];
    for (name, respond, reason) in cases {
        let host = Host::new();
        let mut vm = gate(&host, "");
        round(&mut vm, respond);
        let (action, reply) = send(&mut vm, "/v1/completions");
        assert_eq!(action, Action::Pause, "{name}");
        let reply = reply.unwrap_or_else(|| panic!("{name}: not gated"));
        assert_eq!(reply.status, 503, "{name}");
        assert_eq!(
            reply.header("x-modelgate-gated").as_deref(),
            Some("not_ready"),
            "{name}"
        );
        let msg = reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(msg.contains(reason), "{name}: {msg}");
    }
}

#[test]
fn a_reset_poll_is_not_ready_and_does_not_trap() {
    // Envoy answers a reset call with proxy_on_http_call_response(token, 0, 0, 0) and no
    // response headers; reading :status then gets BadArgument from Envoy.
    let mut vm = gate(&Host::new(), "");
    round(&mut vm, |c| {
        if c.path() == "/health" {
            CallOutcome::Reset
        } else {
            healthy(c)
        }
    });
    let (_, reply) = send(&mut vm, "/v1/completions");
    assert_eq!(reply.expect("gated").status, 503);
}

#[test]
fn loader_states_drive_the_gate() {
    let loader = r#", "loader": {"cluster": "loader", "path": "/ready"}"#;
    for (body, status, gated, code) in [
        (r#"{"state":"ready","revision":"r1"}"#, 200, None, None),
        (
            r#"{"state":"draining","revision":"r1"}"#,
            503,
            Some("draining"),
            Some("model_draining"),
        ),
        (
            r#"{"state":"updating"}"#,
            503,
            Some("draining"),
            Some("model_draining"),
        ),
        (
            r#"{"state":"loading"}"#,
            503,
            Some("not_ready"),
            Some("model_not_ready"),
        ),
    ] {
        let mut vm = gate(&Host::new(), loader);
        let calls = round(&mut vm, |c| {
            if c.cluster == "loader" {
                CallOutcome::json(status, body)
            } else {
                healthy(c)
            }
        });
        assert_eq!(calls.len(), 3);
        let (_, reply) = send(&mut vm, "/v1/chat/completions");
        assert_eq!(
            reply
                .as_ref()
                .and_then(|r| r.header("x-modelgate-gated"))
                .as_deref(),
            gated,
            "{body}"
        );
        assert_eq!(
            reply
                .as_ref()
                .map(|r| r.json()["error"]["code"].as_str().unwrap().to_string())
                .as_deref(),
            code,
            "{body}"
        );
    }
}

#[test]
fn one_vm_polls_per_period_and_every_vm_follows_the_snapshot() {
    let host = Host::new();
    let mut a = gate(&host, "");
    let mut b = gate(&host, "");
    host.advance_ms(1000);
    a.tick();
    b.tick();
    assert_eq!(a.pending_calls().len(), 2, "A holds the lease");
    assert!(
        b.pending_calls().is_empty(),
        "B must not poll in the same period"
    );
    a.answer_all(healthy);
    // B picks the snapshot up on its own next tick, not per request.
    let (_, before) = send(&mut b, "/v1/completions");
    assert!(before.is_some(), "B has not ticked since A published");
    host.advance_ms(250);
    b.tick();
    assert!(
        b.pending_calls().is_empty(),
        "lease still held within the period"
    );
    let (action, reply) = send(&mut b, "/v1/completions");
    assert_eq!((action, reply), (Action::Continue, None));
    // The transition is logged once, by the publisher.
    assert!(a.logged(LogLevel::Info, "-> ready"));
    assert!(!b.logged(LogLevel::Info, "-> ready"));
    // Next period either VM may poll, but only one does.
    host.advance_ms(1000);
    b.tick();
    a.tick();
    assert_eq!(a.pending_calls().len() + b.pending_calls().len(), 2);
}

#[test]
fn a_snapshot_older_than_max_age_closes_the_gate() {
    let host = Host::new();
    let mut vm = gate(&host, r#", "max_age": "3s""#);
    round(&mut vm, healthy);
    assert_eq!(send(&mut vm, "/v1/completions").0, Action::Continue);
    // Polls dispatched but never answered: no new snapshot.
    for _ in 0..4 {
        host.advance_ms(1000);
        vm.tick();
    }
    let (_, reply) = send(&mut vm, "/v1/completions");
    let reply = reply.expect("stale snapshot must gate");
    assert_eq!(reply.header("x-modelgate-gated").as_deref(), Some("stale"));
    assert!(vm.logged(LogLevel::Warn, "stale"));
}

#[test]
fn an_unknown_cluster_is_not_ready_without_a_trap() {
    let host = Host::new();
    host.clusters(&["somewhere_else"]);
    let mut vm = gate(&host, "");
    host.advance_ms(1000);
    vm.tick();
    assert!(vm.pending_calls().is_empty());
    let (_, reply) = send(&mut vm, "/v1/completions");
    let msg = reply.expect("gated").json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("cannot call cluster `model_server`"), "{msg}");
}

#[test]
fn requests_without_a_path_pass() {
    let mut vm = gate(&Host::new(), "");
    let mut req = vm.http();
    assert_eq!(
        req.request_headers(&[(":method", "GET")], true),
        Action::Continue
    );
    assert!(req.local_reply().is_none());
}
