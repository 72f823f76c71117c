//! Header reads that cannot trap: `None` when the header is absent, when the map is not
//! available in this phase (Envoy answers an error), or on any other host error; invalid
//! UTF-8 never panics. Writes go through [`crate::host::set_header`].

use crate::types::MapType;

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

/// Flow control's view of the request being held: its tenant (`flow::tenant_of` the
/// value of `tenant_header`) and its declared size (`content-length`, 0 when absent).
pub fn flow_tenant_and_bytes(tenant_header: &str) -> (String, u64) {
    let raw = header_bytes(MapType::HttpRequestHeaders, tenant_header);
    let tenant =
        modelgate_core::flow::tenant_of(raw.as_deref().and_then(|b| std::str::from_utf8(b).ok()));
    (tenant.to_string(), request_content_length().unwrap_or(0))
}

/// The request's declared body size (`content-length`); `None` when absent or not a number.
pub fn request_content_length() -> Option<u64> {
    header_bytes(MapType::HttpRequestHeaders, "content-length")
        .and_then(|b| std::str::from_utf8(&b).ok()?.trim().parse::<u64>().ok())
}
