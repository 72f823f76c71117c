//! ml_metrics.wasm through the ABI: per-request metrics from JSON and SSE bodies cut at
//! every byte, labels from the other filters' headers and local replies, pod metrics from
//! the shared snapshots, configuration errors.

use modelgate_abi_tests::{one_cut, Action, Host, Vm};

const CONFIG: &str =
    r#"{"models": ["llama-3-8b", "qwen-2-7b"], "tick_period": "1s", "trust_model_header": true}"#;

fn metrics(host: &Host) -> Vm {
    host.vm("ml_metrics")
        .root_id("ml_metrics")
        .configure(CONFIG)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

fn samples(host: &Host, name: &str) -> Vec<u64> {
    host.metrics()
        .iter()
        .filter(|(n, _)| n.ends_with(&format!(";.;{name}")))
        .flat_map(|(_, m)| m.samples.clone())
        .collect()
}

const POST: &[(&str, &str)] = &[
    (":method", "POST"),
    (":path", "/v1/chat/completions"),
    (":authority", "gw"),
    ("content-type", "application/json"),
];

#[test]
fn configuration_errors_name_the_field() {
    for (cfg, field) in [
        (r#"{"models": ["other"]}"#, "models[0]"),
        (r#"{"models": ["a", "a"]}"#, "models[1]"),
        (r#"{"tick_period": "5ms"}"#, "tick_period"),
        (r#"{"paths": ["v1"]}"#, "paths[0]"),
        (r#"{"bogus": 1}"#, "bogus"),
    ] {
        let err = Host::load("ml_metrics")
            .configure(cfg)
            .err()
            .unwrap_or_else(|| panic!("accepted {cfg}"));
        assert!(
            format!("{err:#}").contains(&format!("`{field}`")),
            "{cfg}: {err:#}"
        );
    }
}

#[test]
fn a_json_completion_is_counted_with_its_tokens_at_every_chunk_boundary() {
    let req_body = br#"{"messages":[{"role":"user","content":"hi \"there\""}],"model":"llama-3-8b","stream":false}"#;
    let resp_body = br#"{"id":"x","model":"llama-3-8b","choices":[{"message":{"content":"{\"usage\":1}"}}],"usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18}}"#;
    let host = Host::new();
    let mut vm = metrics(&host);
    let mut n = 0;
    for cut in one_cut(req_body.len()) {
        for resp_cut in [vec![], vec![resp_body.len() / 2], vec![17, 90]] {
            let mut req = vm.http();
            assert_eq!(req.request_headers(POST, false), Action::Continue);
            req.request_body_split(req_body, &cut);
            host.advance_ms(40);
            req.response_headers(
                &[(":status", "200"), ("content-type", "application/json")],
                false,
            );
            req.response_body_split(resp_body, &resp_cut);
            assert_eq!(
                req.forwarded_response_body(),
                resp_body.to_vec(),
                "bodies pass unchanged"
            );
            req.finish();
            n += 1;
        }
    }
    let l = [("requested_model", "llama-3-8b"), ("code_class", "2xx")];
    assert_eq!(host.metric_total("ml_requests_total", &l), n);
    assert_eq!(
        host.metric_total("ml_tokens_total", &[("type", "prompt")]),
        11 * n
    );
    assert_eq!(
        host.metric_total("ml_tokens_total", &[("type", "completion")]),
        7 * n
    );
    assert!(samples(&host, "ml_request_duration_milliseconds")
        .iter()
        .all(|&d| d == 40));
}

#[test]
fn a_streamed_completion_records_time_to_first_token_at_every_boundary() {
    let sse = concat!(
        "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}],\"model\":\"qwen-2-7b\"}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n",
        "data: [DONE]\n\n"
    )
    .as_bytes();
    let body =
        br#"{"model":"qwen","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#;
    let host = Host::new();
    let mut vm = metrics(&host);
    let mut n = 0;
    for cut in one_cut(sse.len()) {
        let mut req = vm.http();
        req.request_headers(POST, false);
        req.request_headers_now();
        req.request_body(body, true);
        host.advance_ms(5);
        req.response_headers(
            &[(":status", "200"), ("content-type", "text/event-stream")],
            false,
        );
        host.advance_ms(20);
        let c = cut[0];
        req.response_body(&sse[..c], false);
        host.advance_ms(10);
        req.response_body(&sse[c..], true);
        req.finish();
        n += 1;
    }
    assert_eq!(
        host.metric_total("ml_requests_total", &[("requested_model", "other")]),
        n,
        "`qwen` is not a listed model"
    );
    assert_eq!(
        host.metric_total("ml_tokens_total", &[("type", "completion")]),
        2 * n
    );
    assert_eq!(
        samples(&host, "ml_time_to_first_token_milliseconds").len() as i64,
        n
    );
}

#[test]
fn local_replies_of_the_other_filters_are_counted_by_reason() {
    let host = Host::new();
    let mut vm = metrics(&host);
    // The shedder's 429 and the gate's 503 reach this filter as responses (it runs first).
    for (status, header, value, metric) in [
        ("429", "x-modelgate-shed", "queue", "ml_requests_shed_total"),
        (
            "503",
            "x-modelgate-gated",
            "not_ready",
            "ml_requests_gated_total",
        ),
    ] {
        let mut req = vm.http();
        req.request_headers(POST, false);
        req.request_body(br#"{"model":"llama-3-8b"}"#, true);
        req.response_headers(
            &[
                (":status", status),
                ("content-type", "application/json"),
                (header, value),
            ],
            false,
        );
        req.response_body(br#"{"error":{"message":"no"}}"#, true);
        req.finish();
        assert_eq!(
            host.metric_total(metric, &[("reason", value)]),
            1,
            "{metric}"
        );
    }
    assert_eq!(
        host.metric_total("ml_requests_total", &[("code_class", "4xx")]),
        1
    );
    assert_eq!(
        host.metric_total("ml_requests_total", &[("code_class", "5xx")]),
        1
    );
}

#[test]
fn the_router_target_and_criticality_become_labels() {
    let host = Host::new();
    let mut vm = metrics(&host);
    let mut req = vm.http();
    // What the router adds to the request before it goes upstream.
    let mut headers = POST.to_vec();
    headers.push(("x-modelgate-model", "qwen-2-7b"));
    headers.push(("x-modelgate-criticality", "sheddable"));
    req.request_headers(&headers, false);
    req.request_body(br#"{"model":"chat"}"#, true);
    req.response_headers(
        &[(":status", "200"), ("content-type", "application/json")],
        true,
    );
    req.finish();
    assert_eq!(
        host.metric_total(
            "ml_requests_total",
            &[("model_name", "qwen-2-7b"), ("criticality", "sheddable")]
        ),
        1
    );
}

#[test]
fn requests_that_are_not_inference_are_not_counted() {
    let host = Host::new();
    let mut vm = metrics(&host);
    let mut req = vm.http();
    req.request_headers(&[(":method", "GET"), (":path", "/v1/models")], true);
    req.response_headers(&[(":status", "200")], true);
    req.finish();
    let mut req = vm.http();
    req.request_headers(&[(":method", "POST"), (":path", "/admin")], true);
    req.finish();
    assert_eq!(host.metric_total("ml_requests_total", &[]), 0);
}

#[test]
fn pod_metrics_follow_the_shared_snapshots_once_per_change() {
    let host = Host::new();
    let mut a = metrics(&host);
    let mut b = metrics(&host);
    host.set_shared_data(
        "modelgate",
        "modelgate.readiness.v1",
        br#"{"status":"ready","reason":"","model":"llama-3-8b","checked_at_ms":1,"seq":1,"health_latency_ms":12}"#,
    );
    for _ in 0..3 {
        host.advance_ms(1000);
        a.tick();
        b.tick();
    }
    assert_eq!(host.metric_total("ml_model_healthy", &[]), 1);
    assert_eq!(
        samples(&host, "ml_health_check_latency_milliseconds"),
        vec![12],
        "one observation per check across VMs"
    );
}

#[test]
fn non_utf8_request_headers_do_not_trap() {
    let host = Host::new();
    let mut vm = metrics(&host);
    let mut req = vm.http();
    req.request_headers_bytes(
        &[
            (":method", b"POST"),
            (":path", b"/v1/completions?q=caf\xe9"),
            ("x-modelgate-criticality", b"\xff"),
        ],
        false,
    );
    req.request_body(br#"{"model":"llama-3-8b"}"#, true);
    req.response_headers(&[(":status", "200")], true);
    req.finish();
    assert_eq!(host.metric_total("ml_requests_total", &[]), 1);
}
