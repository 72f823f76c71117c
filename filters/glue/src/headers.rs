//! Every header read and write of the filters. A single-header read costs the host a copy
//! into the VM, which is a second VM call (to allocate), so a callback that reads several
//! headers of the request or response map is cheaper served from one copy of the whole map
//! (`proxy_get_header_map_pairs`): it is fetched at the first read after a header was found
//! in a callback, and at the first read from then on in that kind of callback (a filter reads
//! the same headers on every request). Reads of absent headers stay single: they are cheap.
//! A chain's stages share the copy. Writes go to the host and into the copy, so a later
//! stage reads what an earlier one wrote; removing a header the copy shows absent is skipped. Copies are dropped as each VM callback starts
//! ([`callback_starts`]) and when the effective context changes.
//!
//! Reads cannot trap: `None` when the header is absent, when the map is not available in this
//! phase, or on any host error; invalid UTF-8 never panics.

use std::cell::RefCell;

use modelgate_core::wire;

use crate::host::{self, HostError};
use crate::types::MapType;

/// The VM callback running, for [`callback_starts`]: what a kind of callback reads is learnt.
#[derive(Clone, Copy)]
pub enum Callback {
    RequestHeaders,
    RequestBody,
    RequestTrailers,
    ResponseHeaders,
    ResponseBody,
    Log,
    /// Every root callback (context create, configure, tick, HTTP call response).
    Root,
}

/// One header map as the host handed it over, plus this callback's writes to it.
struct Snapshot {
    pairs: Vec<u8>,
    /// Written since the fetch: name and new value (`None`: removed), latest last.
    written: Vec<(String, Option<Vec<u8>>)>,
}

impl Snapshot {
    fn get(&self, name: &str) -> Option<&[u8]> {
        match self
            .written
            .iter()
            .rev()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some((_, value)) => value.as_deref(),
            None => wire::find_pair(&self.pairs, name.as_bytes()),
        }
    }
}

/// The request map (0) or the response map (1) in this callback.
#[derive(Default)]
struct Kept {
    whole: Option<Snapshot>,
    /// A single read found a header.
    found: bool,
}

#[derive(Default)]
struct Maps {
    callback: usize,
    kept: [Kept; 2],
    /// Per callback kind and map: fetch the whole map at the first read.
    whole_first: [[bool; 2]; 7],
}

thread_local! {
    static MAPS: RefCell<Maps> = RefCell::new(Maps::default());
}

/// The request and response maps are kept; other maps are read header by header.
fn slot(map: MapType) -> Option<usize> {
    match map {
        MapType::HttpRequestHeaders => Some(0),
        MapType::HttpResponseHeaders => Some(1),
        _ => None,
    }
}

fn with_maps(f: impl FnOnce(&mut Maps)) {
    let _ = MAPS.try_with(|m| {
        if let Ok(mut m) = m.try_borrow_mut() {
            f(&mut m);
        }
    });
}

/// Drops the kept maps as a VM callback starts: other filters may have changed them since.
pub fn callback_starts(callback: Callback) {
    with_maps(|m| {
        m.callback = callback as usize;
        m.kept = Default::default();
    });
}

/// Drops the kept maps when the host calls that follow act on another stream.
pub(crate) fn context_changes() {
    with_maps(|m| m.kept = Default::default());
}

impl Maps {
    /// The copy of map `i`, fetched now if this kind of callback reads the whole map or a
    /// header of it was already found; `None`: read header by header.
    fn whole(&mut self, i: usize, map: MapType) -> Option<&mut Snapshot> {
        let learnt = self.whole_first.get_mut(self.callback)?.get_mut(i)?;
        let kept = self.kept.get_mut(i)?;
        if kept.whole.is_none() && (*learnt || kept.found) {
            *learnt = true;
            // A refused fetch keeps no copy: reads and removes ask the host one by one, so a
            // header is never taken for absent (and left in place) on a host error.
            kept.whole = host::header_pairs(map).map(|pairs| Snapshot {
                pairs,
                written: Vec::new(),
            });
        }
        kept.whole.as_mut()
    }
}

/// The value of header `name` in `map` as bytes.
pub fn header_bytes(map: MapType, name: &str) -> Option<Vec<u8>> {
    let Some(i) = slot(map) else {
        return host::header(map, name);
    };
    let mut out = None;
    with_maps(|m| {
        out = match m.whole(i, map) {
            Some(whole) => whole.get(name).map(<[u8]>::to_vec),
            None => {
                let value = host::header(map, name);
                if let (Some(kept), Some(_)) = (m.kept.get_mut(i), &value) {
                    kept.found = true;
                }
                value
            }
        };
    });
    out
}

/// [`header_bytes`] as text; invalid UTF-8 is replaced with U+FFFD.
pub fn header(map: MapType, name: &str) -> Option<String> {
    let bytes = header_bytes(map, name)?;
    Some(match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// Sets header `name` in `map` to `value` (replacing every value), or removes it (`None`).
/// Removing a header the kept copy shows absent makes no host call (and so does not clear
/// Envoy's route cache).
pub fn set(map: MapType, name: &str, value: Option<&[u8]>) -> Result<(), HostError> {
    let Some(i) = slot(map) else {
        return host::set_header(map, name, value);
    };
    let mut result = None;
    with_maps(|m| {
        let whole = m.whole(i, map);
        if value.is_none() && whole.as_ref().is_some_and(|w| w.get(name).is_none()) {
            result = Some(Ok(()));
            return;
        }
        let written = host::set_header(map, name, value);
        if let (Ok(()), Some(whole)) = (written, whole) {
            whole.written.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
            whole
                .written
                .push((name.to_string(), value.map(<[u8]>::to_vec)));
        }
        result = Some(written);
    });
    result.unwrap_or_else(|| host::set_header(map, name, value))
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
