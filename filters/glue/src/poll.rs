//! Polling an upstream from the root context, once per period for the whole proxy, and
//! caching a shared snapshot per VM. The pattern, for a filter's root context:
//!
//! - `on_configure`: `host::set_tick_period(..)`, a fraction of the period so readers
//!   pick up new snapshots quickly (the lease still allows one round per period).
//! - `on_tick`: `if calls.is_idle() && claim_lease(purpose, now, period) { calls.dispatch(..) }`
//!   for each target; then `reader.refresh()` and, when it changed, recompute the value
//!   HTTP contexts read from their `Rc<RefCell<..>>` (no host call per request).
//! - `on_http_call_response`: `calls.take(token)` names the call; `CallResponse::read`
//!   gives its status and body; when `calls.is_idle()` the round is over: publish.

use std::time::Duration;

use crate::types::{BufferType, MapType};
use modelgate_core::config::Upstream;

use crate::host::{self, HostError};

/// The calls of the current poll round still in flight, by host token.
#[derive(Debug)]
pub struct InFlight<K> {
    calls: Vec<(u32, K)>,
    started_ms: u64,
}

impl<K> Default for InFlight<K> {
    fn default() -> Self {
        Self {
            calls: Vec::new(),
            started_ms: 0,
        }
    }
}

impl<K: Copy> InFlight<K> {
    /// True when no call is outstanding (the host answers every dispatched call, with a
    /// failure at the latest when its timeout fires).
    pub fn is_idle(&self) -> bool {
        self.calls.is_empty()
    }

    /// Ms since the first call of the round was dispatched.
    pub fn elapsed_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.started_ms)
    }

    /// Forgets every outstanding call (a round the host never finished).
    pub fn abandon(&mut self) {
        self.calls.clear();
    }

    /// `GET upstream.path` on `upstream.cluster`; remembers the call as `key`.
    pub fn dispatch(
        &mut self,
        key: K,
        upstream: &Upstream,
        timeout_ms: u64,
        now_ms: u64,
    ) -> Result<(), HostError> {
        let headers = [
            (":method", "GET"),
            (":path", upstream.path.as_str()),
            (":authority", upstream.authority.as_str()),
            (":scheme", "http"),
            ("accept", "application/json"),
        ];
        let token = host::dispatch_http_call(
            &upstream.cluster,
            &headers,
            Duration::from_millis(timeout_ms),
        )?;
        if self.calls.is_empty() {
            self.started_ms = now_ms;
        }
        self.calls.push((token, key));
        Ok(())
    }

    /// The key of the answered call `token`, removing it; `None` for a foreign token.
    pub fn take(&mut self, token: u32) -> Option<K> {
        let i = self.calls.iter().position(|(t, _)| *t == token)?;
        Some(self.calls.swap_remove(i).1)
    }
}

/// The answer to a dispatched call, as seen in `on_http_call_response`.
#[derive(Debug, Clone, Default)]
pub struct CallResponse {
    /// `:status`; `None` when the call failed (timeout, reset, unknown cluster).
    pub status: Option<u16>,
    pub body: Vec<u8>,
}

impl CallResponse {
    /// Reads the response of the call being answered, at most `max_body` bytes of body.
    /// `num_headers` is the host's count: 0 means the call failed with no response (a reset),
    /// and then the header map does not exist — reading it would trap the VM.
    pub fn read(num_headers: usize, body_size: usize, max_body: usize) -> Self {
        if num_headers == 0 {
            return Self::default();
        }
        let status = host::header(MapType::HttpCallResponseHeaders, ":status")
            .and_then(|s| std::str::from_utf8(&s).ok()?.parse().ok());
        let body = if body_size == 0 {
            Vec::new()
        } else {
            host::buffer(BufferType::HttpCallResponseBody, 0, body_size.min(max_body))
                .unwrap_or_default()
        };
        Self { status, body }
    }
}

/// A VM's copy of the snapshot under a shared-data key, decoded again only when the
/// host's CAS says another VM wrote it.
#[derive(Debug)]
pub struct SnapshotReader<T> {
    key: &'static str,
    cas: Option<u32>,
    value: Option<T>,
}

impl<T: for<'de> serde::Deserialize<'de>> SnapshotReader<T> {
    pub fn new(key: &'static str) -> Self {
        Self {
            key,
            cas: None,
            value: None,
        }
    }

    /// Reads the key (one host call); true when the snapshot changed since last time.
    pub fn refresh(&mut self) -> bool {
        let Ok((bytes, cas)) = host::shared_data(self.key) else {
            return false;
        };
        if cas.is_some() && cas == self.cas {
            return false;
        }
        self.cas = cas;
        self.value = bytes.and_then(|b| modelgate_core::state::decode(&b));
        true
    }

    /// The snapshot as of the last [`refresh`](Self::refresh).
    pub fn get(&self) -> Option<&T> {
        self.value.as_ref()
    }
}
