//! One HTTP stream through a filter, the way Envoy's Wasm filter drives it: header maps that
//! exist only while Envoy holds them, bodies buffered across `Pause`, local replies sent after
//! the callback returns and then passed through the filter's own response callbacks.

use std::collections::HashMap;

use wasmtime::Val;

use crate::imports::local_reply_headers;
use crate::vm::{header_value, Vm};
use crate::wire::{self, Pairs};

/// What a callback answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Continue,
    /// StopIteration for headers, StopIterationAndBuffer for bodies.
    Pause,
    /// Envoy did not call the module: the stream already ended (local reply, reset) or it
    /// is stopped by a headers `Pause` without `allow_on_headers_stop_iteration`.
    NotCalled,
}

/// A reply the module sent with `send_local_response`, as the client receives it (after
/// the filter's own `on_http_response_headers`/`_body` saw it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Pairs,
    pub body: Vec<u8>,
    /// Envoy's response code details (`%RESPONSE_CODE_DETAILS%`).
    pub details: String,
    pub grpc_status: i32,
}

impl LocalReply {
    pub fn header(&self, name: &str) -> Option<String> {
        header_value(&self.headers, name)
    }
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The body parsed as JSON (panics with the body when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("local reply body is not JSON ({e}): {}", self.body_text()))
    }
}

/// Request or response: the two halves of a stream, driven the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    Request,
    Response,
}

impl Direction {
    fn callback(self, part: &Part) -> &'static str {
        match (self, part) {
            (Self::Request, Part::Headers(..)) => "proxy_on_request_headers",
            (Self::Request, Part::Body(..)) => "proxy_on_request_body",
            (Self::Request, Part::Trailers(..)) => "proxy_on_request_trailers",
            (Self::Response, Part::Headers(..)) => "proxy_on_response_headers",
            (Self::Response, Part::Body(..)) => "proxy_on_response_body",
            (Self::Response, Part::Trailers(..)) => "proxy_on_response_trailers",
        }
    }
}

/// What Envoy hands the filter next in one direction.
enum Part<'b> {
    Headers(Pairs, bool),
    Body(&'b [u8], bool),
    Trailers(Pairs),
}

/// One direction of a stream as Envoy's filter manager holds it for the filter.
#[derive(Default)]
pub(crate) struct Flow {
    pub headers: Pairs,
    /// The map exists now (Envoy holds it: during the callback, or while stopped).
    pub headers_live: bool,
    /// The map was ever delivered (readable again in `on_log`).
    pub headers_seen: bool,
    pub trailers: Pairs,
    pub trailers_live: bool,
    pub trailers_seen: bool,
    /// The body the module sees: everything buffered since its last `Continue`.
    pub body: Vec<u8>,
    pub body_live: bool,
    pub buffering: bool,
    /// Bytes passed on (upstream for the request, to the client for the response).
    pub forwarded_body: Vec<u8>,
    /// Headers went on (a callback continued, or the module resumed).
    pub forwarded: bool,
    /// A headers `Pause` without `allow_on_headers_stop_iteration` (or after a local reply):
    /// Envoy's StopAll, which holds later data without calling the module.
    pub stop_all: bool,
    pub held_body: Vec<u8>,
    /// `continue_stream` calls for this direction.
    pub resumed: u32,
}

impl Flow {
    /// Envoy passes on what it buffered for the module.
    fn forward_buffered(&mut self) {
        self.forwarded_body.append(&mut self.body);
        self.body_live = false;
        self.buffering = false;
        self.forwarded = true;
        self.stop_all = false;
    }

    /// `continue_stream`: Envoy resumes the filter chain, flushing what it buffered or held.
    fn resume(&mut self) {
        self.resumed += 1;
        self.forwarded = true;
        self.stop_all = false;
        if self.buffering {
            self.forwarded_body.append(&mut self.body);
            self.buffering = false;
            self.body_live = false;
        }
        self.forwarded_body.append(&mut self.held_body);
    }
}

#[derive(Default)]
pub(crate) struct StreamState {
    pub req: Flow,
    pub resp: Flow,
    pub pending_local_reply: Option<LocalReply>,
    pub local_reply: Option<LocalReply>,
    pub local_reply_calls: u32,
    pub reset: bool,
    pub route_cache_cleared: bool,
    pub access_log_phase: bool,
    pub finished: bool,
    pub properties: HashMap<Vec<u8>, Vec<u8>>,
}

impl StreamState {
    /// `continue_stream(stream_type)`: 0 request, 1 response; others are ignored.
    pub fn resume(&mut self, stream_type: i32) {
        match stream_type {
            0 => self.req.resume(),
            1 => self.resp.resume(),
            _ => {}
        }
    }

    pub(crate) fn flow(&self, dir: Direction) -> &Flow {
        match dir {
            Direction::Request => &self.req,
            Direction::Response => &self.resp,
        }
    }

    pub(crate) fn flow_mut(&mut self, dir: Direction) -> &mut Flow {
        match dir {
            Direction::Request => &mut self.req,
            Direction::Response => &mut self.resp,
        }
    }

    fn ended(&self) -> bool {
        self.local_reply.is_some()
            || self.pending_local_reply.is_some()
            || self.reset
            || self.finished
    }
}

/// A request's life through one VM. Created by [`Vm::http`]; re-borrowed with [`Vm::stream`].
pub struct HttpStream<'a> {
    vm: &'a mut Vm,
    id: u32,
}

fn action(v: Option<i32>) -> Action {
    match v.unwrap_or(0) {
        0 => Action::Continue,
        _ => Action::Pause,
    }
}

impl<'a> HttpStream<'a> {
    pub(crate) fn new(vm: &'a mut Vm) -> Self {
        let id = vm.next_ctx;
        vm.next_ctx += 1;
        vm.store
            .data_mut()
            .streams
            .insert(id, StreamState::default());
        let root = vm.root_ctx();
        vm.call_as(
            id,
            "proxy_on_context_create",
            &[Val::I32(id as i32), Val::I32(root as i32)],
        );
        Self { vm, id }
    }

    /// Context id of this stream (to come back to it with [`Vm::stream`]).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The VM, e.g. to answer the HTTP calls this request triggered.
    pub fn vm(&mut self) -> &mut Vm {
        self.vm
    }

    fn st(&self) -> &StreamState {
        &self.vm.store.data().streams[&self.id]
    }

    fn st_mut(&mut self) -> &mut StreamState {
        self.vm
            .store
            .data_mut()
            .streams
            .get_mut(&self.id)
            .expect("stream state exists while the handle does")
    }

    fn stop_next(&self) -> bool {
        self.vm.store.data().stop_next_iteration
    }

    fn call(&mut self, name: &str, args: &[Val]) -> Option<i32> {
        self.vm.call_as(self.id, name, args)
    }

    /// Sets a property this stream's `get_property` sees (e.g. `["request", "path"]`).
    pub fn property(&mut self, path: &[&str], value: &[u8]) -> &mut Self {
        self.st_mut()
            .properties
            .insert(wire::property_key(path), value.to_vec());
        self
    }

    /// `proxy_on_request_headers`.
    pub fn request_headers(&mut self, headers: &[(&str, &str)], end_of_stream: bool) -> Action {
        self.deliver(
            Direction::Request,
            Part::Headers(wire::pairs_from(headers), end_of_stream),
        )
    }

    /// `proxy_on_request_headers` with raw values (Envoy passes obs-text bytes 0x80-0xFF
    /// through, so a value need not be UTF-8).
    pub fn request_headers_bytes(
        &mut self,
        headers: &[(&str, &[u8])],
        end_of_stream: bool,
    ) -> Action {
        self.deliver(
            Direction::Request,
            Part::Headers(raw_pairs(headers), end_of_stream),
        )
    }

    /// `proxy_on_request_body` with one chunk. Envoy shows the module everything buffered
    /// since its last `Continue`: `body_size` is the buffered total.
    pub fn request_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Action {
        self.deliver(Direction::Request, Part::Body(chunk, end_of_stream))
    }

    /// Sends `body` cut at `cuts` (byte offsets, ascending), the last chunk with
    /// `end_of_stream`. Returns the last callback's answer (`NotCalled` if a local reply
    /// ended the stream before the last chunk).
    pub fn request_body_split(&mut self, body: &[u8], cuts: &[usize]) -> Action {
        self.body_split(Direction::Request, body, cuts)
    }

    /// Sends `body` in chunks of `size` bytes.
    pub fn request_body_chunks(&mut self, body: &[u8], size: usize) -> Action {
        self.body_split(Direction::Request, body, &chunk_cuts(body.len(), size))
    }

    /// `proxy_on_request_trailers`.
    pub fn request_trailers(&mut self, trailers: &[(&str, &str)]) -> Action {
        self.deliver(
            Direction::Request,
            Part::Trailers(wire::pairs_from(trailers)),
        )
    }

    /// `proxy_on_response_headers` for the upstream's response.
    pub fn response_headers(&mut self, headers: &[(&str, &str)], end_of_stream: bool) -> Action {
        self.deliver(
            Direction::Response,
            Part::Headers(wire::pairs_from(headers), end_of_stream),
        )
    }

    /// `proxy_on_response_headers` with raw (possibly non-UTF-8) values.
    pub fn response_headers_bytes(
        &mut self,
        headers: &[(&str, &[u8])],
        end_of_stream: bool,
    ) -> Action {
        self.deliver(
            Direction::Response,
            Part::Headers(raw_pairs(headers), end_of_stream),
        )
    }

    /// `proxy_on_response_body` with one chunk (buffered like the request body).
    pub fn response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Action {
        self.deliver(Direction::Response, Part::Body(chunk, end_of_stream))
    }

    /// Sends a response body cut at `cuts`, the last chunk with `end_of_stream`.
    pub fn response_body_split(&mut self, body: &[u8], cuts: &[usize]) -> Action {
        self.body_split(Direction::Response, body, cuts)
    }

    /// Sends a response body in chunks of `size` bytes.
    pub fn response_body_chunks(&mut self, body: &[u8], size: usize) -> Action {
        self.body_split(Direction::Response, body, &chunk_cuts(body.len(), size))
    }

    /// `proxy_on_response_trailers`.
    pub fn response_trailers(&mut self, trailers: &[(&str, &str)]) -> Action {
        self.deliver(
            Direction::Response,
            Part::Trailers(wire::pairs_from(trailers)),
        )
    }

    fn body_split(&mut self, dir: Direction, body: &[u8], cuts: &[usize]) -> Action {
        let mut last = Action::NotCalled;
        for (chunk, eos) in split(body, cuts) {
            last = self.deliver(dir, Part::Body(chunk, eos));
        }
        last
    }

    /// Hands the module the next part of one direction the way Envoy's filter manager does,
    /// and applies its answer: headers go on or stop (StopAll without
    /// `allow_on_headers_stop_iteration`), bodies go on or stay buffered, trailers flush.
    fn deliver(&mut self, dir: Direction, part: Part) -> Action {
        let st = self.st();
        if st.ended() {
            return Action::NotCalled;
        }
        if st.flow(dir).stop_all {
            // Stopped: Envoy holds data (flushed on resume) and does not call the module.
            if let Part::Body(chunk, _) = &part {
                self.st_mut()
                    .flow_mut(dir)
                    .held_body
                    .extend_from_slice(chunk);
                return Action::NotCalled;
            }
            if let Part::Trailers(_) = &part {
                return Action::NotCalled;
            }
        }
        let name = dir.callback(&part);
        let id = Val::I32(self.id as i32);
        let flow = self.st_mut().flow_mut(dir);
        let args = match &part {
            Part::Headers(pairs, eos) => {
                flow.headers = pairs.clone();
                flow.headers_live = true;
                flow.headers_seen = true;
                vec![id, Val::I32(pairs.len() as i32), Val::I32(i32::from(*eos))]
            }
            Part::Body(chunk, eos) => {
                if flow.buffering {
                    flow.body.extend_from_slice(chunk);
                } else {
                    flow.body = chunk.to_vec();
                }
                flow.body_live = true;
                vec![
                    id,
                    Val::I32(flow.body.len() as i32),
                    Val::I32(i32::from(*eos)),
                ]
            }
            Part::Trailers(pairs) => {
                flow.trailers = pairs.clone();
                flow.trailers_live = true;
                flow.trailers_seen = true;
                vec![id, Val::I32(pairs.len() as i32)]
            }
        };
        let a = action(self.call(name, &args));
        let go_on = a == Action::Continue && !self.stop_next();
        let stop_all = !self.vm.allow_on_headers_stop_iteration || self.stop_next();
        let flow = self.st_mut().flow_mut(dir);
        match part {
            Part::Headers(..) if go_on => {
                flow.headers_live = false;
                flow.forwarded = true;
            }
            Part::Headers(..) if stop_all => flow.stop_all = true,
            Part::Headers(..) => {}
            Part::Body(..) if go_on => flow.forward_buffered(),
            Part::Body(..) => flow.buffering = true,
            // Continuing at the trailers sends on whatever Envoy buffered before them.
            Part::Trailers(..) if go_on => {
                flow.trailers_live = false;
                flow.forward_buffered();
            }
            Part::Trailers(..) => {}
        }
        self.vm.run_deferred_local_replies();
        a
    }

    /// Ends the stream like Envoy: `proxy_on_done`, `proxy_on_log` (request and response
    /// headers readable, nothing writable), `proxy_on_delete`.
    pub fn finish(mut self) {
        let id = self.id as i32;
        {
            let s = self.st_mut();
            s.finished = true;
            s.req.headers_live = false;
            s.resp.headers_live = false;
            s.req.body_live = false;
            s.resp.body_live = false;
        }
        self.call("proxy_on_done", &[Val::I32(id)]);
        self.st_mut().access_log_phase = true;
        self.call("proxy_on_log", &[Val::I32(id)]);
        self.st_mut().access_log_phase = false;
        self.call("proxy_on_delete", &[Val::I32(id)]);
    }

    /// The local reply the client got, if the module sent one.
    pub fn local_reply(&self) -> Option<LocalReply> {
        self.st().local_reply.clone()
    }

    /// How many times the module called `send_local_response` on this stream.
    pub fn local_reply_calls(&self) -> u32 {
        self.st().local_reply_calls
    }

    /// The request header map as it stands (what the router and upstream see).
    pub fn request_headers_now(&self) -> Pairs {
        self.st().req.headers.clone()
    }
    pub fn request_header(&self, name: &str) -> Option<String> {
        header_value(&self.st().req.headers, name)
    }
    /// The response header map as it stands (what the client sees).
    pub fn response_headers_now(&self) -> Pairs {
        self.st().resp.headers.clone()
    }
    pub fn response_header(&self, name: &str) -> Option<String> {
        header_value(&self.st().resp.headers, name)
    }
    /// Request body bytes passed upstream so far.
    pub fn forwarded_request_body(&self) -> Vec<u8> {
        self.st().req.forwarded_body.clone()
    }
    /// Response body bytes passed to the client so far.
    pub fn forwarded_response_body(&self) -> Vec<u8> {
        self.st().resp.forwarded_body.clone()
    }
    /// True once the request headers went on (a callback continued, or the module resumed).
    pub fn request_forwarded(&self) -> bool {
        self.st().req.forwarded
    }
    /// `continue_stream(Request)` calls (`resume_http_request`).
    pub fn request_resumed(&self) -> u32 {
        self.st().req.resumed
    }
    pub fn response_resumed(&self) -> u32 {
        self.st().resp.resumed
    }
    /// True when the module reset the stream (`close_stream` / `reset_http_request`).
    pub fn was_reset(&self) -> bool {
        self.st().reset
    }
    /// True when request headers were modified (Envoy 0.2.1 then re-picks the route).
    pub fn route_cache_cleared(&self) -> bool {
        self.st().route_cache_cleared
    }
}

impl Vm {
    /// Comes back to a stream created earlier with [`Vm::http`].
    pub fn stream(&mut self, id: u32) -> HttpStream<'_> {
        assert!(
            self.store.data().streams.contains_key(&id),
            "no stream with context id {id}"
        );
        HttpStream { vm: self, id }
    }
}

/// Header pairs from raw (possibly non-UTF-8) values, keys lower-cased as Envoy keeps them.
fn raw_pairs(headers: &[(&str, &[u8])]) -> Pairs {
    headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_vec()))
        .collect()
}

/// Cut offsets that make chunks of `size` bytes (the last one shorter).
fn chunk_cuts(len: usize, size: usize) -> Vec<usize> {
    (1..len).filter(|i| i % size.max(1) == 0).collect()
}

/// Cuts `body` at `cuts`, marking the last chunk; an empty body is one empty last chunk.
fn split<'b>(body: &'b [u8], cuts: &[usize]) -> Vec<(&'b [u8], bool)> {
    let mut out = Vec::new();
    let mut start = 0;
    for &c in cuts {
        let c = c.min(body.len());
        if c < start {
            continue;
        }
        out.push((&body[start..c], false));
        start = c;
    }
    out.push((&body[start..], true));
    out
}

/// Sends the local reply recorded for stream `id` through the stream's own response
/// callbacks, as Envoy's `sendLocalReply` encodes it through the filter chain.
pub(crate) fn deliver_local_reply(vm: &mut Vm, id: u32) {
    let Some(reply) = vm
        .store
        .data_mut()
        .streams
        .get_mut(&id)
        .and_then(|s| s.pending_local_reply.take())
    else {
        return;
    };
    let headers = local_reply_headers(&reply);
    let in_response = vm.store.data().streams[&id].resp.headers_seen;
    {
        let s = vm.store.data_mut().streams.get_mut(&id).expect("stream");
        s.local_reply = Some(LocalReply {
            headers: headers.clone(),
            ..reply.clone()
        });
    }
    if in_response {
        // A reply sent while handling the response replaces it; the filter is not re-entered.
        return;
    }
    let n = headers.len() as i32;
    {
        let s = vm.store.data_mut().streams.get_mut(&id).expect("stream");
        s.resp.headers = headers;
        s.resp.headers_live = true;
        s.resp.headers_seen = true;
    }
    let eos = reply.body.is_empty();
    vm.call_as(
        id,
        "proxy_on_response_headers",
        &[Val::I32(id as i32), Val::I32(n), Val::I32(i32::from(eos))],
    );
    if !eos {
        let len = {
            let s = vm.store.data_mut().streams.get_mut(&id).expect("stream");
            s.resp.body = reply.body.clone();
            s.resp.body_live = true;
            s.resp.body.len() as i32
        };
        vm.call_as(
            id,
            "proxy_on_response_body",
            &[Val::I32(id as i32), Val::I32(len), Val::I32(1)],
        );
    }
    let s = vm.store.data_mut().streams.get_mut(&id).expect("stream");
    let status = header_value(&s.resp.headers, ":status")
        .and_then(|v| v.parse().ok())
        .unwrap_or(reply.status);
    let body = if eos { Vec::new() } else { s.resp.body.clone() };
    s.resp.forwarded_body = body.clone();
    s.resp.headers_live = false;
    s.resp.body_live = false;
    s.local_reply = Some(LocalReply {
        status,
        headers: s.resp.headers.clone(),
        body,
        ..reply
    });
}
