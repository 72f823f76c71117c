//! End-to-end support: start Envoy and modelgate-sim as plain processes on free loopback
//! ports, talk HTTP to them, and stop exactly the processes we started (by pid) on drop.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The repository root (two levels above `tests/e2e`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A port nobody listens on right now (bound to 127.0.0.1:0, then released), never one
/// this process handed out before: tests running in parallel threads cannot be given the
/// same port between its release and their server's bind. Another process may still take
/// it in that gap; servers started here retry on a fresh port when their bind fails.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local addr").port();
        if GIVEN.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return port;
        }
    }
}

/// A server's listening and admin ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    pub listen: u16,
    pub admin: u16,
}

impl Ports {
    pub fn free() -> Ports {
        Ports {
            listen: free_port(),
            admin: free_port(),
        }
    }
}

/// Tries to start a server up to three times on fresh ports: `start` returns `Err(log)`
/// when the server exited; only a failed bind (another process took the port between
/// [`free_port`] and the server's bind) is retried.
pub fn with_fresh_ports<T>(what: &str, mut start: impl FnMut() -> Result<T, String>) -> T {
    let mut last = String::new();
    for _ in 0..3 {
        match start() {
            Ok(t) => return t,
            Err(log) if log.contains("ddress already in use") => last = log,
            Err(log) => panic!("{what} did not start:\n{log}"),
        }
    }
    panic!("{what}: its port was taken three times:\n{last}")
}

/// A fresh scratch directory for one test (under the system temp dir).
pub fn scratch_dir(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "modelgate-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// `dist/`, where the built wasm modules are (the shipped configs' `WASM_DIR`).
pub fn wasm_dir() -> String {
    wasm("load_shedder")
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// Path of a built wasm module in `dist/` (from `make build`).
pub fn wasm(name: &str) -> PathBuf {
    let p = repo_root().join("dist").join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: run `make build` first",
        p.display()
    );
    p
}

/// Path of a native release binary (from `make build`).
pub fn release_bin(name: &str) -> PathBuf {
    let p = repo_root().join("target/release").join(name);
    assert!(
        p.exists(),
        "{} is missing: run `make build` first",
        p.display()
    );
    p
}

/// The pinned Envoy: `$MODELGATE_ENVOY`, else `tools/envoy` from `scripts/setup.sh`.
pub fn envoy_bin() -> PathBuf {
    let p = std::env::var_os("MODELGATE_ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("tools/envoy"));
    assert!(
        p.exists(),
        "{} is missing: run `make setup` first",
        p.display()
    );
    p
}

/// Polls `f` every 50 ms until it is true or `timeout` passes; returns the last result.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Replaces every `{{KEY}}` in `template`.
pub fn render(template: &str, vars: &[(&str, String)]) -> String {
    let mut out = template.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    out
}

/// A child process we started; SIGTERM then SIGKILL by pid on drop.
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    child: Child,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr going to `<dir>/<name>.log`.
    pub fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let out = fs::File::create(&log).expect("create log");
        let err = out.try_clone().expect("clone log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc {
            name: name.to_string(),
            log,
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process has logged so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Exit status if the process has ended.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.try_exit();
            status.is_some()
        });
        status
    }

    /// Sends `signal` to our child only.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// SIGTERM, a grace period, then SIGKILL; always reaps.
    pub fn stop(&mut self) {
        if self.try_exit().is_some() {
            return;
        }
        self.signal(libc::SIGTERM);
        if self.wait_exit(Duration::from_secs(5)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How long a test waits for a server it started to answer. Generous: a cold start on a
/// busy 2-core machine (a fresh venv compiling its modules, Envoy compiling Wasm) is slow.
pub const START_TIMEOUT: Duration = Duration::from_secs(90);

/// Waits until an HTTP server on 127.0.0.1:`port` answers a real request (`GET /`, any
/// status): an open port alone is not a server that is ready to talk.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    wait_for_http(&format!("http://127.0.0.1:{port}/"), timeout)
}

/// Waits until `url` answers with any HTTP status (a connection failure is status 0).
pub fn wait_for_http(url: &str, timeout: Duration) -> bool {
    wait_until(timeout, || get(url).status != 0)
}

/// A running modelgate-sim.
pub struct Sim {
    pub port: u16,
    pub proc: Proc,
}

impl Sim {
    /// Starts `target/release/modelgate-sim --port <free> <args>` and waits until it answers.
    pub fn start(dir: &Path, name: &str, args: &[&str]) -> Sim {
        with_fresh_ports(name, || Self::try_start(dir, name, free_port(), args))
    }

    /// Starts the sim on a port chosen in advance and waits until `GET /health` answers
    /// (any status: a sim with `--startup-delay-ms` answers 503 until it is ready).
    pub fn start_on(dir: &Path, name: &str, port: u16, args: &[&str]) -> Sim {
        Self::try_start(dir, name, port, args)
            .unwrap_or_else(|log| panic!("{name} did not answer on {port}:\n{log}"))
    }

    fn try_start(dir: &Path, name: &str, port: u16, args: &[&str]) -> Result<Sim, String> {
        let mut cmd = Command::new(release_bin("modelgate-sim"));
        cmd.arg("--host")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(port.to_string())
            .args(args);
        let mut proc = Proc::spawn(name, cmd, dir);
        let health = format!("http://127.0.0.1:{port}/health");
        let up = wait_until(START_TIMEOUT, || {
            get(&health).status != 0 || proc.try_exit().is_some()
        });
        match proc.try_exit() {
            None if up => Ok(Sim { port, proc }),
            exit => Err(format!("{exit:?}\n{}", proc.log_text())),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }
}

/// Hot-restart identity of one Envoy generation (`--base-id`, `--restart-epoch`).
#[derive(Clone, Copy, Debug)]
pub struct HotRestart {
    pub base_id: u32,
    pub epoch: u32,
}

impl HotRestart {
    /// A base id no other test process uses (Envoy's shared memory and sockets are keyed by it).
    pub fn fresh_base_id() -> u32 {
        static N: AtomicU32 = AtomicU32::new(0);
        1000 + (std::process::id() % 50_000) * 16 + N.fetch_add(1, Ordering::SeqCst) % 16
    }
}

/// A running Envoy from a rendered bootstrap.
pub struct Envoy {
    pub admin_port: u16,
    /// The listener's port when started from a [`crate::Shipped`] config, else 0.
    pub port: u16,
    pub config: PathBuf,
    pub proc: Proc,
}

impl Envoy {
    /// Writes `yaml` to `<dir>/<name>.yaml`, starts the pinned Envoy on it and waits for the
    /// admin `/ready` to say LIVE. `admin_port` must be the one the YAML uses.
    pub fn start(dir: &Path, name: &str, yaml: &str, admin_port: u16) -> Envoy {
        Self::spawn_with(dir, name, yaml, None)
            .ready(admin_port)
            .unwrap_or_else(|log| panic!("envoy {name} did not become ready:\n{log}"))
    }

    /// Like [`Envoy::start`]; `Err(log)` when Envoy exited (e.g. a port was taken), for
    /// [`with_fresh_ports`].
    pub fn try_start(dir: &Path, name: &str, yaml: &str, admin_port: u16) -> Result<Envoy, String> {
        Self::spawn_with(dir, name, yaml, None).ready(admin_port)
    }

    /// Starts Envoy without waiting (for tests that expect it to reject its config).
    pub fn spawn(dir: &Path, name: &str, yaml: &str) -> Envoy {
        Self::spawn_with(dir, name, yaml, None)
    }

    /// Like [`Envoy::start`], as generation `hot.epoch` of a hot-restartable Envoy: epoch 0
    /// starts fresh, a later epoch takes the listeners over from the running one, which
    /// then drains and exits.
    pub fn start_hot(
        dir: &Path,
        name: &str,
        yaml: &str,
        admin_port: u16,
        hot: HotRestart,
    ) -> Envoy {
        Self::spawn_with(dir, name, yaml, Some(hot))
            .ready(admin_port)
            .unwrap_or_else(|log| panic!("envoy {name} did not become ready:\n{log}"))
    }

    /// Waits until the admin `/ready` on `admin_port` says LIVE; `Err(log)` when Envoy
    /// exited or never got there.
    fn ready(mut self, admin_port: u16) -> Result<Envoy, String> {
        let ready = wait_until(START_TIMEOUT, || {
            get(&format!("http://127.0.0.1:{admin_port}/ready")).status == 200
                || self.proc.try_exit().is_some()
        });
        if !ready || self.proc.try_exit().is_some() {
            return Err(self.proc.log_text());
        }
        self.admin_port = admin_port;
        Ok(self)
    }

    fn spawn_with(dir: &Path, name: &str, yaml: &str, hot: Option<HotRestart>) -> Envoy {
        let config = dir.join(format!("{name}.yaml"));
        fs::write(&config, yaml).expect("write envoy config");
        let mut cmd = Command::new(envoy_bin());
        cmd.arg("-c").arg(&config);
        match hot {
            None => {
                cmd.arg("--disable-hot-restart");
            }
            Some(h) => {
                cmd.args(["--base-id", &h.base_id.to_string()])
                    .args(["--restart-epoch", &h.epoch.to_string()])
                    .args(["--drain-time-s", "2", "--parent-shutdown-time-s", "4"]);
            }
        }
        cmd.arg("--concurrency")
            .arg("2")
            .arg("-l")
            .arg(std::env::var("MODELGATE_ENVOY_LOG").unwrap_or_else(|_| "info".into()))
            .arg("--component-log-level")
            .arg("wasm:debug");
        let proc = Proc::spawn(name, cmd, dir);
        Envoy {
            admin_port: 0,
            port: 0,
            config,
            proc,
        }
    }

    /// Envoy's plain-text stats (`/stats`), as `name: value` lines.
    pub fn stats(&self) -> BTreeMap<String, i64> {
        get(&format!("http://127.0.0.1:{}/stats", self.admin_port))
            .text()
            .lines()
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(": ")?;
                Some((k.to_string(), v.trim().parse().ok()?))
            })
            .collect()
    }

    /// Bytes allocated by Envoy's heap right now (admin `/memory`, `allocated`).
    pub fn memory_allocated(&self) -> u64 {
        let v = get(&format!("http://127.0.0.1:{}/memory", self.admin_port)).json();
        v["allocated"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// Evidence of Wasm VMs that failed (trapped): Envoy's VM reload counters
    /// (`wasm.<plugin>.vm_reload*`) plus log lines of a trap or a Rust panic in a module.
    pub fn vm_failures(&self) -> u64 {
        let reloads: i64 = self
            .stats()
            .iter()
            .filter(|(k, _)| k.starts_with("wasm.") && k.contains(".vm_reload"))
            .map(|(_, v)| *v)
            .sum();
        let log = self.proc.log_text();
        let traps = log
            .lines()
            .filter(|l| {
                l.contains("panicked at")
                    || l.contains("Uncaught RuntimeError")
                    || (l.contains("Function: proxy_on_") && l.contains("failed"))
            })
            .count();
        reloads.max(0) as u64 + traps as u64
    }

    /// The sum of the Prometheus series `name` whose labels include each of `labels`
    /// (`key="value"`).
    pub fn prometheus_sum(&self, name: &str, labels: &[&str]) -> f64 {
        self.prometheus_stats()
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter(|l| labels.iter().all(|lab| l.contains(lab)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Envoy's Prometheus stats text.
    pub fn prometheus_stats(&self) -> String {
        get(&format!(
            "http://127.0.0.1:{}/stats/prometheus",
            self.admin_port
        ))
        .text()
    }
}

/// An HTTP response as the tests see it (any status, never an error).
#[derive(Debug, Clone, Default)]
pub struct Response {
    /// 0 when the connection failed.
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// How long a client waits for a whole answer: longer than the longest time the shipped
/// sidecar holds a request (flow control's standard TTL, 30 s), so a held request's 429
/// arrives before the client gives up.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(45);

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(2))
        .timeout(CLIENT_TIMEOUT)
        .redirects(0)
        .build()
}

/// Sends a request; connection failures come back as status 0.
pub fn request(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Response {
    let mut req = agent().request(method, url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let result = match body {
        Some(b) => req.send_bytes(b),
        None => req.call(),
    };
    let resp = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(_) => return Response::default(),
    };
    let mut headers = BTreeMap::new();
    for name in resp.headers_names() {
        if let Some(v) = resp.header(&name) {
            headers.insert(name.to_ascii_lowercase(), v.to_string());
        }
    }
    let status = resp.status();
    let mut body = Vec::new();
    let _ = resp.into_reader().take(64 << 20).read_to_end(&mut body);
    Response {
        status,
        headers,
        body,
    }
}

pub fn get(url: &str) -> Response {
    request("GET", url, &[], None)
}

/// POSTs a JSON value with `content-type: application/json` plus `headers`.
pub fn post_json(url: &str, body: &serde_json::Value, headers: &[(&str, &str)]) -> Response {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    request("POST", url, &h, Some(&bytes))
}

impl Sim {
    /// A fast sim for routing tests: serving `model` as pod `pod` (its `x-sim-pod`), 1 ms
    /// per token, 64 running, room for big prompts.
    pub fn fast(dir: &Path, pod: &str, model: &str) -> Sim {
        Sim::fast_with_ttft(dir, pod, model, 1)
    }

    /// [`Sim::fast`] with `ttft_ms` before the first token (requests stay in flight).
    pub fn fast_with_ttft(dir: &Path, pod: &str, model: &str, ttft_ms: u32) -> Sim {
        Sim::start(
            dir,
            &format!("sim-{pod}"),
            &[
                "--served-model-name",
                model,
                "--pod-name",
                pod,
                "--ttft-ms",
                &ttft_ms.to_string(),
                "--itl-ms",
                "1",
                "--max-num-seqs",
                "64",
                "--kv-cache-tokens",
                "10000000",
            ],
        )
    }
}

/// A system prompt naming `who`, longer than the gateway's prefix-affinity window
/// (`prefix_affinity.chars` of envoy/gateway.yaml's router): requests that share it share
/// the hashed prefix whatever follows, and prompts for different `who` differ inside it.
pub fn system_prompt(who: &str) -> String {
    format!(
        "You are {who}. {}",
        "Answer precisely, cite the document you were given, say so when you do not know, \
         and keep every answer short unless asked for detail. "
            .repeat(3)
    )
}

/// A llama-3-8b chat: `system`, an opening question and answer, then the user's `later`.
pub fn conversation(system: &str, later: &str) -> serde_json::Value {
    serde_json::json!({"model": "llama-3-8b", "max_tokens": 1, "messages": [
        {"role": "system", "content": system},
        {"role": "user", "content": "Summarise this document for me."},
        {"role": "assistant", "content": "Sure."},
        {"role": "user", "content": later}]})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_prompts_outgrow_the_shipped_prefix_affinity_window() {
        let yaml = crate::Shipped::gateway(
            Ports {
                listen: 1,
                admin: 2,
            },
            [3, 4, 5],
        )
        // The router's stage of the shipped chain, as a module of its own.
        .as_separate(true)
        .yaml();
        let doc: serde_json::Value = serde_yaml::from_str(&yaml).expect("YAML");
        let hcm = &doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        let router = hcm["http_filters"]
            .as_array()
            .and_then(|fs| {
                fs.iter()
                    .find(|f| f["typed_config"]["config"]["root_id"] == "model_router")
            })
            .and_then(|f| f["typed_config"]["config"]["configuration"]["value"].as_str())
            .expect("router config");
        let config: serde_json::Value = serde_json::from_str(router).expect("JSON");
        let chars = config["prefix_affinity"]["chars"].as_u64().expect("chars");
        assert!(system_prompt("a").chars().count() as u64 > chars);
        // Prompts for different names differ within the window.
        assert!(("You are a.".len() as u64) < chars);
    }
}

/// How [`raw_http`] writes the body pieces after the head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawBody {
    /// As they are (the head says how long the body is, or it is in the head already).
    Plain,
    /// Each as one chunk of `transfer-encoding: chunked`, then the last chunk.
    Chunked,
    /// As they are, then the write side is shut: a client that stops sending.
    HalfClose,
}

/// A request written by hand on a connection of its own: `head` (request line, headers,
/// maybe the body), then `pieces` 20 ms apart (so Envoy calls the filters once per piece).
/// Reads until the server closes or `timeout` passes; status 0 when nothing came back.
pub fn raw_http(
    port: u16,
    head: &[u8],
    pieces: &[&[u8]],
    body: RawBody,
    timeout: Duration,
) -> Response {
    use std::io::Write;
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return Response::default();
    };
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.write_all(head);
    for p in pieces {
        std::thread::sleep(Duration::from_millis(20));
        let sent = match body {
            RawBody::Chunked => s
                .write_all(format!("{:x}\r\n", p.len()).as_bytes())
                .and_then(|()| s.write_all(p))
                .and_then(|()| s.write_all(b"\r\n")),
            _ => s.write_all(p),
        };
        if sent.is_err() {
            break;
        }
    }
    match body {
        RawBody::Chunked => {
            let _ = s.write_all(b"0\r\n\r\n");
        }
        RawBody::HalfClose => {
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
        RawBody::Plain => {}
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Response {
        status,
        headers,
        body: body.as_bytes().to_vec(),
    }
}
