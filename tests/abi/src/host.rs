//! The proxy side shared by every VM of one simulated Envoy: shared data (with CAS), shared
//! queues, metrics (Envoy's stats store is process-wide, keyed by name), the clock, random
//! numbers, and the clusters that `dispatch_http_call` may reach.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

/// 2026-01-01T00:00:00Z: a fixed start so tests are deterministic.
pub const DEFAULT_NOW_MS: u64 = 1_767_225_600_000;

/// One simulated Envoy process. Cheap to clone; every clone is the same proxy.
#[derive(Clone, Default)]
pub struct Host {
    pub(crate) inner: Arc<Mutex<Shared>>,
}

/// Envoy's metric kinds, as `proxy_define_metric` numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// A metric as the test reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct Metric {
    pub kind: MetricKind,
    /// Counter or gauge value (gauges may go below zero in Envoy's accounting).
    pub value: i64,
    /// Every value recorded into a histogram, in order.
    pub samples: Vec<u64>,
}

pub(crate) struct Queue {
    pub vm_id: String,
    pub name: String,
    pub items: VecDeque<Vec<u8>>,
    /// (VM serial, root context id) that registered the queue and gets `on_queue_ready`.
    pub owner: u64,
}

pub(crate) struct Shared {
    /// vm_id → key → (value, cas).
    pub data: HashMap<String, HashMap<String, (Vec<u8>, u32)>>,
    pub next_cas: u32,
    pub queues: BTreeMap<u32, Queue>,
    pub next_queue: u32,
    pub metrics: BTreeMap<String, Metric>,
    pub now_ns: u64,
    pub rng: u64,
    /// `None`: every cluster exists. `Some(set)`: calls to others fail like an unknown cluster.
    pub clusters: Option<BTreeSet<String>>,
    pub next_vm: u64,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            data: HashMap::new(),
            next_cas: 1,
            queues: BTreeMap::new(),
            next_queue: 1,
            metrics: BTreeMap::new(),
            now_ns: DEFAULT_NOW_MS * 1_000_000,
            rng: 0x9E37_79B9_7F4A_7C15,
            clusters: None,
            next_vm: 1,
        }
    }
}

impl Shared {
    /// cpp-host's CAS counter: starts at 1 and skips 0 on wrap-around (0 means "no CAS").
    fn next_cas(&mut self) -> u32 {
        let cas = self.next_cas;
        self.next_cas = self.next_cas.wrapping_add(1);
        if self.next_cas == 0 {
            self.next_cas = 1;
        }
        cas
    }

    pub(crate) fn get_data(&self, vm_id: &str, key: &str) -> Option<(Vec<u8>, u32)> {
        self.data.get(vm_id)?.get(key).cloned()
    }

    /// cpp-host `SharedData::set`: a CAS of 0 always writes; a non-zero CAS must match the
    /// stored one, but only when the key exists (a new key is written whatever the CAS).
    pub(crate) fn set_data(&mut self, vm_id: &str, key: &str, value: &[u8], cas: u32) -> bool {
        let next = self.next_cas();
        let map = self.data.entry(vm_id.to_string()).or_default();
        match map.get_mut(key) {
            Some(entry) => {
                if cas != 0 && cas != entry.1 {
                    return false;
                }
                *entry = (value.to_vec(), next);
            }
            None => {
                map.insert(key.to_string(), (value.to_vec(), next));
            }
        }
        true
    }

    pub(crate) fn random_bytes(&mut self, out: &mut [u8]) {
        for b in out {
            // xorshift64*: deterministic per Host, good enough for tests.
            self.rng ^= self.rng >> 12;
            self.rng ^= self.rng << 25;
            self.rng ^= self.rng >> 27;
            *b = (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8;
        }
    }
}

impl Host {
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Shared> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wall-clock milliseconds every VM sees (`proxy_get_current_time_nanoseconds`,
    /// WASI `clock_time_get(REALTIME)`).
    pub fn now_ms(&self) -> u64 {
        self.lock().now_ns / 1_000_000
    }

    pub fn set_now_ms(&self, ms: u64) {
        self.lock().now_ns = ms * 1_000_000;
    }

    pub fn advance_ms(&self, ms: u64) {
        self.lock().now_ns += ms * 1_000_000;
    }

    /// Reseeds the random bytes modules get from WASI `random_get`.
    pub fn seed_random(&self, seed: u64) {
        self.lock().rng = seed.max(1);
    }

    /// Restricts `dispatch_http_call` to these clusters; any other returns `BadArgument`,
    /// as Envoy does for a cluster it does not know.
    pub fn clusters(&self, names: &[&str]) {
        self.lock().clusters = Some(names.iter().map(|s| s.to_string()).collect());
    }

    /// Shared data `key` of VM id `vm_id`, with its CAS.
    pub fn shared_data(&self, vm_id: &str, key: &str) -> Option<(Vec<u8>, u32)> {
        self.lock().get_data(vm_id, key)
    }

    /// Shared data as UTF-8 text (snapshots are JSON).
    pub fn shared_text(&self, vm_id: &str, key: &str) -> Option<String> {
        self.shared_data(vm_id, key)
            .map(|(v, _)| String::from_utf8_lossy(&v).into_owned())
    }

    /// Writes shared data as another VM (or a previous tick) would.
    pub fn set_shared_data(&self, vm_id: &str, key: &str, value: &[u8]) {
        self.lock().set_data(vm_id, key, value, 0);
    }

    /// Every metric defined so far, by the name the module gave it.
    pub fn metrics(&self) -> BTreeMap<String, Metric> {
        self.lock().metrics.clone()
    }

    /// Sum over the tagged series of metric `name` whose labels include every `k=v` of
    /// `labels` (Envoy's `k=.=v;.;` tag form); a histogram counts its samples.
    pub fn metric_total(&self, name: &str, labels: &[(&str, &str)]) -> i64 {
        self.metrics()
            .iter()
            .filter(|(n, _)| n.ends_with(&format!(";.;{name}")) || n.as_str() == name)
            .filter(|(n, _)| {
                labels
                    .iter()
                    .all(|(k, v)| n.contains(&format!("{k}=.={v};.;")))
            })
            .map(|(_, m)| m.value.max(m.samples.len() as i64))
            .sum()
    }

    pub fn metric(&self, name: &str) -> Option<Metric> {
        self.lock().metrics.get(name).cloned()
    }

    /// Counter or gauge value; panics with the list of defined metrics when absent.
    pub fn metric_value(&self, name: &str) -> i64 {
        let metrics = self.metrics();
        match metrics.get(name) {
            Some(m) => m.value,
            None => panic!(
                "metric `{name}` was never defined; defined: {:?}",
                metrics.keys().collect::<Vec<_>>()
            ),
        }
    }

    /// Items waiting in shared queue `name` of `vm_id`.
    pub fn queue_items(&self, vm_id: &str, name: &str) -> Vec<Vec<u8>> {
        self.lock()
            .queues
            .values()
            .filter(|q| q.vm_id == vm_id && q.name == name)
            .flat_map(|q| q.items.iter().cloned())
            .collect()
    }
}
