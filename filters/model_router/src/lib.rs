//! model_router filter: proxy-wasm glue only; the policy (which requests, which model,
//! which target, what the body becomes) lives in `modelgate_core::router`.
//!
//! Request headers: decide from method/path/content type (`Router::on_headers`); for an
//! inference request pause (needs `allow_on_headers_stop_iteration: true`). Request body:
//! feed only the bytes not yet scanned to `BodyRouting` until it decides — once the model
//! is read (and the prefix hash is final), usually in the first chunk — then edit the body
//! front once, fix `content-length`, set the routing headers and continue: the rest of the
//! body streams through unread. Envoy clears the route cache whenever a filter changes a
//! request header, so the route is chosen again on `x-modelgate-model` (checked in
//! tests/e2e/tests/e2e_router.rs).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use modelgate_core::affinity::hash_hex;
use modelgate_core::config::FilterKind;
use modelgate_core::prng::Prng;
use modelgate_core::router::{
    decimal, effective_criticality, BodyRouting, BodyStep, HeadersAction, RequestHead, Route,
    Router,
};
use modelgate_core::vocab::{CRITICALITY_HEADER, MODEL_HEADER, PREFIX_HASH_HEADER};
use modelgate_glue::dispatch::{Root, Stream};
use modelgate_glue::types::{Action, BufferType, MapType};
use modelgate_glue::{host, now_ms, send_error};

/// Most body bytes copied into the VM per host call while looking for the model.
const WINDOW: usize = 8192;

// The request alone decides the route; nothing on the response or at the end.
#[cfg(feature = "export")]
modelgate_glue::export_filter!(
    RouterRoot,
    [request_headers, request_body, request_trailers]
);

thread_local! {
    /// One PRNG per VM (a VM is single-threaded), seeded from the host on first use.
    static RNG: Cell<Option<Prng>> = const { Cell::new(None) };
    /// The new body front, built in one buffer reused by every request of the VM.
    static PREFIX: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn with_rng<T>(f: impl FnOnce(&mut Prng) -> T) -> T {
    RNG.with(|cell| {
        let mut rng = cell.get().unwrap_or_else(|| Prng::new(seed()));
        let out = f(&mut rng);
        cell.set(Some(rng));
        out
    })
}

fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    match getrandom::getrandom(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        // No WASI random source: the clock still differs between VMs and restarts.
        Err(_) => now_ms().rotate_left(17) ^ 0x6d6f_6465_6c67_6174,
    }
}

#[derive(Default)]
pub struct RouterRoot {
    /// Shared with every stream started after the last `on_configure`.
    router: Option<Rc<Router>>,
}

impl Root for RouterRoot {
    type Stream = RouterHttp;

    fn on_vm_start(&mut self) -> bool {
        modelgate_glue::log_start(FilterKind::ModelRouter);
        true
    }

    fn on_configure(&mut self, config: &[u8]) -> bool {
        self.router = modelgate_glue::configure::<Router>(config).map(Rc::new);
        self.router.is_some()
    }

    fn new_stream(&mut self, _context_id: u32) -> Option<RouterHttp> {
        let router = self.router.clone()?;
        Some(RouterHttp {
            body: BodyRouting::new(&router),
            router,
            phase: Phase::Headers,
            content_length: None,
            client_criticality: None,
        })
    }
}

/// Where a request is in the router.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not an inference request, answered, or the body has ended: body callbacks pass and
    /// the stream's state is dropped.
    Headers,
    /// An inference request whose body is being read (headers paused).
    Reading,
    /// Routed; a body without `content-length` is counted against `max_body_bytes`.
    Counting,
}

pub struct RouterHttp {
    router: Rc<Router>,
    phase: Phase,
    body: BodyRouting,
    /// The declared body length, when the request has one.
    content_length: Option<usize>,
    /// The client's `x-modelgate-criticality`, which may only lower the model's.
    client_criticality: Option<String>,
}

impl Stream for RouterHttp {
    fn on_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let method = request_header(":method").unwrap_or_default();
        let path = request_header(":path").unwrap_or_default();
        let is_post = method == "POST";
        let (content_type, content_length) = if is_post {
            (
                request_header("content-type"),
                request_header("content-length"),
            )
        } else {
            (None, None)
        };
        let head = RequestHead {
            method: &method,
            path: &path,
            content_type: content_type.as_deref(),
            content_length: content_length.as_deref(),
            end_of_stream,
        };
        let router = Rc::clone(&self.router);
        match router.on_headers(&head) {
            HeadersAction::PassThrough => {
                // Routes and the shedder trust these: a client must not set them itself.
                for name in [MODEL_HEADER, CRITICALITY_HEADER, PREFIX_HASH_HEADER] {
                    set_request_header(name, None);
                }
                Action::Continue
            }
            HeadersAction::Reply(status, body) => {
                let headers: [(&str, &[u8]); 1] = [("content-type", b"application/json")];
                modelgate_glue::reply(status, &headers, &body)
            }
            HeadersAction::Error(err) => send_error(&err, &[]),
            HeadersAction::ReadBody => {
                self.phase = Phase::Reading;
                self.content_length = content_length.and_then(|v| v.trim().parse().ok());
                self.client_criticality = request_header(CRITICALITY_HEADER);
                Action::Pause
            }
        }
    }

    fn on_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        match self.phase {
            Phase::Headers => Action::Continue,
            Phase::Reading => self.read_body(Some(body_size), end_of_stream),
            // Streaming now: `body_size` is this chunk alone.
            Phase::Counting => match self.body.streamed(&self.router, body_size) {
                None => {
                    if end_of_stream {
                        self.phase = Phase::Headers;
                    }
                    Action::Continue
                }
                Some(err) => {
                    self.phase = Phase::Headers;
                    send_error(&err, &[])
                }
            },
        }
    }

    /// A body that ends with trailers never has `end_of_stream` in the body callback: the
    /// trailers mark its end.
    fn on_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if self.phase != Phase::Reading {
            self.phase = Phase::Headers;
            return Action::Continue;
        }
        self.read_body(None, true)
    }

    /// The stream's state is dropped as soon as nothing is left to read or count.
    fn done(&self) -> bool {
        self.phase == Phase::Headers
    }
}

impl RouterHttp {
    /// Feeds the body bytes not scanned yet (`body_size` buffered in total, unknown in the
    /// trailers callback), a window at a time so a body whose model comes early is never
    /// copied whole, and acts on the decision.
    fn read_body(&mut self, body_size: Option<usize>, end_of_stream: bool) -> Action {
        let router = Rc::clone(&self.router);
        let limit = router.max_body_bytes();
        let (mut from, mut chunk, mut step);
        loop {
            from = self.body.consumed();
            // Only the bytes not scanned yet; nothing at all once over the limit.
            let (got, last) = match body_size {
                Some(size) if size > from && size <= limit => {
                    let want = (size - from).min(WINDOW);
                    (request_body(from, want), from + want == size)
                }
                Some(_) => (None, true),
                // What is buffered, up to one byte past the limit so an overflow shows.
                None => (request_body(from, (limit + 1).saturating_sub(from)), true),
            };
            chunk = got.unwrap_or_default();
            let total = body_size.unwrap_or(from + chunk.len());
            let eos = end_of_stream && last;
            step = with_rng(|rng| self.body.feed(&router, &chunk, total, eos, rng));
            if last || chunk.is_empty() || step != BodyStep::NeedMore {
                break;
            }
        }
        match step {
            BodyStep::NeedMore => Action::Pause,
            BodyStep::Error(err) => {
                self.phase = Phase::Headers;
                send_error(&err, &[])
            }
            BodyStep::Route(route) => {
                // A chunked body is measured as it streams; a declared length was checked.
                self.phase = if self.content_length.is_none() && !end_of_stream {
                    Phase::Counting
                } else {
                    Phase::Headers
                };
                // `chunk` holds the body from `from`: the edit reuses it when it starts at 0.
                let buffered = (from == 0).then_some(chunk.as_slice());
                self.apply(&router, &route, buffered);
                Action::Continue
            }
        }
    }

    /// Writes the decision into the request: body front, `content-length`, headers.
    /// `buffered` is the body from its first byte when the glue already holds it.
    fn apply(&self, router: &Router, route: &Route<'_>, buffered: Option<&[u8]>) {
        let Some(model) = router.model(route.model) else {
            return;
        };
        let Some(target) = model.targets.get(route.target) else {
            return;
        };
        if let Some(edit) = &route.edit {
            let fetched;
            let kept: &[u8] = match buffered.and_then(|b| b.get(..edit.keep)) {
                Some(k) => k,
                None => {
                    fetched = request_body(0, edit.keep).unwrap_or_default();
                    &fetched
                }
            };
            // Envoy edits a buffered body only at the front: drain `drop` bytes, prepend.
            PREFIX.with(|p| {
                let mut prefix = p.borrow_mut();
                edit.write_prefix(kept, &mut prefix);
                let _ = host::set_buffer(BufferType::HttpRequestBody, 0, edit.drop, &prefix);
            });
            if let Some(len) = self.content_length {
                let mut digits = [0u8; 20];
                let len = decimal(edit.new_body_len(len), &mut digits);
                set_request_header("content-length", Some(len));
            }
        }
        set_request_header(MODEL_HEADER, Some(target.name.as_bytes()));
        let criticality =
            effective_criticality(self.client_criticality.as_deref(), model.criticality, false);
        set_request_header(CRITICALITY_HEADER, Some(criticality.as_str().as_bytes()));
        match route.prefix_hash {
            Some(h) => {
                let hex = hash_hex(h);
                set_request_header(PREFIX_HASH_HEADER, Some(&hex));
            }
            None => set_request_header(PREFIX_HASH_HEADER, None),
        }
    }
}

/// A request header as text; never traps (non-UTF-8 bytes become U+FFFD).
fn request_header(name: &str) -> Option<String> {
    modelgate_glue::headers::header(MapType::HttpRequestHeaders, name)
}

/// Sets (or with `None` removes) a request header; a host refusal leaves the request as is.
fn set_request_header(name: &str, value: Option<&[u8]>) {
    let _ = modelgate_glue::headers::set(MapType::HttpRequestHeaders, name, value);
}

/// `len` bytes of the buffered request body from `start`.
fn request_body(start: usize, len: usize) -> Option<Vec<u8>> {
    host::buffer(BufferType::HttpRequestBody, start, len)
}
