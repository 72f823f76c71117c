//! The chain module's configuration: several filters run, in order, in one Wasm module
//! (one context per request and one VM call per callback for all of them, instead of one
//! per filter), each with the configuration it accepts alone.

use serde::Deserialize;

use crate::config::{validate, ConfigError, FilterConfig, FilterKind};

/// The chain as written: `{"filters": [{"name": "ml_metrics", "config": {...}}, ...]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainJson {
    pub filters: Vec<StageJson>,
}

/// One filter of the chain: its module name and its own configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageJson {
    pub name: String,
    #[serde(default)]
    pub config: Option<serde_json::Value>,
}

/// The validated chain: each filter's kind and configuration bytes, in request order.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainConfig {
    pub stages: Vec<(FilterKind, Vec<u8>)>,
}

impl FilterConfig for ChainConfig {
    const KIND: FilterKind = FilterKind::Chain;
    type Json = ChainJson;

    fn validate(raw: ChainJson) -> Result<Self, ConfigError> {
        if raw.filters.is_empty() {
            return Err(ConfigError::new("filters", "names at least one filter"));
        }
        let mut stages: Vec<(FilterKind, Vec<u8>)> = Vec::with_capacity(raw.filters.len());
        let last = raw.filters.len() - 1;
        for (i, stage) in raw.filters.into_iter().enumerate() {
            let kind = FilterKind::from_name(&stage.name)
                .filter(|k| *k != FilterKind::Chain)
                .ok_or_else(|| {
                    let names: Vec<&str> = FilterKind::ALL
                        .iter()
                        .filter(|k| **k != FilterKind::Chain)
                        .map(|k| k.name())
                        .collect();
                    ConfigError::new(
                        format!("filters[{i}].name"),
                        format!("`{}` is not one of {}", stage.name, names.join(", ")),
                    )
                })?;
            if stages.iter().any(|(k, _)| *k == kind) {
                return Err(ConfigError::new(
                    format!("filters[{i}].name"),
                    format!("`{}` is already in the chain", stage.name),
                ));
            }
            let bytes = stage
                .config
                .map(|v| v.to_string().into_bytes())
                .unwrap_or_default();
            let in_stage = |e: ConfigError| {
                let field = match e.field.as_str() {
                    "<root>" => format!("filters[{i}].config"),
                    f => format!("filters[{i}].config.{f}"),
                };
                ConfigError::new(field, e.message)
            };
            validate(kind, &bytes).map_err(in_stage)?;
            // A request held by flow control is resumed later by the host, which continues
            // with the next Envoy filter: no filter of the chain may come after it.
            if i != last && holds_requests(kind, &bytes) {
                return Err(ConfigError::new(
                    format!("filters[{i}]"),
                    format!(
                        "`{}` with `flow` holds requests, so it must be the last filter of the chain",
                        stage.name
                    ),
                ));
            }
            stages.push((kind, bytes));
        }
        Ok(Self { stages })
    }
}

/// Whether a (valid) configuration of `kind` may hold a request and resume it later.
fn holds_requests(kind: FilterKind, bytes: &[u8]) -> bool {
    match kind {
        FilterKind::LoadShedder => crate::shed::ShedConfig::parse(bytes)
            .map(|c| c.flow.is_some())
            .unwrap_or(false),
        FilterKind::EndpointPicker => crate::picker::PickerConfig::parse(bytes)
            .map(|c| c.flow.is_some())
            .unwrap_or(false),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> ConfigError {
        ChainConfig::parse(json.as_bytes()).expect_err(json)
    }

    #[test]
    fn stages_keep_their_order_and_their_own_configuration() {
        let c = ChainConfig::parse(
            br#"{"filters": [{"name": "ml_metrics", "config": {"models": ["m"]}},
                             {"name": "model_router", "config": {"models": [{"name": "m"}]}}]}"#,
        )
        .unwrap();
        let kinds: Vec<FilterKind> = c.stages.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, [FilterKind::MlMetrics, FilterKind::ModelRouter]);
        assert_eq!(c.stages[0].1, br#"{"models":["m"]}"#);
    }

    #[test]
    fn errors_name_the_stage_and_its_field() {
        assert_eq!(err(r#"{"filters": []}"#).field, "filters");
        assert_eq!(
            err(r#"{"filters": [{"name": "router"}]}"#).field,
            "filters[0].name"
        );
        assert_eq!(
            err(r#"{"filters": [{"name": "chain"}]}"#).field,
            "filters[0].name"
        );
        let twice = r#"{"filters": [{"name": "ml_metrics"}, {"name": "ml_metrics"}]}"#;
        assert_eq!(err(twice).field, "filters[1].name");
        let bad = r#"{"filters": [{"name": "ml_metrics"},
                                  {"name": "model_router", "config": {"models": [{"name": "m", "bogus": 1}]}}]}"#;
        assert_eq!(err(bad).field, "filters[1].config.models[0].bogus");
        assert_eq!(err(r#"{"filters": [], "x": 1}"#).field, "x");
    }

    #[test]
    fn a_filter_that_holds_requests_must_be_last() {
        let shed = r#"{"name": "load_shedder", "config": {"flow": {}}}"#;
        let gate =
            r#"{"name": "readiness_gate", "config": {"model": "m", "health": {"cluster": "c"}}}"#;
        let e = err(&format!(r#"{{"filters": [{shed}, {gate}]}}"#));
        assert_eq!(e.field, "filters[0]");
        assert!(
            ChainConfig::parse(format!(r#"{{"filters": [{gate}, {shed}]}}"#).as_bytes()).is_ok()
        );
        // Without `flow` it never holds, so it may come first.
        let plain =
            r#"{"name": "load_shedder", "config": {"gateway": {"utilization_threshold": 0.8}}}"#;
        assert!(
            ChainConfig::parse(format!(r#"{{"filters": [{plain}, {gate}]}}"#).as_bytes()).is_ok()
        );
    }
}
