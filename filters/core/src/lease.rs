//! Once-per-period work for the whole proxy: every worker VM ticks, but only the VM
//! that claims the lease (a CAS-guarded expiry in shared data) polls this period.

/// Bytes to CAS-write if the lease stored as `current` has expired at `now_ms`, or
/// `None` when another VM holds it. The lease ends slightly before the next period so
/// the next tick of any VM can take it over.
pub fn claim(current: Option<&[u8]>, now_ms: u64, period_ms: u64) -> Option<[u8; 8]> {
    let expiry = current.and_then(decode);
    match expiry {
        Some(exp) if exp > now_ms => None,
        _ => {
            let slack = (period_ms / 10).max(1);
            Some(
                now_ms
                    .saturating_add(period_ms.saturating_sub(slack))
                    .to_le_bytes(),
            )
        }
    }
}

fn decode(bytes: &[u8]) -> Option<u64> {
    let arr: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(arr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_or_expired_lease_is_claimed() {
        let v = claim(None, 1000, 500).unwrap();
        assert_eq!(u64::from_le_bytes(v), 1450);
        assert!(claim(Some(&v), 1449, 500).is_none());
        assert!(claim(Some(&v), 1450, 500).is_some());
    }

    #[test]
    fn garbage_lease_is_reclaimed() {
        assert!(claim(Some(b"xx"), 5, 100).is_some());
    }
}
