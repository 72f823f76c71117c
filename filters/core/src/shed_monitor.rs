//! What the load shedder tells operators: its Envoy stats (defined once, counted per VM
//! without a host call per request, flushed on the tick) and its log lines on state
//! transitions (snapshot stale / fresh again, pool saturated / not, a shed summary every
//! 5 s). Behind [`ShedHost`], so the filter's glue only translates host calls.

use std::collections::BTreeMap;

use crate::flow::FlowQueue;
use crate::metrics::{encode_stat_name, MetricHost, MetricKind};
use crate::shed::{ServerView, ShedConfig, ShedReason};
use crate::shed_tables::PoolLoad;
use crate::vocab::Criticality;

/// Bands of flow control (critical is never held), in the order of their stats.
pub const FLOW_BANDS: [Criticality; 2] = [Criticality::Standard, Criticality::Sheddable];
/// Wait times kept between two ticks; more are dropped from the histogram (not counted
/// elsewhere: the counters still count every request).
const MAX_WAITS: usize = 4096;
/// Tenant label of the tenants past `flow.max_tenant_labels`.
const OTHER_TENANT: &str = "other";

/// What became of a request flow control held (or tried to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowOutcome {
    Held,
    Released,
    Expired,
    Abandoned,
    /// Not held: a bound was hit (or it was displaced by a higher band).
    Refused,
}

impl FlowOutcome {
    pub const ALL: [FlowOutcome; 5] = [
        Self::Held,
        Self::Released,
        Self::Expired,
        Self::Abandoned,
        Self::Refused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Released => "released",
            Self::Expired => "expired",
            Self::Abandoned => "abandoned",
            Self::Refused => "refused",
        }
    }
}

fn flow_band(class: Criticality) -> Option<usize> {
    FLOW_BANDS.iter().position(|b| *b == class)
}

const CLASSES: usize = Criticality::ALL.len();
const REASONS: usize = ShedReason::ALL.len();
/// Time between two "shed N requests" summaries while shedding.
const SUMMARY_MS: u64 = 5000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Info,
    Warn,
}

/// The proxy as the monitor needs it: stats and a log.
pub trait ShedHost: MetricHost {
    fn log(&mut self, level: LogLevel, msg: &str);
    /// Adds `delta` to a gauge (each worker VM adds its own share).
    fn add_gauge(&mut self, id: u32, delta: i64);
}

/// Decisions since the last flush, counted by the HTTP contexts of one VM.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ShedCounts {
    admitted: [u64; CLASSES],
    shed: [[u64; CLASSES]; REASONS],
    flow: FlowCounts,
}

/// Flow control's outcomes and waits since the last flush, per band (the load shedder's
/// and the endpoint picker's).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FlowCounts {
    outcomes: [[u64; 2]; FlowOutcome::ALL.len()],
    /// (band, milliseconds) of the requests that left the queue since the flush.
    waits: Vec<(usize, u64)>,
}

impl FlowCounts {
    pub fn count(&mut self, class: Criticality, outcome: FlowOutcome) {
        let o = FlowOutcome::ALL.iter().position(|x| *x == outcome);
        if let Some(n) = o
            .and_then(|o| self.outcomes.get_mut(o))
            .zip(flow_band(class))
            .and_then(|(row, b)| row.get_mut(b))
        {
            *n += 1;
        }
    }

    /// How long a request waited before it was released or expired.
    pub fn wait(&mut self, class: Criticality, ms: u64) {
        if let (Some(b), true) = (flow_band(class), self.waits.len() < MAX_WAITS) {
            self.waits.push((b, ms));
        }
    }

    /// Adds the counts to the stats `ids` (per outcome and band) and `waits` (histograms
    /// per band), and starts again from zero.
    pub fn flush<H: MetricHost>(
        &mut self,
        host: &mut H,
        ids: &[[Option<u32>; 2]; FlowOutcome::ALL.len()],
        waits: &[Option<u32>; 2],
    ) {
        for (ids, ns) in ids.iter().zip(self.outcomes.iter_mut()) {
            for (id, n) in ids.iter().zip(ns.iter_mut()) {
                host.add(*id, std::mem::take(n));
            }
        }
        for (b, ms) in self.waits.drain(..) {
            if let Some(Some(id)) = waits.get(b) {
                host.record(*id, ms);
            }
        }
    }
}

impl ShedCounts {
    pub fn admit(&mut self, class: Criticality) {
        if let Some(n) = self.admitted.get_mut(class.index()) {
            *n += 1;
        }
    }

    pub fn shed(&mut self, class: Criticality, reason: ShedReason) {
        if let Some(n) = self
            .shed
            .get_mut(reason.index())
            .and_then(|r| r.get_mut(class.index()))
        {
            *n += 1;
        }
    }

    pub fn flow(&mut self, class: Criticality, outcome: FlowOutcome) {
        self.flow.count(class, outcome);
    }

    /// How long a request waited before it was released or expired.
    pub fn wait(&mut self, class: Criticality, ms: u64) {
        self.flow.wait(class, ms);
    }

    fn total_shed(&self) -> u64 {
        self.shed.iter().flatten().sum()
    }
}

/// What one tick saw, for the gauges and the transition logs.
#[derive(Debug, Clone, Copy)]
pub struct TickState<'a> {
    pub now_ms: u64,
    pub server: ServerView,
    /// Age of the last successful scrape, when there was one.
    pub snapshot_age_ms: Option<u64>,
    /// Kind of the latest scrape failure, when the latest attempt failed.
    pub last_error: Option<&'a str>,
    /// The proxy's in-flight requests (all workers).
    pub in_flight: u32,
    /// Sidecar: the utilisation the ORCA report carries.
    pub utilization: Option<f64>,
    /// Gateway: each cluster's load.
    pub pool: &'a [PoolLoad],
    /// Flow control: this VM's held requests.
    pub flow: Option<&'a FlowQueue>,
}

/// Metric ids, defined once at configure time.
#[derive(Debug)]
struct Ids {
    admitted: [Option<u32>; CLASSES],
    shed: [[Option<u32>; CLASSES]; REASONS],
    in_flight: Option<u32>,
    stale: Option<u32>,
    snapshot_age: Option<u32>,
    utilization: Option<u32>,
    pool_utilization: Option<u32>,
    pool_saturated: Option<u32>,
}

/// Flow-control stat ids and what this VM last added to the gauges.
#[derive(Debug, Default)]
struct FlowIds {
    outcomes: [[Option<u32>; 2]; FlowOutcome::ALL.len()],
    waits: [Option<u32>; 2],
    queued: [(Option<u32>, u64); 2],
    /// Tenant label → (gauge id, this VM's share as last added).
    tenants: BTreeMap<String, (Option<u32>, u64)>,
    max_tenant_labels: usize,
}

/// One VM's stats and transition logs.
#[derive(Debug)]
pub struct ShedMonitor {
    ids: Ids,
    flow: Option<FlowIds>,
    started_ms: u64,
    was_stale: Option<bool>,
    warned_stale: bool,
    was_saturated: bool,
    last_summary_ms: u64,
    shed_since_summary: u64,
}

impl ShedMonitor {
    /// Defines every stat (one host call each, at configure time; a tenant's queue gauge
    /// when the tenant is first seen).
    pub fn new<H: MetricHost>(host: &mut H, cfg: &ShedConfig, now_ms: u64) -> Self {
        let mut name = String::new();
        let mut def = |kind: MetricKind, metric: &str, labels: &[(&str, &str)]| {
            encode_stat_name(&mut name, metric, labels);
            host.define(kind, &name)
        };
        let mut admitted = [None; CLASSES];
        let mut shed = [[None; CLASSES]; REASONS];
        for c in Criticality::ALL {
            if let Some(slot) = admitted.get_mut(c.index()) {
                *slot = def(
                    MetricKind::Counter,
                    "modelgate_shedder_admitted_total",
                    &[("criticality", c.as_str())],
                );
            }
            // Critical is never shed: no series for it.
            if c == Criticality::Critical {
                continue;
            }
            for r in ShedReason::ALL {
                if let Some(slot) = shed
                    .get_mut(r.index())
                    .and_then(|row| row.get_mut(c.index()))
                {
                    *slot = def(
                        MetricKind::Counter,
                        "modelgate_shedder_shed_total",
                        &[("criticality", c.as_str()), ("reason", r.as_str())],
                    );
                }
            }
        }
        let ids = Ids {
            admitted,
            shed,
            in_flight: def(MetricKind::Gauge, "modelgate_shedder_in_flight", &[]),
            stale: def(MetricKind::Gauge, "modelgate_shedder_snapshot_stale", &[]),
            snapshot_age: def(
                MetricKind::Gauge,
                "modelgate_shedder_snapshot_age_milliseconds",
                &[],
            ),
            utilization: def(MetricKind::Gauge, "modelgate_shedder_utilization_ppm", &[]),
            pool_utilization: def(
                MetricKind::Gauge,
                "modelgate_shedder_pool_utilization_ppm",
                &[],
            ),
            pool_saturated: def(MetricKind::Gauge, "modelgate_shedder_pool_saturated", &[]),
        };
        let flow = cfg.flow.as_ref().map(|f| {
            let mut ids = FlowIds {
                max_tenant_labels: f.max_tenant_labels,
                ..FlowIds::default()
            };
            for (b, class) in FLOW_BANDS.iter().enumerate() {
                let crit = ("criticality", class.as_str());
                for (o, outcome) in FlowOutcome::ALL.iter().enumerate() {
                    if let Some(slot) = ids.outcomes.get_mut(o).and_then(|r| r.get_mut(b)) {
                        *slot = def(
                            MetricKind::Counter,
                            "modelgate_shedder_flow_requests_total",
                            &[crit, ("outcome", outcome.as_str())],
                        );
                    }
                }
                if let Some(slot) = ids.waits.get_mut(b) {
                    *slot = def(
                        MetricKind::Histogram,
                        "modelgate_shedder_flow_wait_milliseconds",
                        &[crit],
                    );
                }
                if let Some(slot) = ids.queued.get_mut(b) {
                    slot.0 = def(MetricKind::Gauge, "modelgate_shedder_flow_queued", &[crit]);
                }
            }
            ids
        });
        Self {
            ids,
            flow,
            started_ms: now_ms,
            was_stale: None,
            warned_stale: false,
            was_saturated: false,
            last_summary_ms: now_ms,
            shed_since_summary: 0,
        }
    }

    /// Flushes `counts` (and zeroes them), sets the gauges, logs transitions.
    pub fn on_tick<H: ShedHost>(
        &mut self,
        host: &mut H,
        cfg: &ShedConfig,
        t: &TickState<'_>,
        counts: &mut ShedCounts,
    ) {
        self.shed_since_summary += counts.total_shed();
        self.flush(host, counts);
        self.flush_flow(host, counts, t.flow);
        gauge(host, self.ids.in_flight, u64::from(t.in_flight));
        if let Some(u) = t.utilization {
            gauge(host, self.ids.utilization, ppm(u));
        }
        if let Some(g) = &cfg.gateway {
            let max_avg = t.pool.iter().map(|l| l.average).fold(0.0, f64::max);
            let saturated = t.pool.iter().filter(|l| l.saturated).count();
            gauge(host, self.ids.pool_utilization, ppm(max_avg));
            gauge(host, self.ids.pool_saturated, saturated as u64);
            self.log_pool(host, g.utilization_threshold, t.pool, saturated > 0);
        }
        gauge(host, self.ids.snapshot_age, t.snapshot_age_ms.unwrap_or(0));
        if cfg.scrape.is_some() {
            self.log_staleness(host, cfg, t);
        }
        self.log_summary(host, t);
    }

    fn flush<H: MetricHost>(&self, host: &mut H, counts: &mut ShedCounts) {
        let mut add = |id: Option<u32>, n: &mut u64| {
            if let (Some(id), true) = (id, *n > 0) {
                host.increment(id, *n);
            }
            *n = 0;
        };
        for (id, n) in self.ids.admitted.iter().zip(counts.admitted.iter_mut()) {
            add(*id, n);
        }
        for (ids, ns) in self.ids.shed.iter().zip(counts.shed.iter_mut()) {
            for (id, n) in ids.iter().zip(ns.iter_mut()) {
                add(*id, n);
            }
        }
    }

    fn flush_flow<H: ShedHost>(
        &mut self,
        host: &mut H,
        counts: &mut ShedCounts,
        queue: Option<&FlowQueue>,
    ) {
        let Some(f) = self.flow.as_mut() else {
            counts.flow = FlowCounts::default();
            return;
        };
        counts.flow.flush(host, &f.outcomes, &f.waits);
        let Some(q) = queue else { return };
        for ((id, last), class) in f.queued.iter_mut().zip(FLOW_BANDS) {
            add_share(host, *id, last, u64::from(q.band_len(class)));
        }
        // This VM's held requests per tenant label (bounded: first tenants seen, then
        // `other`); tenants gone from the queue go back to 0.
        let mut now: BTreeMap<&str, u64> = BTreeMap::new();
        for (_, tenant, n) in q.tenants() {
            let label = if f.tenants.contains_key(tenant) || f.tenants.len() < f.max_tenant_labels {
                tenant
            } else {
                OTHER_TENANT
            };
            *now.entry(label).or_default() += u64::from(n);
        }
        for label in now.keys() {
            if !f.tenants.contains_key(*label) {
                let mut name = String::new();
                encode_stat_name(
                    &mut name,
                    "modelgate_shedder_flow_queued_by_tenant",
                    &[("tenant", &sanitize(label))],
                );
                let id = host.define(MetricKind::Gauge, &name);
                f.tenants.insert((*label).to_string(), (id, 0));
            }
        }
        for (label, (id, last)) in f.tenants.iter_mut() {
            let n = now.get(label.as_str()).copied().unwrap_or(0);
            add_share(host, *id, last, n);
        }
    }

    fn log_pool<H: ShedHost>(
        &mut self,
        host: &mut H,
        threshold: f64,
        pool: &[PoolLoad],
        saturated: bool,
    ) {
        if saturated == self.was_saturated {
            return;
        }
        self.was_saturated = saturated;
        let detail: Vec<String> = pool
            .iter()
            .map(|l| {
                format!(
                    "{}: {:.2} over {} hosts, {} saturated",
                    l.cluster, l.average, l.hosts, l.saturated_hosts
                )
            })
            .collect();
        let (level, what) = if saturated {
            (
                LogLevel::Warn,
                "pool saturated, shedding sheddable requests",
            )
        } else {
            (LogLevel::Info, "pool no longer saturated")
        };
        host.log(
            level,
            &format!(
                "load_shedder: {what} (threshold {threshold:.2}; {})",
                detail.join(", ")
            ),
        );
    }

    /// Warns when the snapshot goes stale, or stays stale past the first scrapes after
    /// start; tells when it recovers from a warned staleness.
    fn log_staleness<H: ShedHost>(&mut self, host: &mut H, cfg: &ShedConfig, t: &TickState<'_>) {
        let stale = t.server == ServerView::Stale;
        gauge(host, self.ids.stale, u64::from(stale));
        let started = t.now_ms.saturating_sub(self.started_ms) > cfg.stale_after_ms;
        if stale && !self.warned_stale && (self.was_stale == Some(false) || started) {
            self.warned_stale = true;
            host.log(
                LogLevel::Warn,
                &format!(
                    "load_shedder: queue snapshot is stale (last scrape error: {}); on_stale: {:?}",
                    t.last_error.unwrap_or("none"),
                    cfg.on_stale
                ),
            );
        } else if !stale && self.warned_stale {
            self.warned_stale = false;
            host.log(
                LogLevel::Info,
                "load_shedder: queue snapshot is fresh again",
            );
        }
        self.was_stale = Some(stale);
    }

    fn log_summary<H: ShedHost>(&mut self, host: &mut H, t: &TickState<'_>) {
        if self.shed_since_summary == 0 {
            self.last_summary_ms = t.now_ms;
            return;
        }
        let elapsed = t.now_ms.saturating_sub(self.last_summary_ms);
        if elapsed < SUMMARY_MS {
            return;
        }
        let load = match t.server {
            ServerView::Fresh { waiting, kv_cache } => {
                format!("waiting {waiting}, KV cache {kv_cache:.2}")
            }
            ServerView::Stale => "server load unknown".into(),
            ServerView::NotScraped => "no scrape".into(),
        };
        host.log(
            LogLevel::Info,
            &format!(
                "load_shedder: shed {} requests in the last {} s ({load})",
                self.shed_since_summary,
                elapsed / 1000
            ),
        );
        self.shed_since_summary = 0;
        self.last_summary_ms = t.now_ms;
    }
}

/// Moves this VM's share of a gauge summed over VMs from `*last` to `now`.
pub fn add_share<H: ShedHost>(host: &mut H, id: Option<u32>, last: &mut u64, now: u64) {
    if let (Some(id), true) = (id, now != *last) {
        let delta =
            i64::try_from(now).unwrap_or(i64::MAX) - i64::try_from(*last).unwrap_or(i64::MAX);
        host.add_gauge(id, delta);
    }
    *last = now;
}

/// A tenant name as a stat label value (the stats-tag regex stops at `;.;`).
fn sanitize(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                char::from(b)
            } else {
                '_'
            }
        })
        .collect()
}

fn gauge<H: MetricHost>(host: &mut H, id: Option<u32>, value: u64) {
    if let Some(id) = id {
        host.set_gauge(id, value);
    }
}

/// A 0..1 fraction as parts per million (Envoy stats are integers).
fn ppm(x: f64) -> u64 {
    if x.is_finite() {
        (x.max(0.0) * 1e6).round() as u64
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::FilterConfig;

    #[derive(Default)]
    struct MockHost {
        names: Vec<String>,
        counters: HashMap<u32, u64>,
        gauges: HashMap<u32, u64>,
        logs: Vec<(LogLevel, String)>,
    }

    impl MetricHost for MockHost {
        /// Like Envoy: one stat per name, whichever VM defines it.
        fn define(&mut self, _kind: MetricKind, name: &str) -> Option<u32> {
            if let Some(i) = self.names.iter().position(|n| n == name) {
                return Some(i as u32);
            }
            self.names.push(name.to_string());
            Some(self.names.len() as u32 - 1)
        }
        fn increment(&mut self, id: u32, delta: u64) {
            *self.counters.entry(id).or_default() += delta;
        }
        fn set_gauge(&mut self, id: u32, value: u64) {
            self.gauges.insert(id, value);
        }
        fn record(&mut self, _id: u32, _value: u64) {}
    }

    impl ShedHost for MockHost {
        fn log(&mut self, level: LogLevel, msg: &str) {
            self.logs.push((level, msg.to_string()));
        }
        fn add_gauge(&mut self, id: u32, delta: i64) {
            let g = self.gauges.entry(id).or_default();
            *g = g.checked_add_signed(delta).unwrap();
        }
    }

    impl MockHost {
        fn id(&self, name: &str) -> u32 {
            self.names
                .iter()
                .position(|n| n == name)
                .unwrap_or_else(|| panic!("{name} not in {:#?}", self.names)) as u32
        }
        fn counter(&self, name: &str) -> u64 {
            self.counters.get(&self.id(name)).copied().unwrap_or(0)
        }
        fn gauge(&self, name: &str) -> u64 {
            self.gauges.get(&self.id(name)).copied().unwrap_or(0)
        }
        fn warnings(&self) -> usize {
            self.logs.iter().filter(|l| l.0 == LogLevel::Warn).count()
        }
    }

    fn tick(now_ms: u64, server: ServerView) -> TickState<'static> {
        TickState {
            now_ms,
            server,
            snapshot_age_ms: None,
            last_error: Some("timeout"),
            in_flight: 3,
            utilization: Some(0.25),
            pool: &[],
            flow: None,
        }
    }

    fn sidecar() -> ShedConfig {
        ShedConfig::parse(br#"{"scrape":{"cluster":"l"}}"#).unwrap()
    }

    const FRESH: ServerView = ServerView::Fresh {
        waiting: 1.0,
        kv_cache: 0.1,
    };

    #[test]
    fn counts_are_flushed_once_and_critical_has_no_shed_series() {
        let mut host = MockHost::default();
        let mut m = ShedMonitor::new(&mut host, &sidecar(), 0);
        assert!(!host
            .names
            .iter()
            .any(|n| n.contains("criticality=.=critical;.;reason")));
        let mut counts = ShedCounts::default();
        counts.admit(Criticality::Standard);
        counts.admit(Criticality::Standard);
        counts.shed(Criticality::Sheddable, ShedReason::Queue);
        m.on_tick(&mut host, &sidecar(), &tick(100, FRESH), &mut counts);
        m.on_tick(&mut host, &sidecar(), &tick(200, FRESH), &mut counts);
        assert_eq!(counts, ShedCounts::default());
        assert_eq!(
            host.counter("criticality=.=standard;.;modelgate_shedder_admitted_total"),
            2
        );
        assert_eq!(
            host.counter("criticality=.=sheddable;.;reason=.=queue;.;modelgate_shedder_shed_total"),
            1
        );
        assert_eq!(host.gauge("modelgate_shedder_in_flight"), 3);
        assert_eq!(host.gauge("modelgate_shedder_utilization_ppm"), 250_000);
    }

    #[test]
    fn staleness_warns_once_and_tells_recovery() {
        let mut host = MockHost::default();
        let cfg = sidecar(); // stale_after 1 s
        let mut m = ShedMonitor::new(&mut host, &cfg, 0);
        let mut counts = ShedCounts::default();
        // Stale during the first scrapes after start: no warning yet.
        m.on_tick(&mut host, &cfg, &tick(500, ServerView::Stale), &mut counts);
        assert_eq!(host.warnings(), 0);
        // Still stale after stale_after: one warning, naming the scrape error.
        for now in [1500, 1600, 1700] {
            m.on_tick(&mut host, &cfg, &tick(now, ServerView::Stale), &mut counts);
        }
        assert_eq!(host.warnings(), 1);
        assert!(host.logs[0].1.contains("timeout"), "{:?}", host.logs);
        assert_eq!(host.gauge("modelgate_shedder_snapshot_stale"), 1);
        m.on_tick(&mut host, &cfg, &tick(1800, FRESH), &mut counts);
        assert!(host.logs.last().unwrap().1.contains("fresh again"));
        assert_eq!(host.gauge("modelgate_shedder_snapshot_stale"), 0);
        // Fresh then stale: warned at once.
        m.on_tick(&mut host, &cfg, &tick(1900, ServerView::Stale), &mut counts);
        assert_eq!(host.warnings(), 2);
    }

    #[test]
    fn shedding_is_summarised_every_five_seconds() {
        let mut host = MockHost::default();
        let cfg = sidecar();
        let mut m = ShedMonitor::new(&mut host, &cfg, 0);
        let mut counts = ShedCounts::default();
        for now in (100..=6000).step_by(100) {
            counts.shed(Criticality::Standard, ShedReason::KvCache);
            m.on_tick(&mut host, &cfg, &tick(now, FRESH), &mut counts);
        }
        let summaries: Vec<_> = host.logs.iter().filter(|l| l.1.contains("shed ")).collect();
        assert_eq!(summaries.len(), 1, "{summaries:?}");
        assert!(summaries[0].1.contains("shed 50 requests"), "{summaries:?}");
    }

    #[test]
    fn pool_saturation_is_logged_on_transitions_only() {
        let mut host = MockHost::default();
        let cfg = ShedConfig::parse(br#"{"gateway":{}}"#).unwrap();
        let mut m = ShedMonitor::new(&mut host, &cfg, 0);
        let mut counts = ShedCounts::default();
        let busy = [PoolLoad {
            cluster: "pool".into(),
            average: 0.9,
            hosts: 2,
            saturated_hosts: 2,
            saturated: true,
        }];
        let idle = [PoolLoad {
            saturated: false,
            saturated_hosts: 0,
            average: 0.1,
            ..busy[0].clone()
        }];
        for pool in [&busy[..], &busy[..], &idle[..]] {
            let t = TickState {
                pool,
                server: ServerView::NotScraped,
                utilization: None,
                ..tick(1, FRESH)
            };
            m.on_tick(&mut host, &cfg, &t, &mut counts);
        }
        assert_eq!(host.warnings(), 1);
        assert_eq!(host.logs.len(), 2, "{:?}", host.logs);
        assert_eq!(host.gauge("modelgate_shedder_pool_saturated"), 0);
        assert_eq!(
            host.gauge("modelgate_shedder_pool_utilization_ppm"),
            100_000
        );
    }

    #[test]
    fn flow_stats_sum_over_workers_and_bound_tenant_labels() {
        use crate::flow::{Entry, FlowQueue};
        let cfg =
            ShedConfig::parse(br#"{"scrape":{"cluster":"l"},"flow":{"max_tenant_labels":2}}"#)
                .unwrap();
        let fc = cfg.flow.clone().unwrap();
        let mut host = MockHost::default();
        // Two worker VMs sharing one set of stats.
        let mut m1 = ShedMonitor::new(&mut host, &cfg, 0);
        let mut m2 = ShedMonitor::new(&mut host, &cfg, 0);
        let (mut q1, mut q2) = (FlowQueue::default(), FlowQueue::default());
        let e = |id: u32, class, tenant: &str| Entry {
            id,
            class,
            tenant: tenant.into(),
            bytes: 0,
            since_ms: 0,
        };
        q1.push(&fc, e(1, Criticality::Standard, "a"));
        q1.push(&fc, e(2, Criticality::Sheddable, "b"));
        q2.push(&fc, e(3, Criticality::Standard, "c"));
        q2.push(&fc, e(4, Criticality::Standard, "a"));
        let mut counts = ShedCounts::default();
        counts.flow(Criticality::Standard, FlowOutcome::Held);
        counts.flow(Criticality::Standard, FlowOutcome::Held);
        counts.wait(Criticality::Standard, 40);
        fn t(q: &FlowQueue) -> TickState<'_> {
            TickState {
                flow: Some(q),
                ..tick(100, FRESH)
            }
        }
        m1.on_tick(&mut host, &cfg, &t(&q1), &mut counts);
        m2.on_tick(&mut host, &cfg, &t(&q2), &mut counts);
        let queued = |h: &MockHost, c: &str| {
            h.gauge(&format!(
                "criticality=.={c};.;modelgate_shedder_flow_queued"
            ))
        };
        let tenant = |h: &MockHost, t: &str| {
            h.gauge(&format!(
                "tenant=.={t};.;modelgate_shedder_flow_queued_by_tenant"
            ))
        };
        assert_eq!(
            (queued(&host, "standard"), queued(&host, "sheddable")),
            (3, 1)
        );
        assert_eq!(tenant(&host, "a"), 2);
        assert_eq!(
            host.counter(
                "criticality=.=standard;.;outcome=.=held;.;modelgate_shedder_flow_requests_total"
            ),
            2
        );
        q1.pop();
        q1.pop();
        m1.on_tick(&mut host, &cfg, &t(&q1), &mut counts);
        assert_eq!(
            (queued(&host, "standard"), queued(&host, "sheddable")),
            (2, 0)
        );
        assert_eq!(tenant(&host, "a"), 1);
        // Past two labels in a VM, tenants go to `other`.
        q1.push(&fc, e(5, Criticality::Standard, "x"));
        q1.push(&fc, e(6, Criticality::Standard, "y"));
        q1.push(&fc, e(7, Criticality::Standard, "a"));
        m1.on_tick(&mut host, &cfg, &t(&q1), &mut counts);
        assert_eq!((tenant(&host, "other"), tenant(&host, "a")), (2, 2));
    }
}
