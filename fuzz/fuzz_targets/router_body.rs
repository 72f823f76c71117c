//! The model router's body decision (the gateway's models): any chunking, as Envoy
//! buffers it, gives the same route, body rewrite, prefix hash or error as the whole body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelgate_core::config::FilterConfig;
use modelgate_core::prng::Prng;
use modelgate_core::router::{BodyRouting, BodyStep, Router};
use modelgate_fuzz::{chunks, seed_and_data};

/// The gateway's models, shared with core's property tests (`tests/split_properties.rs`).
const CONFIG: &str = include_str!("../../filters/core/tests/data/router.json");

fn decide(router: &Router, pieces: &[&[u8]]) -> String {
    let mut rng = Prng::new(7);
    let mut routing = BodyRouting::new(router);
    let mut buffered = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        buffered.extend_from_slice(piece);
        let eos = i + 1 == pieces.len();
        let from = routing.consumed();
        assert!(from <= buffered.len(), "consumed past the buffer");
        match routing.feed(router, &buffered[from..], buffered.len(), eos, &mut rng) {
            BodyStep::NeedMore if eos => panic!("NeedMore at the end of the body"),
            BodyStep::NeedMore => {}
            BodyStep::Error(e) => return format!("error {e:?}"),
            BodyStep::Route(r) => {
                // The edit touches only the front; the rest streams through unchanged.
                let whole = pieces.concat();
                let body = r.edit.as_ref().map(|e| e.apply(&whole));
                if let (Some(e), Some(b)) = (&r.edit, &body) {
                    assert_eq!(e.new_body_len(whole.len()), b.len());
                }
                let hash = r.prefix_hash;
                return format!("route {} {} {body:?} {hash:?}", r.model, r.target);
            }
        }
    }
    unreachable!("the last piece has end_of_stream")
}

fuzz_target!(|input: &[u8]| {
    thread_local! {
        static ROUTER: Router = Router::parse(CONFIG.as_bytes()).expect("shipped config");
    }
    let (seed, data) = seed_and_data(input);
    let mut pieces = chunks(data, seed);
    if pieces.is_empty() {
        pieces.push(&[]);
    }
    ROUTER.with(|router| {
        let whole = decide(router, &[data]);
        let chunked = decide(router, &pieces);
        assert_eq!(whole, chunked, "decision depends on the chunking");
    });
});
