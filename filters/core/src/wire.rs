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
    fn property_paths_join_with_nul() {
        assert_eq!(property_key(&["xds", "cluster_name"]), b"xds\0cluster_name");
        assert_eq!(property_key(&["plugin_name"]), b"plugin_name");
    }
}
