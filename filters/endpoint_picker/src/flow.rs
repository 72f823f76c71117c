//! Flow control at the gateway: the picker's stats of held requests (counted per VM in
//! core's `FlowCounts`, flushed on the tick) and the state of each held stream. The queue
//! itself is `modelgate_core::flow::FlowQueue`, one per pool.

use modelgate_core::metrics::{MetricHost, MetricKind};
use modelgate_core::picker::Prefix;
use modelgate_core::shed_monitor::{add_share, FlowCounts, FlowOutcome, FLOW_BANDS};
use modelgate_glue::stats::EnvoyStats;

const OUTCOMES: usize = FlowOutcome::ALL.len();

/// Where a held request stands; the root context moves it on, its HTTP context reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldState {
    Held,
    /// Resumed towards the pod with this key (counted in its in-flight).
    Released(u64),
    /// Answered locally (expired, or displaced by a higher band).
    Refused,
}

/// One held stream: what its release needs to pick again.
#[derive(Debug, Clone, Copy)]
pub struct Hold {
    pub pool: usize,
    pub prefix: Option<Prefix>,
    pub state: HoldState,
}

/// Stat ids of one pool's flow control.
pub struct FlowMetrics {
    outcomes: [[Option<u32>; 2]; OUTCOMES],
    waits: [Option<u32>; 2],
    /// (gauge id, this VM's share as last added): every worker VM adds its own.
    queued: [(Option<u32>, u64); 2],
}

impl FlowMetrics {
    pub fn define(model: &str) -> Self {
        let def =
            |kind, metric, labels: &[(&str, &str)]| EnvoyStats.define_labeled(kind, metric, labels);
        let mut m = Self {
            outcomes: [[None; 2]; OUTCOMES],
            waits: [None; 2],
            queued: [(None, 0); 2],
        };
        for (b, class) in FLOW_BANDS.iter().enumerate() {
            let labels = [("model_name", model), ("criticality", class.as_str())];
            for (o, outcome) in FlowOutcome::ALL.iter().enumerate() {
                if let Some(slot) = m.outcomes.get_mut(o).and_then(|r| r.get_mut(b)) {
                    *slot = def(
                        MetricKind::Counter,
                        "ml_picker_flow_requests_total",
                        &[labels[0], labels[1], ("outcome", outcome.as_str())],
                    );
                }
            }
            if let Some(slot) = m.waits.get_mut(b) {
                *slot = def(
                    MetricKind::Histogram,
                    "ml_picker_flow_wait_milliseconds",
                    &labels,
                );
            }
            if let Some(slot) = m.queued.get_mut(b) {
                slot.0 = def(MetricKind::Gauge, "ml_picker_flow_queued", &labels);
            }
        }
        m
    }

    /// Flushes `c` (and zeroes it); `held` is this VM's held requests per band.
    pub fn flush(&mut self, c: &mut FlowCounts, held: [u32; 2]) {
        c.flush(&mut EnvoyStats, &self.outcomes, &self.waits);
        for ((id, last), n) in self.queued.iter_mut().zip(held) {
            add_share(&mut EnvoyStats, *id, last, u64::from(n));
        }
    }
}

/// This VM's held requests of `q` per band, in the order of the stats.
pub fn held(q: &modelgate_core::flow::FlowQueue) -> [u32; 2] {
    FLOW_BANDS.map(|c| q.band_len(c))
}
