//! What the load shedder tells operators: its Envoy stats (defined once, counted per VM
//! without a host call per request, flushed on the tick) and its log lines on state
//! transitions (snapshot stale / fresh again, pool saturated / not, a shed summary every
//! 5 s). Behind [`ShedHost`], so the filter's glue only translates host calls.

use crate::metrics::{encode_stat_name, MetricHost, MetricKind};
use crate::shed::{Criticality, ServerView, ShedConfig, ShedReason};
use crate::shed_tables::PoolLoad;

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
}

/// Decisions since the last flush, counted by the HTTP contexts of one VM.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ShedCounts {
    admitted: [u64; CLASSES],
    shed: [[u64; CLASSES]; REASONS],
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

/// One VM's stats and transition logs.
#[derive(Debug)]
pub struct ShedMonitor {
    ids: Ids,
    started_ms: u64,
    was_stale: Option<bool>,
    warned_stale: bool,
    was_saturated: bool,
    last_summary_ms: u64,
    shed_since_summary: u64,
}

impl ShedMonitor {
    /// Defines every stat (one host call each, at configure time).
    pub fn new<H: MetricHost>(host: &mut H, now_ms: u64) -> Self {
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
        Self {
            ids,
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

    #[derive(Default)]
    struct MockHost {
        names: Vec<String>,
        counters: HashMap<u32, u64>,
        gauges: HashMap<u32, u64>,
        logs: Vec<(LogLevel, String)>,
    }

    impl MetricHost for MockHost {
        fn define(&mut self, _kind: MetricKind, name: &str) -> Option<u32> {
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
        let mut m = ShedMonitor::new(&mut host, 0);
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
        let mut m = ShedMonitor::new(&mut host, 0);
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
        let mut m = ShedMonitor::new(&mut host, 0);
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
        let mut m = ShedMonitor::new(&mut host, 0);
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
}
