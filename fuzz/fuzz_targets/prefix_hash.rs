//! Prefix-affinity hashing of arbitrary bodies: never panics, and later turns of a
//! conversation never change the hash of its stable prefix.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelgate_core::router::prefix_hash;
use modelgate_fuzz::seed_and_data;

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
        let a = prefix_hash(turn("one").as_bytes(), chars.max(1));
        let b = prefix_hash(turn("two").as_bytes(), chars.max(1));
        assert_eq!(a, b, "a later turn changed the prefix hash");
    }
});
