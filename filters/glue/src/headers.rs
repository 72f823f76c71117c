//! Header reads that cannot trap. The SDK's `get_map_value*` panic on any status but
//! `Ok`/`NotFound` (Envoy answers an error for a map the current phase does not offer) and
//! `get_map_value` also on invalid UTF-8; a panic traps the VM and fails every later request.

use std::ptr::null_mut;

use proxy_wasm::types::MapType;

#[link(wasm_import_module = "env")]
extern "C" {
    /// The ABI call behind the SDK's getters, with the status taken as a plain `u32` so an
    /// unexpected value is data, not an invalid enum.
    #[link_name = "proxy_get_header_map_value"]
    fn get_header_map_value_raw(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
}

/// The value of header `name` in `map`: `None` when absent, when the map is not available in
/// this phase, or on any other host error. Never panics.
pub fn header_bytes(map: MapType, name: &str) -> Option<Vec<u8>> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a buffer it allocated through the module's
    // `proxy_on_memory_allocate` (a Rust allocation of exactly `size` bytes) and its size;
    // we take ownership of it exactly once, as the SDK does.
    unsafe {
        let status =
            get_header_map_value_raw(map as u32, name.as_ptr(), name.len(), &mut data, &mut size);
        if status != 0 {
            return None;
        }
        if data.is_null() {
            return Some(Vec::new());
        }
        Some(Vec::from_raw_parts(data, size, size))
    }
}

/// [`header_bytes`] as text; invalid UTF-8 is replaced with U+FFFD.
pub fn header(map: MapType, name: &str) -> Option<String> {
    let bytes = header_bytes(map, name)?;
    Some(match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}
