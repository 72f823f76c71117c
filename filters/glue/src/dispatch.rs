//! The module's side of the proxy-wasm ABI: root contexts, per-stream state, and the exports
//! ([`export_filter!`]) that name exactly the stream callbacks a filter uses. Envoy
//! (proxy-wasm-cpp-host) skips every callback a module does not export, so each one left out
//! is one VM call less per request.
//!
//! Roots: one per plugin configuration in the VM (several listeners may configure one module
//! differently under one `vm_id`), keyed by context id. `proxy_on_context_create` is the one
//! callback that names a stream's root, so every module exports it and the dispatcher notes
//! the pair. A stream's state is created by that root at the stream's first other callback
//! (`Root::new_stream`) and dropped at `on_log` (the last callback Envoy makes, for every
//! stream, when exported), or as soon as `Stream::done` says so; a stream is never given a
//! second state. Notes and states of streams that ended without either are dropped oldest
//! first past [`MAX_STREAMS`]. `proxy_on_done` and `proxy_on_delete` are never exported: each
//! would cost a VM call per request.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::thread::LocalKey;

use crate::headers::Callback;
use crate::types::{Action, BufferType, LogLevel};

/// Most stream states (and root notes) one VM keeps; past it the oldest is dropped.
pub const MAX_STREAMS: usize = 16384;
/// Most root contexts one VM keeps: a replaced configuration's root is never deleted (no
/// `proxy_on_delete`), so past this many the oldest is dropped.
const MAX_ROOTS: usize = 64;

/// A filter's root context: configuration, timers, HTTP calls, and the streams it starts.
pub trait Root: Default + 'static {
    type Stream: Stream;

    fn on_vm_start(&mut self) -> bool {
        true
    }
    /// Validates and applies the plugin configuration; `false` rejects it.
    fn on_configure(&mut self, config: &[u8]) -> bool;
    fn on_tick(&mut self) {}
    fn on_http_call_response(&mut self, _token: u32, _headers: usize, _body: usize) {}
    /// The state of stream `context_id`; `None` lets the stream pass untouched.
    fn new_stream(&mut self, context_id: u32) -> Option<Self::Stream>;
}

/// One HTTP stream's state. Only the callbacks named in [`export_filter!`] are ever called.
pub trait Stream: 'static {
    fn on_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        Action::Continue
    }
    fn on_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        Action::Continue
    }
    fn on_request_trailers(&mut self, _trailers: usize) -> Action {
        Action::Continue
    }
    fn on_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        Action::Continue
    }
    fn on_response_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        Action::Continue
    }
    fn on_log(&mut self) {}
    /// True once the stream needs no further callback; its state is dropped then. Filters
    /// that export `on_log` need not say.
    fn done(&self) -> bool {
        false
    }
}

/// The roots and streams of one VM (one per worker thread).
pub struct Dispatcher<R: Root> {
    /// Oldest first.
    roots: Vec<(u32, R)>,
    /// Keyed by context id, which the host hands out in increasing order.
    streams: BTreeMap<u32, R::Stream>,
    /// The root of each stream created but not yet seen by a stream callback.
    parents: BTreeMap<u32, u32>,
    evicted: u64,
}

impl<R: Root> Default for Dispatcher<R> {
    fn default() -> Self {
        Self::new()
    }
}

impl<R: Root> Dispatcher<R> {
    pub const fn new() -> Self {
        Self {
            roots: Vec::new(),
            streams: BTreeMap::new(),
            parents: BTreeMap::new(),
            evicted: 0,
        }
    }

    fn root(&mut self, id: u32) -> Option<&mut R> {
        let root = self
            .roots
            .iter_mut()
            .find(|(i, _)| *i == id)
            .map(|(_, r)| r);
        if root.is_none() {
            crate::log(
                LogLevel::Debug,
                &format!("callback for unknown root context {id}"),
            );
        }
        root
    }

    fn root_or_new(&mut self, id: u32) -> Option<&mut R> {
        if !self.roots.iter().any(|(i, _)| *i == id) {
            if self.roots.len() >= MAX_ROOTS {
                self.roots.remove(0);
                crate::log(
                    LogLevel::Warn,
                    &format!("more than {MAX_ROOTS} configurations in this VM: dropped the oldest"),
                );
            }
            self.roots.push((id, R::default()));
        }
        self.roots
            .iter_mut()
            .find(|(i, _)| *i == id)
            .map(|(_, r)| r)
    }

    /// A root context (`parent` 0) or a stream of root `parent`.
    pub fn context_create(&mut self, id: u32, parent: u32) {
        if parent == 0 {
            let _ = self.root_or_new(id);
        } else if bounded_insert(&mut self.parents, id, parent) {
            self.evicted();
        }
    }

    pub fn vm_start(&mut self, id: u32) -> bool {
        self.root_or_new(id).is_some_and(|r| r.on_vm_start())
    }

    /// A rejected configuration's root is forgotten: Envoy will not use it.
    pub fn configure(&mut self, id: u32, size: usize) -> bool {
        let config =
            crate::host::buffer(BufferType::PluginConfiguration, 0, size).unwrap_or_default();
        let ok = self
            .root_or_new(id)
            .is_some_and(|r| r.on_configure(&config));
        if !ok {
            self.roots.retain(|(i, _)| *i != id);
        }
        ok
    }

    pub fn tick(&mut self, id: u32) {
        if let Some(r) = self.root(id) {
            r.on_tick();
        }
    }

    pub fn http_call_response(&mut self, id: u32, token: u32, headers: usize, body: usize) {
        if let Some(r) = self.root(id) {
            r.on_http_call_response(token, headers, body);
        }
    }

    /// Runs a stream callback on stream `id`'s state, created at its first callback.
    pub fn stream(&mut self, id: u32, f: impl FnOnce(&mut R::Stream) -> Action) -> Action {
        if let Some(s) = self.streams.get_mut(&id) {
            let action = f(s);
            if s.done() {
                self.streams.remove(&id);
            }
            return action;
        }
        let Some(parent) = self.parents.remove(&id) else {
            return Action::Continue;
        };
        let Some(mut s) = self.root(parent).and_then(|r| r.new_stream(id)) else {
            return Action::Continue;
        };
        let action = f(&mut s);
        if !s.done() && bounded_insert(&mut self.streams, id, s) {
            self.evicted();
        }
        action
    }

    /// `on_log`, then the stream's state is dropped.
    pub fn log(&mut self, id: u32) {
        self.parents.remove(&id);
        if let Some(mut s) = self.streams.remove(&id) {
            s.on_log();
        }
    }

    fn evicted(&mut self) {
        self.evicted += 1;
        if self.evicted.is_power_of_two() {
            crate::log(
                LogLevel::Warn,
                &format!(
                    "more than {MAX_STREAMS} streams open in this VM: dropped the oldest \
                     ({} so far)",
                    self.evicted
                ),
            );
        }
    }
}

/// Inserts, first dropping the oldest entry when full; true when one was dropped.
fn bounded_insert<V>(map: &mut BTreeMap<u32, V>, id: u32, value: V) -> bool {
    let dropped = map.len() >= MAX_STREAMS && map.pop_first().is_some();
    map.insert(id, value);
    dropped
}

/// Runs VM callback `callback` as `f` on the VM's dispatcher; `busy` if the host re-entered a
/// callback (it does not).
pub fn with<R: Root, T: Copy>(
    key: &'static LocalKey<RefCell<Dispatcher<R>>>,
    callback: Callback,
    busy: T,
    f: impl FnOnce(&mut Dispatcher<R>) -> T,
) -> T {
    crate::headers::callback_starts(callback);
    key.try_with(|cell| match cell.try_borrow_mut() {
        Ok(mut d) => f(&mut d),
        Err(_) => busy,
    })
    .unwrap_or(busy)
}

/// `proxy_on_memory_allocate`: where the host copies what it hands the module. The module
/// takes each such buffer back as a `Vec` of exactly `size` bytes (`host::owned`).
pub fn allocate(size: usize) -> *mut u8 {
    Box::into_raw(Box::<[u8]>::new_uninit_slice(size)).cast()
}

/// Exports the ABI for filter root type `$root`, with exactly the stream callbacks listed
/// (`request_headers`, `request_body`, `request_trailers`, `response_headers`,
/// `response_body`, `log`); `context_create` (a call per request, the one that names a
/// stream's root) and the root callbacks (`vm_start`, `configure`, `tick`,
/// `http_call_response`, no cost per request) are always exported.
#[macro_export]
macro_rules! export_filter {
    ($root:ty, [$($callback:ident),* $(,)?]) => {
        thread_local! {
            static DISPATCHER: ::std::cell::RefCell<$crate::dispatch::Dispatcher<$root>> =
                const { ::std::cell::RefCell::new($crate::dispatch::Dispatcher::new()) };
        }

        /// Runs the module's static constructors once, before any other export.
        #[no_mangle]
        pub extern "C" fn _initialize() {
            #[cfg(target_os = "wasi")]
            {
                extern "C" {
                    fn __wasm_call_ctors();
                }
                // SAFETY: the linker's constructor list, run once as the host starts the VM.
                unsafe { __wasm_call_ctors() }
            }
        }

        #[no_mangle]
        pub extern "C" fn proxy_abi_version_0_2_1() {}

        #[no_mangle]
        pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
            $crate::dispatch::allocate(size)
        }

        #[no_mangle]
        pub extern "C" fn proxy_on_context_create(id: u32, parent: u32) {
            $crate::dispatch::with(&DISPATCHER, $crate::headers::Callback::Root, (), |d| {
                d.context_create(id, parent)
            })
        }

        #[no_mangle]
        pub extern "C" fn proxy_on_vm_start(id: u32, _size: usize) -> u32 {
            u32::from($crate::dispatch::with(&DISPATCHER, $crate::headers::Callback::Root, false, |d| {
                d.vm_start(id)
            }))
        }

        #[no_mangle]
        pub extern "C" fn proxy_on_configure(id: u32, size: usize) -> u32 {
            u32::from($crate::dispatch::with(&DISPATCHER, $crate::headers::Callback::Root, false, |d| {
                d.configure(id, size)
            }))
        }

        #[no_mangle]
        pub extern "C" fn proxy_on_tick(id: u32) {
            $crate::dispatch::with(&DISPATCHER, $crate::headers::Callback::Root, (), |d| d.tick(id))
        }

        #[no_mangle]
        pub extern "C" fn proxy_on_http_call_response(
            id: u32,
            token: u32,
            headers: usize,
            body: usize,
            _trailers: usize,
        ) {
            $crate::dispatch::with(&DISPATCHER, $crate::headers::Callback::Root, (), |d| {
                d.http_call_response(id, token, headers, body)
            })
        }

        $($crate::export_filter!(@stream $callback);)*
    };
    (@stream request_headers) => {
        #[no_mangle]
        pub extern "C" fn proxy_on_request_headers(id: u32, headers: usize, eos: u32) -> u32 {
            $crate::export_filter!(@call id, RequestHeaders, |s| s.on_request_headers(headers, eos != 0))
        }
    };
    (@stream request_body) => {
        #[no_mangle]
        pub extern "C" fn proxy_on_request_body(id: u32, size: usize, eos: u32) -> u32 {
            $crate::export_filter!(@call id, RequestBody, |s| s.on_request_body(size, eos != 0))
        }
    };
    (@stream request_trailers) => {
        #[no_mangle]
        pub extern "C" fn proxy_on_request_trailers(id: u32, trailers: usize) -> u32 {
            $crate::export_filter!(@call id, RequestTrailers, |s| s.on_request_trailers(trailers))
        }
    };
    (@stream response_headers) => {
        #[no_mangle]
        pub extern "C" fn proxy_on_response_headers(id: u32, headers: usize, eos: u32) -> u32 {
            $crate::export_filter!(@call id, ResponseHeaders, |s| s.on_response_headers(headers, eos != 0))
        }
    };
    (@stream response_body) => {
        #[no_mangle]
        pub extern "C" fn proxy_on_response_body(id: u32, size: usize, eos: u32) -> u32 {
            $crate::export_filter!(@call id, ResponseBody, |s| s.on_response_body(size, eos != 0))
        }
    };
    (@stream log) => {
        #[no_mangle]
        pub extern "C" fn proxy_on_log(id: u32) {
            $crate::dispatch::with(&DISPATCHER, $crate::headers::Callback::Log, (), |d| d.log(id))
        }
    };
    (@call $id:ident, $callback:ident, |$s:ident| $body:expr) => {{
        use $crate::dispatch::Stream as _;
        let action = $crate::dispatch::with(
            &DISPATCHER,
            $crate::headers::Callback::$callback,
            $crate::types::Action::Continue,
            |d| d.stream($id, |$s| $body),
        );
        action as u32
    }};
}
