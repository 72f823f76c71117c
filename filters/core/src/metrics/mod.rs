//! The one metrics registry of modelgate: metric names and label encoding, bounded label
//! values, the per-request observation, and the pod-level gauges fed from the shared
//! snapshots. The host (Envoy via proxy-wasm, or a mock in tests) sits behind
//! [`MetricHost`]; metric ids are defined lazily once per label combination and cached.
//!
//! Label encoding: the proxy-wasm ABI has no tags, so labels go into the stat name in Istio's
//! form, `<label>=.=<value>;.;` per label followed by the metric name. Envoy's
//! `stats_config.stats_tags` (see `envoy/stats-tags.yaml`, or Istio's `extraStatTags`) turns
//! each back into a tag with the regex `(<label>=\.=(.*?);\.;)`, leaving `wasmcustom.<name>`,
//! which `/stats/prometheus` prints as `<name>` with the labels.
//!
//! Units: Envoy histograms and gauges hold integers, so durations are recorded in
//! milliseconds (`*_milliseconds`) and the KV-cache fraction in parts per million; the
//! PrometheusRule in `istio/alerts.yaml` records the seconds/ratio names as well.
//!
//! Parts: `names` (metric and label names, encoding), `config` (the filter configuration),
//! `labels` (bounded label values), `tracker` (one request), `registry` (ids and recording),
//! `cursor` (exactly-once pod observations across VMs).

mod config;
mod cursor;
mod labels;
mod names;
mod registry;
mod tracker;

pub use config::{MetricsConfig, MetricsConfigJson};
pub use cursor::{Cursor, Fresh};
pub use labels::code_class;
pub use names::*;
pub use registry::{Registry, RequestOutcome};
pub use tracker::RequestTracker;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// What the registry needs from the proxy. Every call may fail; failures only lose a sample.
pub trait MetricHost {
    fn define(&mut self, kind: MetricKind, name: &str) -> Option<u32>;
    fn increment(&mut self, id: u32, delta: u64);
    fn set_gauge(&mut self, id: u32, value: u64);
    fn record(&mut self, id: u32, value: u64);

    /// Defines `metric` with `labels` encoded into its stat name ([`encode_stat_name`]).
    fn define_labeled(
        &mut self,
        kind: MetricKind,
        metric: &str,
        labels: &[(&str, &str)],
    ) -> Option<u32> {
        let mut name = String::with_capacity(128);
        encode_stat_name(&mut name, metric, labels);
        self.define(kind, &name)
    }

    /// Adds `n` to a counter that was defined (`Some`); nothing when `n` is 0.
    fn add(&mut self, id: Option<u32>, n: u64) {
        if let (Some(id), true) = (id, n > 0) {
            self.increment(id, n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what the trait's provided methods ask of the host.
    #[derive(Default)]
    struct Recorder {
        names: Vec<String>,
        increments: Vec<(u32, u64)>,
    }

    impl MetricHost for Recorder {
        fn define(&mut self, _kind: MetricKind, name: &str) -> Option<u32> {
            self.names.push(name.to_string());
            Some(self.names.len() as u32)
        }
        fn increment(&mut self, id: u32, delta: u64) {
            self.increments.push((id, delta));
        }
        fn set_gauge(&mut self, _id: u32, _value: u64) {}
        fn record(&mut self, _id: u32, _value: u64) {}
    }

    #[test]
    fn labels_go_into_the_stat_name_and_empty_or_undefined_adds_are_skipped() {
        let mut h = Recorder::default();
        let id = h.define_labeled(
            MetricKind::Counter,
            "ml_picker_picks_total",
            &[("model_name", "m"), ("pod", "10.0.0.1:8000")],
        );
        assert_eq!(
            h.names,
            ["model_name=.=m;.;pod=.=10.0.0.1:8000;.;ml_picker_picks_total"]
        );
        h.add(id, 3);
        h.add(id, 0);
        h.add(None, 5);
        assert_eq!(h.increments, [(1, 3)]);
    }
}
