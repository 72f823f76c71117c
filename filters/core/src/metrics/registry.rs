//! The registry of one VM: label tables and cached metric ids; records finished requests
//! and the pod-level gauges from the shared snapshots.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::config::MetricsConfig;
use super::cursor::Fresh;
use super::labels::{code_class, criticality_label, Interner, ModelIdx, ModelSet};
use super::names::*;
use super::{MetricHost, MetricKind};
use crate::scrape::ServerKind;
use crate::state::{QueueSnapshot, ReadinessSnapshot, ReadinessStatus};
use crate::usage::Usage;
use crate::vocab::Criticality;

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
    /// Reason from [`crate::vocab::SHED_HEADER`] on a 429.
    pub shed_reason: Option<&'a str>,
    /// Reason from [`crate::vocab::GATED_HEADER`] on a 503.
    pub gated_reason: Option<&'a str>,
}

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

/// The metrics of one VM: label tables and the cached metric ids.
pub struct Registry {
    models: ModelSet,
    model_override: Option<String>,
    trust_model_header: bool,
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
            trust_model_header: config.trust_model_header,
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
        let target = match o.target_model.filter(|_| self.trust_model_header) {
            Some(t) => self.models.lookup(Some(t)),
            None => requested,
        };
        let crit = o.criticality.and_then(Criticality::parse);
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
        let crit = criticality_label(k.crit);
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
        // Configured values as they are; what the model server reports only when listed in
        // `models` (else "other"), so a server cannot mint a stat per value it makes up.
        let scraped = queue
            .map(|q| q.model.as_bytes())
            .filter(|m| !m.is_empty())
            .map(|m| self.models.name(self.models.lookup(Some(m))));
        let model_src = self
            .model_override
            .as_deref()
            .or(readiness
                .map(|r| r.model.as_str())
                .filter(|m| !m.is_empty()))
            .or(scraped)
            .unwrap_or("")
            .to_owned();
        let server_src = queue
            .and_then(|q| ServerKind::parse(&q.server).ok().flatten())
            .map_or("", ServerKind::as_str);
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
    crit: Option<Criticality>,
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
            | self.crit.map_or(0, |c| c.index() as u64 + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FilterConfig;

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
        let mut reg = Registry::new(&config(
            r#"{"models":["llama","fast"],"trust_model_header":true}"#,
        ));
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
    fn model_header_is_ignored_unless_trusted() {
        let mut host = MockHost::default();
        let mut reg = Registry::new(&config(r#"{"models":["llama","fast"]}"#));
        let mut o = outcome("fast", 200);
        o.target_model = Some(b"llama");
        reg.record_request(&mut host, &o);
        assert_eq!(
            host.counter("requested_model=.=fast;.;model_name=.=fast;.;code_class=.=2xx;.;criticality=.=standard;.;ml_requests_total"),
            1
        );
        assert!(host
            .names
            .iter()
            .all(|(_, n)| !n.contains("model_name=.=llama")));
    }

    #[test]
    fn scraped_model_and_server_labels_are_bounded_to_configured_values() {
        let mut host = MockHost::default();
        let mut reg = Registry::new(&config(r#"{"models":["llama"]}"#));
        let fresh = Fresh {
            readiness: false,
            queue: true,
        };
        for (i, (model, server)) in [("evil-1", "evil"), ("evil-2", "vllm"), ("llama", "sglang")]
            .into_iter()
            .enumerate()
        {
            let q = QueueSnapshot {
                scraped_at_ms: 1,
                seq: i as u64,
                server: server.into(),
                model: model.into(),
                ..Default::default()
            };
            reg.observe_pod(&mut host, None, Some(&q), fresh);
        }
        assert!(
            host.names.iter().all(|(_, n)| !n.contains("evil")),
            "{:#?}",
            host.names
        );
        assert_eq!(
            host.gauge("model_name=.=other;.;server=.=vllm;.;ml_model_info"),
            0
        );
        assert_eq!(
            host.gauge("model_name=.=llama;.;server=.=sglang;.;ml_model_info"),
            1
        );
        assert_eq!(host.gauge("model_name=.=llama;.;ml_requests_waiting"), 0);
        assert!(host
            .names
            .iter()
            .any(|(_, n)| n == "model_name=.=other;.;server=.=none;.;ml_model_info"));
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
}
