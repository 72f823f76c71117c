//! The loader's life: load the current revision, serve it, poll for new ones, swap them in,
//! stop cleanly on SIGTERM.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::cli::Args;
use crate::digest::parse_manifest;
use crate::fetch::{fetch_file, io_fail, DiskGuard, FetchCtx};
use crate::progress::Progress;
use crate::retry::{Failure, RetryPolicy};
use crate::source::{build_store, ArchiveKind, Filters, Listing, RemoteFile, Source, SourceSpec};
use crate::status::{Phase, Status, METRICS};
use crate::versions::{
    append_done, link_or_copy, read_done, read_manifest, write_atomic_mode, write_manifest, Layout,
    Manifest, ManifestEntry, PARTS_DIR,
};
use crate::{error, info, warn};

pub struct Loader {
    args: Args,
    layout: Layout,
    source: Source,
    retry: RetryPolicy,
    status: Arc<Status>,
    ready_file: PathBuf,
    metadata_file: PathBuf,
    /// The revision this process last told its server about (hooks), or found served at
    /// start. Another loader on the same volume may switch without us: we still announce.
    announced: Mutex<Option<String>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

impl Loader {
    pub fn new(args: Args, status: Arc<Status>) -> Result<Self, String> {
        let source = build_source(&args)?;
        let layout = build_layout(&args)?;
        let ready_file = args
            .ready_file
            .clone()
            .unwrap_or_else(|| layout.dest.join(".ready"));
        let metadata_file = args
            .metadata_file
            .clone()
            .unwrap_or_else(|| layout.dest.join("metadata.json"));
        if args.parallel_files == 0 || args.parallel_ranges == 0 || args.connections == 0 {
            return Err(
                "parallel-files, parallel-ranges and connections must be at least 1".into(),
            );
        }
        if args.chunk_size < 64 * 1024 {
            return Err("chunk-size: at least 64KiB".into());
        }
        let retry = RetryPolicy {
            max_retries: args.retries,
            base: args.retry_base,
            max_delay: args.retry_max,
        };
        Ok(Self {
            layout,
            source,
            retry,
            status,
            ready_file,
            metadata_file,
            announced: Mutex::new(None),
            args,
        })
    }

    /// Lists the source and makes its revision the served one if it is not already.
    /// Returns true when the served revision changed.
    pub async fn cycle(&self) -> Result<bool, Failure> {
        let started = Instant::now();
        let listing = self.source.list(&self.retry).await?;
        let rev = listing.revision.clone();
        if self.layout.current().is_some_and(|m| m.revision == rev) {
            METRICS.last_success_unix_ms.set(now_ms());
            self.status.set(Phase::Ready, Some(rev.clone()));
            self.announce(&rev).await;
            return Ok(false);
        }
        let declared = total_size(listing.files.iter().filter_map(|f| f.expected.size))?;
        info!(
            "{}: revision {rev}, {} file(s), {:.1} MiB",
            self.source.spec.display(),
            listing.files.len(),
            mib(declared)
        );
        let lock = self
            .layout
            .lock()
            .await
            .map_err(|e| Failure::Fatal(format!("lock: {e}")))?;
        // Re-read under the lock: another loader on this volume may have done the work.
        let current = self.layout.current();
        let vdir = self.layout.version_dir(&rev);
        let manifest = match read_manifest(&vdir).filter(|m| m.revision == rev) {
            Some(m) => {
                info!("revision {rev} already complete on this volume");
                m
            }
            None => self.download(&listing, current.as_ref()).await?,
        };
        let previous = current.map(|m| m.revision);
        if previous.as_deref() == Some(rev.as_str()) {
            drop(lock);
            self.status.set(Phase::Ready, Some(rev.clone()));
            self.announce(&rev).await;
            return Ok(false);
        }
        self.write_side_files(&vdir, &manifest, true)
            .map_err(|e| Failure::Fatal(format!("metadata: {e}")))?;
        if previous.is_some() {
            self.status.set_phase(Phase::Updating);
        }
        if let Err(e) = self.layout.switch(&rev) {
            self.status.set_phase(if previous.is_some() {
                Phase::Ready
            } else {
                Phase::Loading
            });
            return Err(Failure::Fatal(format!("switch: {e}")));
        }
        self.write_side_files(&vdir, &manifest, false)
            .map_err(|e| Failure::Fatal(format!("metadata: {e}")))?;
        self.status.set(Phase::Ready, Some(rev.clone()));
        METRICS
            .last_duration_ms
            .set(started.elapsed().as_millis() as u64);
        METRICS.last_success_unix_ms.set(now_ms());
        match &previous {
            Some(p) => {
                METRICS.updates.inc();
                info!("switched {} from {p} to {rev}", self.layout.dest.display());
            }
            None => info!("serving {rev} at {}", self.layout.dest.display()),
        }
        self.layout.prune(self.args.keep.max(1), &rev, None);
        drop(lock);
        self.announce(&rev).await;
        Ok(true)
    }

    /// Runs the update hooks when `rev` is not what this process last announced (the
    /// first revision it serves is not an update: the server loads it when it starts).
    async fn announce(&self, rev: &str) {
        let previous = match self.announced.lock() {
            Ok(mut a) => {
                if a.as_deref() == Some(rev) {
                    return;
                }
                a.replace(rev.to_string())
            }
            Err(_) => return,
        };
        if let Some(p) = previous {
            let vdir = self.layout.version_dir(rev);
            self.run_hook(rev, &p, &vdir).await;
        }
    }

    /// Writes the `.ready` sentinel and `metadata.json`: those under the served path go into
    /// the revision directory before the switch (`before_switch`), the others after it.
    fn write_side_files(
        &self,
        vdir: &Path,
        m: &Manifest,
        before_switch: bool,
    ) -> std::io::Result<()> {
        let bytes = m
            .files
            .iter()
            .try_fold(0u64, |a, f| a.checked_add(f.size))
            .unwrap_or(u64::MAX);
        let meta = serde_json::json!({
            // Redacted as in logs: presigned queries and `user:pass@` never reach the disk.
            "model_id": crate::log::redact_url(&self.args.source),
            "source": self.source.spec.display(),
            "revision": m.revision,
            // The seed's update check compared this key; it now holds the served revision.
            "remote_sha": m.revision,
            "path": self.layout.dest,
            "version_dir": vdir,
            "files": m.files.len(),
            "bytes": bytes,
            "loaded_at": m.completed_at,
        });
        let meta = serde_json::to_vec_pretty(&meta).unwrap_or_default();
        let ready = format!("{}\n", m.revision);
        for (path, data, mode) in [
            (&self.metadata_file, meta.as_slice(), 0o640),
            (&self.ready_file, ready.as_bytes(), 0o644),
        ] {
            match path.strip_prefix(&self.layout.dest) {
                Ok(rel) if before_switch => {
                    let rel_s = rel.to_string_lossy();
                    if m.files.iter().any(|f| f.path == rel_s) {
                        warn!(
                            "{} is a model file; not overwriting it with loader metadata",
                            path.display()
                        );
                        continue;
                    }
                    write_atomic_mode(&vdir.join(rel), data, mode)?;
                }
                Err(_) if !before_switch => write_atomic_mode(path, data, mode)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Removes a sentinel outside the served path that no verified revision backs.
    fn clear_stale_ready(&self) {
        if self.ready_file.strip_prefix(&self.layout.dest).is_err() && self.ready_file.exists() {
            warn!("removing stale {}", self.ready_file.display());
            let _ = std::fs::remove_file(&self.ready_file);
        }
    }

    /// Builds revision `listing` in its partial directory, then moves it into place.
    async fn download(
        &self,
        listing: &Listing,
        current: Option<&Manifest>,
    ) -> Result<Manifest, Failure> {
        let started = Instant::now();
        let rev = &listing.revision;
        let partial = self.layout.partial_dir(rev);
        let parts = partial.join(PARTS_DIR);
        // Frees space held by old partial downloads before checking what is free.
        self.layout.prune(
            self.args.keep.max(1),
            current.map_or("", |m| m.revision.as_str()),
            Some(rev),
        );
        std::fs::create_dir_all(&parts).map_err(|e| io_fail(&parts, e))?;

        let plan = self.plan(listing, current, &partial, &parts);
        let total = self.check_space(&plan.to_fetch, &partial, &parts, rev)?;
        let n_fetch = plan.to_fetch.len();
        let mut entries = plan.kept;
        entries.extend(
            self.fetch_all(plan.to_fetch, total, listing, &partial, &parts)
                .await?,
        );
        if let (Some(kind), Some(f)) = (&listing.archive, listing.files.first()) {
            entries = self
                .unpack(part_path(&parts, f), kind.clone(), &partial)
                .await?;
        }
        let manifest = self.commit(rev, entries, &partial, &parts)?;
        let secs = started.elapsed().as_secs_f64().max(0.001);
        info!(
            "revision {rev} verified: {} file(s); downloaded {n_fetch} file(s), {:.1} MiB in {secs:.2}s ({:.1} MiB/s); reused {}",
            manifest.files.len(),
            mib(total),
            mib(total) / secs,
            plan.reused_files
        );
        Ok(manifest)
    }

    /// Decides per file: already verified by an earlier run, hardlinked from the serving
    /// revision, or to fetch.
    fn plan(
        &self,
        listing: &Listing,
        current: Option<&Manifest>,
        partial: &Path,
        parts: &Path,
    ) -> Plan {
        let done: HashMap<String, ManifestEntry> = read_done(partial)
            .into_iter()
            .map(|e| (e.path.clone(), e))
            .collect();
        let serving_dir = current.map(|m| self.layout.version_dir(&m.revision));
        let serving: HashMap<&str, &ManifestEntry> = current
            .map(|m| m.files.iter().map(|e| (e.path.as_str(), e)).collect())
            .unwrap_or_default();
        let mut plan = Plan::default();
        let mut reused_bytes = 0u64;
        for f in &listing.files {
            if listing.archive.is_none() {
                if let Some(e) = done
                    .get(f.path.as_str())
                    .and_then(|d| resumed(d, f, partial, parts))
                {
                    plan.kept.push(e);
                    continue;
                }
                let from_serving = serving.get(f.path.as_str()).zip(serving_dir.as_ref());
                if let Some(e) = from_serving.and_then(|(s, dir)| reuse(s, f, dir, partial)) {
                    plan.reused_files += 1;
                    reused_bytes += e.size;
                    plan.kept.push(e);
                    continue;
                }
            }
            plan.to_fetch.push(f.clone());
        }
        METRICS.files_reused.add(plan.reused_files);
        METRICS.bytes_reused.add(reused_bytes);
        if plan.reused_files > 0 {
            info!(
                "reusing {} unchanged file(s), {:.1} MiB, from the serving revision",
                plan.reused_files,
                mib(reused_bytes)
            );
        }
        plan
    }

    /// Refuses a revision that would not fit: what is left to fetch, less what partial files
    /// already hold, plus the reserve. Returns the bytes to fetch.
    fn check_space(
        &self,
        to_fetch: &[RemoteFile],
        partial: &Path,
        parts: &Path,
        rev: &str,
    ) -> Result<u64, Failure> {
        let total = total_size(to_fetch.iter().filter_map(|f| f.expected.size))?;
        let held: u64 = to_fetch
            .iter()
            .filter_map(|f| std::fs::metadata(part_path(parts, f)).ok())
            .map(|m| m.blocks() * 512)
            .sum();
        let need = total.saturating_sub(held);
        let avail = fs4::available_space(partial).map_err(|e| io_fail(partial, e))?;
        if avail < need.saturating_add(self.args.min_free) {
            return Err(Failure::Fatal(format!(
                "not enough free space in {}: revision {rev} needs {need} more bytes (+{} reserve), {avail} available",
                self.layout.versions.display(),
                self.args.min_free
            )));
        }
        Ok(total)
    }

    /// Downloads `to_fetch` (`parallel_files` at a time); the first failure stops the rest.
    async fn fetch_all(
        &self,
        to_fetch: Vec<RemoteFile>,
        total: u64,
        listing: &Listing,
        partial: &Path,
        parts: &Path,
    ) -> Result<Vec<ManifestEntry>, Failure> {
        let progress = if to_fetch.is_empty() {
            Progress::quiet()
        } else {
            Progress::start(
                self.args.progress,
                total,
                &format!("download {}", listing.revision),
                self.args.progress_interval,
            )
        };
        let ctx = Arc::new(FetchCtx {
            client: self.source.client.clone(),
            retry: self.retry.clone(),
            chunk_size: self.args.chunk_size,
            parallel_ranges: self.args.parallel_ranges,
            read_timeout: self.args.read_timeout,
            connections: Arc::new(Semaphore::new(self.args.connections)),
            progress: progress.clone(),
            disk: Arc::new(DiskGuard::new(partial, self.args.min_free)),
        });
        let file_slots = Arc::new(Semaphore::new(self.args.parallel_files));
        let done_log = Arc::new(Mutex::new(()));
        let mut set = JoinSet::new();
        for f in to_fetch {
            let job = FileJob {
                ctx: ctx.clone(),
                partial: partial.to_path_buf(),
                part: part_path(parts, &f),
                done_log: done_log.clone(),
                is_archive: listing.archive.is_some(),
                file: f,
            };
            let slots = file_slots.clone();
            set.spawn(async move {
                let _slot = slots
                    .acquire()
                    .await
                    .map_err(|_| Failure::Fatal("shutdown".into()))?;
                job.run().await
            });
        }
        let mut entries = Vec::new();
        let mut first_err = None;
        while let Some(r) = set.join_next().await {
            match r.unwrap_or_else(|e| Err(Failure::Fatal(format!("download task: {e}")))) {
                Ok(Some(e)) => entries.push(e),
                Ok(None) => {}
                Err(e) => {
                    if first_err.is_none() {
                        set.abort_all();
                        first_err = Some(e);
                    }
                }
            }
        }
        progress.finish();
        match first_err {
            Some(e) => Err(e),
            None => Ok(entries),
        }
    }

    /// Unpacks the downloaded archive into `dest` (emptied first: a previous run may have
    /// died mid-unpack).
    async fn unpack(
        &self,
        archive: PathBuf,
        kind: ArchiveKind,
        dest: &Path,
    ) -> Result<Vec<ManifestEntry>, Failure> {
        let dest = dest.to_path_buf();
        let limits = crate::archive::Limits {
            max_entries: self.args.max_archive_entries,
            max_bytes: self.args.max_unpacked,
            min_free: self.args.min_free,
        };
        tokio::task::spawn_blocking(move || {
            if let Ok(rd) = std::fs::read_dir(&dest) {
                for e in rd.flatten() {
                    if e.file_name() != PARTS_DIR {
                        let p = e.path();
                        let _ = if p.is_dir() {
                            std::fs::remove_dir_all(&p)
                        } else {
                            std::fs::remove_file(&p)
                        };
                    }
                }
            }
            crate::archive::unpack(&archive, &kind, &dest, &limits)
        })
        .await
        .map_err(|e| Failure::Fatal(format!("unpack: {e}")))?
        .map_err(Failure::Fatal)
    }

    /// Writes the manifest and renames the partial directory to the revision's directory.
    fn commit(
        &self,
        rev: &str,
        mut entries: Vec<ManifestEntry>,
        partial: &Path,
        parts: &Path,
    ) -> Result<Manifest, Failure> {
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        let manifest = Manifest {
            revision: rev.to_string(),
            source: self.source.spec.display(),
            completed_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            files: entries,
        };
        let _ = std::fs::remove_dir_all(parts);
        let _ = std::fs::remove_file(partial.join(crate::versions::DONE_LOG));
        write_manifest(partial, &manifest).map_err(|e| io_fail(partial, e))?;
        let vdir = self.layout.version_dir(rev);
        if vdir.exists() {
            let _ = std::fs::remove_dir_all(&vdir);
        }
        std::fs::rename(partial, &vdir).map_err(|e| io_fail(&vdir, e))?;
        crate::versions::sync_dir(&self.layout.versions);
        Ok(manifest)
    }

    async fn run_hook(&self, rev: &str, previous: &str, path: &Path) {
        if let Some(cmd) = &self.args.update_hook_cmd {
            let res = tokio::time::timeout(
                Duration::from_secs(300),
                tokio::process::Command::new("sh")
                    .arg("-c")
                    .arg(cmd)
                    // Only what a hook needs: no HF_TOKEN, no cloud keys.
                    .env_clear()
                    .envs(
                        HOOK_ENV
                            .iter()
                            .filter_map(|k| std::env::var_os(k).map(|v| (k, v))),
                    )
                    .env("MODELGATE_REVISION", rev)
                    .env("MODELGATE_PREVIOUS_REVISION", previous)
                    .env("MODELGATE_PATH", &self.layout.dest)
                    .env("MODELGATE_VERSION_DIR", path)
                    .status(),
            )
            .await;
            match res {
                Ok(Ok(s)) if s.success() => info!("update hook command succeeded"),
                Ok(Ok(s)) => warn!("update hook command failed: {s}"),
                Ok(Err(e)) => warn!("update hook command: {e}"),
                Err(_) => warn!("update hook command timed out after 300s"),
            }
        }
        if let Some(url) = &self.args.update_hook_url {
            let body = serde_json::json!({
                "revision": rev,
                "previous_revision": previous,
                "path": self.layout.dest,
            })
            .to_string();
            let what = format!("update hook POST {}", crate::log::redact_url(url));
            let res = self
                .retry
                .run(&what, || async {
                    let resp = self
                        .source
                        .client
                        .post(url)
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .map_err(|e| Failure::retryable(format!("{what}: {}", e.without_url())))?;
                    match crate::retry::classify_response(
                        &resp,
                        &what,
                        "the hook refused the request",
                    ) {
                        Some(f) => Err(f),
                        None => Ok(()),
                    }
                })
                .await;
            match res {
                Ok(()) => info!("update hook POST succeeded"),
                Err(e) => warn!("{e}"),
            }
        }
    }
}

/// Variables passed through to the update hook command; everything else is dropped.
const HOOK_ENV: [&str; 6] = ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"];

/// Sum of declared sizes; a sum that overflows is a bogus listing, not a huge model.
fn total_size(sizes: impl Iterator<Item = u64>) -> Result<u64, Failure> {
    sizes
        .into_iter()
        .try_fold(0u64, |a, s| a.checked_add(s))
        .ok_or_else(|| Failure::Fatal("listing: declared sizes overflow".into()))
}

/// A file finished by an earlier run still matches the listing: size, and the published
/// sha256 and content id when there are any.
fn still_current(done: &ManifestEntry, f: &RemoteFile) -> bool {
    f.expected.size.is_none_or(|s| s == done.size)
        && f.expected
            .sha256
            .as_ref()
            .is_none_or(|h| h.eq_ignore_ascii_case(&done.sha256))
        && match (&f.id, &done.id) {
            (Some(a), Some(b)) => a == b,
            (Some(_), None) => false,
            _ => true,
        }
}

fn part_path(parts: &Path, f: &RemoteFile) -> PathBuf {
    let mut p = f.path.under(parts).into_os_string();
    p.push(".part");
    PathBuf::from(p)
}

/// A serving file can stand in for a new one when the size matches and the content is known
/// equal: same sha256, or (no sha256 published) the same source content id.
fn reusable(old: &ManifestEntry, new: &RemoteFile) -> bool {
    if new.expected.size != Some(old.size) {
        return false;
    }
    match (&new.expected.sha256, &new.id) {
        (Some(sha), _) => sha.eq_ignore_ascii_case(&old.sha256),
        (None, Some(id)) => old.id.as_deref() == Some(id.as_str()),
        (None, None) => false,
    }
}

/// Runs the loader until done (`--once`) or SIGTERM; returns the process exit code.
pub async fn run(args: Args) -> i32 {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let status = Arc::new(Status::default());
    let once = args.once;
    let poll = args.poll_interval;
    let status_addr = args.status_addr;
    let loader = match Loader::new(args, status.clone()) {
        Ok(l) => l,
        Err(e) => {
            error!("{e}");
            return 2;
        }
    };
    if let Err(e) = loader.layout.prepare() {
        error!("{}: {e}", loader.layout.versions.display());
        return 2;
    }
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            error!("cannot install signal handlers");
            return 2;
        }
    };
    match loader.layout.current() {
        Some(m) => {
            info!("serving {} from a previous run", m.revision);
            if let Ok(mut a) = loader.announced.lock() {
                *a = Some(m.revision.clone());
            }
            status.set(Phase::Ready, Some(m.revision));
        }
        None => {
            loader.clear_stale_ready();
            status.set(Phase::Loading, None);
        }
    }
    if let Some(addr) = status_addr {
        match crate::status::serve(addr, status.clone()).await {
            Ok(bound) => info!("status server listening on {bound}"),
            Err(e) => {
                error!("status server on {addr}: {e}");
                return 2;
            }
        }
    }
    let mut failures = 0u32;
    loop {
        let res = tokio::select! {
            r = loader.cycle() => r,
            _ = term.recv() => return stop(&status, "SIGTERM", once),
            _ = int.recv() => return stop(&status, "SIGINT", once),
        };
        let wait = match res {
            Ok(_) => {
                failures = 0;
                if once {
                    return 0;
                }
                (!poll.is_zero()).then_some(poll)
            }
            Err(e) => {
                METRICS.failures.inc();
                error!("{e}");
                if once {
                    return 1;
                }
                failures += 1;
                let backoff = loader.retry.delay(failures, None);
                let has_current = status.get().1.is_some();
                match (has_current, poll.is_zero()) {
                    (false, true) => Some(backoff),
                    (false, false) => Some(backoff.min(poll)),
                    (true, true) => None,
                    (true, false) => Some(poll),
                }
            }
        };
        let sleep = async {
            match wait {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = sleep => {}
            _ = term.recv() => return stop(&status, "SIGTERM", once),
            _ = int.recv() => return stop(&status, "SIGINT", once),
        }
    }
}

fn stop(status: &Status, sig: &str, once: bool) -> i32 {
    let (_, rev) = status.get();
    status.set_phase(Phase::Draining);
    info!("{sig}: stopping (partial downloads are kept for resume)");
    if once && rev.is_none() {
        1
    } else {
        0
    }
}

/// The source named by the flags, with its client, credentials and expected hashes.
fn build_source(args: &Args) -> Result<Source, String> {
    let spec = SourceSpec::parse(&args.source, args.revision.as_deref())?;
    let client = reqwest::Client::builder()
        .connect_timeout(args.connect_timeout)
        .read_timeout(args.read_timeout)
        .user_agent(concat!("modelgate-loader/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("http client: {e}"))?;
    let (store, store_prefix) = match &spec {
        SourceSpec::Store { url } => {
            let (s, p) = build_store(url, args.connect_timeout)?;
            (Some(s), p)
        }
        _ => (None, object_store::path::Path::default()),
    };
    let gcs = match &spec {
        SourceSpec::Gcs { url } => Some(crate::gcs::Bucket::from_env(url)?),
        _ => None,
    };
    let manifest = match &args.manifest {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("manifest: {}: {e}", p.display()))?;
            Some(
                parse_manifest(&text)
                    .map_err(|e| format!("manifest: {e}"))?
                    .into_iter()
                    .collect(),
            )
        }
        None => None,
    };
    if let Some(s) = &args.sha256 {
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("sha256: expected 64 hex digits".into());
        }
    }
    let token = args
        .hf_token
        .clone()
        .or_else(|| std::env::var("HUGGING_FACE_HUB_TOKEN").ok())
        .filter(|t| !t.is_empty())
        .map(Arc::from);
    Ok(Source {
        spec,
        client,
        hf_endpoint: args.hf_endpoint.clone(),
        token,
        filters: Filters::new(&args.include, &args.exclude)?,
        manifest,
        sha256: args.sha256.as_ref().map(|s| s.to_ascii_lowercase()),
        store,
        store_prefix,
        gcs,
    })
}

/// The served path and its versions directory (by default `.<name>.versions` beside it).
fn build_layout(args: &Args) -> Result<Layout, String> {
    if args.dest.as_os_str().is_empty() {
        return Err("dest: empty (set --dest or MODEL_DIR)".into());
    }
    let dest = std::path::absolute(&args.dest).map_err(|e| format!("dest: {e}"))?;
    let versions = match &args.versions_dir {
        Some(v) => std::path::absolute(v).map_err(|e| format!("versions-dir: {e}"))?,
        None => {
            let name = dest
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            dest.parent()
                .unwrap_or(Path::new("/"))
                .join(format!(".{name}.versions"))
        }
    };
    if versions.starts_with(&dest) {
        return Err("versions-dir: must not be inside dest".into());
    }
    Ok(Layout { dest, versions })
}

/// What a revision needs: files already in place, and files to fetch.
#[derive(Default)]
struct Plan {
    kept: Vec<ManifestEntry>,
    to_fetch: Vec<RemoteFile>,
    reused_files: u64,
}

/// A file an earlier run verified: still valid when on disk at its size and unchanged at the
/// source. Finishes a move a kill interrupted (logged, then moved).
fn resumed(
    d: &ManifestEntry,
    f: &RemoteFile,
    partial: &Path,
    parts: &Path,
) -> Option<ManifestEntry> {
    let target = f.path.under(partial);
    let part = part_path(parts, f);
    if !target.exists() && std::fs::metadata(&part).is_ok_and(|m| m.len() == d.size) {
        if let Some(p) = target.parent() {
            let _ = std::fs::create_dir_all(p);
        }
        let _ = std::fs::rename(&part, &target);
    }
    let on_disk = std::fs::metadata(&target).map(|m| m.len()).ok();
    (on_disk == Some(d.size) && still_current(d, f)).then(|| d.clone())
}

/// An unchanged file of the serving revision, hardlinked (or copied) and logged as done.
fn reuse(
    s: &ManifestEntry,
    f: &RemoteFile,
    serving_dir: &Path,
    partial: &Path,
) -> Option<ManifestEntry> {
    if !reusable(s, f) || link_or_copy(&f.path.under(serving_dir), &f.path.under(partial)).is_err()
    {
        return None;
    }
    let e = ManifestEntry {
        id: f.id.clone().or(s.id.clone()),
        ..s.clone()
    };
    let _ = append_done(partial, &e);
    Some(e)
}

/// One file's download: fetched and verified into its `.part`, logged as done, then moved
/// into place (an archive stays a `.part` for unpacking).
struct FileJob {
    ctx: Arc<FetchCtx>,
    file: RemoteFile,
    partial: PathBuf,
    part: PathBuf,
    done_log: Arc<Mutex<()>>,
    is_archive: bool,
}

impl FileJob {
    async fn run(self) -> Result<Option<ManifestEntry>, Failure> {
        let mkdir = |p: &Path| match p.parent() {
            Some(d) => std::fs::create_dir_all(d).map_err(|e| io_fail(d, e)),
            None => Ok(()),
        };
        mkdir(&self.part)?;
        let f = &self.file;
        let name = f.path.to_string();
        let c = fetch_file(&self.ctx, &f.remote, &f.expected, &self.part, &name).await?;
        METRICS.files_downloaded.inc();
        if self.is_archive {
            return Ok(None);
        }
        let target = f.path.under(&self.partial);
        mkdir(&target)?;
        // Logged first, then moved: a kill between the two loses nothing (the next run finds
        // the verified .part and moves it).
        let e = ManifestEntry {
            path: name,
            size: c.len,
            sha256: c.sha256,
            id: f.id.clone(),
        };
        {
            let _g = self.done_log.lock();
            append_done(&self.partial, &e).map_err(|e| Failure::Fatal(format!("done log: {e}")))?;
        }
        std::fs::rename(&self.part, &target).map_err(|e| io_fail(&target, e))?;
        let _ = std::fs::remove_file(crate::fetch::state_path(&self.part));
        Ok(Some(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summed_sizes_that_overflow_are_refused() {
        assert_eq!(total_size([1u64, 2, 3].into_iter()).unwrap(), 6);
        assert!(total_size([u64::MAX, 1].into_iter()).is_err());
    }
}
