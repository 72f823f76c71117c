//! Prefix affinity: the hash of a request's prompt prefix that the gateway's ring hash keys
//! on (`x-modelgate-prefix-hash`), so requests that share a prompt prefix reach the pod
//! whose KV cache holds it.
//!
//! What is hashed: the first `chars` characters of the prompt text, in body order — the
//! `content` (or content parts' `text`) of `messages` / `input` items, `input`, `prompt` and
//! `instructions` strings — as [`crate::json_scan::ModelScanner`] decodes them while the
//! body streams through (escapes decoded, so `\u00e9` and `é` hash alike). Each string
//! starts with a separator, so `"ab","c"` and `"a","bc"` differ. The hash is final once the
//! budget is spent, so a long prompt is never read past its first `chars` characters.

/// FNV-1a over at most `limit` characters of text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixHasher {
    limit: usize,
    taken: usize,
    /// A character past the limit was offered: the hash is final.
    full: bool,
    hash: u64,
}

impl PrefixHasher {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;

    /// A hasher for the first `chars` characters (0: off).
    pub const fn new(chars: usize) -> Self {
        Self {
            limit: chars,
            taken: 0,
            full: chars == 0,
            hash: Self::OFFSET,
        }
    }

    /// True while more text could change the hash.
    pub fn wants_more(&self) -> bool {
        !self.full
    }

    fn mix(&mut self, b: u8) {
        self.hash ^= u64::from(b);
        self.hash = self.hash.wrapping_mul(Self::PRIME);
    }

    /// Marks the start of a new string. Not once the budget is spent: text after it does
    /// not count, so neither does whether more (possibly empty) strings follow.
    pub fn separator(&mut self) {
        if !self.full && self.taken < self.limit {
            self.mix(0x1e);
        }
    }

    /// One byte of UTF-8 text. Returns false (byte not taken) once a character past the
    /// limit starts; whole characters only are hashed.
    pub fn byte(&mut self, b: u8) -> bool {
        if self.full {
            return false;
        }
        if b & 0xC0 != 0x80 {
            if self.taken == self.limit {
                self.full = true;
                return false;
            }
            self.taken += 1;
        }
        self.mix(b);
        true
    }

    /// A run of UTF-8 text; stops at the limit.
    pub fn text(&mut self, s: &[u8]) {
        for &b in s {
            if !self.byte(b) {
                return;
            }
        }
    }

    /// The hash, when any text was fed.
    pub fn finish(&self) -> Option<u64> {
        (self.taken > 0).then_some(self.hash)
    }
}

/// 16 lowercase hex digits, the header form of a prefix hash.
pub fn hash_hex(h: u64) -> [u8; 16] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'0'; 16];
    for (i, o) in out.iter_mut().enumerate() {
        let nibble = (h >> (60 - 4 * i)) & 0xf;
        *o = DIGITS.get(nibble as usize).copied().unwrap_or(b'0');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(parts: &[&str], chars: usize) -> Option<u64> {
        let mut h = PrefixHasher::new(chars);
        for p in parts {
            h.separator();
            h.text(p.as_bytes());
        }
        h.finish()
    }

    #[test]
    fn counts_characters_not_bytes_and_stops_at_the_budget() {
        assert_eq!(hash(&["ééé"], 2), hash(&["éé"], 2));
        assert_ne!(hash(&["éé"], 2), hash(&["é"], 2));
        assert_eq!(hash(&["abc", "zzz"], 3), hash(&["abc", "yyy"], 3));
        assert!(!{
            let mut h = PrefixHasher::new(1);
            h.text(b"ab");
            h.wants_more()
        });
    }

    #[test]
    fn string_boundaries_matter_and_empty_text_is_no_hash() {
        assert_ne!(hash(&["ab", "c"], 10), hash(&["a", "bc"], 10));
        assert_eq!(hash(&[], 10), None);
        assert_eq!(hash(&[""], 10), None);
        assert_eq!(hash(&["x"], 0), None);
    }

    #[test]
    fn hex_is_sixteen_lowercase_digits() {
        assert_eq!(
            std::str::from_utf8(&hash_hex(0x0123_4567_89ab_cdef)).unwrap(),
            "0123456789abcdef"
        );
    }
}
