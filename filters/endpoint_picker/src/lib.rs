//! endpoint_picker filter: proxy-wasm glue only; the policy lives in `modelgate_core::picker`.
//!
//! Root context (every tick): flushes the decision counters to Envoy stats, then reads the
//! pool table the gateway load shedder keeps from the pods' ORCA reports (shared data):
//! each pod's utilisation (fresh reports only), pods discovered, silent ones forgotten.
//!
//! Stream (per request): removes any client-sent destination header, then, for a
//! request the router routed to a configured pool, picks a pod from cached state and sets
//! `x-gateway-destination-endpoint` for the cluster's `override_host` policy (or answers
//! 429 when every pod is saturated and the request is sheddable). The pod's in-flight count
//! is held until the stream ends.
//!
//! Flow control (`flow` block): when every pod is saturated, a standard or sheddable
//! request is held (paused) in its pool's `FlowQueue`; on the tick and whenever a stream
//! the picker routed ends, held requests past their TTL are answered and the rest are
//! released, best first, to a pod picked again then (one with room), steered through the
//! same header.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use modelgate_core::config::FilterKind;
use modelgate_core::error::ApiError;
use modelgate_core::flow::{Entry, FlowQueue, Push};
use modelgate_core::metrics::MetricHost;
use modelgate_core::metrics::MetricKind::{Counter, Gauge};
use modelgate_core::picker::{parse_prefix_hash, Members, Pick, PickReason, PickerConfig, Prefix};
use modelgate_core::shed::ShedReason;
use modelgate_core::shed_monitor::{FlowCounts, FlowOutcome};
use modelgate_core::shed_tables::PoolTable;
use modelgate_core::vocab::{
    Criticality, CRITICALITY_HEADER, DESTINATION_HEADER, MODEL_HEADER, POOL_KEY,
    PREFIX_HASH_HEADER, SHED_HEADER,
};
use modelgate_glue::headers::header_bytes;
use modelgate_glue::host::{self, now_ns};
use modelgate_glue::log;
use modelgate_glue::stats::EnvoyStats;

mod flow;
use flow::{FlowMetrics, Hold, HoldState};
use modelgate_glue::dispatch::{Root, Stream};
use modelgate_glue::types::{Action, LogLevel, MapType};

// The request body and trailers wait while a request is held; nothing on the response.
#[cfg(feature = "export")]
modelgate_glue::export_filter!(
    PickerRoot,
    [request_headers, request_body, request_trailers, log]
);

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
    /// Flow control, [pool]: held requests and their outcomes since the flush.
    flow: Vec<FlowQueue>,
    flow_counts: Vec<FlowCounts>,
    /// Each held stream's state by context id (until the stream ends).
    holds: BTreeMap<u32, Hold>,
    /// (pool, request) displaced by a higher band: answered on the next pump.
    evicted: Vec<(usize, Entry)>,
}

impl VmState {
    fn holding(&self) -> bool {
        !self.evicted.is_empty() || self.flow.iter().any(|q| !q.is_empty())
    }
}

fn count_pick(c: &mut Counts, key: u64, reason: PickReason) {
    match c.picks.iter_mut().find(|(k, _)| *k == key) {
        Some((_, n)) => {
            if let Some(n) = n.get_mut(reason.index()) {
                *n += 1;
            }
        }
        None => {
            let mut n = [0; REASONS];
            if let Some(n) = n.get_mut(reason.index()) {
                *n = 1;
            }
            c.picks.push((key, n));
        }
    }
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
    /// [pool], with flow control.
    flow_metrics: Vec<FlowMetrics>,
    /// The tick period in force (faster while requests are held).
    tick_ms: u64,
}

#[derive(Default)]
pub struct PickerRoot {
    active: Option<Active>,
}

impl Root for PickerRoot {
    type Stream = PickerHttp;

    fn on_vm_start(&mut self) -> bool {
        modelgate_glue::log_start(FilterKind::EndpointPicker);
        true
    }

    fn on_configure(&mut self, config: &[u8]) -> bool {
        let Some(config) = modelgate_glue::configure::<PickerConfig>(config) else {
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
            flow: config.pools.iter().map(|_| FlowQueue::default()).collect(),
            flow_counts: config.pools.iter().map(|_| FlowCounts::default()).collect(),
            holds: BTreeMap::new(),
            evicted: Vec::new(),
        };
        let flow_metrics = match config.flow {
            Some(_) => config
                .pools
                .iter()
                .map(|p| FlowMetrics::define(&p.name))
                .collect(),
            None => Vec::new(),
        };
        self.active = Some(Active {
            metrics: Metrics::define(&config),
            flow_metrics,
            tick_ms: config.tick_ms,
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

    fn new_stream(&mut self, context_id: u32) -> Option<PickerHttp> {
        let a = self.active.as_ref()?;
        Some(PickerHttp {
            id: context_id,
            config: a.config.clone(),
            vm: a.vm.clone(),
            picked: None,
            held: false,
            finished: false,
        })
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
                    members.report(host, r);
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
        drop(guard);
        let Some(fc) = self.config.flow.as_ref() else {
            return;
        };
        pump(&self.config, &self.vm, now);
        let Ok(mut guard) = self.vm.try_borrow_mut() else {
            return;
        };
        let vm = &mut *guard;
        for ((m, c), q) in self
            .flow_metrics
            .iter_mut()
            .zip(vm.flow_counts.iter_mut())
            .zip(vm.flow.iter())
        {
            m.flush(c, flow::held(q));
        }
        // Tick fast while requests are held: a pod's room from another worker's stream or
        // a fresh report is only seen here.
        let want = if vm.holding() {
            fc.tick_ms.min(self.config.tick_ms)
        } else {
            self.config.tick_ms
        };
        drop(guard);
        if want != self.tick_ms && modelgate_glue::tick_every(want) {
            self.tick_ms = want;
        }
    }
}

/// The 429 (or, with no pod at all, 503) a request flow control could not serve gets.
fn flow_error(pool: &str, reason: ShedReason, no_pods: bool) -> ApiError {
    if no_pods {
        return ApiError::unavailable(
            "no_capacity",
            format!(
                "No model server of `{pool}` is known while the request waited. Retry after \
                 {RETRY_AFTER_S} s."
            ),
            RETRY_AFTER_S,
        );
    }
    let what = if reason == ShedReason::FlowTimeout {
        "waited too long for a model server"
    } else {
        "found too many requests already waiting"
    };
    ApiError::rate_limited(
        format!(
            "Overloaded: every model server of `{pool}` is saturated and the request {what}. \
             Retry after {RETRY_AFTER_S} s."
        ),
        RETRY_AFTER_S,
    )
}

/// Flow control, on the tick and when a stream the picker routed ends: answers the held
/// requests that were displaced or waited past their TTL, then releases held requests,
/// best first, to a pod picked for each while one has room. Host calls on streams are made
/// with no borrow of the VM state held: a local reply runs the stream's callbacks at once.
fn pump(cfg: &PickerConfig, state: &RefCell<VmState>, now: u64) {
    let Some(fc) = cfg.flow.as_ref() else {
        return;
    };
    let mut refuse: Vec<(u32, ApiError, ShedReason)> = Vec::new();
    let mut resume: Vec<(u32, String)> = Vec::new();
    {
        let Ok(mut guard) = state.try_borrow_mut() else {
            return;
        };
        let vm = &mut *guard;
        if !vm.holding() {
            return;
        }
        let mut out: Vec<(usize, Entry, bool)> =
            vm.evicted.drain(..).map(|(p, e)| (p, e, false)).collect();
        let mut expired = Vec::new();
        let mut released = Vec::new();
        let pools = vm
            .flow
            .iter_mut()
            .zip(vm.members.iter_mut())
            .zip(vm.counts.iter_mut())
            .zip(vm.flow_counts.iter_mut())
            .enumerate();
        for (pool, (((q, members), counts), fcounts)) in pools {
            q.expire(fc, now, &mut expired);
            out.extend(expired.drain(..).map(|e| (pool, e, true)));
            let holds = &vm.holds;
            cfg.release(
                q,
                members,
                |id| holds.get(&id).and_then(|h| h.prefix),
                now,
                &mut released,
            );
            for (e, index, reason) in released.drain(..) {
                let Some(pod) = members.pods.get(index) else {
                    continue;
                };
                count_pick(counts, pod.key(), reason);
                if let Some(h) = vm.holds.get_mut(&e.id) {
                    h.state = HoldState::Released(pod.key());
                }
                fcounts.count(e.class, FlowOutcome::Released);
                fcounts.wait(e.class, now.saturating_sub(e.since_ms));
                resume.push((e.id, pod.address.clone()));
            }
        }
        for (pool, e, timed_out) in out {
            // A displaced request whose client has gone since is no longer tracked.
            let Some(h) = vm.holds.get_mut(&e.id) else {
                continue;
            };
            h.state = HoldState::Refused;
            let reason = if timed_out {
                ShedReason::FlowTimeout
            } else {
                ShedReason::FlowFull
            };
            if let Some(c) = vm.flow_counts.get_mut(pool) {
                if timed_out {
                    c.count(e.class, FlowOutcome::Expired);
                    c.wait(e.class, now.saturating_sub(e.since_ms));
                }
            }
            let name = cfg.pools.get(pool).map_or("", |p| p.name.as_str());
            let no_pods = timed_out && vm.members.get(pool).is_none_or(|m| m.pods.is_empty());
            refuse.push((e.id, flow_error(name, reason, no_pods), reason));
        }
    }
    for (id, err, reason) in &refuse {
        modelgate_glue::stream::reply(*id, err, &[(SHED_HEADER, reason.as_str())]);
    }
    for (id, address) in &resume {
        let resumed = modelgate_glue::stream::enter(*id) && {
            let _ = modelgate_glue::headers::set(
                MapType::HttpRequestHeaders,
                DESTINATION_HEADER,
                Some(address.as_bytes()),
            );
            host::resume_request().is_ok()
        };
        if !resumed {
            // The stream is gone (its end will not be seen here): give the pod back.
            if let Ok(mut vm) = state.try_borrow_mut() {
                if let Some(Hold {
                    pool,
                    state: HoldState::Released(key),
                    ..
                }) = vm.holds.remove(id)
                {
                    release_pod(&mut vm, pool, key);
                }
            }
        }
    }
}

/// One of this proxy's requests to pod `key` of `pool` is over.
fn release_pod(vm: &mut VmState, pool: usize, key: u64) {
    if let Some(m) = vm.members.get_mut(pool) {
        if let Some(l) = m.index_of(key).and_then(|i| m.loads.get_mut(i)) {
            l.in_flight = l.in_flight.saturating_sub(1);
        }
    }
}

pub struct PickerHttp {
    /// This stream's context id (how the root context finds it to resume it).
    id: u32,
    config: Rc<PickerConfig>,
    vm: Rc<RefCell<VmState>>,
    /// (pool, pod key) counted in flight until the stream ends.
    picked: Option<(usize, u64)>,
    /// Held by flow control (its state is in `VmState::holds`).
    held: bool,
    /// `finish` has run.
    finished: bool,
}

impl Stream for PickerHttp {
    fn on_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // Only the picker steers: a client-sent destination is dropped before anything else.
        let _ = modelgate_glue::headers::set(MapType::HttpRequestHeaders, DESTINATION_HEADER, None);
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
            .and_then(|v| parse_prefix_hash(&v))
            .map(|hash| Prefix::new(hash, modelgate_glue::headers::request_content_length()));
        let class = header_bytes(MapType::HttpRequestHeaders, CRITICALITY_HEADER)
            .and_then(|v| std::str::from_utf8(&v).ok().and_then(Criticality::parse))
            .unwrap_or(Criticality::Standard);
        let Ok(mut guard) = self.vm.try_borrow_mut() else {
            return Action::Continue;
        };
        let vm = &mut *guard;
        // Arrivals do not overtake held requests of their band or a higher one.
        let behind =
            self.config.flow.is_some() && vm.flow.get(pool_i).is_some_and(|q| q.has_ahead(class));
        let (Some(members), Some(counts), Some(since)) = (
            vm.members.get_mut(pool_i),
            vm.counts.get_mut(pool_i),
            vm.since_explore.get_mut(pool_i),
        ) else {
            return Action::Continue;
        };
        *since = since.saturating_add(1);
        let explore = self.config.explore_every > 0 && *since >= self.config.explore_every;
        let pick = if behind {
            Pick::Wait
        } else if explore {
            *since = 0;
            Pick::None
        } else {
            members.pick(&self.config, prefix, class, started / 1_000_000)
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
                count_pick(counts, key, reason);
                self.picked = Some((pool_i, key));
                let _ = modelgate_glue::headers::set(
                    MapType::HttpRequestHeaders,
                    DESTINATION_HEADER,
                    Some(pod.address.as_bytes()),
                );
                Action::Continue
            }
            Pick::Wait => {
                match hold(&self.config, self.id, vm, pool_i, prefix, class) {
                    Some(Push::Held | Push::HeldEvicting(_)) => {
                        self.held = true;
                        return Action::Pause;
                    }
                    Some(Push::Refused(_)) => {}
                    None => return Action::Continue,
                }
                drop(guard);
                let name = self.pool_name(pool_i);
                let reason = ShedReason::FlowFull;
                modelgate_glue::send_error(
                    &flow_error(name, reason, false),
                    &[(SHED_HEADER, reason.as_str())],
                );
                Action::Pause
            }
            Pick::Shed => {
                counts.shed += 1;
                drop(guard);
                let name = self.pool_name(pool_i);
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

    fn on_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        modelgate_glue::stream::hold_while(self.is_held())
    }

    fn on_request_trailers(&mut self, _num_trailers: usize) -> Action {
        modelgate_glue::stream::hold_while(self.is_held())
    }

    fn on_log(&mut self) {
        // A pod freed by this stream goes to the next held request now, not at the tick.
        if self.finish() {
            pump(&self.config, &self.vm, modelgate_glue::now_ms());
        }
    }
}

impl PickerHttp {
    fn pool_name(&self, pool: usize) -> &str {
        self.config.pools.get(pool).map_or("", |p| p.name.as_str())
    }

    fn is_held(&self) -> bool {
        self.held
            && self.vm.try_borrow().is_ok_and(|vm| {
                vm.holds
                    .get(&self.id)
                    .is_some_and(|h| h.state == HoldState::Held)
            })
    }

    /// The stream is over: out of the queue if still held, its pod's in-flight count
    /// freed if it was routed. True when held requests may take the freed room.
    fn finish(&mut self) -> bool {
        if std::mem::replace(&mut self.finished, true) {
            return false;
        }
        let Ok(mut guard) = self.vm.try_borrow_mut() else {
            return false;
        };
        let vm = &mut *guard;
        if self.held {
            match vm.holds.remove(&self.id) {
                // The client gave up while held: out of the queue at once.
                Some(Hold {
                    pool,
                    state: HoldState::Held,
                    ..
                }) => {
                    let gone = vm.flow.get_mut(pool).and_then(|q| q.remove(self.id));
                    if let (Some(e), Some(c)) = (gone, vm.flow_counts.get_mut(pool)) {
                        c.count(e.class, FlowOutcome::Abandoned);
                    }
                }
                Some(Hold {
                    pool,
                    state: HoldState::Released(key),
                    ..
                }) => self.picked = Some((pool, key)),
                Some(_) | None => {}
            }
        }
        let Some((pool, key)) = self.picked.take() else {
            return false;
        };
        release_pod(vm, pool, key);
        vm.holding()
    }
}

impl Drop for PickerHttp {
    fn drop(&mut self) {
        // Normally done in `on_log`; a stream Envoy never logs still frees its pod.
        self.finish();
    }
}

/// Flow control: holds request `id` in its pool's queue (paused until the root
/// context resumes or answers it). `None` without flow control.
fn hold(
    cfg: &PickerConfig,
    id: u32,
    vm: &mut VmState,
    pool: usize,
    prefix: Option<Prefix>,
    class: Criticality,
) -> Option<Push> {
    let fc = cfg.flow.as_ref()?;
    let (tenant, bytes) = modelgate_glue::headers::flow_tenant_and_bytes(&fc.tenant_header);
    let entry = Entry {
        id,
        class,
        tenant: tenant.to_string(),
        bytes,
        since_ms: modelgate_glue::now_ms(),
    };
    let push = vm.flow.get_mut(pool)?.push(fc, entry);
    let counts = vm.flow_counts.get_mut(pool)?;
    match &push {
        Push::Held | Push::HeldEvicting(_) => counts.count(class, FlowOutcome::Held),
        Push::Refused(_) => counts.count(class, FlowOutcome::Refused),
    }
    if let Push::HeldEvicting(e) = &push {
        counts.count(e.class, FlowOutcome::Refused);
        vm.evicted.push((pool, e.clone()));
    }
    if matches!(push, Push::Held | Push::HeldEvicting(_)) {
        vm.holds.insert(
            id,
            Hold {
                pool,
                prefix,
                state: HoldState::Held,
            },
        );
    }
    Some(push)
}
