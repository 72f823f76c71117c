//! ORCA load reports: the sidecar's `endpoint-load-metrics` header (utilisation and
//! request rate, smoothed, and the server's queue, built once per tick) and the gateway's
//! parser of it.

use std::fmt::Write as _;

use crate::state::QueueSnapshot;

/// The highest utilisation reported: a server overloaded tenfold is reported as such,
/// absurd scraped counts are not.
pub const MAX_UTILIZATION: f64 = 10.0;

/// ORCA report settings (sidecar).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OrcaConfig {
    /// Requests (running + waiting) at which the server counts as 100 % utilised;
    /// utilisation is `max((running + waiting) / capacity, kv_cache_usage)`.
    pub capacity: f64,
    /// Smoothing time constant of the reported utilisation and request rate.
    pub window_ms: u64,
}

/// Exponentially weighted moving average over wall-clock time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Ewma {
    value: Option<f64>,
}

impl Ewma {
    /// Folds in a sample taken `dt_ms` after the previous one.
    /// A non-finite sample is ignored: one would poison the average for good.
    pub fn update(&mut self, sample: f64, dt_ms: u64, tau_ms: u64) -> f64 {
        if !sample.is_finite() {
            return self.get();
        }
        let v = match self.value {
            None => sample,
            Some(prev) => {
                let alpha = 1.0 - (-(dt_ms as f64) / (tau_ms.max(1) as f64)).exp();
                prev + alpha * (sample - prev)
            }
        };
        self.value = Some(v);
        v
    }

    pub fn get(&self) -> f64 {
        self.value.unwrap_or(0.0)
    }
}

/// Utilisation of one snapshot: `max((running + waiting) / capacity, kv_cache_usage)`.
/// Proportional to the load, so Envoy's weight `rps / utilisation` estimates the rate
/// the server sustains at full load (by Little's law, capacity / latency).
/// Saturates at [`MAX_UTILIZATION`] (each count may be finite and their sum not).
pub fn utilization(s: &QueueSnapshot, capacity: f64) -> f64 {
    let u = ((s.running + s.waiting) / capacity).max(s.kv_cache_usage);
    if u.is_nan() {
        return 0.0;
    }
    u.clamp(0.0, MAX_UTILIZATION)
}

/// Requests at the server, running and waiting (`named_metrics.queue`); bounded like
/// the utilisation.
pub fn queue_of(s: &QueueSnapshot) -> f64 {
    let q = s.running + s.waiting;
    if q.is_nan() {
        return 0.0;
    }
    q.clamp(0.0, MAX_QUEUE)
}

/// The largest queue reported or believed.
pub const MAX_QUEUE: f64 = 1e6;

/// Envoy ignores reports whose utilisation or rate is 0; these floors keep every report
/// valid, and a small utilisation floor keeps an idle server attractive.
pub const MIN_UTILIZATION: f64 = 0.001;
pub const MIN_RPS: f64 = 0.01;

/// Builds the ORCA header once per tick so each response only copies a cached string.
#[derive(Debug, Clone)]
pub struct OrcaReporter {
    cfg: OrcaConfig,
    util: Ewma,
    rps: Ewma,
    last_ms: Option<u64>,
    last_completed: u64,
    header: String,
    valid: bool,
}

impl OrcaReporter {
    pub fn new(cfg: OrcaConfig) -> Self {
        Self {
            cfg,
            util: Ewma::default(),
            rps: Ewma::default(),
            last_ms: None,
            last_completed: 0,
            header: String::with_capacity(80),
            valid: false,
        }
    }

    /// `fresh`: the snapshot if it is fresh; `completed` counts the responses this
    /// proxy has seen (a monotonic counter, summed over workers by the caller).
    pub fn on_tick(&mut self, now_ms: u64, fresh: Option<&QueueSnapshot>, completed: u64) {
        let dt = self.last_ms.map_or(0, |l| now_ms.saturating_sub(l));
        if self.last_ms.is_none() || dt > 0 {
            // A counter that went backwards (a worker restarted) counts as no completions.
            let delta = completed.saturating_sub(self.last_completed);
            if self.last_ms.is_some() {
                self.rps
                    .update(delta as f64 * 1000.0 / dt as f64, dt, self.cfg.window_ms);
            }
            self.last_completed = completed;
            self.last_ms = Some(now_ms);
        }
        let Some(s) = fresh else {
            // Unknown load: send no report, Envoy keeps the last weight until it expires.
            self.valid = false;
            return;
        };
        self.util
            .update(utilization(s, self.cfg.capacity), dt, self.cfg.window_ms);
        self.header.clear();
        // The queue as scraped, unsmoothed: the endpoint picker compares pods by it.
        let _ = write!(
            self.header,
            "TEXT application_utilization={:.4}, rps_fractional={:.4}, named_metrics.queue={:.0}",
            self.utilization(),
            self.rps(),
            queue_of(s)
        );
        self.valid = true;
    }

    /// The header value to add to responses, when the load is known.
    pub fn header(&self) -> Option<&str> {
        self.valid.then_some(self.header.as_str())
    }

    pub fn utilization(&self) -> f64 {
        self.util.get().max(MIN_UTILIZATION)
    }

    pub fn rps(&self) -> f64 {
        self.rps.get().max(MIN_RPS)
    }
}

/// One ORCA report as the gateway reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OrcaReport {
    pub utilization: f64,
    pub rps: Option<f64>,
    /// `named_metrics.queue`: the server's running + waiting requests.
    pub queue: Option<f64>,
}

/// Parses the `TEXT k=v, k=v` form of `endpoint-load-metrics`. Like Envoy, takes
/// `application_utilization` when positive, else `cpu_utilization`.
pub fn parse_orca(value: &str) -> Option<OrcaReport> {
    let body = value.trim().strip_prefix("TEXT")?;
    let (mut app, mut cpu, mut rps, mut queue) = (None, None, None, None);
    for pair in body.split(',') {
        let (k, v) = pair.split_once('=')?;
        let v: f64 = v.trim().parse().ok()?;
        if !v.is_finite() || v < 0.0 {
            return None;
        }
        match k.trim() {
            "application_utilization" => app = Some(v),
            "cpu_utilization" => cpu = Some(v),
            "rps_fractional" => rps = Some(v),
            "named_metrics.queue" => queue = Some(v.min(MAX_QUEUE)),
            _ => {}
        }
    }
    let utilization = app.filter(|u| *u > 0.0).or(cpu)?;
    Some(OrcaReport {
        utilization,
        rps,
        queue,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orca_report_tracks_load_and_rate() {
        let mut r = OrcaReporter::new(OrcaConfig {
            capacity: 10.0,
            window_ms: 1000,
        });
        assert_eq!(r.header(), None);
        let snap = QueueSnapshot {
            running: 4.0,
            waiting: 1.0,
            kv_cache_usage: 0.2,
            scraped_at_ms: 1,
            ..Default::default()
        };
        r.on_tick(0, Some(&snap), 0);
        assert_eq!(r.utilization(), 0.5);
        assert_eq!(r.rps(), MIN_RPS);
        for i in 1..=100u64 {
            r.on_tick(i * 100, Some(&snap), i * 2); // 20 responses per second
        }
        assert!((r.rps() - 20.0).abs() < 0.5, "{}", r.rps());
        let h = r.header().unwrap();
        let parsed = parse_orca(h).unwrap();
        assert!((parsed.utilization - 0.5).abs() < 1e-3);
        assert!(parsed.rps.unwrap() > 19.0);
        assert_eq!(parsed.queue, Some(5.0));
        // KV cache dominates when fuller than the request count says.
        let full = QueueSnapshot {
            kv_cache_usage: 0.9,
            ..snap.clone()
        };
        assert_eq!(utilization(&full, 10.0), 0.9);
        // Idle: the floors keep the report valid for Envoy.
        let idle = QueueSnapshot::default();
        r.on_tick(100_000, Some(&idle), 200);
        assert!(r.utilization() >= MIN_UTILIZATION && r.rps() >= MIN_RPS);
        r.on_tick(100_100, None, 200);
        assert_eq!(r.header(), None);
    }

    #[test]
    fn orca_header_parsing() {
        let r = parse_orca("TEXT application_utilization=0.9, rps_fractional=50").unwrap();
        assert_eq!((r.utilization, r.rps), (0.9, Some(50.0)));
        let r = parse_orca("TEXT cpu_utilization=0.3,application_utilization=0").unwrap();
        assert_eq!(r.utilization, 0.3);
        assert_eq!(parse_orca("JSON {\"cpu_utilization\":0.3}"), None);
        assert_eq!(parse_orca("TEXT rps_fractional=1"), None);
        assert_eq!(parse_orca("TEXT application_utilization=x"), None);
        assert_eq!(parse_orca("TEXT application_utilization=-1"), None);
    }

    #[test]
    fn huge_scraped_counts_cannot_poison_the_report() {
        let mut r = OrcaReporter::new(OrcaConfig {
            capacity: 10.0,
            window_ms: 1000,
        });
        // Each value is finite, their sum is not.
        let huge = QueueSnapshot {
            running: 1e308,
            waiting: 1e308,
            scraped_at_ms: 1,
            ..Default::default()
        };
        let half = QueueSnapshot {
            running: 5.0,
            scraped_at_ms: 1,
            ..Default::default()
        };
        r.on_tick(0, Some(&huge), 0);
        assert!(r.utilization().is_finite() && r.utilization() >= 1.0);
        r.on_tick(100, Some(&huge), 0);
        for i in 2..200u64 {
            r.on_tick(i * 100, Some(&half), 0);
        }
        assert!(
            (r.utilization() - 0.5).abs() < 0.01,
            "the report recovers: {}",
            r.utilization()
        );
        let parsed = parse_orca(r.header().unwrap()).unwrap();
        assert!((parsed.utilization - 0.5).abs() < 0.01);
    }

    #[test]
    fn ewma_ignores_non_finite_samples() {
        let mut e = Ewma::default();
        e.update(0.5, 0, 1000);
        for bad in [f64::INFINITY, f64::NAN, f64::NEG_INFINITY] {
            assert_eq!(e.update(bad, 100, 1000), 0.5);
        }
        assert_eq!(e.update(0.5, 100, 1000), 0.5);
    }
}
