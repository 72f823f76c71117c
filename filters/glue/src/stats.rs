//! Envoy's stats (and log) behind `modelgate_core::metrics::MetricHost` and
//! `modelgate_core::shed_monitor::ShedHost`: the one way a filter defines and updates
//! stats, so its metric logic can live in core and be tested there against a mock.

use crate::types::{LogLevel, MetricType};
use modelgate_core::metrics::{MetricHost, MetricKind};
use modelgate_core::shed_monitor::{self, ShedHost};

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

impl ShedHost for EnvoyStats {
    fn log(&mut self, level: shed_monitor::LogLevel, msg: &str) {
        let level = match level {
            shed_monitor::LogLevel::Info => LogLevel::Info,
            shed_monitor::LogLevel::Warn => LogLevel::Warn,
        };
        crate::log(level, msg);
    }

    fn add_gauge(&mut self, id: u32, delta: i64) {
        let _ = host::add_to_metric(id, delta);
    }
}
