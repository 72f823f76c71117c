//! Acting on a paused HTTP stream from the root context (e.g. on a tick): switch to its
//! context, then resume it or answer it. The SDK panics on an unexpected status in both
//! calls; these map every status to `false`.
//!
//! Envoy runs one VM per worker thread, and a stream's context lives in the VM of the
//! worker that accepted it, so only that VM's root context can act on it.

use modelgate_core::error::ApiError;

#[link(wasm_import_module = "env")]
extern "C" {
    #[link_name = "proxy_set_effective_context"]
    fn set_effective_context_raw(context_id: u32) -> u32;
    #[link_name = "proxy_continue_stream"]
    fn continue_stream_raw(stream_type: u32) -> u32;
}

/// Makes `context_id` the context of the host calls that follow; false when the host
/// no longer knows it (the stream ended).
pub fn enter(context_id: u32) -> bool {
    // SAFETY: a plain ABI call with integer arguments.
    unsafe { set_effective_context_raw(context_id) == 0 }
}

/// Resumes the request of paused stream `context_id` (Envoy defers the continuation until
/// the current VM call returns).
pub fn resume_request(context_id: u32) -> bool {
    // SAFETY: a plain ABI call with integer arguments; 0 is the request stream.
    enter(context_id) && unsafe { continue_stream_raw(0) == 0 }
}

/// Answers paused stream `context_id` locally with `err`.
pub fn reply(context_id: u32, err: &ApiError, extra_headers: &[(&str, &str)]) -> bool {
    if !enter(context_id) {
        return false;
    }
    crate::send_error(err, extra_headers);
    true
}
