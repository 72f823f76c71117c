//! dist/chain.wasm through the ABI: several filters in one module behave as the same filters
//! in an Envoy chain — the router's rewrite at every chunk boundary with ml_metrics before it
//! (each body byte shown to ml_metrics once), the gate's refusal and the metrics of it, one
//! context and one VM call per callback for all of them, and configuration errors that name
//! the filter and its field.

use modelgate_abi_tests::{chat_post_headers, header_refs, one_cut, Action, Host, Vm};

const ROUTER: &str = r#"{"models": [{"name": "llama-3-8b", "aliases": ["llama3"]},
                                    {"name": "qwen-2-7b", "aliases": ["qwen"]}]}"#;
// The aliases too: `requested_model` is what the client asked for.
const METRICS: &str =
    r#"{"models": ["llama-3-8b", "qwen-2-7b", "llama3", "qwen"], "trust_model_header": true}"#;
const GATE: &str = r#"{"model": "qwen-2-7b", "health": {"cluster": "local"}, "period": "1s",
                       "gated_prefixes": ["/v1/chat/"]}"#;

fn chain(host: &Host, filters: &[(&str, &str)]) -> Vm {
    host.vm("chain")
        .root_id("chain")
        .allow_on_headers_stop_iteration(true)
        .configure(&config(filters))
        .unwrap_or_else(|e| panic!("{e:#}"))
}

fn config(filters: &[(&str, &str)]) -> String {
    let stages: Vec<String> = filters
        .iter()
        .map(|(name, cfg)| format!(r#"{{"name": "{name}", "config": {cfg}}}"#))
        .collect();
    format!(r#"{{"filters": [{}]}}"#, stages.join(","))
}

#[test]
fn metrics_then_router_route_and_count_at_every_chunk_boundary() {
    let host = Host::new();
    let mut vm = chain(&host, &[("ml_metrics", METRICS), ("model_router", ROUTER)]);
    // The model comes late, so the router holds the headers over several chunks while
    // ml_metrics, before it, reads the body for the requested model.
    let body =
        br#"{"messages":[{"role":"user","content":"hi \"model\": x"}],"model":"qwen","n":1}"#;
    let want = String::from_utf8_lossy(body).replace(r#""model":"qwen""#, r#""model":"qwen-2-7b""#);
    let mut n = 0;
    for cuts in one_cut(body.len()) {
        let mut req = vm.http();
        let h = chat_post_headers(body.len());
        assert_eq!(req.request_headers(&header_refs(&h), false), Action::Pause);
        assert_eq!(
            req.request_body_split(body, &cuts),
            Action::Continue,
            "{cuts:?}"
        );
        assert_eq!(
            String::from_utf8(req.forwarded_request_body()).unwrap(),
            want
        );
        assert_eq!(
            req.request_header("x-modelgate-model").as_deref(),
            Some("qwen-2-7b")
        );
        assert!(req.route_cache_cleared());
        req.response_headers(
            &[(":status", "200"), ("content-type", "application/json")],
            false,
        );
        req.response_body(
            br#"{"usage":{"prompt_tokens":3,"completion_tokens":2}}"#,
            true,
        );
        req.finish();
        n += 1;
    }
    let labels = [
        ("requested_model", "qwen"),
        ("model_name", "qwen-2-7b"),
        ("code_class", "2xx"),
    ];
    assert_eq!(
        host.metric_total("ml_requests_total", &labels),
        n,
        "{:#?}",
        host.metrics().keys()
    );
    assert_eq!(
        host.metric_total("ml_tokens_total", &[("type", "prompt")]),
        3 * n
    );
}

#[test]
fn a_local_reply_stops_the_later_filters() {
    let host = Host::new();
    let mut vm = chain(&host, &[("readiness_gate", GATE), ("model_router", ROUTER)]);
    // Before the first poll round the model is not ready: the gate answers 503 and the
    // router never sees the request.
    let mut req = vm.http();
    let h = chat_post_headers(2);
    assert_eq!(req.request_headers(&header_refs(&h), false), Action::Pause);
    let reply = req.local_reply().expect("the gate answers");
    assert_eq!(reply.status, 503);
    assert_eq!(
        reply.header("x-modelgate-gated").as_deref(),
        Some("unknown")
    );
    assert_eq!(req.request_header("x-modelgate-model"), None);
    req.finish();
    // Paths the gate does not guard reach the router (its `/v1/models` answer).
    let mut req = vm.http();
    let action = req.request_headers(
        &[
            (":method", "GET"),
            (":path", "/v1/models"),
            (":authority", "gw"),
        ],
        true,
    );
    assert_eq!(action, Action::Pause);
    assert_eq!(req.local_reply().expect("router lists models").status, 200);
    req.finish();
}

#[test]
fn a_later_filter_reads_the_headers_an_earlier_one_wrote_in_the_same_callback() {
    let host = Host::new();
    let picker = r#"{"pools": {"llama-3-8b": ["10.0.0.1:8000"]}}"#;
    let mut vm = chain(
        &host,
        &[("model_router", ROUTER), ("endpoint_picker", picker)],
    );
    // The router reads this request's headers and lets it pass, removing the routing
    // headers a client must not set; the picker, in the same callback, must not see them.
    // Then with the whole-map read refused: headers are read and removed one by one, so a
    // host error never makes a client's routing header look absent and stay.
    for refused in [false, true] {
        if refused {
            vm.refuse("proxy_get_header_map_pairs", 10);
        }
        for _ in 0..3 {
            let mut req = vm.http();
            let action = req.request_headers(
                &[
                    (":method", "GET"),
                    (":path", "/healthz"),
                    (":authority", "gw"),
                    ("x-modelgate-model", "llama-3-8b"),
                    ("x-modelgate-criticality", "critical"),
                ],
                true,
            );
            assert_eq!(action, Action::Continue);
            assert_eq!(req.request_header("x-modelgate-model"), None, "{refused}");
            assert_eq!(req.request_header("x-gateway-destination-endpoint"), None);
            req.finish();
        }
    }
    vm.allow("proxy_get_header_map_pairs");
    // A routed request: the picker reads the model the router set and picks the pod.
    let body = br#"{"model":"llama3","messages":[]}"#;
    let mut req = vm.http();
    let h = chat_post_headers(body.len());
    assert_eq!(req.request_headers(&header_refs(&h), false), Action::Pause);
    assert_eq!(req.request_body(body, true), Action::Continue);
    assert_eq!(
        req.request_header("x-gateway-destination-endpoint")
            .as_deref(),
        Some("10.0.0.1:8000")
    );
    req.finish();
}

#[test]
fn one_context_and_one_call_per_callback_for_all_filters() {
    let host = Host::new();
    let mut vm = chain(&host, &[("ml_metrics", METRICS), ("model_router", ROUTER)]);
    let body = br#"{"model":"llama3","messages":[]}"#;
    let before = vm.call_counts();
    let mut req = vm.http();
    let h = chat_post_headers(body.len());
    req.request_headers(&header_refs(&h), false);
    req.request_body(body, true);
    req.response_headers(&[(":status", "200")], false);
    req.response_body(b"{}", true);
    req.finish();
    // context create, request headers and body, response headers and body, log.
    assert_eq!((vm.call_counts() - before).callbacks, 6);
}

#[test]
fn configuration_errors_name_the_filter_and_its_field() {
    for (cfg, field) in [
        (r#"{"filters": []}"#.to_string(), "filters"),
        (config(&[("router", "{}")]), "filters[0].name"),
        (
            config(&[("ml_metrics", METRICS), ("ml_metrics", METRICS)]),
            "filters[1].name",
        ),
        (
            config(&[
                ("ml_metrics", METRICS),
                ("model_router", r#"{"models": [{"nam": "x"}]}"#),
            ]),
            "filters[1].config.models[0].nam",
        ),
        (
            config(&[("load_shedder", r#"{"flow": {}}"#), ("ml_metrics", METRICS)]),
            "filters[0]",
        ),
    ] {
        let err = Host::load("chain")
            .configure(&cfg)
            .err()
            .unwrap_or_else(|| panic!("accepted {cfg}"));
        assert!(
            format!("{err:#}").contains(&format!("`{field}`")),
            "{cfg}: {err:#}"
        );
    }
}
