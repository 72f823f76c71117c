//! Exactly-once pod observations across VMs.

/// Which snapshots carry news since the last observation (see [`Cursor`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fresh {
    pub readiness: bool,
    pub queue: bool,
}

/// The snapshot sequence numbers already observed. Every VM ticks; the one that advances
/// the cursor (a CAS write in shared data) records the new check and scrape, so Envoy's
/// shared stats see each of them once however many worker VMs there are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    pub readiness_seq: u64,
    pub queue_seq: u64,
}

impl Cursor {
    pub fn decode(bytes: Option<&[u8]>) -> Self {
        let word = |i: usize| -> u64 {
            bytes
                .and_then(|b| b.get(i..i + 8))
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_le_bytes)
        };
        Self {
            readiness_seq: word(0),
            queue_seq: word(8),
        }
    }

    pub fn encode(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        let (a, b) = out.split_at_mut(8);
        a.copy_from_slice(&self.readiness_seq.to_le_bytes());
        b.copy_from_slice(&self.queue_seq.to_le_bytes());
        out
    }

    /// The cursor after observing these sequence numbers, and what is new; `None` when
    /// nothing is. A sequence number that went backwards is a restarted writer: new too.
    pub fn advance(
        &self,
        readiness_seq: Option<u64>,
        queue_seq: Option<u64>,
    ) -> Option<(Cursor, Fresh)> {
        let fresh = Fresh {
            readiness: readiness_seq.is_some_and(|s| s != self.readiness_seq),
            queue: queue_seq.is_some_and(|s| s != self.queue_seq),
        };
        if !fresh.readiness && !fresh.queue {
            return None;
        }
        let next = Cursor {
            readiness_seq: readiness_seq.unwrap_or(self.readiness_seq),
            queue_seq: queue_seq.unwrap_or(self.queue_seq),
        };
        Some((next, fresh))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_advances_once_per_new_sequence() {
        let c = Cursor::decode(None);
        assert_eq!(c.advance(None, None), None);
        let (c, fresh) = c.advance(Some(1), None).unwrap();
        assert_eq!(
            fresh,
            Fresh {
                readiness: true,
                queue: false
            }
        );
        let c = Cursor::decode(Some(&c.encode()));
        assert_eq!(c.advance(Some(1), None), None);
        let (c, fresh) = c.advance(Some(1), Some(5)).unwrap();
        assert_eq!(
            fresh,
            Fresh {
                readiness: false,
                queue: true
            }
        );
        // A restarted writer counts from 0 again: still news.
        assert!(c.advance(Some(0), Some(5)).is_some());
        assert_eq!(Cursor::decode(Some(b"short")), Cursor::default());
    }
}
