//! The model router in a real Envoy (envoy/gateway.yaml) in front of three modelgate-sim
//! pods: two serve llama-3-8b (ring-hash cluster), one serves qwen-2-7b. Shows routing by
//! the body's `model` (so the route is re-evaluated after the filter sets
//! x-modelgate-model in the body phase), aliases and the body rewrite reaching the server,
//! a weighted split, criticality, prefix affinity, streaming, every client error, the
//! model list, pass-through, a rejected config, and the official Python client.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use modelgate_e2e::*;
use serde_json::{json, Value};

struct Gateway {
    port: u16,
    _envoy: Envoy,
    _sims: Vec<Sim>,
    _dir: PathBuf,
}

fn start(tag: &str) -> Gateway {
    let dir = scratch_dir(tag);
    let sims = vec![
        Sim::fast(&dir, "a", "llama-3-8b"),
        Sim::fast(&dir, "b", "llama-3-8b"),
        Sim::fast(&dir, "c", "qwen-2-7b"),
    ];
    let envoy = Shipped::gateway(Ports::free(), [sims[0].port, sims[1].port, sims[2].port])
        .start(&dir, "gateway");
    Gateway {
        port: envoy.port,
        _envoy: envoy,
        _sims: sims,
        _dir: dir,
    }
}

impl Gateway {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    fn chat(&self, body: &Value, headers: &[(&str, &str)]) -> Response {
        post_json(&self.url("/v1/chat/completions"), body, headers)
    }

    fn raw(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        request(method, &self.url(path), headers, Some(body))
    }
}

fn chat_body(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
}

fn pod(r: &Response) -> String {
    r.header("x-sim-pod").unwrap_or("-").to_string()
}

/// An error the router answered itself: OpenAI shape, never reached a pod.
fn assert_api_error(r: &Response, status: u16, code: &str) -> Value {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.header("x-sim-pod"), None, "reached a pod: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    assert!(v["error"]["type"].is_string(), "{v}");
    v
}

/// `head` then `pieces` as chunks, 20 ms apart (so Envoy calls the filter once per piece).
fn chunked(port: u16, head: &str, pieces: &[&[u8]]) -> Response {
    raw_http(
        port,
        head.as_bytes(),
        pieces,
        RawBody::Chunked,
        Duration::from_secs(20),
    )
}

#[test]
fn routes_by_model_alias_and_weight() {
    let gw = start("router-routes");

    // Routing by model: the route matched on x-modelgate-model, which the filter set in the
    // body phase, so Envoy re-evaluated the route after the header changed.
    let r = gw.chat(&chat_body("llama-3-8b"), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(["a", "b"].contains(&pod(&r).as_str()), "{}", pod(&r));
    assert_eq!(r.json()["model"], "llama-3-8b");
    assert_eq!(r.header("x-modelgate-model"), Some("llama-3-8b"));
    assert_eq!(r.header("x-modelgate-criticality"), Some("critical"));
    let r = gw.chat(&chat_body("qwen-2-7b"), &[]);
    assert_eq!((r.status, pod(&r)), (200, "c".to_string()), "{}", r.text());
    assert_eq!(r.json()["model"], "qwen-2-7b");

    // Aliases: the body is rewritten (the sim echoes the model it received) and
    // content-length follows (a wrong one would hang or truncate at the sim).
    for (alias, target, pods) in [
        ("qwen", "qwen-2-7b", &["c"][..]),
        ("llama3", "llama-3-8b", &["a", "b"][..]),
        (
            "meta-llama/Meta-Llama-3-8B-Instruct",
            "llama-3-8b",
            &["a", "b"][..],
        ),
    ] {
        let r = gw.chat(&chat_body(alias), &[]);
        assert_eq!(r.status, 200, "{alias}: {}", r.text());
        assert_eq!(r.json()["model"], target, "{alias}");
        assert!(
            pods.contains(&pod(&r).as_str()),
            "{alias} went to {}",
            pod(&r)
        );
    }

    // Only the top-level model counts; escapes and Unicode elsewhere are fine.
    let body = br#"{"metadata":{"model":"qwen-2-7b"},"messages":[{"role":"user","content":"caf\u00e9 \"model\": \"qwen\" \u2603"}],"model":"llama\u002d3-8b","max_tokens":2}"#;
    let r = gw.raw(
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(["a", "b"].contains(&pod(&r).as_str()));

    // A chunked body fed in 7-byte pieces, the alias split across pieces.
    let body =
        br#"{"messages":[{"role":"user","content":"hello there"}],"max_tokens":2,"model":"qwen"}"#;
    let pieces: Vec<&[u8]> = body.chunks(7).collect();
    let head = "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    let r = chunked(gw.port, head, &pieces);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-sim-pod"), Some("c"), "{r:?}");
    assert!(r.text().contains(r#""model":"qwen-2-7b""#), "{}", r.text());

    // A large body (300 KB prompt, model at the very end) is buffered and rewritten.
    let big = json!({"messages": [{"role": "user", "content": "x ".repeat(150_000)}], "max_tokens": 1, "model": "qwen"});
    let r = gw.chat(&big, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "qwen-2-7b");

    // Model first (300 KB prompt): rewritten and routed at the first chunk, the rest streams
    // through unbuffered; with content-length and chunked in 16 KiB pieces.
    let body = format!(
        r#"{{"model":"qwen","max_tokens":1,"messages":[{{"role":"user","content":"{}"}}]}}"#,
        "y ".repeat(150_000)
    );
    let r = gw.raw(
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "qwen-2-7b");
    let pieces: Vec<&[u8]> = body.as_bytes().chunks(16 * 1024).collect();
    let r = chunked(gw.port, head, &pieces);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains(r#""model":"qwen-2-7b""#), "{}", r.text());

    // Weighted split: "chat" is llama-3-8b:3 / qwen-2-7b:1.
    let n = 1000;
    let counts = Mutex::new(HashMap::<String, usize>::new());
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                while next.fetch_add(1, Ordering::SeqCst) < n {
                    let r = gw.chat(&chat_body("chat"), &[]);
                    assert_eq!(r.status, 200, "{}", r.text());
                    let served = r.json()["model"].as_str().unwrap().to_string();
                    let expected = if pod(&r) == "c" {
                        "qwen-2-7b"
                    } else {
                        "llama-3-8b"
                    };
                    assert_eq!(served, expected, "body rewrite and route disagree");
                    *counts.lock().unwrap().entry(pod(&r)).or_default() += 1;
                }
            });
        }
    });
    let counts = counts.into_inner().unwrap();
    let qwen = counts.get("c").copied().unwrap_or(0);
    let llama = counts.get("a").copied().unwrap_or(0) + counts.get("b").copied().unwrap_or(0);
    eprintln!("weighted split over {n}: llama {llama}, qwen {qwen} ({counts:?})");
    assert_eq!(llama + qwen, n);
    let share = qwen as f64 / n as f64;
    assert!(
        (share - 0.25).abs() < 0.05,
        "qwen share {share} (want 0.25)"
    );

    // Criticality: the model's ("chat" is sheddable, llama critical); a client may lower
    // it but not raise it; junk is ignored.
    let crit = |model: &str, hdr: Option<&str>| {
        let h: Vec<(&str, &str)> = hdr
            .map(|v| ("x-modelgate-criticality", v))
            .into_iter()
            .collect();
        let r = gw.chat(&chat_body(model), &h);
        assert_eq!(r.status, 200, "{}", r.text());
        r.header("x-modelgate-criticality")
            .unwrap_or("-")
            .to_string()
    };
    assert_eq!(crit("chat", None), "sheddable");
    assert_eq!(crit("chat", Some("critical")), "sheddable");
    assert_eq!(crit("llama-3-8b", Some("sheddable")), "sheddable");
    assert_eq!(crit("llama-3-8b", Some("standard")), "standard");
    assert_eq!(crit("qwen-2-7b", Some("critical")), "standard");
    assert_eq!(crit("llama-3-8b", Some("urgent!")), "critical");

    // Prefix affinity: requests sharing a prefix longer than the hashed window (a long
    // system prompt) land on the same llama pod whatever comes later; different prefixes
    // spread over both pods.
    let analyst = system_prompt("a careful analyst");
    let mut same = HashMap::<String, usize>::new();
    let mut hashes = std::collections::HashSet::new();
    for i in 0..20 {
        let r = gw.chat(&conversation(&analyst, &format!("question {i}")), &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        hashes.insert(r.header("x-modelgate-prefix-hash").unwrap().to_string());
        *same.entry(pod(&r)).or_default() += 1;
    }
    assert_eq!(hashes.len(), 1, "{hashes:?}");
    assert_eq!(same.len(), 1, "one prefix, several pods: {same:?}");
    let mut spread = HashMap::<String, usize>::new();
    for i in 0..40 {
        let r = gw.chat(
            &conversation(&system_prompt(&format!("assistant number {i}")), "q"),
            &[],
        );
        *spread.entry(pod(&r)).or_default() += 1;
    }
    eprintln!("prefix affinity: same prefix {same:?}, 40 prefixes {spread:?}");
    assert_eq!(spread.len(), 2, "{spread:?}");

    // Streaming passes through (SSE, chunk by chunk, ends with [DONE]).
    let mut body = chat_body("llama3");
    body["stream"] = json!(true);
    body["max_tokens"] = json!(5);
    let r = gw.chat(&body, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let text = r.text();
    assert!(text.matches("data: ").count() >= 5, "{text}");
    assert!(text.contains(r#""model":"llama-3-8b""#), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

    // Other inference paths.
    let r = post_json(
        &gw.url("/v1/completions"),
        &json!({"model": "qwen", "prompt": "hi", "max_tokens": 2}),
        &[],
    );
    assert_eq!((r.status, pod(&r)), (200, "c".to_string()), "{}", r.text());
    let r = post_json(
        &gw.url("/v1/embeddings"),
        &json!({"model": "llama3", "input": "hi"}),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(["a", "b"].contains(&pod(&r).as_str()));
}

#[test]
fn errors_models_and_pass_through() {
    let gw = start("router-errors");
    let json_ct = [("content-type", "application/json")];

    let v = assert_api_error(
        &gw.raw(
            "POST",
            "/v1/chat/completions",
            &json_ct,
            b"{\"model\": \"qwen\", ",
        ),
        400,
        "invalid_json",
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("JSON"),
        "{v}"
    );
    assert_api_error(
        &gw.raw("POST", "/v1/chat/completions", &json_ct, b"not json at all"),
        400,
        "invalid_json",
    );
    assert_api_error(
        &gw.raw("POST", "/v1/chat/completions", &json_ct, b"[1,2]"),
        400,
        "invalid_json",
    );
    assert_api_error(
        &gw.raw("POST", "/v1/chat/completions", &json_ct, b""),
        400,
        "invalid_json",
    );
    let v = assert_api_error(
        &gw.chat(&json!({"messages": []}), &[]),
        400,
        "missing_required_parameter",
    );
    assert_eq!(v["error"]["param"], "model");
    assert_api_error(
        &gw.chat(&json!({"model": 7, "messages": []}), &[]),
        400,
        "invalid_type",
    );
    assert_api_error(&gw.chat(&json!({"model": null}), &[]), 400, "invalid_type");
    assert_api_error(
        &gw.chat(&json!({"model": {"name": "qwen"}}), &[]),
        400,
        "invalid_type",
    );
    assert_api_error(
        &gw.raw(
            "POST",
            "/v1/chat/completions",
            &json_ct,
            br#"{"model":"qwen","model":"llama3"}"#,
        ),
        400,
        "invalid_value",
    );

    let v = assert_api_error(&gw.chat(&chat_body("gpt-99"), &[]), 404, "model_not_found");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("gpt-99"),
        "{v}"
    );
    assert_eq!(v["error"]["param"], "model");

    assert_api_error(
        &gw.raw(
            "POST",
            "/v1/chat/completions",
            &[("content-type", "text/plain")],
            br#"{"model":"qwen"}"#,
        ),
        415,
        "unsupported_media_type",
    );
    assert_api_error(
        &gw.raw(
            "POST",
            "/v1/completions",
            &[("content-type", "application/x-www-form-urlencoded")],
            b"model=qwen",
        ),
        415,
        "unsupported_media_type",
    );

    // 413 from content-length alone (the body is never read) ...
    let head = "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: 5000000\r\nconnection: close\r\n\r\n";
    let r = raw_http(
        gw.port,
        head.as_bytes(),
        &[],
        RawBody::Plain,
        Duration::from_secs(20),
    );
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.text().contains("request_too_large"), "{}", r.text());
    // ... and from a chunked body that grows past the limit while it is buffered.
    let head = "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    let filler = vec![b' '; 256 * 1024];
    let mut pieces: Vec<&[u8]> = vec![b"{\"model\":\"qwen\",\"prompt\":\""];
    pieces.extend(std::iter::repeat_n(filler.as_slice(), 18));
    let r = chunked(gw.port, head, &pieces);
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.text().contains("request_too_large"), "{}", r.text());

    // /v1/models from the config, in OpenAI's list shape; retrieve one; unknown is 404.
    let r = get(&gw.url("/v1/models"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-sim-pod"), None);
    let v = r.json();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["llama-3-8b", "qwen-2-7b", "chat"]);
    assert!(v["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["object"] == "model" && m["owned_by"].is_string()));
    let r = get(&gw.url("/v1/models/chat"));
    assert_eq!((r.status, r.json()["id"].clone()), (200, json!("chat")));
    assert_api_error(&get(&gw.url("/v1/models/nope")), 404, "model_not_found");

    // Non-inference paths pass through untouched, and a client cannot pick a cluster by
    // sending x-modelgate-model itself.
    let r = request(
        "GET",
        &gw.url("/v1/other"),
        &[("x-modelgate-model", "qwen-2-7b")],
        None,
    );
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(
        r.header("x-sim-pod"),
        None,
        "a spoofed routing header reached a pod"
    );
    let r = request(
        "GET",
        &gw.url("/v1/chat/completions"),
        &[("x-modelgate-model", "qwen-2-7b")],
        None,
    );
    assert_eq!(r.header("x-sim-pod"), None);
    let r = gw.raw(
        "POST",
        "/v1/other",
        &[("content-type", "text/plain")],
        b"anything",
    );
    assert_eq!(r.status, 404, "{}", r.text());
}

#[test]
fn openai_python_client() {
    let gw = start("router-openai");
    let python = repo_root().join("tools/venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `make setup`",
        python.display()
    );
    let script = repo_root().join("tests/e2e/py/openai_client_check.py");
    let out = Command::new(python)
        .arg(script)
        .arg(gw.url(""))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(
        out.status.success(),
        "python openai client check failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all openai client checks passed"));
}

#[test]
fn bad_config_is_rejected() {
    let dir = scratch_dir("router-badcfg");
    // A weight on a model without targets.
    let yaml = Shipped::gateway(Ports::free(), [1, 2, 3])
        .plugin_config("model_router", |c| {
            assert_eq!(c["models"][1]["name"], "qwen-2-7b");
            c["models"][1]["weight"] = json!(2);
        })
        .yaml();
    let mut envoy = Envoy::spawn(&dir, "gateway", &yaml);
    let exited = envoy.proc.wait_exit(Duration::from_secs(30));
    let log = envoy.proc.log_text();
    assert!(
        exited.is_some_and(|s| !s.success()),
        "Envoy accepted a bad router config:\n{log}"
    );
    assert!(
        log.contains("chain: invalid configuration: field `filters[1].config.models[1].weight`"),
        "{log}"
    );
}

/// Why the gateway sets `allow_on_headers_stop_iteration: true`: without it, Envoy turns the
/// router's pause in request headers into StopAll, the body callback never runs, and an
/// inference request stalls until the stream times out. Header-only requests still work.
#[test]
fn without_allow_on_headers_stop_iteration_requests_stall() {
    let dir = scratch_dir("router-noknob");
    let sim = Sim::fast(&dir, "c", "qwen-2-7b");
    let p = sim.port;
    let envoy = Shipped::gateway(Ports::free(), [p, p, p])
        // One sim plays every pod: the endpoint picker refuses a pod listed twice.
        .picker_pool("llama-3-8b", &[p])
        .filter_field(
            "model_router",
            "allow_on_headers_stop_iteration",
            json!(false),
        )
        .hcm("stream_idle_timeout", json!("2s"))
        .start(&dir, "gateway");
    let url = format!("http://127.0.0.1:{}", envoy.port);
    assert_eq!(get(&format!("{url}/v1/models")).status, 200);
    let started = std::time::Instant::now();
    let r = post_json(
        &format!("{url}/v1/chat/completions"),
        &chat_body("qwen-2-7b"),
        &[],
    );
    eprintln!(
        "without the knob: status {} after {:?}",
        r.status,
        started.elapsed()
    );
    assert_ne!(r.status, 200, "{}", r.text());
    assert!(started.elapsed() >= Duration::from_millis(1900));
}
