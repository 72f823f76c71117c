//! One Wasm VM (one Envoy worker thread's instance of a plugin): loading, the root context's
//! life (`_initialize`, `proxy_on_vm_start`, `proxy_on_configure`, ticks, HTTP call
//! responses, queues) and the plumbing every call into the module goes through.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::{anyhow, Context as _, Result};
use wasmtime::{Engine, Func, Instance, Linker, Module, Store, TypedFunc, Val};

use crate::host::Host;
use crate::http::{HttpStream, StreamState};
use crate::imports;
use crate::wire::{self, Pairs};

/// A log line as the module emitted it (`proxy_log`, or stdout/stderr through WASI).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub level: LogLevel,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Critical,
}

impl LogLevel {
    pub(crate) fn from_i32(v: i32) -> Option<Self> {
        Some(match v {
            0 => Self::Trace,
            1 => Self::Debug,
            2 => Self::Info,
            3 => Self::Warn,
            4 => Self::Error,
            5 => Self::Critical,
            _ => return None,
        })
    }
}

/// A `dispatch_http_call` the module made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCall {
    pub token: u32,
    /// The Envoy cluster (the `upstream` argument).
    pub cluster: String,
    pub headers: Pairs,
    pub body: Vec<u8>,
    pub trailers: Pairs,
    pub timeout_ms: u32,
    /// Host clock (ms) when the call was dispatched.
    pub dispatched_at_ms: u64,
    /// Context that made the call (the root context id for calls made on a tick).
    pub context_id: u32,
}

impl HttpCall {
    pub fn header(&self, name: &str) -> Option<String> {
        header_value(&self.headers, name)
    }
    /// `:path` of the call.
    pub fn path(&self) -> String {
        self.header(":path").unwrap_or_default()
    }
    pub fn authority(&self) -> String {
        self.header(":authority").unwrap_or_default()
    }
    pub fn method(&self) -> String {
        self.header(":method").unwrap_or_default()
    }
}

/// What the test answers an HTTP call with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallOutcome {
    /// A response (`:status` is added from `status`).
    Response {
        status: u16,
        headers: Pairs,
        body: Vec<u8>,
        trailers: Pairs,
    },
    /// Envoy's async client reports a reset (connection refused mid-stream, buffer limit):
    /// `proxy_on_http_call_response(token, 0, 0, 0)` and `get_status` says BrokenConnection.
    Reset,
}

impl CallOutcome {
    pub fn status(status: u16) -> Self {
        Self::Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            trailers: Vec::new(),
        }
    }
    /// A 200 with a JSON body.
    pub fn json(status: u16, body: &str) -> Self {
        Self::Response {
            status,
            headers: wire::pairs_from(&[("content-type", "application/json")]),
            body: body.as_bytes().to_vec(),
            trailers: Vec::new(),
        }
    }
    /// A response with a plain-text body (Prometheus text, health text).
    pub fn text(status: u16, body: &str) -> Self {
        Self::Response {
            status,
            headers: wire::pairs_from(&[("content-type", "text/plain")]),
            body: body.as_bytes().to_vec(),
            trailers: Vec::new(),
        }
    }
    /// What Envoy's async client delivers when the call's timeout fires: its router sends a
    /// local 504 with "upstream request timeout" (a response, not a failure).
    pub fn timeout() -> Self {
        Self::text(504, "upstream request timeout")
    }
    /// What Envoy delivers when no host of the cluster accepts the connection.
    pub fn connect_failure() -> Self {
        Self::text(
            503,
            "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure, transport failure reason: delayed connect error: Connection refused",
        )
    }
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        if let Self::Response { headers, .. } = &mut self {
            headers.push((name.to_ascii_lowercase(), value.as_bytes().to_vec()));
        }
        self
    }
}

pub(crate) fn header_value(pairs: &Pairs, name: &str) -> Option<String> {
    let name = name.to_ascii_lowercase();
    pairs
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

/// Which lifecycle step the VM is in; Envoy restricts host calls during `_initialize` and
/// only shows the plugin configuration during `proxy_on_configure`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Initialize,
    VmStart,
    Configure,
    Running,
}

pub(crate) struct HttpCallResponse {
    pub headers: Pairs,
    pub body: Vec<u8>,
    pub trailers: Pairs,
}

/// Everything the host functions see; lives in the wasmtime `Store`.
/// Host-side state of one VM (public only because the linker type names it).
pub struct State {
    pub(crate) host: Host,
    pub(crate) serial: u64,
    pub(crate) vm_id: String,
    pub(crate) vm_config: Vec<u8>,
    pub(crate) plugin_config: Vec<u8>,
    pub(crate) root_ctx: u32,
    pub(crate) phase: Phase,
    /// Context whose callback is running, and the one `set_effective_context` switched to.
    pub(crate) current: u32,
    pub(crate) effective: Option<u32>,
    pub(crate) streams: HashMap<u32, StreamState>,
    pub(crate) logs: Vec<LogLine>,
    pub(crate) log_level: i32,
    pub(crate) tick_period_ms: u32,
    pub(crate) pending_calls: BTreeMap<u32, HttpCall>,
    pub(crate) all_calls: Vec<HttpCall>,
    pub(crate) next_token: u32,
    pub(crate) call_response: Option<HttpCallResponse>,
    pub(crate) status: (u32, Vec<u8>),
    pub(crate) metric_ids: HashMap<u32, String>,
    pub(crate) next_metric_seq: u32,
    pub(crate) properties: HashMap<Vec<u8>, Vec<u8>>,
    pub(crate) malloc: Option<TypedFunc<i32, i32>>,
    pub(crate) memory: Option<wasmtime::Memory>,
    pub(crate) done_called: bool,
    pub(crate) foreign_calls: Vec<String>,
    /// Set by `send_local_response`: Envoy turns the callback's result into a stop.
    pub(crate) stop_next_iteration: bool,
    pub(crate) restricted_violation: Option<String>,
    /// `env` imports answered with a fixed status for now (see [`Vm::refuse`]).
    pub(crate) refused: HashMap<String, i32>,
    pub(crate) counts: CallCounts,
    /// Host calls so far, by import name.
    pub(crate) host_calls: BTreeMap<String, u64>,
}

/// Calls across the VM boundary: each costs a VM entry or exit in Envoy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallCounts {
    /// Callbacks the host made into the module (exported ones only, as Envoy).
    pub callbacks: u64,
    /// `env` host functions the module called.
    pub host_calls: u64,
    /// Calls of the module's allocator by the host, one per value a host call hands over.
    pub allocations: u64,
    /// Wasm instructions the module executed (wasmtime's fuel: about one per instruction).
    pub wasm_ops: u64,
}

impl std::ops::Sub for CallCounts {
    type Output = CallCounts;
    fn sub(self, earlier: CallCounts) -> CallCounts {
        CallCounts {
            callbacks: self.callbacks - earlier.callbacks,
            host_calls: self.host_calls - earlier.host_calls,
            allocations: self.allocations - earlier.allocations,
            wasm_ops: self.wasm_ops - earlier.wasm_ops,
        }
    }
}

impl State {
    pub fn ctx(&self) -> u32 {
        self.effective.unwrap_or(self.current)
    }
    pub fn log(&mut self, level: LogLevel, message: String) {
        self.logs.push(LogLine { level, message });
    }
}

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    // Fuel counts the module's own work (`CallCounts::wasm_ops`); it never runs out.
    ENGINE.get_or_init(|| {
        let mut config = wasmtime::Config::new();
        config.consume_fuel(true);
        Engine::new(&config).expect("wasmtime engine")
    })
}

/// Compiled modules: once per test process in memory, and across processes in a disk cache
/// keyed by the module's bytes (Cranelift takes about a second per filter; loading a cached
/// artifact takes milliseconds).
pub fn compiled(path: &Path) -> Result<Module> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, Module>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(m) = cache.get(path) {
        return Ok(m.clone());
    }
    let bytes = std::fs::read(path).with_context(|| {
        format!(
            "cannot read {} — build the filters first (`make wasm`), or set MODELGATE_DIST",
            path.display()
        )
    })?;
    let started = std::time::Instant::now();
    let module = from_disk_cache(&bytes).map(Ok).unwrap_or_else(|| {
        let m = Module::new(engine(), &bytes)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("{} is not a valid Wasm module", path.display()))?;
        to_disk_cache(&bytes, &m);
        Ok::<_, anyhow::Error>(m)
    })?;
    if std::env::var_os("MODELGATE_ABI_TIMING").is_some() {
        eprintln!("loaded {} in {:?}", path.display(), started.elapsed());
    }
    cache.insert(path.to_path_buf(), module.clone());
    Ok(module)
}

fn disk_cache_path(bytes: &[u8]) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    env!("CARGO_PKG_VERSION").hash(&mut h);
    std::env::temp_dir()
        .join("modelgate-abi-cache")
        .join(format!("{:016x}-{}.cwasm", h.finish(), bytes.len()))
}

fn from_disk_cache(bytes: &[u8]) -> Option<Module> {
    let file = disk_cache_path(bytes);
    if !file.exists() {
        return None;
    }
    // SAFETY: the file is an artifact this host serialised; wasmtime checks that its
    // version and engine settings match and errors (→ recompile) otherwise.
    unsafe { Module::deserialize_file(engine(), &file) }.ok()
}

fn to_disk_cache(bytes: &[u8], module: &Module) {
    let file = disk_cache_path(bytes);
    let Ok(data) = module.serialize() else { return };
    if let Some(dir) = file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    // Write then rename, so parallel test processes never read a half-written artifact.
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&tmp, data).is_ok() {
        let _ = std::fs::rename(&tmp, &file);
    }
}

/// Directory of the shipped modules: `$MODELGATE_DIST`, else `<repo>/dist`.
pub fn dist_dir() -> PathBuf {
    match std::env::var_os("MODELGATE_DIST") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist"),
    }
}

/// Path of a shipped module by filter name (`readiness_gate` → `dist/readiness_gate.wasm`).
pub fn module_path(filter: &str) -> PathBuf {
    dist_dir().join(format!("{filter}.wasm"))
}

impl Host {
    /// A new VM of module `filter` (from `dist/`) in this proxy.
    pub fn vm(&self, filter: &str) -> VmBuilder {
        VmBuilder::new(self.clone(), compiled(&module_path(filter)), filter)
    }

    /// A VM from any module file.
    pub fn vm_from_file(&self, path: &Path) -> VmBuilder {
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        VmBuilder::new(self.clone(), compiled(path), &name)
    }

    /// A VM from WebAssembly text or bytes (the host's own tests).
    pub fn vm_from_wat(&self, wat: &str) -> VmBuilder {
        static CACHE: OnceLock<Mutex<HashMap<String, Module>>> = OnceLock::new();
        let mut cache = CACHE
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let module = match cache.get(wat) {
            Some(m) => Ok(m.clone()),
            None => Module::new(engine(), wat)
                .inspect(|m| {
                    cache.insert(wat.to_string(), m.clone());
                })
                .map_err(|e| anyhow!("{e:#}")),
        };
        VmBuilder::new(self.clone(), module, "wat")
    }

    /// Shortcut for a one-VM test: a fresh proxy and a VM of `filter`.
    pub fn load(filter: &str) -> VmBuilder {
        Host::new().vm(filter)
    }
}

/// Options of a VM before it starts (the `PluginConfig` fields that matter to a module).
pub struct VmBuilder {
    host: Host,
    module: Result<Module>,
    name: String,
    vm_id: String,
    root_id: String,
    vm_config: Vec<u8>,
    allow_on_headers_stop_iteration: bool,
    properties: HashMap<Vec<u8>, Vec<u8>>,
    log_level: LogLevel,
    /// `env` imports answered with a fixed status (see `host_call_status`).
    host_call_statuses: Vec<(String, i32)>,
}

impl VmBuilder {
    fn new(host: Host, module: Result<Module>, name: &str) -> Self {
        Self {
            host,
            module,
            name: name.to_string(),
            vm_id: "modelgate".to_string(),
            root_id: String::new(),
            vm_config: Vec::new(),
            allow_on_headers_stop_iteration: true,
            properties: HashMap::new(),
            log_level: LogLevel::Info,
            host_call_statuses: Vec::new(),
        }
    }

    /// Makes the host answer every call of the `env` import `name` with `status` (e.g. 10,
    /// InternalFailure) and do nothing else, as Envoy does for a call it refuses, from the
    /// start (`_initialize` on); [`Vm::refuse`] and [`Vm::allow`] change it later. A module
    /// must not trap on it.
    pub fn host_call_status(mut self, name: &str, status: i32) -> Self {
        self.host_call_statuses.push((name.to_string(), status));
        self
    }

    /// `vm_config.vm_id` (default "modelgate", as CONTRACTS.md requires of every filter).
    pub fn vm_id(mut self, id: &str) -> Self {
        self.vm_id = id.to_string();
        self
    }
    pub fn root_id(mut self, id: &str) -> Self {
        self.root_id = id.to_string();
        self
    }
    pub fn vm_configuration(mut self, cfg: &str) -> Self {
        self.vm_config = cfg.as_bytes().to_vec();
        self
    }
    /// `PluginConfig.allow_on_headers_stop_iteration` (default true, as our configs set it).
    /// When false, a `Pause` from request/response headers becomes Envoy's StopAll: the body
    /// callbacks are not called.
    pub fn allow_on_headers_stop_iteration(mut self, allow: bool) -> Self {
        self.allow_on_headers_stop_iteration = allow;
        self
    }
    /// A property every context can read (`get_property(["node", "id"])`).
    pub fn property(mut self, path: &[&str], value: &[u8]) -> Self {
        self.properties
            .insert(wire::property_key(path), value.to_vec());
        self
    }
    /// What `proxy_get_log_level` answers (Envoy's default is info).
    pub fn log_level(mut self, level: LogLevel) -> Self {
        self.log_level = level;
        self
    }

    /// Instantiates the module, runs `_initialize`, `proxy_on_context_create(root)`,
    /// `proxy_on_vm_start` and `proxy_on_configure(config)`. `Err` when Envoy would reject
    /// the configuration (either callback returned false), with the module's logs.
    /// A trap is a panic (a failed test) carrying the module's message.
    pub fn configure(self, plugin_config: &str) -> Result<Vm> {
        let module = self.module?;
        let mut shared = self.host.lock();
        let serial = shared.next_vm;
        shared.next_vm += 1;
        drop(shared);
        let mut props = self.properties;
        let plugin_name = if self.root_id.is_empty() {
            self.name.clone()
        } else {
            self.root_id.clone()
        };
        props
            .entry(wire::property_key(&["plugin_name"]))
            .or_insert_with(|| plugin_name.clone().into_bytes());
        props
            .entry(wire::property_key(&["plugin_root_id"]))
            .or_insert_with(|| self.root_id.clone().into_bytes());
        props
            .entry(wire::property_key(&["plugin_vm_id"]))
            .or_insert_with(|| self.vm_id.clone().into_bytes());
        let state = State {
            host: self.host.clone(),
            serial,
            vm_id: self.vm_id,
            vm_config: self.vm_config,
            plugin_config: plugin_config.as_bytes().to_vec(),
            root_ctx: 1,
            phase: Phase::Initialize,
            current: 0,
            effective: None,
            streams: HashMap::new(),
            logs: Vec::new(),
            log_level: self.log_level as i32,
            tick_period_ms: 0,
            pending_calls: BTreeMap::new(),
            all_calls: Vec::new(),
            next_token: 1,
            call_response: None,
            status: (0, Vec::new()),
            metric_ids: HashMap::new(),
            next_metric_seq: 1,
            properties: props,
            malloc: None,
            memory: None,
            done_called: false,
            foreign_calls: Vec::new(),
            stop_next_iteration: false,
            restricted_violation: None,
            refused: self.host_call_statuses.iter().cloned().collect(),
            counts: CallCounts::default(),
            host_calls: BTreeMap::new(),
        };
        let mut store = Store::new(engine(), state);
        store.set_fuel(u64::MAX)?;
        let mut linker = Linker::new(engine());
        imports::define(&mut linker)?;
        // Every `env` import is counted; a refusable one answers its status while refused,
        // else does its work.
        linker.allow_shadowing(true);
        for imp in module.imports().filter(|i| i.module() == "env") {
            let name = imp.name().to_string();
            let refusable = imports::REFUSABLE.contains(&name.as_str())
                || self.host_call_statuses.iter().any(|(n, _)| *n == name);
            let Some(ty) = imp.ty().func().cloned() else {
                continue;
            };
            let Some(real) = linker
                .get(&mut store, "env", &name)
                .ok()
                .and_then(|e| e.into_func())
            else {
                continue;
            };
            linker.func_new("env", &name.clone(), ty, move |mut c, params, results| {
                // Envoy refuses a context switch only to a context it no longer knows;
                // the root context lives as long as the VM.
                let st = c.data_mut();
                st.counts.host_calls += 1;
                *st.host_calls.entry(name.clone()).or_default() += 1;
                let to_root = name == "proxy_set_effective_context"
                    && params.first().and_then(Val::i32) == Some(c.data().root_ctx as i32);
                match c
                    .data()
                    .refused
                    .get(&name)
                    .filter(|_| refusable && !to_root)
                {
                    Some(&status) => {
                        if let Some(r) = results.first_mut() {
                            *r = Val::I32(status);
                        }
                        Ok(())
                    }
                    None => real.call(&mut c, params, results),
                }
            })?;
        }
        let instance = linker
            .instantiate(&mut store, &module)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("Envoy would fail to load module `{}`", self.name))?;
        let malloc = instance
            .get_typed_func::<i32, i32>(&mut store, "malloc")
            .or_else(|_| {
                instance.get_typed_func::<i32, i32>(&mut store, "proxy_on_memory_allocate")
            })
            .map_err(|_| anyhow!("Wasm module is missing malloc function"))?;
        store.data_mut().malloc = Some(malloc);
        store.data_mut().memory = instance.get_memory(&mut store, "memory");
        let mut vm = Vm {
            store,
            instance,
            name: self.name,
            allow_on_headers_stop_iteration: self.allow_on_headers_stop_iteration,
            next_ctx: 2,
            failed: None,
            funcs: HashMap::new(),
        };
        // WASI reactor start, with Envoy's restricted set of host calls.
        if vm.func("_initialize").is_some() {
            vm.call("_initialize", &[]);
            if vm.func("main").is_some() {
                vm.call("main", &[Val::I32(0), Val::I32(0)]);
            }
        } else if vm.func("_start").is_some() {
            vm.call("_start", &[]);
        }
        if let Some(v) = vm.store.data_mut().restricted_violation.take() {
            panic!("module `{}` called {v} during _initialize; Envoy only allows logging, clock, random and environment there", vm.name);
        }
        vm.store.data_mut().phase = Phase::VmStart;
        let root = vm.root_ctx();
        vm.call(
            "proxy_on_context_create",
            &[Val::I32(root as i32), Val::I32(0)],
        );
        let vm_cfg_len = vm.store.data().vm_config.len() as i32;
        let started = vm
            .call(
                "proxy_on_vm_start",
                &[Val::I32(root as i32), Val::I32(vm_cfg_len)],
            )
            .unwrap_or(1);
        if started == 0 {
            return Err(anyhow!(
                "proxy_on_vm_start returned false; module logs:\n{}",
                vm.logs_text()
            ));
        }
        vm.store.data_mut().phase = Phase::Configure;
        let cfg_len = vm.store.data().plugin_config.len() as i32;
        let configured = vm
            .call(
                "proxy_on_configure",
                &[Val::I32(root as i32), Val::I32(cfg_len)],
            )
            .unwrap_or(1);
        vm.store.data_mut().phase = Phase::Running;
        if configured == 0 {
            return Err(anyhow!(
                "proxy_on_configure rejected the configuration; module logs:\n{}",
                vm.logs_text()
            ));
        }
        Ok(vm)
    }
}

/// A running VM with its root context configured.
pub struct Vm {
    pub(crate) store: Store<State>,
    instance: Instance,
    name: String,
    pub(crate) allow_on_headers_stop_iteration: bool,
    pub(crate) next_ctx: u32,
    failed: Option<String>,
    funcs: HashMap<String, Option<Func>>,
}

impl Vm {
    pub fn host(&self) -> Host {
        self.store.data().host.clone()
    }
    pub fn root_ctx(&self) -> u32 {
        self.store.data().root_ctx
    }
    pub fn vm_id(&self) -> String {
        self.store.data().vm_id.clone()
    }

    pub(crate) fn func(&mut self, name: &str) -> Option<Func> {
        if let Some(f) = self.funcs.get(name) {
            return *f;
        }
        let f = self.instance.get_func(&mut self.store, name);
        self.funcs.insert(name.to_string(), f);
        f
    }

    /// Calls any export with i32 arguments as the root context (for the host's own tests
    /// and for module-specific exports). `None` when the export does not exist.
    pub fn call_export(&mut self, name: &str, args: &[i32]) -> Option<i32> {
        let args: Vec<Val> = args.iter().map(|a| Val::I32(*a)).collect();
        let root = self.root_ctx();
        self.call_as(root, name, &args)
    }

    /// Calls an export (a missing export is skipped, as Envoy does) and returns its i32
    /// result. A trap fails the test with the module's output.
    pub(crate) fn call(&mut self, name: &str, args: &[Val]) -> Option<i32> {
        if let Some(why) = &self.failed {
            panic!(
                "module `{}` is dead after an earlier trap; Envoy would fail every request now:\n{why}",
                self.name
            );
        }
        let f = self.func(name)?;
        self.store.data_mut().counts.callbacks += 1;
        let n_results = f.ty(&self.store).results().len();
        let mut results = vec![Val::I32(0); n_results];
        let log_start = self.store.data().logs.len();
        {
            let st = self.store.data_mut();
            st.effective = None;
            st.stop_next_iteration = false;
        }
        let outcome = f.call(&mut self.store, args, &mut results);
        self.store.data_mut().effective = None;
        if let Err(err) = outcome {
            // The module's own words first (its panic message arrives through proxy_log or
            // stderr just before the `unreachable`), then the trap and the wasm frames.
            let logs: Vec<String> = self.store.data().logs[log_start..]
                .iter()
                .map(|l| format!("  [{:?}] {}", l.level, l.message))
                .collect();
            let frames = err
                .downcast_ref::<wasmtime::WasmBacktrace>()
                .map(|bt| format!("\n{bt}"))
                .unwrap_or_default();
            let why = format!(
                "module `{}` trapped in {name}: {}\nmodule output before the trap:\n{}{frames}",
                self.name,
                err.root_cause(),
                if logs.is_empty() {
                    "  (none)".to_string()
                } else {
                    logs.join("\n")
                },
            );
            self.failed = Some(why.clone());
            panic!("{why}");
        }
        results.first().and_then(|v| v.i32())
    }

    /// Runs a callback as context `ctx` (the context whose maps the host calls touch).
    pub(crate) fn call_as(&mut self, ctx: u32, name: &str, args: &[Val]) -> Option<i32> {
        let prev = self.store.data().current;
        self.store.data_mut().current = ctx;
        let r = self.call(name, args);
        self.store.data_mut().current = prev;
        r
    }

    /// Calls across the VM boundary so far (subtract two readings for one request).
    pub fn call_counts(&self) -> CallCounts {
        let mut counts = self.store.data().counts;
        counts.wasm_ops = u64::MAX - self.store.get_fuel().unwrap_or(u64::MAX);
        counts
    }

    /// Host calls so far, by import name.
    pub fn host_calls(&self) -> BTreeMap<String, u64> {
        self.store.data().host_calls.clone()
    }

    /// Everything the module logged so far.
    pub fn logs(&self) -> Vec<LogLine> {
        self.store.data().logs.clone()
    }
    pub fn logs_text(&self) -> String {
        self.store
            .data()
            .logs
            .iter()
            .map(|l| format!("[{:?}] {}", l.level, l.message))
            .collect::<Vec<_>>()
            .join("\n")
    }
    /// True when some log line at `level` or above contains `needle`.
    pub fn logged(&self, level: LogLevel, needle: &str) -> bool {
        self.store
            .data()
            .logs
            .iter()
            .any(|l| l.level >= level && l.message.contains(needle))
    }
    pub fn clear_logs(&mut self) {
        self.store.data_mut().logs.clear();
    }

    /// The period the module asked for with `set_tick_period` (0: none).
    pub fn tick_period_ms(&self) -> u32 {
        self.store.data().tick_period_ms
    }

    /// Fires the root context's timer once (`proxy_on_tick`).
    pub fn tick(&mut self) {
        assert!(
            self.tick_period_ms() > 0,
            "module `{}` set no tick period, Envoy would never call proxy_on_tick",
            self.name
        );
        let root = self.root_ctx();
        self.call_as(root, "proxy_on_tick", &[Val::I32(root as i32)]);
        // Replies a tick sent to paused streams (through `set_effective_context`) go out
        // once the VM call returns, as in Envoy.
        self.run_deferred_local_replies();
    }

    /// Advances the proxy clock by the tick period, then ticks.
    pub fn advance_and_tick(&mut self) {
        let p = u64::from(self.tick_period_ms());
        self.host().advance_ms(p);
        self.tick();
    }

    /// HTTP calls dispatched and not yet answered, oldest first.
    pub fn pending_calls(&self) -> Vec<HttpCall> {
        self.store.data().pending_calls.values().cloned().collect()
    }
    /// Every HTTP call the module dispatched, answered or not.
    pub fn all_calls(&self) -> Vec<HttpCall> {
        self.store.data().all_calls.clone()
    }

    /// Answers one pending call through `proxy_on_http_call_response`.
    pub fn answer(&mut self, token: u32, outcome: CallOutcome) {
        if self.store.data_mut().pending_calls.remove(&token).is_none() {
            panic!("no pending HTTP call with token {token}");
        }
        let root = self.root_ctx();
        let (n_headers, body_len, n_trailers) = match outcome {
            CallOutcome::Response {
                status,
                mut headers,
                body,
                trailers,
            } => {
                headers.insert(0, (":status".to_string(), status.to_string().into_bytes()));
                if !body.is_empty() && header_value(&headers, "content-length").is_none() {
                    headers.push(("content-length".into(), body.len().to_string().into_bytes()));
                }
                let dims = (headers.len(), body.len(), trailers.len());
                let st = self.store.data_mut();
                st.call_response = Some(HttpCallResponse {
                    headers,
                    body,
                    trailers,
                });
                st.status = (0, Vec::new());
                dims
            }
            CallOutcome::Reset => {
                // WasmResult::BrokenConnection, message "reset".
                self.store.data_mut().status = (11, b"reset".to_vec());
                (0, 0, 0)
            }
        };
        self.call_as(
            root,
            "proxy_on_http_call_response",
            &[
                Val::I32(root as i32),
                Val::I32(token as i32),
                Val::I32(n_headers as i32),
                Val::I32(body_len as i32),
                Val::I32(n_trailers as i32),
            ],
        );
        let st = self.store.data_mut();
        st.call_response = None;
        st.status = (0, Vec::new());
        self.run_deferred_local_replies();
    }

    /// Answers, as Envoy does when a call's timeout fires, every pending call whose timeout
    /// (a timeout of 0 means none) has elapsed on the host clock. Returns the calls expired.
    pub fn expire_calls(&mut self) -> Vec<HttpCall> {
        let now = self.host().now_ms();
        let due: Vec<HttpCall> = self
            .pending_calls()
            .into_iter()
            .filter(|c| c.timeout_ms > 0 && now >= c.dispatched_at_ms + u64::from(c.timeout_ms))
            .collect();
        for c in &due {
            self.answer(c.token, CallOutcome::timeout());
        }
        due
    }

    /// Answers every pending call (including calls made while answering) with `respond`,
    /// until none is left. Returns the calls answered.
    pub fn answer_all(
        &mut self,
        mut respond: impl FnMut(&HttpCall) -> CallOutcome,
    ) -> Vec<HttpCall> {
        let mut answered = Vec::new();
        for _ in 0..1000 {
            let Some(call) = self.pending_calls().into_iter().next() else {
                return answered;
            };
            let outcome = respond(&call);
            self.answer(call.token, outcome);
            answered.push(call);
        }
        panic!("module keeps dispatching HTTP calls (1000 answered)");
    }

    /// Delivers `proxy_on_queue_ready` for every non-empty queue this VM registered.
    pub fn deliver_queues(&mut self) {
        let serial = self.store.data().serial;
        let ready: Vec<u32> = {
            let shared = self.host();
            let s = shared.lock();
            s.queues
                .iter()
                .filter(|(_, q)| q.owner == serial && !q.items.is_empty())
                .map(|(id, _)| *id)
                .collect()
        };
        let root = self.root_ctx();
        for id in ready {
            self.call_as(
                root,
                "proxy_on_queue_ready",
                &[Val::I32(root as i32), Val::I32(id as i32)],
            );
        }
    }

    /// Starts a new HTTP stream (`proxy_on_context_create(id, root)`).
    pub fn http(&mut self) -> HttpStream<'_> {
        HttpStream::new(self)
    }

    /// Names of `call_foreign_function` calls the module made.
    pub fn foreign_calls(&self) -> Vec<String> {
        self.store.data().foreign_calls.clone()
    }

    /// Counter/gauge value of a metric this proxy's modules defined.
    pub fn metric(&self, name: &str) -> i64 {
        self.host().metric_value(name)
    }

    /// Shared data of this VM's vm_id.
    pub fn shared_text(&self, key: &str) -> Option<String> {
        self.host().shared_text(&self.vm_id(), key)
    }

    /// Ends the plugin like Envoy on shutdown: `proxy_on_done(root)`, then `proxy_on_delete`.
    /// From now on the host answers every call of the `env` import `name` with `status` and
    /// does nothing else (as Envoy does for a call it refuses); `name` must be in
    /// [`imports::REFUSABLE`] or have been refused with [`VmBuilder::host_call_status`].
    pub fn refuse(&mut self, name: &str, status: i32) {
        self.store
            .data_mut()
            .refused
            .insert(name.to_string(), status);
    }

    /// Ends a [`Vm::refuse`]: calls of `name` work again.
    pub fn allow(&mut self, name: &str) {
        self.store.data_mut().refused.remove(name);
    }

    pub fn shutdown(&mut self) -> bool {
        let root = self.root_ctx();
        let done = self
            .call_as(root, "proxy_on_done", &[Val::I32(root as i32)])
            .unwrap_or(1);
        if done != 0 || self.store.data().done_called {
            self.call_as(root, "proxy_on_delete", &[Val::I32(root as i32)]);
        }
        done != 0
    }

    pub(crate) fn run_deferred_local_replies(&mut self) {
        let ids: Vec<u32> = self
            .store
            .data()
            .streams
            .iter()
            .filter(|(_, s)| s.pending_local_reply.is_some())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            crate::http::deliver_local_reply(self, id);
        }
    }
}
