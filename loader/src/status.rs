//! Loader state and counters, and the status HTTP server the readiness gate polls
//! (`/ready`, `/healthz`, `/metrics`; see docs/CONTRACTS.md).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Process-wide counters; one registry, read by `/metrics`.
pub struct Metrics {
    pub bytes_downloaded: Counter,
    pub bytes_reused: Counter,
    pub files_downloaded: Counter,
    pub files_reused: Counter,
    pub retries: Counter,
    pub integrity_failures: Counter,
    pub failures: Counter,
    pub updates: Counter,
    pub last_duration_ms: Counter,
    pub last_success_unix_ms: Counter,
}

pub static METRICS: Metrics = Metrics {
    bytes_downloaded: Counter::new(),
    bytes_reused: Counter::new(),
    files_downloaded: Counter::new(),
    files_reused: Counter::new(),
    retries: Counter::new(),
    integrity_failures: Counter::new(),
    failures: Counter::new(),
    updates: Counter::new(),
    last_duration_ms: Counter::new(),
    last_success_unix_ms: Counter::new(),
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Loading,
    Ready,
    Updating,
    Draining,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Loading => "loading",
            Self::Ready => "ready",
            Self::Updating => "updating",
            Self::Draining => "draining",
        }
    }
}

/// What `/ready` reports: the phase and the revision being served.
#[derive(Default)]
pub struct Status {
    inner: Mutex<(Option<Phase>, Option<String>)>,
}

impl Status {
    pub fn set(&self, phase: Phase, revision: Option<String>) {
        if let Ok(mut g) = self.inner.lock() {
            *g = (Some(phase), revision);
        }
    }
    pub fn set_phase(&self, phase: Phase) {
        if let Ok(mut g) = self.inner.lock() {
            g.0 = Some(phase);
        }
    }
    pub fn get(&self) -> (Phase, Option<String>) {
        match self.inner.lock() {
            Ok(g) => (g.0.unwrap_or(Phase::Loading), g.1.clone()),
            Err(_) => (Phase::Loading, None),
        }
    }
}

pub async fn serve(addr: SocketAddr, status: Arc<Status>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/ready", get(ready))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .with_state(status);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            crate::error!("status server stopped: {e}");
        }
    });
    Ok(bound)
}

async fn ready(State(status): State<Arc<Status>>) -> impl IntoResponse {
    let (phase, rev) = status.get();
    let body = serde_json::json!({ "state": phase.as_str(), "revision": rev }).to_string();
    let code = if phase == Phase::Ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, [(header::CONTENT_TYPE, "application/json")], body)
}

async fn metrics(State(status): State<Arc<Status>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render_metrics(&status),
    )
}

pub fn render_metrics(status: &Status) -> String {
    let m = &METRICS;
    let (phase, rev) = status.get();
    let mut out = String::with_capacity(2048);
    let mut counter = |name: &str, help: &str, v: u64| {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"
        );
    };
    counter(
        "modelgate_loader_bytes_downloaded_total",
        "Bytes received from the source.",
        m.bytes_downloaded.get(),
    );
    counter(
        "modelgate_loader_bytes_reused_total",
        "Bytes reused from the serving revision instead of downloaded.",
        m.bytes_reused.get(),
    );
    counter(
        "modelgate_loader_files_downloaded_total",
        "Files downloaded and verified.",
        m.files_downloaded.get(),
    );
    counter(
        "modelgate_loader_files_reused_total",
        "Files hardlinked or copied from the serving revision.",
        m.files_reused.get(),
    );
    counter(
        "modelgate_loader_retries_total",
        "Retried requests (connect errors, timeouts, 429, 5xx, integrity).",
        m.retries.get(),
    );
    counter(
        "modelgate_loader_integrity_failures_total",
        "Files whose size or hash did not match the published value.",
        m.integrity_failures.get(),
    );
    counter(
        "modelgate_loader_failures_total",
        "Load or update cycles that failed.",
        m.failures.get(),
    );
    counter(
        "modelgate_loader_updates_total",
        "Revision switches after the first load.",
        m.updates.get(),
    );
    let _ = write!(
        out,
        "# HELP modelgate_loader_last_load_duration_seconds Duration of the last successful load.\n# TYPE modelgate_loader_last_load_duration_seconds gauge\nmodelgate_loader_last_load_duration_seconds {:.3}\n",
        m.last_duration_ms.get() as f64 / 1000.0
    );
    let _ = write!(
        out,
        "# HELP modelgate_loader_last_success_timestamp_seconds Unix time of the last successful load or check.\n# TYPE modelgate_loader_last_success_timestamp_seconds gauge\nmodelgate_loader_last_success_timestamp_seconds {:.3}\n",
        m.last_success_unix_ms.get() as f64 / 1000.0
    );
    let _ = write!(
        out,
        "# HELP modelgate_loader_ready 1 when a verified revision is served.\n# TYPE modelgate_loader_ready gauge\nmodelgate_loader_ready {}\n",
        u8::from(phase == Phase::Ready)
    );
    let _ = writeln!(
        out,
        "# HELP modelgate_loader_state Current state (1 for the active one).\n# TYPE modelgate_loader_state gauge"
    );
    for p in [
        Phase::Loading,
        Phase::Ready,
        Phase::Updating,
        Phase::Draining,
    ] {
        let _ = writeln!(
            out,
            "modelgate_loader_state{{state=\"{}\"}} {}",
            p.as_str(),
            u8::from(p == phase)
        );
    }
    if let Some(rev) = rev {
        let _ = write!(
            out,
            "# HELP modelgate_loader_revision_info The revision being served.\n# TYPE modelgate_loader_revision_info gauge\nmodelgate_loader_revision_info{{revision=\"{}\"}} 1\n",
            rev.replace(['\\', '"', '\n'], "_")
        );
    }
    out
}
