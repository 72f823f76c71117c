//! The metrics filter's configuration (docs/ml-metrics.md).

use serde::Deserialize;

use super::names::{label_byte_ok, MAX_MODEL_LEN, NONE, OTHER};
use crate::config::{ms_or, validate_path, ConfigError, DurationMs, FilterConfig, FilterKind};
use crate::scrape::{ScrapeConfig, ScrapeConfigJson};

/// The plugin configuration as written (JSON); see docs/ml-metrics.md.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfigJson {
    /// Model names kept as label values (served names and aliases); others become "other".
    #[serde(default)]
    pub models: Vec<String>,
    /// `model_name` of the pod-level metrics; default: the readiness gate's model.
    #[serde(default)]
    pub model_name: Option<String>,
    /// Path prefixes of the inference requests to count (POST only); default `["/v1/"]`.
    #[serde(default)]
    pub paths: Option<Vec<String>>,
    /// How often the pod-level metrics are refreshed from shared data; default "1s".
    #[serde(default)]
    pub tick_period: Option<DurationMs>,
    /// Distinct `reason` / `type` values kept per metric before "other"; default 16.
    #[serde(default)]
    pub max_reasons: Option<usize>,
    /// Scraper configuration (the shared scraper of `modelgate_glue::scraper`).
    #[serde(default)]
    pub scrape: Option<ScrapeConfigJson>,
    /// Take `model_name` from `x-modelgate-model`. Only where the router in this proxy sets
    /// it (the gateway); a sidecar's clients could send any value. Default false: the
    /// requested model.
    #[serde(default)]
    pub trust_model_header: bool,
}

/// The validated metrics filter configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    pub models: Vec<String>,
    pub model_name: Option<String>,
    pub paths: Vec<String>,
    pub tick_period_ms: u64,
    pub max_reasons: usize,
    /// The shared scraper's configuration, when this filter runs one.
    pub scrape: Option<ScrapeConfig>,
    pub trust_model_header: bool,
}

impl FilterConfig for MetricsConfig {
    const KIND: FilterKind = FilterKind::MlMetrics;
    type Json = MetricsConfigJson;

    fn validate(raw: MetricsConfigJson) -> Result<Self, ConfigError> {
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
            validate_path(&format!("paths[{i}]"), p)?;
        }
        let tick_period_ms = ms_or(raw.tick_period, 1000);
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
        let scrape = raw
            .scrape
            .as_ref()
            .map(|s| ScrapeConfig::validate(s, "scrape"))
            .transpose()?;
        Ok(Self {
            models,
            model_name: raw.model_name,
            paths,
            tick_period_ms,
            max_reasons,
            scrape,
            trust_model_header: raw.trust_model_header,
        })
    }
}

impl MetricsConfig {
    /// True when a request with this method and path is an inference request to count.
    /// Matches the normalised path, as the readiness gate does.
    pub fn counts(&self, method: &str, path: impl AsRef<[u8]>) -> bool {
        if !method.eq_ignore_ascii_case("POST") {
            return false;
        }
        let path = crate::path::normalize(path.as_ref());
        self.paths.iter().any(|p| path.starts_with(p.as_bytes()))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> MetricsConfig {
        MetricsConfig::parse(json.as_bytes()).unwrap()
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
        assert_eq!(err(r#"{"models":"llama"}"#), "models");
        assert_eq!(err(r#"{"tick_period":5}"#), "tick_period");
    }

    #[test]
    fn path_tricks_are_counted_like_the_plain_path() {
        let c = config("{}");
        assert!(c.counts("POST", "//v1/chat/completions"));
        assert!(c.counts("POST", "/%76%31/chat/completions"));
        assert!(c.counts("POST", b"/x/../v1/completions"));
        assert!(!c.counts("POST", "/v1/../health"));
    }

    #[test]
    fn scrape_block_is_validated_with_the_filter_config() {
        let c = config(r#"{"scrape":{"cluster":"model_server","period":"100ms"}}"#);
        let s = c.scrape.unwrap();
        assert_eq!(
            (s.upstream.cluster.as_str(), s.period_ms),
            ("model_server", 100)
        );
        let err = |j: &str| MetricsConfig::parse(j.as_bytes()).unwrap_err().field;
        assert_eq!(
            err(r#"{"scrape":{"cluster":"m","perod":"1s"}}"#),
            "scrape.perod"
        );
        assert_eq!(
            err(r#"{"scrape":{"cluster":"m","period":"1h"}}"#),
            "scrape.period"
        );
        assert_eq!(err(r#"{"scrape":{}}"#), "scrape.cluster");
    }
}
