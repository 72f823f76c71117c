//! The request body scanner: any chunking gives the same verdict, model and span as the
//! whole body, and it agrees with serde_json on every body serde_json accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelgate_core::json_scan::{ModelScanner, ScanError, MAX_MODEL_LEN};
use modelgate_fuzz::{chunks, seed_and_data};
use serde_json::Value;

#[derive(Debug, PartialEq)]
struct Outcome {
    result: Result<(), ScanError>,
    model: Option<String>,
    span: Option<(usize, usize)>,
    object_start: Option<usize>,
}

fn scan(pieces: &[&[u8]]) -> Outcome {
    let mut s = ModelScanner::new();
    for piece in pieces {
        match s.feed_all(piece) {
            Ok(n) => assert_eq!(n, piece.len(), "feed consumed nothing"),
            Err(_) => break,
        }
    }
    // An error is sticky: `finish` reports the first one.
    Outcome {
        result: s.finish(),
        model: s.model().map(str::to_string),
        span: s.model_span(),
        object_start: s.object_start(),
    }
}

fuzz_target!(|input: &[u8]| {
    let (seed, data) = seed_and_data(input);
    let whole = scan(&[data]);
    let chunked = scan(&chunks(data, seed));
    // Where the scan stopped early the state can differ only in what was not read yet.
    assert_eq!(
        whole.result, chunked.result,
        "verdict depends on the chunking"
    );
    if whole.result.is_ok() {
        assert_eq!(whole, chunked, "model depends on the chunking");
    }
    if let Some((a, b)) = whole.span {
        assert!(a < b && b <= data.len(), "span {a}..{b} outside the body");
    }
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(data) {
        match &whole.result {
            Err(ScanError::Malformed { .. } | ScanError::Truncated | ScanError::NotAnObject) => {
                panic!(
                    "serde_json accepts what the scanner rejects: {:?}",
                    whole.result
                )
            }
            Ok(()) => match map.get("model") {
                Some(Value::String(m)) if m.len() <= MAX_MODEL_LEN => {
                    assert_eq!(whole.model.as_deref(), Some(m.as_str()))
                }
                Some(Value::String(_)) => panic!("a too long model was accepted"),
                Some(_) => panic!("a non-string model was accepted"),
                None => assert_eq!(whole.model, None),
            },
            Err(_) => {}
        }
    }
});
