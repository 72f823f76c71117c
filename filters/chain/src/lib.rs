//! chain: several modelgate filters in one Wasm module, configured by `core::chain`. Envoy
//! then creates one context per request and makes one VM call per callback for all of them,
//! where separate modules cost one per filter. The filters run as in an Envoy filter chain:
//! request callbacks in order, response callbacks in reverse order, each stopping at the
//! first filter that pauses. A filter that pauses the request headers holds back the later
//! ones until it lets them go (the router, until it has read the model); a filter that holds
//! a request to resume it later (flow control) must be the last (`core::chain` checks it).

use modelgate_core::chain::ChainConfig;
use modelgate_core::config::FilterKind;
use modelgate_glue::dispatch::{Root, Stream};
use modelgate_glue::host::with_request_body_after;
use modelgate_glue::types::Action;

use endpoint_picker::{PickerHttp, PickerRoot};
use load_shedder::{ShedHttp, ShedRoot};
use ml_metrics::{MetricsHttp, MetricsRoot};
use model_router::{RouterHttp, RouterRoot};
use readiness_gate::{GateRequest, GateRoot};

modelgate_glue::export_filter!(
    ChainRoot,
    [
        request_headers,
        request_body,
        request_trailers,
        response_headers,
        response_body,
        log
    ]
);

/// Most filters in one chain: each kind once.
const MAX_STAGES: usize = 5;

// Made once per configuration; its size does not matter.
#[allow(clippy::large_enum_variant)]
enum StageRoot {
    Gate(GateRoot),
    Router(RouterRoot),
    Shed(ShedRoot),
    Metrics(MetricsRoot),
    Picker(PickerRoot),
}

// Inline: a box per filter would be an allocation per filter per request.
#[allow(clippy::large_enum_variant)]
enum StageStream {
    Gate(GateRequest),
    Router(RouterHttp),
    Shed(ShedHttp),
    Metrics(MetricsHttp),
    Picker(PickerHttp),
}

/// `$body` with `$s` bound to the stage's filter, whatever its kind.
macro_rules! each_kind {
    ($value:expr, $kind:ident, |$s:ident| $body:expr) => {
        match $value {
            $kind::Gate($s) => $body,
            $kind::Router($s) => $body,
            $kind::Shed($s) => $body,
            $kind::Metrics($s) => $body,
            $kind::Picker($s) => $body,
        }
    };
}

impl StageRoot {
    fn new(kind: FilterKind) -> Option<Self> {
        Some(match kind {
            FilterKind::ReadinessGate => Self::Gate(GateRoot::default()),
            FilterKind::ModelRouter => Self::Router(RouterRoot::default()),
            FilterKind::LoadShedder => Self::Shed(ShedRoot::default()),
            FilterKind::MlMetrics => Self::Metrics(MetricsRoot::default()),
            FilterKind::EndpointPicker => Self::Picker(PickerRoot::default()),
            FilterKind::Chain => return None,
        })
    }

    fn new_stream(&mut self, id: u32) -> Option<StageStream> {
        match self {
            Self::Gate(r) => r.new_stream(id).map(StageStream::Gate),
            Self::Router(r) => r.new_stream(id).map(StageStream::Router),
            Self::Shed(r) => r.new_stream(id).map(StageStream::Shed),
            Self::Metrics(r) => r.new_stream(id).map(StageStream::Metrics),
            Self::Picker(r) => r.new_stream(id).map(StageStream::Picker),
        }
    }
}

#[derive(Default)]
pub struct ChainRoot {
    stages: Vec<StageRoot>,
}

impl Root for ChainRoot {
    type Stream = ChainStream;

    fn on_vm_start(&mut self) -> bool {
        modelgate_glue::log_start(FilterKind::Chain);
        true
    }

    fn on_configure(&mut self, config: &[u8]) -> bool {
        // One root context, one timer: it ticks at the shortest period any filter asks for.
        modelgate_glue::share_ticks();
        let Some(chain) = modelgate_glue::configure::<ChainConfig>(config) else {
            return false;
        };
        let mut stages = Vec::with_capacity(chain.stages.len());
        for (kind, bytes) in &chain.stages {
            let Some(mut stage) = StageRoot::new(*kind) else {
                return false;
            };
            let ok = each_kind!(&mut stage, StageRoot, |r| r.on_vm_start()
                && r.on_configure(bytes));
            if !ok {
                return false;
            }
            stages.push(stage);
        }
        self.stages = stages;
        true
    }

    fn on_tick(&mut self) {
        for stage in &mut self.stages {
            each_kind!(stage, StageRoot, |r| r.on_tick());
        }
    }

    /// Each filter takes only the calls it sent (by token) and ignores the others.
    fn on_http_call_response(&mut self, token: u32, headers: usize, body: usize) {
        for stage in &mut self.stages {
            each_kind!(stage, StageRoot, |r| r
                .on_http_call_response(token, headers, body));
        }
    }

    fn new_stream(&mut self, id: u32) -> Option<ChainStream> {
        if self.stages.is_empty() {
            return None;
        }
        let mut s = ChainStream {
            stages: [None, None, None, None, None],
            len: self.stages.len().min(MAX_STAGES),
            shown: 0,
            let_through: 0,
            seen: [0; MAX_STAGES],
        };
        for (slot, stage) in s.stages.iter_mut().zip(&mut self.stages) {
            *slot = stage.new_stream(id);
        }
        Some(s)
    }
}

/// One request through the chain.
pub struct ChainStream {
    /// `None` for a filter that lets this stream pass untouched.
    stages: [Option<StageStream>; MAX_STAGES],
    len: usize,
    /// Filters shown the request headers: 0..shown.
    shown: usize,
    /// Filters whose request headers went on: 0..let_through. When `shown` is one more,
    /// filter `let_through` paused them and holds the later filters back.
    let_through: usize,
    /// Of the body Envoy holds buffered, the bytes each filter was shown.
    seen: [usize; MAX_STAGES],
}

impl ChainStream {
    fn stage(&mut self, i: usize) -> Option<&mut StageStream> {
        self.stages.get_mut(i).and_then(Option::as_mut)
    }

    /// Shows the request headers to filter `i` (the next one not shown them).
    fn show_headers(&mut self, i: usize, end_of_stream: bool) -> Action {
        self.shown = i + 1;
        let action = match self.stage(i) {
            Some(s) => each_kind!(s, StageStream, |f| f.on_request_headers(0, end_of_stream)),
            None => Action::Continue,
        };
        if action == Action::Continue {
            self.let_through = i + 1;
        }
        action
    }

    /// Shows filter `i` the buffered body: a filter before the one holding the headers only
    /// what arrived since its last call (as Envoy would), the holder all of it.
    fn show_body(&mut self, i: usize, body_size: usize, end_of_stream: bool) -> Action {
        let seen = if i < self.let_through {
            self.seen.get(i).copied().unwrap_or(0)
        } else {
            0
        };
        if let Some(v) = self.seen.get_mut(i) {
            *v = body_size;
        }
        let size = body_size.saturating_sub(seen);
        match self.stage(i) {
            Some(s) => with_request_body_after(seen, || {
                each_kind!(s, StageStream, |f| f.on_request_body(size, end_of_stream))
            }),
            None => Action::Continue,
        }
    }

    /// Runs `f` on each filter from the last to the first (Envoy's response order) until
    /// one pauses.
    fn in_response_order(&mut self, mut f: impl FnMut(&mut StageStream) -> Action) -> Action {
        for i in (0..self.len).rev() {
            if let Some(s) = self.stage(i) {
                if f(s) == Action::Pause {
                    return Action::Pause;
                }
            }
        }
        Action::Continue
    }

    /// After filter `i` took a request callback: if it was holding the headers and let them
    /// go, the next filters may run.
    fn went_on(&mut self, i: usize) {
        if i == self.let_through && self.shown == i + 1 {
            self.let_through = i + 1;
        }
    }
}

impl Stream for ChainStream {
    fn on_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        for i in self.shown..self.len {
            if self.show_headers(i, end_of_stream) == Action::Pause {
                return Action::Pause;
            }
        }
        Action::Continue
    }

    fn on_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        for i in 0..self.len {
            // A filter held back until now sees the headers first, then the body.
            if i == self.shown {
                let _ = self.show_headers(i, false);
            }
            if self.show_body(i, body_size, end_of_stream) == Action::Pause {
                return Action::Pause;
            }
            self.went_on(i);
        }
        // All of it went on: nothing stays buffered.
        self.seen = [0; MAX_STAGES];
        Action::Continue
    }

    fn on_request_trailers(&mut self, trailers: usize) -> Action {
        for i in 0..self.len {
            if i == self.shown {
                let _ = self.show_headers(i, false);
                // The body the holder kept buffered reaches this filter now.
                let buffered = self.seen.iter().copied().max().unwrap_or(0);
                if buffered > 0 && self.show_body(i, buffered, false) == Action::Pause {
                    return Action::Pause;
                }
            }
            let action = match self.stage(i) {
                Some(s) => each_kind!(s, StageStream, |f| f.on_request_trailers(trailers)),
                None => Action::Continue,
            };
            if action == Action::Pause {
                return Action::Pause;
            }
            self.went_on(i);
        }
        Action::Continue
    }

    fn on_response_headers(&mut self, headers: usize, end_of_stream: bool) -> Action {
        self.in_response_order(|s| {
            each_kind!(s, StageStream, |f| f
                .on_response_headers(headers, end_of_stream))
        })
    }

    fn on_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.in_response_order(|s| {
            each_kind!(s, StageStream, |f| f
                .on_response_body(body_size, end_of_stream))
        })
    }

    fn on_log(&mut self) {
        for i in 0..self.len {
            if let Some(s) = self.stage(i) {
                each_kind!(s, StageStream, |f| f.on_log());
            }
        }
    }
}
