//! The fault matrix under load, in real Envoy (issue 13.2). Each test runs the shipped
//! filter chains in front of a model server that misbehaves on demand
//! (`modelgate_e2e::faults::FaultServer`) and, for every fault: sends concurrent requests
//! and checks what each client saw against the fault's expected answers, checks that no
//! Wasm VM failed (Envoy's `wasm.*.vm_reload*` stats and its log), that Envoy's heap stays
//! bounded (admin `/memory`), and that traffic recovers once the fault is cleared.
//! `make test` runs a short budget; `make soak` (`MODELGATE_SOAK=1`) a long one and writes
//! the rows to ROBUSTNESS.md.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use modelgate_e2e::faults::{
    gzip_stored, report_and_check, Budget, FaultRow, FaultServer, LoaderFault, MetricsFault,
    ModelFault,
};
use modelgate_e2e::*;
use serde_json::json;

const MODEL: &str = "llama-3-8b";
/// Heap growth allowed over a whole test (Envoy's own buffers, stats, VMs).
const HEAP_GROWTH_LIMIT: u64 = 256 << 20;
/// Flow control's TTL at the sidecar in these tests.
const FLOW_TTL_MS: u64 = 2000;

fn chat_body() -> serde_json::Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
}

/// A 503 or 429 a modelgate filter answered itself: OpenAI error JSON.
fn is_modelgate_error(r: &Response) -> bool {
    r.header("content-type") == Some("application/json")
        && serde_json::from_slice::<serde_json::Value>(&r.body)
            .is_ok_and(|v| v["error"]["type"].is_string())
}

/// Sends `budget.requests` requests from `budget.clients` threads; `send` makes one
/// request (given its index), `ok` judges the answer.
fn load(
    row: &mut FaultRow,
    budget: Budget,
    send: &(dyn Fn(usize) -> Response + Sync),
    ok: &(dyn Fn(usize, &Response) -> bool + Sync),
) {
    let next = AtomicUsize::new(0);
    let shared = Mutex::new(std::mem::replace(row, FaultRow::new(&row.fault)));
    std::thread::scope(|s| {
        for _ in 0..budget.clients {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= budget.requests {
                    return;
                }
                let r = send(i);
                let good = ok(i, &r);
                shared.lock().unwrap().record(&r, good, &format!("#{i}: "));
            });
        }
    });
    *row = shared.into_inner().unwrap();
}

/// Closed-loop clients for `duration`.
fn load_for(
    row: &mut FaultRow,
    clients: usize,
    duration: Duration,
    send: &(dyn Fn() -> Response + Sync),
    ok: &(dyn Fn(&Response) -> bool + Sync),
) {
    let until = Instant::now() + duration;
    let shared = Mutex::new(std::mem::replace(row, FaultRow::new(&row.fault)));
    std::thread::scope(|s| {
        for _ in 0..clients {
            s.spawn(|| {
                while Instant::now() < until {
                    let r = send();
                    let good = ok(&r);
                    shared.lock().unwrap().record(&r, good, "");
                }
            });
        }
    });
    *row = shared.into_inner().unwrap();
}

/// Waits until `good` answers true; returns how long it took (panics after 30 s).
fn recovery(what: &str, good: impl Fn() -> bool) -> u128 {
    let start = Instant::now();
    assert!(
        wait_until(Duration::from_secs(30), &good),
        "traffic did not recover after {what}"
    );
    start.elapsed().as_millis()
}

/// The shipped sidecar in front of `server`, which also plays the loader. Flow control
/// holds for seconds here, not the shipped 30 s: a scrape that reports a huge queue makes
/// it hold every standard request for its whole TTL, and the matrix sends many. The
/// shedder takes the client's criticality as sent (as behind the gateway), so the matrix
/// can send critical requests.
fn sidecar(dir: &Path, server: &FaultServer) -> Envoy {
    Shipped::sidecar(Ports::free(), server.port, MODEL)
        .loader(server.port)
        .plugin_config("load_shedder", |c| {
            c["trust_criticality_header"] = json!(true);
            c["flow"]["standard"]["ttl"] = json!(format!("{FLOW_TTL_MS}ms"));
            c["flow"]["sheddable"]["ttl"] = json!(format!("{FLOW_TTL_MS}ms"));
        })
        .start(dir, "sidecar")
}

/// The pod's chain (ml_metrics, readiness gate with a loader, load shedder) in front of a
/// model server whose inference, metrics and loader endpoints fail one after another.
#[test]
fn sidecar_answers_every_upstream_fault_and_recovers() {
    let Fixture {
        budget,
        server,
        envoy,
        url,
        ..
    } = fixture("faults-sidecar", sidecar);
    let port = envoy.port;
    let chat = |crit: &str| post_json(&url, &chat_body(), &[("x-modelgate-criticality", crit)]);
    // Every worker's VMs have a scrape and a verdict before the baseline.
    std::thread::sleep(Duration::from_millis(500));
    let heap_before = envoy.memory_allocated();
    let mut rows = Vec::new();

    let mut baseline = FaultRow::new("sidecar: no fault");
    load(&mut baseline, budget, &|_| chat("standard"), &|_, r| {
        r.status == 200
    });
    rows.push(baseline);

    // The scrape fails or reports nonsense: standard requests may be shed (429, our JSON:
    // flow control holds them while the scrape reports a huge queue and refuses them at
    // their TTL), critical ones never; nothing else.
    for (name, fault) in [
        (
            "metrics slow (2 s, scrape timeout 500 ms)",
            MetricsFault::Slow,
        ),
        ("metrics 500", MetricsFault::Status500),
        ("metrics garbage", MetricsFault::Garbage),
        ("metrics enormous (8 MiB)", MetricsFault::Enormous(8 << 20)),
        ("metrics 1e308", MetricsFault::Huge),
        ("metrics NaN", MetricsFault::NotANumber),
    ] {
        server.set_metrics(fault);
        std::thread::sleep(Duration::from_millis(600));
        let mut row = FaultRow::new(&format!("sidecar: {name}"));
        load(
            &mut row,
            budget,
            &|i| chat(if i % 2 == 0 { "critical" } else { "standard" }),
            &|i, r| r.status == 200 || (i % 2 == 1 && r.status == 429 && is_modelgate_error(r)),
        );
        server.set_metrics(MetricsFault::Normal);
        row.recovered_ms = Some(recovery(name, || chat("standard").status == 200));
        rows.push(row);
    }

    // Held requests were answered at their TTL (1e308 reads as a huge queue; a body cut
    // at 4 MiB is no scrape at all), not left hanging.
    let expired = wait_until(Duration::from_secs(5), || {
        envoy.prometheus_sum(
            "modelgate_shedder_flow_requests_total",
            &["outcome=\"expired\""],
        ) >= 1.0
    });
    assert!(
        expired,
        "no held request expired:\n{}",
        envoy.prometheus_stats()
    );

    // The model server answers 500: passed through unchanged.
    server.set_model(ModelFault::Status500);
    let mut row = FaultRow::new("sidecar: model server 500");
    load(&mut row, budget, &|_| chat("standard"), &|_, r| {
        r.status == 500 && r.text().contains("boom")
    });
    server.set_model(ModelFault::Normal);
    row.recovered_ms = Some(recovery("model 500", || chat("standard").status == 200));
    rows.push(row);

    // Killed mid-stream: the client gets the 200 head and a cut stream (never [DONE]), or
    // Envoy's 503 when the reset comes first.
    server.set_model(ModelFault::KillMidStream);
    let mut row = FaultRow::new("sidecar: model server killed mid-stream");
    load(&mut row, budget, &|_| chat("standard"), &|_, r| {
        (r.status == 200 && !r.text().contains("[DONE]")) || r.status == 503 || r.status == 0
    });
    server.set_model(ModelFault::Normal);
    row.recovered_ms = Some(recovery("kill mid-stream", || {
        chat("standard").status == 200
    }));
    rows.push(row);

    // Hanging: clients give up after 1 s (the route has no timeout, as for long streams).
    server.set_model(ModelFault::Hang);
    let mut row = FaultRow::new("sidecar: model server hangs");
    let hang_budget = Budget {
        requests: budget.clients * 2,
        ..budget
    };
    load(
        &mut row,
        hang_budget,
        &|_| {
            raw_http(
                port,
                chat_request(&chat_body().to_string()).as_bytes(),
                &[],
                RawBody::Plain,
                Duration::from_secs(1),
            )
        },
        &|_, r| r.status == 0,
    );
    server.set_model(ModelFault::Normal);
    row.recovered_ms = Some(recovery("hang", || chat("standard").status == 200));
    rows.push(row);

    // The loader's status endpoint goes down, then reports a version swap: the gate refuses
    // (503, our JSON) until it is back. Closed for this fault's reason: a worker that has
    // not yet read the previous recovery still answers the previous fault's 503.
    for (name, fault, gated_as) in [
        (
            "loader status endpoint down",
            LoaderFault::Down,
            "not_ready",
        ),
        (
            "loader swapping versions",
            LoaderFault::Updating,
            "draining",
        ),
    ] {
        server.set_loader(fault);
        let gated = wait_until(Duration::from_secs(15), || {
            chat("standard").header("x-modelgate-gated") == Some(gated_as)
        });
        assert!(gated, "{name}: the gate never closed");
        std::thread::sleep(Duration::from_millis(300));
        let mut row = FaultRow::new(&format!("sidecar: {name}"));
        load(&mut row, budget, &|_| chat("standard"), &|_, r| {
            r.status == 503 && is_modelgate_error(r) && r.header("retry-after").is_some()
        });
        server.set_loader(LoaderFault::Ready);
        row.recovered_ms = Some(recovery(name, || chat("standard").status == 200));
        rows.push(row);
    }

    let heap_after = envoy.memory_allocated();
    report_and_check(
        "sidecar faults",
        &rows,
        &[&envoy],
        (heap_before, heap_after),
    );
    assert_heap_bounded(heap_before, heap_after);
}

/// Envoy's heap after a fault matrix: load and faults must not leak (HEAP_GROWTH_LIMIT).
fn assert_heap_bounded(before: u64, after: u64) {
    assert!(
        after < before + HEAP_GROWTH_LIMIT,
        "Envoy heap grew from {before} to {after}"
    );
}

fn chat_request(body: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The shipped gateway with `server` playing every pod.
fn gateway(dir: &Path, server: &FaultServer) -> Envoy {
    let p = server.port;
    Shipped::gateway(Ports::free(), [p, p, p])
        // The endpoint picker refuses a pod listed twice.
        .picker_pool("llama-3-8b", &[p])
        .start(dir, "gateway")
}

/// One fault test's setup: its budget, a fault server, and Envoy in front of it (started
/// by `envoy`) serving a good request.
struct Fixture {
    budget: Budget,
    server: FaultServer,
    envoy: Envoy,
    /// The chat completions URL.
    url: String,
    /// Scratch files (logs, configs); nothing to clean up on drop.
    _dir: PathBuf,
}

fn fixture(tag: &str, envoy: fn(&Path, &FaultServer) -> Envoy) -> Fixture {
    let dir = scratch_dir(tag);
    let server = FaultServer::start(MODEL);
    let envoy = envoy(&dir, &server);
    let url = format!("http://127.0.0.1:{}/v1/chat/completions", envoy.port);
    recovery("start", || post_json(&url, &chat_body(), &[]).status == 200);
    Fixture {
        budget: Budget::from_env(),
        server,
        envoy,
        url,
        _dir: dir,
    }
}

/// Hostile request bodies and headers at the gateway (router, metrics, shedder): each gets
/// the router's OpenAI-shaped answer or Envoy's own limit, never a crash, and good traffic
/// sent alongside is unaffected.
#[test]
fn gateway_answers_hostile_bodies_and_headers() {
    // The server must outlive the test: bound, not dropped with the rest.
    let Fixture {
        budget,
        server: _server,
        envoy,
        url,
        ..
    } = fixture("faults-gateway", gateway);
    let port = envoy.port;
    let good = || post_json(&url, &chat_body(), &[]);
    let heap_before = envoy.memory_allocated();
    let json_ct = [("content-type", "application/json")];
    let body = chat_body().to_string();
    let big = format!(
        r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(5 << 20)
    );
    let gz = gzip_stored(body.as_bytes());
    let flood: Vec<(String, String)> = (0..200)
        .map(|i| (format!("x-flood-{i}"), "v".repeat(500)))
        .collect();
    let many_small: Vec<(String, String)> = (0..90)
        .map(|i| (format!("x-h-{i}"), "v".to_string()))
        .collect();
    let with_headers = |headers: &[(String, String)]| {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        post_json(&url, &chat_body(), &h)
    };
    // A whole request written by hand.
    let raw = |request: &str, body: RawBody, secs: u64| {
        raw_http(
            port,
            request.as_bytes(),
            &[],
            body,
            Duration::from_secs(secs),
        )
    };
    let truncated = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
        body.len() + 50,
        body
    );
    let chunked = {
        let mut r = "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_string();
        for piece in body.as_bytes().chunks(5) {
            r.push_str(&format!(
                "{:x}\r\n{}\r\n",
                piece.len(),
                String::from_utf8_lossy(piece)
            ));
        }
        r + "0\r\n\r\n"
    };
    let error_code = |r: &Response, status: u16, code: &str| {
        r.status == status
            && serde_json::from_slice::<serde_json::Value>(&r.body)
                .is_ok_and(|v| v["error"]["code"] == code)
    };

    type Case<'a> = (
        &'a str,
        Box<dyn Fn() -> Response + Sync + 'a>,
        Box<dyn Fn(&Response) -> bool + Sync + 'a>,
    );
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            Box::new(|| {
                request(
                    "POST",
                    &url,
                    &json_ct,
                    Some(b"{\"model\": \"llama3\", oops}"),
                )
            }),
            // The router decides at `model` and streams the rest: the model server answers
            // the broken remainder with its own 400.
            Box::new(|r| r.status == 400),
        ),
        (
            "truncated body (client stops sending)",
            Box::new(|| raw(&truncated, RawBody::HalfClose, 5)),
            Box::new(|r| r.status == 0 || r.status == 400),
        ),
        (
            "gzip-encoded body",
            Box::new(|| {
                request(
                    "POST",
                    &url,
                    &[
                        ("content-type", "application/json"),
                        ("content-encoding", "gzip"),
                    ],
                    Some(&gz),
                )
            }),
            Box::new(|r| error_code(r, 400, "invalid_json") || r.status == 415),
        ),
        (
            "enormous body (5 MiB, limit 4 MiB)",
            Box::new(|| request("POST", &url, &json_ct, Some(big.as_bytes()))),
            // 0: Envoy answered 413 and closed while the client was still sending.
            Box::new(|r| error_code(r, 413, "request_too_large") || r.status == 0),
        ),
        (
            "chunked body in 5-byte pieces",
            Box::new(|| raw(&chunked, RawBody::Plain, 10)),
            Box::new(|r| r.status == 200),
        ),
        (
            "non-UTF-8 body",
            Box::new(|| {
                request(
                    "POST",
                    &url,
                    &json_ct,
                    Some(b"{\"model\": \"\xff\xfe\", \"x\": \"\xc3\x28\"}"),
                )
            }),
            Box::new(|r| r.status == 400 || r.status == 404),
        ),
        (
            "header flood (200 x 500 B)",
            Box::new(|| with_headers(&flood)),
            Box::new(|r| r.status == 431 || r.status == 0),
        ),
        (
            "90 small headers",
            Box::new(|| with_headers(&many_small)),
            Box::new(|r| r.status == 200),
        ),
    ];
    let mut rows = Vec::new();
    for (name, send, ok) in &cases {
        let mut row = FaultRow::new(&format!("gateway: {name}"));
        // Half the clients send the bad request, half good ones, interleaved.
        load(
            &mut row,
            Budget {
                requests: budget.requests.min(if name.starts_with("enormous") {
                    20
                } else {
                    usize::MAX
                }),
                ..budget
            },
            &|i| if i % 2 == 0 { send() } else { good() },
            &|i, r| if i % 2 == 0 { ok(r) } else { r.status == 200 },
        );
        row.recovered_ms = Some(recovery(name, || good().status == 200));
        rows.push(row);
    }
    let heap_after = envoy.memory_allocated();
    report_and_check(
        "gateway faults",
        &rows,
        &[&envoy],
        (heap_before, heap_after),
    );
    assert_heap_bounded(heap_before, heap_after);
}

/// Many concurrent requests while the loader swaps model versions over and over: every
/// answer is the model's 200 or the gate's 503 (our JSON, Retry-After), never anything
/// else, and the pod serves again after the last swap.
#[test]
fn concurrent_requests_while_the_model_is_swapped() {
    let Fixture {
        budget,
        server,
        envoy,
        url,
        ..
    } = fixture("faults-swap", sidecar);
    let chat = || post_json(&url, &chat_body(), &[]);
    let heap_before = envoy.memory_allocated();
    let stop = AtomicBool::new(false);
    let mut row = FaultRow::new("sidecar: model swapped every 300 ms under load");
    let swaps = AtomicUsize::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                server.set_loader(LoaderFault::Updating);
                std::thread::sleep(Duration::from_millis(300));
                server.set_loader(LoaderFault::Ready);
                std::thread::sleep(Duration::from_millis(300));
                swaps.fetch_add(1, Ordering::SeqCst);
            }
        });
        load_for(
            &mut row,
            budget.clients,
            Duration::from_secs(budget.seconds),
            &|| chat(),
            &|r| {
                r.status == 200
                    || (r.status == 503
                        && is_modelgate_error(r)
                        && r.header("retry-after").is_some())
            },
        );
        stop.store(true, Ordering::SeqCst);
    });
    server.set_loader(LoaderFault::Ready);
    row.recovered_ms = Some(recovery("swaps", || chat().status == 200));
    println!("{} swaps", swaps.load(Ordering::SeqCst));
    let heap_after = envoy.memory_allocated();
    let rows = [row];
    report_and_check("model swap", &rows, &[&envoy], (heap_before, heap_after));
    assert!(
        rows[0].statuses.get(&200).copied().unwrap_or(0) > 0,
        "nothing was served"
    );
    assert!(
        rows[0].statuses.get(&503).copied().unwrap_or(0) > 0,
        "no swap was seen"
    );
}
