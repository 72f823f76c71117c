//! ml_metrics filter: proxy-wasm glue only; the policy lives in `modelgate_core::metrics`.
//! The root context refreshes the pod-level metrics from the shared snapshots on a tick;
//! HTTP contexts feed one `RequestTracker` per request and hand the outcome to the
//! root's `Registry` at stream end (`on_log`). Place this filter first in the chain so it
//! also sees the local replies of the gate, router and shedder.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use modelgate_core::config::FilterConfig;
use modelgate_core::metrics::{
    Cursor, MetricHost, MetricKind, MetricsConfig, Registry, RequestOutcome, RequestTracker,
};
use modelgate_core::state::{QueueSnapshot, ReadinessSnapshot};
use modelgate_core::vocab::{
    CRITICALITY_HEADER, GATED_HEADER, METRICS_CURSOR_KEY, MODEL_HEADER, QUEUE_KEY, READINESS_KEY,
    SHED_HEADER,
};
use modelgate_glue::headers::header;
use modelgate_glue::poll::SnapshotReader;
use modelgate_glue::scraper::Scraper;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(MetricsRoot::default()) });
}}

fn log(level: LogLevel, msg: &str) {
    let _ = hostcalls::log(level, msg);
}

/// Wall clock in nanoseconds (0 if the host cannot tell; durations then read 0).
fn now_ns() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Envoy's stats through the proxy-wasm metric calls.
struct Host;

impl MetricHost for Host {
    fn define(&mut self, kind: MetricKind, name: &str) -> Option<u32> {
        let t = match kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
            MetricKind::Histogram => MetricType::Histogram,
        };
        match hostcalls::define_metric(t, name) {
            Ok(id) => Some(id),
            Err(e) => {
                log(
                    LogLevel::Warn,
                    &format!("ml_metrics: cannot define {name}: {e:?}"),
                );
                None
            }
        }
    }

    fn increment(&mut self, id: u32, delta: u64) {
        let _ = hostcalls::increment_metric(id, i64::try_from(delta).unwrap_or(i64::MAX));
    }

    fn set_gauge(&mut self, id: u32, value: u64) {
        let _ = hostcalls::record_metric(id, value);
    }

    fn record(&mut self, id: u32, value: u64) {
        let _ = hostcalls::record_metric(id, value);
    }
}

/// What a configured root shares with its HTTP contexts.
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
struct MetricsRoot {
    active: Option<Active>,
}

impl Context for MetricsRoot {
    fn on_http_call_response(
        &mut self,
        token: u32,
        headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        if let Some(s) = self.active.as_mut().and_then(|a| a.scraper.as_mut()) {
            s.on_http_call_response(token, headers, body_size);
        }
    }
}

impl RootContext for MetricsRoot {
    fn on_configure(&mut self, size: usize) -> bool {
        let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let config = match MetricsConfig::parse(&bytes) {
            Ok(c) => c,
            Err(e) => {
                log(LogLevel::Error, &format!("ml_metrics: {e}"));
                return false;
            }
        };
        let scraper = config.scrape.clone().map(Scraper::new);
        let tick_ms = scraper.as_ref().map_or(config.tick_period_ms, |s| {
            s.period_ms().min(config.tick_period_ms)
        });
        let tick = Duration::from_millis(tick_ms);
        let registry = RefCell::new(Registry::new(&config));
        self.active = Some(Active {
            shared: Rc::new(Shared { config, registry }),
            readiness: SnapshotReader::new(READINESS_KEY),
            queue: SnapshotReader::new(QUEUE_KEY),
            scraper,
        });
        let _ = hostcalls::set_tick_period(tick);
        true
    }

    fn on_tick(&mut self) {
        if let Some(a) = self.active.as_mut() {
            if let Some(s) = a.scraper.as_mut() {
                s.on_tick(modelgate_glue::now_ms());
            }
            a.observe_pod();
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = self.active.as_ref().map(|a| Rc::clone(&a.shared))?;
        Some(Box::new(MetricsHttp {
            shared,
            tracker: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
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
        let Ok((bytes, cas)) = hostcalls::get_shared_data(METRICS_CURSOR_KEY) else {
            return;
        };
        if cas.is_none() {
            // No cursor yet: create it (a race here is harmless); observe from the next tick,
            // when every VM must win a CAS to record.
            let _ = hostcalls::set_shared_data(
                METRICS_CURSOR_KEY,
                Some(&Cursor::default().encode()),
                None,
            );
            return;
        }
        let Some((next, fresh)) = Cursor::decode(bytes.as_deref()).advance(r_seq, q_seq) else {
            return;
        };
        if hostcalls::set_shared_data(METRICS_CURSOR_KEY, Some(&next.encode()), cas).is_err() {
            return; // another VM recorded this round
        }
        self.shared.registry.borrow_mut().observe_pod(
            &mut Host,
            self.readiness.get(),
            self.queue.get(),
            fresh,
        );
    }
}

struct MetricsHttp {
    shared: Rc<Shared>,
    /// `None` for requests that are not counted.
    tracker: Option<RequestTracker>,
}

impl Context for MetricsHttp {}

impl HttpContext for MetricsHttp {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let method = header(MapType::HttpRequestHeaders, ":method").unwrap_or_default();
        let path = header(MapType::HttpRequestHeaders, ":path").unwrap_or_default();
        if self.shared.config.counts(&method, &path) {
            self.tracker = Some(RequestTracker::new(now_ns()));
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        if let Some(t) = self.tracker.as_mut() {
            if t.wants_request_body() && body_size > 0 {
                if let Ok(Some(chunk)) =
                    hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size)
                {
                    t.request_body(&chunk);
                }
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if let Some(t) = self.tracker.as_mut() {
            let status = header(MapType::HttpResponseHeaders, ":status")
                .and_then(|s| s.parse::<u16>().ok())
                .unwrap_or(0);
            let content_type = header(MapType::HttpResponseHeaders, "content-type");
            t.response_headers(status, content_type.as_deref());
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if let Some(t) = self.tracker.as_mut() {
            if t.wants_response_body() && body_size > 0 {
                if let Ok(Some(chunk)) =
                    hostcalls::get_buffer(BufferType::HttpResponseBody, 0, body_size)
                {
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
        let target = header(MapType::HttpRequestHeaders, MODEL_HEADER);
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
            .record_request(&mut Host, &outcome);
    }
}
