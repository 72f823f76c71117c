//! The readiness gate in a real Envoy (envoy/sidecar.yaml) in front of modelgate-sim:
//! 503 + Retry-After while the server starts, 200 once ready, 503 again when it turns
//! unhealthy or the loader drains, the probe path both ways, a bad config rejected.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use modelgate_e2e::*;
use serde_json::json;

const MODEL: &str = "sim-model";
/// The poll period in the tests; states propagate within about two of these.
const PERIOD: &str = "500ms";
const WAIT: Duration = Duration::from_secs(15);

fn chat(port: u16) -> Response {
    let body =
        json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    post_json(
        &format!("http://127.0.0.1:{port}/v1/chat/completions"),
        &body,
        &[],
    )
}

fn probe(port: u16) -> Response {
    get(&format!("http://127.0.0.1:{port}/modelgate/ready"))
}

/// A 503 the gate answered itself: Retry-After, OpenAI error shape, never the sim's.
fn assert_gated(r: &Response, code: &str) -> String {
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("5"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.header("x-sim-pod"),
        None,
        "the request reached the model server"
    );
    // The marker the metrics filter counts refusals by (a bounded set of reasons).
    let gated = r.header("x-modelgate-gated").unwrap_or_default();
    match code {
        "model_draining" => assert_eq!(gated, "draining"),
        _ => assert!(
            ["unknown", "not_ready", "stale"].contains(&gated),
            "{gated:?}"
        ),
    }
    let v = r.json();
    assert_eq!(v["error"]["type"], "server_error");
    assert_eq!(v["error"]["code"], code, "{v}");
    v["error"]["message"].as_str().unwrap().to_string()
}

fn assert_probe(r: &Response, status: u16, state: &str) -> String {
    assert_eq!(r.status, status, "{}", r.text());
    let v = r.json();
    assert_eq!(v["status"], state, "{v}");
    assert_eq!(v["model"], MODEL);
    v["reason"].as_str().unwrap().to_string()
}

/// Each worker VM picks up a new snapshot on its next tick (a quarter period): after one
/// request saw a change, wait this long before expecting every request to see it.
const SETTLE: Duration = Duration::from_millis(300);

/// Waits until the probe's `key` is `value`, then lets every VM catch up.
fn wait_probe(port: u16, key: &str, value: &str) {
    let ok = wait_until(WAIT, || probe(port).json()[key] == value);
    assert!(
        ok,
        "probe {key} never became {value:?}: {}",
        probe(port).text()
    );
    std::thread::sleep(SETTLE);
}

/// Waits until a chat request gets `status`, lets every VM catch up, and sends one more.
fn wait_status(port: u16, status: u16) -> Response {
    let mut last = Response::default();
    let ok = wait_until(WAIT, || {
        last = chat(port);
        last.status == status
    });
    assert!(
        ok,
        "no {status} within {WAIT:?}; last: {} {}",
        last.status,
        last.text()
    );
    std::thread::sleep(SETTLE);
    let r = chat(port);
    assert_eq!(r.status, status, "{}", r.text());
    r
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

/// The pids we started are gone (killed and reaped) once their `Proc`s are dropped.
fn assert_gone(pids: &[u32]) {
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} was left behind"
        );
    }
}

/// The shipped sidecar: its filters as one `chain` module. The gate's refusals are the
/// module's own local replies, and its ml_metrics stage, before the gate, still counts them.
#[test]
fn gates_until_ready_and_again_when_unhealthy() {
    gates_until_ready(false);
}

/// The same filters as separate modules.
#[test]
fn separate_modules_gate_until_ready_and_count_the_refusals() {
    gates_until_ready(true);
}

fn gates_until_ready(separate: bool) {
    let dir = scratch_dir(if separate {
        "readiness-separate"
    } else {
        "readiness"
    });
    // Envoy first, so the sim's start-up delay is not used up while Envoy compiles the
    // module on a busy machine.
    let sim_port = free_port();
    let envoy = Shipped::sidecar(Ports::free(), sim_port, MODEL)
        .readiness_period(PERIOD)
        .as_separate(separate)
        .start(&dir, "envoy");
    let p = envoy.port;

    // Nothing behind the gate yet: refused by the gate itself.
    let message = assert_gated(&chat(p), "model_not_ready");
    assert!(message.contains(MODEL), "{message}");
    assert_eq!(probe(p).status, 503);

    let sim = Sim::start_on(
        &dir,
        "sim",
        sim_port,
        &["--served-model-name", MODEL, "--startup-delay-ms", "4000"],
    );
    // Starting: the gate answers with the failing check, the sim sees nothing.
    wait_probe(p, "status", "not_ready");
    let reason = assert_probe(&probe(p), 503, "not_ready");
    assert_eq!(reason, "health: status 503");
    let message = assert_gated(&chat(p), "model_not_ready");
    assert!(message.contains("health: status 503"), "{message}");
    let r = get(&format!("http://127.0.0.1:{p}/metrics"));
    assert_eq!(r.status, 200, "ungated paths pass while not ready");
    assert!(r.text().contains("vllm:num_requests_running"));

    // Ready: forwarded to the sim.
    let r = wait_status(p, 200);
    assert!(r.header("x-sim-pod").is_some());
    assert_eq!(r.json()["model"], MODEL);
    assert_eq!(assert_probe(&probe(p), 200, "ready"), "");
    // Both worker threads agree (each has its own VM and cache): 20 requests, all 200.
    for _ in 0..20 {
        assert_eq!(chat(p).status, 200);
    }

    // The sim turns unhealthy: refused again, with the reason.
    let r = post_json(&sim.url("/sim/health"), &json!({"healthy": false}), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = wait_status(p, 503);
    let message = assert_gated(&r, "model_not_ready");
    assert!(message.contains("health: status 503"), "{message}");
    assert_eq!(
        assert_probe(&probe(p), 503, "not_ready"),
        "health: status 503"
    );

    // Healthy again: served again.
    post_json(&sim.url("/sim/health"), &json!({"healthy": true}), &[]);
    wait_status(p, 200);
    assert_probe(&probe(p), 200, "ready");

    // Each change is logged once for the whole proxy, however many VMs and requests.
    let log = envoy.proc.log_text();
    assert_eq!(
        count(&log, "unknown -> not_ready (health: status 503)"),
        1,
        "{log}"
    );
    assert_eq!(count(&log, "not_ready -> ready"), 2, "{log}");
    assert_eq!(
        count(&log, "ready -> not_ready (health: status 503)"),
        1,
        "{log}"
    );

    // ml_metrics runs before the gate and counts each refusal (3 chat requests above, and
    // those of the waits), flushed on its tick.
    let gated = |text: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("ml_requests_gated_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(
        wait_until(Duration::from_secs(10), || gated(&envoy.prometheus_stats())
            >= 3.0),
        "refusals not counted:\n{}",
        envoy.prometheus_stats()
    );

    let pids = [envoy.proc.pid(), sim.proc.pid()];
    drop(envoy);
    drop(sim);
    assert_gone(&pids);
}

#[test]
fn unlisted_model_keeps_the_gate_closed() {
    let dir = scratch_dir("readiness-model");
    let sim = Sim::start(&dir, "sim", &["--served-model-name", "another-model"]);
    let envoy = Shipped::sidecar(Ports::free(), sim.port, MODEL)
        .readiness_period(PERIOD)
        .start(&dir, "envoy");
    let p = envoy.port;

    let expected = format!("models: `{MODEL}` is not listed yet");
    wait_probe(p, "reason", &expected);
    // Healthy server, model not there: still refused, for several periods.
    for _ in 0..4 {
        let message = assert_gated(&chat(p), "model_not_ready");
        assert!(message.contains(&expected), "{message}");
        std::thread::sleep(Duration::from_millis(300));
    }

    let pids = [envoy.proc.pid(), sim.proc.pid()];
    drop(envoy);
    drop(sim);
    assert_gone(&pids);
}

/// A loader status server (`GET /ready`) whose answer the test sets.
struct FakeLoader {
    port: u16,
    reply: Arc<Mutex<(u16, String)>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeLoader {
    fn start() -> FakeLoader {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let reply = Arc::new(Mutex::new((503, r#"{"state":"loading"}"#.to_string())));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (reply.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let (status, body) = r.lock().unwrap().clone();
                serve_one(&mut conn, status, &body);
            }
        });
        FakeLoader {
            port,
            reply,
            stop,
            thread: Some(thread),
        }
    }

    fn set(&self, status: u16, state: &str) {
        *self.reply.lock().unwrap() = (
            status,
            json!({"state": state, "revision": "r1"}).to_string(),
        );
    }
}

impl Drop for FakeLoader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_one(conn: &mut TcpStream, status: u16, body: &str) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    // Request line and headers up to the blank line; a GET has no body.
    while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
        if line == "\r\n" || line == "\n" {
            break;
        }
        line.clear();
    }
    let reason = if status == 200 {
        "OK"
    } else {
        "Service Unavailable"
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}

#[test]
fn loader_loading_and_draining_refuse_requests() {
    let dir = scratch_dir("readiness-loader");
    let loader = FakeLoader::start();
    let sim = Sim::start(&dir, "sim", &["--served-model-name", MODEL]);
    let envoy = Shipped::sidecar(Ports::free(), sim.port, MODEL)
        .loader(loader.port)
        .readiness_period(PERIOD)
        .start(&dir, "envoy");
    let p = envoy.port;

    // Server ready, loader still loading: not ready.
    wait_probe(p, "status", "not_ready");
    assert_eq!(
        assert_probe(&probe(p), 503, "not_ready"),
        "loader: loading (status 503)"
    );
    assert_gated(&chat(p), "model_not_ready");

    loader.set(200, "ready");
    wait_status(p, 200);
    assert_probe(&probe(p), 200, "ready");

    // Draining: 503 so the mesh retries on another replica.
    loader.set(503, "draining");
    let r = wait_status(p, 503);
    let message = assert_gated(&r, "model_draining");
    assert!(
        message.contains("loader: draining (revision r1)"),
        "{message}"
    );
    assert_eq!(
        assert_probe(&probe(p), 503, "draining"),
        "loader: draining (revision r1)"
    );

    // Swapping versions counts as draining too; then back to ready.
    loader.set(503, "updating");
    wait_probe(p, "reason", "loader: updating (revision r1)");
    assert_gated(&chat(p), "model_draining");
    loader.set(200, "ready");
    wait_status(p, 200);

    // A loader that stops answering is not ready either.
    drop(loader);
    let r = wait_status(p, 503);
    let message = assert_gated(&r, "model_not_ready");
    // Envoy answers a refused connection with its own 503 (a timeout gives no response).
    assert!(message.contains("loader: status 503"), "{message}");

    let log = envoy.proc.log_text();
    assert_eq!(
        count(&log, "ready -> draining (loader: draining (revision r1))"),
        1,
        "{log}"
    );

    let pids = [envoy.proc.pid(), sim.proc.pid()];
    drop(envoy);
    drop(sim);
    assert_gone(&pids);
}

#[test]
fn bad_config_is_rejected_naming_the_field() {
    let dir = scratch_dir("readiness-bad");
    let yaml = Shipped::sidecar(Ports::free(), free_port(), MODEL)
        .readiness_period("soon")
        .yaml();
    let mut envoy = Envoy::spawn(&dir, "envoy", &yaml);
    let exit = envoy.proc.wait_exit(Duration::from_secs(30));
    let log = envoy.proc.log_text();
    let exit = exit.unwrap_or_else(|| panic!("envoy accepted a bad config:\n{log}"));
    assert!(!exit.success(), "{log}");
    assert!(
        log.contains(
            "chain: invalid configuration: field `filters[1].config.period`: `soon` is not a duration"
        ),
        "the error names the stage and its field:\n{log}"
    );

    // Also a semantic error caught by validation, not by serde.
    let yaml = Shipped::sidecar(Ports::free(), free_port(), MODEL)
        .readiness_period("5s")
        .plugin_config("readiness_gate", |c| c["probe_path"] = json!("ready"))
        .yaml();
    let mut envoy = Envoy::spawn(&dir, "envoy2", &yaml);
    let exit = envoy.proc.wait_exit(Duration::from_secs(30));
    let log = envoy.proc.log_text();
    assert!(exit.is_some_and(|e| !e.success()), "{log}");
    assert!(
        log.contains("field `filters[1].config.probe_path`"),
        "{log}"
    );
    let pid = envoy.proc.pid();
    drop(envoy);
    assert_gone(&[pid]);
}
