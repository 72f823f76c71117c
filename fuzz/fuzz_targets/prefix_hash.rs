//! Prefix-affinity hashing of arbitrary bodies: never panics, and later turns of a
//! conversation never change the hash of its stable prefix.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelgate_core::json_scan::ModelScanner;
use modelgate_fuzz::seed_and_data;

/// The prefix-affinity hash the router's scanner computes over a whole body.
fn prefix_hash(body: &[u8], chars: usize) -> Option<u64> {
    let mut s = ModelScanner::with_prefix_hash(chars);
    let _ = s.feed_all(body);
    s.prefix_hash()
}

fuzz_target!(|input: &[u8]| {
    let (seed, data) = seed_and_data(input);
    let chars = (seed as usize) * 4;
    let _ = prefix_hash(data, chars);
    // The same text as a system prompt and first turn, then with a later turn appended.
    if let Ok(text) = std::str::from_utf8(data) {
        let turn = |extra: &str| {
            serde_json::json!({"messages": [
                {"role": "system", "content": text},
                {"role": "user", "content": text},
                {"role": "assistant", "content": extra},
            ]})
            .to_string()
        };
        // The hash covers the first `chars` characters: keep them inside the stable turns.
        let stable = 2 * text.chars().count();
        if stable == 0 {
            return;
        }
        let chars = 1 + chars % stable;
        let a = prefix_hash(turn("one").as_bytes(), chars);
        let b = prefix_hash(turn("two").as_bytes(), chars);
        assert_eq!(a, b, "a later turn changed the prefix hash");
    }
});
