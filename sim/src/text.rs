//! Token counting and deterministic output text.
//!
//! Rule: one token per whitespace-separated word (a token-id array counts one per id), at
//! least one per request. Output token i is one word from a fixed vocabulary, chosen from a
//! hash of the prompt, so the same prompt always gets the same text and the number of words
//! in the text equals `completion_tokens`.

const VOCAB: &[&str] = &[
    "the",
    "model",
    "gate",
    "routes",
    "tokens",
    "through",
    "a",
    "simulated",
    "server",
    "while",
    "queues",
    "grow",
    "and",
    "latency",
    "rises",
    "under",
    "load",
    "every",
    "request",
    "waits",
    "for",
    "its",
    "turn",
    "in",
    "cache",
    "memory",
    "stays",
    "bounded",
    "by",
    "design",
    "today",
    "again",
];

/// Tokens in `text` under the sim's rule.
pub fn count_tokens(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// FNV-1a, stable across runs and platforms (std's hasher is randomly seeded).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The text of output token `index` for a prompt with hash `seed` (a leading space
/// separates it from the previous token).
pub fn token_text(seed: u64, index: u64) -> String {
    let len = VOCAB.len() as u64;
    let slot = seed.wrapping_add(index.wrapping_mul(7)) % len;
    let word = VOCAB
        .get(usize::try_from(slot).unwrap_or(0))
        .copied()
        .unwrap_or("token");
    if index == 0 {
        word.to_owned()
    } else {
        format!(" {word}")
    }
}

/// The whole completion of `n` tokens.
pub fn completion_text(seed: u64, n: u64) -> String {
    (0..n).map(|i| token_text(seed, i)).collect()
}

/// A deterministic unit-length vector for `text`.
pub fn embedding(text: &str, dim: u64) -> Vec<f64> {
    let mut state = stable_hash(text.as_bytes()) | 1;
    let raw: Vec<f64> = (0..dim)
        .map(|_| {
            // xorshift64: cheap, deterministic, good enough to tell inputs apart.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect();
    let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm > 0.0 {
        raw.iter().map(|x| x / norm).collect()
    } else {
        raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_words() {
        assert_eq!(count_tokens("  hello   big\nworld\t"), 3);
        assert_eq!(count_tokens(""), 0);
    }

    #[test]
    fn completion_has_one_word_per_token_and_is_deterministic() {
        let seed = stable_hash(b"hi there");
        let a = completion_text(seed, 20);
        assert_eq!(count_tokens(&a), 20);
        assert_eq!(a, completion_text(seed, 20));
        assert!(!a.starts_with(' '));
    }

    #[test]
    fn embeddings_are_unit_and_deterministic() {
        let v = embedding("abc", 8);
        assert_eq!(v.len(), 8);
        let n: f64 = v.iter().map(|x| x * x).sum();
        assert!((n - 1.0).abs() < 1e-9);
        assert_eq!(v, embedding("abc", 8));
        assert_ne!(v, embedding("abd", 8));
    }
}
