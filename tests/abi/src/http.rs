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

#[derive(Default)]
pub(crate) struct StreamState {
    pub req_headers: Pairs,
    pub req_headers_live: bool,
    pub req_headers_seen: bool,
    pub req_trailers: Pairs,
    pub req_trailers_live: bool,
    pub resp_headers: Pairs,
    pub resp_headers_live: bool,
    pub resp_headers_seen: bool,
    pub resp_trailers: Pairs,
    pub resp_trailers_live: bool,
    pub resp_trailers_seen: bool,
    pub req_body: Vec<u8>,
    pub req_body_live: bool,
    pub req_buffering: bool,
    pub resp_body: Vec<u8>,
    pub resp_body_live: bool,
    pub resp_buffering: bool,
    pub forwarded_req_body: Vec<u8>,
    pub forwarded_resp_body: Vec<u8>,
    pub request_forwarded: bool,
    pub response_forwarded: bool,
    pub stop_all_request: bool,
    pub stop_all_response: bool,
    pub held_req_body: Vec<u8>,
    pub pending_local_reply: Option<LocalReply>,
    pub local_reply: Option<LocalReply>,
    pub local_reply_calls: u32,
    pub resumed_request: u32,
    pub resumed_response: u32,
    pub reset: bool,
    pub route_cache_cleared: bool,
    pub access_log_phase: bool,
    pub finished: bool,
    pub properties: HashMap<Vec<u8>, Vec<u8>>,
}

impl StreamState {
    /// `continue_stream`: Envoy resumes the filter chain, flushing what it buffered.
    pub fn resume(&mut self, stream_type: i32) {
        match stream_type {
            0 => {
                self.resumed_request += 1;
                self.request_forwarded = true;
                self.stop_all_request = false;
                if self.req_buffering {
                    self.forwarded_req_body.append(&mut self.req_body);
                    self.req_buffering = false;
                    self.req_body_live = false;
                }
                self.forwarded_req_body.append(&mut self.held_req_body);
            }
            1 => {
                self.resumed_response += 1;
                self.response_forwarded = true;
                self.stop_all_response = false;
                if self.resp_buffering {
                    self.forwarded_resp_body.append(&mut self.resp_body);
                    self.resp_buffering = false;
                    self.resp_body_live = false;
                }
            }
            _ => {}
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
        self.request_header_pairs(wire::pairs_from(headers), end_of_stream)
    }

    /// `proxy_on_request_headers` with raw values (Envoy passes obs-text bytes 0x80-0xFF
    /// through, so a value need not be UTF-8).
    pub fn request_headers_bytes(
        &mut self,
        headers: &[(&str, &[u8])],
        end_of_stream: bool,
    ) -> Action {
        let pairs = headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_vec()))
            .collect();
        self.request_header_pairs(pairs, end_of_stream)
    }

    fn request_header_pairs(&mut self, pairs: Pairs, end_of_stream: bool) -> Action {
        if self.st().ended() {
            return Action::NotCalled;
        }
        let n = pairs.len() as i32;
        {
            let s = self.st_mut();
            s.req_headers = pairs;
            s.req_headers_live = true;
            s.req_headers_seen = true;
        }
        let id = self.id as i32;
        let a = action(self.call(
            "proxy_on_request_headers",
            &[
                Val::I32(id),
                Val::I32(n),
                Val::I32(i32::from(end_of_stream)),
            ],
        ));
        let stop = self.stop_next();
        let allow = self.vm.allow_on_headers_stop_iteration;
        let s = self.st_mut();
        if a == Action::Continue && !stop {
            s.req_headers_live = false;
            s.request_forwarded = true;
        } else if !allow || stop {
            s.stop_all_request = true;
        }
        self.vm.run_deferred_local_replies();
        a
    }

    /// `proxy_on_request_body` with one chunk. Envoy shows the module everything buffered
    /// since its last `Continue`: `body_size` is the buffered total.
    pub fn request_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Action {
        if self.st().ended() {
            return Action::NotCalled;
        }
        if self.st().stop_all_request {
            self.st_mut().held_req_body.extend_from_slice(chunk);
            return Action::NotCalled;
        }
        let size = {
            let s = self.st_mut();
            if s.req_buffering {
                s.req_body.extend_from_slice(chunk);
            } else {
                s.req_body = chunk.to_vec();
            }
            s.req_body_live = true;
            s.req_body.len() as i32
        };
        let id = self.id as i32;
        let a = action(self.call(
            "proxy_on_request_body",
            &[
                Val::I32(id),
                Val::I32(size),
                Val::I32(i32::from(end_of_stream)),
            ],
        ));
        let stop = self.stop_next();
        let s = self.st_mut();
        if a == Action::Continue && !stop {
            s.forwarded_req_body.append(&mut s.req_body);
            s.req_body_live = false;
            s.req_buffering = false;
            s.request_forwarded = true;
            s.stop_all_request = false;
        } else {
            s.req_buffering = true;
        }
        self.vm.run_deferred_local_replies();
        a
    }

    /// Sends `body` cut at `cuts` (byte offsets, ascending), the last chunk with
    /// `end_of_stream`. Returns the last callback's answer (`NotCalled` if a local reply
    /// ended the stream before the last chunk).
    pub fn request_body_split(&mut self, body: &[u8], cuts: &[usize]) -> Action {
        let mut last = Action::NotCalled;
        for (chunk, eos) in split(body, cuts) {
            last = self.request_body(chunk, eos);
        }
        last
    }

    /// Sends `body` in chunks of `size` bytes.
    pub fn request_body_chunks(&mut self, body: &[u8], size: usize) -> Action {
        let cuts: Vec<usize> = (1..body.len()).filter(|i| i % size.max(1) == 0).collect();
        self.request_body_split(body, &cuts)
    }

    /// `proxy_on_request_trailers`.
    pub fn request_trailers(&mut self, trailers: &[(&str, &str)]) -> Action {
        if self.st().ended() || self.st().stop_all_request {
            return Action::NotCalled;
        }
        let pairs = wire::pairs_from(trailers);
        let n = pairs.len() as i32;
        {
            let s = self.st_mut();
            s.req_trailers = pairs;
            s.req_trailers_live = true;
        }
        let id = self.id as i32;
        let a = action(self.call("proxy_on_request_trailers", &[Val::I32(id), Val::I32(n)]));
        if a == Action::Continue && !self.stop_next() {
            // Continuing at the trailers sends on whatever Envoy buffered before them.
            let s = self.st_mut();
            s.req_trailers_live = false;
            s.forwarded_req_body.append(&mut s.req_body);
            s.req_body_live = false;
            s.req_buffering = false;
            s.request_forwarded = true;
            s.stop_all_request = false;
        }
        self.vm.run_deferred_local_replies();
        a
    }

    /// `proxy_on_response_headers` for the upstream's response.
    pub fn response_headers(&mut self, headers: &[(&str, &str)], end_of_stream: bool) -> Action {
        self.response_header_pairs(wire::pairs_from(headers), end_of_stream)
    }

    /// `proxy_on_response_headers` with raw (possibly non-UTF-8) values.
    pub fn response_headers_bytes(
        &mut self,
        headers: &[(&str, &[u8])],
        end_of_stream: bool,
    ) -> Action {
        let pairs = headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_vec()))
            .collect();
        self.response_header_pairs(pairs, end_of_stream)
    }

    fn response_header_pairs(&mut self, pairs: Pairs, end_of_stream: bool) -> Action {
        if self.st().ended() {
            return Action::NotCalled;
        }
        let n = pairs.len() as i32;
        {
            let s = self.st_mut();
            s.resp_headers = pairs;
            s.resp_headers_live = true;
            s.resp_headers_seen = true;
        }
        let id = self.id as i32;
        let a = action(self.call(
            "proxy_on_response_headers",
            &[
                Val::I32(id),
                Val::I32(n),
                Val::I32(i32::from(end_of_stream)),
            ],
        ));
        let stop = self.stop_next();
        let allow = self.vm.allow_on_headers_stop_iteration;
        let s = self.st_mut();
        if a == Action::Continue && !stop {
            s.resp_headers_live = false;
            s.response_forwarded = true;
        } else if !allow || stop {
            s.stop_all_response = true;
        }
        self.vm.run_deferred_local_replies();
        a
    }

    /// `proxy_on_response_body` with one chunk (buffered like the request body).
    pub fn response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Action {
        if self.st().ended() || self.st().stop_all_response {
            return Action::NotCalled;
        }
        let size = {
            let s = self.st_mut();
            if s.resp_buffering {
                s.resp_body.extend_from_slice(chunk);
            } else {
                s.resp_body = chunk.to_vec();
            }
            s.resp_body_live = true;
            s.resp_body.len() as i32
        };
        let id = self.id as i32;
        let a = action(self.call(
            "proxy_on_response_body",
            &[
                Val::I32(id),
                Val::I32(size),
                Val::I32(i32::from(end_of_stream)),
            ],
        ));
        let stop = self.stop_next();
        let s = self.st_mut();
        if a == Action::Continue && !stop {
            s.forwarded_resp_body.append(&mut s.resp_body);
            s.resp_body_live = false;
            s.resp_buffering = false;
            s.response_forwarded = true;
        } else {
            s.resp_buffering = true;
        }
        self.vm.run_deferred_local_replies();
        a
    }

    /// Sends a response body cut at `cuts`, the last chunk with `end_of_stream`.
    pub fn response_body_split(&mut self, body: &[u8], cuts: &[usize]) -> Action {
        let mut last = Action::NotCalled;
        for (chunk, eos) in split(body, cuts) {
            last = self.response_body(chunk, eos);
        }
        last
    }

    /// Sends a response body in chunks of `size` bytes.
    pub fn response_body_chunks(&mut self, body: &[u8], size: usize) -> Action {
        let cuts: Vec<usize> = (1..body.len()).filter(|i| i % size.max(1) == 0).collect();
        self.response_body_split(body, &cuts)
    }

    /// `proxy_on_response_trailers`.
    pub fn response_trailers(&mut self, trailers: &[(&str, &str)]) -> Action {
        if self.st().ended() || self.st().stop_all_response {
            return Action::NotCalled;
        }
        let pairs = wire::pairs_from(trailers);
        let n = pairs.len() as i32;
        {
            let s = self.st_mut();
            s.resp_trailers = pairs;
            s.resp_trailers_live = true;
            s.resp_trailers_seen = true;
        }
        let id = self.id as i32;
        let a = action(self.call("proxy_on_response_trailers", &[Val::I32(id), Val::I32(n)]));
        if a == Action::Continue && !self.stop_next() {
            let s = self.st_mut();
            s.resp_trailers_live = false;
            s.forwarded_resp_body.append(&mut s.resp_body);
            s.resp_body_live = false;
            s.resp_buffering = false;
            s.response_forwarded = true;
            s.stop_all_response = false;
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
            s.req_headers_live = false;
            s.resp_headers_live = false;
            s.req_body_live = false;
            s.resp_body_live = false;
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
        self.st().req_headers.clone()
    }
    pub fn request_header(&self, name: &str) -> Option<String> {
        header_value(&self.st().req_headers, name)
    }
    /// The response header map as it stands (what the client sees).
    pub fn response_headers_now(&self) -> Pairs {
        self.st().resp_headers.clone()
    }
    pub fn response_header(&self, name: &str) -> Option<String> {
        header_value(&self.st().resp_headers, name)
    }
    /// Request body bytes passed upstream so far.
    pub fn forwarded_request_body(&self) -> Vec<u8> {
        self.st().forwarded_req_body.clone()
    }
    /// Response body bytes passed to the client so far.
    pub fn forwarded_response_body(&self) -> Vec<u8> {
        self.st().forwarded_resp_body.clone()
    }
    /// True once the request headers went on (a callback continued, or the module resumed).
    pub fn request_forwarded(&self) -> bool {
        self.st().request_forwarded
    }
    /// `continue_stream(Request)` calls (`resume_http_request`).
    pub fn request_resumed(&self) -> u32 {
        self.st().resumed_request
    }
    pub fn response_resumed(&self) -> u32 {
        self.st().resumed_response
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
    let in_response = vm.store.data().streams[&id].resp_headers_seen;
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
        s.resp_headers = headers;
        s.resp_headers_live = true;
        s.resp_headers_seen = true;
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
            s.resp_body = reply.body.clone();
            s.resp_body_live = true;
            s.resp_body.len() as i32
        };
        vm.call_as(
            id,
            "proxy_on_response_body",
            &[Val::I32(id as i32), Val::I32(len), Val::I32(1)],
        );
    }
    let s = vm.store.data_mut().streams.get_mut(&id).expect("stream");
    let status = header_value(&s.resp_headers, ":status")
        .and_then(|v| v.parse().ok())
        .unwrap_or(reply.status);
    let body = if eos { Vec::new() } else { s.resp_body.clone() };
    s.forwarded_resp_body = body.clone();
    s.resp_headers_live = false;
    s.resp_body_live = false;
    s.local_reply = Some(LocalReply {
        status,
        headers: s.resp_headers.clone(),
        body,
        ..reply
    });
}
