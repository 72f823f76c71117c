//! The no-op filter of the proxy benchmark with only the exports Envoy needs and one stream
//! callback: the host skips every callback a module does not export.

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    Box::into_raw(vec![0u8; size].into_boxed_slice()).cast()
}

/// 0: Continue.
#[no_mangle]
pub extern "C" fn proxy_on_request_headers(_context_id: u32, _headers: usize, _eos: u32) -> u32 {
    0
}
