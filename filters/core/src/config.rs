//! The one configuration pipeline of every filter: the plugin configuration's bytes are
//! parsed into a serde struct with `deny_unknown_fields` ([`FilterConfig::Json`]) and then
//! validated into the filter's domain type ([`FilterConfig::validate`]). Every error is a
//! [`ConfigError`] that names the JSON path of the bad field (`models[1].targets[0].weight`),
//! whether serde or the validation found it. [`validate`] is the entry point for tools that
//! check a configuration without a proxy (`modelgate check`).
//!
//! Also the value types every config shares: [`DurationMs`] (`"500ms"`, `"5s"`, `"2m"`),
//! [`UpstreamJson`] → [`Upstream`], and the one request-path check, [`validate_path`].

use std::fmt;

use serde::de::{self, DeserializeOwned, Deserializer};
use serde::Deserialize;

/// A rejected plugin configuration: which field (its JSON path), and what was wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid configuration: field `{}`: {}",
            self.field, self.message
        )
    }
}

impl std::error::Error for ConfigError {}

/// A filter's configuration: how it is written ([`Self::Json`]) and how it is validated.
pub trait FilterConfig: Sized {
    /// The filter this configures.
    const KIND: FilterKind;
    /// The configuration as written: a serde struct with `deny_unknown_fields`.
    type Json: DeserializeOwned;

    /// Checks `raw` and builds the domain type; errors name the field's JSON path.
    fn validate(raw: Self::Json) -> Result<Self, ConfigError>;

    /// Parses and validates the plugin configuration (empty means `{}`).
    fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        Self::validate(parse_json(bytes)?)
    }
}

/// The modelgate filters, by the name of their `.wasm` module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterKind {
    ReadinessGate,
    ModelRouter,
    LoadShedder,
    MlMetrics,
    EndpointPicker,
    /// Several of the above in one module (`chain`).
    Chain,
}

impl FilterKind {
    pub const ALL: [FilterKind; 6] = [
        Self::ReadinessGate,
        Self::ModelRouter,
        Self::LoadShedder,
        Self::MlMetrics,
        Self::EndpointPicker,
        Self::Chain,
    ];

    /// The module name: `readiness_gate`, `model_router`, `load_shedder`, `ml_metrics`,
    /// `endpoint_picker`, `chain`.
    pub fn name(self) -> &'static str {
        match self {
            Self::ReadinessGate => "readiness_gate",
            Self::ModelRouter => "model_router",
            Self::LoadShedder => "load_shedder",
            Self::MlMetrics => "ml_metrics",
            Self::EndpointPicker => "endpoint_picker",
            Self::Chain => "chain",
        }
    }

    /// The filter named `name` (as [`Self::name`] writes it).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Checks a configuration of filter `kind` exactly as the filter's `on_configure` does.
pub fn validate(kind: FilterKind, bytes: &[u8]) -> Result<(), ConfigError> {
    match kind {
        FilterKind::ReadinessGate => crate::readiness::ReadinessConfig::parse(bytes).map(drop),
        FilterKind::ModelRouter => crate::router::Router::parse(bytes).map(drop),
        FilterKind::LoadShedder => crate::shed::ShedConfig::parse(bytes).map(drop),
        FilterKind::MlMetrics => crate::metrics::MetricsConfig::parse(bytes).map(drop),
        FilterKind::EndpointPicker => crate::picker::PickerConfig::parse(bytes).map(drop),
        FilterKind::Chain => crate::chain::ChainConfig::parse(bytes).map(drop),
    }
}

/// Parses JSON into `T` (blank input reads as `{}`); the error's field is the JSON path
/// serde was at, for every kind of error (unknown or missing field, wrong type, bad value).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ConfigError> {
    let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        bytes
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let message = e.inner().to_string();
        ConfigError::new(json_path(&e.path().to_string(), &message), message)
    })?;
    // Trailing bytes after the document.
    de.end()
        .map_err(|e| ConfigError::new("<root>", e.to_string()))?;
    Ok(value)
}

/// The field an error is about: serde's path, plus the field a "missing field `x`" or
/// "unknown field `x`" message names when the path stops at its parent.
fn json_path(path: &str, message: &str) -> String {
    let path = if path == "." { "" } else { path };
    let named = ["missing field `", "unknown field `"]
        .iter()
        .find_map(|p| message.strip_prefix(p))
        .and_then(|rest| rest.split('`').next());
    match named {
        Some(name) if path.is_empty() => name.to_string(),
        Some(name) if !path.ends_with(name) => format!("{path}.{name}"),
        _ if path.is_empty() => "<root>".to_string(),
        _ => path.to_string(),
    }
}

/// A duration as written in a configuration: `"250ms"`, `"5s"`, `"0.5s"`, `"2m"`, or a
/// bare number of milliseconds as a string (`"40"`). Never negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct DurationMs(pub u64);

impl DurationMs {
    pub fn ms(self) -> u64 {
        self.0
    }

    /// The text's duration; the error is the message a config error carries.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let (num, mult) = if let Some(n) = t.strip_suffix("ms") {
            (n, 1)
        } else if let Some(n) = t.strip_suffix('s') {
            (n, 1000)
        } else if let Some(n) = t.strip_suffix('m') {
            (n, 60_000)
        } else {
            (t, 1)
        };
        let value: f64 = num
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not a duration like \"500ms\", \"5s\" or \"2m\""))?;
        if !value.is_finite() || value < 0.0 {
            return Err(format!("`{text}` must be a non-negative duration"));
        }
        Ok(Self((value * mult as f64).round() as u64))
    }
}

impl<'de> Deserialize<'de> for DurationMs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(de::Error::custom)
    }
}

/// `Some(ms)` of an optional duration, or `default_ms`.
pub fn ms_or(d: Option<DurationMs>, default_ms: u64) -> u64 {
    d.map_or(default_ms, DurationMs::ms)
}

/// An upstream to poll as written in a config: `{"cluster":..,"path":..,"authority":..}`.
#[derive(serde::Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct UpstreamJson {
    pub cluster: String,
    pub path: Option<String>,
    pub authority: Option<String>,
}

/// A validated poll target: `GET <path>` on Envoy cluster `cluster` with `:authority`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub cluster: String,
    pub authority: String,
    pub path: String,
}

impl UpstreamJson {
    /// Validates into an [`Upstream`]; `field` prefixes the names in errors (`health.path`).
    pub fn validate(&self, field: &str, default_path: &str) -> Result<Upstream, ConfigError> {
        let cluster = self.cluster.trim();
        if cluster.is_empty() {
            return Err(ConfigError::new(
                format!("{field}.cluster"),
                "must name an Envoy cluster",
            ));
        }
        let path = self.path.as_deref().unwrap_or(default_path);
        let path = validate_path(&format!("{field}.path"), path)?;
        let authority = match self.authority.as_deref().map(str::trim) {
            None => cluster.to_string(),
            Some("") => {
                return Err(ConfigError::new(
                    format!("{field}.authority"),
                    "must not be empty",
                ))
            }
            Some(a) => a.to_string(),
        };
        Ok(Upstream {
            cluster: cluster.to_string(),
            authority,
            path,
        })
    }
}

/// The one check of a configured request path or path prefix: absolute (`/...`) and without
/// whitespace. Used for polls, probes, gated prefixes, counted and routed paths.
pub fn validate_path(field: &str, path: &str) -> Result<String, ConfigError> {
    if !path.starts_with('/') || path.chars().any(char::is_whitespace) {
        return Err(ConfigError::new(
            field,
            format!("`{path}` must be an absolute path like \"/health\""),
        ));
    }
    Ok(path.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Cfg {
        period: String,
        #[serde(default)]
        every: Option<DurationMs>,
        #[serde(default)]
        inner: Option<Inner>,
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        list: Vec<u32>,
    }

    #[test]
    fn unknown_field_is_named() {
        let err = parse_json::<Cfg>(br#"{"period":"1s","bogus":1}"#).unwrap_err();
        assert_eq!(err.field, "bogus");
    }

    #[test]
    fn missing_field_is_named() {
        let err = parse_json::<Cfg>(b"{}").unwrap_err();
        assert_eq!(err.field, "period");
    }

    #[test]
    fn type_errors_and_bad_values_are_named_by_their_json_path() {
        let err = |j: &str| parse_json::<Cfg>(j.as_bytes()).unwrap_err();
        // A wrong type used to be reported as `<root>`.
        assert_eq!(err(r#"{"period":5}"#).field, "period");
        assert_eq!(err(r#"{"period":"1s","every":"soon"}"#).field, "every");
        assert!(err(r#"{"period":"1s","every":"soon"}"#)
            .message
            .starts_with("`soon` is not a duration"));
        assert_eq!(
            err(r#"{"period":"1s","inner":{"list":[1,"x"]}}"#).field,
            "inner.list[1]"
        );
        assert_eq!(
            err(r#"{"period":"1s","inner":{"lst":[]}}"#).field,
            "inner.lst"
        );
        assert_eq!(err(r#"{"period":"1s","inner":{}}"#).field, "inner.list");
        assert_eq!(err("not json").field, "<root>");
        assert_eq!(err(r#"{"period":"1s"} x"#).field, "<root>");
        assert_eq!(err("[]").field, "<root>");
    }

    #[test]
    fn blank_config_reads_as_an_empty_object() {
        assert_eq!(parse_json::<Cfg>(b" \n").unwrap_err().field, "period");
    }

    #[test]
    fn filter_kinds_round_trip_their_names() {
        for k in FilterKind::ALL {
            assert_eq!(FilterKind::from_name(k.name()), Some(k));
        }
        assert_eq!(FilterKind::from_name("router"), None);
    }

    #[test]
    fn validate_checks_each_filter_kind_with_its_own_pipeline() {
        let model = br#"{"model":"m"}"#;
        assert!(validate(FilterKind::ReadinessGate, model).is_ok());
        assert_eq!(
            validate(FilterKind::MlMetrics, model).unwrap_err().field,
            "model"
        );
        assert_eq!(
            validate(FilterKind::ModelRouter, b"{}").unwrap_err().field,
            "models"
        );
        assert!(validate(FilterKind::ModelRouter, br#"{"models":[{"name":"m"}]}"#).is_ok());
        assert_eq!(
            validate(FilterKind::LoadShedder, b"{}").unwrap_err().field,
            "scrape"
        );
        assert!(validate(FilterKind::MlMetrics, b"{}").is_ok());
    }

    #[test]
    fn upstreams_default_and_name_fields() {
        let u = UpstreamJson {
            cluster: "model_server".into(),
            ..Default::default()
        };
        let v = u.validate("health", "/health").unwrap();
        assert_eq!(
            (v.cluster.as_str(), v.authority.as_str(), v.path.as_str()),
            ("model_server", "model_server", "/health")
        );
        let bad = UpstreamJson {
            cluster: "c".into(),
            path: Some("health".into()),
            ..Default::default()
        };
        assert_eq!(
            bad.validate("loader", "/ready").unwrap_err().field,
            "loader.path"
        );
        assert_eq!(
            UpstreamJson::default()
                .validate("loader", "/ready")
                .unwrap_err()
                .field,
            "loader.cluster"
        );
    }

    #[test]
    fn durations() {
        let ms = |t: &str| DurationMs::parse(t).map(DurationMs::ms);
        assert_eq!(ms("250ms").unwrap(), 250);
        assert_eq!(ms("2s").unwrap(), 2000);
        assert_eq!(ms("0.5s").unwrap(), 500);
        assert_eq!(ms("1m").unwrap(), 60_000);
        assert_eq!(ms("40").unwrap(), 40);
        assert_eq!(
            parse_json::<Cfg>(br#"{"period":"1s","every":"x"}"#)
                .unwrap_err()
                .field,
            "every"
        );
        assert!(ms("-1s").is_err());
        assert!(ms("NaNs").is_err());
    }
}
