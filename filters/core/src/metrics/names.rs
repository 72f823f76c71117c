//! Metric names, label names, buckets and the label encoding Envoy's tag extraction reads.

/// Longest label value written (longer model names are cut).
pub(super) const MAX_MODEL_LEN: usize = 128;

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
pub(super) fn label_byte_ok(b: u8) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
