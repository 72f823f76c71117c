//! load_shedder filter: proxy-wasm glue only; the policy lives in `modelgate_core::shed`.
//!
//! Root context (every tick): the shared scraper polls (lease holder only) and refreshes
//! the cached queue snapshot; this worker publishes its in-flight count and reads the
//! others' (one CAS'd shared-data entry); the ORCA header is rebuilt; in gateway mode
//! the ORCA reports seen since the last tick are merged into the pool table. Counters
//! are accumulated per VM and flushed here too.
//!
//! HTTP context (per request): one header read, a decision on cached state, and either
//! a local 429 or a local in-flight increment. Per response: one header write (sidecar)
//! or one header read (gateway; two property reads more when it carries a report).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use modelgate_core::config::FilterKind;
use modelgate_core::metrics::encode_stat_name;
use modelgate_core::shed::{
    self, effective_criticality, Decision, HostReport, LoadView, OrcaReporter, PoolTable,
    ServerView, ShedConfig, ShedReason, WorkerLoad, WorkerTable,
};
use modelgate_core::state;
use modelgate_core::vocab::{
    Criticality, CRITICALITY_HEADER, ORCA_HEADER, POOL_KEY, SHED_HEADER, WORKERS_KEY,
};
use modelgate_glue::headers::header_bytes;
use modelgate_glue::scraper::Scraper;
use modelgate_glue::{host, log};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(ShedRoot::default()) });
}}

const CLASSES: usize = 3;
const REASONS: usize = ShedReason::ALL.len();

/// Counts since the last flush; flushed to Envoy stats on the tick, so a request costs
/// no metric host call.
#[derive(Default)]
struct Counts {
    admitted: [u64; CLASSES],
    shed: [[u64; CLASSES]; REASONS],
}

/// This VM's state shared between the root context and its HTTP contexts.
struct VmState {
    view: LoadView,
    /// Gateway: clusters whose pool is saturated (usually none or one).
    saturated: Vec<String>,
    /// Requests admitted by this VM and not yet finished.
    in_flight: u32,
    /// Other workers' in-flight requests as of their last tick.
    others_in_flight: u32,
    /// Upstream responses this VM has completed (the ORCA request rate).
    completed: u64,
    /// The ORCA header value, rebuilt on the tick; `None` while the load is unknown.
    orca: Option<String>,
    /// Gateway: reports seen since the last tick.
    reports: PoolTable,
    /// Time of the last tick, used to stamp reports without a clock call per response.
    now_ms: u64,
    counts: Counts,
}

impl VmState {
    fn new() -> Self {
        Self {
            view: LoadView::default(),
            saturated: Vec::new(),
            in_flight: 0,
            others_in_flight: 0,
            completed: 0,
            orca: None,
            reports: PoolTable::default(),
            now_ms: 0,
            counts: Counts::default(),
        }
    }
}

/// Metric ids, defined once in `on_configure`.
struct Metrics {
    admitted: [Option<u32>; CLASSES],
    shed: [[Option<u32>; CLASSES]; REASONS],
    in_flight: Option<u32>,
    stale: Option<u32>,
    snapshot_age: Option<u32>,
    utilization: Option<u32>,
    pool_utilization: Option<u32>,
    pool_saturated: Option<u32>,
}

impl Metrics {
    fn define() -> Self {
        let mut name = String::new();
        let mut def = |kind: MetricType, metric: &str, labels: &[(&str, &str)]| {
            encode_stat_name(&mut name, metric, labels);
            host::define_metric(kind, &name).ok()
        };
        let mut admitted = [None; CLASSES];
        let mut shed = [[None; CLASSES]; REASONS];
        for c in Criticality::ALL {
            if let Some(slot) = admitted.get_mut(c.index()) {
                *slot = def(
                    MetricType::Counter,
                    "modelgate_shedder_admitted_total",
                    &[("criticality", c.as_str())],
                );
            }
            for r in ShedReason::ALL {
                // Critical is never shed: no series for it.
                if c == Criticality::Critical {
                    continue;
                }
                if let Some(slot) = shed
                    .get_mut(r.index())
                    .and_then(|row| row.get_mut(c.index()))
                {
                    *slot = def(
                        MetricType::Counter,
                        "modelgate_shedder_shed_total",
                        &[("criticality", c.as_str()), ("reason", r.as_str())],
                    );
                }
            }
        }
        Self {
            admitted,
            shed,
            in_flight: def(MetricType::Gauge, "modelgate_shedder_in_flight", &[]),
            stale: def(MetricType::Gauge, "modelgate_shedder_snapshot_stale", &[]),
            snapshot_age: def(
                MetricType::Gauge,
                "modelgate_shedder_snapshot_age_milliseconds",
                &[],
            ),
            utilization: def(MetricType::Gauge, "modelgate_shedder_utilization_ppm", &[]),
            pool_utilization: def(
                MetricType::Gauge,
                "modelgate_shedder_pool_utilization_ppm",
                &[],
            ),
            pool_saturated: def(MetricType::Gauge, "modelgate_shedder_pool_saturated", &[]),
        }
    }

    fn flush(&self, counts: &mut Counts) {
        let add = |id: Option<u32>, n: &mut u64| {
            if let (Some(id), true) = (id, *n > 0) {
                let _ = host::increment_metric(id, *n);
            }
            *n = 0;
        };
        for (id, n) in self.admitted.iter().zip(counts.admitted.iter_mut()) {
            add(*id, n);
        }
        for (ids, ns) in self.shed.iter().zip(counts.shed.iter_mut()) {
            for (id, n) in ids.iter().zip(ns.iter_mut()) {
                add(*id, n);
            }
        }
    }
}

fn gauge(id: Option<u32>, value: u64) {
    if let Some(id) = id {
        let _ = host::record_metric(id, value);
    }
}

fn ppm(x: f64) -> u64 {
    (x.max(0.0) * 1e6).round() as u64
}

/// Configured state of one VM's root context.
struct Active {
    config: Rc<ShedConfig>,
    vm: Rc<RefCell<VmState>>,
    scraper: Option<Scraper>,
    orca: Option<OrcaReporter>,
    metrics: Metrics,
    /// Id in the shared worker table, handed out on the first successful write.
    worker_id: Option<u32>,
    pool: PoolTable,
    /// For logging transitions only.
    was_stale: Option<bool>,
    warned_stale: bool,
    configured_ms: u64,
    was_saturated: bool,
    last_summary_ms: u64,
    shed_since_summary: u64,
}

#[derive(Default)]
struct ShedRoot {
    active: Option<Active>,
}

impl Context for ShedRoot {
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        if let Some(s) = self.active.as_mut().and_then(|a| a.scraper.as_mut()) {
            s.on_http_call_response(token, num_headers, body_size);
        }
    }
}

impl RootContext for ShedRoot {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        modelgate_glue::log_start(FilterKind::LoadShedder);
        true
    }

    fn on_configure(&mut self, size: usize) -> bool {
        let Some(config) = modelgate_glue::configure::<ShedConfig>(size) else {
            return false;
        };
        let scraper = config.scrape.clone().map(Scraper::new);
        let orca = config.orca.map(OrcaReporter::new);
        if host::set_tick_period(Duration::from_millis(config.tick_ms)).is_err() {
            log(LogLevel::Error, "load_shedder: cannot set the tick period");
            return false;
        }
        log(
            LogLevel::Info,
            &format!(
                "load_shedder: configured (scrape: {}, orca: {}, gateway: {}, default criticality {}, trust header {})",
                config.scrape.as_ref().map_or("off".to_string(), |s| format!(
                    "{}{} every {} ms",
                    s.upstream.cluster, s.upstream.path, s.period_ms
                )),
                if orca.is_some() { "on" } else { "off" },
                if config.gateway.is_some() { "on" } else { "off" },
                config.default_criticality.as_str(),
                config.trust_criticality_header,
            ),
        );
        self.active = Some(Active {
            config: Rc::new(config),
            vm: Rc::new(RefCell::new(VmState::new())),
            scraper,
            orca,
            metrics: Metrics::define(),
            worker_id: None,
            pool: PoolTable::default(),
            was_stale: None,
            warned_stale: false,
            configured_ms: modelgate_glue::now_ms(),
            was_saturated: false,
            last_summary_ms: 0,
            shed_since_summary: 0,
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
        Some(Box::new(ShedHttp {
            config: a.config.clone(),
            vm: a.vm.clone(),
            admitted: false,
            shed: false,
            responded: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Active {
    fn tick(&mut self, now: u64) {
        if let Some(s) = self.scraper.as_mut() {
            s.on_tick(now);
        }
        let (in_flight, completed) = {
            let vm = self.vm.borrow();
            (vm.in_flight, vm.completed)
        };
        let (others, total_completed) = self.sync_workers(now, in_flight, completed);
        let snapshot = self.scraper.as_ref().and_then(Scraper::snapshot);
        let server = self.config.server_view(snapshot, now);
        let fresh = match server {
            ServerView::Fresh { .. } => snapshot,
            _ => None,
        };
        if let Some(r) = self.orca.as_mut() {
            r.on_tick(now, fresh, total_completed);
            gauge(self.metrics.utilization, ppm(r.utilization()));
        }
        let (age, last_error) = snapshot.map_or((None, None), |s| {
            let age = (s.scraped_at_ms > 0).then(|| now.saturating_sub(s.scraped_at_ms));
            (age, s.error.clone())
        });
        let saturated = self.update_pool(now);
        {
            let mut vm = self.vm.borrow_mut();
            vm.view = LoadView {
                server,
                pool_saturated: !saturated.is_empty(),
            };
            vm.saturated = saturated;
            vm.others_in_flight = others;
            vm.now_ms = now;
            match self.orca.as_ref().and_then(OrcaReporter::header) {
                Some(h) => {
                    let buf = vm.orca.get_or_insert_with(String::new);
                    buf.clear();
                    buf.push_str(h);
                }
                None => vm.orca = None,
            }
            let shed_now: u64 = vm.counts.shed.iter().flatten().sum();
            self.shed_since_summary += shed_now;
            self.metrics.flush(&mut vm.counts);
        }
        gauge(
            self.metrics.in_flight,
            u64::from(in_flight.saturating_add(others)),
        );
        self.log_transitions(now, server, age, last_error.as_deref());
    }

    /// Publishes this worker's load and reads the others' (one read, one CAS write).
    /// Returns (others' in-flight, completed responses summed over workers).
    fn sync_workers(&mut self, now: u64, in_flight: u32, completed: u64) -> (u32, u64) {
        let ttl = self.config.tick_ms.saturating_mul(10).max(1000);
        let Ok((bytes, cas)) = host::shared_data(WORKERS_KEY) else {
            return (0, completed);
        };
        let mut table: WorkerTable = bytes.and_then(|b| state::decode(&b)).unwrap_or_default();
        let id = match self.worker_id {
            Some(id) => id,
            None => table.next_id(),
        };
        table.update(
            id,
            WorkerLoad {
                in_flight,
                completed,
                at_ms: now,
            },
            ttl,
        );
        // A lost CAS race only delays this worker's entry to the next tick.
        if host::set_shared_data(WORKERS_KEY, &state::encode(&table), cas).is_ok() {
            self.worker_id = Some(id);
        }
        (table.others_in_flight(id), table.completed())
    }

    /// Gateway: merges this VM's new reports into the shared pool table and returns the
    /// saturated clusters.
    fn update_pool(&mut self, now: u64) -> Vec<String> {
        let Some(g) = self.config.gateway.clone() else {
            return Vec::new();
        };
        let local = std::mem::take(&mut self.vm.borrow_mut().reports);
        if let Ok((bytes, cas)) = host::shared_data(POOL_KEY) {
            let mut table: PoolTable = bytes.and_then(|b| state::decode(&b)).unwrap_or_default();
            table.merge(&local);
            table.prune(now, g.report_ttl_ms);
            if !local.is_empty()
                && host::set_shared_data(POOL_KEY, &state::encode(&table), cas).is_err()
            {
                // Lost the race: keep the reports for the next tick.
                self.vm.borrow_mut().reports.merge(&local);
            }
            self.pool = table;
        }
        let loads = self.pool.loads(now, &g);
        let max_avg = loads.iter().map(|l| l.average).fold(0.0, f64::max);
        let saturated: Vec<String> = loads
            .iter()
            .filter(|l| l.saturated)
            .map(|l| l.cluster.clone())
            .collect();
        gauge(self.metrics.pool_utilization, ppm(max_avg));
        gauge(self.metrics.pool_saturated, saturated.len() as u64);
        let now_saturated = !saturated.is_empty();
        if now_saturated != self.was_saturated {
            self.was_saturated = now_saturated;
            let detail: Vec<String> = loads
                .iter()
                .map(|l| format!("{}: {:.2} over {} hosts", l.cluster, l.average, l.hosts))
                .collect();
            let (level, what) = if now_saturated {
                (
                    LogLevel::Warn,
                    "pool saturated, shedding sheddable requests",
                )
            } else {
                (LogLevel::Info, "pool no longer saturated")
            };
            log(
                level,
                &format!(
                    "load_shedder: {what} (threshold {:.2}; {})",
                    g.utilization_threshold,
                    detail.join(", ")
                ),
            );
        }
        saturated
    }

    fn log_transitions(
        &mut self,
        now: u64,
        server: ServerView,
        age: Option<u64>,
        last_error: Option<&str>,
    ) {
        gauge(self.metrics.snapshot_age, age.unwrap_or(0));
        if self.config.scrape.is_some() {
            let stale = server == ServerView::Stale;
            gauge(self.metrics.stale, u64::from(stale));
            // Warn when the snapshot goes stale, or stays stale past the first scrapes
            // after start; tell when it recovers from a warned staleness.
            let started = now.saturating_sub(self.configured_ms) > self.config.stale_after_ms;
            if stale && !self.warned_stale && (self.was_stale == Some(false) || started) {
                self.warned_stale = true;
                log(
                    LogLevel::Warn,
                    &format!(
                        "load_shedder: queue snapshot is stale (last scrape error: {}); on_stale: {:?}",
                        last_error.unwrap_or("none"),
                        self.config.on_stale
                    ),
                );
            } else if !stale && self.warned_stale {
                self.warned_stale = false;
                log(
                    LogLevel::Info,
                    "load_shedder: queue snapshot is fresh again",
                );
            }
            self.was_stale = Some(stale);
        }
        if self.shed_since_summary > 0 && now.saturating_sub(self.last_summary_ms) >= 5000 {
            let load = match server {
                ServerView::Fresh { waiting, kv_cache } => {
                    format!("waiting {waiting}, KV cache {kv_cache:.2}")
                }
                ServerView::Stale => "server load unknown".into(),
                ServerView::NotScraped => "no scrape".into(),
            };
            log(
                LogLevel::Info,
                &format!(
                    "load_shedder: shed {} requests in the last {} s ({load})",
                    self.shed_since_summary,
                    now.saturating_sub(self.last_summary_ms) / 1000
                ),
            );
            self.shed_since_summary = 0;
            self.last_summary_ms = now;
        } else if self.shed_since_summary == 0 {
            self.last_summary_ms = now;
        }
    }
}

struct ShedHttp {
    config: Rc<ShedConfig>,
    vm: Rc<RefCell<VmState>>,
    /// Counted in `in_flight` until the stream ends.
    admitted: bool,
    /// Answered locally with a 429.
    shed: bool,
    /// The upstream answered (counts toward the ORCA request rate).
    responded: bool,
}

impl Context for ShedHttp {}

impl HttpContext for ShedHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // Bytes, not `get_map_value`: the SDK panics on a non-UTF-8 value, and clients
        // control this one. Not UTF-8 means not a class name: the default applies.
        let raw = header_bytes(MapType::HttpRequestHeaders, CRITICALITY_HEADER);
        let header = raw.as_deref().and_then(|b| std::str::from_utf8(b).ok());
        let cfg = &self.config;
        let class = effective_criticality(
            header,
            cfg.default_criticality,
            cfg.trust_criticality_header,
        );
        // A client claimed more than it may: pass the effective class on (rare, so the
        // extra host call is only paid then).
        if header
            .and_then(Criticality::parse)
            .is_some_and(|c| c != class)
        {
            let _ = host::set_header(
                MapType::HttpRequestHeaders,
                CRITICALITY_HEADER,
                Some(class.as_str().as_bytes()),
            );
        }
        let mut vm = self.vm.borrow_mut();
        let mut view = vm.view;
        if view.pool_saturated && class == Criticality::Sheddable {
            view.pool_saturated = request_cluster().is_some_and(|c| vm.saturated.contains(&c));
        }
        let in_flight = vm.in_flight.saturating_add(vm.others_in_flight);
        match cfg.decide(class, &view, in_flight) {
            Decision::Admit => {
                vm.in_flight = vm.in_flight.saturating_add(1);
                if let Some(n) = vm.counts.admitted.get_mut(class.index()) {
                    *n += 1;
                }
                self.admitted = true;
                Action::Continue
            }
            Decision::Shed(reason) => {
                if let Some(n) = vm
                    .counts
                    .shed
                    .get_mut(reason.index())
                    .and_then(|r| r.get_mut(class.index()))
                {
                    *n += 1;
                }
                drop(vm);
                self.shed = true;
                let err = cfg.shed_error(class, reason);
                modelgate_glue::send_error(&err, &[(SHED_HEADER, reason.as_str())]);
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.shed {
            return Action::Continue;
        }
        self.responded = true;
        let vm = self.vm.borrow();
        if let Some(h) = vm.orca.as_deref() {
            let _ = host::add_header(MapType::HttpResponseHeaders, ORCA_HEADER, h.as_bytes());
        }
        if self.config.gateway.is_some() {
            // Before the first tick there is no cached time yet.
            let now = match vm.now_ms {
                0 => modelgate_glue::now_ms(),
                t => t,
            };
            drop(vm);
            self.record_report(now);
        }
        Action::Continue
    }
}

impl ShedHttp {
    /// Gateway: remembers the upstream's ORCA report (keyed by cluster and host) and
    /// strips it, since the load of the servers is no business of the client.
    fn record_report(&mut self, now: u64) {
        let Some(value) = header_bytes(MapType::HttpResponseHeaders, ORCA_HEADER) else {
            return;
        };
        let _ = host::set_header(MapType::HttpResponseHeaders, ORCA_HEADER, None);
        let Some(report) = std::str::from_utf8(&value).ok().and_then(shed::parse_orca) else {
            return;
        };
        let host = property_string(&["upstream", "address"]).unwrap_or_default();
        let cluster = request_cluster().unwrap_or_default();
        self.vm.borrow_mut().reports.record(
            &cluster,
            &host,
            HostReport {
                utilization: report.utilization,
                at_ms: now,
            },
        );
    }
}

impl Drop for ShedHttp {
    fn drop(&mut self) {
        if self.admitted {
            if let Ok(mut vm) = self.vm.try_borrow_mut() {
                vm.in_flight = vm.in_flight.saturating_sub(1);
                if self.responded {
                    vm.completed = vm.completed.saturating_add(1);
                }
            }
        }
    }
}

/// The upstream cluster the route chose (known once the route is resolved).
fn request_cluster() -> Option<String> {
    property_string(&["xds", "cluster_name"])
}

fn property_string(path: &[&str]) -> Option<String> {
    let bytes = host::property(path)?;
    String::from_utf8(bytes).ok()
}
