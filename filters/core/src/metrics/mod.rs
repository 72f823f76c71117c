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
