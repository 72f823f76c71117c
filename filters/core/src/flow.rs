//! Flow control: where a request the load shedder cannot admit yet waits (paused in
//! the proxy) instead of being refused at once. Bands by criticality (standard before
//! sheddable; critical is never held), round robin across tenants within a band, first
//! come first served within a tenant; bounded in requests and bytes per band, per tenant
//! and in total; a TTL per band. One [`FlowQueue`] per worker VM (a paused stream can
//! only be resumed by its own VM); [`Room`] says how many may go now.

use std::collections::VecDeque;

use serde::Deserialize;

use crate::config::{ms_or, ConfigError, DurationMs};
use crate::vocab::{Criticality, TENANT_HEADER};

/// Tenant of requests without the header.
pub const NO_TENANT: &str = "none";
/// Tenant names are cut to this many bytes (they key a map and may label a stat).
pub const MAX_TENANT_BYTES: usize = 64;

/// Bands in release order: standard first, then sheddable.
const BANDS: [Criticality; 2] = [Criticality::Standard, Criticality::Sheddable];

/// Bounds of one band.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BandConfig {
    pub ttl_ms: u64,
    pub max_requests: u32,
    pub max_bytes: u64,
}

/// The validated `flow` block.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowConfig {
    /// The model server's batch size: requests it runs at once.
    pub max_running: u32,
    /// Requests allowed to wait in the model server's own queue.
    pub target_queue: u32,
    pub tenant_header: String,
    /// Indexed like [`BANDS`]: standard, sheddable.
    pub bands: [BandConfig; 2],
    pub max_requests: u32,
    pub max_bytes: u64,
    pub tenant_max_requests: u32,
    pub tenant_max_bytes: u64,
    /// Distinct tenant label values on the stats before `other`.
    pub max_tenant_labels: usize,
    /// Tick period while requests are held (release latency when another worker frees
    /// a slot).
    pub tick_ms: u64,
}

#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct FlowJson {
    pub enabled: Option<bool>,
    pub max_running: Option<u32>,
    pub target_queue: Option<u32>,
    pub tenant_header: Option<String>,
    pub standard: Option<BandJson>,
    pub sheddable: Option<BandJson>,
    pub max_requests: Option<u32>,
    pub max_bytes: Option<u64>,
    pub tenant_max_requests: Option<u32>,
    pub tenant_max_bytes: Option<u64>,
    pub max_tenant_labels: Option<usize>,
    pub tick: Option<DurationMs>,
}

#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct BandJson {
    pub ttl: Option<DurationMs>,
    pub max_requests: Option<u32>,
    pub max_bytes: Option<u64>,
}

impl FlowConfig {
    /// `None` when the block is absent or `enabled: false`.
    pub fn validate(raw: Option<&FlowJson>) -> Result<Option<Self>, ConfigError> {
        let Some(raw) = raw else { return Ok(None) };
        if raw.enabled == Some(false) {
            return Ok(None);
        }
        let max_running = raw.max_running.unwrap_or(4);
        if max_running == 0 {
            return Err(ConfigError::new("flow.max_running", "must be positive"));
        }
        let max_requests = positive(raw.max_requests, 1024, "flow.max_requests")?;
        let max_bytes = positive_u64(raw.max_bytes, 64 << 20, "flow.max_bytes")?;
        let band = |b: Option<&BandJson>, name: &str, ttl_ms: u64| -> Result<_, ConfigError> {
            let ttl_ms = ms_or(b.and_then(|b| b.ttl), ttl_ms);
            if !(1..=600_000).contains(&ttl_ms) {
                return Err(ConfigError::new(
                    format!("flow.{name}.ttl"),
                    "must be between 1ms and 10m",
                ));
            }
            Ok(BandConfig {
                ttl_ms,
                max_requests: positive(
                    b.and_then(|b| b.max_requests),
                    max_requests,
                    &format!("flow.{name}.max_requests"),
                )?,
                max_bytes: positive_u64(
                    b.and_then(|b| b.max_bytes),
                    max_bytes,
                    &format!("flow.{name}.max_bytes"),
                )?,
            })
        };
        let standard = band(raw.standard.as_ref(), "standard", 30_000)?;
        let sheddable = band(raw.sheddable.as_ref(), "sheddable", 10_000)?;
        let tenant_header = raw
            .tenant_header
            .clone()
            .unwrap_or_else(|| TENANT_HEADER.to_string());
        if tenant_header.is_empty()
            || !tenant_header
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(ConfigError::new(
                "flow.tenant_header",
                "must be a lower-case header name",
            ));
        }
        let tick_ms = ms_or(raw.tick, 20);
        if !(5..=1000).contains(&tick_ms) {
            return Err(ConfigError::new("flow.tick", "must be between 5ms and 1s"));
        }
        let max_tenant_labels = raw.max_tenant_labels.unwrap_or(16);
        if max_tenant_labels > 256 {
            return Err(ConfigError::new(
                "flow.max_tenant_labels",
                "must be at most 256",
            ));
        }
        Ok(Some(Self {
            max_running,
            target_queue: raw.target_queue.unwrap_or(0),
            tenant_header,
            bands: [standard, sheddable],
            max_requests,
            max_bytes,
            tenant_max_requests: positive(
                raw.tenant_max_requests,
                max_requests,
                "flow.tenant_max_requests",
            )?,
            tenant_max_bytes: positive_u64(
                raw.tenant_max_bytes,
                max_bytes,
                "flow.tenant_max_bytes",
            )?,
            max_tenant_labels,
            tick_ms,
        }))
    }

    /// Requests the proxy lets reach the server at once: a full batch plus the target
    /// queue.
    pub fn capacity(&self) -> u32 {
        self.max_running.saturating_add(self.target_queue)
    }

    /// The bounds of `class`'s band; `None` for critical (never held).
    pub fn band(&self, class: Criticality) -> Option<&BandConfig> {
        band_index(class).and_then(|i| self.bands.get(i))
    }
}

fn positive(v: Option<u32>, default: u32, field: &str) -> Result<u32, ConfigError> {
    match v {
        Some(0) => Err(ConfigError::new(field, "must be positive")),
        Some(n) => Ok(n),
        None => Ok(default),
    }
}

fn positive_u64(v: Option<u64>, default: u64, field: &str) -> Result<u64, ConfigError> {
    match v {
        Some(0) => Err(ConfigError::new(field, "must be positive")),
        Some(n) => Ok(n),
        None => Ok(default),
    }
}

fn band_index(class: Criticality) -> Option<usize> {
    BANDS.iter().position(|b| *b == class)
}

/// How many held requests may go now, from the proxy's own count and the scrape.
pub fn room(cfg: &FlowConfig, in_flight: u32, scraped_waiting: Option<f64>) -> u32 {
    // The scrape sees traffic that bypassed the proxy (and critical requests).
    if scraped_waiting.is_some_and(|w| w > f64::from(cfg.target_queue)) {
        return 0;
    }
    cfg.capacity().saturating_sub(in_flight)
}

/// The tenant key of a request: the header value cut to [`MAX_TENANT_BYTES`] on a
/// character boundary, or [`NO_TENANT`].
pub fn tenant_of(header: Option<&str>) -> &str {
    match header.map(str::trim) {
        None | Some("") => NO_TENANT,
        Some(t) => {
            let mut end = t.len().min(MAX_TENANT_BYTES);
            while !t.is_char_boundary(end) {
                end -= 1;
            }
            t.get(..end).unwrap_or(NO_TENANT)
        }
    }
}

/// Why a request could not be held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    Band,
    Tenant,
    Total,
}

/// The outcome of [`FlowQueue::push`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Push {
    Held,
    /// Held, after refusing the newest request of a lower band to make room.
    HeldEvicting(Entry),
    Refused(Full),
}

/// One held request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The HTTP context id (what the glue resumes).
    pub id: u32,
    pub class: Criticality,
    pub tenant: String,
    pub bytes: u64,
    pub since_ms: u64,
}

#[derive(Debug, Default)]
struct TenantQueue {
    name: String,
    items: VecDeque<Entry>,
    bytes: u64,
}

#[derive(Debug, Default)]
struct Band {
    /// Tenants with held requests, in round-robin order (the front goes next).
    tenants: VecDeque<TenantQueue>,
    requests: u32,
    bytes: u64,
}

impl Band {
    fn tenant(&self, name: &str) -> Option<&TenantQueue> {
        self.tenants.iter().find(|t| t.name == name)
    }
}

/// The held requests of one worker VM.
#[derive(Debug, Default)]
pub struct FlowQueue {
    bands: [Band; 2],
}

impl FlowQueue {
    pub fn len(&self) -> u32 {
        self.bands.iter().map(|b| b.requests).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Held requests of `class`'s band.
    pub fn band_len(&self, class: Criticality) -> u32 {
        band_index(class)
            .and_then(|i| self.bands.get(i))
            .map_or(0, |b| b.requests)
    }

    /// True when a request of `class` must queue behind held ones (its band or a higher
    /// one is not empty), so arrivals cannot overtake the queue.
    pub fn has_ahead(&self, class: Criticality) -> bool {
        match band_index(class) {
            Some(i) => self.bands.iter().take(i + 1).any(|b| b.requests > 0),
            None => false,
        }
    }

    /// The band of the request [`FlowQueue::pop`] would release.
    pub fn peek_class(&self) -> Option<Criticality> {
        BANDS
            .iter()
            .zip(self.bands.iter())
            .find(|(_, b)| b.requests > 0)
            .map(|(c, _)| *c)
    }

    /// Held requests per (band, tenant), for the stats.
    pub fn tenants(&self) -> impl Iterator<Item = (Criticality, &str, u32)> {
        BANDS.iter().zip(self.bands.iter()).flat_map(|(c, b)| {
            b.tenants
                .iter()
                .map(move |t| (*c, t.name.as_str(), t.items.len() as u32))
        })
    }

    /// Holds `entry` if the bounds allow. When only the total bound is hit, the newest
    /// request of the lowest non-empty band below the entry's is refused instead.
    pub fn push(&mut self, cfg: &FlowConfig, entry: Entry) -> Push {
        let Some(bi) = band_index(entry.class) else {
            return Push::Refused(Full::Band);
        };
        let (Some(bc), Some(band)) = (cfg.bands.get(bi), self.bands.get(bi)) else {
            return Push::Refused(Full::Band);
        };
        if band.requests >= bc.max_requests || band.bytes.saturating_add(entry.bytes) > bc.max_bytes
        {
            return Push::Refused(Full::Band);
        }
        if let Some(t) = band.tenant(&entry.tenant) {
            if t.items.len() as u64 >= u64::from(cfg.tenant_max_requests)
                || t.bytes.saturating_add(entry.bytes) > cfg.tenant_max_bytes
            {
                return Push::Refused(Full::Tenant);
            }
        } else if entry.bytes > cfg.tenant_max_bytes {
            return Push::Refused(Full::Tenant);
        }
        let mut evicted = None;
        if self.total_full(cfg, entry.bytes) {
            evicted = self.evict_below(bi);
            if evicted.is_none() || self.total_full(cfg, entry.bytes) {
                // Nothing gained: the evicted one goes back (newest of its tenant).
                if let Some(e) = evicted.take() {
                    self.insert(bi_of(&e), e);
                }
                return Push::Refused(Full::Total);
            }
        }
        self.insert(bi, entry);
        match evicted {
            Some(e) => Push::HeldEvicting(e),
            None => Push::Held,
        }
    }

    fn total_full(&self, cfg: &FlowConfig, more_bytes: u64) -> bool {
        let bytes: u64 = self.bands.iter().map(|b| b.bytes).sum();
        self.len() >= cfg.max_requests || bytes.saturating_add(more_bytes) > cfg.max_bytes
    }

    fn insert(&mut self, bi: usize, entry: Entry) {
        let Some(band) = self.bands.get_mut(bi) else {
            return;
        };
        band.requests = band.requests.saturating_add(1);
        band.bytes = band.bytes.saturating_add(entry.bytes);
        let pos = band.tenants.iter().position(|t| t.name == entry.tenant);
        let t = match pos.and_then(|p| band.tenants.get_mut(p)) {
            Some(t) => t,
            None => {
                band.tenants.push_back(TenantQueue {
                    name: entry.tenant.clone(),
                    ..Default::default()
                });
                match band.tenants.back_mut() {
                    Some(t) => t,
                    None => return,
                }
            }
        };
        t.bytes = t.bytes.saturating_add(entry.bytes);
        t.items.push_back(entry);
    }

    /// Takes the newest request of the lowest non-empty band below band `bi`.
    fn evict_below(&mut self, bi: usize) -> Option<Entry> {
        let band = self
            .bands
            .iter_mut()
            .enumerate()
            .rev()
            .find(|(i, b)| *i > bi && b.requests > 0)?
            .1;
        // The tenant with the most held requests loses its newest one.
        let ti = band
            .tenants
            .iter()
            .enumerate()
            .max_by_key(|(_, t)| t.items.len())?
            .0;
        let t = band.tenants.get_mut(ti)?;
        let e = t.items.pop_back()?;
        t.bytes = t.bytes.saturating_sub(e.bytes);
        band.requests = band.requests.saturating_sub(1);
        band.bytes = band.bytes.saturating_sub(e.bytes);
        if t.items.is_empty() {
            band.tenants.remove(ti);
        }
        Some(e)
    }

    /// The next request to release: the highest band first; within it the tenant at
    /// the front of the round robin, which then moves to the back.
    pub fn pop(&mut self) -> Option<Entry> {
        let band = self.bands.iter_mut().find(|b| b.requests > 0)?;
        let mut t = band.tenants.pop_front()?;
        let e = t.items.pop_front()?;
        t.bytes = t.bytes.saturating_sub(e.bytes);
        band.requests = band.requests.saturating_sub(1);
        band.bytes = band.bytes.saturating_sub(e.bytes);
        if !t.items.is_empty() {
            band.tenants.push_back(t);
        }
        Some(e)
    }

    /// Removes request `id` (its client went away); `None` when it is not held.
    pub fn remove(&mut self, id: u32) -> Option<Entry> {
        for band in &mut self.bands {
            let found = band
                .tenants
                .iter()
                .enumerate()
                .find_map(|(ti, t)| t.items.iter().position(|e| e.id == id).map(|ei| (ti, ei)));
            if let Some((ti, ei)) = found {
                let t = band.tenants.get_mut(ti)?;
                let e = t.items.remove(ei)?;
                t.bytes = t.bytes.saturating_sub(e.bytes);
                band.requests = band.requests.saturating_sub(1);
                band.bytes = band.bytes.saturating_sub(e.bytes);
                if t.items.is_empty() {
                    band.tenants.remove(ti);
                }
                return Some(e);
            }
        }
        None
    }

    /// Moves the requests held past their band's TTL into `out` (oldest first per
    /// tenant: a tenant's queue is in arrival order, so only its front can expire first).
    pub fn expire(&mut self, cfg: &FlowConfig, now_ms: u64, out: &mut Vec<Entry>) {
        for (band, bc) in self.bands.iter_mut().zip(cfg.bands.iter()) {
            for t in band.tenants.iter_mut() {
                while t
                    .items
                    .front()
                    .is_some_and(|e| now_ms.saturating_sub(e.since_ms) > bc.ttl_ms)
                {
                    if let Some(e) = t.items.pop_front() {
                        t.bytes = t.bytes.saturating_sub(e.bytes);
                        band.requests = band.requests.saturating_sub(1);
                        band.bytes = band.bytes.saturating_sub(e.bytes);
                        out.push(e);
                    }
                }
            }
            band.tenants.retain(|t| !t.items.is_empty());
        }
    }
}

fn bi_of(e: &Entry) -> usize {
    band_index(e.class).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Criticality::*;

    fn cfg(json: &str) -> FlowConfig {
        let raw: FlowJson = serde_json::from_str(json).unwrap();
        FlowConfig::validate(Some(&raw)).unwrap().unwrap()
    }

    fn entry(id: u32, class: Criticality, tenant: &str, since_ms: u64) -> Entry {
        Entry {
            id,
            class,
            tenant: tenant.into(),
            bytes: 100,
            since_ms,
        }
    }

    fn drain(q: &mut FlowQueue) -> Vec<u32> {
        std::iter::from_fn(|| q.pop()).map(|e| e.id).collect()
    }

    #[test]
    fn standard_goes_before_sheddable_and_tenants_take_turns() {
        let c = cfg("{}");
        let mut q = FlowQueue::default();
        // Tenant a floods first, then b sends two, then a sheddable one.
        for id in 1..=4 {
            assert_eq!(q.push(&c, entry(id, Standard, "a", 0)), Push::Held);
        }
        q.push(&c, entry(10, Sheddable, "a", 0));
        q.push(&c, entry(5, Standard, "b", 1));
        q.push(&c, entry(6, Standard, "b", 1));
        assert_eq!(q.len(), 7);
        assert!(q.has_ahead(Standard) && q.has_ahead(Sheddable));
        assert!(!q.has_ahead(Critical));
        // Round robin across tenants, FCFS within each; sheddable last.
        assert_eq!(drain(&mut q), vec![1, 5, 2, 6, 3, 4, 10]);
        assert!(q.is_empty() && !q.has_ahead(Sheddable));
    }

    #[test]
    fn sheddable_does_not_block_standard_arrivals() {
        let c = cfg("{}");
        let mut q = FlowQueue::default();
        q.push(&c, entry(1, Sheddable, "a", 0));
        assert!(!q.has_ahead(Standard));
        assert!(q.has_ahead(Sheddable));
        assert_eq!(q.band_len(Sheddable), 1);
    }

    #[test]
    fn critical_is_never_held() {
        let c = cfg("{}");
        let mut q = FlowQueue::default();
        assert_eq!(
            q.push(&c, entry(1, Critical, "a", 0)),
            Push::Refused(Full::Band)
        );
        assert!(c.band(Critical).is_none());
    }

    #[test]
    fn per_tenant_and_per_band_bounds() {
        let c = cfg(r#"{"tenant_max_requests": 2, "standard": {"max_requests": 3}}"#);
        let mut q = FlowQueue::default();
        assert_eq!(q.push(&c, entry(1, Standard, "a", 0)), Push::Held);
        assert_eq!(q.push(&c, entry(2, Standard, "a", 0)), Push::Held);
        assert_eq!(
            q.push(&c, entry(3, Standard, "a", 0)),
            Push::Refused(Full::Tenant),
            "the flooding tenant is held back"
        );
        assert_eq!(q.push(&c, entry(4, Standard, "b", 0)), Push::Held);
        assert_eq!(
            q.push(&c, entry(5, Standard, "c", 0)),
            Push::Refused(Full::Band)
        );
        // Sheddable has its own band.
        assert_eq!(q.push(&c, entry(6, Sheddable, "c", 0)), Push::Held);
        let c = cfg(r#"{"tenant_max_bytes": 150}"#);
        let mut q = FlowQueue::default();
        assert_eq!(q.push(&c, entry(1, Standard, "a", 0)), Push::Held);
        assert_eq!(
            q.push(&c, entry(2, Standard, "a", 0)),
            Push::Refused(Full::Tenant)
        );
    }

    #[test]
    fn when_the_total_is_full_the_lowest_band_is_refused_first() {
        let c = cfg(
            r#"{"max_requests": 3, "standard": {"max_requests": 9}, "sheddable": {"max_requests": 9}}"#,
        );
        let mut q = FlowQueue::default();
        q.push(&c, entry(1, Sheddable, "a", 0));
        q.push(&c, entry(2, Sheddable, "b", 0));
        q.push(&c, entry(3, Sheddable, "b", 0));
        // A sheddable arrival finds the total full: refused.
        assert_eq!(
            q.push(&c, entry(4, Sheddable, "a", 0)),
            Push::Refused(Full::Total)
        );
        // A standard arrival takes the place of the newest sheddable request of the
        // tenant holding the most.
        match q.push(&c, entry(5, Standard, "a", 0)) {
            Push::HeldEvicting(e) => assert_eq!(e.id, 3),
            other => panic!("{other:?}"),
        }
        assert_eq!(q.len(), 3);
        // Standard only: a standard arrival is refused, nothing is lower.
        let mut q = FlowQueue::default();
        for id in 1..=3 {
            q.push(&c, entry(id, Standard, "a", 0));
        }
        assert_eq!(
            q.push(&c, entry(9, Standard, "b", 0)),
            Push::Refused(Full::Total)
        );
        assert_eq!(q.len(), 3);
        assert_eq!(drain(&mut q), vec![1, 2, 3]);
    }

    #[test]
    fn abandoned_requests_leave_at_once() {
        let c = cfg("{}");
        let mut q = FlowQueue::default();
        q.push(&c, entry(1, Standard, "a", 0));
        q.push(&c, entry(2, Standard, "b", 0));
        q.push(&c, entry(3, Standard, "a", 0));
        assert_eq!(q.remove(2).map(|e| e.id), Some(2));
        assert_eq!(q.remove(2), None);
        assert_eq!(q.tenants().count(), 1);
        assert_eq!(drain(&mut q), vec![1, 3]);
    }

    #[test]
    fn requests_expire_after_their_band_ttl() {
        let c = cfg(r#"{"standard": {"ttl": "1s"}, "sheddable": {"ttl": "200ms"}}"#);
        let mut q = FlowQueue::default();
        q.push(&c, entry(1, Standard, "a", 0));
        q.push(&c, entry(2, Sheddable, "a", 0));
        q.push(&c, entry(3, Sheddable, "b", 150));
        let mut out = Vec::new();
        q.expire(&c, 200, &mut out);
        assert!(out.is_empty(), "at the TTL is not past it");
        q.expire(&c, 201, &mut out);
        assert_eq!(out.iter().map(|e| e.id).collect::<Vec<_>>(), vec![2]);
        out.clear();
        q.expire(&c, 1001, &mut out);
        assert_eq!(out.iter().map(|e| e.id).collect::<Vec<_>>(), vec![1, 3]);
        assert!(q.is_empty());
        assert_eq!(q.tenants().count(), 0);
    }

    #[test]
    fn room_is_a_batch_plus_the_target_queue_minus_what_is_in_flight() {
        let c = cfg(r#"{"max_running": 4, "target_queue": 1}"#);
        assert_eq!(room(&c, 0, None), 5);
        assert_eq!(room(&c, 4, Some(0.0)), 1);
        assert_eq!(room(&c, 7, Some(0.0)), 0);
        assert_eq!(
            room(&c, 0, Some(2.0)),
            0,
            "the server's queue is over target"
        );
        assert_eq!(room(&c, 0, Some(1.0)), 5);
    }

    #[test]
    fn tenant_names_are_bounded() {
        assert_eq!(tenant_of(None), NO_TENANT);
        assert_eq!(tenant_of(Some("  ")), NO_TENANT);
        assert_eq!(tenant_of(Some(" acme ")), "acme");
        let long = "é".repeat(100);
        let t = tenant_of(Some(&long));
        assert!(t.len() <= MAX_TENANT_BYTES && long.starts_with(t));
    }

    #[test]
    fn memory_stays_bounded_whatever_arrives() {
        let c = cfg(r#"{"max_requests": 100}"#);
        let mut q = FlowQueue::default();
        for id in 0..10_000u32 {
            let class = if id % 3 == 0 { Standard } else { Sheddable };
            q.push(&c, entry(id, class, &format!("t{}", id % 977), 0));
        }
        assert_eq!(q.len(), 100);
        assert!(q.tenants().count() <= 100);
        assert_eq!(q.band_len(Standard), 100, "standard displaced sheddable");
    }

    #[test]
    fn config_errors_name_the_field() {
        let err = |json: &str| {
            let raw: FlowJson = serde_json::from_str(json).unwrap();
            FlowConfig::validate(Some(&raw)).unwrap_err().field
        };
        assert_eq!(err(r#"{"max_running": 0}"#), "flow.max_running");
        assert_eq!(err(r#"{"standard": {"ttl": "0s"}}"#), "flow.standard.ttl");
        assert_eq!(
            err(r#"{"sheddable": {"max_requests": 0}}"#),
            "flow.sheddable.max_requests"
        );
        assert_eq!(
            err(r#"{"tenant_header": "X Tenant"}"#),
            "flow.tenant_header"
        );
        assert_eq!(err(r#"{"tick": "2s"}"#), "flow.tick");
        // Through the filter's pipeline, a duration that does not parse is named too.
        let field = |json: &str| {
            <crate::shed::ShedConfig as crate::config::FilterConfig>::parse(json.as_bytes())
                .unwrap_err()
                .field
        };
        assert_eq!(
            field(r#"{"flow": {"standard": {"ttl": "soon"}}}"#),
            "flow.standard.ttl"
        );
        assert_eq!(field(r#"{"flow": {"bogus": 1}}"#), "flow.bogus");
        let raw: FlowJson = serde_json::from_str(r#"{"enabled": false}"#).unwrap();
        assert_eq!(FlowConfig::validate(Some(&raw)).unwrap(), None);
        let c = cfg("{}");
        assert_eq!(
            (
                c.max_running,
                c.target_queue,
                c.capacity(),
                c.tenant_header.as_str()
            ),
            (4, 0, 4, TENANT_HEADER)
        );
    }
}
