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
        write!(f, "invalid configuration: field `{}`: {}", self.field, self.message)
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
    let value: f64 = num
        .trim()
        .parse()
        .map_err(|_| ConfigError::new(field, format!("`{text}` is not a duration like \"500ms\", \"5s\" or \"2m\"")))?;
    if !value.is_finite() || value < 0.0 {
        return Err(ConfigError::new(field, format!("`{text}` must be a non-negative duration")));
    }
    Ok((value * mult as f64).round() as u64)
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
