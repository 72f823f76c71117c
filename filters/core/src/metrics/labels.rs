//! Bounded label values: configured models (else `other`), a capped set of free-form reasons,
//! the criticality classes and status classes.

use std::collections::HashMap;

use super::names::{NONE, OTHER};
use crate::vocab::Criticality;

/// Index of a model label value: 0 = "none", 1 = "other", 2.. = configured models.
pub type ModelIdx = u16;
pub(super) const MODEL_NONE: ModelIdx = 0;
pub(super) const MODEL_OTHER: ModelIdx = 1;

#[derive(Debug, Default)]
pub(super) struct ModelSet {
    names: Vec<String>,
    index: HashMap<Box<[u8]>, ModelIdx>,
}

impl ModelSet {
    pub(super) fn new(models: &[String]) -> Self {
        let mut names = vec![NONE.to_string(), OTHER.to_string()];
        let mut index = HashMap::with_capacity(models.len());
        for m in models {
            let idx = ModelIdx::try_from(names.len()).unwrap_or(MODEL_OTHER);
            index.insert(m.as_bytes().into(), idx);
            names.push(m.clone());
        }
        Self { names, index }
    }

    pub(super) fn lookup(&self, name: Option<&[u8]>) -> ModelIdx {
        match name {
            None => MODEL_NONE,
            Some(n) => self.index.get(n).copied().unwrap_or(MODEL_OTHER),
        }
    }

    pub(super) fn name(&self, idx: ModelIdx) -> &str {
        self.names
            .get(usize::from(idx))
            .map(String::as_str)
            .unwrap_or(OTHER)
    }
}

/// Free-form label values (shed reasons, error types) kept up to a limit, then "other".
#[derive(Debug)]
pub(super) struct Interner {
    values: Vec<String>,
    limit: usize,
}

impl Interner {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            values: vec![NONE.to_string(), OTHER.to_string()],
            limit: limit.saturating_add(2),
        }
    }

    pub(super) fn intern(&mut self, v: &str) -> u8 {
        let v = v.trim();
        if v.is_empty() {
            return 0;
        }
        if let Some(i) = self.values.iter().position(|x| x == v) {
            return u8::try_from(i).unwrap_or(1);
        }
        let ok = v.len() <= 32
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok || self.values.len() >= self.limit {
            return 1;
        }
        self.values.push(v.to_ascii_lowercase());
        u8::try_from(self.values.len() - 1).unwrap_or(1)
    }

    pub(super) fn name(&self, i: u8) -> &str {
        self.values
            .get(usize::from(i))
            .map(String::as_str)
            .unwrap_or(OTHER)
    }
}

/// The `criticality` label: the class, or "none" without a valid `x-modelgate-criticality`.
pub(super) fn criticality_label(c: Option<Criticality>) -> &'static str {
    c.map_or(NONE, Criticality::as_str)
}

/// `2xx`-style class of an HTTP status; "none" when the stream ended without one.
pub fn code_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => NONE,
    }
}
