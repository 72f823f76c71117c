//! endpoint_picker filter: proxy-wasm glue only; the policy lives in `modelgate_core::picker`.
//!
//! Root context (every tick): reads the pool table the gateway load shedder keeps from the
//! pods' ORCA reports (shared data), refreshes each pod's utilisation (fresh reports only),
//! and flushes the decision counters to Envoy stats.
//!
//! HTTP context (per request): removes any client-sent destination header, then, for a
//! request the router routed to a configured pool, picks a pod from cached state and sets
//! `x-gateway-destination-endpoint` for the cluster's `override_host` policy (or answers
//! 429 when every pod is saturated and the request is sheddable). The pod's in-flight count
//! is held until the stream ends.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use modelgate_core::metrics::{encode_stat_name, SHED_HEADER};
use modelgate_core::picker::{
    parse_prefix_hash, Pick, PickReason, PickerConfig, PodLoad, DESTINATION_HEADER,
};
use modelgate_core::router::{MODEL_HEADER, PREFIX_HASH_HEADER};
use modelgate_core::shed::{Criticality, PoolTable, CRITICALITY_HEADER, POOL_KEY};
use modelgate_core::error::ApiError;
use modelgate_glue::headers::header_bytes;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(PickerRoot::default()) });
}}

const REASONS: usize = PickReason::ALL.len();
/// Seconds a shed client is told to wait.
const RETRY_AFTER_S: u32 = 1;

fn log(level: LogLevel, msg: &str) {
    let _ = hostcalls::log(level, msg);
}

/// Wall-clock nanoseconds (0 if the host cannot tell).
fn now_ns() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Counts since the last flush (flushed on the tick: no metric host call per request).
struct Counts {
    /// [pool][pod][reason]
    picks: Vec<Vec<[u64; REASONS]>>,
    shed: Vec<u64>,
    latency_ns: u64,
}

/// This VM's state shared between the root context and its HTTP contexts.
struct VmState {
    /// [pool][pod], same order as the config.
    loads: Vec<Vec<PodLoad>>,
    counts: Counts,
}

/// Metric ids, defined once in `on_configure`.
struct Metrics {
    picks: Vec<Vec<[Option<u32>; REASONS]>>,
    shed: Vec<Option<u32>>,
    saturated: Vec<Option<u32>>,
    latency: Option<u32>,
}

impl Metrics {
    fn define(cfg: &PickerConfig) -> Self {
        let mut name = String::with_capacity(128);
        let mut def = |kind: MetricType, metric: &str, labels: &[(&str, &str)]| {
            encode_stat_name(&mut name, metric, labels);
            hostcalls::define_metric(kind, &name).ok()
        };
        let mut picks = Vec::with_capacity(cfg.pools.len());
        let mut shed = Vec::with_capacity(cfg.pools.len());
        let mut saturated = Vec::with_capacity(cfg.pools.len());
        for pool in &cfg.pools {
            let model = ("model_name", pool.name.as_str());
            picks.push(
                pool.pods
                    .iter()
                    .map(|pod| {
                        PickReason::ALL.map(|r| {
                            def(
                                MetricType::Counter,
                                "ml_picker_picks_total",
                                &[model, ("pod", &pod.address), ("reason", r.as_str())],
                            )
                        })
                    })
                    .collect(),
            );
            shed.push(def(MetricType::Counter, "ml_picker_shed_total", &[model]));
            saturated.push(def(MetricType::Gauge, "ml_picker_saturated_pods", &[model]));
        }
        Self {
            picks,
            shed,
            saturated,
            latency: def(MetricType::Counter, "ml_picker_latency_nanoseconds_total", &[]),
        }
    }

    fn flush(&self, c: &mut Counts) {
        let add = |id: Option<u32>, n: &mut u64| {
            if let (Some(id), true) = (id, *n > 0) {
                let _ = hostcalls::increment_metric(id, i64::try_from(*n).unwrap_or(i64::MAX));
            }
            *n = 0;
        };
        for (ids, counts) in self.picks.iter().zip(c.picks.iter_mut()) {
            for (pod_ids, pod_counts) in ids.iter().zip(counts.iter_mut()) {
                for (id, n) in pod_ids.iter().zip(pod_counts.iter_mut()) {
                    add(*id, n);
                }
            }
        }
        for (id, n) in self.shed.iter().zip(c.shed.iter_mut()) {
            add(*id, n);
        }
        add(self.latency, &mut c.latency_ns);
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
    fn on_configure(&mut self, size: usize) -> bool {
        let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let config = match PickerConfig::parse(&bytes) {
            Ok(c) => c,
            Err(e) => {
                log(LogLevel::Error, &format!("endpoint_picker: {e}"));
                return false;
            }
        };
        if hostcalls::set_tick_period(Duration::from_millis(config.tick_ms)).is_err() {
            log(LogLevel::Error, "endpoint_picker: cannot set the tick period");
            return false;
        }
        let pods: usize = config.pools.iter().map(|p| p.pods.len()).sum();
        log(
            LogLevel::Info,
            &format!(
                "endpoint_picker {}: configured ({} pools, {pods} pods)",
                env!("CARGO_PKG_VERSION"),
                config.pools.len()
            ),
        );
        let vm = VmState {
            loads: config
                .pools
                .iter()
                .map(|p| vec![PodLoad::default(); p.pods.len()])
                .collect(),
            counts: Counts {
                picks: config
                    .pools
                    .iter()
                    .map(|p| vec![[0; REASONS]; p.pods.len()])
                    .collect(),
                shed: vec![0; config.pools.len()],
                latency_ns: 0,
            },
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
    /// Refreshes each pod's utilisation from the shedder's pool table; a pod without a
    /// fresh report is judged on this proxy's in-flight count alone.
    fn tick(&mut self, now: u64) {
        let table: PoolTable = modelgate_glue::read(POOL_KEY).unwrap_or_default();
        let Ok(mut vm) = self.vm.try_borrow_mut() else {
            return;
        };
        for ((pool, loads), sat_id) in self
            .config
            .pools
            .iter()
            .zip(vm.loads.iter_mut())
            .zip(&self.metrics.saturated)
        {
            let hosts = table.clusters.get(&pool.name);
            let mut saturated = 0u64;
            for (pod, load) in pool.pods.iter().zip(loads.iter_mut()) {
                load.utilization = hosts
                    .and_then(|h| h.get(&pod.address))
                    .filter(|r| now.saturating_sub(r.at_ms) <= self.config.report_ttl_ms)
                    .map(|r| r.utilization);
                saturated += u64::from(self.config.saturated(load));
            }
            if let Some(id) = sat_id {
                let _ = hostcalls::record_metric(*id, saturated);
            }
        }
        self.metrics.flush(&mut vm.counts);
    }
}

struct PickerHttp {
    config: Rc<PickerConfig>,
    vm: Rc<RefCell<VmState>>,
    /// (pool, pod) counted in flight until the stream ends.
    picked: Option<(usize, usize)>,
}

impl Context for PickerHttp {}

impl HttpContext for PickerHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // Only the picker steers: a client-sent destination is dropped before anything else.
        let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, DESTINATION_HEADER);
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
        let Some(pool) = self.config.pools.get(pool_i) else {
            return Action::Continue;
        };
        let Ok(mut vm) = self.vm.try_borrow_mut() else {
            return Action::Continue;
        };
        let Some(loads) = vm.loads.get(pool_i) else {
            return Action::Continue;
        };
        let pick = self.config.pick(prefix, &pool.pods, loads, class);
        let elapsed = now_ns().saturating_sub(started);
        vm.counts.latency_ns = vm.counts.latency_ns.saturating_add(elapsed);
        match pick {
            Pick::Pod { index, reason } => {
                let Some(pod) = pool.pods.get(index) else {
                    return Action::Continue;
                };
                if let Some(l) = vm.loads.get_mut(pool_i).and_then(|l| l.get_mut(index)) {
                    l.in_flight = l.in_flight.saturating_add(1);
                }
                if let Some(n) = vm
                    .counts
                    .picks
                    .get_mut(pool_i)
                    .and_then(|p| p.get_mut(index))
                    .and_then(|r| r.get_mut(reason.index()))
                {
                    *n += 1;
                }
                self.picked = Some((pool_i, index));
                let _ = hostcalls::set_map_value(
                    MapType::HttpRequestHeaders,
                    DESTINATION_HEADER,
                    Some(&pod.address),
                );
                Action::Continue
            }
            Pick::Shed => {
                if let Some(n) = vm.counts.shed.get_mut(pool_i) {
                    *n += 1;
                }
                drop(vm);
                let err = ApiError::rate_limited(
                    format!(
                        "Overloaded: every model server of `{}` is saturated; sheddable \
                         requests are shed first. Retry after {RETRY_AFTER_S} s.",
                        pool.name
                    ),
                    RETRY_AFTER_S,
                );
                modelgate_glue::send_error(&err, &[(SHED_HEADER, "pool_saturated")]);
                Action::Pause
            }
            Pick::None => Action::Continue,
        }
    }
}

impl Drop for PickerHttp {
    fn drop(&mut self) {
        let Some((pool, pod)) = self.picked else {
            return;
        };
        if let Ok(mut vm) = self.vm.try_borrow_mut() {
            if let Some(l) = vm.loads.get_mut(pool).and_then(|l| l.get_mut(pod)) {
                l.in_flight = l.in_flight.saturating_sub(1);
            }
        }
    }
}
