//! The load shedder's shared-data tables: every worker's in-flight count and completed
//! responses ([`WorkerTable`]), and the gateway's latest ORCA report per cluster and host
//! ([`PoolTable`]), with the pool-saturation verdict built from it.
//!
//! Read API for other filters (the gateway's endpoint picker): decode [`POOL_KEY`](crate::vocab::POOL_KEY) with
//! `state::decode::<PoolTable>`, then [`PoolTable::hosts`] lists one cluster's fresh,
//! clamped per-host utilisations and [`PoolTable::loads`] gives each cluster's verdict.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::shed::GatewayConfig;

/// One worker VM's share of the proxy's traffic, published on its tick so every worker
/// can count the proxy's in-flight requests without a shared-data call per request.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Default)]
pub struct WorkerLoad {
    pub in_flight: u32,
    /// Responses completed by this worker since it started.
    pub completed: u64,
    pub at_ms: u64,
}

/// All workers' loads under [`WORKERS_KEY`](crate::vocab::WORKERS_KEY), keyed by a worker id handed out on the
/// worker's first write.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct WorkerTable {
    pub workers: BTreeMap<u32, WorkerLoad>,
}

impl WorkerTable {
    /// A fresh id: one above the largest in use.
    pub fn next_id(&self) -> u32 {
        self.workers
            .keys()
            .next_back()
            .map_or(1, |k| k.saturating_add(1))
    }

    /// Records `id`'s load and forgets workers silent for `ttl_ms` (ended VMs).
    pub fn update(&mut self, id: u32, load: WorkerLoad, ttl_ms: u64) {
        let now = load.at_ms;
        self.workers
            .retain(|k, w| *k == id || now.saturating_sub(w.at_ms) <= ttl_ms);
        self.workers.insert(id, load);
    }

    /// In-flight requests of every worker except `id`.
    pub fn others_in_flight(&self, id: u32) -> u32 {
        self.workers
            .iter()
            .filter(|(k, _)| **k != id)
            .fold(0u32, |acc, (_, w)| acc.saturating_add(w.in_flight))
    }

    /// Completed responses summed over the workers present.
    pub fn completed(&self) -> u64 {
        self.workers
            .values()
            .fold(0u64, |acc, w| acc.saturating_add(w.completed))
    }
}

/// The latest ORCA report of one upstream host.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub struct HostReport {
    pub utilization: f64,
    /// The server's running + waiting requests, when the sidecar reports them.
    #[serde(default)]
    pub queue: Option<f64>,
    pub at_ms: u64,
}

/// The gateway's view of its pools under [`POOL_KEY`](crate::vocab::POOL_KEY): cluster → host → latest report.
/// Every worker merges the reports it saw into it on its tick.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct PoolTable {
    pub clusters: BTreeMap<String, BTreeMap<String, HostReport>>,
}

/// One cluster's load from its fresh reports.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolLoad {
    pub cluster: String,
    /// Average utilisation of the fresh hosts.
    pub average: f64,
    /// Hosts with a fresh report.
    pub hosts: usize,
    /// Hosts whose report is above the threshold.
    pub saturated_hosts: usize,
    pub saturated: bool,
}

impl PoolTable {
    /// Records a report (the newer one wins), its utilisation clamped to [0, 1] so one
    /// host cannot outweigh the others; allocates only for a host not seen yet.
    pub fn record(&mut self, cluster: &str, host: &str, mut report: HostReport) {
        report.utilization = if report.utilization.is_finite() {
            report.utilization.clamp(0.0, 1.0)
        } else {
            1.0
        };
        report.queue = report
            .queue
            .filter(|q| q.is_finite())
            .map(|q| q.clamp(0.0, crate::orca::MAX_QUEUE));
        if !self.clusters.contains_key(cluster) {
            self.clusters.insert(cluster.to_string(), BTreeMap::new());
        }
        let Some(hosts) = self.clusters.get_mut(cluster) else {
            return;
        };
        match hosts.get_mut(host) {
            Some(r) if r.at_ms > report.at_ms => {}
            Some(r) => *r = report,
            None => {
                hosts.insert(host.to_string(), report);
            }
        }
    }

    /// Folds `other` in, keeping the newer report per host.
    pub fn merge(&mut self, other: &PoolTable) {
        for (cluster, hosts) in &other.clusters {
            for (host, r) in hosts {
                self.record(cluster, host, *r);
            }
        }
    }

    /// Forgets reports older than `ttl_ms`.
    pub fn prune(&mut self, now_ms: u64, ttl_ms: u64) {
        for hosts in self.clusters.values_mut() {
            hosts.retain(|_, r| now_ms.saturating_sub(r.at_ms) <= ttl_ms);
        }
        self.clusters.retain(|_, h| !h.is_empty());
    }

    /// Per cluster, over the hosts that reported within `report_ttl`: the average
    /// utilisation, and whether the cluster is saturated (average above the threshold
    /// and more than half the hosts above it).
    pub fn loads(&self, now_ms: u64, cfg: &GatewayConfig) -> Vec<PoolLoad> {
        self.clusters
            .iter()
            .filter_map(|(cluster, hosts)| {
                let fresh: Vec<f64> = hosts
                    .values()
                    .filter(|r| now_ms.saturating_sub(r.at_ms) <= cfg.report_ttl_ms)
                    .map(|r| r.utilization)
                    .collect();
                if fresh.is_empty() {
                    return None;
                }
                let average = fresh.iter().sum::<f64>() / fresh.len() as f64;
                let saturated_hosts = fresh
                    .iter()
                    .filter(|u| **u > cfg.utilization_threshold)
                    .count();
                Some(PoolLoad {
                    cluster: cluster.clone(),
                    average,
                    hosts: fresh.len(),
                    saturated_hosts,
                    // A majority must be over: one host cannot saturate its pool.
                    saturated: average > cfg.utilization_threshold
                        && saturated_hosts * 2 > fresh.len(),
                })
            })
            .collect()
    }

    /// One cluster's hosts with a report younger than `ttl_ms`: (host address,
    /// utilisation). For the endpoint picker; empty for an unknown cluster.
    pub fn hosts<'a>(
        &'a self,
        cluster: &str,
        now_ms: u64,
        ttl_ms: u64,
    ) -> impl Iterator<Item = (&'a str, f64)> + 'a {
        self.clusters
            .get(cluster)
            .into_iter()
            .flatten()
            .filter(move |(_, r)| now_ms.saturating_sub(r.at_ms) <= ttl_ms)
            .map(|(h, r)| (h.as_str(), r.utilization))
    }

    pub fn is_empty(&self) -> bool {
        self.clusters.is_empty()
    }
}

/// The names of the saturated clusters among `loads`.
pub fn saturated_clusters(loads: &[PoolLoad]) -> Vec<String> {
    loads
        .iter()
        .filter(|l| l.saturated)
        .map(|l| l.cluster.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_table_counts_other_workers_and_forgets_silent_ones() {
        let mut t = WorkerTable::default();
        let a = t.next_id();
        t.update(
            a,
            WorkerLoad {
                in_flight: 3,
                completed: 10,
                at_ms: 1000,
            },
            500,
        );
        let b = t.next_id();
        assert_ne!(a, b);
        t.update(
            b,
            WorkerLoad {
                in_flight: 2,
                completed: 5,
                at_ms: 1100,
            },
            500,
        );
        assert_eq!(
            (t.others_in_flight(a), t.others_in_flight(b), t.completed()),
            (2, 3, 15)
        );
        t.update(
            b,
            WorkerLoad {
                in_flight: 1,
                completed: 6,
                at_ms: 1600,
            },
            500,
        );
        assert_eq!(t.others_in_flight(b), 0, "a went silent");
        let round: WorkerTable = crate::state::decode(&crate::state::encode(&t)).unwrap();
        assert_eq!(round, t);
    }

    #[test]
    fn pool_average_saturation_and_expiry() {
        let g = GatewayConfig {
            utilization_threshold: 0.8,
            report_ttl_ms: 1000,
        };
        let mut t = PoolTable::default();
        t.record(
            "pool",
            "a:1",
            HostReport {
                utilization: 0.9,
                queue: None,
                at_ms: 100,
            },
        );
        t.record(
            "pool",
            "b:1",
            HostReport {
                utilization: 0.95,
                queue: None,
                at_ms: 100,
            },
        );
        t.record(
            "pool",
            "c:1",
            HostReport {
                utilization: 0.2,
                queue: None,
                at_ms: 100,
            },
        );
        let l = t.loads(500, &g);
        assert_eq!(l.len(), 1);
        assert!(!l[0].saturated, "average 0.68");
        t.record(
            "pool",
            "c:1",
            HostReport {
                utilization: 0.9,
                queue: None,
                at_ms: 200,
            },
        );
        t.record(
            "pool",
            "c:1",
            HostReport {
                utilization: 0.1,
                queue: None,
                at_ms: 150,
            },
        ); // older: ignored
        let l = t.loads(500, &g);
        assert!(l[0].saturated && l[0].hosts == 3);
        assert!(t.loads(5000, &g).is_empty());
        let mut other = PoolTable::default();
        other.record(
            "pool",
            "a:1",
            HostReport {
                utilization: 0.1,
                queue: None,
                at_ms: 300,
            },
        );
        t.merge(&other);
        assert!(!t.loads(500, &g)[0].saturated);
        t.prune(5000, 1000);
        assert!(t.is_empty());
    }

    fn report(utilization: f64) -> HostReport {
        HostReport {
            utilization,
            queue: None,
            at_ms: 100,
        }
    }

    #[test]
    fn one_host_reporting_absurd_load_cannot_saturate_its_pool() {
        let g = GatewayConfig {
            utilization_threshold: 0.8,
            report_ttl_ms: 1000,
        };
        let mut t = PoolTable::default();
        t.record("pool", "liar:1", report(1000.0));
        t.record("pool", "b:1", report(0.3));
        t.record("pool", "c:1", report(0.3));
        let l = &t.loads(500, &g)[0];
        assert!(!l.saturated, "{l:?}");
        assert!(
            (l.average - (1.0 + 0.3 + 0.3) / 3.0).abs() < 1e-9,
            "clamped"
        );
        // Two hosts, one over: the average is above the threshold, but not a majority.
        let mut t = PoolTable::default();
        t.record("pool", "liar:1", report(f64::MAX));
        t.record("pool", "b:1", report(0.7));
        assert!(!t.loads(500, &g)[0].saturated);
        // A real overload: most hosts over.
        t.record("pool", "c:1", report(0.9));
        assert!(t.loads(500, &g)[0].saturated);
        assert_eq!(
            t.hosts("pool", 500, 1000)
                .map(|(_, u)| u)
                .fold(0.0, f64::max),
            1.0
        );
    }
}
