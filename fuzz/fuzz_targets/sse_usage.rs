//! The SSE parser and the usage scanner of the metrics filter: any chunking of a response
//! stream gives the same token events, usage and [DONE] as the whole stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelgate_core::sse::SseParser;
use modelgate_core::usage::UsageScanner;
use modelgate_fuzz::{chunks, seed_and_data};

fn sse(pieces: &[&[u8]]) -> String {
    let mut p = SseParser::new();
    let (mut tokens, mut usage, mut done) = (0u64, None, false);
    let mut progress: Vec<_> = pieces.iter().map(|c| p.feed(c)).collect();
    progress.push(p.finish());
    for step in progress {
        tokens += u64::from(step.token_events);
        usage = step.usage.or(usage);
        done |= step.done;
    }
    format!("{tokens} {usage:?} {done}")
}

fn usage(pieces: &[&[u8]]) -> String {
    let mut u = UsageScanner::new();
    for p in pieces {
        u.feed(p);
    }
    format!("{:?} {} {}", u.usage(), u.choices_nonempty(), u.broken())
}

fuzz_target!(|input: &[u8]| {
    let (seed, data) = seed_and_data(input);
    let pieces = chunks(data, seed);
    assert_eq!(
        sse(&[data]),
        sse(&pieces),
        "SSE result depends on the chunking"
    );
    assert_eq!(
        usage(&[data]),
        usage(&pieces),
        "usage depends on the chunking"
    );
});
