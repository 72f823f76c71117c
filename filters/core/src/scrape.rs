//! What the scraper reads from a model server's Prometheus endpoint: the per-server
//! adapters (vLLM, SGLang, TGI, Triton / TensorRT-LLM), server detection from metric
//! names, the scrape configuration, and how an attempt turns into the next
//! [`QueueSnapshot`]. The proxy-wasm side is `modelgate_glue::scraper`.

use serde::Deserialize;

use crate::config::{ms_or, ConfigError, DurationMs, Upstream, UpstreamJson};
use crate::prom::{Limits, ParseStats, Parser, Sample};
use crate::state::QueueSnapshot;

/// The model servers we have adapters for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// `vllm:num_requests_waiting`, `vllm:num_requests_running`, `vllm:kv_cache_usage_perc`
    /// (or the older `vllm:gpu_cache_usage_perc`).
    Vllm,
    /// `sglang:num_queue_reqs`, `sglang:num_running_reqs`, `sglang:token_usage`.
    Sglang,
    /// `tgi_queue_size`, `tgi_batch_current_size`; KV use from `tgi_batch_current_max_tokens`
    /// over the configured `kv_capacity_tokens` (TGI exports no KV-cache gauge).
    Tgi,
    /// TensorRT-LLM backend: `nv_trt_llm_request_metrics{request_type=waiting|scheduled|active}`,
    /// `nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=fraction|used|max}`; plain
    /// Triton: `nv_inference_pending_request_count`.
    Triton,
}

impl ServerKind {
    pub const NAMES: &'static str = "\"auto\", \"vllm\", \"sglang\", \"tgi\", \"triton\"";

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vllm => "vllm",
            Self::Sglang => "sglang",
            Self::Tgi => "tgi",
            Self::Triton => "triton",
        }
    }

    /// `Ok(None)` for "auto" (detect from metric names); `Err` for an unknown name.
    pub fn parse(s: &str) -> Result<Option<Self>, UnknownServer> {
        match s {
            "auto" => Ok(None),
            "vllm" => Ok(Some(Self::Vllm)),
            "sglang" => Ok(Some(Self::Sglang)),
            "tgi" => Ok(Some(Self::Tgi)),
            "triton" | "tensorrt-llm" | "trtllm" => Ok(Some(Self::Triton)),
            _ => Err(UnknownServer),
        }
    }

    /// The server a load metric belongs to, from its name; `None` for anything else
    /// (process, python, envoy metrics...).
    pub fn detect(metric: &str) -> Option<Self> {
        match metric {
            "vllm:num_requests_waiting"
            | "vllm:num_requests_running"
            | "vllm:kv_cache_usage_perc"
            | "vllm:gpu_cache_usage_perc" => Some(Self::Vllm),
            "sglang:num_queue_reqs" | "sglang:num_running_reqs" | "sglang:token_usage" => {
                Some(Self::Sglang)
            }
            "tgi_queue_size" | "tgi_batch_current_size" | "tgi_batch_current_max_tokens" => {
                Some(Self::Tgi)
            }
            "nv_trt_llm_request_metrics"
            | "nv_trt_llm_kv_cache_block_metrics"
            | "nv_inference_pending_request_count" => Some(Self::Triton),
            _ => None,
        }
    }

    /// The label that names the model, when the server sets one.
    fn model_label(self) -> Option<&'static str> {
        match self {
            Self::Vllm | Self::Sglang => Some("model_name"),
            Self::Triton => Some("model"),
            Self::Tgi => None,
        }
    }
}

/// A `server` name that is none of [`ServerKind::NAMES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownServer;

/// The `scrape` block of a filter configuration (JSON).
#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct ScrapeConfigJson {
    /// Envoy cluster of the model server's metrics endpoint (required).
    pub cluster: Option<String>,
    /// `:authority` of the poll; default: the cluster name.
    pub authority: Option<String>,
    /// Default "/metrics".
    pub path: Option<String>,
    /// Poll period for the whole proxy; default "250ms".
    pub period: Option<DurationMs>,
    /// Per-poll timeout; default "1s" (capped at 10 s).
    pub timeout: Option<DurationMs>,
    /// "auto" (default), "vllm", "sglang", "tgi", "triton".
    pub server: Option<String>,
    /// Count only samples whose model label equals this; default: all models.
    pub model: Option<String>,
    /// Bytes of the body read at most; default 4 MiB.
    pub max_body_bytes: Option<usize>,
    /// TGI only: KV capacity in tokens (`--max-batch-total-tokens`) for KV-cache use.
    pub kv_capacity_tokens: Option<u64>,
}

/// A validated scrape configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ScrapeConfig {
    /// `GET <path>` on `cluster` (default path "/metrics").
    pub upstream: Upstream,
    pub period_ms: u64,
    pub timeout_ms: u64,
    /// `None`: detect from the metric names on every scrape.
    pub server: Option<ServerKind>,
    pub model: Option<String>,
    pub limits: Limits,
    pub kv_capacity_tokens: Option<u64>,
}

impl ScrapeConfig {
    pub const DEFAULT_PERIOD_MS: u64 = 250;
    pub const DEFAULT_TIMEOUT_MS: u64 = 1000;

    /// Validates the block `raw`; `prefix` is its JSON path (e.g. "scrape") for errors.
    pub fn validate(raw: &ScrapeConfigJson, prefix: &str) -> Result<Self, ConfigError> {
        let field = |f: &str| format!("{prefix}.{f}");
        let upstream = UpstreamJson {
            cluster: raw.cluster.clone().unwrap_or_default(),
            path: raw.path.clone(),
            authority: raw.authority.clone(),
        }
        .validate(prefix, "/metrics")?;
        let period_ms = ms_or(raw.period, Self::DEFAULT_PERIOD_MS);
        if !(10..=600_000).contains(&period_ms) {
            return Err(ConfigError::new(
                field("period"),
                "must be between 10ms and 10m",
            ));
        }
        let timeout_ms = ms_or(raw.timeout, Self::DEFAULT_TIMEOUT_MS);
        if !(1..=10_000).contains(&timeout_ms) {
            return Err(ConfigError::new(
                field("timeout"),
                "must be between 1ms and 10s",
            ));
        }
        let server = match &raw.server {
            Some(s) => ServerKind::parse(s).map_err(|UnknownServer| {
                ConfigError::new(
                    field("server"),
                    format!("`{s}` is not one of {}", ServerKind::NAMES),
                )
            })?,
            None => None,
        };
        let max_bytes = raw.max_body_bytes.unwrap_or(Limits::default().max_bytes);
        if !(1024..=(64 << 20)).contains(&max_bytes) {
            return Err(ConfigError::new(
                field("max_body_bytes"),
                "must be between 1024 and 67108864",
            ));
        }
        if raw.kv_capacity_tokens == Some(0) {
            return Err(ConfigError::new(
                field("kv_capacity_tokens"),
                "must be positive",
            ));
        }
        Ok(Self {
            upstream,
            period_ms,
            timeout_ms,
            server,
            model: raw.model.clone().filter(|m| !m.is_empty()),
            limits: Limits {
                max_bytes,
                max_line_bytes: Limits::default().max_line_bytes,
            },
            kv_capacity_tokens: raw.kv_capacity_tokens,
        })
    }
}

/// Why a scrape attempt failed; `kind()` is what `QueueSnapshot::error` and the logs say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScrapeError {
    /// `dispatch_http_call` refused (unknown cluster, bad headers).
    Dispatch,
    /// No answer within the timeout.
    Timeout,
    /// The call failed before the timeout (connection refused or reset).
    Connect,
    /// An HTTP status other than 200.
    Status(u16),
    /// The body went past `max_body_bytes`: a partial body is not a load (it may sum a
    /// fraction of the series, or garbage), so none of it counts.
    TooLarge,
    /// The body is not Prometheus text (no sample line at all).
    Parse,
    /// Prometheus text, but none of the configured server's load metrics.
    NoMetrics,
}

impl ScrapeError {
    pub fn kind(self) -> &'static str {
        match self {
            Self::Dispatch => "dispatch",
            Self::Timeout => "timeout",
            Self::Connect => "connect",
            Self::Status(_) => "status",
            Self::TooLarge => "too_large",
            Self::Parse => "parse",
            Self::NoMetrics => "no_metrics",
        }
    }

    /// Every kind, for defining one counter per kind up front.
    pub const KINDS: [&'static str; 7] = [
        "dispatch",
        "timeout",
        "connect",
        "status",
        "too_large",
        "parse",
        "no_metrics",
    ];
}

/// The load a scrape found.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerLoad {
    pub waiting: f64,
    pub running: f64,
    pub kv_cache_usage: f64,
    pub server: ServerKind,
    /// The model label of the counted samples ("" when none; the first one when several).
    pub model: String,
}

/// Accumulates one server kind's load metrics from samples, in any order.
#[derive(Debug, Default, Clone)]
struct Acc {
    waiting: Option<f64>,
    running: Option<f64>,
    kv: Option<f64>,
    /// vLLM's older name, used only when the newer one is absent.
    kv_legacy: Option<f64>,
    /// TensorRT-LLM fallbacks for older backends (no `waiting` / `fraction`).
    trt_active: Option<f64>,
    kv_used: Option<f64>,
    kv_max: Option<f64>,
    tgi_max_tokens: Option<f64>,
    /// Plain Triton's queue, used when the TensorRT-LLM metrics are absent.
    triton_pending: Option<f64>,
}

/// Saturating: samples are finite, but a sum of them may not be (JSON, where the
/// snapshot is shared, has no infinity).
fn add(slot: &mut Option<f64>, v: f64) {
    *slot = Some((slot.unwrap_or(0.0) + v).min(f64::MAX));
}

fn max(slot: &mut Option<f64>, v: f64) {
    *slot = Some(slot.map_or(v, |s| s.max(v)));
}

/// Turns the samples of one body into a [`ServerLoad`]. Counts are summed over label
/// sets (engines, data-parallel ranks); KV-cache use is the maximum (the fullest engine
/// is the one that stalls).
#[derive(Debug, Clone)]
pub struct Extractor {
    configured: Option<ServerKind>,
    detected: Option<ServerKind>,
    model_filter: Option<String>,
    kv_capacity_tokens: Option<u64>,
    model: Option<String>,
    acc: Acc,
}

impl Extractor {
    pub fn new(cfg: &ScrapeConfig) -> Self {
        Self {
            configured: cfg.server,
            detected: cfg.server,
            model_filter: cfg.model.clone(),
            kv_capacity_tokens: cfg.kv_capacity_tokens,
            model: None,
            acc: Acc::default(),
        }
    }

    /// Looks at one sample; ignores everything that is not a load metric of the server.
    pub fn observe(&mut self, s: &Sample<'_>) {
        let Some(kind) = ServerKind::detect(s.name) else {
            return;
        };
        // In auto mode the first server seen wins (Triton's vLLM backend exports both).
        match self.detected {
            None => self.detected = Some(kind),
            Some(k) if k != kind => return,
            Some(_) => {}
        }
        if !s.value.is_finite() || s.value < 0.0 {
            return;
        }
        if let Some(label) = kind.model_label() {
            if let Some(found) = s.labels.get(label) {
                if let Some(want) = &self.model_filter {
                    if found != want.as_str() {
                        return;
                    }
                }
                if self.model.is_none() {
                    self.model = Some(found.into_owned());
                }
            }
        }
        let v = s.value;
        let a = &mut self.acc;
        match s.name {
            "vllm:num_requests_waiting" | "sglang:num_queue_reqs" | "tgi_queue_size" => {
                add(&mut a.waiting, v)
            }
            "vllm:num_requests_running" | "sglang:num_running_reqs" | "tgi_batch_current_size" => {
                add(&mut a.running, v)
            }
            "vllm:kv_cache_usage_perc" | "sglang:token_usage" => max(&mut a.kv, v),
            "vllm:gpu_cache_usage_perc" => max(&mut a.kv_legacy, v),
            "nv_inference_pending_request_count" => add(&mut a.triton_pending, v),
            "nv_trt_llm_request_metrics" => match s.labels.get("request_type").as_deref() {
                Some("waiting") => add(&mut a.waiting, v),
                Some("scheduled") => add(&mut a.running, v),
                Some("active") => add(&mut a.trt_active, v),
                _ => {}
            },
            "nv_trt_llm_kv_cache_block_metrics" => {
                match s.labels.get("kv_cache_block_type").as_deref() {
                    Some("fraction") => max(&mut a.kv, v),
                    Some("used") => add(&mut a.kv_used, v),
                    Some("max") => add(&mut a.kv_max, v),
                    _ => {}
                }
            }
            _ => {}
        }
        if s.name == "tgi_batch_current_max_tokens" {
            add(&mut a.tgi_max_tokens, v);
        }
    }

    /// The load, or `NoMetrics` when the server's queue gauges were not seen.
    pub fn finish(self) -> Result<ServerLoad, ScrapeError> {
        let server = self
            .detected
            .or(self.configured)
            .ok_or(ScrapeError::NoMetrics)?;
        let a = self.acc;
        let running = a.running;
        let waiting = match (a.waiting, a.trt_active, running, a.triton_pending) {
            (Some(w), ..) => Some(w),
            // Older TensorRT-LLM backends: active = scheduled + waiting.
            (None, Some(active), Some(r), _) => Some((active - r).max(0.0)),
            (None, _, _, Some(p)) => Some(p),
            _ => None,
        };
        if waiting.is_none() && running.is_none() {
            return Err(ScrapeError::NoMetrics);
        }
        let kv =
            a.kv.or(a.kv_legacy)
                .or_else(|| match (a.kv_used, a.kv_max) {
                    (Some(u), Some(m)) if m > 0.0 => Some(u / m),
                    _ => None,
                })
                .or_else(|| match (a.tgi_max_tokens, self.kv_capacity_tokens) {
                    (Some(t), Some(cap)) => Some(t / cap as f64),
                    _ => None,
                })
                .unwrap_or(0.0);
        Ok(ServerLoad {
            waiting: waiting.unwrap_or(0.0),
            running: running.unwrap_or(0.0),
            kv_cache_usage: kv.clamp(0.0, 1.0),
            server,
            model: self.model.unwrap_or_default(),
        })
    }
}

/// Reads one metrics body fed in chunks (the glue reads host memory piece by piece):
/// the bounded parser plus the [`Extractor`].
#[derive(Debug)]
pub struct MetricsReader {
    parser: Parser,
    extractor: Extractor,
}

impl MetricsReader {
    pub fn new(cfg: &ScrapeConfig) -> Self {
        Self {
            parser: Parser::new(cfg.limits),
            extractor: Extractor::new(cfg),
        }
    }

    /// Feeds the next piece; false once `max_body_bytes` is reached (stop reading).
    pub fn feed(&mut self, chunk: &[u8]) -> bool {
        let Self { parser, extractor } = self;
        parser.feed(chunk, &mut |s| extractor.observe(s))
    }

    /// The load, or why there is none: `TooLarge` when the limit cut the body, `Parse`
    /// when nothing was Prometheus text.
    pub fn finish(self) -> (Result<ServerLoad, ScrapeError>, ParseStats) {
        let Self {
            parser,
            mut extractor,
        } = self;
        let stats = parser.finish(&mut |s| extractor.observe(s));
        let result = if stats.truncated {
            Err(ScrapeError::TooLarge)
        } else {
            extractor.finish().map_err(|e| match e {
                ScrapeError::NoMetrics if stats.samples == 0 => ScrapeError::Parse,
                other => other,
            })
        };
        (result, stats)
    }
}

/// Reads a whole body given as chunks (tests and small inputs).
pub fn extract<'c>(
    cfg: &ScrapeConfig,
    chunks: impl IntoIterator<Item = &'c [u8]>,
) -> (Result<ServerLoad, ScrapeError>, ParseStats) {
    let mut reader = MetricsReader::new(cfg);
    for chunk in chunks {
        if !reader.feed(chunk) {
            break;
        }
    }
    reader.finish()
}

/// The snapshot after an attempt: `seq` counts attempts; a failure keeps the last good
/// values and `scraped_at_ms` (so readers judge staleness) and records its kind.
pub fn next_snapshot(
    prev: &QueueSnapshot,
    outcome: Result<ServerLoad, ScrapeError>,
    now_ms: u64,
) -> QueueSnapshot {
    let seq = prev.seq.wrapping_add(1);
    match outcome {
        Ok(load) => QueueSnapshot {
            waiting: load.waiting,
            running: load.running,
            kv_cache_usage: load.kv_cache_usage,
            scraped_at_ms: now_ms,
            seq,
            error: None,
            server: load.server.as_str().to_string(),
            model: load.model,
        },
        Err(e) => QueueSnapshot {
            seq,
            error: Some(e.kind().to_string()),
            ..prev.clone()
        },
    }
}

/// Classifies a non-200 answer. Envoy answers a call it could not deliver with a local
/// reply of its own (503 "upstream connect error ...", 504 "upstream request timeout"),
/// which `body_start` (the first bytes of the body) tells apart from the server's.
pub fn failed_status(status: u16, body_start: &[u8]) -> ScrapeError {
    if body_start.starts_with(b"upstream connect error")
        || body_start.starts_with(b"no healthy upstream")
    {
        ScrapeError::Connect
    } else if body_start.starts_with(b"upstream request timeout") {
        ScrapeError::Timeout
    } else {
        ScrapeError::Status(status)
    }
}

/// Classifies a call that got no answer at all: a timeout and a reset look the same (no
/// headers), so the elapsed time tells them apart.
pub fn failed_call(elapsed_ms: u64, timeout_ms: u64) -> ScrapeError {
    if elapsed_ms + 50 >= timeout_ms {
        ScrapeError::Timeout
    } else {
        ScrapeError::Connect
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> ScrapeConfig {
        let raw: ScrapeConfigJson = crate::config::parse_json(json.as_bytes()).unwrap();
        ScrapeConfig::validate(&raw, "scrape").unwrap()
    }

    fn auto() -> ScrapeConfig {
        cfg(r#"{"cluster":"local"}"#)
    }

    /// Real metric text per server kind, embedded (the wasm32 test run has no files).
    fn data(name: &str) -> Vec<u8> {
        let bytes: &[u8] = match name {
            "vllm-v1.prom" => include_bytes!("../testdata/metrics/vllm-v1.prom"),
            "vllm-v0.prom" => include_bytes!("../testdata/metrics/vllm-v0.prom"),
            "sglang.prom" => include_bytes!("../testdata/metrics/sglang.prom"),
            "tgi.prom" => include_bytes!("../testdata/metrics/tgi.prom"),
            "triton-trtllm.prom" => include_bytes!("../testdata/metrics/triton-trtllm.prom"),
            "triton-trtllm-old.prom" => {
                include_bytes!("../testdata/metrics/triton-trtllm-old.prom")
            }
            "multi-model-vllm.prom" => include_bytes!("../testdata/metrics/multi-model-vllm.prom"),
            other => panic!("no test data {other}"),
        };
        bytes.to_vec()
    }

    fn load(cfg: &ScrapeConfig, name: &str) -> ServerLoad {
        extract(cfg, [data(name).as_slice()]).0.unwrap()
    }

    #[test]
    fn vllm_v1() {
        let l = load(&auto(), "vllm-v1.prom");
        assert_eq!(
            (l.server, l.waiting, l.running),
            (ServerKind::Vllm, 7.0, 12.0)
        );
        assert_eq!(l.kv_cache_usage, 0.8234);
        assert_eq!(l.model, "meta-llama/Llama-3.1-8B-Instruct");
    }

    #[test]
    fn vllm_v0_uses_gpu_cache_usage() {
        let l = load(&auto(), "vllm-v0.prom");
        assert_eq!((l.waiting, l.running, l.kv_cache_usage), (2.0, 4.0, 0.41));
    }

    #[test]
    fn sglang() {
        let l = load(&auto(), "sglang.prom");
        assert_eq!(l.server, ServerKind::Sglang);
        assert_eq!(
            (l.waiting, l.running, l.kv_cache_usage),
            (2826.0, 31.0, 0.28)
        );
        assert_eq!(l.model, "Qwen/Qwen2.5-7B-Instruct");
    }

    #[test]
    fn tgi_needs_capacity_for_kv() {
        let l = load(&auto(), "tgi.prom");
        assert_eq!(
            (l.server, l.waiting, l.running, l.kv_cache_usage),
            (ServerKind::Tgi, 9.0, 24.0, 0.0)
        );
        let c = cfg(r#"{"cluster":"l","server":"tgi","kv_capacity_tokens":65536}"#);
        assert_eq!(load(&c, "tgi.prom").kv_cache_usage, 57344.0 / 65536.0);
    }

    #[test]
    fn triton_trtllm() {
        let l = load(&auto(), "triton-trtllm.prom");
        assert_eq!(l.server, ServerKind::Triton);
        assert_eq!(
            (l.waiting, l.running, l.kv_cache_usage),
            (5.0, 6.0, 0.65625)
        );
        // Older backends: waiting = active - scheduled, KV = used / max.
        let l = load(&auto(), "triton-trtllm-old.prom");
        assert_eq!((l.waiting, l.running, l.kv_cache_usage), (3.0, 4.0, 0.25));
    }

    #[test]
    fn multi_engine_sums_counts_and_takes_fullest_kv_and_filters_model() {
        let l = load(&auto(), "multi-model-vllm.prom");
        assert_eq!((l.waiting, l.running, l.kv_cache_usage), (25.0, 14.0, 0.99));
        let l = load(
            &cfg(r#"{"cluster":"l","model":"base"}"#),
            "multi-model-vllm.prom",
        );
        assert_eq!((l.waiting, l.running, l.kv_cache_usage), (5.0, 5.0, 0.7));
    }

    #[test]
    fn configured_server_ignores_other_servers_metrics() {
        let c = cfg(r#"{"cluster":"l","server":"sglang"}"#);
        assert_eq!(
            extract(&c, [data("vllm-v1.prom").as_slice()]).0,
            Err(ScrapeError::NoMetrics)
        );
    }

    #[test]
    fn garbage_and_foreign_text() {
        let c = auto();
        assert_eq!(
            extract(&c, [b"<html>502 Bad Gateway</html>".as_slice()]).0,
            Err(ScrapeError::Parse)
        );
        assert_eq!(extract(&c, [b"".as_slice()]).0, Err(ScrapeError::Parse));
        let envoy_stats = b"# TYPE envoy_up gauge\nenvoy_up 1\nprocess_cpu_seconds_total 4.2\n";
        assert_eq!(
            extract(&c, [envoy_stats.as_slice()]).0,
            Err(ScrapeError::NoMetrics)
        );
        // Broken values are skipped, the rest still counts.
        let partly = b"vllm:num_requests_waiting{model_name=\"m\"} nope\nvllm:num_requests_running{model_name=\"m\"} 2\n";
        let l = extract(&c, [partly.as_slice()]).0.unwrap();
        assert_eq!((l.waiting, l.running), (0.0, 2.0));
        let nan = b"vllm:num_requests_waiting NaN\nvllm:num_requests_running -1\n";
        assert_eq!(extract(&c, [nan.as_slice()]).0, Err(ScrapeError::NoMetrics));
    }

    #[test]
    fn sums_of_huge_counts_saturate_instead_of_overflowing() {
        let body = b"vllm:num_requests_waiting{engine=\"0\"} 1e308\nvllm:num_requests_waiting{engine=\"1\"} 1e308\nvllm:num_requests_running 1e308\n";
        let l = extract(&auto(), [&body[..]]).0.unwrap();
        assert!(l.waiting.is_finite() && l.waiting >= 1e308, "{}", l.waiting);
        // The snapshot survives shared data (JSON has no infinity).
        let snap = next_snapshot(&QueueSnapshot::default(), Ok(l), 5);
        let back: QueueSnapshot = crate::state::decode(&crate::state::encode(&snap)).unwrap();
        assert_eq!(back, snap);
    }

    #[test]
    fn a_body_cut_at_the_limit_is_too_large_whatever_it_held() {
        let c = cfg(r#"{"cluster":"l","max_body_bytes":65536}"#);
        let mut body = "python_gc_objects_collected_total{generation=\"0\"} 1\n".repeat(10_000);
        body.push_str("vllm:num_requests_waiting 3\n");
        let (r, stats) = extract(&c, body.as_bytes().chunks(8192));
        assert_eq!(r, Err(ScrapeError::TooLarge));
        assert!(stats.truncated);
        // Load metrics before the cut do not count either: an enormous body of repeated
        // samples would otherwise read as a huge queue.
        let body = "vllm:num_requests_waiting 3\n".repeat(100_000);
        assert_eq!(
            extract(&c, body.as_bytes().chunks(8192)).0,
            Err(ScrapeError::TooLarge)
        );
    }

    #[test]
    fn chunking_does_not_change_the_result() {
        let body = data("triton-trtllm.prom");
        let whole = extract(&auto(), [body.as_slice()]).0;
        for size in [1, 3, 64, 1000] {
            assert_eq!(extract(&auto(), body.chunks(size)).0, whole, "chunk {size}");
        }
    }

    #[test]
    fn snapshot_keeps_last_good_values_on_failure() {
        let ok = next_snapshot(
            &QueueSnapshot::default(),
            Ok(load(&auto(), "vllm-v0.prom")),
            1000,
        );
        assert_eq!(
            (ok.seq, ok.scraped_at_ms, ok.waiting, ok.error.clone()),
            (1, 1000, 2.0, None)
        );
        assert_eq!(ok.server, "vllm");
        let failed = next_snapshot(&ok, Err(ScrapeError::Timeout), 2000);
        assert_eq!(
            (failed.seq, failed.scraped_at_ms, failed.waiting),
            (2, 1000, 2.0)
        );
        assert_eq!(failed.error.as_deref(), Some("timeout"));
        let again = next_snapshot(&failed, Ok(load(&auto(), "sglang.prom")), 3000);
        assert_eq!(
            (again.seq, again.error, again.server.as_str()),
            (3, None, "sglang")
        );
    }

    #[test]
    fn config_defaults_and_errors_name_the_field() {
        let c = auto();
        let u = &c.upstream;
        assert_eq!(
            (
                u.authority.as_str(),
                u.path.as_str(),
                c.period_ms,
                c.timeout_ms
            ),
            ("local", "/metrics", 250, 1000)
        );
        assert_eq!(c.server, None);
        // As embedded in a filter config: serde's errors carry the `scrape.` path too.
        #[derive(Deserialize)]
        struct Filter {
            scrape: ScrapeConfigJson,
        }
        let bad = |json: &str| {
            crate::config::parse_json::<Filter>(format!(r#"{{"scrape":{json}}}"#).as_bytes())
                .and_then(|f| ScrapeConfig::validate(&f.scrape, "scrape"))
                .unwrap_err()
                .field
        };
        assert_eq!(bad("{}"), "scrape.cluster");
        assert_eq!(bad(r#"{"cluster":"l","server":"ollama"}"#), "scrape.server");
        assert_eq!(bad(r#"{"cluster":"l","period":"1h"}"#), "scrape.period");
        assert_eq!(bad(r#"{"cluster":"l","timeout":"soon"}"#), "scrape.timeout");
        assert_eq!(bad(r#"{"cluster":"l","path":"metrics"}"#), "scrape.path");
        assert_eq!(
            bad(r#"{"cluster":"l","max_body_bytes":1}"#),
            "scrape.max_body_bytes"
        );
    }

    #[test]
    fn failed_calls_are_classified_by_elapsed_time() {
        assert_eq!(failed_call(1, 1000), ScrapeError::Connect);
        assert_eq!(failed_call(999, 1000), ScrapeError::Timeout);
    }

    #[test]
    fn envoy_local_replies_are_told_from_server_errors() {
        let connect = b"upstream connect error or disconnect/reset before headers. reset reason: remote connection failure";
        assert_eq!(failed_status(503, connect), ScrapeError::Connect);
        assert_eq!(
            failed_status(503, b"no healthy upstream"),
            ScrapeError::Connect
        );
        assert_eq!(
            failed_status(504, b"upstream request timeout"),
            ScrapeError::Timeout
        );
        assert_eq!(
            failed_status(503, b"{\"error\": \"starting\"}"),
            ScrapeError::Status(503)
        );
        assert_eq!(ScrapeError::Status(404).kind(), "status");
    }
}
