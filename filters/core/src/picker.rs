//! The endpoint picker's policy: per request, the pod of the request's pool to send it to,
//! from the router's prefix hash, the prompt's size and each pod's load. Pods are ranked for
//! a prefix by rendezvous hashing (the same ranking on every gateway replica, no shared
//! index); the request goes to the unsaturated pod where it starts soonest: its queue, plus
//! a cold prefill of the prompt (`cold_prefill_per_kb` × its size) where the prefix is not
//! cached — cached on the first-ranked pod and on those this gateway lately spilled it to
//! ([`WarmIndex`]). So a prefix sticks to its pod until waiting there costs more than
//! moving. When every pod is saturated, standard and
//! sheddable requests wait in the gateway (with a `flow` block: [`Pick::Wait`], released to
//! the first pod with room) or, without one, sheddable requests are shed and the rest queue
//! on the least busy pod. The proxy-wasm side is `filters/endpoint_picker`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Deserialize;

use crate::config::{ms_or, ConfigError, DurationMs, FilterConfig, FilterKind};
use crate::flow::{Entry, FlowConfig, FlowJson, FlowQueue};
use crate::shed_tables::HostReport;
use crate::vocab::Criticality;

/// Bounds on the configuration (label cardinality, per-request work).
pub const MAX_POOLS: usize = 64;
pub const MAX_PODS: usize = 256;
/// The size a prompt without `content-length` (a chunked body) is priced at.
pub const UNKNOWN_PROMPT_BYTES: u64 = 8 * 1024;

/// The plugin configuration as written (JSON); see docs/endpoint-picker.md.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PickerConfigJson {
    /// Pool name (the router's `x-modelgate-model`, also the cluster name) → pod addresses
    /// (may be empty: then the pods are discovered from their ORCA reports).
    pub pools: BTreeMap<String, Vec<String>>,
    /// Pool name → the Envoy cluster whose ORCA reports describe it (default: the pool
    /// name; Istio: `outbound|8000||llama-3-8b.models.svc.cluster.local`).
    #[serde(default)]
    pub clusters: BTreeMap<String, String>,
    #[serde(default)]
    pub saturation: Option<SaturationJson>,
    #[serde(default)]
    pub cold_prefill_per_kb: Option<f64>,
    #[serde(default)]
    pub capacity: Option<f64>,
    #[serde(default)]
    pub report_ttl: Option<DurationMs>,
    #[serde(default)]
    pub tick: Option<DurationMs>,
    #[serde(default)]
    pub forget_after: Option<DurationMs>,
    #[serde(default)]
    pub explore_every: Option<u32>,
    /// Flow control: hold standard and sheddable requests while every pod is saturated.
    #[serde(default)]
    pub flow: Option<FlowJson>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaturationJson {
    #[serde(default)]
    pub utilization: Option<f64>,
    #[serde(default)]
    pub in_flight: Option<u32>,
}

/// One pod: its address (the `override_host` header value) and its rendezvous key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub address: String,
    key: u64,
}

impl Pod {
    pub fn new(address: &str) -> Self {
        Self {
            address: address.to_string(),
            key: fnv1a(address.as_bytes()),
        }
    }

    /// Identifies the pod across membership changes (indices shift when pods go).
    pub fn key(&self) -> u64 {
        self.key
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    /// The cluster name the gateway load shedder files this pool's reports under.
    pub cluster: String,
    pub pods: Vec<Pod>,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct PickerConfig {
    pub pools: Vec<Pool>,
    /// A pod whose fresh ORCA utilisation is at or above this is saturated.
    pub utilization_threshold: f64,
    /// A pod with this many of this proxy's requests in flight is saturated.
    pub max_in_flight: u32,
    /// What prefilling 1 KB of prompt on a pod that does not hold it costs, in requests
    /// of queue (how [`PickerConfig::pick`] weighs moving against waiting).
    pub cold_prefill_per_kb: f64,
    /// Requests a pod runs at utilisation 1 (the sidecar shedder's `orca.capacity`).
    pub capacity: f64,
    pub report_ttl_ms: u64,
    pub tick_ms: u64,
    /// A discovered pod without a report for this long is forgotten.
    pub forget_after_ms: u64,
    /// Every n-th request of a pool goes to the cluster's fallback policy (0 = never), so
    /// pods the picker does not know yet get traffic, report, and are discovered.
    pub explore_every: u32,
    /// Flow control (the sidecar's `flow` block; room is the `saturation` thresholds).
    pub flow: Option<FlowConfig>,
}

impl FilterConfig for PickerConfig {
    const KIND: FilterKind = FilterKind::EndpointPicker;
    type Json = PickerConfigJson;

    fn validate(raw: PickerConfigJson) -> Result<Self, ConfigError> {
        if raw.pools.is_empty() || raw.pools.len() > MAX_POOLS {
            return Err(ConfigError::new(
                "pools",
                format!("must name 1 to {MAX_POOLS} pools"),
            ));
        }
        let mut pools = Vec::with_capacity(raw.pools.len());
        for (name, addrs) in &raw.pools {
            let field = format!("pools.{name}");
            if name.is_empty() {
                return Err(ConfigError::new("pools", "pool names must not be empty"));
            }
            if addrs.len() > MAX_PODS {
                return Err(ConfigError::new(
                    field,
                    format!("must list at most {MAX_PODS} pod addresses"),
                ));
            }
            let mut pods: Vec<Pod> = Vec::with_capacity(addrs.len());
            for a in addrs {
                if a.parse::<SocketAddr>().is_err() {
                    return Err(ConfigError::new(
                        field,
                        format!("`{a}` is not an IP:port address"),
                    ));
                }
                if pods.iter().any(|p| p.address == *a) {
                    return Err(ConfigError::new(field, format!("`{a}` is listed twice")));
                }
                pods.push(Pod::new(a));
            }
            pools.push(Pool {
                name: name.clone(),
                cluster: raw.clusters.get(name).unwrap_or(name).clone(),
                pods,
            });
        }
        if let Some(unknown) = raw.clusters.keys().find(|k| !raw.pools.contains_key(*k)) {
            return Err(ConfigError::new(
                format!("clusters.{unknown}"),
                "names no pool in `pools`",
            ));
        }
        let sat = raw.saturation.unwrap_or_default();
        let utilization_threshold = sat.utilization.unwrap_or(0.9);
        if !utilization_threshold.is_finite() || utilization_threshold <= 0.0 {
            return Err(ConfigError::new(
                "saturation.utilization",
                "must be a positive number",
            ));
        }
        let max_in_flight = sat.in_flight.unwrap_or(64);
        if max_in_flight == 0 {
            return Err(ConfigError::new("saturation.in_flight", "must be positive"));
        }
        let cold_prefill_per_kb = raw.cold_prefill_per_kb.unwrap_or(0.5);
        if !cold_prefill_per_kb.is_finite() || cold_prefill_per_kb < 0.0 {
            return Err(ConfigError::new(
                "cold_prefill_per_kb",
                "must be a non-negative number",
            ));
        }
        let capacity = raw.capacity.unwrap_or(4.0);
        if !capacity.is_finite() || capacity <= 0.0 {
            return Err(ConfigError::new("capacity", "must be a positive number"));
        }
        let report_ttl_ms = ms_or(raw.report_ttl, 2_000);
        let tick_ms = ms_or(raw.tick, 100);
        if tick_ms == 0 {
            return Err(ConfigError::new("tick", "must be positive"));
        }
        let forget_after_ms = ms_or(raw.forget_after, 30_000);
        if let Some(f) = raw.flow.as_ref() {
            // At the gateway a pod has room when it is not saturated: these sidecar knobs
            // would be ignored, so they are refused.
            if f.max_running.is_some() {
                return Err(ConfigError::new(
                    "flow.max_running",
                    "is a sidecar knob: the picker releases to a pod below `saturation`",
                ));
            }
            if f.target_queue.is_some() {
                return Err(ConfigError::new(
                    "flow.target_queue",
                    "is a sidecar knob: the picker releases to a pod below `saturation`",
                ));
            }
            if f.max_tenant_labels.is_some() {
                return Err(ConfigError::new(
                    "flow.max_tenant_labels",
                    "is a sidecar knob: the picker has no per-tenant stats",
                ));
            }
        }
        let flow = FlowConfig::validate(raw.flow.as_ref())?;
        Ok(Self {
            pools,
            utilization_threshold,
            max_in_flight,
            cold_prefill_per_kb,
            capacity,
            report_ttl_ms,
            tick_ms,
            forget_after_ms,
            explore_every: raw.explore_every.unwrap_or(0),
            flow,
        })
    }
}

impl PickerConfig {
    /// The index of the pool named `name`.
    pub fn pool_index(&self, name: &str) -> Option<usize> {
        self.pools.iter().position(|p| p.name == name)
    }
}

/// A request's prompt prefix: the router's hash; when the request has a `content-length`,
/// the prompt's size, which prices a cold prefill; and the pods besides the prefix's
/// first-ranked one that likely hold it already ([`WarmIndex`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub hash: u64,
    pub prompt_bytes: Option<u64>,
    /// Keys of pods that were sent this prefix lately (0: none).
    pub warm: [u64; WARM_PODS],
}

impl Prefix {
    pub fn new(hash: u64, prompt_bytes: Option<u64>) -> Self {
        Self {
            hash,
            prompt_bytes,
            warm: [0; WARM_PODS],
        }
    }
}

impl From<u64> for Prefix {
    /// A prefix of unknown size.
    fn from(hash: u64) -> Self {
        Self::new(hash, None)
    }
}

/// How long a pod that was sent a prefix is taken to still hold it in its prefix cache.
pub const WARM_MS: u64 = 30_000;
/// Pods remembered per prefix (the most recently sent).
pub const WARM_PODS: usize = 4;
/// Prefixes remembered per pool; direct-mapped, a colliding prefix replaces the older.
const WARM_SLOTS: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct WarmSlot {
    hash: u64,
    /// (pod key, time sent); key 0 = empty.
    pods: [(u64, u64); WARM_PODS],
}

/// Which pods this gateway sent each prefix to lately: where it was spilled, and so where
/// a later spill finds it cached. Only prices spills; the first-ranked pod needs no memory,
/// so a replica that has not seen a prefix chooses as the others, by rendezvous.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmIndex {
    slots: Vec<WarmSlot>,
}

impl Default for WarmIndex {
    fn default() -> Self {
        Self {
            slots: vec![WarmSlot::default(); WARM_SLOTS],
        }
    }
}

impl WarmIndex {
    fn slot(hash: u64) -> usize {
        (mix(hash) % WARM_SLOTS as u64) as usize
    }

    /// The keys of the pods sent `hash` within [`WARM_MS`] of `now_ms` (0: none).
    pub fn pods(&self, hash: u64, now_ms: u64) -> [u64; WARM_PODS] {
        match self.slots.get(Self::slot(hash)) {
            Some(s) if s.hash == hash => s.pods.map(|(key, at)| {
                if now_ms.saturating_sub(at) <= WARM_MS {
                    key
                } else {
                    0
                }
            }),
            _ => [0; WARM_PODS],
        }
    }

    /// Remembers that `hash` was sent to the pod with `key` at `now_ms`.
    pub fn note(&mut self, hash: u64, key: u64, now_ms: u64) {
        let Some(s) = self.slots.get_mut(Self::slot(hash)) else {
            return;
        };
        if s.hash != hash {
            *s = WarmSlot {
                hash,
                ..WarmSlot::default()
            };
        }
        if let Some(e) = s.pods.iter_mut().find(|(k, _)| *k == key) {
            e.1 = now_ms;
        } else if let Some(e) = s.pods.iter_mut().min_by_key(|(k, at)| (*k != 0, *at)) {
            *e = (key, now_ms);
        }
    }
}

/// What the picker knows of one pod's load.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PodLoad {
    /// This proxy's requests to the pod not yet finished.
    pub in_flight: u32,
    /// The pod's latest ORCA utilisation, when fresh (it covers every gateway's traffic).
    pub utilization: Option<f64>,
    /// The pod's running + waiting requests from the same report, when it carries them.
    pub queue: Option<f64>,
}

/// Why a pod was chosen (the `reason` label of `ml_picker_picks_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickReason {
    /// The prefix's first-ranked pod.
    Affinity,
    /// A later-ranked pod: the first was saturated or too busy.
    Spill,
    /// No prefix hash: the least busy pod.
    LeastLoaded,
    /// Every pod saturated: the least busy one, where the request queues.
    Queued,
}

impl PickReason {
    pub const ALL: [PickReason; 4] = [Self::Affinity, Self::Spill, Self::LeastLoaded, Self::Queued];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Affinity => "affinity",
            Self::Spill => "spill",
            Self::LeastLoaded => "least_loaded",
            Self::Queued => "queued",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    Pod {
        index: usize,
        reason: PickReason,
    },
    /// Every pod saturated and the request is sheddable (no flow control).
    Shed,
    /// Every pod saturated and flow control holds the request until a pod has room.
    Wait,
    /// The pool has no pods (let the cluster's fallback policy choose).
    None,
}

impl PickerConfig {
    /// The busyness the picker compares: this proxy's in-flight count, or the pod's
    /// reported load in requests when that is higher (other gateways send to it too):
    /// its queue, else utilisation × `capacity` (which counts KV-cache use as requests).
    pub fn busyness(&self, l: &PodLoad) -> f64 {
        let reported = l
            .queue
            .or(l.utilization.map(|u| u * self.capacity))
            .unwrap_or(0.0);
        f64::from(l.in_flight).max(reported)
    }

    /// What prefilling `prefix`'s whole prompt on a pod that does not hold it costs, in
    /// requests of queue.
    pub fn cold_cost(&self, prefix: &Prefix) -> f64 {
        let bytes = prefix.prompt_bytes.unwrap_or(UNKNOWN_PROMPT_BYTES);
        bytes as f64 / 1024.0 * self.cold_prefill_per_kb
    }

    /// Flow control: takes held requests from `queue`, best first, while some pod of
    /// `members` has room, picks a pod for each (its prefix from `prefix_of`) and counts it
    /// in flight there. The released go to `out` with their pod's index and the reason.
    pub fn release(
        &self,
        queue: &mut FlowQueue,
        members: &mut Members,
        prefix_of: impl Fn(u32) -> Option<Prefix>,
        now_ms: u64,
        out: &mut Vec<(Entry, usize, PickReason)>,
    ) {
        let Some(fc) = self.flow.as_ref() else {
            return;
        };
        while !queue.is_empty() && self.has_room(&members.loads) {
            let Some(e) = queue.pop() else { break };
            let pick = members.pick(self, prefix_of(e.id), e.class, now_ms);
            let load = match pick {
                Pick::Pod { index, .. } => members.loads.get_mut(index),
                _ => None,
            };
            match (pick, load) {
                (Pick::Pod { index, reason }, Some(l)) => {
                    l.in_flight = l.in_flight.saturating_add(1);
                    out.push((e, index, reason));
                }
                // Not while a pod has room; the request keeps a place in line.
                _ => {
                    let _ = queue.push(fc, e);
                    break;
                }
            }
        }
    }

    /// Whether some pod has room (is not saturated): held requests may go.
    pub fn has_room(&self, loads: &[PodLoad]) -> bool {
        loads.iter().any(|l| !self.saturated(l))
    }

    pub fn saturated(&self, l: &PodLoad) -> bool {
        l.in_flight >= self.max_in_flight
            || l.utilization
                .is_some_and(|u| u >= self.utilization_threshold)
    }

    /// Chooses a pod of `pods` (with their `loads`, same order) for a request with
    /// `prefix` hash and criticality `class`. No allocation; O(pods).
    pub fn pick(
        &self,
        prefix: Option<Prefix>,
        pods: &[Pod],
        loads: &[PodLoad],
        class: Criticality,
    ) -> Pick {
        let candidates = || pods.iter().zip(loads).enumerate();
        // The least busy pod, unsaturated ones first; ties go to the earlier pod.
        let mut least: Option<(usize, f64)> = None;
        let mut least_any: Option<(usize, f64)> = None;
        for (i, (_, l)) in candidates() {
            let b = self.busyness(l);
            if least_any.is_none_or(|(_, lb)| b < lb) {
                least_any = Some((i, b));
            }
            if !self.saturated(l) && least.is_none_or(|(_, lb)| b < lb) {
                least = Some((i, b));
            }
        }
        let Some((least_i, _)) = least else {
            return match least_any {
                None => Pick::None,
                Some(_) if self.flow.is_some() && class != Criticality::Critical => Pick::Wait,
                Some(_) if class == Criticality::Sheddable => Pick::Shed,
                Some((index, _)) => Pick::Pod {
                    index,
                    reason: PickReason::Queued,
                },
            };
        };
        let Some(prefix) = prefix else {
            return Pick::Pod {
                index: least_i,
                reason: PickReason::LeastLoaded,
            };
        };
        // Rendezvous: the top-scoring pod holds the prefix, and so do the warm pods. The
        // request goes where it starts soonest: at those after their queue, elsewhere after
        // the queue and a cold prefill. Ties go to the higher-ranked pod.
        let Some((home, _)) = candidates()
            .map(|(i, (p, _))| (i, rendezvous(prefix.hash, p.key)))
            .max_by_key(|&(_, score)| score)
        else {
            return Pick::None;
        };
        let cold = self.cold_cost(&prefix);
        let mut chosen: Option<(usize, f64, u64)> = None;
        for (i, (p, l)) in candidates() {
            if self.saturated(l) {
                continue;
            }
            let holds = i == home || prefix.warm.contains(&p.key);
            let cost = self.busyness(l) + if holds { 0.0 } else { cold };
            let score = rendezvous(prefix.hash, p.key);
            let better = chosen.is_none_or(|(_, c, s)| cost < c || (cost == c && score > s));
            if better {
                chosen = Some((i, cost, score));
            }
        }
        let index = chosen.map_or(least_i, |(i, _, _)| i);
        Pick::Pod {
            index,
            reason: if index == home {
                PickReason::Affinity
            } else {
                PickReason::Spill
            },
        }
    }
}

/// The pods of one pool the picker chooses among, with their load: the configured pods,
/// then pods discovered from the ORCA reports of the pool's cluster (hosts that answered
/// through this gateway, e.g. via the fallback policy). A discovered pod is forgotten when
/// it has not reported for `forget_after` and nothing is in flight to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Members {
    pub pods: Vec<Pod>,
    pub loads: Vec<PodLoad>,
    /// Time of the pod's latest report (0: none yet).
    report_ms: Vec<u64>,
    configured: usize,
    warm: WarmIndex,
}

impl Members {
    pub fn new(pool: &Pool) -> Self {
        let n = pool.pods.len();
        Self {
            pods: pool.pods.clone(),
            loads: vec![PodLoad::default(); n],
            report_ms: vec![0; n],
            configured: n,
            warm: WarmIndex::default(),
        }
    }

    /// Picks a pod ([`PickerConfig::pick`]), the pods lately sent the prefix counted as
    /// holding it, and remembers the choice.
    pub fn pick(
        &mut self,
        cfg: &PickerConfig,
        prefix: Option<Prefix>,
        class: Criticality,
        now_ms: u64,
    ) -> Pick {
        let prefix = prefix.map(|p| Prefix {
            warm: self.warm.pods(p.hash, now_ms),
            ..p
        });
        let pick = cfg.pick(prefix, &self.pods, &self.loads, class);
        if let (Pick::Pod { index, .. }, Some(p)) = (pick, prefix) {
            if let Some(pod) = self.pods.get(index) {
                self.warm.note(p.hash, pod.key, now_ms);
            }
        }
        pick
    }

    /// Takes one host's latest report; an unknown `IP:port` host joins (up to MAX_PODS).
    pub fn report(&mut self, host: &str, r: &HostReport) {
        let at_ms = r.at_ms;
        let i = match self.pods.iter().position(|p| p.address == host) {
            Some(i) => i,
            None if self.pods.len() < MAX_PODS && host.parse::<SocketAddr>().is_ok() => {
                self.pods.push(Pod::new(host));
                self.loads.push(PodLoad::default());
                self.report_ms.push(0);
                self.pods.len() - 1
            }
            None => return,
        };
        if let (Some(l), Some(t)) = (self.loads.get_mut(i), self.report_ms.get_mut(i)) {
            if at_ms >= *t {
                *t = at_ms;
                l.utilization = Some(r.utilization);
                l.queue = r.queue;
            }
        }
    }

    /// Drops utilisations older than `report_ttl` and forgets silent discovered pods.
    pub fn age(&mut self, now_ms: u64, cfg: &PickerConfig) {
        for (l, t) in self.loads.iter_mut().zip(&self.report_ms) {
            if now_ms.saturating_sub(*t) > cfg.report_ttl_ms {
                l.utilization = None;
                l.queue = None;
            }
        }
        let mut i = self.configured;
        while i < self.pods.len() {
            let silent = self
                .report_ms
                .get(i)
                .is_some_and(|t| now_ms.saturating_sub(*t) > cfg.forget_after_ms);
            let idle = self.loads.get(i).is_some_and(|l| l.in_flight == 0);
            if silent && idle {
                self.pods.remove(i);
                self.loads.remove(i);
                self.report_ms.remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// The index of the pod with `key`.
    pub fn index_of(&self, key: u64) -> Option<usize> {
        self.pods.iter().position(|p| p.key == key)
    }
}

/// The rendezvous (highest random weight) score of a pod for a prefix.
pub fn rendezvous(prefix: u64, pod_key: u64) -> u64 {
    mix(prefix ^ mix(pod_key))
}

/// splitmix64's finaliser: spreads nearby keys over the whole range.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Parses the router's `x-modelgate-prefix-hash` (16 hex digits).
pub fn parse_prefix_hash(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 16 {
        return None;
    }
    let text = std::str::from_utf8(value).ok()?;
    u64::from_str_radix(text, 16).ok()
}

#[cfg(test)]
#[path = "picker_tests.rs"]
mod tests;
