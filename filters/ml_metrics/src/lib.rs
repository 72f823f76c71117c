//! ml_metrics filter: proxy-wasm glue only; the policy lives in `modelgate_core::metrics`.
//! The root context refreshes the pod-level metrics from the shared snapshots on a tick;
//! each counted request's stream state feeds one `RequestTracker` and hands the outcome to the
//! root's `Registry` at stream end (`on_log`). Place this filter first in the chain so it
//! also sees the local replies of the gate, router and shedder.

use std::cell::RefCell;
use std::rc::Rc;

use modelgate_core::config::FilterKind;
use modelgate_core::metrics::{Cursor, MetricsConfig, Registry, RequestOutcome, RequestTracker};
use modelgate_core::state::{QueueSnapshot, ReadinessSnapshot};
use modelgate_core::vocab::{
    CRITICALITY_HEADER, GATED_HEADER, METRICS_CURSOR_KEY, MODEL_HEADER, QUEUE_KEY, READINESS_KEY,
    SHED_HEADER,
};
use modelgate_glue::dispatch::{Root, Stream};
use modelgate_glue::headers::{header, header_bytes};
use modelgate_glue::host;
use modelgate_glue::poll::SnapshotReader;
use modelgate_glue::scraper::Scraper;
use modelgate_glue::stats::EnvoyStats;
use modelgate_glue::types::{Action, BufferType, MapType};

// Trailers carry nothing it counts.
#[cfg(feature = "export")]
modelgate_glue::export_filter!(
    MetricsRoot,
    [
        request_headers,
        request_body,
        response_headers,
        response_body,
        log
    ]
);

/// Most request-body bytes copied into the VM per host call while looking for the model.
const BODY_WINDOW: usize = 8192;

/// Wall clock in nanoseconds (0 if the host cannot tell; durations then read 0).
fn now_ns() -> u64 {
    host::now_ns()
}

/// What a configured root shares with its streams.
struct Shared {
    config: MetricsConfig,
    registry: RefCell<Registry>,
}

struct Active {
    shared: Rc<Shared>,
    readiness: SnapshotReader<ReadinessSnapshot>,
    queue: SnapshotReader<QueueSnapshot>,
    /// The shared scraper, when this filter's config has a `scrape` block (otherwise the
    /// load shedder's scraper, if any, publishes the queue snapshot read here).
    scraper: Option<Scraper>,
}

#[derive(Default)]
pub struct MetricsRoot {
    active: Option<Active>,
}

impl Root for MetricsRoot {
    type Stream = MetricsHttp;

    fn on_http_call_response(&mut self, token: u32, headers: usize, body_size: usize) {
        if let Some(s) = self.active.as_mut().and_then(|a| a.scraper.as_mut()) {
            s.on_http_call_response(token, headers, body_size);
        }
    }

    fn on_vm_start(&mut self) -> bool {
        modelgate_glue::log_start(FilterKind::MlMetrics);
        true
    }

    fn on_configure(&mut self, config: &[u8]) -> bool {
        let Some(config) = modelgate_glue::configure::<MetricsConfig>(config) else {
            return false;
        };
        let scraper = config.scrape.clone().map(Scraper::new);
        let tick_ms = scraper.as_ref().map_or(config.tick_period_ms, |s| {
            s.period_ms().min(config.tick_period_ms)
        });
        let registry = RefCell::new(Registry::new(&config));
        self.active = Some(Active {
            shared: Rc::new(Shared { config, registry }),
            readiness: SnapshotReader::new(READINESS_KEY),
            queue: SnapshotReader::new(QUEUE_KEY),
            scraper,
        });
        modelgate_glue::start_ticks(FilterKind::MlMetrics, tick_ms)
    }

    fn on_tick(&mut self) {
        if let Some(a) = self.active.as_mut() {
            if let Some(s) = a.scraper.as_mut() {
                s.on_tick(modelgate_glue::now_ms());
            }
            a.observe_pod();
        }
    }

    fn new_stream(&mut self, _context_id: u32) -> Option<MetricsHttp> {
        let shared = self.active.as_ref().map(|a| Rc::clone(&a.shared))?;
        Some(MetricsHttp {
            shared,
            tracker: None,
        })
    }
}

impl Active {
    /// Refreshes the snapshots; the VM that advances the shared cursor records what is new.
    fn observe_pod(&mut self) {
        self.readiness.refresh();
        self.queue.refresh();
        let r_seq = self.readiness.get().map(|r| r.seq);
        let q_seq = self.queue.get().map(|q| q.seq);
        if r_seq.is_none() && q_seq.is_none() {
            return;
        }
        let Ok((bytes, cas)) = host::shared_data(METRICS_CURSOR_KEY) else {
            return;
        };
        if cas.is_none() {
            // No cursor yet: create it (a race here is harmless); observe from the next tick,
            // when every VM must win a CAS to record.
            let _ = host::set_shared_data(METRICS_CURSOR_KEY, &Cursor::default().encode(), None);
            return;
        }
        let Some((next, fresh)) = Cursor::decode(bytes.as_deref()).advance(r_seq, q_seq) else {
            return;
        };
        if host::set_shared_data(METRICS_CURSOR_KEY, &next.encode(), cas).is_err() {
            return; // another VM recorded this round
        }
        self.shared.registry.borrow_mut().observe_pod(
            &mut EnvoyStats,
            self.readiness.get(),
            self.queue.get(),
            fresh,
        );
    }
}

pub struct MetricsHttp {
    shared: Rc<Shared>,
    /// `None` for requests that are not counted.
    tracker: Option<RequestTracker>,
}

impl Stream for MetricsHttp {
    fn on_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let method = header(MapType::HttpRequestHeaders, ":method").unwrap_or_default();
        let path = header_bytes(MapType::HttpRequestHeaders, ":path").unwrap_or_default();
        if self.shared.config.counts(&method, &path) {
            self.tracker = Some(RequestTracker::new(now_ns()));
        }
        Action::Continue
    }

    fn on_request_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        if let Some(t) = self.tracker.as_mut() {
            // A window at a time: the model usually comes first, so a large chunk is not
            // copied whole into the VM just to find it.
            let mut offset = 0;
            while t.wants_request_body() && offset < body_size {
                let len = (body_size - offset).min(BODY_WINDOW);
                match host::buffer(BufferType::HttpRequestBody, offset, len) {
                    Some(chunk) => t.request_body(&chunk),
                    None => break,
                }
                offset += len;
            }
        }
        Action::Continue
    }

    fn on_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if let Some(t) = self.tracker.as_mut() {
            let status = header(MapType::HttpResponseHeaders, ":status")
                .and_then(|s| s.parse::<u16>().ok())
                .unwrap_or(0);
            let content_type = header(MapType::HttpResponseHeaders, "content-type");
            t.response_headers(status, content_type.as_deref());
        }
        Action::Continue
    }

    fn on_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if let Some(t) = self.tracker.as_mut() {
            if t.wants_response_body() && body_size > 0 {
                if let Some(chunk) = host::buffer(BufferType::HttpResponseBody, 0, body_size) {
                    t.response_body(now_ns(), &chunk, end_of_stream);
                }
            }
        }
        Action::Continue
    }

    /// Stream end. Headers set by later filters (the router's `x-modelgate-model` and
    /// `x-modelgate-criticality`) are read here: Envoy offers the request headers to an
    /// earlier filter again only in the access-log phase.
    fn on_log(&mut self) {
        let Some(t) = self.tracker.as_ref() else {
            return;
        };
        let (duration_ms, ttft_ms, tpot_ms) = t.timings(now_ns());
        let status = t.status();
        // Only a router in this proxy makes the header trustworthy (docs/ml-metrics.md).
        let target = self
            .shared
            .config
            .trust_model_header
            .then(|| header(MapType::HttpRequestHeaders, MODEL_HEADER))
            .flatten();
        let criticality = header(MapType::HttpRequestHeaders, CRITICALITY_HEADER);
        let shed = (status == 429)
            .then(|| header(MapType::HttpResponseHeaders, SHED_HEADER))
            .flatten();
        let gated = (status == 503)
            .then(|| header(MapType::HttpResponseHeaders, GATED_HEADER))
            .flatten();
        let outcome = RequestOutcome {
            requested_model: t.requested_model(),
            target_model: target.as_deref().map(str::as_bytes),
            status,
            criticality: criticality.as_deref(),
            duration_ms,
            ttft_ms,
            tpot_ms,
            usage: t.usage(),
            shed_reason: shed.as_deref(),
            gated_reason: gated.as_deref(),
        };
        self.shared
            .registry
            .borrow_mut()
            .record_request(&mut EnvoyStats, &outcome);
    }

    /// A request that is not counted needs no further callback.
    fn done(&self) -> bool {
        self.tracker.is_none()
    }
}
