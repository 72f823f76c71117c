//! Header reads that cannot trap: `None` when the header is absent, when the map is not
//! available in this phase (Envoy answers an error), or on any other host error; invalid
//! UTF-8 never panics. Writes go through [`crate::host::set_header`].

use proxy_wasm::types::MapType;

use crate::host;

/// The value of header `name` in `map` as bytes.
pub fn header_bytes(map: MapType, name: &str) -> Option<Vec<u8>> {
    host::header(map, name)
}

/// [`header_bytes`] as text; invalid UTF-8 is replaced with U+FFFD.
pub fn header(map: MapType, name: &str) -> Option<String> {
    let bytes = header_bytes(map, name)?;
    Some(match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}
