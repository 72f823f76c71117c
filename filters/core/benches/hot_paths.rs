//! Micro-benchmarks of the per-request work of the filters, natively: the router's body
//! routing (model and prefix hash from a streaming scan, the body-front rewrite) and the
//! metrics filter's model scan. Prints a markdown table; `make bench` puts it next to the
//! Envoy numbers. `HOT_PATHS_ITERS` scales the iterations (callgrind runs use few).
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::hint::black_box;
use std::time::Instant;

use modelgate_core::config::FilterConfig;
use modelgate_core::json_scan::ModelScanner;
use modelgate_core::prng::Prng;
use modelgate_core::router::{BodyRouting, BodyStep, Router};

const CONFIG: &str = r#"{"models":[
  {"name":"llama-3-8b","criticality":"critical","aliases":["llama3"]},
  {"name":"chat","targets":[{"name":"llama-3-8b","weight":3},{"name":"qwen-2-7b","weight":1}]}],
  "max_body_bytes":4194304,"prefix_affinity":{"chars":256}}"#;

/// A chat body of `size` bytes naming `model`, first or last.
fn body(model: &str, size: usize, model_first: bool) -> Vec<u8> {
    let head = if model_first {
        format!(
            r#"{{"model":"{model}","messages":[{{"role":"system","content":"You are a helpful assistant."}},{{"role":"user","content":""#
        )
    } else {
        r#"{"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":""#.to_string()
    };
    let tail = if model_first {
        r#""}],"max_tokens":16}"#.to_string()
    } else {
        format!(r#""}}],"max_tokens":16,"model":"{model}"}}"#)
    };
    let filler = "lorem ipsum dolor sit amet ".repeat(size / 27 + 1);
    let n = size.saturating_sub(head.len() + tail.len());
    format!("{head}{}{tail}", &filler[..n]).into_bytes()
}

/// Routes `body` as the glue does (one chunk, body still streaming unless it all came).
fn route(r: &Router, body: &[u8], rng: &mut Prng, out: &mut Vec<u8>) -> usize {
    let mut br = BodyRouting::new(r);
    let mut from = 0;
    loop {
        let end = (from + 8192).min(body.len());
        let step = br.feed(r, &body[from..end], body.len(), end == body.len(), rng);
        match step {
            BodyStep::Route(route) => {
                if let Some(edit) = &route.edit {
                    edit.write_prefix(&body[..edit.keep], out);
                }
                return br.consumed() + usize::from(route.prefix_hash.is_some());
            }
            BodyStep::NeedMore => from = br.consumed(),
            BodyStep::Error(e) => panic!("{e:?}"),
        }
    }
}

fn time(label: &str, iters: u32, mut f: impl FnMut() -> usize) {
    let mut sink = 0;
    for _ in 0..iters.min(100) {
        sink += f();
    }
    let start = Instant::now();
    for _ in 0..iters {
        sink += f();
    }
    let ns = start.elapsed().as_nanos() as f64 / f64::from(iters);
    black_box(sink);
    println!("| {label} | {ns:.0} |");
}

fn main() {
    let scale: u32 = std::env::var("HOT_PATHS_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let r = Router::parse(CONFIG.as_bytes()).unwrap();
    let mut rng = Prng::new(7);
    let mut out = Vec::new();
    println!("| per request (native, release) | ns |\n|---|---|");
    for (label, size) in [("1 KiB", 1024), ("100 KiB", 102_400)] {
        let b = body("llama3", size, true);
        time(
            &format!("router: {label} body, model first (alias rewrite, prefix hash)"),
            scale,
            || route(&r, &b, &mut rng, &mut out),
        );
    }
    let b = body("llama3", 102_400, false);
    time(
        "router: 100 KiB body, model last (scanned to the model)",
        (scale / 100).max(1),
        || route(&r, &b, &mut rng, &mut out),
    );
    let b = body("llama3", 102_400, true);
    time(
        "ml_metrics: model scan of a 100 KiB body, model first",
        scale,
        || {
            let mut s = ModelScanner::new();
            s.feed(&b[..8192]).unwrap()
        },
    );
}
