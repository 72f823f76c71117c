//! endpoint_picker filter: proxy-wasm glue only; the policy lives in `modelgate_core::picker`.
//!
//! Root context (every tick): flushes the decision counters to Envoy stats, then reads the
//! pool table the gateway load shedder keeps from the pods' ORCA reports (shared data):
//! each pod's utilisation (fresh reports only), pods discovered, silent ones forgotten.
//!
//! HTTP context (per request): removes any client-sent destination header, then, for a
//! request the router routed to a configured pool, picks a pod from cached state and sets
//! `x-gateway-destination-endpoint` for the cluster's `override_host` policy (or answers
//! 429 when every pod is saturated and the request is sheddable). The pod's in-flight count
//! is held until the stream ends.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use modelgate_core::config::FilterKind;
use modelgate_core::error::ApiError;
use modelgate_core::metrics::MetricHost;
use modelgate_core::metrics::MetricKind::{Counter, Gauge};
use modelgate_core::picker::{parse_prefix_hash, Members, Pick, PickReason, PickerConfig};
use modelgate_core::shed_tables::PoolTable;
use modelgate_core::vocab::{
    Criticality, CRITICALITY_HEADER, DESTINATION_HEADER, MODEL_HEADER, POOL_KEY,
    PREFIX_HASH_HEADER, SHED_HEADER,
};
use modelgate_glue::headers::header_bytes;
use modelgate_glue::host::{self, now_ns};
use modelgate_glue::log;
use modelgate_glue::stats::EnvoyStats;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(PickerRoot::default()) });
}}

const REASONS: usize = PickReason::ALL.len();
/// Seconds a shed client is told to wait.
const RETRY_AFTER_S: u32 = 1;

/// Most distinct `pod` label values one pool defines over the VM's life (pods come and go
/// in a cluster); later pods are counted under `pod="other"`.
const MAX_POD_LABELS: usize = 512;

/// Counts since the last flush (flushed on the tick: no metric host call per request).
#[derive(Default)]
struct Counts {
    /// (pod key, picks by reason); a handful of entries per tick.
    picks: Vec<(u64, [u64; REASONS])>,
    shed: u64,
    fallback: u64,
}

/// This VM's state shared between the root context and its HTTP contexts.
struct VmState {
    /// [pool], same order as the config.
    members: Vec<Members>,
    counts: Vec<Counts>,
    /// Requests per pool since the last one left to the fallback policy (`explore_every`).
    since_explore: Vec<u32>,
    latency_ns: u64,
}

/// Metric ids of one pool; pick counters are defined when a pod is first counted.
struct PoolMetrics {
    name: String,
    cluster: String,
    picks: BTreeMap<String, [Option<u32>; REASONS]>,
    shed: Option<u32>,
    fallback: Option<u32>,
    saturated: Option<u32>,
}

/// Metric ids, defined in `on_configure` (per-pod ones on first use).
struct Metrics {
    pools: Vec<PoolMetrics>,
    latency: Option<u32>,
}

impl Metrics {
    fn define(cfg: &PickerConfig) -> Self {
        let pools = cfg
            .pools
            .iter()
            .map(|pool| {
                let model = [("model_name", pool.name.as_str())];
                PoolMetrics {
                    name: pool.name.clone(),
                    cluster: pool.cluster.clone(),
                    picks: BTreeMap::new(),
                    shed: EnvoyStats.define_labeled(Counter, "ml_picker_shed_total", &model),
                    fallback: EnvoyStats.define_labeled(
                        Counter,
                        "ml_picker_fallback_total",
                        &model,
                    ),
                    saturated: EnvoyStats.define_labeled(Gauge, "ml_picker_saturated_pods", &model),
                }
            })
            .collect();
        Self {
            pools,
            latency: EnvoyStats.define_labeled(Counter, "ml_picker_latency_nanoseconds_total", &[]),
        }
    }
}

impl PoolMetrics {
    /// The pick counters of `pod`, defined on first use (bounded by MAX_POD_LABELS).
    fn picks(&mut self, pod: &str) -> [Option<u32>; REASONS] {
        if let Some(ids) = self.picks.get(pod) {
            return *ids;
        }
        let label = if self.picks.len() < MAX_POD_LABELS {
            pod
        } else {
            "other"
        };
        let ids = PickReason::ALL.map(|r| {
            EnvoyStats.define_labeled(
                Counter,
                "ml_picker_picks_total",
                &[
                    ("model_name", self.name.as_str()),
                    ("pod", label),
                    ("reason", r.as_str()),
                ],
            )
        });
        self.picks.insert(label.to_string(), ids);
        ids
    }

    /// Flushes one pool's counts; pods are named through `members` (before any leave).
    fn flush(&mut self, c: &mut Counts, members: &Members) {
        for (key, counts) in c.picks.drain(..) {
            let Some(pod) = members.index_of(key).and_then(|i| members.pods.get(i)) else {
                continue;
            };
            let ids = self.picks(&pod.address.clone());
            for (id, n) in ids.iter().zip(counts) {
                EnvoyStats.add(*id, n);
            }
        }
        EnvoyStats.add(self.shed, std::mem::take(&mut c.shed));
        EnvoyStats.add(self.fallback, std::mem::take(&mut c.fallback));
    }
}

struct Active {
    config: Rc<PickerConfig>,
    vm: Rc<RefCell<VmState>>,
    metrics: Metrics,
}

#[derive(Default)]
struct PickerRoot {
    active: Option<Active>,
}

impl Context for PickerRoot {}

impl RootContext for PickerRoot {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        modelgate_glue::log_start(FilterKind::EndpointPicker);
        true
    }

    fn on_configure(&mut self, size: usize) -> bool {
        let Some(config) = modelgate_glue::configure::<PickerConfig>(size) else {
            return false;
        };
        if !modelgate_glue::start_ticks(FilterKind::EndpointPicker, config.tick_ms) {
            return false;
        }
        let pods: usize = config.pools.iter().map(|p| p.pods.len()).sum();
        log(
            LogLevel::Info,
            &format!(
                "endpoint_picker: configured ({} pools, {pods} pods)",
                config.pools.len()
            ),
        );
        let vm = VmState {
            members: config.pools.iter().map(Members::new).collect(),
            counts: config.pools.iter().map(|_| Counts::default()).collect(),
            since_explore: vec![0; config.pools.len()],
            latency_ns: 0,
        };
        self.active = Some(Active {
            metrics: Metrics::define(&config),
            config: Rc::new(config),
            vm: Rc::new(RefCell::new(vm)),
        });
        true
    }

    fn on_tick(&mut self) {
        if let Some(a) = self.active.as_mut() {
            a.tick(modelgate_glue::now_ms());
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let a = self.active.as_ref()?;
        Some(Box::new(PickerHttp {
            config: a.config.clone(),
            vm: a.vm.clone(),
            picked: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Active {
    /// Flushes the counters, then folds the shedder's pool table into each pool's members:
    /// utilisations, discovered pods, stale reports, forgotten pods.
    fn tick(&mut self, now: u64) {
        let table: PoolTable = modelgate_glue::read(POOL_KEY).unwrap_or_default();
        let Ok(mut guard) = self.vm.try_borrow_mut() else {
            return;
        };
        let vm = &mut *guard;
        EnvoyStats.add(self.metrics.latency, std::mem::take(&mut vm.latency_ns));
        for ((members, counts), pm) in vm
            .members
            .iter_mut()
            .zip(vm.counts.iter_mut())
            .zip(self.metrics.pools.iter_mut())
        {
            pm.flush(counts, members);
            if let Some(hosts) = table.clusters.get(&pm.cluster) {
                for (host, r) in hosts {
                    members.report(host, r.utilization, r.at_ms);
                }
            }
            members.age(now, &self.config);
            let saturated = members
                .loads
                .iter()
                .filter(|l| self.config.saturated(l))
                .count();
            if let Some(id) = pm.saturated {
                EnvoyStats.set_gauge(id, saturated as u64);
            }
        }
    }
}

struct PickerHttp {
    config: Rc<PickerConfig>,
    vm: Rc<RefCell<VmState>>,
    /// (pool, pod key) counted in flight until the stream ends.
    picked: Option<(usize, u64)>,
}

impl Context for PickerHttp {}

impl HttpContext for PickerHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // Only the picker steers: a client-sent destination is dropped before anything else.
        let _ = host::set_header(MapType::HttpRequestHeaders, DESTINATION_HEADER, None);
        let Some(model) = header_bytes(MapType::HttpRequestHeaders, MODEL_HEADER) else {
            return Action::Continue;
        };
        let Some(pool_i) = std::str::from_utf8(&model)
            .ok()
            .and_then(|m| self.config.pool_index(m))
        else {
            return Action::Continue;
        };
        let started = now_ns();
        let prefix = header_bytes(MapType::HttpRequestHeaders, PREFIX_HASH_HEADER)
            .and_then(|v| parse_prefix_hash(&v));
        let class = header_bytes(MapType::HttpRequestHeaders, CRITICALITY_HEADER)
            .and_then(|v| std::str::from_utf8(&v).ok().and_then(Criticality::parse))
            .unwrap_or(Criticality::Standard);
        let Ok(mut guard) = self.vm.try_borrow_mut() else {
            return Action::Continue;
        };
        let vm = &mut *guard;
        let (Some(members), Some(counts), Some(since)) = (
            vm.members.get_mut(pool_i),
            vm.counts.get_mut(pool_i),
            vm.since_explore.get_mut(pool_i),
        ) else {
            return Action::Continue;
        };
        *since = since.saturating_add(1);
        let explore = self.config.explore_every > 0 && *since >= self.config.explore_every;
        let pick = if explore {
            *since = 0;
            Pick::None
        } else {
            self.config
                .pick(prefix, &members.pods, &members.loads, class)
        };
        vm.latency_ns = vm
            .latency_ns
            .saturating_add(now_ns().saturating_sub(started));
        match pick {
            Pick::Pod { index, reason } => {
                let (Some(pod), Some(load)) =
                    (members.pods.get(index), members.loads.get_mut(index))
                else {
                    return Action::Continue;
                };
                load.in_flight = load.in_flight.saturating_add(1);
                let key = pod.key();
                match counts.picks.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, c)) => {
                        if let Some(n) = c.get_mut(reason.index()) {
                            *n += 1;
                        }
                    }
                    None => {
                        let mut c = [0; REASONS];
                        if let Some(n) = c.get_mut(reason.index()) {
                            *n = 1;
                        }
                        counts.picks.push((key, c));
                    }
                }
                self.picked = Some((pool_i, key));
                let _ = host::set_header(
                    MapType::HttpRequestHeaders,
                    DESTINATION_HEADER,
                    Some(pod.address.as_bytes()),
                );
                Action::Continue
            }
            Pick::Shed => {
                counts.shed += 1;
                drop(guard);
                let name = self
                    .config
                    .pools
                    .get(pool_i)
                    .map_or("", |p| p.name.as_str());
                let err = ApiError::rate_limited(
                    format!(
                        "Overloaded: every model server of `{name}` is saturated; sheddable \
                         requests are shed first. Retry after {RETRY_AFTER_S} s."
                    ),
                    RETRY_AFTER_S,
                );
                modelgate_glue::send_error(&err, &[(SHED_HEADER, "pool_saturated")])
            }
            // No known pod, or this request explores: the cluster's fallback policy picks.
            Pick::None => {
                counts.fallback += 1;
                Action::Continue
            }
        }
    }
}

impl Drop for PickerHttp {
    fn drop(&mut self) {
        let Some((pool, key)) = self.picked else {
            return;
        };
        if let Ok(mut vm) = self.vm.try_borrow_mut() {
            if let Some(m) = vm.members.get_mut(pool) {
                if let Some(l) = m.index_of(key).and_then(|i| m.loads.get_mut(i)) {
                    l.in_flight = l.in_flight.saturating_sub(1);
                }
            }
        }
    }
}
