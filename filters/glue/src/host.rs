//! Every host call the filters make, straight to the proxy-wasm ABI with the status taken as a
//! plain number: a failed call is an `Err(HostError)` or `None`, never a panic. (A panic traps
//! the VM, failing every later request; the proxy-wasm Rust SDK's calls panic on statuses
//! they do not expect, which is why no filter uses the SDK.)

use std::ptr::{null, null_mut};
use std::time::Duration;

use crate::types::{BufferType, LogLevel, MapType, MetricType};
use modelgate_core::wire;

/// A host call answered with a status other than `Ok` (the ABI's number: 1 NotFound,
/// 2 BadArgument, 8 CasMismatch, 10 InternalFailure, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostError(pub u32);

/// `Status::NotFound`.
const NOT_FOUND: u32 = 1;
/// `Status::CasMismatch`.
pub const CAS_MISMATCH: HostError = HostError(8);

#[link(wasm_import_module = "env")]
extern "C" {
    #[link_name = "proxy_log"]
    fn abi_log(level: u32, data: *const u8, size: usize) -> u32;
    #[link_name = "proxy_get_current_time_nanoseconds"]
    fn abi_now(ns: *mut u64) -> u32;
    #[link_name = "proxy_set_tick_period_milliseconds"]
    fn abi_set_tick_period(ms: u32) -> u32;
    #[link_name = "proxy_get_buffer_bytes"]
    fn abi_get_buffer(
        buffer: u32,
        start: usize,
        max: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    #[link_name = "proxy_set_buffer_bytes"]
    fn abi_set_buffer(buffer: u32, start: usize, size: usize, data: *const u8, len: usize) -> u32;
    #[link_name = "proxy_get_header_map_value"]
    fn abi_get_header(
        map: u32,
        key: *const u8,
        key_len: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    #[link_name = "proxy_get_header_map_pairs"]
    fn abi_get_header_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    #[link_name = "proxy_replace_header_map_value"]
    fn abi_replace_header(
        map: u32,
        key: *const u8,
        key_len: usize,
        value: *const u8,
        value_len: usize,
    ) -> u32;
    #[link_name = "proxy_remove_header_map_value"]
    fn abi_remove_header(map: u32, key: *const u8, key_len: usize) -> u32;
    #[link_name = "proxy_get_property"]
    fn abi_get_property(
        path: *const u8,
        path_len: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    #[link_name = "proxy_get_shared_data"]
    fn abi_get_shared_data(
        key: *const u8,
        key_len: usize,
        data: *mut *mut u8,
        size: *mut usize,
        cas: *mut u32,
    ) -> u32;
    #[link_name = "proxy_set_shared_data"]
    fn abi_set_shared_data(
        key: *const u8,
        key_len: usize,
        value: *const u8,
        value_len: usize,
        cas: u32,
    ) -> u32;
    #[link_name = "proxy_send_local_response"]
    fn abi_send_local_response(
        status: u32,
        details: *const u8,
        details_len: usize,
        body: *const u8,
        body_len: usize,
        headers: *const u8,
        headers_len: usize,
        grpc_status: i32,
    ) -> u32;
    #[link_name = "proxy_define_metric"]
    fn abi_define_metric(kind: u32, name: *const u8, name_len: usize, id: *mut u32) -> u32;
    #[link_name = "proxy_increment_metric"]
    fn abi_increment_metric(id: u32, offset: i64) -> u32;
    #[link_name = "proxy_record_metric"]
    fn abi_record_metric(id: u32, value: u64) -> u32;
    #[link_name = "proxy_set_effective_context"]
    fn abi_set_effective_context(context_id: u32) -> u32;
    #[link_name = "proxy_continue_stream"]
    fn abi_continue_stream(stream_type: u32) -> u32;
    #[link_name = "proxy_http_call"]
    fn abi_http_call(
        upstream: *const u8,
        upstream_len: usize,
        headers: *const u8,
        headers_len: usize,
        body: *const u8,
        body_len: usize,
        trailers: *const u8,
        trailers_len: usize,
        timeout_ms: u32,
        token: *mut u32,
    ) -> u32;
}

fn status(s: u32) -> Result<(), HostError> {
    if s == 0 {
        Ok(())
    } else {
        Err(HostError(s))
    }
}

/// Takes ownership of a buffer the host allocated through the module's
/// `proxy_on_memory_allocate` (a Rust allocation of exactly `size` bytes).
///
/// # Safety
/// `data` must be null or such an allocation of `size` bytes, not owned by anyone else.
unsafe fn owned(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        Vec::new()
    } else {
        Vec::from_raw_parts(data, size, size)
    }
}

/// Writes a log line; a host that refuses it loses the line, nothing else.
pub fn log(level: LogLevel, message: &str) {
    // SAFETY: the host only reads `message` for the duration of the call.
    unsafe {
        abi_log(level as u32, message.as_ptr(), message.len());
    }
}

/// Wall-clock nanoseconds since the Unix epoch; 0 if the host cannot tell.
pub fn now_ns() -> u64 {
    let mut ns = 0u64;
    // SAFETY: the host writes one u64 to a valid pointer.
    let s = unsafe { abi_now(&mut ns) };
    if s == 0 {
        ns
    } else {
        0
    }
}

pub fn set_tick_period(period: Duration) -> Result<(), HostError> {
    let ms = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
    // SAFETY: plain values only.
    status(unsafe { abi_set_tick_period(ms) })
}

thread_local! {
    /// Request body bytes the running filter has already been shown (the chain module: a
    /// filter before the one that holds the body sees each byte once, as in an Envoy chain).
    static REQUEST_BODY_SEEN: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Runs `f` with the request body's first `seen` bytes hidden from [`buffer`] and
/// [`set_buffer`] (offsets start after them).
pub fn with_request_body_after<T>(seen: usize, f: impl FnOnce() -> T) -> T {
    REQUEST_BODY_SEEN.set(seen);
    let out = f();
    REQUEST_BODY_SEEN.set(0);
    out
}

/// `start` in the host's buffer.
fn host_offset(buffer: BufferType, start: usize) -> usize {
    match buffer {
        BufferType::HttpRequestBody => start.saturating_add(REQUEST_BODY_SEEN.get()),
        _ => start,
    }
}

/// Up to `max` bytes of `buffer` from `start`; `None` when absent or on any host error.
pub fn buffer(buffer: BufferType, start: usize, max: usize) -> Option<Vec<u8>> {
    let start = host_offset(buffer, start);
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: on success the host hands over an allocation of `size` bytes (see `owned`).
    unsafe {
        if abi_get_buffer(buffer as u32, start, max, &mut data, &mut size) != 0 || data.is_null() {
            return None;
        }
        Some(owned(data, size))
    }
}

/// Replaces `size` bytes of `buffer` at `start` with `value`.
pub fn set_buffer(
    buffer: BufferType,
    start: usize,
    size: usize,
    value: &[u8],
) -> Result<(), HostError> {
    let start = host_offset(buffer, start);
    // SAFETY: the host only reads `value` for the duration of the call.
    status(unsafe { abi_set_buffer(buffer as u32, start, size, value.as_ptr(), value.len()) })
}

/// The value of header `name` in `map`: `None` when absent, when the map is not available
/// in this phase, or on any other host error. Filters read through [`crate::headers`].
pub(crate) fn header(map: MapType, name: &str) -> Option<Vec<u8>> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: as in `buffer`.
    unsafe {
        if abi_get_header(map as u32, name.as_ptr(), name.len(), &mut data, &mut size) != 0 {
            return None;
        }
        Some(owned(data, size))
    }
}

/// Every header of `map`, serialised as `wire::encode_pairs` writes them (empty when the map
/// does not exist now); `None` on a host error.
pub(crate) fn header_pairs(map: MapType) -> Option<Vec<u8>> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: as in `buffer`.
    unsafe {
        if abi_get_header_pairs(map as u32, &mut data, &mut size) != 0 {
            return None;
        }
        Some(owned(data, size))
    }
}

/// Sets header `name` in `map` to `value` (replacing every value), or removes it (`None`).
/// Filters write through [`crate::headers::set`], which keeps its copy of the map current.
pub(crate) fn set_header(map: MapType, name: &str, value: Option<&[u8]>) -> Result<(), HostError> {
    // SAFETY: the host only reads the slices for the duration of the call.
    status(unsafe {
        match value {
            Some(v) => {
                abi_replace_header(map as u32, name.as_ptr(), name.len(), v.as_ptr(), v.len())
            }
            None => abi_remove_header(map as u32, name.as_ptr(), name.len()),
        }
    })
}

/// The property at `path` (`["xds", "cluster_name"]`); `None` when absent or on error.
pub fn property(path: &[&str]) -> Option<Vec<u8>> {
    let key = wire::property_key(path);
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: as in `buffer`.
    unsafe {
        if abi_get_property(key.as_ptr(), key.len(), &mut data, &mut size) != 0 || data.is_null() {
            return None;
        }
        Some(owned(data, size))
    }
}

/// The value and CAS of a shared-data key; `(None, None)` when the key does not exist.
pub fn shared_data(key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), HostError> {
    let (mut data, mut size, mut cas) = (null_mut(), 0usize, 0u32);
    // SAFETY: as in `buffer`; `cas` is a valid u32 to write.
    unsafe {
        match abi_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) {
            0 => Ok((
                (!data.is_null()).then(|| owned(data, size)),
                Some(cas).filter(|c| *c != 0),
            )),
            NOT_FOUND => Ok((None, None)),
            s => Err(HostError(s)),
        }
    }
}

/// Writes a shared-data key; with `cas`, only if nobody wrote it since that read
/// (else `Err(CAS_MISMATCH)`).
pub fn set_shared_data(key: &str, value: &[u8], cas: Option<u32>) -> Result<(), HostError> {
    // SAFETY: the host only reads the slices for the duration of the call.
    status(unsafe {
        abi_set_shared_data(
            key.as_ptr(),
            key.len(),
            value.as_ptr(),
            value.len(),
            cas.unwrap_or(0),
        )
    })
}

/// Answers the current request locally with `status`, `headers` and `body`.
pub fn send_response(
    status_code: u16,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> Result<(), HostError> {
    let headers = wire::encode_pairs(headers);
    // SAFETY: the host only reads the slices for the duration of the call.
    status(unsafe {
        abi_send_local_response(
            u32::from(status_code),
            null(),
            0,
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    })
}

pub fn define_metric(kind: MetricType, name: &str) -> Result<u32, HostError> {
    let mut id = 0u32;
    // SAFETY: the host reads `name` and writes one u32.
    status(unsafe { abi_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn increment_metric(id: u32, delta: u64) -> Result<(), HostError> {
    // SAFETY: plain values only.
    status(unsafe { abi_increment_metric(id, i64::try_from(delta).unwrap_or(i64::MAX)) })
}

/// Adds `delta` (negative to lower it) to a gauge.
pub fn add_to_metric(id: u32, delta: i64) -> Result<(), HostError> {
    // SAFETY: plain values only.
    status(unsafe { abi_increment_metric(id, delta) })
}

/// Sets a gauge or records a histogram sample.
pub fn record_metric(id: u32, value: u64) -> Result<(), HostError> {
    // SAFETY: plain values only.
    status(unsafe { abi_record_metric(id, value) })
}

/// Makes `context_id` the context of the host calls that follow (from the root context, to
/// act on a stream); `Err` when the host no longer knows it (the stream ended).
pub fn set_effective_context(context_id: u32) -> Result<(), HostError> {
    crate::headers::context_changes();
    // SAFETY: plain values only.
    status(unsafe { abi_set_effective_context(context_id) })
}

/// Resumes the request of the effective (paused) stream; Envoy defers the continuation
/// until the current VM call returns.
pub fn resume_request() -> Result<(), HostError> {
    // SAFETY: plain values only; 0 is the request stream.
    status(unsafe { abi_continue_stream(0) })
}

/// A body-less call to `cluster`; the token names its answer in `on_http_call_response`.
pub fn dispatch_http_call(
    cluster: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<u32, HostError> {
    let headers = wire::encode_pairs(headers);
    let trailers = wire::encode_pairs::<&str, &str>(&[]);
    let ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
    let mut token = 0u32;
    // SAFETY: the host reads the slices for the duration of the call and writes one u32.
    status(unsafe {
        abi_http_call(
            cluster.as_ptr(),
            cluster.len(),
            headers.as_ptr(),
            headers.len(),
            null(),
            0,
            trailers.as_ptr(),
            trailers.len(),
            ms,
            &mut token,
        )
    })?;
    Ok(token)
}
