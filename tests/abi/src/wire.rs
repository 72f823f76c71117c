//! The byte formats of the proxy-wasm ABI: header-map pairs and property paths (the
//! encoders are the glue's own, from `modelgate_core::wire`).

pub use modelgate_core::wire::{encode_pairs, property_key};

/// A header map as Envoy keeps it: ordered, lower-case keys, repeated keys allowed.
pub type Pairs = Vec<(String, Vec<u8>)>;

/// Parses pairs sent by a module; like cpp-host's `toPairs`, a truncated or malformed
/// buffer yields no pairs at all.
pub fn decode_pairs(buf: &[u8]) -> Pairs {
    let word = |at: usize| -> Option<usize> {
        let b = buf.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let Some(count) = word(0) else {
        return Vec::new();
    };
    if 4 + count.saturating_mul(8) > buf.len() {
        return Vec::new();
    }
    let mut sizes = Vec::with_capacity(count);
    for i in 0..count {
        let (Some(k), Some(v)) = (word(4 + i * 8), word(8 + i * 8)) else {
            return Vec::new();
        };
        sizes.push((k, v));
    }
    let mut at = 4 + count * 8;
    let mut out = Vec::with_capacity(count);
    for (k, v) in sizes {
        let Some(key) = buf.get(at..at + k) else {
            return Vec::new();
        };
        at += k + 1;
        let Some(value) = buf.get(at..at + v) else {
            return Vec::new();
        };
        at += v + 1;
        out.push((String::from_utf8_lossy(key).into_owned(), value.to_vec()));
    }
    out
}

/// Converts `&[(&str, &str)]` (test input) into lower-cased pairs, as Envoy stores them.
pub fn pairs_from(headers: &[(&str, &str)]) -> Pairs {
    headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip() {
        let pairs = pairs_from(&[(":path", "/v1/models"), ("X-A", ""), ("x-a", "2")]);
        let bytes = encode_pairs(&pairs);
        assert_eq!(&bytes[..4], &3u32.to_le_bytes());
        assert_eq!(decode_pairs(&bytes), pairs);
        assert_eq!(pairs[1].0, "x-a");
    }

    #[test]
    fn truncated_pairs_are_empty() {
        let bytes = encode_pairs(&pairs_from(&[("a", "b")]));
        for cut in 0..bytes.len() - 1 {
            assert!(decode_pairs(&bytes[..cut]).is_empty(), "cut at {cut}");
        }
        assert!(decode_pairs(&[]).is_empty());
    }
}
