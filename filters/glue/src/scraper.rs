//! The one scraper of model-server load, embedded by every filter that needs it (the
//! load shedder; the metrics filter when configured with `scrape`). Every VM ticks; only
//! the VM holding the `scrape` lease polls, so the endpoint is scraped once per period
//! for the whole proxy. The lease holder publishes the next [`QueueSnapshot`] under
//! [`QUEUE_KEY`]; every VM reads it back on its tick and caches it, so HTTP contexts read
//! a field, never shared data.
//!
//! Use from a root context (all calls are cheap when nothing is due):
//! ```ignore
//! // on_configure:
//! let scraper = config.scrape.clone().map(Scraper::new); // a validated `ScrapeConfig`
//! host::set_tick_period(Duration::from_millis(tick_ms)); // <= scraper.period_ms()
//! // on_tick:
//! scraper.on_tick(modelgate_glue::now_ms());
//! let snapshot = scraper.snapshot(); // Option<&QueueSnapshot>
//! // on_http_call_response (first, before the filter's own calls):
//! if scraper.on_http_call_response(token, num_headers, body_size) { return; }
//! ```
//! Two filters embedding it must use the same `scrape` block: they share the lease and
//! the snapshot, so whichever claims the lease polls for both.

use std::time::Duration;

use crate::types::{BufferType, LogLevel, MapType};
use modelgate_core::metrics::{MetricHost, MetricKind};
use modelgate_core::scrape::{self, MetricsReader, ScrapeConfig, ScrapeError};
use modelgate_core::state::QueueSnapshot;
use modelgate_core::vocab::QUEUE_KEY;

use crate::host;
use crate::log;
use crate::poll::SnapshotReader;
use crate::stats::EnvoyStats;

/// Lease purpose shared by every embedding filter.
pub const LEASE_PURPOSE: &str = "scrape";
/// The body is read from the host in pieces of this size, so a big `/metrics` answer
/// never needs one big allocation in the VM.
const CHUNK_BYTES: usize = 64 << 10;

/// Counters of the scrapes this proxy made (only the lease holder increments them).
struct ScrapeMetrics {
    attempts: Option<u32>,
    /// One per [`ScrapeError::KINDS`] entry.
    failures: Vec<Option<u32>>,
}

impl ScrapeMetrics {
    fn define() -> Self {
        let counter = |name: &str, labels: &[(&str, &str)]| {
            EnvoyStats.define_labeled(MetricKind::Counter, name, labels)
        };
        Self {
            attempts: counter("modelgate_scrape_attempts_total", &[]),
            failures: ScrapeError::KINDS
                .iter()
                .map(|k| counter("modelgate_scrape_failures_total", &[("reason", k)]))
                .collect(),
        }
    }

    fn count(&self, outcome: &Result<(), ScrapeError>) {
        EnvoyStats.add(self.attempts, 1);
        if let Err(e) = outcome {
            let i = ScrapeError::KINDS.iter().position(|k| *k == e.kind());
            if let Some(id) = i.and_then(|i| self.failures.get(i)) {
                EnvoyStats.add(*id, 1);
            }
        }
    }
}

/// One VM's scraper: the poll (when it holds the lease) and the cached snapshot.
pub struct Scraper {
    cfg: ScrapeConfig,
    /// Token and send time of this VM's outstanding poll.
    in_flight: Option<(u32, u64)>,
    reader: SnapshotReader<QueueSnapshot>,
    metrics: ScrapeMetrics,
    /// Last failure kind logged, so a persisting failure is logged once, not per period.
    logged_error: Option<&'static str>,
}

impl Scraper {
    pub fn new(cfg: ScrapeConfig) -> Self {
        Self {
            cfg,
            in_flight: None,
            reader: SnapshotReader::new(QUEUE_KEY),
            metrics: ScrapeMetrics::define(),
            logged_error: None,
        }
    }

    pub fn config(&self) -> &ScrapeConfig {
        &self.cfg
    }

    /// The scrape period; tick at least this often.
    pub fn period_ms(&self) -> u64 {
        self.cfg.period_ms
    }

    /// The snapshot as of the last tick (or this VM's last scrape); `None` before the
    /// first attempt anywhere in the proxy.
    pub fn snapshot(&self) -> Option<&QueueSnapshot> {
        self.reader.get()
    }

    /// Refreshes the cached snapshot (one shared-data read) and, when this VM claims the
    /// lease, starts a poll. Returns true when the cached snapshot changed.
    pub fn on_tick(&mut self, now_ms: u64) -> bool {
        let changed = self.reader.refresh();
        // The host answers every call (at the latest with a failure at the timeout);
        // the margin only guards against a host that loses one.
        if let Some((_, sent)) = self.in_flight {
            if now_ms.saturating_sub(sent) > self.cfg.timeout_ms.saturating_mul(2) + 1000 {
                self.in_flight = None;
            }
        }
        if self.in_flight.is_none() && crate::claim_lease(LEASE_PURPOSE, now_ms, self.cfg.period_ms)
        {
            self.dispatch(now_ms);
        }
        changed
    }

    fn dispatch(&mut self, now_ms: u64) {
        let u = &self.cfg.upstream;
        let headers = [
            (":method", "GET"),
            (":path", u.path.as_str()),
            (":authority", u.authority.as_str()),
            (":scheme", "http"),
            // Plain 0.0.4 text: what every server speaks (OpenMetrics parses too).
            ("accept", "text/plain;version=0.0.4;q=1,*/*;q=0.1"),
        ];
        match host::dispatch_http_call(
            &u.cluster,
            &headers,
            Duration::from_millis(self.cfg.timeout_ms),
        ) {
            Ok(token) => self.in_flight = Some((token, now_ms)),
            Err(status) => {
                self.log_failure(
                    ScrapeError::Dispatch,
                    &format!("dispatch_http_call to cluster `{}`: {status:?}", u.cluster),
                );
                self.publish(Err(ScrapeError::Dispatch), now_ms);
            }
        }
    }

    /// Handles the answer to a dispatched call; returns false (and does nothing) when
    /// `token` is not this scraper's, so the embedding filter can handle its own calls.
    pub fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
    ) -> bool {
        let Some((mine, sent)) = self.in_flight else {
            return false;
        };
        if mine != token {
            return false;
        }
        self.in_flight = None;
        let now = crate::now_ms();
        let status = if num_headers == 0 {
            None
        } else {
            host::header(MapType::HttpCallResponseHeaders, ":status")
                .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u16>().ok())
        };
        let outcome = match status {
            None => Err(scrape::failed_call(
                now.saturating_sub(sent),
                self.cfg.timeout_ms,
            )),
            Some(200) => self.read_body(body_size),
            Some(other) => {
                let start = host::buffer(BufferType::HttpCallResponseBody, 0, body_size.min(64))
                    .unwrap_or_default();
                Err(scrape::failed_status(other, &start))
            }
        };
        if let Err(e) = &outcome {
            let detail = match e {
                ScrapeError::Status(code) => format!("HTTP {code}"),
                _ => format!("after {} ms", now.saturating_sub(sent)),
            };
            self.log_failure(*e, &detail);
        } else if let Some(prev) = self.logged_error.take() {
            log(
                LogLevel::Info,
                &format!(
                    "scrape of `{}` recovered (was {prev})",
                    self.cfg.upstream.cluster
                ),
            );
        }
        self.publish(outcome, now);
        true
    }

    /// Parses the body chunk by chunk straight from host memory.
    fn read_body(&self, body_size: usize) -> Result<scrape::ServerLoad, ScrapeError> {
        let mut reader = MetricsReader::new(&self.cfg);
        // One byte past the limit lets the reader notice the truncation.
        let end = body_size.min(self.cfg.limits.max_bytes.saturating_add(1));
        let mut start = 0;
        while start < end {
            let len = CHUNK_BYTES.min(end - start);
            let Some(chunk) = host::buffer(BufferType::HttpCallResponseBody, start, len) else {
                break;
            };
            if chunk.is_empty() || !reader.feed(&chunk) {
                break;
            }
            start += chunk.len();
        }
        reader.finish().0
    }

    fn publish(&mut self, outcome: Result<scrape::ServerLoad, ScrapeError>, now_ms: u64) {
        self.metrics
            .count(&outcome.as_ref().map(|_| ()).map_err(|e| *e));
        // Re-read first: another VM may have published since our tick (seq stays monotonic).
        self.reader.refresh();
        let prev = self.reader.get().cloned().unwrap_or_default();
        let next = scrape::next_snapshot(&prev, outcome, now_ms);
        if crate::publish(QUEUE_KEY, &next).is_ok() {
            self.reader.refresh();
        }
    }

    fn log_failure(&mut self, e: ScrapeError, detail: &str) {
        let kind = e.kind();
        if self.logged_error != Some(kind) {
            self.logged_error = Some(kind);
            log(
                LogLevel::Warn,
                &format!(
                    "scrape of `{}{}` failed: {kind} ({detail})",
                    self.cfg.upstream.cluster, self.cfg.upstream.path
                ),
            );
        }
    }
}
