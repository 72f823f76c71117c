//! The prefix cache: prompts as chains of 16-token block hashes, and a per-server LRU of
//! the blocks it has computed, so a prompt that shares a prefix with an earlier one
//! prefills only its uncached tail (vLLM's automatic prefix caching, simplified).

use std::collections::{BTreeMap, HashMap};

/// Tokens per cache block (vLLM's default block size).
pub const BLOCK_TOKENS: u64 = 16;

/// Builds the block hashes of a prompt, token by token. Each full block's hash covers
/// every token before it, so equal hashes mean equal prefixes.
#[derive(Debug, Clone)]
pub struct BlockHasher {
    hash: u64,
    in_block: u64,
    blocks: Vec<u64>,
}

impl Default for BlockHasher {
    fn default() -> Self {
        Self {
            hash: 0xcbf2_9ce4_8422_2325,
            in_block: 0,
            blocks: Vec::new(),
        }
    }
}

impl BlockHasher {
    /// Feeds one token (its text or id bytes).
    pub fn token(&mut self, bytes: &[u8]) {
        // The trailing 0xff separates tokens, so "ab c" and "a bc" differ.
        for b in bytes.iter().chain(std::iter::once(&0xff)) {
            self.hash = (self.hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.in_block += 1;
        if self.in_block == BLOCK_TOKENS {
            self.blocks.push(self.hash);
            self.in_block = 0;
        }
    }

    /// Feeds every whitespace-separated word of `text`.
    pub fn words(&mut self, text: &str) {
        for w in text.split_whitespace() {
            self.token(w.as_bytes());
        }
    }

    /// Marks a message boundary (no token): the same words under another role differ.
    pub fn boundary(&mut self, role: &str) {
        for b in role.bytes().chain(std::iter::once(0xfe)) {
            self.hash = (self.hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// The hashes of the full blocks (a partial last block is never cached).
    pub fn finish(self) -> Vec<u64> {
        self.blocks
    }
}

/// An LRU set of block hashes holding at most `capacity` blocks.
#[derive(Debug)]
pub struct PrefixCache {
    capacity: usize,
    tick: u64,
    /// block hash → last use.
    last_use: HashMap<u64, u64>,
    /// last use → block hash (oldest first), for eviction.
    by_age: BTreeMap<u64, u64>,
}

impl PrefixCache {
    pub fn new(capacity_blocks: usize) -> Self {
        Self {
            capacity: capacity_blocks,
            tick: 0,
            last_use: HashMap::new(),
            by_age: BTreeMap::new(),
        }
    }

    /// Counts the leading blocks of `blocks` already cached (a prefix match stops at the
    /// first miss), then caches all of them as most recently used, evicting the oldest.
    pub fn lookup_and_insert(&mut self, blocks: &[u64]) -> usize {
        let hits = blocks
            .iter()
            .take_while(|b| self.last_use.contains_key(b))
            .count();
        for b in blocks {
            self.tick += 1;
            if let Some(old) = self.last_use.insert(*b, self.tick) {
                self.by_age.remove(&old);
            }
            self.by_age.insert(self.tick, *b);
        }
        while self.last_use.len() > self.capacity {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            self.last_use.remove(&oldest);
        }
        hits
    }

    pub fn len(&self) -> usize {
        self.last_use.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last_use.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(text: &str) -> Vec<u64> {
        let mut h = BlockHasher::default();
        h.words(text);
        h.finish()
    }

    fn words(n: usize, tag: &str) -> String {
        (0..n)
            .map(|i| format!("{tag}{i}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn only_full_blocks_are_hashed_and_they_chain() {
        assert!(blocks(&words(15, "a")).is_empty());
        let a = blocks(&words(40, "a"));
        assert_eq!(a.len(), 2);
        // Same first block, different second: the first hash agrees, the second does not.
        let b = blocks(&format!("{} {}", words(16, "a"), words(16, "b")));
        assert_eq!(a.first(), b.first());
        assert_ne!(a.get(1), b.get(1));
        // A change in block 0 changes every later hash too.
        let c = blocks(&format!("x {}", words(39, "a")));
        assert!(a.iter().zip(&c).all(|(x, y)| x != y));
    }

    #[test]
    fn role_boundaries_change_the_hash() {
        let text = words(16, "a");
        let mut sys = BlockHasher::default();
        sys.boundary("system");
        sys.words(&text);
        let mut user = BlockHasher::default();
        user.boundary("user");
        user.words(&text);
        assert_ne!(sys.finish(), user.finish());
    }

    #[test]
    fn hits_count_the_cached_leading_blocks_only() {
        let mut cache = PrefixCache::new(100);
        assert_eq!(cache.lookup_and_insert(&[1, 2, 3]), 0);
        assert_eq!(cache.lookup_and_insert(&[1, 2, 3, 4]), 3);
        // Block 9 is not cached, so 2 and 3 after it do not count.
        assert_eq!(cache.lookup_and_insert(&[1, 9, 2, 3]), 1);
        assert_eq!(cache.len(), 5);
    }

    #[test]
    fn evicts_least_recently_used_beyond_capacity() {
        let mut cache = PrefixCache::new(3);
        cache.lookup_and_insert(&[1, 2, 3]);
        cache.lookup_and_insert(&[1]); // 1 is now the newest
        cache.lookup_and_insert(&[4]); // evicts 2
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.lookup_and_insert(&[1]), 1);
        assert_eq!(cache.lookup_and_insert(&[2]), 0);
    }

    #[test]
    fn zero_capacity_caches_nothing() {
        let mut cache = PrefixCache::new(0);
        cache.lookup_and_insert(&[1, 2]);
        assert_eq!(cache.lookup_and_insert(&[1, 2]), 0);
        assert!(cache.is_empty());
    }
}
