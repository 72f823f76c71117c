//! The byte formats of the proxy-wasm ABI, shared by the filters' glue (which writes them)
//! and the ABI test host (which reads and writes them).

/// Serialises header pairs the way the ABI wants them (proxy-wasm-cpp-host's
/// `marshalPairs`): `u32 count`, then `u32 key_len, u32 value_len` per pair, then each key
/// and value followed by a NUL byte; integers little-endian.
pub fn encode_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    let size = 4 + pairs
        .iter()
        .map(|(k, v)| k.as_ref().len() + v.as_ref().len() + 10)
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&len(pairs.len()));
    for (k, v) in pairs {
        out.extend_from_slice(&len(k.as_ref().len()));
        out.extend_from_slice(&len(v.as_ref().len()));
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    out
}

/// The value of the first pair named `name` (ASCII case ignored) in `pairs`, serialised as
/// [`encode_pairs`] writes them; `None` when absent or when `pairs` is malformed.
pub fn find_pair<'a>(pairs: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let word = |at: usize| -> Option<usize> {
        let b = pairs.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes(b.try_into().ok()?) as usize)
    };
    let count = word(0)?;
    // Each pair has 8 bytes of sizes and two NULs: a count the buffer cannot hold is corrupt.
    if count > pairs.len() / 10 {
        return None;
    }
    let mut data = 4 + count * 8;
    for i in 0..count {
        let key_len = word(4 + i * 8)?;
        let value_len = word(8 + i * 8)?;
        let key = pairs.get(data..data.checked_add(key_len)?)?;
        let value_at = data + key_len + 1;
        let value = pairs.get(value_at..value_at.checked_add(value_len)?)?;
        if key.eq_ignore_ascii_case(name) {
            return Some(value);
        }
        data = value_at + value_len + 1;
    }
    None
}

/// A property path as the ABI takes it: its parts joined by NUL (`["node", "id"]` →
/// `node\0id`).
pub fn property_key(parts: &[&str]) -> Vec<u8> {
    parts.join("\0").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_serialize_as_the_abi_expects() {
        let out = encode_pairs(&[("a", &b"xy"[..]), ("bc", b"")]);
        let mut want = Vec::new();
        for n in [2u32, 1, 2, 2, 0] {
            want.extend_from_slice(&n.to_le_bytes());
        }
        want.extend_from_slice(b"a\0xy\0bc\0\0");
        assert_eq!(out, want);
    }

    #[test]
    fn pairs_are_found_by_name_first_one_wins() {
        let raw = encode_pairs(&[
            (":path", &b"/v1/x"[..]),
            ("x-a", b""),
            ("x-a", b"2"),
            ("b", b"v"),
        ]);
        assert_eq!(find_pair(&raw, b":path"), Some(&b"/v1/x"[..]));
        assert_eq!(find_pair(&raw, b"X-A"), Some(&b""[..]));
        assert_eq!(find_pair(&raw, b"b"), Some(&b"v"[..]));
        assert_eq!(find_pair(&raw, b"c"), None);
        assert_eq!(find_pair(&[], b"b"), None);
        assert_eq!(find_pair(&encode_pairs::<&str, &str>(&[]), b"b"), None);
    }

    #[test]
    fn malformed_pairs_are_absent_never_a_panic() {
        let raw = encode_pairs(&[("a", &b"1"[..]), ("b", b"2")]);
        for cut in 0..raw.len() {
            let _ = find_pair(&raw[..cut], b"b");
        }
        assert_eq!(find_pair(&raw[..raw.len() - 2], b"b"), None);
        let mut huge = raw.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(find_pair(&huge, b"b"), None);
        let mut many = raw;
        many[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(find_pair(&many, b"a"), None);
    }

    #[test]
    fn property_paths_join_with_nul() {
        assert_eq!(property_key(&["xds", "cluster_name"]), b"xds\0cluster_name");
        assert_eq!(property_key(&["plugin_name"]), b"plugin_name");
    }
}
