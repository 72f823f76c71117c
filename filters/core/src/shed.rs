//! The load shedder's policy: its configuration, and admission by criticality against the
//! scraped queue and KV-cache load, a local in-flight cap, stale-snapshot behaviour and the
//! gateway's pool saturation. ORCA reports are in [`crate::orca`], the shared tables in
//! [`crate::shed_tables`], metrics and logs in [`crate::shed_monitor`]; the proxy-wasm side
//! is `filters/load_shedder`.

use serde::Deserialize;

use crate::config::{ms_or, ConfigError, DurationMs, FilterConfig, FilterKind};
use crate::flow::{FlowConfig, FlowJson};
use crate::orca::OrcaConfig;
use crate::scrape::{ScrapeConfig, ScrapeConfigJson};
use crate::state::QueueSnapshot;
use crate::vocab::Criticality;

/// The criticality a request is admitted as. With `trust_header` (a router in front
/// sets the header and strips the client's) the header is taken as is; otherwise a
/// client may only lower itself below the configured default, never raise itself.
/// A missing or unknown value means the default.
pub fn effective_criticality(
    header: Option<&str>,
    default: Criticality,
    trust_header: bool,
) -> Criticality {
    match header.and_then(Criticality::parse) {
        Some(c) if trust_header => c,
        Some(c) => c.min(default),
        None => default,
    }
}

/// Why a request was shed; `as_str` is the metric suffix and the log word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedReason {
    /// The server's waiting queue is above the class threshold.
    Queue,
    /// The server's KV-cache use is above the class threshold.
    KvCache,
    /// This proxy already has the class's `max_in_flight` requests in flight.
    Concurrency,
    /// No fresh snapshot (scrape failing or late) and `on_stale` says shed.
    Stale,
    /// Gateway: most of the pool's hosts report a utilisation above the threshold.
    PoolSaturated,
    /// Flow control: the request could not be held (a bound on held requests).
    FlowFull,
    /// Flow control: the request was held past its band's TTL.
    FlowTimeout,
}

impl ShedReason {
    pub const ALL: [ShedReason; 7] = [
        Self::Queue,
        Self::KvCache,
        Self::Concurrency,
        Self::Stale,
        Self::PoolSaturated,
        Self::FlowFull,
        Self::FlowTimeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queue => "queue",
            Self::KvCache => "kv_cache",
            Self::Concurrency => "concurrency",
            Self::Stale => "stale",
            Self::PoolSaturated => "pool_saturated",
            Self::FlowFull => "flow_full",
            Self::FlowTimeout => "flow_timeout",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Admit,
    Shed(ShedReason),
}

/// What to do with standard and sheddable requests while the snapshot is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStale {
    /// Fail open (default): admit as if the server were idle.
    Admit,
    ShedSheddable,
    /// Shed standard and sheddable (critical is never shed).
    Shed,
}

/// Per-class limits; `None` disables a check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassLimits {
    /// Shed when the server's waiting queue is above this.
    pub queue: Option<f64>,
    /// Shed when KV-cache use (0..1) is above this.
    pub kv_cache: Option<f64>,
    /// Shed when this proxy has this many requests (of any class) in flight.
    pub max_in_flight: Option<u32>,
}

/// Gateway settings: shed sheddable requests when the pool is saturated.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// Average application utilisation above which the pool is saturated.
    pub utilization_threshold: f64,
    /// Reports older than this are forgotten (the host went away or gets no traffic).
    pub report_ttl_ms: u64,
}

/// The validated load-shedder configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ShedConfig {
    pub scrape: Option<ScrapeConfig>,
    pub default_criticality: Criticality,
    pub trust_criticality_header: bool,
    /// Downstream peer identities (the URI SAN of their mTLS certificate) whose header
    /// may raise the criticality; everyone else may only lower it.
    pub trusted_principals: Vec<String>,
    /// Indexed by [`Criticality::index`]; critical's entry is unused.
    pub limits: [ClassLimits; 3],
    pub stale_after_ms: u64,
    pub on_stale: OnStale,
    pub retry_after_s: u32,
    pub orca: Option<OrcaConfig>,
    pub gateway: Option<GatewayConfig>,
    /// Flow control: hold instead of refusing at once.
    pub flow: Option<FlowConfig>,
    pub tick_ms: u64,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct ShedConfigJson {
    pub scrape: Option<ScrapeConfigJson>,
    pub default_criticality: Option<String>,
    pub trust_criticality_header: Option<bool>,
    pub trusted_principals: Option<Vec<String>>,
    pub thresholds: Option<ThresholdsJson>,
    pub stale_after: Option<DurationMs>,
    pub on_stale: Option<String>,
    pub retry_after: Option<DurationMs>,
    pub orca: Option<OrcaJson>,
    pub gateway: Option<GatewayJson>,
    pub flow: Option<FlowJson>,
    pub tick: Option<DurationMs>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct ThresholdsJson {
    pub standard: Option<ClassJson>,
    pub sheddable: Option<ClassJson>,
}

#[derive(Deserialize, Debug, Default, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct ClassJson {
    pub queue: Option<f64>,
    pub kv_cache: Option<f64>,
    pub max_in_flight: Option<u32>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct OrcaJson {
    pub enabled: Option<bool>,
    pub capacity: Option<f64>,
    pub window: Option<DurationMs>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct GatewayJson {
    pub utilization_threshold: Option<f64>,
    pub report_ttl: Option<DurationMs>,
}

impl ShedConfig {
    /// Defaults in line with the Gateway API Inference Extension's saturation detector.
    pub const SHEDDABLE_DEFAULT: ClassLimits = ClassLimits {
        queue: Some(5.0),
        kv_cache: Some(0.8),
        max_in_flight: None,
    };
    pub const STANDARD_DEFAULT: ClassLimits = ClassLimits {
        queue: Some(20.0),
        kv_cache: Some(0.95),
        max_in_flight: None,
    };
}

impl FilterConfig for ShedConfig {
    const KIND: FilterKind = FilterKind::LoadShedder;
    type Json = ShedConfigJson;

    fn validate(raw: ShedConfigJson) -> Result<Self, ConfigError> {
        let scrape = raw
            .scrape
            .as_ref()
            .map(|s| ScrapeConfig::validate(s, "scrape"))
            .transpose()?;
        let default_criticality = match &raw.default_criticality {
            Some(s) => Criticality::parse(s).ok_or_else(|| {
                ConfigError::new(
                    "default_criticality",
                    format!("`{s}` is not one of {}", Criticality::NAMES),
                )
            })?,
            None => Criticality::Standard,
        };
        let t = raw.thresholds.as_ref();
        let standard = class(
            t.and_then(|t| t.standard),
            Self::STANDARD_DEFAULT,
            "thresholds.standard",
        )?;
        let sheddable = class(
            t.and_then(|t| t.sheddable),
            Self::SHEDDABLE_DEFAULT,
            "thresholds.sheddable",
        )?;
        // "Sheddable first": a sheddable limit looser than the standard one is a mistake.
        let looser = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => a > b,
            (None, Some(_)) => true,
            _ => false,
        };
        if looser(sheddable.queue, standard.queue) {
            return Err(ConfigError::new(
                "thresholds.sheddable.queue",
                "must not exceed thresholds.standard.queue",
            ));
        }
        if looser(sheddable.kv_cache, standard.kv_cache) {
            return Err(ConfigError::new(
                "thresholds.sheddable.kv_cache",
                "must not exceed thresholds.standard.kv_cache",
            ));
        }
        if looser(
            sheddable.max_in_flight.map(f64::from),
            standard.max_in_flight.map(f64::from),
        ) {
            return Err(ConfigError::new(
                "thresholds.sheddable.max_in_flight",
                "must not exceed thresholds.standard.max_in_flight",
            ));
        }
        let period = scrape
            .as_ref()
            .map_or(ScrapeConfig::DEFAULT_PERIOD_MS, |s| s.period_ms);
        let stale_after_ms = ms_or(raw.stale_after, (4 * period).max(1000));
        if stale_after_ms < period {
            return Err(ConfigError::new(
                "stale_after",
                "must be at least scrape.period",
            ));
        }
        let on_stale = match raw.on_stale.as_deref() {
            None | Some("admit") => OnStale::Admit,
            Some("shed_sheddable") => OnStale::ShedSheddable,
            Some("shed") => OnStale::Shed,
            Some(other) => {
                return Err(ConfigError::new(
                    "on_stale",
                    format!("`{other}` is not one of \"admit\", \"shed_sheddable\", \"shed\""),
                ))
            }
        };
        let retry_after_ms = ms_or(raw.retry_after, 1000);
        if retry_after_ms > 3_600_000 {
            return Err(ConfigError::new("retry_after", "must be at most 1h"));
        }
        let retry_after_s = u32::try_from(retry_after_ms.div_ceil(1000).max(1)).unwrap_or(1);
        let trust_criticality_header = raw.trust_criticality_header.unwrap_or(false);
        let trusted_principals = raw.trusted_principals.clone().unwrap_or_default();
        if trust_criticality_header && !trusted_principals.is_empty() {
            return Err(ConfigError::new(
                "trusted_principals",
                "conflicts with trust_criticality_header: true (which trusts every client)",
            ));
        }
        if trusted_principals.len() > 64 {
            return Err(ConfigError::new("trusted_principals", "at most 64 entries"));
        }
        if let Some(i) = trusted_principals.iter().position(|p| p.trim().is_empty()) {
            return Err(ConfigError::new(
                format!("trusted_principals[{i}]"),
                "must not be empty",
            ));
        }
        let orca = orca(raw.orca.as_ref(), scrape.is_some())?;
        let gateway = raw.gateway.as_ref().map(gateway).transpose()?;
        let flow = FlowConfig::validate(raw.flow.as_ref())?;
        if flow.is_some() && gateway.is_some() {
            return Err(ConfigError::new(
                "flow",
                "flow control holds requests for one pod: configure it in the sidecars",
            ));
        }
        if scrape.is_none()
            && gateway.is_none()
            && flow.is_none()
            && standard.max_in_flight.is_none()
            && sheddable.max_in_flight.is_none()
        {
            return Err(ConfigError::new(
                "scrape",
                "nothing to do: configure `scrape` (sidecar), `gateway`, `flow`, or a `max_in_flight` threshold",
            ));
        }
        let tick_ms = ms_or(raw.tick, period.min(100));
        if !(10..=60_000).contains(&tick_ms) {
            return Err(ConfigError::new("tick", "must be between 10ms and 60s"));
        }
        Ok(Self {
            scrape,
            default_criticality,
            trust_criticality_header,
            trusted_principals,
            limits: [sheddable, standard, ClassLimits::unlimited()],
            stale_after_ms,
            on_stale,
            retry_after_s,
            orca,
            gateway,
            flow,
            tick_ms,
        })
    }
}

impl ShedConfig {
    /// The class a request is admitted as, from its header. A header that claims more
    /// than [`effective_criticality`] allows is honoured only when the downstream peer
    /// (`peer`, asked only then: it costs a host call) is in `trusted_principals`.
    pub fn criticality(
        &self,
        header: Option<&str>,
        peer: impl FnOnce() -> Option<String>,
    ) -> Criticality {
        let allowed = effective_criticality(
            header,
            self.default_criticality,
            self.trust_criticality_header,
        );
        match header.and_then(Criticality::parse) {
            Some(claimed)
                if claimed > allowed
                    && !self.trusted_principals.is_empty()
                    && peer().is_some_and(|p| self.trusted_principals.contains(&p)) =>
            {
                claimed
            }
            _ => allowed,
        }
    }

    pub fn limits(&self, c: Criticality) -> &ClassLimits {
        // `limits` has one entry per criticality, so the index is always in range.
        self.limits.get(c.index()).unwrap_or(&UNLIMITED)
    }

    /// The admission decision for one request (no host calls, no allocation).
    pub fn decide(&self, class: Criticality, view: &LoadView, in_flight: u32) -> Decision {
        if class == Criticality::Critical {
            return Decision::Admit;
        }
        let limits = self.limits(class);
        if limits.max_in_flight.is_some_and(|cap| in_flight >= cap) {
            return Decision::Shed(ShedReason::Concurrency);
        }
        if class == Criticality::Sheddable && view.pool_saturated {
            return Decision::Shed(ShedReason::PoolSaturated);
        }
        match view.server {
            ServerView::NotScraped => Decision::Admit,
            ServerView::Stale => match (self.on_stale, class) {
                (OnStale::Shed, _) | (OnStale::ShedSheddable, Criticality::Sheddable) => {
                    Decision::Shed(ShedReason::Stale)
                }
                _ => Decision::Admit,
            },
            ServerView::Fresh { waiting, kv_cache } => {
                if limits.queue.is_some_and(|q| waiting > q) {
                    Decision::Shed(ShedReason::Queue)
                } else if limits.kv_cache.is_some_and(|k| kv_cache > k) {
                    Decision::Shed(ShedReason::KvCache)
                } else {
                    Decision::Admit
                }
            }
        }
    }

    /// The server part of the [`LoadView`] for a snapshot read at `now_ms`.
    pub fn server_view(&self, snapshot: Option<&QueueSnapshot>, now_ms: u64) -> ServerView {
        if self.scrape.is_none() {
            return ServerView::NotScraped;
        }
        match snapshot {
            Some(s) if is_fresh(s, now_ms, self.stale_after_ms) => ServerView::Fresh {
                waiting: s.waiting,
                kv_cache: s.kv_cache_usage,
            },
            _ => ServerView::Stale,
        }
    }

    /// The answer to a held request that waited past its TTL: 429 like a shed request,
    /// or 503 when the model server's load is unknown (no pod answering its scrape).
    pub fn expired_error(&self, class: Criticality, server: ServerView) -> crate::error::ApiError {
        if server == ServerView::Stale {
            return crate::error::ApiError::unavailable(
                "no_capacity",
                format!(
                    "No model server answered while the request waited. Retry after {} s.",
                    self.retry_after_s
                ),
                self.retry_after_s,
            );
        }
        self.shed_error(class, ShedReason::FlowTimeout)
    }

    /// The 429 a shed request gets (OpenAI `rate_limit_error`, so clients back off).
    pub fn shed_error(&self, class: Criticality, reason: ShedReason) -> crate::error::ApiError {
        let what = match reason {
            ShedReason::Queue => "the model server's request queue is full",
            ShedReason::KvCache => "the model server's KV cache is nearly full",
            ShedReason::Concurrency => "too many requests are in flight",
            ShedReason::Stale => "the model server's load is unknown",
            ShedReason::PoolSaturated => "every model server in the pool is saturated",
            ShedReason::FlowFull => "too many requests are already waiting",
            ShedReason::FlowTimeout => "the request waited too long for the model server",
        };
        crate::error::ApiError::rate_limited(
            format!(
                "Overloaded: {what}; {} requests are shed first. Retry after {} s.",
                class.as_str(),
                self.retry_after_s
            ),
            self.retry_after_s,
        )
    }
}

static UNLIMITED: ClassLimits = ClassLimits::unlimited();

impl ClassLimits {
    pub const fn unlimited() -> Self {
        Self {
            queue: None,
            kv_cache: None,
            max_in_flight: None,
        }
    }
}

fn class(
    raw: Option<ClassJson>,
    default: ClassLimits,
    prefix: &str,
) -> Result<ClassLimits, ConfigError> {
    let raw = raw.unwrap_or_default();
    let queue = raw.queue.or(default.queue);
    if queue.is_some_and(|q| !q.is_finite() || q < 0.0) {
        return Err(ConfigError::new(
            format!("{prefix}.queue"),
            "must be a non-negative number",
        ));
    }
    let kv_cache = raw.kv_cache.or(default.kv_cache);
    if kv_cache.is_some_and(|k| !(0.0..=1.0).contains(&k)) {
        return Err(ConfigError::new(
            format!("{prefix}.kv_cache"),
            "must be between 0 and 1",
        ));
    }
    let max_in_flight = raw.max_in_flight.or(default.max_in_flight);
    if max_in_flight == Some(0) {
        return Err(ConfigError::new(
            format!("{prefix}.max_in_flight"),
            "must be positive (omit it for no cap)",
        ));
    }
    Ok(ClassLimits {
        queue,
        kv_cache,
        max_in_flight,
    })
}

fn orca(raw: Option<&OrcaJson>, scraping: bool) -> Result<Option<OrcaConfig>, ConfigError> {
    let enabled = raw.and_then(|o| o.enabled).unwrap_or(scraping);
    if !enabled {
        return Ok(None);
    }
    if !scraping {
        return Err(ConfigError::new(
            "orca.enabled",
            "the ORCA report needs `scrape`",
        ));
    }
    let capacity = raw.and_then(|o| o.capacity).unwrap_or(32.0);
    if !capacity.is_finite() || capacity <= 0.0 {
        return Err(ConfigError::new(
            "orca.capacity",
            "must be a positive number of requests",
        ));
    }
    let window_ms = ms_or(raw.and_then(|o| o.window), 2000);
    if window_ms == 0 {
        return Err(ConfigError::new("orca.window", "must be positive"));
    }
    Ok(Some(OrcaConfig {
        capacity,
        window_ms,
    }))
}

fn gateway(raw: &GatewayJson) -> Result<GatewayConfig, ConfigError> {
    let utilization_threshold = raw.utilization_threshold.unwrap_or(0.8);
    if !utilization_threshold.is_finite() || utilization_threshold <= 0.0 {
        return Err(ConfigError::new(
            "gateway.utilization_threshold",
            "must be a positive number",
        ));
    }
    let report_ttl_ms = ms_or(raw.report_ttl, 10_000);
    if report_ttl_ms == 0 {
        return Err(ConfigError::new("gateway.report_ttl", "must be positive"));
    }
    Ok(GatewayConfig {
        utilization_threshold,
        report_ttl_ms,
    })
}

/// True when `s` holds a successful scrape no older than `stale_after_ms`.
pub fn is_fresh(s: &QueueSnapshot, now_ms: u64, stale_after_ms: u64) -> bool {
    s.scraped_at_ms > 0 && now_ms.saturating_sub(s.scraped_at_ms) <= stale_after_ms
}

/// The model server's state as the policy sees it, refreshed on each tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ServerView {
    /// No `scrape` configured (gateway-only or cap-only).
    NotScraped,
    Stale,
    Fresh {
        waiting: f64,
        kv_cache: f64,
    },
}

/// Everything a decision needs besides the class and the in-flight count; cached in
/// the root context and replaced on each tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadView {
    pub server: ServerView,
    pub pool_saturated: bool,
}

impl Default for LoadView {
    fn default() -> Self {
        Self {
            server: ServerView::NotScraped,
            pool_saturated: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> ShedConfig {
        ShedConfig::parse(json.as_bytes()).unwrap()
    }

    fn sidecar() -> ShedConfig {
        cfg(r#"{"scrape":{"cluster":"local"}}"#)
    }

    fn fresh(waiting: f64, kv: f64) -> LoadView {
        LoadView {
            server: ServerView::Fresh {
                waiting,
                kv_cache: kv,
            },
            pool_saturated: false,
        }
    }

    use Criticality::*;

    #[test]
    fn client_may_lower_but_not_raise_without_router() {
        assert_eq!(effective_criticality(None, Standard, false), Standard);
        assert_eq!(
            effective_criticality(Some("sheddable"), Standard, false),
            Sheddable
        );
        assert_eq!(
            effective_criticality(Some("critical"), Standard, false),
            Standard
        );
        assert_eq!(
            effective_criticality(Some("Critical"), Sheddable, false),
            Sheddable
        );
        assert_eq!(
            effective_criticality(Some("bogus"), Sheddable, false),
            Sheddable
        );
        // A router in front is trusted both ways.
        assert_eq!(
            effective_criticality(Some("critical"), Standard, true),
            Critical
        );
        assert_eq!(
            effective_criticality(Some(" sheddable "), Critical, true),
            Sheddable
        );
    }

    #[test]
    fn only_trusted_peers_may_raise_their_criticality() {
        let c = cfg(
            r#"{"scrape":{"cluster":"l"},"trusted_principals":["spiffe://cluster.local/ns/gw/sa/gateway"]}"#,
        );
        let gateway = || Some("spiffe://cluster.local/ns/gw/sa/gateway".to_string());
        let other = || Some("spiffe://cluster.local/ns/apps/sa/client".to_string());
        assert_eq!(c.criticality(Some("critical"), gateway), Critical);
        assert_eq!(c.criticality(Some("critical"), other), Standard);
        assert_eq!(
            c.criticality(Some("critical"), || None),
            Standard,
            "plaintext"
        );
        // Lowering needs no identity, and the peer is not even looked up.
        let asked = std::cell::Cell::new(false);
        let spy = || {
            asked.set(true);
            None
        };
        assert_eq!(c.criticality(Some("sheddable"), spy), Sheddable);
        assert_eq!(c.criticality(None, spy), Standard);
        assert!(!asked.get());
        // Without a list nobody may raise (unless the header is trusted outright).
        assert_eq!(sidecar().criticality(Some("critical"), gateway), Standard);
        let err = |json: &str| ShedConfig::parse(json.as_bytes()).unwrap_err().field;
        assert_eq!(
            err(
                r#"{"scrape":{"cluster":"l"},"trusted_principals":["a"],"trust_criticality_header":true}"#
            ),
            "trusted_principals"
        );
        assert_eq!(
            err(r#"{"scrape":{"cluster":"l"},"trusted_principals":["a", " "]}"#),
            "trusted_principals[1]"
        );
    }

    #[test]
    fn defaults_follow_the_inference_extension() {
        let c = sidecar();
        assert_eq!(c.limits(Sheddable).queue, Some(5.0));
        assert_eq!(c.limits(Sheddable).kv_cache, Some(0.8));
        assert_eq!(c.default_criticality, Standard);
        assert_eq!(c.on_stale, OnStale::Admit);
        assert_eq!(c.retry_after_s, 1);
        assert!(c.orca.is_some());
        assert_eq!(c.stale_after_ms, 1000);
    }

    #[test]
    fn sheddable_is_shed_first_and_critical_never() {
        let c = sidecar();
        let v = fresh(6.0, 0.1);
        assert_eq!(
            c.decide(Sheddable, &v, 0),
            Decision::Shed(ShedReason::Queue)
        );
        assert_eq!(c.decide(Standard, &v, 0), Decision::Admit);
        assert_eq!(c.decide(Critical, &v, 0), Decision::Admit);
        let v = fresh(5.0, 0.1);
        assert_eq!(
            c.decide(Sheddable, &v, 0),
            Decision::Admit,
            "at the threshold is not above it"
        );
        let v = fresh(0.0, 0.85);
        assert_eq!(
            c.decide(Sheddable, &v, 0),
            Decision::Shed(ShedReason::KvCache)
        );
        assert_eq!(c.decide(Standard, &v, 0), Decision::Admit);
        let v = fresh(100.0, 1.0);
        assert_eq!(c.decide(Standard, &v, 0), Decision::Shed(ShedReason::Queue));
        assert_eq!(c.decide(Critical, &v, u32::MAX), Decision::Admit);
    }

    #[test]
    fn in_flight_cap_works_without_a_scrape() {
        let c = cfg(
            r#"{"thresholds":{"sheddable":{"max_in_flight":2},"standard":{"max_in_flight":4}}}"#,
        );
        let v = LoadView::default();
        assert_eq!(c.decide(Sheddable, &v, 1), Decision::Admit);
        assert_eq!(
            c.decide(Sheddable, &v, 2),
            Decision::Shed(ShedReason::Concurrency)
        );
        assert_eq!(c.decide(Standard, &v, 3), Decision::Admit);
        assert_eq!(
            c.decide(Standard, &v, 4),
            Decision::Shed(ShedReason::Concurrency)
        );
        assert_eq!(c.decide(Critical, &v, 100), Decision::Admit);
    }

    #[test]
    fn stale_snapshot_is_configurable_and_fails_open_by_default() {
        let snap = QueueSnapshot {
            waiting: 50.0,
            scraped_at_ms: 10_000,
            ..Default::default()
        };
        let c = sidecar();
        assert_eq!(
            c.server_view(Some(&snap), 10_900),
            ServerView::Fresh {
                waiting: 50.0,
                kv_cache: 0.0
            }
        );
        assert_eq!(c.server_view(Some(&snap), 11_001), ServerView::Stale);
        assert_eq!(c.server_view(None, 1), ServerView::Stale);
        let never = QueueSnapshot::default();
        assert_eq!(c.server_view(Some(&never), 1), ServerView::Stale);
        let stale = LoadView {
            server: ServerView::Stale,
            pool_saturated: false,
        };
        assert_eq!(c.decide(Sheddable, &stale, 0), Decision::Admit);
        let c2 = cfg(r#"{"scrape":{"cluster":"l"},"on_stale":"shed_sheddable"}"#);
        assert_eq!(
            c2.decide(Sheddable, &stale, 0),
            Decision::Shed(ShedReason::Stale)
        );
        assert_eq!(c2.decide(Standard, &stale, 0), Decision::Admit);
        let c3 = cfg(r#"{"scrape":{"cluster":"l"},"on_stale":"shed"}"#);
        assert_eq!(
            c3.decide(Standard, &stale, 0),
            Decision::Shed(ShedReason::Stale)
        );
        assert_eq!(c3.decide(Critical, &stale, 0), Decision::Admit);
    }

    #[test]
    fn pool_saturation_sheds_only_sheddable() {
        let c = cfg(r#"{"gateway":{}}"#);
        let v = LoadView {
            server: ServerView::NotScraped,
            pool_saturated: true,
        };
        assert_eq!(
            c.decide(Sheddable, &v, 0),
            Decision::Shed(ShedReason::PoolSaturated)
        );
        assert_eq!(c.decide(Standard, &v, 0), Decision::Admit);
        assert!(c.orca.is_none());
    }

    #[test]
    fn config_errors_name_the_field() {
        let err = |json: &str| ShedConfig::parse(json.as_bytes()).unwrap_err().field;
        assert_eq!(err("{}"), "scrape");
        assert_eq!(err(r#"{"scrape":{"cluster":"l"},"bogus":1}"#), "bogus");
        assert_eq!(
            err(r#"{"scrape":{"cluster":"l"},"default_criticality":"vip"}"#),
            "default_criticality"
        );
        assert_eq!(
            err(r#"{"scrape":{"cluster":"l"},"thresholds":{"sheddable":{"queue":30}}}"#),
            "thresholds.sheddable.queue"
        );
        assert_eq!(
            err(r#"{"scrape":{"cluster":"l"},"thresholds":{"standard":{"kv_cache":1.5}}}"#),
            "thresholds.standard.kv_cache"
        );
        assert_eq!(
            err(
                r#"{"scrape":{"cluster":"l"},"thresholds":{"standard":{"max_in_flight":2},"sheddable":{"max_in_flight":3}}}"#
            ),
            "thresholds.sheddable.max_in_flight"
        );
        assert_eq!(
            err(r#"{"scrape":{"cluster":"l"},"on_stale":"panic"}"#),
            "on_stale"
        );
        assert_eq!(
            err(r#"{"scrape":{"cluster":"l"},"orca":{"capacity":0}}"#),
            "orca.capacity"
        );
        assert_eq!(
            err(r#"{"gateway":{},"orca":{"enabled":true}}"#),
            "orca.enabled"
        );
        assert_eq!(
            err(r#"{"gateway":{"utilization_threshold":-1}}"#),
            "gateway.utilization_threshold"
        );
        assert_eq!(
            err(r#"{"scrape":{"cluster":"l"},"stale_after":"10ms"}"#),
            "stale_after"
        );
        assert_eq!(
            err(r#"{"scrape":{"cluster":"l","bogus":1}}"#),
            "scrape.bogus"
        );
    }

    #[test]
    fn shed_error_is_a_rate_limit_error_with_retry_after() {
        let c = cfg(r#"{"scrape":{"cluster":"l"},"retry_after":"2500ms"}"#);
        let e = c.shed_error(Sheddable, ShedReason::Queue);
        assert_eq!(
            (e.status, e.kind, e.retry_after_s),
            (429, "rate_limit_error", Some(3))
        );
        assert!(e.message.contains("queue"));
    }
}
