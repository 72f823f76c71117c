//! The one metrics registry of modelgate: metric names and label encoding, bounded label
//! values, the per-request observation, and the pod-level gauges fed from the shared
//! snapshots. The host (Envoy via proxy-wasm, or a mock in tests) sits behind
//! [`MetricHost`]; metric ids are defined lazily once per label combination and cached.
//!
//! Label encoding: the proxy-wasm ABI has no tags, so labels go into the stat name in Istio's
//! form, `<label>=.=<value>;.;` per label followed by the metric name. Envoy's
//! `stats_config.stats_tags` (see `envoy/stats-tags.yaml`, or Istio's `extraStatTags`) turns
//! each back into a tag with the regex `(<label>=\.=(.*?);\.;)`, leaving `wasmcustom.<name>`,
//! which `/stats/prometheus` prints as `<name>` with the labels.
//!
//! Units: Envoy histograms and gauges hold integers, so durations are recorded in
//! milliseconds (`*_milliseconds`) and the KV-cache fraction in parts per million; the
//! PrometheusRule in `istio/alerts.yaml` records the seconds/ratio names as well.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use serde::Deserialize;

use crate::config::{parse_duration_ms, parse_json, ConfigError};
use crate::json_scan::ModelScanner;
use crate::sse::SseParser;
use crate::state::{QueueSnapshot, ReadinessSnapshot, ReadinessStatus};
use crate::usage::{Usage, UsageScanner};

/// Longest label value written (longer model names are cut).
const MAX_MODEL_LEN: usize = 128;

// ---------------------------------------------------------------------------------------
// Names

pub const REQUESTS_TOTAL: &str = "ml_requests_total";
pub const REQUEST_DURATION: &str = "ml_request_duration_milliseconds";
pub const TIME_TO_FIRST_TOKEN: &str = "ml_time_to_first_token_milliseconds";
pub const TIME_PER_OUTPUT_TOKEN: &str = "ml_time_per_output_token_milliseconds";
pub const TOKENS_TOTAL: &str = "ml_tokens_total";
pub const REQUESTS_SHED_TOTAL: &str = "ml_requests_shed_total";
pub const REQUESTS_GATED_TOTAL: &str = "ml_requests_gated_total";
pub const MODEL_HEALTHY: &str = "ml_model_healthy";
pub const REQUESTS_RUNNING: &str = "ml_requests_running";
pub const REQUESTS_WAITING: &str = "ml_requests_waiting";
pub const KV_CACHE_USAGE_PPM: &str = "ml_gpu_kv_cache_usage_ppm";
pub const HEALTH_CHECK_LATENCY: &str = "ml_health_check_latency_milliseconds";
pub const EXPORTER_ERRORS_TOTAL: &str = "ml_exporter_errors_total";
pub const MODEL_INFO: &str = "ml_model_info";

/// Every label the filter encodes; each needs a `stats_tags` entry in Envoy.
pub const LABELS: &[&str] = &[
    "model_name",
    "requested_model",
    "code_class",
    "criticality",
    "type",
    "reason",
    "server",
    "pod",
];

/// Histogram buckets (milliseconds) for every modelgate histogram: 1 ms to 10 min, so one
/// list fits per-token latency, time to first token and long generations alike.
pub const BUCKETS_MS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 20000.0,
    30000.0, 60000.0, 120000.0, 300000.0, 600000.0,
];

/// Label value for a model outside the configured list.
pub const OTHER: &str = "other";
/// Label value when there is no value (no model in the request, no status, no header).
pub const NONE: &str = "none";

/// Response header with which the load shedder marks its 429s: `x-modelgate-shed: <reason>`.
pub const SHED_HEADER: &str = "x-modelgate-shed";
/// Response header with which the readiness gate marks its 503s: `x-modelgate-gated: <reason>`.
pub const GATED_HEADER: &str = "x-modelgate-gated";

/// Writes `name` with `labels` encoded for Envoy's tag extraction into `out`.
pub fn encode_stat_name(out: &mut String, name: &str, labels: &[(&str, &str)]) {
    out.clear();
    for (k, v) in labels {
        out.push_str(k);
        out.push_str("=.=");
        out.push_str(v);
        out.push_str(";.;");
    }
    out.push_str(name);
}

/// A byte allowed in label values as written (model names like `org/Model-1.5:q4`).
fn label_byte_ok(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/' | b':' | b'@' | b'+')
}

/// Maps any text to a label value: other bytes become `_`, at most 128 bytes, never empty.
pub fn sanitize_label_value(v: &[u8]) -> String {
    if v.is_empty() {
        return NONE.to_string();
    }
    v.iter()
        .take(MAX_MODEL_LEN)
        .map(|&b| if label_byte_ok(b) { char::from(b) } else { '_' })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The host

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// What the registry needs from the proxy. Every call may fail; failures only lose a sample.
pub trait MetricHost {
    fn define(&mut self, kind: MetricKind, name: &str) -> Option<u32>;
    fn increment(&mut self, id: u32, delta: u64);
    fn set_gauge(&mut self, id: u32, value: u64);
    fn record(&mut self, id: u32, value: u64);
}

// ---------------------------------------------------------------------------------------
// Configuration

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Model names kept as label values (served names and aliases); others become "other".
    #[serde(default)]
    models: Vec<String>,
    /// `model_name` of the pod-level metrics; default: the readiness gate's model.
    #[serde(default)]
    model_name: Option<String>,
    /// Path prefixes of the inference requests to count (POST only); default `["/v1/"]`.
    #[serde(default)]
    paths: Option<Vec<String>>,
    /// How often the pod-level metrics are refreshed from shared data; default "1s".
    #[serde(default)]
    tick_period: Option<String>,
    /// Distinct `reason` / `type` values kept per metric before "other"; default 16.
    #[serde(default)]
    max_reasons: Option<usize>,
    /// Scraper configuration (the shared scraper of `modelgate_glue::scraper`).
    #[serde(default)]
    scrape: Option<serde_json::Value>,
}

/// The validated metrics filter configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    pub models: Vec<String>,
    pub model_name: Option<String>,
    pub paths: Vec<String>,
    pub tick_period_ms: u64,
    pub max_reasons: usize,
    /// Passed unchanged to the scraper when present.
    pub scrape: Option<serde_json::Value>,
}

impl MetricsConfig {
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        let raw: RawConfig = parse_json(bytes)?;
        let mut models: Vec<String> = Vec::with_capacity(raw.models.len());
        for (i, m) in raw.models.iter().enumerate() {
            let field = format!("models[{i}]");
            validate_label_value(&field, m)?;
            if m == OTHER || m == NONE {
                return Err(ConfigError::new(
                    field,
                    format!("`{m}` is reserved for unlisted models"),
                ));
            }
            if models.contains(m) {
                return Err(ConfigError::new(field, format!("`{m}` is listed twice")));
            }
            models.push(m.clone());
        }
        if models.len() > 1000 {
            return Err(ConfigError::new("models", "at most 1000 models"));
        }
        if let Some(m) = &raw.model_name {
            validate_label_value("model_name", m)?;
        }
        let paths = raw.paths.unwrap_or_else(|| vec!["/v1/".to_string()]);
        for (i, p) in paths.iter().enumerate() {
            if !p.starts_with('/') {
                return Err(ConfigError::new(
                    format!("paths[{i}]"),
                    format!("`{p}` must start with `/`"),
                ));
            }
        }
        let tick_period_ms = match &raw.tick_period {
            Some(t) => parse_duration_ms("tick_period", t)?,
            None => 1000,
        };
        if !(100..=60_000).contains(&tick_period_ms) {
            return Err(ConfigError::new(
                "tick_period",
                "must be between 100ms and 60s",
            ));
        }
        let max_reasons = raw.max_reasons.unwrap_or(16);
        if !(1..=64).contains(&max_reasons) {
            return Err(ConfigError::new("max_reasons", "must be between 1 and 64"));
        }
        Ok(Self {
            models,
            model_name: raw.model_name,
            paths,
            tick_period_ms,
            max_reasons,
            scrape: raw.scrape,
        })
    }

    /// True when a request with this method and path is an inference request to count.
    pub fn counts(&self, method: &str, path: &str) -> bool {
        method.eq_ignore_ascii_case("POST")
            && self.paths.iter().any(|p| path.starts_with(p.as_str()))
    }
}

fn validate_label_value(field: &str, v: &str) -> Result<(), ConfigError> {
    if v.is_empty() || v.len() > MAX_MODEL_LEN {
        return Err(ConfigError::new(
            field,
            format!("must be 1 to {MAX_MODEL_LEN} bytes long"),
        ));
    }
    if !v.bytes().all(label_byte_ok) {
        return Err(ConfigError::new(
            field,
            format!("`{v}` may contain only letters, digits and `._-/:@+`"),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Bounded label values

/// Index of a model label value: 0 = "none", 1 = "other", 2.. = configured models.
pub type ModelIdx = u16;
const MODEL_NONE: ModelIdx = 0;
const MODEL_OTHER: ModelIdx = 1;

#[derive(Debug, Default)]
struct ModelSet {
    names: Vec<String>,
    index: HashMap<Box<[u8]>, ModelIdx>,
}

impl ModelSet {
    fn new(models: &[String]) -> Self {
        let mut names = vec![NONE.to_string(), OTHER.to_string()];
        let mut index = HashMap::with_capacity(models.len());
        for m in models {
            let idx = ModelIdx::try_from(names.len()).unwrap_or(MODEL_OTHER);
            index.insert(m.as_bytes().into(), idx);
            names.push(m.clone());
        }
        Self { names, index }
    }

    fn lookup(&self, name: Option<&[u8]>) -> ModelIdx {
        match name {
            None => MODEL_NONE,
            Some(n) => self.index.get(n).copied().unwrap_or(MODEL_OTHER),
        }
    }

    fn name(&self, idx: ModelIdx) -> &str {
        self.names
            .get(usize::from(idx))
            .map(String::as_str)
            .unwrap_or(OTHER)
    }
}

/// Free-form label values (shed reasons, error types) kept up to a limit, then "other".
#[derive(Debug)]
struct Interner {
    values: Vec<String>,
    limit: usize,
}

impl Interner {
    fn new(limit: usize) -> Self {
        Self {
            values: vec![NONE.to_string(), OTHER.to_string()],
            limit: limit.saturating_add(2),
        }
    }

    fn intern(&mut self, v: &str) -> u8 {
        let v = v.trim();
        if v.is_empty() {
            return 0;
        }
        if let Some(i) = self.values.iter().position(|x| x == v) {
            return u8::try_from(i).unwrap_or(1);
        }
        let ok = v.len() <= 32
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok || self.values.len() >= self.limit {
            return 1;
        }
        self.values.push(v.to_ascii_lowercase());
        u8::try_from(self.values.len() - 1).unwrap_or(1)
    }

    fn name(&self, i: u8) -> &str {
        self.values
            .get(usize::from(i))
            .map(String::as_str)
            .unwrap_or(OTHER)
    }
}

/// The `x-modelgate-criticality` classes; anything else is "none".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Criticality {
    None,
    Critical,
    Standard,
    Sheddable,
}

impl Criticality {
    pub fn parse(v: Option<&str>) -> Self {
        match v.map(str::trim) {
            Some(s) if s.eq_ignore_ascii_case("critical") => Self::Critical,
            Some(s) if s.eq_ignore_ascii_case("standard") => Self::Standard,
            Some(s) if s.eq_ignore_ascii_case("sheddable") => Self::Sheddable,
            _ => Self::None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::None => NONE,
            Self::Critical => "critical",
            Self::Standard => "standard",
            Self::Sheddable => "sheddable",
        }
    }
}

/// `2xx`-style class of an HTTP status; "none" when the stream ended without one.
pub fn code_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => NONE,
    }
}

// ---------------------------------------------------------------------------------------
// One request

/// What happened to one request, handed to [`Registry::record_request`] at stream end.
#[derive(Debug, Clone, Default)]
pub struct RequestOutcome<'a> {
    /// Client-facing model: the request body's `model`.
    pub requested_model: Option<&'a [u8]>,
    /// Target model: `x-modelgate-model` (set by the router), else the requested model.
    pub target_model: Option<&'a [u8]>,
    pub status: u16,
    pub criticality: Option<&'a str>,
    pub duration_ms: u64,
    pub ttft_ms: Option<u64>,
    pub tpot_ms: Option<u64>,
    pub usage: Option<Usage>,
    /// Reason from [`SHED_HEADER`] on a 429.
    pub shed_reason: Option<&'a str>,
    /// Reason from [`GATED_HEADER`] on a 503.
    pub gated_reason: Option<&'a str>,
}

/// How the response body is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyKind {
    Ignore,
    Json,
    Sse,
}

/// Per-request state between the proxy callbacks: fixed-size, no heap allocation.
#[derive(Clone, Debug)]
pub struct RequestTracker {
    start_ns: u64,
    request: ModelScanner,
    /// The request body stopped being scannable (not JSON, or `model` already read).
    request_done: bool,
    response: UsageScanner,
    sse: SseParser,
    body: BodyKind,
    status: u16,
    first_token_ns: Option<u64>,
    last_token_ns: u64,
    token_events: u64,
    sse_usage: Option<Usage>,
}

impl RequestTracker {
    pub fn new(start_ns: u64) -> Self {
        Self {
            start_ns,
            request: ModelScanner::new(),
            request_done: false,
            response: UsageScanner::new(),
            sse: SseParser::new(),
            body: BodyKind::Ignore,
            status: 0,
            first_token_ns: None,
            last_token_ns: 0,
            token_events: 0,
            sse_usage: None,
        }
    }

    /// True while the request body may still hold `model`.
    pub fn wants_request_body(&self) -> bool {
        !self.request_done
    }

    pub fn request_body(&mut self, chunk: &[u8]) {
        if self.request_done {
            return;
        }
        // The scanner stops right after the model string; the rest of the body is not needed.
        match self.request.feed(chunk) {
            Ok(n) if n < chunk.len() || self.request.model().is_some() => self.request_done = true,
            Ok(_) => {}
            Err(_) => self.request_done = true,
        }
    }

    /// The response started: `content_type` decides whether the body is JSON or SSE.
    pub fn response_headers(&mut self, status: u16, content_type: Option<&str>) {
        self.status = status;
        let ct = content_type.unwrap_or("").trim_start();
        let starts = |p: &str| ct.get(..p.len()).is_some_and(|h| h.eq_ignore_ascii_case(p));
        self.body = if starts("text/event-stream") {
            BodyKind::Sse
        } else if starts("application/json") {
            BodyKind::Json
        } else {
            BodyKind::Ignore
        };
    }

    pub fn wants_response_body(&self) -> bool {
        match self.body {
            BodyKind::Ignore => false,
            BodyKind::Json => !self.response.broken(),
            BodyKind::Sse => true,
        }
    }

    pub fn response_body(&mut self, now_ns: u64, chunk: &[u8], end_of_stream: bool) {
        match self.body {
            BodyKind::Ignore => {}
            BodyKind::Json => self.response.feed(chunk),
            BodyKind::Sse => {
                let mut p = self.sse.feed(chunk);
                if end_of_stream {
                    let tail = self.sse.finish();
                    p.token_events += tail.token_events;
                    p.usage = tail.usage.or(p.usage);
                }
                if p.token_events > 0 {
                    self.first_token_ns.get_or_insert(now_ns);
                    self.last_token_ns = now_ns;
                    self.token_events += u64::from(p.token_events);
                }
                if p.usage.is_some() {
                    self.sse_usage = p.usage;
                }
            }
        }
    }

    pub fn requested_model(&self) -> Option<&[u8]> {
        self.request.model().map(str::as_bytes)
    }

    /// Token counts reported by the server for this response, if any.
    pub fn usage(&self) -> Option<Usage> {
        match self.body {
            BodyKind::Json => self.response.usage(),
            BodyKind::Sse => self.sse_usage,
            BodyKind::Ignore => None,
        }
    }

    /// Timings at stream end: (duration, time to first token, time per output token), ms.
    /// Per-token time follows vLLM: (last token - first token) / (output tokens - 1).
    pub fn timings(&self, now_ns: u64) -> (u64, Option<u64>, Option<u64>) {
        let ms = |ns: u64| (ns.saturating_add(500_000)) / 1_000_000;
        let duration = ms(now_ns.saturating_sub(self.start_ns));
        let streamed_ok = self.body == BodyKind::Sse && (200..300).contains(&self.status);
        let Some(first) = self.first_token_ns.filter(|_| streamed_ok) else {
            return (duration, None, None);
        };
        let ttft = ms(first.saturating_sub(self.start_ns));
        let tokens = self
            .usage()
            .map_or(self.token_events, |u| u.completion_tokens);
        let tpot = (tokens > 1).then(|| {
            let span = self.last_token_ns.saturating_sub(first);
            ms(span / (tokens - 1))
        });
        (duration, Some(ttft), tpot)
    }

    pub fn status(&self) -> u16 {
        self.status
    }
}

// ---------------------------------------------------------------------------------------
// The registry

/// Request-level metric identifiers (the top byte of a cache key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum ReqMetric {
    Requests = 1,
    Duration,
    Ttft,
    Tpot,
    PromptTokens,
    CompletionTokens,
    Shed,
    Gated,
}

/// A multiply-xor hasher for the packed `u64` cache keys (SipHash is wasted on them).
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        let x = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = x ^ (x >> 32);
    }
}

type IdMap = HashMap<u64, Option<u32>, BuildHasherDefault<KeyHasher>>;

/// Pod-level metric ids for the current `model_name`.
#[derive(Debug, Default)]
struct PodIds {
    model: String,
    server: String,
    healthy: Option<u32>,
    running: Option<u32>,
    waiting: Option<u32>,
    kv: Option<u32>,
    latency: Option<u32>,
    info: Option<u32>,
    errors: HashMap<u8, Option<u32>>,
}

/// Which snapshots carry news since the last observation (see [`Cursor`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fresh {
    pub readiness: bool,
    pub queue: bool,
}

/// The metrics of one VM: label tables and the cached metric ids.
pub struct Registry {
    models: ModelSet,
    model_override: Option<String>,
    shed_reasons: Interner,
    gated_reasons: Interner,
    error_types: Interner,
    ids: IdMap,
    pod: PodIds,
    name: String,
}

impl Registry {
    pub fn new(config: &MetricsConfig) -> Self {
        Self {
            models: ModelSet::new(&config.models),
            model_override: config.model_name.clone(),
            shed_reasons: Interner::new(config.max_reasons),
            gated_reasons: Interner::new(config.max_reasons),
            error_types: Interner::new(config.max_reasons),
            ids: IdMap::default(),
            pod: PodIds::default(),
            name: String::with_capacity(256),
        }
    }

    /// Records one finished request.
    pub fn record_request<H: MetricHost>(&mut self, host: &mut H, o: &RequestOutcome<'_>) {
        let requested = self.models.lookup(o.requested_model);
        let target = match o.target_model {
            Some(t) => self.models.lookup(Some(t)),
            None => requested,
        };
        let crit = Criticality::parse(o.criticality);
        let class = code_class(o.status);
        let key = Key {
            requested,
            target,
            crit,
            class,
            extra: 0,
        };

        if let Some(id) = self.req_id(host, ReqMetric::Requests, key) {
            host.increment(id, 1);
        }
        if let Some(id) = self.req_id(host, ReqMetric::Duration, key) {
            host.record(id, o.duration_ms);
        }
        let key = Key { class: NONE, ..key };
        if let Some(v) = o.ttft_ms {
            if let Some(id) = self.req_id(host, ReqMetric::Ttft, key) {
                host.record(id, v);
            }
        }
        if let Some(v) = o.tpot_ms {
            if let Some(id) = self.req_id(host, ReqMetric::Tpot, key) {
                host.record(id, v);
            }
        }
        if let Some(u) = o.usage {
            if let Some(id) = self.req_id(host, ReqMetric::PromptTokens, key) {
                host.increment(id, u.prompt_tokens);
            }
            if let Some(id) = self.req_id(host, ReqMetric::CompletionTokens, key) {
                host.increment(id, u.completion_tokens);
            }
        }
        if let (429, Some(r)) = (o.status, o.shed_reason) {
            let extra = self.shed_reasons.intern(r);
            if let Some(id) = self.req_id(host, ReqMetric::Shed, Key { extra, ..key }) {
                host.increment(id, 1);
            }
        }
        if let (503, Some(r)) = (o.status, o.gated_reason) {
            let extra = self.gated_reasons.intern(r);
            if let Some(id) = self.req_id(host, ReqMetric::Gated, Key { extra, ..key }) {
                host.increment(id, 1);
            }
        }
    }

    fn req_id<H: MetricHost>(&mut self, host: &mut H, m: ReqMetric, k: Key) -> Option<u32> {
        let packed = k.pack(m);
        if let Some(id) = self.ids.get(&packed) {
            return *id;
        }
        let requested = self.models.name(k.requested);
        let target = self.models.name(k.target);
        let crit = k.crit.label();
        let (kind, name, labels): (MetricKind, &str, [(&str, &str); 4]) = match m {
            ReqMetric::Requests | ReqMetric::Duration => (
                if m == ReqMetric::Requests {
                    MetricKind::Counter
                } else {
                    MetricKind::Histogram
                },
                if m == ReqMetric::Requests {
                    REQUESTS_TOTAL
                } else {
                    REQUEST_DURATION
                },
                [
                    ("requested_model", requested),
                    ("model_name", target),
                    ("code_class", k.class),
                    ("criticality", crit),
                ],
            ),
            ReqMetric::Ttft | ReqMetric::Tpot => (
                MetricKind::Histogram,
                if m == ReqMetric::Ttft {
                    TIME_TO_FIRST_TOKEN
                } else {
                    TIME_PER_OUTPUT_TOKEN
                },
                [
                    ("requested_model", requested),
                    ("model_name", target),
                    ("criticality", crit),
                    ("", ""),
                ],
            ),
            ReqMetric::PromptTokens | ReqMetric::CompletionTokens => (
                MetricKind::Counter,
                TOKENS_TOTAL,
                [
                    ("requested_model", requested),
                    ("model_name", target),
                    ("criticality", crit),
                    (
                        "type",
                        if m == ReqMetric::PromptTokens {
                            "prompt"
                        } else {
                            "completion"
                        },
                    ),
                ],
            ),
            ReqMetric::Shed | ReqMetric::Gated => (
                MetricKind::Counter,
                if m == ReqMetric::Shed {
                    REQUESTS_SHED_TOTAL
                } else {
                    REQUESTS_GATED_TOTAL
                },
                [
                    ("requested_model", requested),
                    ("model_name", target),
                    ("criticality", crit),
                    (
                        "reason",
                        if m == ReqMetric::Shed {
                            self.shed_reasons.name(k.extra)
                        } else {
                            self.gated_reasons.name(k.extra)
                        },
                    ),
                ],
            ),
        };
        let labels: &[(&str, &str)] = match labels.iter().position(|(k, _)| k.is_empty()) {
            Some(n) => labels.get(..n).unwrap_or(&[]),
            None => &labels,
        };
        encode_stat_name(&mut self.name, name, labels);
        let id = host.define(kind, &self.name);
        self.ids.insert(packed, id);
        id
    }

    /// Updates the pod-level metrics from the snapshots. Gauges follow the snapshots;
    /// observations (health-check latency, scrape errors) are made only for `fresh` ones,
    /// so that exactly one VM records each check (see [`Cursor`]).
    pub fn observe_pod<H: MetricHost>(
        &mut self,
        host: &mut H,
        readiness: Option<&ReadinessSnapshot>,
        queue: Option<&QueueSnapshot>,
        fresh: Fresh,
    ) {
        let model_src = self
            .model_override
            .as_deref()
            .or(readiness
                .map(|r| r.model.as_str())
                .filter(|m| !m.is_empty()))
            .or(queue.map(|q| q.model.as_str()).filter(|m| !m.is_empty()))
            .unwrap_or("")
            .to_owned();
        let server_src = queue
            .map(|q| q.server.as_str())
            .filter(|s| !s.is_empty())
            .unwrap_or("");
        self.switch_pod_model(host, &model_src, server_src);

        if let Some(r) = readiness {
            let healthy = u64::from(r.status == ReadinessStatus::Ready);
            if let Some(id) =
                self.pod_id(host, MetricKind::Gauge, MODEL_HEALTHY, |p| &mut p.healthy)
            {
                host.set_gauge(id, healthy);
            }
            if let (true, Some(ms)) = (fresh.readiness, r.health_latency_ms) {
                if let Some(id) =
                    self.pod_id(host, MetricKind::Histogram, HEALTH_CHECK_LATENCY, |p| {
                        &mut p.latency
                    })
                {
                    host.record(id, u64::from(ms));
                }
            }
        }
        if let Some(q) = queue {
            if q.scraped_at_ms > 0 {
                let round = |v: f64| {
                    if v.is_finite() && v > 0.0 {
                        v.round() as u64
                    } else {
                        0
                    }
                };
                if let Some(id) = self.pod_id(host, MetricKind::Gauge, REQUESTS_RUNNING, |p| {
                    &mut p.running
                }) {
                    host.set_gauge(id, round(q.running));
                }
                if let Some(id) = self.pod_id(host, MetricKind::Gauge, REQUESTS_WAITING, |p| {
                    &mut p.waiting
                }) {
                    host.set_gauge(id, round(q.waiting));
                }
                if let Some(id) =
                    self.pod_id(host, MetricKind::Gauge, KV_CACHE_USAGE_PPM, |p| &mut p.kv)
                {
                    host.set_gauge(id, round(q.kv_cache_usage.clamp(0.0, 1.0) * 1e6));
                }
            }
            if let (true, Some(err)) = (fresh.queue, q.error.as_deref()) {
                let t = self.error_types.intern(err);
                let cached = self.pod.errors.get(&t).copied();
                let id = match cached {
                    Some(id) => id,
                    None => {
                        let ty = self.error_types.name(t);
                        encode_stat_name(
                            &mut self.name,
                            EXPORTER_ERRORS_TOTAL,
                            &[("model_name", self.pod.model.as_str()), ("type", ty)],
                        );
                        let id = host.define(MetricKind::Counter, &self.name);
                        self.pod.errors.insert(t, id);
                        id
                    }
                };
                if let Some(id) = id {
                    host.increment(id, 1);
                }
            }
        }
    }

    /// Starts a new set of pod-level ids when `model_name` or `server` changes; the old
    /// info series drops to 0 so joins on it follow the current model.
    fn switch_pod_model<H: MetricHost>(&mut self, host: &mut H, model: &str, server: &str) {
        let same_model =
            self.pod.model.as_bytes() == sanitize_label_value(model.as_bytes()).as_bytes();
        let same_server =
            self.pod.server.as_bytes() == sanitize_label_value(server.as_bytes()).as_bytes();
        if same_model && same_server && !self.pod.model.is_empty() {
            return;
        }
        if let Some(old) = self.pod.info {
            host.set_gauge(old, 0);
        }
        self.pod = PodIds {
            model: sanitize_label_value(model.as_bytes()),
            server: sanitize_label_value(server.as_bytes()),
            ..PodIds::default()
        };
        encode_stat_name(
            &mut self.name,
            MODEL_INFO,
            &[
                ("model_name", self.pod.model.as_str()),
                ("server", self.pod.server.as_str()),
            ],
        );
        let id = host.define(MetricKind::Gauge, &self.name);
        if let Some(id) = id {
            host.set_gauge(id, 1);
        }
        self.pod.info = id;
    }

    fn pod_id<H: MetricHost>(
        &mut self,
        host: &mut H,
        kind: MetricKind,
        name: &str,
        slot: fn(&mut PodIds) -> &mut Option<u32>,
    ) -> Option<u32> {
        if let Some(id) = *slot(&mut self.pod) {
            return Some(id);
        }
        encode_stat_name(
            &mut self.name,
            name,
            &[("model_name", self.pod.model.as_str())],
        );
        let id = host.define(kind, &self.name);
        *slot(&mut self.pod) = id;
        id
    }
}

#[derive(Clone, Copy, Debug)]
struct Key {
    requested: ModelIdx,
    target: ModelIdx,
    crit: Criticality,
    class: &'static str,
    extra: u8,
}

impl Key {
    fn pack(&self, m: ReqMetric) -> u64 {
        let class = match self.class.as_bytes().first() {
            Some(d @ b'1'..=b'5') => u64::from(d - b'0'),
            _ => 0,
        };
        (m as u64) << 56
            | u64::from(self.extra) << 48
            | u64::from(self.requested) << 32
            | u64::from(self.target) << 16
            | class << 8
            | self.crit as u64
    }
}

// ---------------------------------------------------------------------------------------
// Exactly-once pod observations across VMs

/// Shared-data key of the [`Cursor`].
pub const CURSOR_KEY: &str = "modelgate.metrics.cursor.v1";

/// The snapshot sequence numbers already observed. Every VM ticks; the one that advances
/// the cursor (a CAS write in shared data) records the new check and scrape, so Envoy's
/// shared stats see each of them once however many worker VMs there are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    pub readiness_seq: u64,
    pub queue_seq: u64,
}

impl Cursor {
    pub fn decode(bytes: Option<&[u8]>) -> Self {
        let word = |i: usize| -> u64 {
            bytes
                .and_then(|b| b.get(i..i + 8))
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_le_bytes)
        };
        Self {
            readiness_seq: word(0),
            queue_seq: word(8),
        }
    }

    pub fn encode(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        let (a, b) = out.split_at_mut(8);
        a.copy_from_slice(&self.readiness_seq.to_le_bytes());
        b.copy_from_slice(&self.queue_seq.to_le_bytes());
        out
    }

    /// The cursor after observing these sequence numbers, and what is new; `None` when
    /// nothing is. A sequence number that went backwards is a restarted writer: new too.
    pub fn advance(
        &self,
        readiness_seq: Option<u64>,
        queue_seq: Option<u64>,
    ) -> Option<(Cursor, Fresh)> {
        let fresh = Fresh {
            readiness: readiness_seq.is_some_and(|s| s != self.readiness_seq),
            queue: queue_seq.is_some_and(|s| s != self.queue_seq),
        };
        if !fresh.readiness && !fresh.queue {
            return None;
        }
        let next = Cursor {
            readiness_seq: readiness_seq.unwrap_or(self.readiness_seq),
            queue_seq: queue_seq.unwrap_or(self.queue_seq),
        };
        Some((next, fresh))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct MockHost {
        names: Vec<(MetricKind, String)>,
        counters: HashMap<u32, u64>,
        gauges: HashMap<u32, u64>,
        samples: HashMap<u32, Vec<u64>>,
        defines: usize,
    }

    impl MetricHost for MockHost {
        fn define(&mut self, kind: MetricKind, name: &str) -> Option<u32> {
            self.defines += 1;
            if let Some(i) = self.names.iter().position(|(_, n)| n == name) {
                return Some(i as u32);
            }
            self.names.push((kind, name.to_string()));
            Some(self.names.len() as u32 - 1)
        }
        fn increment(&mut self, id: u32, delta: u64) {
            *self.counters.entry(id).or_default() += delta;
        }
        fn set_gauge(&mut self, id: u32, value: u64) {
            self.gauges.insert(id, value);
        }
        fn record(&mut self, id: u32, value: u64) {
            self.samples.entry(id).or_default().push(value);
        }
    }

    impl MockHost {
        fn id(&self, name: &str) -> u32 {
            self.names
                .iter()
                .position(|(_, n)| n == name)
                .unwrap_or_else(|| panic!("{name} not defined; have {:#?}", self.names))
                as u32
        }
        fn counter(&self, name: &str) -> u64 {
            self.counters.get(&self.id(name)).copied().unwrap_or(0)
        }
        fn gauge(&self, name: &str) -> u64 {
            self.gauges.get(&self.id(name)).copied().unwrap_or(0)
        }
        fn samples(&self, name: &str) -> Vec<u64> {
            self.samples
                .get(&self.id(name))
                .cloned()
                .unwrap_or_default()
        }
    }

    fn config(json: &str) -> MetricsConfig {
        MetricsConfig::parse(json.as_bytes()).unwrap()
    }

    /// Envoy's tag extraction with the regexes of `envoy/stats-tags.yaml`, by hand.
    fn extract(name: &str) -> (String, Vec<(String, String)>) {
        let mut rest = name;
        let mut tags = Vec::new();
        while let Some(eq) = rest.find("=.=") {
            let k = &rest[..eq];
            let after = &rest[eq + 3..];
            let end = after.find(";.;").unwrap();
            tags.push((k.to_string(), after[..end].to_string()));
            rest = &after[end + 3..];
        }
        (rest.to_string(), tags)
    }

    #[test]
    fn stat_names_round_trip_through_tag_extraction() {
        let mut s = String::new();
        encode_stat_name(
            &mut s,
            "ml_requests_total",
            &[("model_name", "org/qwen2.5:7b"), ("code_class", "2xx")],
        );
        assert_eq!(
            s,
            "model_name=.=org/qwen2.5:7b;.;code_class=.=2xx;.;ml_requests_total"
        );
        let (name, tags) = extract(&s);
        assert_eq!(name, "ml_requests_total");
        assert_eq!(tags[0], ("model_name".into(), "org/qwen2.5:7b".into()));
        assert_eq!(sanitize_label_value(b"a;.;b\"\n"), "a_._b__");
        assert_eq!(sanitize_label_value(b""), "none");
    }

    #[test]
    fn config_defaults_and_field_errors() {
        let c = config("{}");
        assert_eq!(c.paths, vec!["/v1/"]);
        assert_eq!(c.tick_period_ms, 1000);
        assert!(c.counts("POST", "/v1/chat/completions"));
        assert!(!c.counts("GET", "/v1/models"));
        assert!(!c.counts("POST", "/health"));
        let err = |j: &str| MetricsConfig::parse(j.as_bytes()).unwrap_err().field;
        assert_eq!(err(r#"{"models":["a","b;c"]}"#), "models[1]");
        assert_eq!(err(r#"{"models":["a","a"]}"#), "models[1]");
        assert_eq!(err(r#"{"models":["other"]}"#), "models[0]");
        assert_eq!(err(r#"{"paths":["v1"]}"#), "paths[0]");
        assert_eq!(err(r#"{"tick_period":"1h"}"#), "tick_period");
        assert_eq!(err(r#"{"bogus":1}"#), "bogus");
        assert_eq!(err(r#"{"model_name":""}"#), "model_name");
    }

    fn outcome<'a>(model: &'a str, status: u16) -> RequestOutcome<'a> {
        RequestOutcome {
            requested_model: Some(model.as_bytes()),
            status,
            criticality: Some("standard"),
            duration_ms: 120,
            ..Default::default()
        }
    }

    #[test]
    fn request_metrics_with_bounded_models_and_cached_ids() {
        let mut host = MockHost::default();
        let mut reg = Registry::new(&config(r#"{"models":["llama","fast"]}"#));
        for _ in 0..3 {
            reg.record_request(&mut host, &outcome("llama", 200));
        }
        for m in ["x1", "x2", "x3"] {
            reg.record_request(&mut host, &outcome(m, 200));
        }
        let mut o = outcome("fast", 200);
        o.target_model = Some(b"llama");
        o.usage = Some(Usage {
            prompt_tokens: 10,
            completion_tokens: 4,
        });
        o.ttft_ms = Some(50);
        o.tpot_ms = Some(10);
        o.criticality = Some("bogus");
        reg.record_request(&mut host, &o);

        let req = |rm: &str, m: &str, cc: &str, c: &str| {
            format!("requested_model=.={rm};.;model_name=.={m};.;code_class=.={cc};.;criticality=.={c};.;ml_requests_total")
        };
        assert_eq!(host.counter(&req("llama", "llama", "2xx", "standard")), 3);
        assert_eq!(host.counter(&req("other", "other", "2xx", "standard")), 3);
        assert_eq!(host.counter(&req("fast", "llama", "2xx", "none")), 1);
        assert_eq!(
            host.counter("requested_model=.=fast;.;model_name=.=llama;.;criticality=.=none;.;type=.=prompt;.;ml_tokens_total"),
            10
        );
        assert_eq!(
            host.counter("requested_model=.=fast;.;model_name=.=llama;.;criticality=.=none;.;type=.=completion;.;ml_tokens_total"),
            4
        );
        assert_eq!(
            host.samples("requested_model=.=fast;.;model_name=.=llama;.;criticality=.=none;.;ml_time_to_first_token_milliseconds"),
            vec![50]
        );
        assert_eq!(
            host.samples("requested_model=.=other;.;model_name=.=other;.;code_class=.=2xx;.;criticality=.=standard;.;ml_request_duration_milliseconds"),
            vec![120, 120, 120]
        );
        // Two metrics per label set for the 6 plain requests, defined once each.
        let defines = host.defines;
        reg.record_request(&mut host, &outcome("llama", 200));
        assert_eq!(host.defines, defines);
        assert!(host.names.iter().all(|(_, n)| !n.contains("x1")));
    }

    #[test]
    fn shed_and_gated_by_reason_with_bounded_reasons() {
        let mut host = MockHost::default();
        let mut reg = Registry::new(&config(r#"{"models":["m"],"max_reasons":2}"#));
        for r in ["queue", "queue", "kv_cache", "concurrency", "bad reason!"] {
            let mut o = outcome("m", 429);
            o.shed_reason = Some(r);
            reg.record_request(&mut host, &o);
        }
        let mut o = outcome("m", 503);
        o.gated_reason = Some("not_ready");
        reg.record_request(&mut host, &o);
        // An upstream 503 without the header is not gated; a header on a 200 is ignored.
        reg.record_request(&mut host, &outcome("m", 503));
        let mut o = outcome("m", 200);
        o.shed_reason = Some("queue");
        reg.record_request(&mut host, &o);

        let shed = |r: &str| {
            format!("requested_model=.=m;.;model_name=.=m;.;criticality=.=standard;.;reason=.={r};.;ml_requests_shed_total")
        };
        assert_eq!(host.counter(&shed("queue")), 2);
        assert_eq!(host.counter(&shed("kv_cache")), 1);
        assert_eq!(host.counter(&shed("other")), 2);
        assert_eq!(
            host.counter("requested_model=.=m;.;model_name=.=m;.;criticality=.=standard;.;reason=.=not_ready;.;ml_requests_gated_total"),
            1
        );
        assert_eq!(
            host.counter("requested_model=.=m;.;model_name=.=m;.;code_class=.=5xx;.;criticality=.=standard;.;ml_requests_total"),
            2
        );
    }

    #[test]
    fn pod_metrics_from_snapshots() {
        let mut host = MockHost::default();
        let mut reg = Registry::new(&config("{}"));
        let r = ReadinessSnapshot {
            status: ReadinessStatus::Ready,
            model: "sim-model".into(),
            seq: 4,
            health_latency_ms: Some(7),
            ..Default::default()
        };
        let q = QueueSnapshot {
            waiting: 3.0,
            running: 4.0,
            kv_cache_usage: 0.4321,
            scraped_at_ms: 1,
            seq: 9,
            error: Some("timeout".into()),
            server: "vllm".into(),
            model: "sim-model".into(),
        };
        let all = Fresh {
            readiness: true,
            queue: true,
        };
        reg.observe_pod(&mut host, Some(&r), Some(&q), all);
        reg.observe_pod(&mut host, Some(&r), Some(&q), Fresh::default());
        assert_eq!(host.gauge("model_name=.=sim-model;.;ml_model_healthy"), 1);
        assert_eq!(
            host.gauge("model_name=.=sim-model;.;ml_requests_waiting"),
            3
        );
        assert_eq!(
            host.gauge("model_name=.=sim-model;.;ml_requests_running"),
            4
        );
        assert_eq!(
            host.gauge("model_name=.=sim-model;.;ml_gpu_kv_cache_usage_ppm"),
            432_100
        );
        assert_eq!(
            host.gauge("model_name=.=sim-model;.;server=.=vllm;.;ml_model_info"),
            1
        );
        assert_eq!(
            host.samples("model_name=.=sim-model;.;ml_health_check_latency_milliseconds"),
            vec![7]
        );
        assert_eq!(
            host.counter("model_name=.=sim-model;.;type=.=timeout;.;ml_exporter_errors_total"),
            1
        );

        let not_ready = ReadinessSnapshot {
            status: ReadinessStatus::Draining,
            model: "v2".into(),
            ..r
        };
        reg.observe_pod(&mut host, Some(&not_ready), None, Fresh::default());
        assert_eq!(host.gauge("model_name=.=v2;.;ml_model_healthy"), 0);
        assert_eq!(
            host.gauge("model_name=.=sim-model;.;server=.=vllm;.;ml_model_info"),
            0
        );
        assert_eq!(
            host.gauge("model_name=.=v2;.;server=.=none;.;ml_model_info"),
            1
        );
    }

    #[test]
    fn cursor_advances_once_per_new_sequence() {
        let c = Cursor::decode(None);
        assert_eq!(c.advance(None, None), None);
        let (c, fresh) = c.advance(Some(1), None).unwrap();
        assert_eq!(
            fresh,
            Fresh {
                readiness: true,
                queue: false
            }
        );
        let c = Cursor::decode(Some(&c.encode()));
        assert_eq!(c.advance(Some(1), None), None);
        let (c, fresh) = c.advance(Some(1), Some(5)).unwrap();
        assert_eq!(
            fresh,
            Fresh {
                readiness: false,
                queue: true
            }
        );
        // A restarted writer counts from 0 again: still news.
        assert!(c.advance(Some(0), Some(5)).is_some());
        assert_eq!(Cursor::decode(Some(b"short")), Cursor::default());
    }

    fn sse_event(body: &str) -> String {
        format!("data: {body}\n\n")
    }

    #[test]
    fn tracker_streaming_timings_and_usage() {
        let ms = 1_000_000u64;
        let mut t = RequestTracker::new(0);
        let req = br#"{"model":"llama","stream":true,"messages":[]}"#;
        t.request_body(&req[..5]);
        assert!(t.wants_request_body());
        t.request_body(&req[5..]);
        assert!(!t.wants_request_body());
        assert_eq!(t.requested_model(), Some(&b"llama"[..]));
        t.response_headers(200, Some("text/event-stream; charset=utf-8"));
        assert!(t.wants_response_body());
        let token = sse_event(r#"{"choices":[{"delta":{"content":"x"}}]}"#);
        t.response_body(50 * ms, token.as_bytes(), false);
        for i in 1..5u64 {
            t.response_body((50 + 10 * i) * ms, token.as_bytes(), false);
        }
        let usage =
            sse_event(r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":5}}"#);
        t.response_body(91 * ms, usage.as_bytes(), false);
        t.response_body(91 * ms, b"data: [DONE]\n\n", true);
        assert_eq!(
            t.usage(),
            Some(Usage {
                prompt_tokens: 9,
                completion_tokens: 5
            })
        );
        assert_eq!(t.timings(92 * ms), (92, Some(50), Some(10)));
    }

    #[test]
    fn tracker_json_response_and_errors() {
        let mut t = RequestTracker::new(0);
        t.response_headers(200, Some("application/json"));
        t.response_body(1, br#"{"choices":[{}],"usage":{"prompt_tokens":3,"#, false);
        t.response_body(2, br#""completion_tokens":2}}"#, true);
        assert_eq!(
            t.usage(),
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 2
            })
        );
        assert_eq!(t.timings(3_000_000), (3, None, None));

        let mut t = RequestTracker::new(0);
        t.response_headers(429, Some("application/json"));
        t.response_body(1, br#"{"error":{"message":"busy"}}"#, true);
        assert_eq!(t.usage(), None);
        let mut t = RequestTracker::new(0);
        t.response_headers(200, Some("text/plain"));
        assert!(!t.wants_response_body());
    }
}
