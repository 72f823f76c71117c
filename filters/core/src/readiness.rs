//! Readiness gate policy: its configuration, judging the health / model-list / loader
//! answers of one poll round into a [`ReadinessSnapshot`], the per-VM verdict (a stale
//! snapshot counts as not ready), and what the filter answers for a request path.

use serde::Deserialize;

use crate::config::{
    ms_or, validate_path, ConfigError, DurationMs, FilterConfig, FilterKind, Upstream, UpstreamJson,
};
use crate::error::ApiError;
use crate::state::{ReadinessSnapshot, ReadinessStatus};

/// Lease purpose (`modelgate.lease.readiness`): one poll round per period per proxy.
pub const LEASE_PURPOSE: &str = "readiness";
/// Largest response body read from `/v1/models` or the loader's `/ready`.
pub const MAX_BODY_BYTES: usize = 1 << 20;

const DEFAULT_CLUSTER: &str = "model_server";
const DEFAULT_HEALTH_PATH: &str = "/health";
const DEFAULT_MODELS_PATH: &str = "/v1/models";
const DEFAULT_LOADER_PATH: &str = "/ready";
const DEFAULT_PERIOD_MS: u64 = 1000;
const DEFAULT_TIMEOUT_MS: u64 = 500;
const DEFAULT_RETRY_AFTER_MS: u64 = 5000;
const DEFAULT_PROBE_PATH: &str = "/modelgate/ready";
const DEFAULT_GATED_PREFIX: &str = "/v1/";
/// `max_age` defaults to this many periods: one missed round is tolerated, three are not.
const DEFAULT_MAX_AGE_PERIODS: u64 = 3;
const MIN_PERIOD_MS: u64 = 10;
const TICKS_PER_PERIOD: u64 = 4;

/// The plugin configuration as written (JSON); see docs/readiness-gate.md.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct ReadinessConfigJson {
    /// Model that must be listed in `/v1/models` (required).
    pub model: String,
    #[serde(default)]
    pub health: Option<UpstreamJson>,
    #[serde(default)]
    pub models_path: Option<String>,
    /// The loader's status endpoint; absent or `null`: no loader check.
    #[serde(default)]
    pub loader: Option<UpstreamJson>,
    #[serde(default)]
    pub period: Option<DurationMs>,
    #[serde(default)]
    pub timeout: Option<DurationMs>,
    #[serde(default)]
    pub max_age: Option<DurationMs>,
    #[serde(default)]
    pub retry_after: Option<DurationMs>,
    /// Absent: the default path; `null` or `""`: no probe path.
    #[serde(default = "default_probe_path")]
    pub probe_path: Option<String>,
    #[serde(default)]
    pub gated_prefixes: Option<Vec<String>>,
}

fn default_probe_path() -> Option<String> {
    Some(DEFAULT_PROBE_PATH.to_string())
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadinessConfig {
    pub model: String,
    pub health: Upstream,
    /// `GET models_path` on the health cluster.
    pub models: Upstream,
    pub loader: Option<Upstream>,
    pub period_ms: u64,
    pub timeout_ms: u64,
    pub max_age_ms: u64,
    pub retry_after_s: u32,
    pub probe_path: Option<String>,
    pub gated_prefixes: Vec<String>,
}

impl ReadinessConfig {
    /// Tick of every VM: a quarter period, so a VM picks up a snapshot another VM published
    /// within a quarter period, while the lease still limits polls to one round per period.
    pub fn tick_ms(&self) -> u64 {
        (self.period_ms / TICKS_PER_PERIOD).max(MIN_PERIOD_MS)
    }

    /// What the filter does with a request for `path` (query string included or not).
    /// Bytes, not `&str`: a header value need not be UTF-8 and must not trap the VM.
    /// Matches the normalised path (`//v1/x` and `/%76%31/x` are `/v1/x` to a server).
    pub fn classify(&self, path: &[u8]) -> PathAction {
        let path = crate::path::normalize(path);
        if let Some(probe) = &self.probe_path {
            if *path == *probe.as_bytes() {
                return PathAction::Probe;
            }
        }
        if self
            .gated_prefixes
            .iter()
            .any(|p| path.starts_with(p.as_bytes()))
        {
            PathAction::Gate
        } else {
            PathAction::Pass
        }
    }
}

impl FilterConfig for ReadinessConfig {
    const KIND: FilterKind = FilterKind::ReadinessGate;
    type Json = ReadinessConfigJson;

    fn validate(raw: ReadinessConfigJson) -> Result<ReadinessConfig, ConfigError> {
        let model = raw.model.trim();
        if model.is_empty() {
            return Err(ConfigError::new("model", "must name the served model"));
        }
        let health_json = raw.health.unwrap_or_else(|| UpstreamJson {
            cluster: DEFAULT_CLUSTER.to_string(),
            ..Default::default()
        });
        let health = health_json.validate("health", DEFAULT_HEALTH_PATH)?;
        let models = Upstream {
            path: validate_path(
                "models_path",
                raw.models_path.as_deref().unwrap_or(DEFAULT_MODELS_PATH),
            )?,
            ..health.clone()
        };
        let loader = match &raw.loader {
            Some(l) => Some(l.validate("loader", DEFAULT_LOADER_PATH)?),
            None => None,
        };

        let period_ms = ms_or(raw.period, DEFAULT_PERIOD_MS);
        if period_ms < MIN_PERIOD_MS {
            return Err(ConfigError::new(
                "period",
                format!("must be at least {MIN_PERIOD_MS}ms"),
            ));
        }
        let timeout_ms = ms_or(raw.timeout, DEFAULT_TIMEOUT_MS);
        if timeout_ms == 0 || timeout_ms > period_ms {
            return Err(ConfigError::new(
                "timeout",
                format!(
                    "must be more than 0 and at most `period` ({period_ms}ms), got {timeout_ms}ms"
                ),
            ));
        }
        let max_age_ms = ms_or(
            raw.max_age,
            period_ms.saturating_mul(DEFAULT_MAX_AGE_PERIODS),
        );
        if max_age_ms < period_ms {
            return Err(ConfigError::new(
                "max_age",
                format!("must be at least `period` ({period_ms}ms), got {max_age_ms}ms"),
            ));
        }
        let retry_ms = ms_or(raw.retry_after, DEFAULT_RETRY_AFTER_MS);
        if retry_ms == 0 {
            return Err(ConfigError::new("retry_after", "must be more than 0"));
        }
        // Retry-After is whole seconds; round up so clients never retry sooner than asked.
        let retry_after_s = u32::try_from(retry_ms.div_ceil(1000))
            .map_err(|_| ConfigError::new("retry_after", "is too large"))?;

        let probe_path = match raw.probe_path.as_deref() {
            None | Some("") => None,
            Some(p) => Some(validate_path("probe_path", p)?),
        };
        let gated_prefixes = match &raw.gated_prefixes {
            None => vec![DEFAULT_GATED_PREFIX.to_string()],
            Some(list) => list
                .iter()
                .enumerate()
                .map(|(i, p)| validate_path(&format!("gated_prefixes[{i}]"), p))
                .collect::<Result<_, _>>()?,
        };
        Ok(ReadinessConfig {
            model: model.to_string(),
            health,
            models,
            loader,
            period_ms,
            timeout_ms,
            max_age_ms,
            retry_after_s,
            probe_path,
            gated_prefixes,
        })
    }
}

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathAction {
    /// The readiness probe path: answer it locally from the current verdict.
    Probe,
    /// An inference path: forward only when ready.
    Gate,
    /// Not ours: always forward.
    Pass,
}

/// The three polls of a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Health,
    Models,
    Loader,
}

impl Check {
    pub fn name(self) -> &'static str {
        match self {
            Check::Health => "health",
            Check::Models => "models",
            Check::Loader => "loader",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    NotReady(String),
    /// The loader is draining or swapping revisions.
    Draining(String),
}

/// `:status` of a poll answer; `None` when the call failed (timeout, reset, no upstream).
fn status_reason(check: Check, status: Option<u16>) -> String {
    match status {
        Some(s) => format!("{}: status {s}", check.name()),
        None => format!(
            "{}: no response (timeout or connection failure)",
            check.name()
        ),
    }
}

/// Health passes on 200 only.
pub fn judge_health(status: Option<u16>) -> Outcome {
    match status {
        Some(200) => Outcome::Pass,
        other => Outcome::NotReady(status_reason(Check::Health, other)),
    }
}

#[derive(Deserialize)]
struct ModelList {
    data: Vec<ModelEntry>,
}

#[derive(Deserialize)]
struct ModelEntry {
    id: String,
}

/// The model list passes when it is a 200 OpenAI list whose `data[].id` contains `model`.
pub fn judge_models(status: Option<u16>, body: &[u8], model: &str) -> Outcome {
    if status != Some(200) {
        return Outcome::NotReady(status_reason(Check::Models, status));
    }
    match serde_json::from_slice::<ModelList>(body) {
        Ok(list) if list.data.iter().any(|m| m.id == model) => Outcome::Pass,
        Ok(_) => Outcome::NotReady(format!("models: `{model}` is not listed yet")),
        Err(_) => Outcome::NotReady("models: response is not an OpenAI model list".to_string()),
    }
}

#[derive(Deserialize)]
struct LoaderStatus {
    state: String,
    #[serde(default)]
    revision: Option<String>,
}

/// The loader's `/ready` (CONTRACTS.md): `ready` passes; `draining`/`updating` drain;
/// anything else (including `loading`) is not ready. A 200 without a readable body
/// passes, since a plain status endpoint is a valid loader too.
pub fn judge_loader(status: Option<u16>, body: &[u8]) -> Outcome {
    let Some(code) = status else {
        return Outcome::NotReady(status_reason(Check::Loader, None));
    };
    let parsed = serde_json::from_slice::<LoaderStatus>(body).ok();
    let Some(s) = parsed else {
        return if code == 200 {
            Outcome::Pass
        } else {
            Outcome::NotReady(status_reason(Check::Loader, status))
        };
    };
    let revision = s
        .revision
        .as_deref()
        .map(|r| format!(" (revision {r})"))
        .unwrap_or_default();
    match s.state.as_str() {
        "ready" if code == 200 => Outcome::Pass,
        "draining" | "updating" => Outcome::Draining(format!("loader: {}{revision}", s.state)),
        state => Outcome::NotReady(format!("loader: {state}{revision} (status {code})")),
    }
}

/// The results of one poll round, filled in as the answers arrive.
#[derive(Debug, Clone, Default)]
pub struct Round {
    health: Option<Outcome>,
    models: Option<Outcome>,
    loader: Option<Outcome>,
    expects_loader: bool,
    health_latency_ms: Option<u32>,
}

impl Round {
    pub fn new(expects_loader: bool) -> Self {
        Self {
            expects_loader,
            ..Default::default()
        }
    }

    pub fn record(&mut self, check: Check, outcome: Outcome) {
        let slot = match check {
            Check::Health => &mut self.health,
            Check::Models => &mut self.models,
            Check::Loader => &mut self.loader,
        };
        *slot = Some(outcome);
    }

    pub fn set_health_latency(&mut self, ms: u64) {
        self.health_latency_ms = Some(u32::try_from(ms).unwrap_or(u32::MAX));
    }

    pub fn is_complete(&self) -> bool {
        self.health.is_some()
            && self.models.is_some()
            && (!self.expects_loader || self.loader.is_some())
    }

    /// The verdict of the round. A draining loader wins (so clients are told to go
    /// elsewhere, not to wait), then the first failing check in health, models, loader.
    pub fn snapshot(&self, model: &str, now_ms: u64, seq: u64) -> ReadinessSnapshot {
        let outcomes = [&self.health, &self.models, &self.loader];
        let draining = outcomes.iter().find_map(|o| match o {
            Some(Outcome::Draining(r)) => Some(r.clone()),
            _ => None,
        });
        let (status, reason) = if let Some(r) = draining {
            (ReadinessStatus::Draining, r)
        } else if let Some(r) = outcomes.iter().find_map(|o| match o {
            Some(Outcome::NotReady(r)) => Some(r.clone()),
            _ => None,
        }) {
            (ReadinessStatus::NotReady, r)
        } else if self.is_complete() {
            (ReadinessStatus::Ready, String::new())
        } else {
            (ReadinessStatus::NotReady, "round incomplete".to_string())
        };
        ReadinessSnapshot {
            status,
            reason,
            model: model.to_string(),
            checked_at_ms: now_ms,
            seq,
            health_latency_ms: self.health_latency_ms,
        }
    }
}

/// The log line for a published change of state, `None` when nothing changed.
pub fn transition_message(
    prev: Option<&ReadinessSnapshot>,
    next: &ReadinessSnapshot,
) -> Option<String> {
    let (prev_status, prev_reason) = prev.map_or((ReadinessStatus::Unknown, ""), |p| {
        (p.status, p.reason.as_str())
    });
    if prev_status == next.status && prev_reason == next.reason {
        return None;
    }
    let mut msg = format!(
        "readiness of model `{}`: {} -> {}",
        next.model,
        status_name(prev_status),
        status_name(next.status)
    );
    if !next.reason.is_empty() {
        msg.push_str(" (");
        msg.push_str(&next.reason);
        msg.push(')');
    }
    Some(msg)
}

pub fn status_name(status: ReadinessStatus) -> &'static str {
    match status {
        ReadinessStatus::Unknown => "unknown",
        ReadinessStatus::NotReady => "not_ready",
        ReadinessStatus::Ready => "ready",
        ReadinessStatus::Draining => "draining",
    }
}

/// One VM's view of readiness: the shared snapshot as of its last tick, aged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub status: ReadinessStatus,
    pub reason: String,
    /// The snapshot is older than `max_age` (nobody completed a round lately).
    pub stale: bool,
}

/// The verdict from the latest snapshot at `now_ms`. No snapshot: unknown. Older than
/// `max_age_ms`: not ready, so a stuck poller cannot keep the gate open.
pub fn verdict(snapshot: Option<&ReadinessSnapshot>, now_ms: u64, max_age_ms: u64) -> Verdict {
    let Some(s) = snapshot else {
        return Verdict {
            status: ReadinessStatus::Unknown,
            reason: "no readiness check has completed yet".to_string(),
            stale: false,
        };
    };
    if now_ms.saturating_sub(s.checked_at_ms) > max_age_ms {
        return Verdict {
            status: ReadinessStatus::NotReady,
            // Constant text (no age in it) so the verdict compares equal tick after tick.
            reason: format!("stale: no readiness check completed within max_age ({max_age_ms}ms)"),
            stale: true,
        };
    }
    Verdict {
        status: s.status,
        reason: s.reason.clone(),
        stale: false,
    }
}

/// Everything the request path needs, computed once per change of verdict so a request
/// costs a borrow and a comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct GateState {
    pub verdict: Verdict,
    /// The reply to a gated request while not ready; `None` when ready.
    pub rejection: Option<ApiError>,
    /// Value of [`crate::vocab::GATED_HEADER`] on that reply, for the metrics filter: one of `unknown`,
    /// `not_ready`, `draining`, `stale` (a bounded set: it becomes a metric label).
    pub gated_reason: &'static str,
    pub probe_status: u16,
    pub probe_body: Vec<u8>,
}

#[derive(serde::Serialize)]
struct ProbeBody<'a> {
    status: &'static str,
    reason: &'a str,
    model: &'a str,
}

impl GateState {
    pub fn new(verdict: Verdict, config: &ReadinessConfig) -> Self {
        let ready = verdict.status == ReadinessStatus::Ready;
        let rejection = match verdict.status {
            ReadinessStatus::Ready => None,
            ReadinessStatus::Draining => Some(ApiError::unavailable(
                "model_draining",
                format!(
                    "The model server for `{}` is draining ({}); retry on another replica.",
                    config.model, verdict.reason
                ),
                config.retry_after_s,
            )),
            ReadinessStatus::Unknown | ReadinessStatus::NotReady => Some(ApiError::unavailable(
                "model_not_ready",
                format!(
                    "The model `{}` is not ready yet ({}); retry later.",
                    config.model, verdict.reason
                ),
                config.retry_after_s,
            )),
        };
        let probe_body = serde_json::to_vec(&ProbeBody {
            status: status_name(verdict.status),
            reason: &verdict.reason,
            model: &config.model,
        })
        .unwrap_or_default();
        let gated_reason = if verdict.stale {
            "stale"
        } else {
            status_name(verdict.status)
        };
        Self {
            rejection,
            gated_reason,
            probe_status: if ready { 200 } else { 503 },
            probe_body,
            verdict,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.rejection.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> ReadinessConfig {
        ReadinessConfig::parse(json.as_bytes()).unwrap()
    }

    fn err_field(json: &str) -> String {
        ReadinessConfig::parse(json.as_bytes()).unwrap_err().field
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = cfg(r#"{"model":"m"}"#);
        assert_eq!(c.health.cluster, "model_server");
        assert_eq!(c.health.path, "/health");
        assert_eq!(c.models.path, "/v1/models");
        assert_eq!(c.models.cluster, "model_server");
        assert_eq!(c.loader, None);
        assert_eq!(
            (c.period_ms, c.timeout_ms, c.max_age_ms, c.retry_after_s),
            (1000, 500, 3000, 5)
        );
        assert_eq!(c.probe_path.as_deref(), Some("/modelgate/ready"));
        assert_eq!(c.gated_prefixes, vec!["/v1/".to_string()]);
        assert_eq!(c.tick_ms(), 250);
        assert_eq!(
            cfg(r#"{"model":"m","period":"20ms","timeout":"10ms"}"#).tick_ms(),
            10
        );
    }

    #[test]
    fn full_config_is_honoured() {
        let c = cfg(
            r#"{"model":"m","health":{"cluster":"srv","path":"/healthz","authority":"srv.local"},
            "models_path":"/models","loader":{"cluster":"loader"},"period":"200ms","timeout":"100ms",
            "max_age":"1s","retry_after":"1500ms","probe_path":null,"gated_prefixes":["/v1/","/generate"]}"#,
        );
        assert_eq!(c.health.authority, "srv.local");
        assert_eq!(c.models.authority, "srv.local");
        assert_eq!(c.models.path, "/models");
        let loader = c.loader.clone().unwrap();
        assert_eq!(
            (loader.cluster.as_str(), loader.path.as_str()),
            ("loader", "/ready")
        );
        assert_eq!(
            (c.period_ms, c.timeout_ms, c.max_age_ms, c.retry_after_s),
            (200, 100, 1000, 2)
        );
        assert_eq!(c.probe_path, None);
        assert_eq!(c.classify(b"/generate?x=1"), PathAction::Gate);
        assert_eq!(c.classify(b"/modelgate/ready"), PathAction::Pass);
    }

    #[test]
    fn invalid_configs_name_the_field() {
        assert_eq!(err_field(r#"{}"#), "model");
        assert_eq!(err_field(r#"{"model":" "}"#), "model");
        assert_eq!(err_field(r#"{"model":"m","bogus":1}"#), "bogus");
        assert_eq!(err_field(r#"{"model":"m","period":"soon"}"#), "period");
        assert_eq!(err_field(r#"{"model":"m","period":"1ms"}"#), "period");
        assert_eq!(
            err_field(r#"{"model":"m","period":"1s","timeout":"2s"}"#),
            "timeout"
        );
        assert_eq!(err_field(r#"{"model":"m","timeout":"0s"}"#), "timeout");
        assert_eq!(err_field(r#"{"model":"m","max_age":"100ms"}"#), "max_age");
        assert_eq!(
            err_field(r#"{"model":"m","retry_after":"0s"}"#),
            "retry_after"
        );
        assert_eq!(
            err_field(r#"{"model":"m","probe_path":"ready"}"#),
            "probe_path"
        );
        assert_eq!(
            err_field(r#"{"model":"m","gated_prefixes":["/v1/","v2"]}"#),
            "gated_prefixes[1]"
        );
        assert_eq!(
            err_field(r#"{"model":"m","models_path":"x"}"#),
            "models_path"
        );
        assert_eq!(
            err_field(r#"{"model":"m","health":{"cluster":""}}"#),
            "health.cluster"
        );
        assert_eq!(
            err_field(r#"{"model":"m","loader":{"cluster":"l","path":"r"}}"#),
            "loader.path"
        );
        assert_eq!(
            err_field(r#"{"model":"m","loader":{"cluster":"l","port":1}}"#),
            "loader.port"
        );
    }

    #[test]
    fn loader_null_means_no_loader_check() {
        assert_eq!(cfg(r#"{"model":"m","loader":null}"#).loader, None);
    }

    #[test]
    fn paths_are_classified() {
        let c = cfg(r#"{"model":"m"}"#);
        assert_eq!(c.classify(b"/modelgate/ready"), PathAction::Probe);
        assert_eq!(c.classify(b"/modelgate/ready?verbose"), PathAction::Probe);
        assert_eq!(c.classify(b"/modelgate/readyz"), PathAction::Pass);
        assert_eq!(c.classify(b"/v1/chat/completions"), PathAction::Gate);
        assert_eq!(c.classify(b"/v1/models"), PathAction::Gate);
        assert_eq!(c.classify(b"/v1"), PathAction::Pass);
        assert_eq!(c.classify(b"/metrics"), PathAction::Pass);
        assert_eq!(c.classify(b"/health"), PathAction::Pass);
        assert_eq!(c.classify(b"/v1/\xff"), PathAction::Gate);
        assert_eq!(c.classify(b""), PathAction::Pass);
    }

    #[test]
    fn path_tricks_are_gated_like_the_plain_path() {
        let c = cfg(r#"{"model":"m"}"#);
        for p in [
            &b"//v1/chat/completions"[..],
            b"/%76%31/chat/completions",
            b"/v1//chat/completions",
            b"/health/../v1/chat/completions",
            b"/%2e%2e/v1/models",
        ] {
            assert_eq!(
                c.classify(p),
                PathAction::Gate,
                "{}",
                String::from_utf8_lossy(p)
            );
        }
        assert_eq!(c.classify(b"//modelgate/ready"), PathAction::Probe);
        assert_eq!(c.classify(b"/v1/../health"), PathAction::Pass);
    }

    #[test]
    fn health_needs_200() {
        assert_eq!(judge_health(Some(200)), Outcome::Pass);
        assert_eq!(
            judge_health(Some(503)),
            Outcome::NotReady("health: status 503".into())
        );
        assert!(matches!(judge_health(None), Outcome::NotReady(r) if r.contains("no response")));
    }

    #[test]
    fn model_must_be_listed() {
        let listed = br#"{"object":"list","data":[{"id":"other","object":"model"},{"id":"m","object":"model"}]}"#;
        assert_eq!(judge_models(Some(200), listed, "m"), Outcome::Pass);
        assert_eq!(
            judge_models(Some(200), br#"{"object":"list","data":[]}"#, "m"),
            Outcome::NotReady("models: `m` is not listed yet".into())
        );
        assert!(
            matches!(judge_models(Some(200), b"<html>", "m"), Outcome::NotReady(r) if r.contains("not an OpenAI"))
        );
        assert_eq!(
            judge_models(Some(500), listed, "m"),
            Outcome::NotReady("models: status 500".into())
        );
        assert!(matches!(judge_models(None, b"", "m"), Outcome::NotReady(_)));
    }

    #[test]
    fn loader_states() {
        assert_eq!(
            judge_loader(Some(200), br#"{"state":"ready","revision":"r1"}"#),
            Outcome::Pass
        );
        assert_eq!(judge_loader(Some(200), b""), Outcome::Pass);
        assert_eq!(
            judge_loader(Some(503), br#"{"state":"draining","revision":"r1"}"#),
            Outcome::Draining("loader: draining (revision r1)".into())
        );
        assert_eq!(
            judge_loader(Some(503), br#"{"state":"updating"}"#),
            Outcome::Draining("loader: updating".into())
        );
        assert_eq!(
            judge_loader(Some(503), br#"{"state":"loading"}"#),
            Outcome::NotReady("loader: loading (status 503)".into())
        );
        assert_eq!(
            judge_loader(Some(503), b"nope"),
            Outcome::NotReady("loader: status 503".into())
        );
        assert!(matches!(judge_loader(None, b""), Outcome::NotReady(_)));
        // A "ready" body with a failing status is not trusted.
        assert!(matches!(
            judge_loader(Some(500), br#"{"state":"ready"}"#),
            Outcome::NotReady(_)
        ));
    }

    #[test]
    fn round_combines_checks() {
        let mut r = Round::new(true);
        r.record(Check::Health, Outcome::Pass);
        r.record(Check::Models, Outcome::Pass);
        assert!(!r.is_complete());
        r.record(Check::Loader, Outcome::Pass);
        assert!(r.is_complete());
        r.set_health_latency(7);
        let s = r.snapshot("m", 1000, 4);
        assert_eq!(
            (s.status, s.reason.as_str(), s.seq, s.checked_at_ms),
            (ReadinessStatus::Ready, "", 4, 1000)
        );
        assert_eq!(s.health_latency_ms, Some(7));

        let mut r = Round::new(true);
        r.record(
            Check::Health,
            Outcome::NotReady("health: status 503".into()),
        );
        r.record(
            Check::Models,
            Outcome::NotReady("models: `m` is not listed yet".into()),
        );
        r.record(Check::Loader, Outcome::Draining("loader: draining".into()));
        let s = r.snapshot("m", 1, 1);
        assert_eq!(
            (s.status, s.reason.as_str()),
            (ReadinessStatus::Draining, "loader: draining")
        );

        let mut r = Round::new(false);
        r.record(
            Check::Models,
            Outcome::NotReady("models: `m` is not listed yet".into()),
        );
        r.record(Check::Health, Outcome::Pass);
        assert!(r.is_complete());
        let s = r.snapshot("m", 1, 1);
        assert_eq!(
            (s.status, s.reason.as_str()),
            (ReadinessStatus::NotReady, "models: `m` is not listed yet")
        );
    }

    #[test]
    fn transitions_are_reported_once() {
        let not_ready = ReadinessSnapshot {
            status: ReadinessStatus::NotReady,
            reason: "health: status 503".into(),
            model: "m".into(),
            ..Default::default()
        };
        let msg = transition_message(None, &not_ready).unwrap();
        assert_eq!(
            msg,
            "readiness of model `m`: unknown -> not_ready (health: status 503)"
        );
        let again = ReadinessSnapshot {
            seq: 2,
            checked_at_ms: 99,
            ..not_ready.clone()
        };
        assert_eq!(transition_message(Some(&not_ready), &again), None);
        let ready = ReadinessSnapshot {
            status: ReadinessStatus::Ready,
            reason: String::new(),
            ..not_ready.clone()
        };
        assert_eq!(
            transition_message(Some(&again), &ready).unwrap(),
            "readiness of model `m`: not_ready -> ready"
        );
    }

    #[test]
    fn stale_or_missing_snapshot_is_not_ready() {
        assert_eq!(verdict(None, 5, 3000).status, ReadinessStatus::Unknown);
        let s = ReadinessSnapshot {
            status: ReadinessStatus::Ready,
            checked_at_ms: 10_000,
            ..Default::default()
        };
        assert_eq!(
            verdict(Some(&s), 13_000, 3000).status,
            ReadinessStatus::Ready
        );
        let old = verdict(Some(&s), 13_001, 3000);
        assert_eq!((old.status, old.stale), (ReadinessStatus::NotReady, true));
        assert_eq!(
            old,
            verdict(Some(&s), 20_000, 3000),
            "stale verdicts compare equal as time passes"
        );
        // A clock behind the snapshot's (another VM wrote it a moment later) is fresh.
        assert_eq!(
            verdict(Some(&s), 9_000, 3000).status,
            ReadinessStatus::Ready
        );
    }

    #[test]
    fn gate_state_answers() {
        let c = cfg(r#"{"model":"m","retry_after":"2s"}"#);
        let ready = GateState::new(
            verdict(
                Some(&ReadinessSnapshot {
                    status: ReadinessStatus::Ready,
                    checked_at_ms: 1,
                    ..Default::default()
                }),
                1,
                3000,
            ),
            &c,
        );
        assert!(ready.is_ready());
        assert_eq!(ready.probe_status, 200);
        let body: serde_json::Value = serde_json::from_slice(&ready.probe_body).unwrap();
        assert_eq!(body["status"], "ready");

        let unknown = GateState::new(verdict(None, 1, 3000), &c);
        let e = unknown.rejection.clone().unwrap();
        assert_eq!(
            (e.status, e.code, e.retry_after_s),
            (503, "model_not_ready", Some(2))
        );
        assert_eq!(unknown.probe_status, 503);
        let body: serde_json::Value = serde_json::from_slice(&unknown.probe_body).unwrap();
        assert_eq!(body["status"], "unknown");
        assert_eq!(body["reason"], "no readiness check has completed yet");

        let draining = Verdict {
            status: ReadinessStatus::Draining,
            reason: "loader: draining".into(),
            stale: false,
        };
        let d = GateState::new(draining, &c);
        assert_eq!(d.rejection.unwrap().code, "model_draining");
        assert_eq!(d.gated_reason, "draining");
        assert_eq!(unknown.gated_reason, "unknown");
        let stale = GateState::new(
            verdict(
                Some(&ReadinessSnapshot {
                    status: ReadinessStatus::Ready,
                    ..Default::default()
                }),
                10_000,
                3000,
            ),
            &c,
        );
        assert_eq!((stale.is_ready(), stale.gated_reason), (false, "stale"));
        assert_eq!(d.probe_status, 503);
    }
}
