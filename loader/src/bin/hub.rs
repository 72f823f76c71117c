//! modelgate-hub: a small Hugging Face Hub-compatible server for tests and the demo.
//!
//! Serves `GET /api/models/{org}/{name}/revision/{rev}` (with `siblings`, sizes, `blobId`,
//! `lfs.sha256`) and `GET|HEAD /{org}/{name}/resolve/{rev}/{path}` (Range, `X-Repo-Commit`,
//! ETag; large "LFS" files redirect like the Hub's CDN does). Repos come from a directory
//! (`<root>/<org>/<name>/revisions/<commit>/…`, `<root>/<org>/<name>/refs/<ref>` holding a
//! commit) and/or the built-in demo repo. Fault injection flags make the failures the loader
//! must survive reproducible.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use clap::Parser;
use sha1::Sha1;
use sha2::{Digest, Sha256};

#[derive(Parser, Debug)]
#[command(
    name = "modelgate-hub",
    about = "HF Hub-compatible test and demo server"
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port; the bound address is printed on stdout.
    #[arg(long, default_value_t = 8090)]
    port: u16,
    /// Directory of repos (`<org>/<name>/revisions/<commit>/…`, `<org>/<name>/refs/<ref>`).
    #[arg(long)]
    repos: Option<PathBuf>,
    /// Serve the built-in `modelgate/demo-model` repo (config.json, tokenizer.json, a 4 MiB
    /// model.safetensors, …) from memory.
    #[arg(long)]
    demo: bool,
    /// Files at least this large are LFS files: sha256 published, resolve redirects.
    #[arg(long, default_value_t = 1 << 20)]
    lfs_threshold: u64,
    /// Redirect LFS files to `<BASE>/<org>/<name>/revisions/<commit>/<path>` instead of
    /// `/_lfs/…`: a static server (nginx) whose root is `--repos` plays the Hub's CDN.
    #[arg(long)]
    lfs_base: Option<String>,
    /// Require `Authorization: Bearer <token>` on every request.
    #[arg(long)]
    require_token: Option<String>,
    /// The first N requests answer 500.
    #[arg(long, default_value_t = 0)]
    fail_first: i64,
    /// The next N requests (after --fail-first) answer 429 with Retry-After.
    #[arg(long, default_value_t = 0)]
    throttle_first: i64,
    /// Retry-After seconds sent with 429.
    #[arg(long, default_value_t = 1)]
    retry_after: u64,
    /// File responses stall (send nothing more, keep the connection) after this many bytes…
    #[arg(long)]
    stall_after: Option<u64>,
    /// …for the first N file responses.
    #[arg(long, default_value_t = 1)]
    stall_count: i64,
    /// The first N file responses have one byte flipped.
    #[arg(long, default_value_t = 0)]
    corrupt_count: i64,
    /// Adds a sibling with this (possibly hostile) name to every listing.
    #[arg(long)]
    inject_sibling: Option<String>,
    /// Per-response bandwidth cap in bytes/s (0 = none).
    #[arg(long, default_value_t = 0)]
    rate_bps: u64,
    /// Answer every file request with the whole file (200), ignoring `Range`, as some
    /// plain HTTP servers do.
    #[arg(long)]
    ignore_range: bool,
    /// Cut the connection of the first N file responses halfway through the body.
    #[arg(long, default_value_t = 0)]
    cut_count: i64,
}

#[derive(Clone)]
enum Content {
    Mem(Bytes),
    Disk(PathBuf),
}

#[derive(Clone)]
struct FileEntry {
    path: String,
    size: u64,
    sha256: String,
    blob_sha1: String,
    content: Content,
}

type Repo = HashMap<String, Vec<FileEntry>>; // commit -> files
/// (path, size, mtime): a file's hashes are recomputed only when one of these changes.
type FileKey = (PathBuf, u64, SystemTime);

struct Hub {
    args: Args,
    demo: Option<(String, Repo)>,
    hash_cache: Mutex<HashMap<FileKey, (String, String)>>,
    fail_left: AtomicI64,
    throttle_left: AtomicI64,
    stall_left: AtomicI64,
    corrupt_left: AtomicI64,
    cut_left: AtomicI64,
    requests: AtomicU64,
    api_requests: AtomicU64,
    file_requests: AtomicU64,
    range_requests: AtomicU64,
    bytes_sent: Arc<AtomicU64>,
}

fn hashes(data: &[u8]) -> (String, String) {
    let mut s1 = Sha1::new();
    s1.update(format!("blob {}\0", data.len()).as_bytes());
    s1.update(data);
    (
        hex::encode(Sha256::digest(data)),
        hex::encode(s1.finalize()),
    )
}

fn demo_repo() -> (String, Repo) {
    let config = br#"{
  "architectures": ["LlamaForCausalLM"],
  "model_type": "llama",
  "hidden_size": 1024,
  "num_hidden_layers": 1,
  "num_attention_heads": 8,
  "vocab_size": 1024,
  "torch_dtype": "float32"
}
"#
    .to_vec();
    let tokenizer = br#"{"version":"1.0","model":{"type":"WordLevel","vocab":{"<unk>":0,"hello":1,"world":2},"unk_token":"<unk>"},"pre_tokenizer":{"type":"Whitespace"}}
"#
    .to_vec();
    let generation = br#"{"max_new_tokens": 16, "temperature": 0.7}
"#
    .to_vec();
    // A valid safetensors file: u64 LE header length, JSON header, then 4 MiB of F32 data.
    let n: usize = 1024 * 1024;
    let header = format!(
        r#"{{"embed.weight":{{"dtype":"F32","shape":[1024,1024],"data_offsets":[0,{}]}}}}"#,
        n * 4
    );
    let mut model = Vec::with_capacity(8 + header.len() + n * 4);
    model.extend_from_slice(&(header.len() as u64).to_le_bytes());
    model.extend_from_slice(header.as_bytes());
    let mut x: u32 = 0x9e37_79b9;
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let v = (x as f32 / u32::MAX as f32 - 0.5) * 0.02;
        model.extend_from_slice(&v.to_le_bytes());
    }
    let readme =
        b"# modelgate demo model\nA tiny stand-in served by modelgate-hub --demo.\n".to_vec();
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("README.md", readme),
        ("config.json", config),
        ("generation_config.json", generation),
        ("model.safetensors", model),
        ("tokenizer.json", tokenizer),
    ];
    let mut all = Sha256::new();
    let mut entries = Vec::new();
    for (name, data) in files {
        let (sha256, blob_sha1) = hashes(&data);
        all.update(sha256.as_bytes());
        entries.push(FileEntry {
            path: name.to_string(),
            size: data.len() as u64,
            sha256,
            blob_sha1,
            content: Content::Mem(Bytes::from(data)),
        });
    }
    let commit: String = hex::encode(all.finalize()).chars().take(40).collect();
    let mut repo = Repo::new();
    repo.insert(commit.clone(), entries);
    (commit, repo)
}

impl Hub {
    /// Resolves `rev` (a ref or a commit) of `repo` to its commit and file list.
    fn resolve(&self, repo: &str, rev: &str) -> Option<(String, Vec<FileEntry>)> {
        if let Some((commit, files)) = &self.demo {
            if repo == "modelgate/demo-model" {
                if rev == "main" || rev == commit.as_str() {
                    return files.get(commit).map(|f| (commit.clone(), f.clone()));
                }
                return None;
            }
        }
        let root = self.args.repos.as_ref()?;
        if repo
            .split('/')
            .any(|p| p.is_empty() || p == ".." || p == ".")
            || rev.contains("..")
        {
            return None;
        }
        let base = root.join(repo);
        let commit = match std::fs::read_to_string(base.join("refs").join(rev)) {
            Ok(c) => c.trim().to_string(),
            Err(_) => rev.to_string(),
        };
        if commit.contains('/') || commit.contains("..") {
            return None;
        }
        let dir = base.join("revisions").join(&commit);
        if !dir.is_dir() {
            return None;
        }
        let mut files = Vec::new();
        self.walk(&dir, &dir, &mut files).ok()?;
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Some((commit, files))
    }

    fn walk(&self, root: &Path, dir: &Path, out: &mut Vec<FileEntry>) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let p = e.path();
            let ft = e.file_type()?;
            if ft.is_dir() {
                self.walk(root, &p, out)?;
            } else if ft.is_file() {
                let m = e.metadata()?;
                let key = (p.clone(), m.len(), m.modified()?);
                let cached = self
                    .hash_cache
                    .lock()
                    .ok()
                    .and_then(|c| c.get(&key).cloned());
                let (sha256, blob_sha1) = match cached {
                    Some(h) => h,
                    None => {
                        let h = hashes(&std::fs::read(&p)?);
                        if let Ok(mut c) = self.hash_cache.lock() {
                            c.insert(key, h.clone());
                        }
                        h
                    }
                };
                let rel = p
                    .strip_prefix(root)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .into_owned();
                out.push(FileEntry {
                    path: rel,
                    size: m.len(),
                    sha256,
                    blob_sha1,
                    content: Content::Disk(p),
                });
            }
        }
        Ok(())
    }

    /// Global faults (500, 429) and the token check, applied to every request.
    fn gate(&self, headers: &HeaderMap) -> Option<Response> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = &self.args.require_token {
            let ok = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v == format!("Bearer {t}"));
            if !ok {
                return Some((StatusCode::UNAUTHORIZED, "token required\n").into_response());
            }
        }
        if self.fail_left.fetch_sub(1, Ordering::Relaxed) > 0 {
            return Some((StatusCode::INTERNAL_SERVER_ERROR, "injected failure\n").into_response());
        }
        if self.throttle_left.fetch_sub(1, Ordering::Relaxed) > 0 {
            return Some(
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::RETRY_AFTER, self.args.retry_after.to_string())],
                    "slow down\n",
                )
                    .into_response(),
            );
        }
        None
    }
}

type Shared = Arc<Hub>;

async fn api_revision(
    State(hub): State<Shared>,
    UrlPath(rest): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = hub.gate(&headers) {
        return r;
    }
    hub.api_requests.fetch_add(1, Ordering::Relaxed);
    if let Some((repo, rev)) = rest.split_once("/tree/") {
        // `huggingface_hub` lists files this way (recursive; a sub-path is not filtered).
        let rev = rev.split('/').next().unwrap_or(rev);
        return api_tree(&hub, repo, rev);
    }
    let Some((repo, rev)) = rest.rsplit_once("/revision/") else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let Some((commit, files)) = hub.resolve(repo, rev) else {
        return revision_not_found();
    };
    let siblings: Vec<serde_json::Value> = files
        .iter()
        .map(|f| {
            let v =
                serde_json::json!({ "rfilename": f.path, "size": f.size, "blobId": f.blob_sha1 });
            with_lfs(hub.args.lfs_threshold, f, v, "sha256")
        })
        .collect();
    let mut siblings = siblings;
    if let Some(name) = &hub.args.inject_sibling {
        siblings
            .push(serde_json::json!({ "rfilename": name, "size": 4, "blobId": "0".repeat(40) }));
    }
    let body = serde_json::json!({ "id": repo, "sha": commit, "siblings": siblings });
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (
                header::HeaderName::from_static("x-repo-commit"),
                commit.as_str(),
            ),
        ],
        body.to_string(),
    )
        .into_response()
}

fn revision_not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        "{\"error\":\"Repository or revision not found\"}",
    )
        .into_response()
}

/// Adds the `lfs` block (the sha256 under `sha_key`) to a file stored in LFS.
fn with_lfs(
    threshold: u64,
    f: &FileEntry,
    mut v: serde_json::Value,
    sha_key: &str,
) -> serde_json::Value {
    if f.size >= threshold {
        if let Some(obj) = v.as_object_mut() {
            let mut lfs = serde_json::json!({ "size": f.size, "pointerSize": 134 });
            if let Some(l) = lfs.as_object_mut() {
                l.insert(sha_key.into(), f.sha256.clone().into());
            }
            obj.insert("lfs".into(), lfs);
        }
    }
    v
}

fn api_tree(hub: &Hub, repo: &str, rev: &str) -> Response {
    let Some((_, files)) = hub.resolve(repo, rev) else {
        return revision_not_found();
    };
    let items: Vec<serde_json::Value> = files
        .iter()
        .map(|f| {
            let v = serde_json::json!({
                "type": "file", "path": f.path, "size": f.size, "oid": f.blob_sha1,
            });
            with_lfs(hub.args.lfs_threshold, f, v, "oid")
        })
        .collect();
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::Value::Array(items).to_string(),
    )
        .into_response()
}

async fn resolve_file(
    State(hub): State<Shared>,
    UrlPath((org, name, rev, path)): UrlPath<(String, String, String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = hub.gate(&headers) {
        return r;
    }
    let repo = format!("{org}/{name}");
    let Some((commit, files)) = hub.resolve(&repo, &rev) else {
        return (StatusCode::NOT_FOUND, "revision not found\n").into_response();
    };
    let Some(f) = files.into_iter().find(|f| f.path == path) else {
        return (StatusCode::NOT_FOUND, "entry not found\n").into_response();
    };
    if f.size >= hub.args.lfs_threshold {
        // The Hub answers LFS files with a redirect to its CDN, carrying the hash and size.
        let loc = match &hub.args.lfs_base {
            Some(base) => format!(
                "{}/{org}/{name}/revisions/{commit}/{path}",
                base.trim_end_matches('/')
            ),
            None => format!("/_lfs/{org}/{name}/{commit}/{path}"),
        };
        return Response::builder()
            .status(StatusCode::FOUND)
            .header(header::LOCATION, loc)
            .header("x-repo-commit", &commit)
            .header("x-linked-etag", format!("\"{}\"", f.sha256))
            .header("x-linked-size", f.size)
            .body(Body::empty())
            .unwrap_or_default();
    }
    serve_content(&hub, f, &commit, &method, &headers, false).await
}

async fn lfs_file(
    State(hub): State<Shared>,
    UrlPath((org, name, commit, path)): UrlPath<(String, String, String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = hub.gate(&headers) {
        return r;
    }
    let Some((commit, files)) = hub.resolve(&format!("{org}/{name}"), &commit) else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    match files.into_iter().find(|f| f.path == path) {
        Some(f) => serve_content(&hub, f, &commit, &method, &headers, true).await,
        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}

fn parse_range(v: &str, size: u64) -> Option<(u64, u64)> {
    let spec = v.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        return Some((size.saturating_sub(n), size));
    }
    let start: u64 = a.parse().ok()?;
    let end = if b.is_empty() {
        size
    } else {
        b.parse::<u64>().ok()?.saturating_add(1).min(size)
    };
    (start < end).then_some((start, end))
}

async fn serve_content(
    hub: &Shared,
    f: FileEntry,
    commit: &str,
    method: &Method,
    headers: &HeaderMap,
    lfs: bool,
) -> Response {
    hub.file_requests.fetch_add(1, Ordering::Relaxed);
    let etag = if f.size >= hub.args.lfs_threshold || lfs {
        f.sha256.clone()
    } else {
        f.blob_sha1.clone()
    };
    let range = headers
        .get(header::RANGE)
        .filter(|_| !hub.args.ignore_range)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (start, end, status) = match range {
        Some(r) => match parse_range(&r, f.size) {
            Some((s, e)) => {
                hub.range_requests.fetch_add(1, Ordering::Relaxed);
                (s, e, StatusCode::PARTIAL_CONTENT)
            }
            None => {
                return Response::builder()
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(header::CONTENT_RANGE, format!("bytes */{}", f.size))
                    .body(Body::empty())
                    .unwrap_or_default()
            }
        },
        None => (0, f.size, StatusCode::OK),
    };
    let mut b = Response::builder()
        .status(status)
        .header(header::CONTENT_LENGTH, end - start)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, format!("\"{etag}\""))
        .header("x-repo-commit", commit)
        .header(header::CONTENT_TYPE, "application/octet-stream");
    if status == StatusCode::PARTIAL_CONTENT {
        b = b.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{}", end.saturating_sub(1), f.size),
        );
    }
    if method == Method::HEAD {
        return b.body(Body::empty()).unwrap_or_default();
    }
    let stall_at = match hub.args.stall_after {
        Some(k) if hub.stall_left.fetch_sub(1, Ordering::Relaxed) > 0 => Some(k),
        _ => None,
    };
    let corrupt = hub.corrupt_left.fetch_sub(1, Ordering::Relaxed) > 0;
    let cut_at = (hub.cut_left.fetch_sub(1, Ordering::Relaxed) > 0).then_some((end - start) / 2);
    let rate = hub.args.rate_bps;
    let sent = hub.bytes_sent.clone();
    let content = f.content.clone();
    let corrupt_at = start + (end - start) / 2;
    let stream = async_stream(
        content,
        start,
        end,
        stall_at,
        corrupt.then_some(corrupt_at),
        rate,
        sent,
    );
    let stream = cut_after(stream, cut_at);
    b.body(Body::from_stream(stream)).unwrap_or_default()
}

const PIECE: u64 = 256 * 1024;

fn async_stream(
    content: Content,
    start: u64,
    end: u64,
    stall_at: Option<u64>,
    corrupt_at: Option<u64>,
    rate: u64,
    sent: Arc<AtomicU64>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::unfold((start, 0u64), move |(pos, emitted)| {
        let content = content.clone();
        let sent = sent.clone();
        async move {
            if pos >= end {
                return None;
            }
            if let Some(k) = stall_at {
                if emitted >= k {
                    // Hold the connection open without sending: a stalled server.
                    std::future::pending::<()>().await;
                }
            }
            let mut len = PIECE.min(end - pos);
            if let Some(k) = stall_at {
                len = len.min(k.saturating_sub(emitted)).max(1);
            }
            if rate > 0 {
                tokio::time::sleep(Duration::from_secs_f64(len as f64 / rate as f64)).await;
            }
            let data = match &content {
                Content::Mem(b) => Ok(b.slice(pos as usize..(pos + len) as usize)),
                Content::Disk(p) => {
                    let p = p.clone();
                    tokio::task::spawn_blocking(move || {
                        let f = std::fs::File::open(&p)?;
                        let mut buf = vec![0u8; len as usize];
                        f.read_exact_at(&mut buf, pos)?;
                        Ok::<_, std::io::Error>(Bytes::from(buf))
                    })
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
                }
            };
            let data = data.map(|d| match corrupt_at {
                Some(c) if c >= pos && c < pos + len => {
                    let mut v = d.to_vec();
                    if let Some(b) = v.get_mut((c - pos) as usize) {
                        *b ^= 0xff;
                    }
                    Bytes::from(v)
                }
                _ => d,
            });
            sent.fetch_add(len, Ordering::Relaxed);
            Some((data, (pos + len, emitted + len)))
        }
    })
}

/// Ends the body with an error after `cut` bytes: the client sees a connection reset
/// mid-body (the declared length is never reached).
fn cut_after(
    inner: impl futures_util::Stream<Item = Result<Bytes, std::io::Error>>,
    cut: Option<u64>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    use futures_util::StreamExt;
    let mut left = cut.unwrap_or(u64::MAX);
    let mut done = false;
    inner
        .map(move |item| match item {
            Ok(mut b) if !done && b.len() as u64 >= left => {
                b.truncate(left as usize);
                left = 0;
                done = true;
                Ok(b)
            }
            Ok(b) if !done => {
                left -= b.len() as u64;
                Ok(b)
            }
            Ok(_) => Err(std::io::Error::other("injected connection cut")),
            Err(e) => Err(e),
        })
        .take_while({
            let mut failed = false;
            move |r| {
                let keep = !failed;
                failed |= r.is_err();
                std::future::ready(keep)
            }
        })
}

async fn stats(State(hub): State<Shared>) -> Response {
    let v = serde_json::json!({
        "requests": hub.requests.load(Ordering::Relaxed),
        "api_requests": hub.api_requests.load(Ordering::Relaxed),
        "file_requests": hub.file_requests.load(Ordering::Relaxed),
        "range_requests": hub.range_requests.load(Ordering::Relaxed),
        "bytes_sent": hub.bytes_sent.load(Ordering::Relaxed),
    });
    ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if args.repos.is_none() && !args.demo {
        eprintln!("modelgate-hub: give --repos DIR and/or --demo");
        return std::process::ExitCode::from(2);
    }
    let addr: SocketAddr = match format!("{}:{}", args.host, args.port).parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("modelgate-hub: bad address: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let hub = Arc::new(Hub {
        demo: args.demo.then(demo_repo),
        hash_cache: Mutex::new(HashMap::new()),
        fail_left: AtomicI64::new(args.fail_first),
        throttle_left: AtomicI64::new(args.throttle_first),
        stall_left: AtomicI64::new(args.stall_count),
        corrupt_left: AtomicI64::new(args.corrupt_count),
        cut_left: AtomicI64::new(args.cut_count),
        requests: AtomicU64::new(0),
        api_requests: AtomicU64::new(0),
        file_requests: AtomicU64::new(0),
        range_requests: AtomicU64::new(0),
        bytes_sent: Arc::new(AtomicU64::new(0)),
        args,
    });
    let app = Router::new()
        .route("/api/models/{*rest}", get(api_revision))
        .route(
            "/_lfs/{org}/{name}/{commit}/{*path}",
            get(lfs_file).head(lfs_file),
        )
        .route("/_hub/stats", get(stats))
        .route(
            "/{org}/{name}/resolve/{rev}/{*path}",
            get(resolve_file).head(resolve_file),
        )
        .with_state(hub);
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("modelgate-hub: bind {addr}: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let bound = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    println!("modelgate-hub listening on {bound}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    // No graceful drain: a stalled (fault-injected) response would hold shutdown forever.
    tokio::select! {
        r = axum::serve(listener, app) => match r {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("modelgate-hub: {e}");
                std::process::ExitCode::from(1)
            }
        },
        _ = shutdown => std::process::ExitCode::SUCCESS,
    }
}
