//! Process helpers for the loader tests: a hub started on a free loopback port and stopped by
//! pid, repos written to a temp directory, and loader runs with fast retries.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const HUB: &str = env!("CARGO_BIN_EXE_modelgate-hub");
pub const LOADER: &str = env!("CARGO_BIN_EXE_modelgate-loader");
/// The Hub repo most tests publish to.
pub const REPO: &str = "org/model";

/// Deterministic pseudo-random bytes (xorshift), so mismatches show up at any offset.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `files` as revision `commit` of `repo` and points `refs/main` at it.
pub fn publish(root: &Path, repo: &str, commit: &str, files: &[(&str, Vec<u8>)]) {
    let dir = root.join(repo).join("revisions").join(commit);
    for (name, bytes) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    let refs = root.join(repo).join("refs");
    std::fs::create_dir_all(&refs).unwrap();
    let tmp = refs.join("main.tmp");
    std::fs::write(&tmp, commit).unwrap();
    std::fs::rename(tmp, refs.join("main")).unwrap();
}

/// A server process this test started, killed by pid when dropped.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A test tool installed by scripts/setup.sh under tools/; None (and a SKIPPED line) when
/// missing.
pub fn tool(rel: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tools")
        .join(rel);
    if p.exists() {
        Some(p)
    } else {
        eprintln!("SKIPPED: {} missing (run scripts/setup.sh)", p.display());
        None
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Hub {
    _server: Server,
    pub port: u16,
}

impl Hub {
    pub fn start(repos: &Path, extra: &[&str]) -> Hub {
        let mut child = Command::new(HUB)
            .args(["--port", "0", "--repos"])
            .arg(repos)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().rsplit(':').next().unwrap().parse().unwrap();
        // The banner follows the bind; still, wait for a real answer, not an open port.
        wait_until("hub answering", Duration::from_secs(120), || {
            http_get(port, "/_hub/stats").0 == 200
        });
        Hub {
            _server: Server(child),
            port,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn stats(&self) -> serde_json::Value {
        let body = http_get(self.port, "/_hub/stats").1;
        serde_json::from_str(&body).unwrap()
    }
}

/// A loader command with fast retries and log progress, for a source on `hub`.
pub fn loader(hub: Option<&Hub>, source: &str, dest: &Path) -> Command {
    let mut c = Command::new(LOADER);
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(["--source", source, "--dest"])
        .arg(dest)
        .args([
            "--retry-base",
            "50ms",
            "--retry-max",
            "500ms",
            "--progress",
            "log",
            "--progress-interval",
            "1s",
        ]);
    if let Some(h) = hub {
        c.env("HF_ENDPOINT", h.endpoint());
    }
    c
}

pub fn run(mut c: Command) -> (Output, String) {
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, err)
}

/// Minimal HTTP/1.0 GET (no client dependency): (status, body).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    request(port, "GET", path, &[], b"")
}

/// One HTTP/1.0 request: (status, body). Status 0 when nothing answered.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, String) {
    use std::io::Write;
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    if s.write_all(head.as_bytes()).is_err() || s.write_all(body).is_err() {
        return (0, String::new());
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Peak resident memory (VmHWM) of a live process, in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Spawns a loader whose stderr is collected by a thread; the status port is parsed from it.
pub struct Running {
    pub child: Child,
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Running {
    pub fn spawn(mut c: Command) -> Running {
        let mut child = c
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let l2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[loader] {line}");
                let mut g = l2.lock().unwrap();
                g.push_str(&line);
                g.push('\n');
            }
        });
        Running { child, log }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn status_port(&self) -> u16 {
        let mut port = 0;
        wait_until("status server", Duration::from_secs(20), || {
            let l = self.log();
            if let Some(rest) = l.split("status server listening on ").nth(1) {
                port = rest
                    .lines()
                    .next()
                    .unwrap()
                    .rsplit(':')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                true
            } else {
                false
            }
        });
        port
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY-free: `kill` the child by its pid, nothing else.
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status();
    }
}

impl Running {
    /// Waits (bounded) for the loader to exit: (success, its log).
    pub fn wait_exit(&mut self, timeout: Duration) -> (bool, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return (s.success(), self.log());
            }
            assert!(Instant::now() < deadline, "no exit: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn read_link_rev(dest: &Path) -> String {
    std::fs::read_link(dest)
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub fn versions_of(dest: &Path) -> PathBuf {
    let name = dest.file_name().unwrap().to_string_lossy();
    dest.parent().unwrap().join(format!(".{name}.versions"))
}

/// Bytes of `file` a partial download of `rev` holds on disk, from its resume state (0 when
/// there is none yet).
pub fn held_bytes(dest: &Path, rev: &str, file: &str) -> u64 {
    let state = versions_of(dest)
        .join(format!(".partial-{rev}"))
        .join(".modelgate-parts")
        .join(format!("{file}.part.state"));
    std::fs::read(state)
        .ok()
        .and_then(|s| serde_json::from_slice::<serde_json::Value>(&s).ok())
        .and_then(|v| {
            v["got"]
                .as_array()
                .map(|g| g.iter().filter_map(|x| x.as_u64()).sum::<u64>())
        })
        .unwrap_or(0)
}

/// A tmpfs of `size` at a directory, unmounted when dropped.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Err (mount's message) where mounting is not allowed (it needs CAP_SYS_ADMIN).
    pub fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(Tmpfs(dir.to_path_buf()))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}
