//! dist/model_router.wasm through the proxy-wasm ABI as Envoy 1.40 drives it: the body
//! rewrite and content-length at every chunk boundary, the early stop at the model, the
//! routing headers, errors as local replies, /v1/models, trailers, pass-through, the
//! weighted split from WASI random_get, and the stall without allow_on_headers_stop_iteration.

use modelgate_abi_tests::{
    chat_post_headers, envoy_load_problems, header_refs, module_path, one_cut, Action, Host, Vm,
};
use serde_json::Value;

const CONFIG: &str = r#"{
  "models": [
    {"name": "llama-3-8b", "criticality": "critical", "aliases": ["llama3"]},
    {"name": "qwen-2-7b", "aliases": ["qwen"]},
    {"name": "chat", "criticality": "sheddable",
     "targets": [{"name": "llama-3-8b", "weight": 3}, {"name": "qwen-2-7b", "weight": 1}]}
  ],
  "max_body_bytes": 2048
}"#;

fn vm(config: &str) -> Vm {
    Host::load("model_router")
        .configure(config)
        .expect("config accepted")
}

#[test]
fn module_loads_in_envoy() {
    let problems = envoy_load_problems(&module_path("model_router")).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn alias_rewrite_at_every_chunk_boundary() {
    let mut vm = vm(CONFIG);
    let body =
        br#"{"messages":[{"role":"user","content":"caf\u00e9 \"model\""}],"model":"qwen","n":1}"#;
    let expected =
        String::from_utf8_lossy(body).replace(r#""model":"qwen""#, r#""model":"qwen-2-7b""#);
    for cuts in one_cut(body.len()) {
        let mut req = vm.http();
        let h = chat_post_headers(body.len());
        assert_eq!(req.request_headers(&header_refs(&h), false), Action::Pause);
        let last = req.request_body_split(body, &cuts);
        assert_eq!(last, Action::Continue, "cuts {cuts:?}");
        assert_eq!(
            String::from_utf8(req.forwarded_request_body()).unwrap(),
            expected,
            "cuts {cuts:?}"
        );
        assert_eq!(
            req.request_header("content-length"),
            Some(expected.len().to_string())
        );
        assert_eq!(
            req.request_header("x-modelgate-model").as_deref(),
            Some("qwen-2-7b")
        );
        assert_eq!(
            req.request_header("x-modelgate-criticality").as_deref(),
            Some("standard")
        );
        assert!(req.route_cache_cleared());
        assert!(req.local_reply().is_none());
        req.finish();
    }
}

#[test]
fn same_name_continues_at_the_model_without_the_rest() {
    let mut vm = vm(CONFIG);
    let head = br#"{"model":"llama-3-8b","messages":["#;
    let mut req = vm.http();
    let h = chat_post_headers(1000);
    assert_eq!(req.request_headers(&header_refs(&h), false), Action::Pause);
    // The first chunk holds the model: the router decides and lets the body stream on.
    assert_eq!(req.request_body(head, false), Action::Continue);
    assert_eq!(
        req.request_header("x-modelgate-model").as_deref(),
        Some("llama-3-8b")
    );
    assert_eq!(
        req.request_header("x-modelgate-criticality").as_deref(),
        Some("critical")
    );
    // content-length untouched, body forwarded as it came.
    assert_eq!(
        req.request_header("content-length").as_deref(),
        Some("1000")
    );
    assert_eq!(req.forwarded_request_body(), head.to_vec());
    assert_eq!(req.request_body(b"1,2]}", true), Action::Continue);
    req.finish();
}

#[test]
fn client_criticality_only_lowers() {
    let mut vm = vm(CONFIG);
    for (model, client, want) in [
        ("llama-3-8b", "sheddable", "sheddable"),
        ("chat", "critical", "sheddable"),
        ("qwen", "CRITICAL", "standard"),
        ("qwen", "nonsense", "standard"),
    ] {
        let body = format!(r#"{{"model":"{model}"}}"#);
        let mut req = vm.http();
        let mut h = chat_post_headers(body.len());
        h.push(("x-modelgate-criticality", client.to_string()));
        req.request_headers(&header_refs(&h), false);
        assert_eq!(req.request_body(body.as_bytes(), true), Action::Continue);
        assert_eq!(
            req.request_header("x-modelgate-criticality").as_deref(),
            Some(want),
            "{model}/{client}"
        );
        req.finish();
    }
}

fn error_of(vm: &mut Vm, headers: &[(&str, &str)], body: Option<&[u8]>) -> (u32, Value) {
    let mut req = vm.http();
    let eos = body.is_none();
    req.request_headers(headers, eos);
    if let Some(b) = body {
        req.request_body(b, true);
    }
    let reply = req.local_reply().expect("a local reply");
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("application/json")
    );
    assert!(
        !req.request_forwarded(),
        "an error must not reach the upstream"
    );
    let v = reply.json();
    (reply.status, v)
}

#[test]
fn errors_are_local_openai_replies() {
    let mut router = vm(CONFIG);
    let json = |len: usize| chat_post_headers(len);
    let cases: &[(&[u8], u32, &str)] = &[
        (b"{bad", 400, "invalid_json"),
        (br#"{"messages":[]}"#, 400, "missing_required_parameter"),
        (br#"{"model":7}"#, 400, "invalid_type"),
        (br#"{"model":"gpt-5"}"#, 404, "model_not_found"),
    ];
    for (body, status, code) in cases {
        let h = json(body.len());
        let (s, v) = error_of(&mut router, &header_refs(&h), Some(body));
        assert_eq!(
            (s, v["error"]["code"].as_str().unwrap()),
            (*status, *code),
            "{v}"
        );
    }
    // A second `model` is caught while the router still reads (here for the prefix hash);
    // once it has decided, the rest of the body is the model server's to check.
    let mut hashing = vm(r#"{"models":[{"name":"qwen"}],"prefix_affinity":{"chars":64}}"#);
    let body = br#"{"model":"qwen","model":"qwen"}"#;
    let (s, v) = error_of(&mut hashing, &header_refs(&json(body.len())), Some(body));
    assert_eq!(
        (s, v["error"]["code"].as_str().unwrap()),
        (400, "invalid_value")
    );
    let mut h = chat_post_headers(10);
    h[3].1 = "text/plain".into();
    assert_eq!(error_of(&mut router, &header_refs(&h), Some(b"x")).0, 415);
    let h = chat_post_headers(5000);
    assert_eq!(error_of(&mut router, &header_refs(&h), None).0, 413);
    // Growing past the limit while buffering (no content-length).
    let mut req = router.http();
    let h: Vec<(&str, &str)> = vec![
        (":method", "POST"),
        (":path", "/v1/completions"),
        ("content-type", "application/json"),
    ];
    req.request_headers(&h, false);
    let filler = vec![b' '; 1000];
    req.request_body(br#"{"prompt":""#, false);
    assert_eq!(req.request_body(&filler, false), Action::Pause);
    assert_eq!(req.request_body(&filler, false), Action::Pause);
    assert!(
        req.local_reply().is_none(),
        "2011 bytes are within the 2048 limit"
    );
    req.request_body(&filler, false);
    assert_eq!(req.local_reply().map(|r| r.status), Some(413));
}

#[test]
fn models_are_listed_and_other_paths_pass() {
    let mut vm = vm(CONFIG);
    let mut req = vm.http();
    assert_eq!(
        req.request_headers(&[(":method", "GET"), (":path", "/v1/models")], true),
        Action::Pause
    );
    let reply = req.local_reply().unwrap();
    assert_eq!(reply.status, 200);
    let ids: Vec<String> = reply.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["llama-3-8b", "qwen-2-7b", "chat"]);
    req.finish();

    let mut req = vm.http();
    let h = [
        (":method", "GET"),
        (":path", "/health"),
        ("x-modelgate-model", "qwen-2-7b"),
        ("x-modelgate-criticality", "critical"),
        ("x-modelgate-prefix-hash", "0123456789abcdef"),
    ];
    assert_eq!(req.request_headers(&h, true), Action::Continue);
    for name in [
        "x-modelgate-model",
        "x-modelgate-criticality",
        "x-modelgate-prefix-hash",
    ] {
        assert_eq!(req.request_header(name), None, "spoofed {name} kept");
    }
    assert!(req.local_reply().is_none());
}

#[test]
fn alias_is_rewritten_at_the_model_and_the_rest_streams() {
    let mut vm = vm(CONFIG);
    let head = br#"{"model":"qwen","messages":["#;
    let tail = b"1,2,3]}";
    let total = head.len() + tail.len();
    let mut req = vm.http();
    let h = chat_post_headers(total);
    assert_eq!(req.request_headers(&header_refs(&h), false), Action::Pause);
    // The first chunk holds the model: rewritten, routed, continued before the body ends.
    assert_eq!(req.request_body(head, false), Action::Continue);
    assert_eq!(
        req.request_header("x-modelgate-model").as_deref(),
        Some("qwen-2-7b")
    );
    assert_eq!(req.request_body(tail, true), Action::Continue);
    let expected = r#"{"model":"qwen-2-7b","messages":[1,2,3]}"#;
    assert_eq!(
        String::from_utf8(req.forwarded_request_body()).unwrap(),
        expected
    );
    assert_eq!(
        req.request_header("content-length"),
        Some(expected.len().to_string())
    );
    req.finish();
}

#[test]
fn chunked_body_over_the_limit_after_the_route_is_an_openai_413() {
    let mut vm = vm(CONFIG); // max_body_bytes 2048
    let mut req = vm.http();
    let h: Vec<(&str, &str)> = vec![
        (":method", "POST"),
        (":path", "/v1/chat/completions"),
        ("content-type", "application/json"),
        ("transfer-encoding", "chunked"),
    ];
    req.request_headers(&h, false);
    assert_eq!(
        req.request_body(br#"{"model":"qwen","prompt":""#, false),
        Action::Continue
    );
    let filler = [b'x'; 1100];
    assert_eq!(req.request_body(&filler, false), Action::Continue);
    assert_ne!(req.request_body(&filler, false), Action::Continue);
    let reply = req.local_reply().expect("413 reply");
    assert_eq!(reply.status, 413);
    assert_eq!(reply.json()["error"]["code"], "request_too_large");
}

#[test]
fn prefix_hash_is_set_from_the_first_chunk() {
    let mut vm = vm(r#"{"models":[{"name":"m"}],"prefix_affinity":{"chars":16}}"#);
    let hash_of = |vm: &mut Vm, first: &[u8]| {
        let mut req = vm.http();
        req.request_headers(&header_refs(&chat_post_headers(100_000)), false);
        // Decided on the first chunk although the body is far from its end.
        assert_eq!(req.request_body(first, false), Action::Continue);
        let h = req.request_header("x-modelgate-prefix-hash").unwrap();
        req.finish();
        h
    };
    let a = hash_of(
        &mut vm,
        br#"{"model":"m","messages":[{"role":"user","content":"The same first sixteen, then more"#,
    );
    let b = hash_of(
        &mut vm,
        br#"{"model":"m","messages":[{"role":"user","content":"The same first sixteen, other text"#,
    );
    let c = hash_of(
        &mut vm,
        br#"{"model":"m","messages":[{"role":"user","content":"A different start of the prompt"#,
    );
    assert_eq!(a.len(), 16);
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn trailers_end_the_body() {
    let mut vm = vm(CONFIG);
    let mut req = vm.http();
    let h: Vec<(&str, &str)> = vec![
        (":method", "POST"),
        (":path", "/v1/chat/completions"),
        ("content-type", "application/json"),
    ];
    req.request_headers(&h, false);
    assert_eq!(req.request_body(br#"{"model":"qw"#, false), Action::Pause);
    // Routed as soon as the model is read; the trailers then pass.
    assert_eq!(req.request_body(br#"en","n":1}"#, false), Action::Continue);
    assert_eq!(req.request_trailers(&[("x-t", "1")]), Action::Continue);
    assert_eq!(
        req.request_header("x-modelgate-model").as_deref(),
        Some("qwen-2-7b")
    );
    assert_eq!(
        String::from_utf8(req.forwarded_request_body()).unwrap(),
        r#"{"model":"qwen-2-7b","n":1}"#
    );
}

#[test]
fn weighted_split_uses_wasi_random() {
    let host = Host::new();
    host.seed_random(12345);
    let mut vm = host.vm("model_router").configure(CONFIG).unwrap();
    let body = br#"{"model":"chat"}"#;
    let mut qwen = 0;
    let n = 2000;
    for _ in 0..n {
        let mut req = vm.http();
        req.request_headers(&header_refs(&chat_post_headers(body.len())), false);
        req.request_body(body, true);
        let target = req.request_header("x-modelgate-model").unwrap();
        let sent: Value = serde_json::from_slice(&req.forwarded_request_body()).unwrap();
        assert_eq!(
            sent["model"].as_str().unwrap(),
            target,
            "body and header disagree"
        );
        if target == "qwen-2-7b" {
            qwen += 1;
        }
        req.finish();
    }
    let share = f64::from(qwen) / f64::from(n);
    assert!((share - 0.25).abs() < 0.04, "qwen share {share}");
}

#[test]
fn without_the_knob_the_body_never_arrives() {
    let mut vm = Host::load("model_router")
        .allow_on_headers_stop_iteration(false)
        .configure(CONFIG)
        .unwrap();
    let body = br#"{"model":"qwen"}"#;
    let mut req = vm.http();
    assert_eq!(
        req.request_headers(&header_refs(&chat_post_headers(body.len())), false),
        Action::Pause
    );
    assert_eq!(req.request_body(body, true), Action::NotCalled);
    assert_eq!(req.request_header("x-modelgate-model"), None);
}

#[test]
fn bad_configs_are_rejected_naming_the_field() {
    for (config, field) in [
        (r#"{"models":[]}"#, "models"),
        (r#"{"models":[{"name":"m","wieght":1}]}"#, "wieght"),
        (
            r#"{"models":[{"name":"m"}],"default_model":"x"}"#,
            "default_model",
        ),
    ] {
        let err = Host::load("model_router")
            .configure(config)
            .err()
            .expect("rejected");
        assert!(
            format!("{err:#}").contains(&format!("field `{field}`")),
            "{err:#}"
        );
    }
}
