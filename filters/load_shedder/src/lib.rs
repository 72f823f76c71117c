//! load_shedder filter: proxy-wasm glue only; the policy lives in `modelgate_core::shed`,
//! flow control in `modelgate_core::flow`, stats and logs in `modelgate_core::shed_monitor`.
//!
//! Root context (every tick): the shared scraper polls (lease holder only) and refreshes
//! the cached queue snapshot; this worker publishes its in-flight count and reads the
//! others' (one CAS'd shared-data entry); the ORCA header is rebuilt; in gateway mode
//! the ORCA reports seen since the last tick are merged into the pool table; with flow
//! control, held requests past their TTL are answered and held requests are resumed
//! while the server has room. Counters are accumulated per VM and flushed here too.
//!
//! Stream (per request): one header read, a decision on cached state, and either
//! a local 429, a hold (flow control) or an admission. With an in-flight cap or flow
//! control, admission takes a slot in the shared worker table (one CAS), so the cap
//! holds across workers. Per response: the ORCA header written (sidecar) or read
//! (gateway).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use modelgate_core::config::FilterKind;
use modelgate_core::flow::{self, Entry, FlowQueue, Push};
use modelgate_core::orca::{self, OrcaReporter};
use modelgate_core::shed::{Decision, LoadView, ServerView, ShedConfig, ShedReason};
use modelgate_core::shed_monitor::{FlowOutcome, ShedCounts, ShedMonitor, TickState};
use modelgate_core::shed_tables::{
    saturated_clusters, HostReport, PoolLoad, PoolTable, WorkerLoad, WorkerTable,
};
use modelgate_core::state;
use modelgate_core::vocab::{
    Criticality, CRITICALITY_HEADER, ORCA_BIN_HEADER, ORCA_HEADER, POOL_KEY, SHED_HEADER,
    WORKERS_KEY,
};
use modelgate_glue::dispatch::{Root, Stream};
use modelgate_glue::headers::header_bytes;
use modelgate_glue::scraper::Scraper;
use modelgate_glue::stats::EnvoyStats;
use modelgate_glue::types::{Action, LogLevel, MapType};
use modelgate_glue::{host, log};

// The request body and trailers wait while a request is held; the response body and trailers
// carry nothing it reads.
#[cfg(feature = "export")]
modelgate_glue::export_filter!(
    ShedRoot,
    [
        request_headers,
        request_body,
        request_trailers,
        response_headers,
        log
    ]
);

/// Attempts at a compare-and-swap write of the worker table before giving up.
const CAS_TRIES: usize = 4;

/// Where a held request stands; the root context moves it on, its stream reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    Held,
    /// Resumed with an in-flight slot taken for it.
    Released,
    /// Answered locally (expired, or displaced by a higher band).
    Refused,
}

/// The outcome of claiming an in-flight slot in the shared worker table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Taken,
    Full,
    /// No answer (host failure, or lost every CAS race): the caller falls back.
    Unknown,
}

/// This VM's state shared between the root context and its streams.
struct VmState {
    view: LoadView,
    /// Gateway: clusters whose pool is saturated (usually none or one).
    saturated: Vec<String>,
    /// Requests admitted by this VM and not yet finished.
    in_flight: u32,
    /// Other workers' in-flight requests as of the last read of the worker table.
    others_in_flight: u32,
    /// Upstream responses this VM has completed (the ORCA request rate).
    completed: u64,
    /// Completed responses summed over workers, as of the last read.
    completed_total: u64,
    /// Id in the shared worker table, handed out on the first successful write.
    worker_id: Option<u32>,
    /// The ORCA header value, rebuilt on the tick; `None` while the load is unknown.
    orca: Option<String>,
    /// Gateway: reports seen since the last tick.
    reports: PoolTable,
    /// Time of the last tick, used to stamp reports without a clock call per response.
    now_ms: u64,
    /// The server's waiting queue as of the last fresh scrape.
    scraped_waiting: Option<f64>,
    counts: ShedCounts,
    /// Flow control: held requests, and each held stream's state by context id.
    flow: FlowQueue,
    holds: BTreeMap<u32, Hold>,
    /// Displaced by a higher band: answered on the next tick.
    evicted: Vec<Entry>,
}

impl VmState {
    fn new() -> Self {
        Self {
            view: LoadView::default(),
            saturated: Vec::new(),
            in_flight: 0,
            others_in_flight: 0,
            completed: 0,
            completed_total: 0,
            worker_id: None,
            orca: None,
            reports: PoolTable::default(),
            now_ms: 0,
            scraped_waiting: None,
            counts: ShedCounts::default(),
            flow: FlowQueue::default(),
            holds: BTreeMap::new(),
            evicted: Vec::new(),
        }
    }

    /// Writes this worker's entry in the shared worker table (CAS) and reads the others'.
    /// With `cap`, also takes one in-flight slot for a new request, only while the
    /// proxy's in-flight count stays within `cap`.
    fn sync_workers(&mut self, now: u64, ttl_ms: u64, cap: Option<u32>) -> Slot {
        for _ in 0..CAS_TRIES {
            let Ok((bytes, cas)) = host::shared_data(WORKERS_KEY) else {
                return Slot::Unknown;
            };
            let mut table: WorkerTable = bytes.and_then(|b| state::decode(&b)).unwrap_or_default();
            let id = self.worker_id.unwrap_or_else(|| table.next_id());
            let mine = self.in_flight.saturating_add(u32::from(cap.is_some()));
            table.update(
                id,
                WorkerLoad {
                    in_flight: mine,
                    completed: self.completed,
                    at_ms: now,
                },
                ttl_ms,
            );
            self.others_in_flight = table.others_in_flight(id);
            self.completed_total = table.completed();
            if cap.is_some_and(|cap| self.others_in_flight.saturating_add(mine) > cap) {
                return Slot::Full;
            }
            if host::set_shared_data(WORKERS_KEY, &state::encode(&table), cas).is_ok() {
                self.worker_id = Some(id);
                self.in_flight = mine;
                return Slot::Taken;
            }
        }
        Slot::Unknown
    }

    /// The time of the last tick, or the host's clock before the first one.
    fn clock(&self) -> u64 {
        match self.now_ms {
            0 => modelgate_glue::now_ms(),
            t => t,
        }
    }

    fn proxy_in_flight(&self) -> u32 {
        self.in_flight.saturating_add(self.others_in_flight)
    }
}

/// Workers silent this long drop out of the worker table.
fn worker_ttl_ms(cfg: &ShedConfig) -> u64 {
    cfg.tick_ms.saturating_mul(10).max(1000)
}

/// Whether admissions take a slot in the shared table (exact across workers) rather than
/// compare against the other workers' counts as of their last tick.
fn exact(cfg: &ShedConfig) -> bool {
    cfg.flow.is_some() || cfg.limits.iter().any(|l| l.max_in_flight.is_some())
}

/// The in-flight cap for `class`: its `max_in_flight`, and flow control's capacity.
fn cap(cfg: &ShedConfig, class: Criticality) -> Option<u32> {
    let own = cfg.limits(class).max_in_flight;
    match (own, cfg.flow.as_ref().map(flow::FlowConfig::capacity)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Configured state of one VM's root context.
struct Active {
    config: Rc<ShedConfig>,
    vm: Rc<RefCell<VmState>>,
    scraper: Option<Scraper>,
    orca: Option<OrcaReporter>,
    monitor: ShedMonitor,
    pool: PoolTable,
    /// The tick period in force (flow control ticks faster while it holds requests).
    tick_ms: u64,
}

#[derive(Default)]
pub struct ShedRoot {
    active: Option<Active>,
}

impl Root for ShedRoot {
    type Stream = ShedHttp;

    fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize) {
        if let Some(s) = self.active.as_mut().and_then(|a| a.scraper.as_mut()) {
            s.on_http_call_response(token, num_headers, body_size);
        }
    }

    fn on_vm_start(&mut self) -> bool {
        modelgate_glue::log_start(FilterKind::LoadShedder);
        true
    }

    fn on_configure(&mut self, config: &[u8]) -> bool {
        let Some(config) = modelgate_glue::configure::<ShedConfig>(config) else {
            return false;
        };
        let scraper = config.scrape.clone().map(Scraper::new);
        let orca = config.orca.map(OrcaReporter::new);
        if !modelgate_glue::start_ticks(FilterKind::LoadShedder, config.tick_ms) {
            return false;
        }
        log(
            LogLevel::Info,
            &format!(
                "load_shedder: configured (scrape: {}, orca: {}, gateway: {}, flow: {}, default criticality {}, trust header {}, trusted principals {})",
                config.scrape.as_ref().map_or("off".to_string(), |s| format!(
                    "{}{} every {} ms",
                    s.upstream.cluster, s.upstream.path, s.period_ms
                )),
                if orca.is_some() { "on" } else { "off" },
                if config.gateway.is_some() { "on" } else { "off" },
                config.flow.as_ref().map_or("off".to_string(), |f| format!(
                    "{} running + {} waiting, tenants by {}",
                    f.max_running, f.target_queue, f.tenant_header
                )),
                config.default_criticality.as_str(),
                config.trust_criticality_header,
                config.trusted_principals.len(),
            ),
        );
        let monitor = ShedMonitor::new(&mut EnvoyStats, &config, modelgate_glue::now_ms());
        self.active = Some(Active {
            tick_ms: config.tick_ms,
            config: Rc::new(config),
            vm: Rc::new(RefCell::new(VmState::new())),
            scraper,
            orca,
            monitor,
            pool: PoolTable::default(),
        });
        true
    }

    fn on_tick(&mut self) {
        if let Some(a) = self.active.as_mut() {
            a.tick(modelgate_glue::now_ms());
        }
    }

    fn new_stream(&mut self, context_id: u32) -> Option<ShedHttp> {
        let a = self.active.as_ref()?;
        Some(ShedHttp {
            id: context_id,
            config: a.config.clone(),
            vm: a.vm.clone(),
            admitted: false,
            shed: false,
            held: false,
            responded: false,
            finished: false,
        })
    }
}

impl Active {
    fn tick(&mut self, now: u64) {
        if let Some(s) = self.scraper.as_mut() {
            s.on_tick(now);
        }
        let pool = self.update_pool(now);
        let ttl = worker_ttl_ms(&self.config);
        let total_completed = {
            let mut vm = self.vm.borrow_mut();
            if vm.sync_workers(now, ttl, None) == Slot::Unknown {
                // Keep the last view of the others; count our own completions.
                vm.completed_total = vm.completed_total.max(vm.completed);
            }
            vm.completed_total
        };
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
        {
            let mut vm = self.vm.borrow_mut();
            vm.view = LoadView {
                server,
                pool_saturated: !saturated.is_empty(),
            };
            vm.saturated = saturated;
            vm.now_ms = now;
            vm.scraped_waiting = fresh.map(|s| s.waiting);
            match self.orca.as_ref().and_then(OrcaReporter::header) {
                Some(h) => {
                    let buf = vm.orca.get_or_insert_with(String::new);
                    buf.clear();
                    buf.push_str(h);
                }
                None => vm.orca = None,
            }
        }
        if self.config.flow.is_some() {
            pump(&self.config, &self.vm, now);
        }
        let mut vm = self.vm.borrow_mut();
        let mut counts = std::mem::take(&mut vm.counts);
        let t = TickState {
            now_ms: now,
            server,
            snapshot_age_ms: snapshot
                .filter(|s| s.scraped_at_ms > 0)
                .map(|s| now.saturating_sub(s.scraped_at_ms)),
            last_error: snapshot.and_then(|s| s.error.as_deref()),
            in_flight: vm.proxy_in_flight(),
            utilization: self.orca.as_ref().map(OrcaReporter::utilization),
            pool: &pool,
            flow: self.config.flow.as_ref().map(|_| &vm.flow),
        };
        self.monitor
            .on_tick(&mut EnvoyStats, &self.config, &t, &mut counts);
        vm.counts = counts;
        // Tick fast while requests are held: a slot freed by another worker is only
        // seen here.
        let want = match self.config.flow.as_ref() {
            Some(f) if !vm.flow.is_empty() => f.tick_ms.min(self.config.tick_ms),
            _ => self.config.tick_ms,
        };
        drop(vm);
        if want != self.tick_ms && modelgate_glue::tick_every(want) {
            self.tick_ms = want;
        }
    }

    /// Gateway: merges this VM's new reports into the shared pool table and returns
    /// each cluster's load.
    fn update_pool(&mut self, now: u64) -> Vec<PoolLoad> {
        let Some(g) = self.config.gateway.as_ref() else {
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
        self.pool.loads(now, g)
    }
}

pub struct ShedHttp {
    /// This stream's context id (how the root context finds it to resume it).
    id: u32,
    config: Rc<ShedConfig>,
    vm: Rc<RefCell<VmState>>,
    /// Counted in `in_flight` until the stream ends.
    admitted: bool,
    /// Answered locally with a 429.
    shed: bool,
    /// Held by flow control (its state is in `VmState::holds`).
    held: bool,
    /// The upstream answered (counts toward the ORCA request rate).
    responded: bool,
    /// `finish` has run.
    finished: bool,
}

impl Stream for ShedHttp {
    fn on_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // Bytes: clients control this one. Not UTF-8 means not a class name: the default
        // applies.
        let raw = header_bytes(MapType::HttpRequestHeaders, CRITICALITY_HEADER);
        let header = raw.as_deref().and_then(|b| std::str::from_utf8(b).ok());
        let cfg = self.config.clone();
        let class = cfg.criticality(header, || {
            property_string(&["connection", "uri_san_peer_certificate"])
        });
        // A client claimed more than it may: pass the effective class on (rare, so the
        // extra host call is only paid then).
        if header
            .and_then(Criticality::parse)
            .is_some_and(|c| c != class)
        {
            let _ = modelgate_glue::headers::set(
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
        let decision = if exact(&cfg) {
            decide_exact(&cfg, &mut vm, class, &view)
        } else {
            let d = cfg.decide(class, &view, vm.proxy_in_flight());
            if d == Decision::Admit {
                vm.in_flight = vm.in_flight.saturating_add(1);
            }
            d
        };
        let decision = match decision {
            Decision::Shed(reason) if cfg.flow.is_some() && class != Criticality::Critical => {
                let ahead = vm.flow.has_ahead(class);
                match hold(&cfg, self.id, &mut vm, class) {
                    Some(Push::Held) => {
                        self.held = true;
                        return Action::Pause;
                    }
                    Some(Push::HeldEvicting(e)) => {
                        vm.evicted.push(e);
                        self.held = true;
                        return Action::Pause;
                    }
                    _ if ahead => Decision::Shed(ShedReason::FlowFull),
                    _ => Decision::Shed(reason),
                }
            }
            d => d,
        };
        match decision {
            Decision::Admit => {
                vm.counts.admit(class);
                self.admitted = true;
                Action::Continue
            }
            Decision::Shed(reason) => {
                vm.counts.shed(class, reason);
                drop(vm);
                self.shed = true;
                let err = cfg.shed_error(class, reason);
                modelgate_glue::send_error(&err, &[(SHED_HEADER, reason.as_str())])
            }
        }
    }

    fn on_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        modelgate_glue::stream::hold_while(self.is_held())
    }

    fn on_request_trailers(&mut self, _num_trailers: usize) -> Action {
        modelgate_glue::stream::hold_while(self.is_held())
    }

    fn on_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.held {
            match self
                .vm
                .try_borrow()
                .ok()
                .and_then(|vm| vm.holds.get(&self.id).copied())
            {
                Some(Hold::Released) => self.admitted = true,
                _ => self.shed = true,
            }
        }
        if self.shed {
            return Action::Continue;
        }
        self.responded = true;
        let Ok(vm) = self.vm.try_borrow() else {
            return Action::Continue;
        };
        if self.config.orca.is_some() {
            // Replace, never add: Envoy reads the first value and prefers the binary
            // form, so a model server's own report would otherwise win.
            let _ = modelgate_glue::headers::set(
                MapType::HttpResponseHeaders,
                ORCA_HEADER,
                vm.orca.as_deref().map(str::as_bytes),
            );
            let _ =
                modelgate_glue::headers::set(MapType::HttpResponseHeaders, ORCA_BIN_HEADER, None);
        }
        if self.config.gateway.is_some() {
            let now = vm.clock();
            drop(vm);
            self.record_report(now);
        }
        Action::Continue
    }
    fn on_log(&mut self) {
        // A freed slot goes to the next held request now, not at the next tick.
        if self.finish() {
            let now = self.vm.try_borrow().map_or(0, |vm| vm.clock());
            pump(&self.config, &self.vm, now);
        }
    }
}

/// Flow control, on the tick and when a stream frees its slot: answers the held requests
/// that were displaced or waited past their TTL, then resumes held requests, best first,
/// while the server has room. Host calls on streams are made with no borrow of the VM state held: a
/// local reply may run the stream's response callbacks at once.
fn pump(cfg: &ShedConfig, state: &RefCell<VmState>, now: u64) {
    let Some(fc) = cfg.flow.as_ref() else {
        return;
    };
    let ttl = worker_ttl_ms(cfg);
    let mut refuse: Vec<(Entry, bool)> = Vec::new();
    let mut resume: Vec<Entry> = Vec::new();
    {
        let mut vm = state.borrow_mut();
        refuse.extend(vm.evicted.drain(..).map(|e| (e, false)));
        let mut expired = Vec::new();
        vm.flow.expire(fc, now, &mut expired);
        refuse.extend(expired.into_iter().map(|e| (e, true)));
        while let Some(class) = vm.flow.peek_class() {
            let view = vm.view;
            let room = flow::room(fc, vm.proxy_in_flight(), vm.scraped_waiting);
            if room == 0 || cfg.decide(class, &view, 0) != Decision::Admit {
                break;
            }
            if vm.sync_workers(now, ttl, cap(cfg, class)) != Slot::Taken {
                break;
            }
            match vm.flow.pop() {
                Some(e) => {
                    vm.holds.insert(e.id, Hold::Released);
                    vm.counts.flow(e.class, FlowOutcome::Released);
                    vm.counts.admit(e.class);
                    vm.counts.wait(e.class, now.saturating_sub(e.since_ms));
                    resume.push(e);
                }
                None => {
                    vm.in_flight = vm.in_flight.saturating_sub(1);
                    break;
                }
            }
        }
        // An evicted request whose client has gone since is no longer tracked.
        refuse.retain(|(e, _)| vm.holds.contains_key(&e.id));
        for (e, expired) in &refuse {
            vm.holds.insert(e.id, Hold::Refused);
            let reason = if *expired {
                vm.counts.flow(e.class, FlowOutcome::Expired);
                vm.counts.wait(e.class, now.saturating_sub(e.since_ms));
                ShedReason::FlowTimeout
            } else {
                ShedReason::FlowFull
            };
            vm.counts.shed(e.class, reason);
        }
    }
    let server = state.borrow().view.server;
    for (e, expired) in &refuse {
        let (err, reason) = if *expired {
            (cfg.expired_error(e.class, server), ShedReason::FlowTimeout)
        } else {
            (
                cfg.shed_error(e.class, ShedReason::FlowFull),
                ShedReason::FlowFull,
            )
        };
        if !modelgate_glue::stream::reply(e.id, &err, &[(SHED_HEADER, reason.as_str())]) {
            // Unanswerable (the host refused the reply): let it go on rather than hang.
            let _ = modelgate_glue::stream::resume_request(e.id);
        }
    }
    for e in &resume {
        if !modelgate_glue::stream::resume_request(e.id) {
            // The stream is gone (its end will not be seen here): give the slot back.
            let mut vm = state.borrow_mut();
            vm.holds.remove(&e.id);
            vm.in_flight = vm.in_flight.saturating_sub(1);
        }
    }
}

/// The decision with an exact in-flight count: thresholds on the cached view, then a slot
/// in the shared worker table (critical takes one whatever the count). A held request of
/// the same or a higher band goes first: the arrival waits behind it.
fn decide_exact(
    cfg: &ShedConfig,
    vm: &mut VmState,
    class: Criticality,
    view: &LoadView,
) -> Decision {
    let now = vm.clock();
    let ttl = worker_ttl_ms(cfg);
    if class == Criticality::Critical {
        if vm.sync_workers(now, ttl, Some(u32::MAX)) != Slot::Taken {
            vm.in_flight = vm.in_flight.saturating_add(1);
        }
        return Decision::Admit;
    }
    let decision = cfg.decide(class, view, 0);
    if decision != Decision::Admit {
        return decision;
    }
    if vm.flow.has_ahead(class) {
        return Decision::Shed(ShedReason::Concurrency);
    }
    if cfg.flow.is_some() {
        let fc = cfg.flow.as_ref();
        if fc.is_some_and(|f| flow::room(f, vm.proxy_in_flight(), vm.scraped_waiting) == 0) {
            return Decision::Shed(ShedReason::Concurrency);
        }
    }
    match vm.sync_workers(now, ttl, cap(cfg, class)) {
        Slot::Taken => Decision::Admit,
        Slot::Full => Decision::Shed(ShedReason::Concurrency),
        // Contention or a host failure: the other workers' counts as last read.
        Slot::Unknown => match cfg.decide(class, view, vm.proxy_in_flight()) {
            Decision::Admit if cap(cfg, class).is_none_or(|c| vm.proxy_in_flight() < c) => {
                vm.in_flight = vm.in_flight.saturating_add(1);
                Decision::Admit
            }
            Decision::Admit => Decision::Shed(ShedReason::Concurrency),
            d => d,
        },
    }
}

/// Flow control: holds request `id` (paused until the root context resumes or answers
/// it). `None` when there is no flow control.
fn hold(cfg: &ShedConfig, id: u32, vm: &mut VmState, class: Criticality) -> Option<Push> {
    let fc = cfg.flow.as_ref()?;
    let (tenant, bytes) = modelgate_glue::headers::flow_tenant_and_bytes(&fc.tenant_header);
    let now = vm.clock();
    let push = vm.flow.push(
        fc,
        Entry {
            id,
            class,
            tenant,
            bytes,
            since_ms: now,
        },
    );
    match &push {
        Push::Held | Push::HeldEvicting(_) => {
            vm.holds.insert(id, Hold::Held);
            vm.counts.flow(class, FlowOutcome::Held);
        }
        Push::Refused(_) => vm.counts.flow(class, FlowOutcome::Refused),
    }
    if let Push::HeldEvicting(e) = &push {
        vm.counts.flow(e.class, FlowOutcome::Refused);
    }
    Some(push)
}

impl ShedHttp {
    fn is_held(&self) -> bool {
        self.held
            && self
                .vm
                .try_borrow()
                .is_ok_and(|vm| vm.holds.get(&self.id) == Some(&Hold::Held))
    }

    /// Gateway: remembers the upstream's ORCA report (keyed by cluster and host) and
    /// strips it, since the load of the servers is no business of the client.
    fn record_report(&mut self, now: u64) {
        let _ = modelgate_glue::headers::set(MapType::HttpResponseHeaders, ORCA_BIN_HEADER, None);
        let Some(value) = header_bytes(MapType::HttpResponseHeaders, ORCA_HEADER) else {
            return;
        };
        let _ = modelgate_glue::headers::set(MapType::HttpResponseHeaders, ORCA_HEADER, None);
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
                queue: report.queue,
                at_ms: now,
            },
        );
    }
}

impl ShedHttp {
    /// The stream is over: out of the queue if still held, its slot freed if admitted.
    /// Returns true when requests are held that the freed slot may let through.
    fn finish(&mut self) -> bool {
        if std::mem::replace(&mut self.finished, true) {
            return false;
        }
        let Ok(mut vm) = self.vm.try_borrow_mut() else {
            return false;
        };
        let mut admitted = self.admitted;
        if self.held {
            match vm.holds.remove(&self.id) {
                // The client gave up while held: out of the queue at once.
                Some(Hold::Held) => {
                    if let Some(e) = vm.flow.remove(self.id) {
                        vm.counts.flow(e.class, FlowOutcome::Abandoned);
                    }
                }
                Some(Hold::Released) => admitted = true,
                Some(Hold::Refused) | None => {}
            }
        }
        if !admitted {
            return false;
        }
        vm.in_flight = vm.in_flight.saturating_sub(1);
        if self.responded {
            vm.completed = vm.completed.saturating_add(1);
        }
        if exact(&self.config) {
            // Free the slot for the other workers now, not at our next tick.
            let now = vm.clock();
            let _ = vm.sync_workers(now, worker_ttl_ms(&self.config), None);
        }
        !vm.flow.is_empty()
    }
}

impl Drop for ShedHttp {
    fn drop(&mut self) {
        // Normally done in `on_log`; a stream Envoy never logs still frees its slot.
        self.finish();
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
