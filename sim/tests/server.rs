//! modelgate-sim end to end: the server runs in-process on a free port and is driven over
//! real HTTP/1.1 (a tiny client below, so no HTTP-client dependency is needed).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use modelgate_sim::{serve, SimConfig};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn start(args: &[&str]) -> SocketAddr {
    let cfg =
        SimConfig::try_parse_from(std::iter::once("modelgate-sim").chain(args.iter().copied()))
            .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, cfg));
    addr
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let size_text = std::str::from_utf8(&raw[..line_end]).unwrap();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        raw = &raw[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

async fn request(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let body = body.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body: String::from_utf8(body).unwrap(),
    }
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, None).await
}

async fn post(addr: SocketAddr, path: &str, body: &Value) -> Reply {
    request(addr, "POST", path, Some(&body.to_string())).await
}

/// The value of the first sample whose line starts with `series` (name plus `{` labels).
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .unwrap_or_else(|| panic!("no {series} in:\n{metrics}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn chat_body(model: &str, prompt: &str, max_tokens: u64) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens})
}

/// The `data:` payloads of an SSE body.
fn sse_events(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("bad event {e:?}"))
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn health_models_and_pod_header() {
    let addr = start(&[
        "--served-model-name",
        "a,b",
        "--served-model-name",
        "c",
        "--pod-name",
        "pod-7",
    ])
    .await;
    let r = get(addr, "/health").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-sim-pod"), Some("pod-7"));
    let models = get(addr, "/v1/models").await.json();
    assert_eq!(models["object"], "list");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b", "c"]);
    assert_eq!(get(addr, "/ping").await.status, 200);
    assert!(get(addr, "/version").await.json()["version"].is_string());
    let r = request(addr, "DELETE", "/health", None).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("x-sim-pod"), Some("pod-7"));
    let r = get(addr, "/no/such/path").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("x-sim-pod"), Some("pod-7"));
    let r = get(addr, "/metrics").await;
    assert!(r.body.contains("model_name=\"a\""), "{}", r.body);
}

#[tokio::test]
async fn chat_completion_json_echoes_model_and_counts_tokens() {
    let addr = start(&[
        "--served-model-name",
        "m1,m2",
        "--ttft-ms",
        "5",
        "--itl-ms",
        "1",
    ])
    .await;
    let body = json!({"model": "m2", "messages": [
        {"role": "system", "content": "you are terse"},
        {"role": "user", "content": [{"type": "text", "text": "say four words"}]}],
        "max_completion_tokens": 4});
    let r = post(addr, "/v1/chat/completions", &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-sim-pod"), Some("sim"));
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "m2");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(v["created"].as_u64().unwrap() > 0);
    let choice = &v["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["finish_reason"], "length");
    let text = choice["message"]["content"].as_str().unwrap();
    assert_eq!(text.split_whitespace().count(), 4);
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10})
    );

    // Same prompt, same text; no max_tokens means --max-tokens and a natural stop.
    let again = post(addr, "/v1/chat/completions", &body).await.json();
    assert_eq!(again["choices"][0]["message"]["content"], text);
    let v = post(
        addr,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
    .json();
    assert_eq!(v["model"], "m1");
    assert_eq!(v["usage"]["completion_tokens"], 16);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    let m = get(addr, "/metrics").await.body;
    assert_eq!(sample(&m, "vllm:prompt_tokens_total{"), 13.0);
    assert_eq!(sample(&m, "vllm:generation_tokens_total{"), 24.0);
    assert_eq!(
        sample(&m, "vllm:request_success_total{finished_reason=\"length\""),
        2.0
    );
    assert_eq!(
        sample(&m, "vllm:request_success_total{finished_reason=\"stop\""),
        1.0
    );
    assert_eq!(sample(&m, "vllm:time_to_first_token_seconds_count{"), 3.0);
    assert_eq!(
        sample(&m, "vllm:time_to_first_token_seconds_bucket{le=\"+Inf\""),
        3.0
    );
    assert_eq!(sample(&m, "vllm:num_requests_running{"), 0.0);
}

#[tokio::test]
async fn completions_and_embeddings() {
    let addr = start(&["--ttft-ms", "1", "--itl-ms", "1", "--embedding-dim", "8"]).await;
    let v = post(
        addr,
        "/v1/completions",
        &json!({"model": "sim-model", "prompt": "once upon a time", "max_tokens": 3}),
    )
    .await
    .json();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(
        v["choices"][0]["text"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .count(),
        3
    );
    assert_eq!(v["usage"]["prompt_tokens"], 4);
    let v = post(
        addr,
        "/v1/completions",
        &json!({"prompt": [1, 2, 3], "max_tokens": 1}),
    )
    .await
    .json();
    assert_eq!(v["usage"]["prompt_tokens"], 3);

    let r = post(
        addr,
        "/v1/embeddings",
        &json!({"model": "sim-model", "input": ["a b", "c"]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"][1]["index"], 1);
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 8);
    assert_eq!(v["usage"]["prompt_tokens"], 3);
    let again = post(addr, "/v1/embeddings", &json!({"input": "a b"}))
        .await
        .json();
    assert_eq!(again["data"][0]["embedding"], v["data"][0]["embedding"]);
    assert_eq!(
        post(addr, "/v1/embeddings", &json!({"input": 5}))
            .await
            .status,
        400
    );
    assert_eq!(
        post(addr, "/v1/embeddings", &json!({"model": "x", "input": "a"}))
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn chat_stream_with_usage() {
    let addr = start(&["--ttft-ms", "5", "--itl-ms", "2"]).await;
    let mut body = chat_body("sim-model", "one two three", 5);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = post(addr, "/v1/chat/completions", &body).await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(r.header("x-sim-pod"), Some("sim"));
    let events = sse_events(&r.body);
    // role chunk + 5 tokens + usage + [DONE]
    assert_eq!(events.len(), 8, "{}", r.body);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..7]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let id = chunks[0]["id"].clone();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "sim-model");
        assert_eq!(c["id"], id);
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks[1..6]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(text.split_whitespace().count(), 5);
    for c in &chunks[..5] {
        assert!(c["choices"][0]["finish_reason"].is_null());
    }
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[6]["choices"], json!([]));
    assert_eq!(
        chunks[6]["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8})
    );

    // The streamed text is the JSON response's text.
    let whole = post(
        addr,
        "/v1/chat/completions",
        &chat_body("sim-model", "one two three", 5),
    )
    .await
    .json();
    assert_eq!(whole["choices"][0]["message"]["content"], text);

    // Completions stream without usage: tokens then [DONE], no usage chunk.
    let r = post(
        addr,
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 2, "stream": true}),
    )
    .await;
    let events = sse_events(&r.body);
    assert_eq!(events.len(), 3, "{}", r.body);
    let last: Value = serde_json::from_str(&events[1]).unwrap();
    assert_eq!(last["object"], "text_completion");
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert!(last.get("usage").is_none());
}

#[tokio::test]
async fn bad_requests_get_vllm_errors() {
    let addr = start(&["--ttft-ms", "1", "--itl-ms", "0"]).await;
    let r = post(addr, "/v1/chat/completions", &chat_body("gpt-9", "hi", 1)).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json(),
        json!({"object": "error", "message": "The model `gpt-9` does not exist.",
               "type": "NotFoundError", "param": null, "code": 404})
    );
    assert!(
        r.body.starts_with(r#"{"object":"error","message":"#),
        "{}",
        r.body
    );
    let cases: &[(&str, &str)] = &[
        ("/v1/chat/completions", "{not json"),
        ("/v1/chat/completions", ""),
        ("/v1/chat/completions", "[1,2]"),
        ("/v1/chat/completions", r#"{"model":"sim-model"}"#),
        ("/v1/chat/completions", r#"{"messages":{"role":"user"}}"#),
        (
            "/v1/chat/completions",
            r#"{"messages":[{"role":"user","content":{"x":1}}]}"#,
        ),
        (
            "/v1/chat/completions",
            r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":-1}"#,
        ),
        (
            "/v1/chat/completions",
            r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":1.5}"#,
        ),
        (
            "/v1/chat/completions",
            r#"{"messages":[{"role":"user","content":"x"}],"stream":1}"#,
        ),
        ("/v1/chat/completions", "\u{0}\u{ff}garbage"),
        ("/v1/completions", r#"{"model":"sim-model"}"#),
        ("/v1/completions", r#"{"prompt":{"a":1}}"#),
        ("/v1/completions", r#"{"prompt":[]}"#),
        ("/v1/embeddings", r#"{}"#),
        ("/sim/health", r#"{"healthy":"no"}"#),
    ];
    for (path, body) in cases {
        let r = request(addr, "POST", path, Some(body)).await;
        assert_eq!(r.status, 400, "{path} {body}: {}", r.body);
        let v = r.json();
        assert_eq!(v["object"], "error");
        assert_eq!(v["type"], "BadRequestError");
        assert_eq!(v["code"], 400);
        assert!(v["message"].as_str().unwrap().len() > 5);
    }
    // Still serving after all that.
    assert_eq!(get(addr, "/health").await.status, 200);
    assert_eq!(
        post(
            addr,
            "/v1/chat/completions",
            &chat_body("sim-model", "ok", 1)
        )
        .await
        .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_grows_and_latency_rises_under_load() {
    let addr = start(&["--max-num-seqs", "1", "--ttft-ms", "300", "--itl-ms", "0"]).await;
    let began = Instant::now();
    let tasks: Vec<_> = (0..3)
        .map(|i| {
            tokio::spawn(async move {
                let t = Instant::now();
                let r = post(
                    addr,
                    "/v1/chat/completions",
                    &chat_body("sim-model", &format!("req {i}"), 1),
                )
                .await;
                assert_eq!(r.status, 200);
                t.elapsed()
            })
        })
        .collect();
    // While the first runs, the other two wait.
    let mut max_waiting = 0.0f64;
    let mut max_running = 0.0f64;
    // Sample until the queue is seen (it stays > 0 for ~600 ms), not for a fixed time.
    while max_waiting < 1.0 && began.elapsed() < Duration::from_secs(5) {
        let m = get(addr, "/metrics").await.body;
        max_waiting = max_waiting.max(sample(&m, "vllm:num_requests_waiting{"));
        max_running = max_running.max(sample(&m, "vllm:num_requests_running{"));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.push(t.await.unwrap());
    }
    latencies.sort();
    assert!(max_waiting >= 1.0, "waiting never > 0");
    assert!(max_running <= 1.0);
    // Served one after another: the last finishes two slots (600 ms) after the first.
    assert!(
        latencies[2] >= latencies[0] + Duration::from_millis(300),
        "latencies {latencies:?}"
    );
    assert!(
        latencies[2] >= Duration::from_millis(550),
        "latencies {latencies:?}"
    );
    let m = get(addr, "/metrics").await.body;
    assert_eq!(sample(&m, "vllm:num_requests_waiting{"), 0.0);
    assert_eq!(sample(&m, "vllm:request_queue_time_seconds_count{"), 3.0);
    assert!(sample(&m, "vllm:request_queue_time_seconds_sum{") >= 0.5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_cache_usage_and_admission() {
    // 20-token cache: one request of 10 prompt + 5 output fits, a second must wait for it.
    let addr = start(&[
        "--kv-cache-tokens",
        "20",
        "--ttft-ms",
        "1000",
        "--itl-ms",
        "0",
    ])
    .await;
    let prompt = "w ".repeat(10);
    let t1 = tokio::spawn(async move {
        post(
            addr,
            "/v1/chat/completions",
            &chat_body("sim-model", &prompt, 5),
        )
        .await
    });
    let prompt = "w ".repeat(10);
    let t2 = tokio::spawn(async move {
        post(
            addr,
            "/v1/chat/completions",
            &chat_body("sim-model", &prompt, 5),
        )
        .await
    });
    let began = Instant::now();
    let (mut seen_kv, mut seen_wait) = (0.0f64, 0.0f64);
    // Both hold for ~1 s (the first request's prefill); sample until seen.
    while (seen_kv < 0.5 || seen_wait < 1.0) && began.elapsed() < Duration::from_secs(5) {
        let m = get(addr, "/metrics").await.body;
        let kv = sample(&m, "vllm:kv_cache_usage_perc{");
        assert_eq!(kv, sample(&m, "vllm:gpu_cache_usage_perc{"));
        assert!(sample(&m, "vllm:num_requests_running{") <= 1.0);
        seen_kv = seen_kv.max(kv);
        seen_wait = seen_wait.max(sample(&m, "vllm:num_requests_waiting{"));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(seen_kv >= 0.5, "kv usage {seen_kv}"); // 10 of 20 tokens held by the prompt
    assert_eq!(seen_wait, 1.0);
    assert_eq!(t1.await.unwrap().status, 200);
    assert_eq!(t2.await.unwrap().status, 200);
    let m = get(addr, "/metrics").await.body;
    assert_eq!(sample(&m, "vllm:kv_cache_usage_perc{"), 0.0);
    // A request that can never fit is refused like vLLM's context-length check.
    let r = post(
        addr,
        "/v1/chat/completions",
        &chat_body("sim-model", &"w ".repeat(18), 5),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("maximum context length is 20"));
}

#[tokio::test]
async fn unhealthy_toggle() {
    let addr = start(&["--ttft-ms", "1", "--itl-ms", "0"]).await;
    let r = post(addr, "/sim/health", &json!({"healthy": false})).await;
    assert_eq!(r.status, 200);
    assert_eq!(get(addr, "/health").await.status, 503);
    // Like a broken server, it may still answer inference.
    assert_eq!(
        post(
            addr,
            "/v1/chat/completions",
            &chat_body("sim-model", "hi", 1)
        )
        .await
        .status,
        200
    );
    assert_eq!(get(addr, "/sim/health").await.json()["healthy"], false);
    post(addr, "/sim/health", &json!({"healthy": true})).await;
    assert_eq!(get(addr, "/health").await.status, 200);
}

#[tokio::test]
async fn startup_delay() {
    let addr = start(&[
        "--startup-delay-ms",
        "400",
        "--ttft-ms",
        "1",
        "--itl-ms",
        "0",
    ])
    .await;
    let began = Instant::now();
    assert_eq!(get(addr, "/health").await.status, 503);
    assert_eq!(get(addr, "/v1/models").await.json()["data"], json!([]));
    let r = post(
        addr,
        "/v1/chat/completions",
        &chat_body("sim-model", "hi", 1),
    )
    .await;
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some());
    assert_eq!(r.json()["object"], "error");
    assert_eq!(
        post(addr, "/v1/embeddings", &json!({"input": "a"}))
            .await
            .status,
        503
    );
    // Metrics answer while starting (the scraper may poll early).
    assert_eq!(get(addr, "/metrics").await.status, 200);
    while get(addr, "/health").await.status != 200 {
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "never became healthy"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(began.elapsed() >= Duration::from_millis(350));
    assert_eq!(
        get(addr, "/v1/models").await.json()["data"][0]["id"],
        "sim-model"
    );
    assert_eq!(
        post(
            addr,
            "/v1/chat/completions",
            &chat_body("sim-model", "hi", 1)
        )
        .await
        .status,
        200
    );
}

#[tokio::test]
async fn metrics_flavors() {
    let cases: &[(&str, &[&str])] = &[
        (
            "vllm",
            &[
                "vllm:num_requests_running{model_name=\"fl\"}",
                "vllm:num_requests_waiting{",
                "vllm:kv_cache_usage_perc{",
                "vllm:gpu_cache_usage_perc{",
                "# TYPE vllm:time_to_first_token_seconds histogram",
            ],
        ),
        (
            "sglang",
            &[
                "sglang:num_running_reqs{model_name=\"fl\"}",
                "sglang:num_queue_reqs{",
                "sglang:token_usage{",
            ],
        ),
        ("tgi", &["tgi_queue_size ", "tgi_batch_current_size "]),
        (
            "triton",
            &[
                "nv_inference_pending_request_count{model=\"fl\",version=\"1\"}",
                "nv_trt_llm_request_metrics{model=\"fl\",request_type=\"active\",version=\"1\"}",
                "nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=\"fraction\"",
            ],
        ),
    ];
    for (flavor, names) in cases {
        let addr = start(&[
            "--served-model-name",
            "fl",
            "--metrics-flavor",
            flavor,
            "--ttft-ms",
            "1",
            "--itl-ms",
            "0",
        ])
        .await;
        post(addr, "/v1/chat/completions", &chat_body("fl", "a b", 1)).await;
        let r = get(addr, "/metrics").await;
        assert!(r.header("content-type").unwrap().starts_with("text/plain"));
        for name in *names {
            assert!(r.body.contains(name), "{flavor}: no {name} in\n{}", r.body);
        }
    }
}

/// The real binary: banner, then SIGTERM / SIGINT exit 0 at once even with a stream open.
#[test]
fn binary_prints_banner_and_exits_0_on_signals() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::{Command, Stdio};
    for sig in ["-TERM", "-INT"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_modelgate-sim"))
            .args(["--port", "0", "--ttft-ms", "1", "--itl-ms", "200"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line
            .trim()
            .strip_prefix("modelgate-sim listening on 127.0.0.1:")
            .unwrap_or_else(|| panic!("banner {line:?}"))
            .parse()
            .unwrap();
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let body =
            r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":1000,"stream":true}"#;
        write!(
            s,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut first = [0u8; 64];
        let n = s.read(&mut first).unwrap();
        assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
        let t = Instant::now();
        let killed = Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if t.elapsed() > Duration::from_secs(5) {
                child.kill().unwrap();
                panic!("did not exit on {sig}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(status.code(), Some(0), "{sig}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_frees_the_slot() {
    let addr = start(&["--max-num-seqs", "1", "--ttft-ms", "1", "--itl-ms", "100"]).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let body = r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":1000,"stream":true}"#;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // Read until the first token arrived, so the request surely holds the slot.
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("data: ") {
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
    let m = get(addr, "/metrics").await.body;
    assert_eq!(sample(&m, "vllm:num_requests_running{"), 1.0);
    drop(s);
    // The 1000-token stream would hold the only slot for 100 s; after the disconnect the
    // next request gets it at once.
    let t = Instant::now();
    let r = post(
        addr,
        "/v1/chat/completions",
        &chat_body("sim-model", "next", 1),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let m = get(addr, "/metrics").await.body;
    assert_eq!(sample(&m, "vllm:num_requests_running{"), 0.0);
    assert_eq!(sample(&m, "vllm:kv_cache_usage_perc{"), 0.0);
}

#[tokio::test]
async fn timing_changes_at_run_time() {
    let addr = start(&["--ttft-ms", "20000"]).await;
    let r = post(addr, "/sim/config", &json!({"ttft_ms": 1, "itl_ms": 0.5})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({"ttft_ms": 1.0, "itl_ms": 0.5, "itl_ms_per_running": 0.0})
    );
    let t = Instant::now();
    let r = post(
        addr,
        "/v1/chat/completions",
        &chat_body("sim-model", "hi", 4),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(get(addr, "/sim/config").await.json()["ttft_ms"], 1.0);
    for bad in [
        json!({"ttft": 1}),
        json!({"itl_ms": -1}),
        json!({"itl_ms": "1"}),
    ] {
        assert_eq!(post(addr, "/sim/config", &bad).await.status, 400, "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decode_slows_with_batch_size() {
    // B (5 tokens) runs inside A (30 tokens); each of B's 4 gaps costs 100 ms per other
    // running request, so B takes >= 1000 + 400 ms instead of 1000 ms alone. B only has to
    // be scheduled within A's 1 s prefill for this to hold.
    let addr = start(&[
        "--ttft-ms",
        "1000",
        "--itl-ms",
        "0",
        "--itl-ms-per-running",
        "100",
    ])
    .await;
    let a = tokio::spawn(async move {
        post(
            addr,
            "/v1/chat/completions",
            &chat_body("sim-model", "a", 30),
        )
        .await
    });
    let began = Instant::now();
    while sample(
        &get(addr, "/metrics").await.body,
        "vllm:num_requests_running{",
    ) < 1.0
    {
        assert!(began.elapsed() < Duration::from_secs(5), "A never ran");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t = Instant::now();
    let b = post(
        addr,
        "/v1/chat/completions",
        &chat_body("sim-model", "b", 5),
    )
    .await;
    let b_latency = t.elapsed();
    assert_eq!(b.status, 200);
    assert_eq!(a.await.unwrap().status, 200);
    assert!(b_latency >= Duration::from_millis(1350), "{b_latency:?}");
}

/// Mangled bodies (truncated, bytes flipped, values swapped for other JSON types) get a
/// 2xx/4xx answer, never a dropped connection, and the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mangled_bodies_never_break_the_server() {
    let addr = start(&["--ttft-ms", "0", "--itl-ms", "0", "--max-tokens", "2"]).await;
    let seeds: &[(&str, &str)] = &[
        (
            "/v1/chat/completions",
            r#"{"model":"sim-model","messages":[{"role":"user","content":[{"type":"text","text":"a b"}]}],"max_tokens":2,"stream":true,"stream_options":{"include_usage":true}}"#,
        ),
        (
            "/v1/completions",
            r#"{"model":"sim-model","prompt":[[1,2,3]],"max_completion_tokens":2,"n":1}"#,
        ),
        (
            "/v1/embeddings",
            r#"{"model":"sim-model","input":["a",[1,2]]}"#,
        ),
        ("/sim/config", r#"{"ttft_ms":0,"itl_ms":0}"#),
        ("/sim/health", r#"{"healthy":true}"#),
    ];
    let swaps = [
        "null",
        "-1",
        "1e999",
        "\"x\"",
        "[]",
        "{}",
        "true",
        "18446744073709551616",
        "\"\\ud800\"",
    ];
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    for round in 0..300 {
        let (path, seed) = seeds[round % seeds.len()];
        let mut body = seed.as_bytes().to_vec();
        match next(3) {
            0 => body.truncate(next(body.len())),
            1 => {
                let i = next(body.len());
                body[i] = (next(256)) as u8;
            }
            _ => {
                // Replace a value after a random ':' with another JSON type.
                let colons: Vec<usize> = body
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| **b == b':')
                    .map(|(i, _)| i)
                    .collect();
                let at = colons[next(colons.len())] + 1;
                let end = body[at..]
                    .iter()
                    .position(|b| *b == b',' || *b == b'}')
                    .map_or(body.len(), |p| at + p);
                body.splice(at..end, swaps[next(swaps.len())].bytes());
            }
        }
        let text = String::from_utf8_lossy(&body).into_owned();
        let r = request(addr, "POST", path, Some(&text)).await;
        assert!(
            matches!(r.status, 200 | 400 | 404 | 413 | 422),
            "{path} {text}: {} {}",
            r.status,
            r.body
        );
    }
    post(addr, "/sim/health", &json!({"healthy": true})).await;
    assert_eq!(get(addr, "/health").await.status, 200);
    let r = post(
        addr,
        "/v1/chat/completions",
        &chat_body("sim-model", "ok", 1),
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn prefix_cache_shortens_the_prefill_of_a_repeated_prompt() {
    // 5 ms per uncached token: the 321-token prompt costs 1.6 s of prefill cold, and one
    // token (5 ms) once its system prompt's 20 full blocks are cached.
    let addr = start(&["--ttft-ms", "0", "--prefill-ms-per-token", "5"]).await;
    let system = (0..320)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    let body = |user: &str| {
        json!({"model": "sim-model", "max_tokens": 1, "messages": [
            {"role": "system", "content": system}, {"role": "user", "content": user}]})
    };
    let cold = Instant::now();
    assert_eq!(
        post(addr, "/v1/chat/completions", &body("first"))
            .await
            .status,
        200
    );
    let cold = cold.elapsed();
    assert!(
        cold >= Duration::from_millis(1600),
        "cold prefill took {cold:?}"
    );

    let warm = Instant::now();
    assert_eq!(
        post(addr, "/v1/chat/completions", &body("second"))
            .await
            .status,
        200
    );
    let warm = warm.elapsed();
    assert!(warm < cold / 2, "warm {warm:?} vs cold {cold:?}");

    let m = get(addr, "/metrics").await.body;
    // 321 tokens queried each time; the second found the 320 system tokens.
    assert_eq!(sample(&m, "vllm:prefix_cache_queries_total{"), 642.0);
    assert_eq!(sample(&m, "vllm:prefix_cache_hits_total{"), 320.0);
}

#[tokio::test]
async fn prefix_cache_is_per_prefix_and_bounded_by_the_kv_cache() {
    // Room for 2 blocks (32 tokens): a third prompt evicts the oldest.
    let addr = start(&["--ttft-ms", "0", "--kv-cache-tokens", "64"]).await;
    let prompt = |tag: &str| {
        let text = (0..16)
            .map(|i| format!("{tag}{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        json!({"model": "sim-model", "max_tokens": 1, "prompt": format!("{text} tail")})
    };
    for tag in ["a", "b", "c", "d", "e", "a"] {
        assert_eq!(
            post(addr, "/v1/completions", &prompt(tag)).await.status,
            200
        );
    }
    let m = get(addr, "/metrics").await.body;
    // 4 blocks of room (64 / 16): "a" was evicted by b, c, d, e before it came back.
    assert_eq!(sample(&m, "vllm:prefix_cache_hits_total{"), 0.0);
    for tag in ["e", "d"] {
        assert_eq!(
            post(addr, "/v1/completions", &prompt(tag)).await.status,
            200
        );
    }
    let m = get(addr, "/metrics").await.body;
    assert_eq!(sample(&m, "vllm:prefix_cache_hits_total{"), 32.0);
    assert_eq!(sample(&m, "vllm:prefix_cache_queries_total{"), 8.0 * 17.0);
}
