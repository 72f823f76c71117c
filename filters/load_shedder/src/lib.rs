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

use modelgate_core::metrics::{MetricHost, MetricKind, SHED_HEADER};
use modelgate_core::orca::{self, OrcaReporter, ORCA_HEADER};
use modelgate_core::shed::{
    effective_criticality, Criticality, Decision, LoadView, ServerView, ShedConfig,
    CRITICALITY_HEADER,
};
use modelgate_core::shed_monitor::{self, ShedCounts, ShedHost, ShedMonitor, TickState};
use modelgate_core::shed_tables::{
    saturated_clusters, HostReport, PoolLoad, PoolTable, WorkerLoad, WorkerTable, POOL_KEY,
    WORKERS_KEY,
};
use modelgate_core::state;
use modelgate_glue::headers::header_bytes;
use modelgate_glue::scraper::Scraper;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(ShedRoot::default()) });
}}

fn log(level: LogLevel, msg: &str) {
    let _ = hostcalls::log(level, msg);
}

/// Envoy's stats and log through the proxy-wasm calls.
struct Host;

impl MetricHost for Host {
    fn define(&mut self, kind: MetricKind, name: &str) -> Option<u32> {
        let t = match kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
            MetricKind::Histogram => MetricType::Histogram,
        };
        hostcalls::define_metric(t, name).ok()
    }

    fn increment(&mut self, id: u32, delta: u64) {
        let _ = hostcalls::increment_metric(id, i64::try_from(delta).unwrap_or(i64::MAX));
    }

    fn set_gauge(&mut self, id: u32, value: u64) {
        let _ = hostcalls::record_metric(id, value);
    }

    fn record(&mut self, id: u32, value: u64) {
        let _ = hostcalls::record_metric(id, value);
    }
}

impl ShedHost for Host {
    fn log(&mut self, level: shed_monitor::LogLevel, msg: &str) {
        let level = match level {
            shed_monitor::LogLevel::Info => LogLevel::Info,
            shed_monitor::LogLevel::Warn => LogLevel::Warn,
        };
        log(level, msg);
    }
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
    counts: ShedCounts,
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
            counts: ShedCounts::default(),
        }
    }
}

/// Configured state of one VM's root context.
struct Active {
    config: Rc<ShedConfig>,
    vm: Rc<RefCell<VmState>>,
    scraper: Option<Scraper>,
    orca: Option<OrcaReporter>,
    monitor: ShedMonitor,
    /// Id in the shared worker table, handed out on the first successful write.
    worker_id: Option<u32>,
    pool: PoolTable,
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
    fn on_configure(&mut self, size: usize) -> bool {
        let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let config = match ShedConfig::parse(&bytes) {
            Ok(c) => c,
            Err(e) => {
                log(LogLevel::Error, &format!("load_shedder: {e}"));
                return false;
            }
        };
        let scraper = config.scrape.clone().map(Scraper::new);
        let orca = config.orca.map(OrcaReporter::new);
        if hostcalls::set_tick_period(Duration::from_millis(config.tick_ms)).is_err() {
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
            monitor: ShedMonitor::new(&mut Host, modelgate_glue::now_ms()),
            worker_id: None,
            pool: PoolTable::default(),
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
        let pool = self.update_pool(now);
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
        }
        let saturated = saturated_clusters(&pool);
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
        let t = TickState {
            now_ms: now,
            server,
            snapshot_age_ms: snapshot
                .filter(|s| s.scraped_at_ms > 0)
                .map(|s| now.saturating_sub(s.scraped_at_ms)),
            last_error: snapshot.and_then(|s| s.error.as_deref()),
            in_flight: in_flight.saturating_add(others),
            utilization: self.orca.as_ref().map(OrcaReporter::utilization),
            pool: &pool,
        };
        self.monitor
            .on_tick(&mut Host, &self.config, &t, &mut vm.counts);
    }

    /// Publishes this worker's load and reads the others' (one read, one CAS write).
    /// Returns (others' in-flight, completed responses summed over workers).
    fn sync_workers(&mut self, now: u64, in_flight: u32, completed: u64) -> (u32, u64) {
        let ttl = self.config.tick_ms.saturating_mul(10).max(1000);
        let Ok((bytes, cas)) = hostcalls::get_shared_data(WORKERS_KEY) else {
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
        if hostcalls::set_shared_data(WORKERS_KEY, Some(&state::encode(&table)), cas).is_ok() {
            self.worker_id = Some(id);
        }
        (table.others_in_flight(id), table.completed())
    }

    /// Gateway: merges this VM's new reports into the shared pool table and returns
    /// each cluster's load.
    fn update_pool(&mut self, now: u64) -> Vec<PoolLoad> {
        let Some(g) = self.config.gateway.as_ref() else {
            return Vec::new();
        };
        let local = std::mem::take(&mut self.vm.borrow_mut().reports);
        if let Ok((bytes, cas)) = hostcalls::get_shared_data(POOL_KEY) {
            let mut table: PoolTable = bytes.and_then(|b| state::decode(&b)).unwrap_or_default();
            table.merge(&local);
            table.prune(now, g.report_ttl_ms);
            if !local.is_empty()
                && hostcalls::set_shared_data(POOL_KEY, Some(&state::encode(&table)), cas).is_err()
            {
                // Lost the race: keep the reports for the next tick.
                self.vm.borrow_mut().reports.merge(&local);
            }
            self.pool = table;
        }
        self.pool.loads(now, g)
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
        // Bytes: clients control this one. Not UTF-8 means not a class name: the default
        // applies.
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
            let _ = hostcalls::set_map_value(
                MapType::HttpRequestHeaders,
                CRITICALITY_HEADER,
                Some(class.as_str()),
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
                vm.counts.admit(class);
                self.admitted = true;
                Action::Continue
            }
            Decision::Shed(reason) => {
                vm.counts.shed(class, reason);
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
            let _ = hostcalls::add_map_value(MapType::HttpResponseHeaders, ORCA_HEADER, h);
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
        let _ = hostcalls::remove_map_value(MapType::HttpResponseHeaders, ORCA_HEADER);
        let Some(report) = std::str::from_utf8(&value).ok().and_then(orca::parse_orca) else {
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
    let bytes = hostcalls::get_property(path.to_vec()).ok().flatten()?;
    String::from_utf8(bytes).ok()
}
