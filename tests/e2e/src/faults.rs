//! A model server that misbehaves on demand, for the fault matrix (tests/e2e_faults.rs):
//! vLLM-shaped `/health`, `/v1/models`, `/metrics` and completions (JSON or SSE), each of
//! which can be switched at run time to answer slowly, with 500, garbage, an enormous body,
//! `1e308` or `NaN` load values, hang, or die mid-stream; it also plays the loader's status
//! endpoint (`/ready`: ready, updating or down). One thread per connection, every
//! response closes its connection; the server stops (and unblocks hung handlers) on drop.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How `/metrics` answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsFault {
    Normal,
    /// Answers after 2 s (longer than any scrape timeout we ship).
    Slow,
    Status500,
    /// 200 with text that is not Prometheus exposition format.
    Garbage,
    /// 200 with this many bytes of valid-looking samples.
    Enormous(usize),
    /// 200 with every load value `1e308`.
    Huge,
    /// 200 with every load value `NaN`.
    NotANumber,
}

/// How inference requests (`POST /v1/...`) are answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFault {
    Normal,
    Status500,
    /// Reads the request, never answers (until the fault is cleared or the server stops).
    Hang,
    /// Streams two SSE events, then closes the connection without finishing the stream.
    KillMidStream,
}

/// How the loader status endpoint (`GET /ready`, modelgate-loader's contract) answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoaderFault {
    Ready,
    /// 503 `updating`: the loader is swapping model versions.
    Updating,
    /// The endpoint is down: the connection is closed without an answer.
    Down,
}

#[derive(Clone, Copy, Debug)]
struct Faults {
    metrics: MetricsFault,
    model: ModelFault,
    loader: LoaderFault,
}

/// The running fault server.
pub struct FaultServer {
    pub port: u16,
    pub model: String,
    faults: Arc<Mutex<Faults>>,
    stop: Arc<AtomicBool>,
    /// Inference requests that reached the server.
    served: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl FaultServer {
    /// Starts on a free loopback port, serving `model`, every fault off.
    pub fn start(model: &str) -> FaultServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fault server");
        let port = listener.local_addr().expect("addr").port();
        let faults = Arc::new(Mutex::new(Faults {
            metrics: MetricsFault::Normal,
            model: ModelFault::Normal,
            loader: LoaderFault::Ready,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let (f, s, n, m) = (
            faults.clone(),
            stop.clone(),
            served.clone(),
            model.to_string(),
        );
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (f, s, n, m) = (f.clone(), s.clone(), n.clone(), m.clone());
                std::thread::spawn(move || handle(conn, &f, &s, &n, &m));
            }
        });
        let server = FaultServer {
            port,
            model: model.to_string(),
            faults,
            stop,
            served,
            thread: Some(thread),
        };
        let health = format!("http://127.0.0.1:{port}/health");
        assert!(
            crate::e2e::wait_until(crate::e2e::START_TIMEOUT, || crate::e2e::get(&health)
                .status
                == 200),
            "fault server did not answer"
        );
        server
    }

    pub fn set_metrics(&self, fault: MetricsFault) {
        self.lock().metrics = fault;
    }

    pub fn set_model(&self, fault: ModelFault) {
        self.lock().model = fault;
    }

    pub fn set_loader(&self, fault: LoaderFault) {
        self.lock().loader = fault;
    }

    /// Inference requests that reached this server so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn current(faults: &Mutex<Faults>) -> Faults {
    *faults.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads a request head and body (content-length or chunked); returns method and path.
fn read_request(conn: &TcpStream) -> Option<(String, String)> {
    let mut reader = BufReader::new(conn.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let (mut length, mut chunked) = (0usize, false);
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut skip = vec![0u8; n + 2];
            reader.read_exact(&mut skip).ok()?;
            if n == 0 {
                break;
            }
        }
    } else {
        let mut body = vec![0u8; length.min(64 << 20)];
        reader.read_exact(&mut body).ok()?;
    }
    Some((method, path))
}

fn respond(conn: &mut TcpStream, status: u16, content_type: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(body);
}

fn metrics_text(model: &str, running: &str, waiting: &str, kv: &str) -> String {
    format!(
        "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{{model_name=\"{model}\"}} {running}\n\
         # TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{{model_name=\"{model}\"}} {waiting}\n\
         # TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{{model_name=\"{model}\"}} {kv}\n"
    )
}

/// Sleeps in short steps while `until` holds (a hang ends when the fault is cleared).
fn wait_while(stop: &AtomicBool, limit: Duration, mut until: impl FnMut() -> bool) {
    let start = Instant::now();
    while until() && !stop.load(Ordering::SeqCst) && start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn handle(
    mut conn: TcpStream,
    faults: &Mutex<Faults>,
    stop: &AtomicBool,
    served: &AtomicU64,
    model: &str,
) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let Some((method, path)) = read_request(&conn) else {
        return;
    };
    let f = current(faults);
    let path = path.split('?').next().unwrap_or_default().to_string();
    match (method.as_str(), path.as_str()) {
        (_, "/health") => respond(&mut conn, 200, "text/plain", b""),
        (_, "/ready") => match f.loader {
            LoaderFault::Ready => respond(
                &mut conn,
                200,
                "application/json",
                br#"{"state":"ready","revision":"r1"}"#,
            ),
            LoaderFault::Updating => respond(
                &mut conn,
                503,
                "application/json",
                br#"{"state":"updating","revision":"r1"}"#,
            ),
            LoaderFault::Down => {}
        },
        (_, "/v1/models") => {
            let body =
                format!(r#"{{"object":"list","data":[{{"id":"{model}","object":"model"}}]}}"#);
            respond(&mut conn, 200, "application/json", body.as_bytes());
        }
        (_, "/metrics") => match f.metrics {
            MetricsFault::Normal => respond(
                &mut conn,
                200,
                "text/plain",
                metrics_text(model, "1", "0", "0.1").as_bytes(),
            ),
            MetricsFault::Slow => {
                wait_while(stop, Duration::from_secs(2), || true);
                respond(
                    &mut conn,
                    200,
                    "text/plain",
                    metrics_text(model, "1", "0", "0.1").as_bytes(),
                );
            }
            MetricsFault::Status500 => respond(&mut conn, 500, "text/plain", b"internal error"),
            MetricsFault::Garbage => respond(
                &mut conn,
                200,
                "text/plain",
                b"<html>\xff\xfe not metrics {{{ ]]] vllm:num_requests_waiting{ 7\n\0\0\0",
            ),
            MetricsFault::Enormous(bytes) => {
                let line = format!("vllm:num_requests_waiting{{model_name=\"{model}\"}} 1\n");
                let body = line.repeat(bytes / line.len() + 1);
                respond(&mut conn, 200, "text/plain", body.as_bytes());
            }
            MetricsFault::Huge => respond(
                &mut conn,
                200,
                "text/plain",
                metrics_text(model, "1e308", "1e308", "1e308").as_bytes(),
            ),
            MetricsFault::NotANumber => respond(
                &mut conn,
                200,
                "text/plain",
                metrics_text(model, "NaN", "NaN", "NaN").as_bytes(),
            ),
        },
        ("POST", p) if p.starts_with("/v1/") => {
            served.fetch_add(1, Ordering::SeqCst);
            match f.model {
                ModelFault::Normal => {
                    let body = format!(
                        r#"{{"id":"x","object":"chat.completion","model":"{model}","choices":[{{"index":0,"message":{{"role":"assistant","content":"ok"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}}}"#
                    );
                    respond(&mut conn, 200, "application/json", body.as_bytes());
                }
                ModelFault::Status500 => respond(
                    &mut conn,
                    500,
                    "application/json",
                    br#"{"object":"error","message":"boom","type":"InternalServerError","code":500}"#,
                ),
                ModelFault::Hang => {
                    wait_while(stop, Duration::from_secs(120), || {
                        current(faults).model == ModelFault::Hang
                    });
                }
                ModelFault::KillMidStream => {
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
                    );
                    for _ in 0..2 {
                        let ev = b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n";
                        let _ = conn.write_all(format!("{:x}\r\n", ev.len()).as_bytes());
                        let _ = conn.write_all(ev);
                        let _ = conn.write_all(b"\r\n");
                        let _ = conn.flush();
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        }
        _ => respond(&mut conn, 404, "text/plain", b"not found"),
    }
    let _ = conn.shutdown(Shutdown::Both);
}

/// How long each fault runs: the fast subset of `make test`, or `make soak`
/// (`MODELGATE_SOAK=1`), which sends many more requests per fault.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Requests sent under each fault.
    pub requests: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Seconds of traffic for the time-based faults (model swap, restart, reconfiguration).
    pub seconds: u64,
}

impl Budget {
    pub fn from_env() -> Budget {
        if std::env::var_os("MODELGATE_SOAK").is_some() {
            Budget {
                requests: 2000,
                clients: 16,
                seconds: 60,
            }
        } else {
            Budget {
                requests: 40,
                clients: 4,
                seconds: 4,
            }
        }
    }
}

/// One line of the fault matrix: what was tried and what the clients saw.
#[derive(Clone, Debug, Default)]
pub struct FaultRow {
    pub fault: String,
    pub requests: usize,
    /// Responses outside the fault's expected set.
    pub unexpected: usize,
    /// Status → count (0: no response / connection failure).
    pub statuses: std::collections::BTreeMap<u16, usize>,
    /// Milliseconds from clearing the fault to the first good answer (None: not measured).
    pub recovered_ms: Option<u128>,
    /// Examples of unexpected answers (at most 3).
    pub examples: Vec<String>,
}

impl FaultRow {
    pub fn new(fault: &str) -> FaultRow {
        FaultRow {
            fault: fault.to_string(),
            ..FaultRow::default()
        }
    }

    /// Records one answer; `ok` says whether it was expected under this fault. An
    /// unexpected one is kept as an example: `label`, its status and the start of its body.
    pub fn record(&mut self, r: &crate::e2e::Response, ok: bool, label: &str) {
        self.requests += 1;
        *self.statuses.entry(r.status).or_default() += 1;
        if !ok {
            self.unexpected += 1;
            if self.examples.len() < 3 {
                let body: String = r.text().chars().take(160).collect();
                self.examples.push(format!("{label}{} {body}", r.status));
            }
        }
    }

    pub fn merge(&mut self, other: FaultRow) {
        self.requests += other.requests;
        self.unexpected += other.unexpected;
        for (s, n) in other.statuses {
            *self.statuses.entry(s).or_default() += n;
        }
        self.examples.extend(other.examples);
        self.examples.truncate(3);
    }

    /// A markdown table row: fault, requests, statuses, unexpected, recovery.
    pub fn markdown(&self) -> String {
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(s, n)| format!("{s}×{n}"))
            .collect();
        format!(
            "| {} | {} | {} | {} | {} |",
            self.fault,
            self.requests,
            statuses.join(" "),
            self.unexpected,
            self.recovered_ms
                .map(|ms| format!("{ms} ms"))
                .unwrap_or_else(|| "-".into())
        )
    }
}

/// Prints the rows (and appends them to `$MODELGATE_SOAK_SUMMARY` when set, for
/// `make soak`'s ROBUSTNESS.md), with the Envoy-level totals of the run.
pub fn report(test: &str, rows: &[FaultRow], vm_failures: u64, memory: (u64, u64)) {
    let mut text = String::new();
    for r in rows {
        text.push_str(&r.markdown());
        text.push('\n');
        for e in &r.examples {
            println!("  unexpected under {}: {e}", r.fault);
        }
    }
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    let total = format!(
        "{test}: VM failures {vm_failures}, Envoy heap {:.1} MiB before, {:.1} MiB after\n",
        mb(memory.0),
        mb(memory.1)
    );
    println!("{text}{total}");
    if let Some(path) = std::env::var_os("MODELGATE_SOAK_SUMMARY") {
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{text}<!-- {} -->", total.trim_end());
        }
    }
}

/// Prints `rows` as the report of `test` (see [`report`]) with `envoys`' VM failures and
/// `heap` (bytes before, after), and asserts that every row saw answers, all of them
/// expected, and that no VM failed.
pub fn report_and_check(
    test: &str,
    rows: &[FaultRow],
    envoys: &[&crate::e2e::Envoy],
    heap: (u64, u64),
) {
    let failures: u64 = envoys.iter().map(|e| e.vm_failures()).sum();
    report(test, rows, failures, heap);
    for r in rows {
        assert!(r.requests > 0, "{}: no request was sent", r.fault);
        assert_eq!(r.unexpected, 0, "{}: {:?}", r.fault, r.examples);
    }
    let logs: Vec<String> = envoys.iter().map(|e| e.proc.log_text()).collect();
    assert_eq!(failures, 0, "a VM failed:\n{}", logs.join("\n"));
}

/// A minimal gzip member (one stored deflate block), for a gzip-encoded request body.
pub fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    for (i, chunk) in data.chunks(0xffff).enumerate() {
        let last = (i + 1) * 0xffff >= data.len();
        out.push(u8::from(last));
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    if data.is_empty() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
