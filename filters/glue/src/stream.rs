//! Acting on a paused HTTP stream from the root context (e.g. on a tick): switch to its
//! context, then resume it or answer it. Each maps a host failure to `false`.
//!
//! Envoy runs one VM per worker thread, and a stream's context lives in the VM of the
//! worker that accepted it, so only that VM's root context can act on it.

use crate::types::Action;
use modelgate_core::error::ApiError;

use crate::host;

/// Makes `context_id` the context of the host calls that follow; false when the host
/// no longer knows it (the stream ended).
pub fn enter(context_id: u32) -> bool {
    host::set_effective_context(context_id).is_ok()
}

/// Resumes the request of paused stream `context_id`.
pub fn resume_request(context_id: u32) -> bool {
    enter(context_id) && host::resume_request().is_ok()
}

/// Answers paused stream `context_id` locally with `err`; false when the stream is gone or
/// the host refused the reply.
pub fn reply(context_id: u32, err: &ApiError, extra_headers: &[(&str, &str)]) -> bool {
    enter(context_id) && crate::send_error(err, extra_headers) == Action::Pause
}

/// The body and trailers callbacks of a held request: they wait with its headers (Envoy
/// would pass the headers on with the first body chunk let through).
pub fn hold_while(held: bool) -> Action {
    if held {
        Action::Pause
    } else {
        Action::Continue
    }
}
