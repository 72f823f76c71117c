//! modelgate-glue: the proxy-wasm side shared by every filter — local error replies,
//! shared-data snapshots, the once-per-proxy poll lease, and the wall clock. Each
//! function maps host failures to `None`/`false` instead of panicking.

pub mod headers;
pub mod poll;
pub mod scraper;
pub mod stream;

use std::time::UNIX_EPOCH;

use modelgate_core::error::ApiError;
use modelgate_core::{lease, state};
use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

/// Wall-clock milliseconds from the host (0 if the host cannot tell).
pub fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Answers the request locally with an OpenAI-shaped error (and `Retry-After` when set).
pub fn send_error(err: &ApiError, extra_headers: &[(&str, &str)]) {
    let retry;
    let mut headers: Vec<(&str, &str)> = Vec::with_capacity(extra_headers.len() + 2);
    headers.push(("content-type", "application/json"));
    if let Some(s) = err.retry_after_s {
        retry = s.to_string();
        headers.push(("retry-after", retry.as_str()));
    }
    headers.extend_from_slice(extra_headers);
    let body = err.body();
    let _ = hostcalls::send_http_response(u32::from(err.status), headers, Some(&body));
}

/// True when this VM claimed the poll lease `purpose` for the period starting now.
pub fn claim_lease(purpose: &str, now_ms: u64, period_ms: u64) -> bool {
    let key = format!("{}{}", state::LEASE_PREFIX, purpose);
    let Ok((current, cas)) = hostcalls::get_shared_data(&key) else {
        return false;
    };
    let Some(next) = lease::claim(current.as_deref(), now_ms, period_ms) else {
        return false;
    };
    matches!(hostcalls::set_shared_data(&key, Some(&next), cas), Ok(()))
}

/// Publishes a snapshot under `key`.
pub fn publish<T: serde::Serialize>(key: &str, value: &T) -> Result<(), Status> {
    hostcalls::set_shared_data(key, Some(&state::encode(value)), None)
}

/// Reads the snapshot under `key`, `None` when absent or unreadable.
pub fn read<T: for<'de> serde::Deserialize<'de>>(key: &str) -> Option<T> {
    let (bytes, _) = hostcalls::get_shared_data(key).ok()?;
    state::decode(&bytes?)
}
