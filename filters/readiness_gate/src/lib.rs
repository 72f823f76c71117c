//! readiness_gate filter: proxy-wasm glue only; the policy lives in
//! `modelgate_core::readiness`. The root context polls (lease holder only), publishes the
//! snapshot and keeps this VM's [`GateState`]; each request's headers callback reads that
//! state and answers the probe path or a not-ready 503 itself.

use std::cell::RefCell;
use std::rc::Rc;

use modelgate_core::config::FilterKind;
use modelgate_core::readiness::{
    self, Check, GateState, Outcome, PathAction, ReadinessConfig, Round, LEASE_PURPOSE,
    MAX_BODY_BYTES,
};
use modelgate_core::state::ReadinessSnapshot;
use modelgate_core::vocab::{GATED_HEADER, READINESS_KEY};
use modelgate_glue::dispatch::{Root, Stream};
use modelgate_glue::headers::header_bytes;
use modelgate_glue::log;
use modelgate_glue::poll::{CallResponse, InFlight, SnapshotReader};
use modelgate_glue::types::{Action, LogLevel, MapType};

// Only the request's `:path` decides: no other stream callback.
#[cfg(feature = "export")]
modelgate_glue::export_filter!(GateRoot, [request_headers]);

/// Configured state of one VM's root context.
struct Active {
    config: Rc<ReadinessConfig>,
    /// This VM's view, shared with its streams.
    gate: Rc<RefCell<GateState>>,
    calls: InFlight<Check>,
    round: Round,
    health_sent_ms: u64,
    snapshot: SnapshotReader<ReadinessSnapshot>,
}

#[derive(Default)]
pub struct GateRoot {
    active: Option<Active>,
}

impl Root for GateRoot {
    type Stream = GateRequest;

    fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let Some(check) = a.calls.take(token) else {
            return;
        };
        let resp = CallResponse::read(num_headers, body_size, MAX_BODY_BYTES);
        let now = modelgate_glue::now_ms();
        let outcome = match check {
            Check::Health => {
                a.round
                    .set_health_latency(now.saturating_sub(a.health_sent_ms));
                readiness::judge_health(resp.status)
            }
            Check::Models => readiness::judge_models(resp.status, &resp.body, &a.config.model),
            Check::Loader => readiness::judge_loader(resp.status, &resp.body),
        };
        a.round.record(check, outcome);
        if a.calls.is_idle() {
            a.finish_round(now);
        }
    }

    fn on_vm_start(&mut self) -> bool {
        modelgate_glue::log_start(FilterKind::ReadinessGate);
        true
    }

    fn on_configure(&mut self, config: &[u8]) -> bool {
        let Some(config) = modelgate_glue::configure::<ReadinessConfig>(config).map(Rc::new) else {
            return false;
        };
        if !modelgate_glue::start_ticks(FilterKind::ReadinessGate, config.tick_ms()) {
            return false;
        }
        let gate = GateState::new(readiness::verdict(None, 0, config.max_age_ms), &config);
        self.active = Some(Active {
            gate: Rc::new(RefCell::new(gate)),
            calls: InFlight::default(),
            round: Round::new(config.loader.is_some()),
            health_sent_ms: 0,
            snapshot: SnapshotReader::new(READINESS_KEY),
            config,
        });
        true
    }

    fn on_tick(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let now = modelgate_glue::now_ms();
        let period = a.config.period_ms;
        // The host answers every call by its timeout; this only guards against a host
        // that loses one, which would otherwise stop this VM polling for good.
        if !a.calls.is_idle() && a.calls.elapsed_ms(now) > period.saturating_mul(2) {
            a.calls.abandon();
        }
        if a.calls.is_idle() && modelgate_glue::claim_lease(LEASE_PURPOSE, now, period) {
            a.start_round(now);
        }
        a.refresh_gate(now);
    }

    /// Unconfigured, every request passes.
    fn new_stream(&mut self, _context_id: u32) -> Option<GateRequest> {
        let a = self.active.as_ref()?;
        Some(GateRequest {
            config: a.config.clone(),
            gate: a.gate.clone(),
        })
    }
}

impl Active {
    fn start_round(&mut self, now: u64) {
        self.round = Round::new(self.config.loader.is_some());
        self.health_sent_ms = now;
        let timeout = self.config.timeout_ms;
        let targets = [
            (Check::Health, Some(&self.config.health)),
            (Check::Models, Some(&self.config.models)),
            (Check::Loader, self.config.loader.as_ref()),
        ];
        for (check, upstream) in targets {
            let Some(up) = upstream else { continue };
            if let Err(status) = self.calls.dispatch(check, up, timeout, now) {
                let reason = format!(
                    "{}: cannot call cluster `{}` ({status:?})",
                    check.name(),
                    up.cluster
                );
                self.round.record(check, Outcome::NotReady(reason));
            }
        }
        if self.calls.is_idle() {
            self.finish_round(now);
        }
    }

    /// Publishes the round's verdict; the transition is logged here, by the one VM that
    /// publishes it, so each change appears once per proxy.
    fn finish_round(&mut self, now: u64) {
        let prev: Option<ReadinessSnapshot> = modelgate_glue::read(READINESS_KEY);
        let seq = prev.as_ref().map_or(0, |p| p.seq).wrapping_add(1);
        let next = self.round.snapshot(&self.config.model, now, seq);
        if let Some(msg) = readiness::transition_message(prev.as_ref(), &next) {
            log(LogLevel::Info, &msg);
        }
        if let Err(status) = modelgate_glue::publish(READINESS_KEY, &next) {
            log(
                LogLevel::Warn,
                &format!("cannot publish the readiness snapshot: {status:?}"),
            );
        }
        self.refresh_gate(now);
    }

    /// Re-reads the shared snapshot and rebuilds this VM's gate state when the verdict
    /// (including staleness) changed.
    fn refresh_gate(&mut self, now: u64) {
        self.snapshot.refresh();
        let verdict = readiness::verdict(self.snapshot.get(), now, self.config.max_age_ms);
        if verdict == self.gate.borrow().verdict {
            return;
        }
        if verdict.stale {
            log(LogLevel::Warn, &verdict.reason);
        }
        let state = GateState::new(verdict, &self.config);
        *self.gate.borrow_mut() = state;
    }
}

pub struct GateRequest {
    config: Rc<ReadinessConfig>,
    gate: Rc<RefCell<GateState>>,
}

impl Stream for GateRequest {
    fn on_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(path) = header_bytes(MapType::HttpRequestHeaders, ":path") else {
            return Action::Continue;
        };
        match self.config.classify(&path) {
            PathAction::Pass => Action::Continue,
            PathAction::Probe => {
                let g = self.gate.borrow();
                let headers: [(&str, &[u8]); 2] = [
                    ("content-type", b"application/json"),
                    ("cache-control", b"no-store"),
                ];
                modelgate_glue::reply(g.probe_status, &headers, &g.probe_body)
            }
            PathAction::Gate => {
                let g = self.gate.borrow();
                match &g.rejection {
                    None => Action::Continue,
                    Some(err) => modelgate_glue::send_error(err, &[(GATED_HEADER, g.gated_reason)]),
                }
            }
        }
    }

    /// The request headers are its only callback.
    fn done(&self) -> bool {
        true
    }
}
