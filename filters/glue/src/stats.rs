//! Envoy's stats behind `modelgate_core::metrics::MetricHost`, so a filter's metric logic
//! lives in core and is tested there against a mock.

use modelgate_core::metrics::{MetricHost, MetricKind};
use proxy_wasm::types::{LogLevel, MetricType};

use crate::host;

/// The proxy's stats (every call may fail; a failure loses a sample, never traps).
pub struct EnvoyStats;

impl MetricHost for EnvoyStats {
    fn define(&mut self, kind: MetricKind, name: &str) -> Option<u32> {
        let t = match kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
            MetricKind::Histogram => MetricType::Histogram,
        };
        match host::define_metric(t, name) {
            Ok(id) => Some(id),
            Err(e) => {
                crate::log(LogLevel::Warn, &format!("cannot define stat {name}: {e:?}"));
                None
            }
        }
    }

    fn increment(&mut self, id: u32, delta: u64) {
        let _ = host::increment_metric(id, delta);
    }

    fn set_gauge(&mut self, id: u32, value: u64) {
        let _ = host::record_metric(id, value);
    }

    fn record(&mut self, id: u32, value: u64) {
        let _ = host::record_metric(id, value);
    }
}
