//! modelgate-glue: the proxy-wasm side shared by every filter — the ABI's exports and
//! per-stream state ([`dispatch`], [`export_filter!`]), the host calls that cannot
//! panic ([`host`]), configuration at `on_configure` ([`configure`]), the start-up log line
//! ([`log_start`]), local error replies, shared-data snapshots, the once-per-proxy poll lease,
//! and the wall clock. Each function maps host failures to `None`/`false`/`Err` instead of
//! panicking.

pub mod dispatch;
pub mod headers;
pub mod host;
pub mod poll;
pub mod scraper;
pub mod stats;
pub mod stream;
pub mod types;

use crate::types::{Action, LogLevel};
use modelgate_core::config::{FilterConfig, FilterKind};
use modelgate_core::error::ApiError;
use modelgate_core::{lease, state, vocab};

pub use host::HostError;

/// The workspace version the filters were built from.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git revision the filters were built from (`unknown` outside a git checkout); set by
/// `build.rs`, or by `MODELGATE_REVISION` at build time.
pub const REVISION: &str = env!("MODELGATE_REVISION");

/// The one log call of the filters (Envoy prefixes the plugin name and vm_id).
pub fn log(level: LogLevel, message: &str) {
    host::log(level, message);
}

/// Logs the filter's name, version and revision; call once, from `on_vm_start`.
pub fn log_start(filter: FilterKind) {
    log(
        LogLevel::Info,
        &format!("{} {VERSION} (revision {REVISION}) started", filter.name()),
    );
}

/// Parses and validates a plugin configuration in `on_configure`. On a bad configuration,
/// logs the error, which names the field, and returns `None`: the filter then returns
/// `false` and Envoy rejects the configuration.
pub fn configure<C: FilterConfig>(config: &[u8]) -> Option<C> {
    match C::parse(config) {
        Ok(c) => Some(c),
        Err(e) => {
            log(LogLevel::Error, &format!("{}: {e}", C::KIND.name()));
            None
        }
    }
}

thread_local! {
    /// `Some(shortest period asked)` once [`share_ticks`] was called: several filters then
    /// share one root context, whose single timer must tick for the fastest of them.
    static SHARED_TICKS: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Makes this VM's roots tick at the shortest period any of its filters asks for (the chain
/// module: one root context runs several filters, whose ticks are all time-based).
pub fn share_ticks() {
    SHARED_TICKS.with(|t| {
        if t.get().is_none() {
            t.set(Some(u64::MAX));
        }
    });
}

/// Sets the root context's tick period (the shortest asked so far, after [`share_ticks`]).
pub fn tick_every(period_ms: u64) -> bool {
    let ms = SHARED_TICKS.with(|t| match t.get() {
        Some(shortest) => {
            let ms = shortest.min(period_ms);
            t.set(Some(ms));
            ms
        }
        None => period_ms,
    });
    host::set_tick_period(std::time::Duration::from_millis(ms)).is_ok()
}

/// Sets the tick period from `on_configure`; when the host refuses, logs it and returns
/// `false` (the filter then rejects the configuration).
pub fn start_ticks(filter: FilterKind, period_ms: u64) -> bool {
    let ok = tick_every(period_ms);
    if !ok {
        log(
            LogLevel::Error,
            &format!("{}: cannot set the tick period", filter.name()),
        );
    }
    ok
}

/// Wall-clock milliseconds from the host (0 if the host cannot tell).
pub fn now_ms() -> u64 {
    host::now_ns() / 1_000_000
}

/// Answers the request locally and returns what the callback must return: `Pause` once
/// answered; `Continue` when the host refused the reply, so that the request goes on
/// rather than hang with no answer.
pub fn reply(status: u16, headers: &[(&str, &[u8])], body: &[u8]) -> Action {
    match host::send_response(status, headers, body) {
        Ok(()) => Action::Pause,
        Err(e) => {
            log(
                LogLevel::Warn,
                &format!("cannot send the {status} reply ({e:?}); the request goes on"),
            );
            Action::Continue
        }
    }
}

/// [`reply`] with an OpenAI-shaped error (and `Retry-After` when set).
pub fn send_error(err: &ApiError, extra_headers: &[(&str, &str)]) -> Action {
    let retry;
    let mut headers: Vec<(&str, &[u8])> = Vec::with_capacity(extra_headers.len() + 2);
    headers.push(("content-type", b"application/json"));
    if let Some(s) = err.retry_after_s {
        retry = s.to_string();
        headers.push(("retry-after", retry.as_bytes()));
    }
    headers.extend(extra_headers.iter().map(|(k, v)| (*k, v.as_bytes())));
    reply(err.status, &headers, &err.body())
}

/// True when this VM claimed the poll lease `purpose` for the period starting now.
pub fn claim_lease(purpose: &str, now_ms: u64, period_ms: u64) -> bool {
    let key = format!("{}{}", vocab::LEASE_PREFIX, purpose);
    let Ok((current, cas)) = host::shared_data(&key) else {
        return false;
    };
    let Some(next) = lease::claim(current.as_deref(), now_ms, period_ms) else {
        return false;
    };
    host::set_shared_data(&key, &next, cas).is_ok()
}

/// Publishes a snapshot under `key`.
pub fn publish<T: serde::Serialize>(key: &str, value: &T) -> Result<(), HostError> {
    host::set_shared_data(key, &state::encode(value), None)
}

/// Reads the snapshot under `key`, `None` when absent or unreadable.
pub fn read<T: for<'de> serde::Deserialize<'de>>(key: &str) -> Option<T> {
    let (bytes, _) = host::shared_data(key).ok()?;
    state::decode(&bytes?)
}
