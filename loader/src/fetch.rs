//! Downloading one file: parallel byte ranges written in place, sha256 fed in order as the
//! chunks arrive (never a second pass over fresh data), retries per range, and resume from a
//! small state file beside the partial file.

use std::collections::VecDeque;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::{GetOptions, GetRange, ObjectStore};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::JoinSet;

use crate::digest::{Computed, Expected, Hasher};
use crate::progress::Progress;
use crate::retry::{classify_response, Failure, RetryPolicy};
use crate::source::{map_store, Auth, Remote};
use crate::status::METRICS;

type ByteStream = BoxStream<'static, Result<Bytes, Failure>>;

/// Settings shared by every download of a run.
pub struct FetchCtx {
    pub client: reqwest::Client,
    pub retry: RetryPolicy,
    pub chunk_size: u64,
    pub parallel_ranges: usize,
    /// A body that delivers nothing for this long is a stalled connection.
    pub read_timeout: Duration,
    /// Caps open connections across all files.
    pub connections: Arc<Semaphore>,
    pub progress: Arc<Progress>,
    pub disk: Arc<DiskGuard>,
}

/// Writes are batched to this size before a blocking write call.
const WRITE_BATCH: usize = 1 << 20;

impl Remote {
    /// Opens `range` (or the whole object). `full_size` lets a 200 answer to a range request
    /// for the whole object count as a success.
    async fn open(
        &self,
        ctx: &FetchCtx,
        range: Option<Range<u64>>,
        full_size: Option<u64>,
    ) -> Result<ByteStream, Failure> {
        match self {
            Remote::Http { url, auth } => open_http(ctx, url, auth, range, full_size).await,
            Remote::Object { store, path } => open_object(store, path, range).await,
            Remote::Local(p) => open_local(p, range),
        }
    }
}

/// A GET (ranged when asked) with the source's credentials; a 206 must start where asked.
async fn open_http(
    ctx: &FetchCtx,
    url: &str,
    auth: &Auth,
    range: Option<Range<u64>>,
    full_size: Option<u64>,
) -> Result<ByteStream, Failure> {
    let what = crate::log::redact_url(url);
    let mut req = auth.apply(ctx.client.get(url), &what).await?;
    if let Some(r) = &range {
        req = req.header(
            reqwest::header::RANGE,
            format!("bytes={}-{}", r.start, r.end.saturating_sub(1)),
        );
    }
    let resp = req
        .send()
        .await
        .map_err(|e| Failure::retryable(format!("GET {what}: {}", e.without_url())))?;
    let status = resp.status().as_u16();
    if let Some(f) = classify_response(&resp, &format!("GET {what}"), auth.hint()) {
        return Err(f);
    }
    if let Some(r) = &range {
        if status == 200 {
            let whole = r.start == 0 && full_size == Some(r.end);
            if !whole {
                return Err(Failure::RangeUnsupported);
            }
        } else if status == 206 {
            let start = resp
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.parse::<u64>().ok());
            if start != Some(r.start) {
                return Err(Failure::retryable(format!(
                    "GET {what}: Content-Range does not start at {}",
                    r.start
                )));
            }
        }
    }
    let w = what.clone();
    Ok(resp
        .bytes_stream()
        .map_err(move |e| {
            if e.is_timeout() {
                Failure::retryable(format!(
                    "GET {w}: no data within the read timeout (stalled)"
                ))
            } else {
                Failure::retryable(format!("GET {w}: {}", e.without_url()))
            }
        })
        .boxed())
}

async fn open_object(
    store: &Arc<dyn ObjectStore>,
    path: &ObjPath,
    range: Option<Range<u64>>,
) -> Result<ByteStream, Failure> {
    let what = format!("GET {path}");
    let opts = GetOptions::new().with_range(range.clone().map(GetRange::Bounded));
    let res = store
        .get_opts(path, opts)
        .await
        .map_err(|e| map_store(e, &what))?;
    Ok(res
        .into_stream()
        .map_err(move |e| map_store(e, &what))
        .boxed())
}

/// A local file read a batch at a time on the blocking pool.
fn open_local(p: &Path, range: Option<Range<u64>>) -> Result<ByteStream, Failure> {
    let f = std::fs::File::open(p).map_err(|e| Failure::Fatal(format!("{}: {e}", p.display())))?;
    let start = range.as_ref().map_or(0, |r| r.start);
    let end = range.map(|r| r.end);
    let stream =
        futures_util::stream::unfold((start, end, Some(f)), move |(pos, end, file)| async move {
            let file = file?;
            let want = end.map_or(WRITE_BATCH as u64, |e| {
                e.saturating_sub(pos).min(WRITE_BATCH as u64)
            });
            if want == 0 {
                return None;
            }
            let res = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; usize::try_from(want).unwrap_or(WRITE_BATCH)];
                let n = file.read_at(&mut buf, pos)?;
                buf.truncate(n);
                Ok::<_, std::io::Error>((buf, file))
            })
            .await;
            match res {
                Ok(Ok((buf, _))) if buf.is_empty() => None,
                Ok(Ok((buf, file))) => {
                    let n = buf.len() as u64;
                    Some((Ok(Bytes::from(buf)), (pos + n, end, Some(file))))
                }
                Ok(Err(e)) => Some((Err(Failure::Fatal(format!("read: {e}"))), (pos, end, None))),
                Err(e) => Some((Err(Failure::Fatal(format!("read: {e}"))), (pos, end, None))),
            }
        });
    Ok(stream.boxed())
}

/// Resume bookkeeping for one partial file: how many bytes of each chunk are on disk (a
/// prefix), saved after every write batch so a kill loses at most one batch per connection.
#[derive(Serialize, Deserialize, PartialEq, Eq)]
struct ChunkState {
    identity: String,
    size: u64,
    chunk_size: u64,
    got: Vec<u64>,
}

fn save_state(path: &Path, st: &ChunkState) -> std::io::Result<()> {
    let tmp = path.with_extension("state.tmp");
    std::fs::write(&tmp, serde_json::to_vec(st).unwrap_or_default())?;
    std::fs::rename(&tmp, path)
}

fn load_state(path: &Path) -> Option<ChunkState> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

pub fn state_path(part: &Path) -> PathBuf {
    let mut s = part.as_os_str().to_owned();
    s.push(".state");
    PathBuf::from(s)
}

/// Re-checks free space as data is written: `--min-free` holds even when something else
/// fills the volume or a source sends more than it declared.
pub struct DiskGuard {
    dir: PathBuf,
    min_free: u64,
    since_check: AtomicU64,
}

/// Bytes written between two free-space checks.
const DISK_CHECK_EVERY: u64 = 8 << 20;

impl DiskGuard {
    pub fn new(dir: &Path, min_free: u64) -> Self {
        Self {
            dir: dir.to_path_buf(),
            min_free,
            since_check: AtomicU64::new(0),
        }
    }

    pub fn wrote(&self, n: u64) -> Result<(), Failure> {
        let total = self
            .since_check
            .fetch_add(n, Ordering::Relaxed)
            .saturating_add(n);
        if total < DISK_CHECK_EVERY || self.min_free == 0 {
            return Ok(());
        }
        self.since_check.store(0, Ordering::Relaxed);
        match fs4::available_space(&self.dir) {
            Ok(avail) if avail < self.min_free => Err(Failure::Fatal(format!(
                "{}: free space fell to {avail} bytes, below --min-free {}; stopping the download",
                self.dir.display(),
                self.min_free
            ))),
            _ => Ok(()),
        }
    }
}

/// Downloads `remote` to `part` and verifies it; a mismatch deletes the partial data and
/// starts again (up to the retry budget). Returns the computed digests.
pub async fn fetch_file(
    ctx: &Arc<FetchCtx>,
    remote: &Remote,
    expected: &Expected,
    part: &Path,
    name: &str,
) -> Result<Computed, Failure> {
    let chunk_size = ctx.chunk_size.max(1);
    let mut ranged = expected.size.is_some();
    let mut integrity_attempt = 0u32;
    loop {
        let res = match expected.size {
            Some(size) if ranged => {
                fetch_ranged(ctx, remote, expected, part, size, chunk_size, name).await
            }
            _ => fetch_sequential(ctx, remote, expected, part, name).await,
        };
        match res {
            Ok(c) => match c.verify(expected) {
                // The state stays until the caller has recorded the file: a kill before that
                // re-hashes from disk instead of downloading again.
                Ok(()) => return Ok(c),
                Err(why) => {
                    METRICS.integrity_failures.inc();
                    let _ = std::fs::remove_file(part);
                    let _ = std::fs::remove_file(state_path(part));
                    let f = Failure::retryable(format!("{name}: integrity check failed: {why}"));
                    integrity_attempt += 1;
                    ctx.retry.pause(integrity_attempt, f, "verify").await?;
                }
            },
            Err(Failure::RangeUnsupported) if ranged => {
                // One stream, hashed and written as it arrives: memory stays bounded.
                crate::warn!("{name}: server ignores Range; downloading in one stream");
                ranged = false;
                let _ = std::fs::remove_file(state_path(part));
            }
            Err(e) => return Err(e),
        }
    }
}

/// One stream from the start, capped at the declared size; no resume (the server cannot
/// send a part).
async fn fetch_sequential(
    ctx: &Arc<FetchCtx>,
    remote: &Remote,
    expected: &Expected,
    part: &Path,
    name: &str,
) -> Result<Computed, Failure> {
    let mut attempt = 0u32;
    loop {
        let file = Arc::new(std::fs::File::create(part).map_err(|e| io_fail(part, e))?);
        let mut hasher = Hasher::new(expected);
        let res = async {
            let _permit = ctx
                .connections
                .acquire()
                .await
                .map_err(|_| Failure::Fatal("shutdown".into()))?;
            let mut stream = tokio::time::timeout(ctx.read_timeout, remote.open(ctx, None, None))
                .await
                .map_err(|_| stall(name, ctx.read_timeout))??;
            let mut pos = 0u64;
            let mut pending: Vec<Bytes> = Vec::new();
            let mut pending_len = 0u64;
            loop {
                let next = tokio::time::timeout(ctx.read_timeout, stream.next())
                    .await
                    .map_err(|_| stall(name, ctx.read_timeout))?;
                let Some(piece) = next else { break };
                let piece = piece?;
                let n = piece.len() as u64;
                let end = pos.saturating_add(pending_len).saturating_add(n);
                if let Some(size) = expected.size {
                    if end > size {
                        return Err(Failure::retryable(format!(
                            "{name}: server sent more than the {size} bytes declared"
                        )));
                    }
                }
                hasher.update(&piece);
                ctx.progress.add(n);
                METRICS.bytes_downloaded.add(n);
                pending.push(piece);
                pending_len += n;
                if pending_len >= WRITE_BATCH as u64 {
                    write_batch(&file, part, pos, std::mem::take(&mut pending)).await?;
                    ctx.disk.wrote(pending_len)?;
                    pos += pending_len;
                    pending_len = 0;
                }
            }
            write_batch(&file, part, pos, pending).await?;
            ctx.disk.wrote(pending_len)?;
            sync_file(&file, part).await
        }
        .await;
        match res {
            Ok(()) => return Ok(hasher.finish()),
            Err(f) => {
                attempt += 1;
                ctx.retry.pause(attempt, f, name).await?;
            }
        }
    }
}

/// A local I/O failure, with a full disk named as such.
pub(crate) fn io_fail(p: &Path, e: std::io::Error) -> Failure {
    if e.raw_os_error() == Some(28) {
        return Failure::Fatal(format!("{}: no space left on device", p.display()));
    }
    Failure::Fatal(format!("{}: {e}", p.display()))
}

fn stall(name: &str, t: Duration) -> Failure {
    Failure::retryable(format!(
        "{name}: no data for {:.1}s (stalled)",
        t.as_secs_f64()
    ))
}

/// More chunks than this is a bogus size, not a model file.
const MAX_CHUNKS: u64 = 1 << 24;

/// Downloads `size` bytes as `chunk_size` ranges, `parallel_ranges` at a time, hashing them in
/// file order as they arrive; bytes an earlier run kept are hashed from disk.
#[allow(clippy::too_many_arguments)]
async fn fetch_ranged(
    ctx: &Arc<FetchCtx>,
    remote: &Remote,
    expected: &Expected,
    part: &Path,
    size: u64,
    chunk_size: u64,
    name: &str,
) -> Result<Computed, Failure> {
    let n_chunks = size.div_ceil(chunk_size).max(1);
    if n_chunks > MAX_CHUNKS {
        return Err(Failure::Fatal(format!(
            "{name}: declared size {size} is too large"
        )));
    }
    let n_chunks =
        usize::try_from(n_chunks).map_err(|_| Failure::Fatal("file too large".into()))?;
    // With a published hash the content pins the partial data, so a changed URL (another
    // CDN node, a re-signed link) still resumes; without one, the URL must match.
    let identity = if expected.has_hash() {
        format!("{name}|{expected:?}")
    } else {
        format!("{}|{expected:?}", remote.identity())
    };
    let fresh = ChunkState {
        identity,
        size,
        chunk_size,
        got: vec![0; n_chunks],
    };
    let state = resume_or_start(part, fresh, name)?;
    let file = Arc::new(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(part)
            .map_err(|e| io_fail(part, e))?,
    );
    let got_at_start = state.got.clone();
    ctx.progress.add(got_at_start.iter().sum());

    // One hand-off per chunk still to fetch, from its worker to the hasher.
    let mut senders = Vec::with_capacity(n_chunks);
    let mut receivers = Vec::with_capacity(n_chunks);
    let mut queue = VecDeque::new();
    for (i, got) in got_at_start.iter().enumerate() {
        let r = chunk_range(i, chunk_size, size);
        if *got >= r.end - r.start {
            senders.push(None);
            receivers.push(None);
        } else {
            let (tx, rx) = oneshot::channel();
            senders.push(Some(tx));
            receivers.push(Some(rx));
            queue.push_back(i);
        }
    }
    let (hashed_tx, hashed_rx) = watch::channel(0usize);
    let n_workers = ctx.parallel_ranges.max(1).min(queue.len());
    let shared = Arc::new(RangeJob {
        ctx: ctx.clone(),
        remote: remote.clone(),
        file: file.clone(),
        part: part.to_path_buf(),
        spath: state_path(part),
        name: name.to_string(),
        size,
        chunk_size,
        got_at_start: got_at_start.clone(),
        // Chunks ahead of the hasher are held in memory; the window bounds that.
        window: ctx.parallel_ranges.max(1) + 1,
        queue: Mutex::new(queue),
        senders: Mutex::new(senders),
        state: Mutex::new(state),
    });
    let mut workers = JoinSet::new();
    for _ in 0..n_workers {
        let job = shared.clone();
        let hashed_rx = hashed_rx.clone();
        workers.spawn(async move { job.work(hashed_rx).await });
    }
    let order = HashOrder {
        file: &file,
        part,
        chunk_size,
        size,
        got_at_start: &got_at_start,
    };
    let hash_result = order
        .hash(Hasher::new(expected), receivers, &hashed_tx)
        .await;
    let hasher = match hash_result {
        Ok(h) => {
            while let Some(r) = workers.join_next().await {
                flatten(r)?;
            }
            h
        }
        Err(e) => {
            // Usually a worker failed (its sender dropped) and already returned: report its
            // error, not ours. The others may wait on the hasher's window, so stop them.
            workers.abort_all();
            let mut first = None;
            while let Some(r) = workers.join_next().await {
                if let Err(err) = flatten(r) {
                    first.get_or_insert(err);
                }
            }
            return Err(first.unwrap_or(e));
        }
    };
    sync_file(&file, part).await?;
    Ok(hasher.finish())
}

/// The state an earlier run saved for `part` when it matches `fresh` (same identity, size and
/// chunking, the partial file at full length); otherwise a new, empty partial file.
fn resume_or_start(part: &Path, fresh: ChunkState, name: &str) -> Result<ChunkState, Failure> {
    let spath = state_path(part);
    let part_len = std::fs::metadata(part).map(|m| m.len()).ok();
    let len_of = |i: usize| {
        let r = chunk_range(i, fresh.chunk_size, fresh.size);
        r.end - r.start
    };
    match load_state(&spath) {
        Some(s)
            if s.identity == fresh.identity
                && s.size == fresh.size
                && s.chunk_size == fresh.chunk_size
                && s.got.len() == fresh.got.len()
                && s.got.iter().enumerate().all(|(i, g)| *g <= len_of(i))
                && part_len == Some(fresh.size) =>
        {
            let held: u64 = s.got.iter().sum();
            if held > 0 {
                crate::info!(
                    "{name}: resuming, {:.1} of {:.1} MiB already on disk",
                    held as f64 / 1048576.0,
                    fresh.size as f64 / 1048576.0
                );
            }
            Ok(s)
        }
        _ => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(part)
                .map_err(|e| io_fail(part, e))?;
            f.set_len(fresh.size).map_err(|e| io_fail(part, e))?;
            save_state(&spath, &fresh).map_err(|e| io_fail(&spath, e))?;
            Ok(fresh)
        }
    }
}

/// What the range workers of one file share: the queue of chunks, their hand-offs to the
/// hasher, and the resume state they save.
struct RangeJob {
    ctx: Arc<FetchCtx>,
    remote: Remote,
    file: Arc<std::fs::File>,
    part: PathBuf,
    spath: PathBuf,
    name: String,
    size: u64,
    chunk_size: u64,
    got_at_start: Vec<u64>,
    window: usize,
    queue: Mutex<VecDeque<usize>>,
    senders: Mutex<Vec<Option<oneshot::Sender<Vec<Bytes>>>>>,
    state: Mutex<ChunkState>,
}

impl RangeJob {
    /// Takes chunks off the queue until it is empty, each no further than `window` ahead of
    /// the hasher, and hands their bytes over.
    async fn work(&self, mut hashed_rx: watch::Receiver<usize>) -> Result<(), Failure> {
        loop {
            let next = self.queue.lock().ok().and_then(|mut q| q.pop_front());
            let Some(idx) = next else { return Ok(()) };
            hashed_rx
                .wait_for(|h| idx < h + self.window)
                .await
                .map_err(|_| Failure::Fatal("hasher stopped".into()))?;
            let saved = |got: u64| {
                if let Ok(mut st) = self.state.lock() {
                    if let Some(g) = st.got.get_mut(idx) {
                        *g = got;
                    }
                    let _ = save_state(&self.spath, &st);
                }
            };
            let job = Chunk {
                range: chunk_range(idx, self.chunk_size, self.size),
                start_got: self.got_at_start.get(idx).copied().unwrap_or(0),
                size: self.size,
            };
            let res = fetch_chunk(
                &self.ctx,
                &self.remote,
                &self.file,
                &self.part,
                job,
                &self.name,
                &saved,
            )
            .await;
            // On failure the sender is dropped too, so the hasher stops waiting for it.
            let tx = self
                .senders
                .lock()
                .ok()
                .and_then(|mut s| s.get_mut(idx).and_then(Option::take));
            let data = res?;
            if let Some(tx) = tx {
                let _ = tx.send(data);
            }
        }
    }
}

/// Feeds the hasher in file order: what was on disk before this run from the disk, then what
/// arrives from the network, publishing how many chunks are hashed.
struct HashOrder<'a> {
    file: &'a Arc<std::fs::File>,
    part: &'a Path,
    chunk_size: u64,
    size: u64,
    got_at_start: &'a [u64],
}

impl HashOrder<'_> {
    async fn hash(
        &self,
        mut hasher: Hasher,
        receivers: Vec<Option<oneshot::Receiver<Vec<Bytes>>>>,
        hashed_tx: &watch::Sender<usize>,
    ) -> Result<Hasher, Failure> {
        for (i, rx) in receivers.into_iter().enumerate() {
            let range = chunk_range(i, self.chunk_size, self.size);
            let on_disk = self.got_at_start.get(i).copied().unwrap_or(0);
            if on_disk > 0 {
                let kept = range.start..range.start + on_disk;
                hasher = hash_from_disk(hasher, self.file, self.part, kept).await?;
            }
            if let Some(rx) = rx {
                let data = rx
                    .await
                    .map_err(|_| Failure::Fatal("download worker stopped".into()))?;
                hasher = spawn_hash(hasher, data).await?;
            }
            let _ = hashed_tx.send(i + 1);
        }
        Ok(hasher)
    }
}

/// fsync on the blocking pool.
async fn sync_file(file: &Arc<std::fs::File>, part: &Path) -> Result<(), Failure> {
    let f = file.clone();
    let p = part.to_path_buf();
    tokio::task::spawn_blocking(move || f.sync_all().map_err(|e| io_fail(&p, e)))
        .await
        .map_err(|e| Failure::Fatal(format!("sync: {e}")))?
}

/// Hashes bytes already on disk, a bounded buffer at a time.
async fn hash_from_disk(
    mut hasher: Hasher,
    file: &Arc<std::fs::File>,
    part: &Path,
    range: Range<u64>,
) -> Result<Hasher, Failure> {
    let f = file.clone();
    let p = part.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; 4 << 20];
        let mut pos = range.start;
        while pos < range.end {
            let n = usize::try_from((range.end - pos).min(buf.len() as u64)).unwrap_or(0);
            let slice = buf.get_mut(..n).unwrap_or_default();
            f.read_exact_at(slice, pos).map_err(|e| io_fail(&p, e))?;
            hasher.update(slice);
            pos += n as u64;
        }
        Ok::<_, Failure>(hasher)
    })
    .await
    .map_err(|e| Failure::Fatal(format!("hash: {e}")))?
}

fn flatten(r: Result<Result<(), Failure>, tokio::task::JoinError>) -> Result<(), Failure> {
    match r {
        Ok(inner) => inner,
        Err(e) if e.is_cancelled() => Ok(()),
        Err(e) => Err(Failure::Fatal(format!("download task: {e}"))),
    }
}

async fn spawn_hash(mut hasher: Hasher, data: Vec<Bytes>) -> Result<Hasher, Failure> {
    tokio::task::spawn_blocking(move || {
        for piece in &data {
            hasher.update(piece);
        }
        hasher
    })
    .await
    .map_err(|e| Failure::Fatal(format!("hash: {e}")))
}

fn chunk_range(i: usize, chunk: u64, size: u64) -> Range<u64> {
    let start = (i as u64).saturating_mul(chunk).min(size);
    start..start.saturating_add(chunk).min(size)
}

/// One chunk of a file: its byte range, how much of it is already on disk, the file size.
struct Chunk {
    range: Range<u64>,
    start_got: u64,
    size: u64,
}

/// One chunk, retried from where it stopped; returns the bytes it fetched (those after
/// `start_got`) for the hasher. `saved(got)` records progress after every write batch.
async fn fetch_chunk(
    ctx: &FetchCtx,
    remote: &Remote,
    file: &Arc<std::fs::File>,
    part: &Path,
    job: Chunk,
    name: &str,
    saved: &(dyn Fn(u64) + Sync),
) -> Result<Vec<Bytes>, Failure> {
    let Chunk {
        range,
        start_got,
        size,
    } = job;
    let mut data: Vec<Bytes> = Vec::new();
    let mut got = start_got;
    let want = range.end - range.start;
    let mut attempt = 0u32;
    while got < want {
        let res: Result<(), Failure> = async {
            let _permit = ctx
                .connections
                .acquire()
                .await
                .map_err(|_| Failure::Fatal("shutdown".into()))?;
            let sub = range.start + got..range.end;
            let mut stream =
                tokio::time::timeout(ctx.read_timeout, remote.open(ctx, Some(sub), Some(size)))
                    .await
                    .map_err(|_| stall(name, ctx.read_timeout))??;
            let mut pending: Vec<Bytes> = Vec::new();
            let mut pending_len = 0u64;
            let mut write_pos = range.start + got;
            loop {
                let next = tokio::time::timeout(ctx.read_timeout, stream.next())
                    .await
                    .map_err(|_| stall(name, ctx.read_timeout));
                let piece = match next {
                    Ok(Some(Ok(p))) => Some(p),
                    Ok(None) => None,
                    Ok(Some(Err(e))) | Err(e) => {
                        // Keep what arrived: the retry (or the next run) continues after it.
                        write_batch(file, part, write_pos, std::mem::take(&mut pending)).await?;
                        saved(got);
                        return Err(e);
                    }
                };
                let Some(mut piece) = piece else { break };
                // Never more than the range: a server that sends extra bytes is cut off.
                let room = want - got;
                if piece.len() as u64 > room {
                    piece.truncate(usize::try_from(room).unwrap_or(0));
                }
                if piece.is_empty() {
                    break;
                }
                let n = piece.len() as u64;
                got += n;
                ctx.progress.add(n);
                METRICS.bytes_downloaded.add(n);
                data.push(piece.clone());
                pending.push(piece);
                pending_len += n;
                if pending_len >= WRITE_BATCH as u64 {
                    let batch = std::mem::take(&mut pending);
                    write_batch(file, part, write_pos, batch).await?;
                    saved(got);
                    ctx.disk.wrote(pending_len)?;
                    write_pos += pending_len;
                    pending_len = 0;
                }
                if got >= want {
                    break;
                }
            }
            write_batch(file, part, write_pos, pending).await?;
            saved(got);
            ctx.disk.wrote(pending_len)?;
            if got < want {
                return Err(Failure::retryable(format!(
                    "{name}: connection closed after {got} of {want} bytes of a range"
                )));
            }
            Ok(())
        }
        .await;
        if let Err(f) = res {
            attempt += 1;
            ctx.retry.pause(attempt, f, name).await?;
        }
    }
    Ok(data)
}

async fn write_batch(
    file: &Arc<std::fs::File>,
    part: &Path,
    pos: u64,
    batch: Vec<Bytes>,
) -> Result<(), Failure> {
    if batch.is_empty() {
        return Ok(());
    }
    let f = file.clone();
    let p = part.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut at = pos;
        for b in &batch {
            f.write_all_at(b, at).map_err(|e| io_fail(&p, e))?;
            at += b.len() as u64;
        }
        Ok(())
    })
    .await
    .map_err(|e| Failure::Fatal(format!("write: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_file() {
        assert_eq!(chunk_range(0, 4, 10), 0..4);
        assert_eq!(chunk_range(2, 4, 10), 8..10);
        assert_eq!(chunk_range(0, 4, 0), 0..0);
    }
}
