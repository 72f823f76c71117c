//! Shared pieces of the fuzz targets: how an input is cut into chunks (the first byte seeds
//! the cut sizes, the rest is the data), so each target checks that a parser or decision
//! gives the same answer however Envoy splits the bytes.

/// Splits `input` into (chunk-size seed, data).
pub fn seed_and_data(input: &[u8]) -> (u64, &[u8]) {
    match input.split_first() {
        Some((&s, rest)) => (u64::from(s), rest),
        None => (0, input),
    }
}

/// Cuts `data` into chunks of pseudo-random sizes (1..=64 bytes, some empty) from `seed`.
pub fn chunks(data: &[u8], seed: u64) -> Vec<&[u8]> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        // One chunk in eight is empty: Envoy does call the filter with empty data.
        let n = if state % 8 == 0 {
            0
        } else {
            (state % 64) as usize + 1
        };
        let (head, tail) = rest.split_at(n.min(rest.len()));
        out.push(head);
        rest = tail;
    }
    out
}
