//! Configuration errors that name the offending field, shared by every filter.

use std::fmt;

/// A rejected plugin configuration: which field, and what was wrong with it.
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

/// Parses a plugin configuration (JSON) into `T`; serde's message names the field
/// (e.g. "unknown field `x`, expected one of ...") and we extract the path when we can.
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ConfigError> {
    let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        bytes
    };
    serde_json::from_slice(bytes).map_err(|e| {
        let msg = e.to_string();
        let field = field_from_serde_message(&msg).unwrap_or_else(|| "<root>".to_string());
        ConfigError::new(field, msg)
    })
}

/// serde names fields as "unknown field `x`", "missing field `x`", "invalid type ... for key `x`".
fn field_from_serde_message(msg: &str) -> Option<String> {
    let start = msg.find('`')? + 1;
    let rest = msg.get(start..)?;
    let end = rest.find('`')?;
    let name = rest.get(..end)?;
    let known = msg.starts_with("unknown field") || msg.starts_with("missing field");
    known.then(|| name.to_string())
}

/// Parses durations written as "250ms", "5s", "2m" or a bare number of milliseconds.
pub fn parse_duration_ms(field: &str, text: &str) -> Result<u64, ConfigError> {
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
    let value: f64 = num.trim().parse().map_err(|_| {
        ConfigError::new(
            field,
            format!("`{text}` is not a duration like \"500ms\", \"5s\" or \"2m\""),
        )
    })?;
    if !value.is_finite() || value < 0.0 {
        return Err(ConfigError::new(
            field,
            format!("`{text}` must be a non-negative duration"),
        ));
    }
    Ok((value * mult as f64).round() as u64)
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

/// An absolute request path (`/...`, no whitespace), as used for polls and probes.
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
        assert_eq!(parse_duration_ms("f", "250ms").unwrap(), 250);
        assert_eq!(parse_duration_ms("f", "2s").unwrap(), 2000);
        assert_eq!(parse_duration_ms("f", "0.5s").unwrap(), 500);
        assert_eq!(parse_duration_ms("f", "1m").unwrap(), 60_000);
        assert_eq!(parse_duration_ms("f", "40").unwrap(), 40);
        assert_eq!(parse_duration_ms("f", "x").unwrap_err().field, "f");
        assert!(parse_duration_ms("f", "-1s").is_err());
    }
}
