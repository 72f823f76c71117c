//! Prometheus text from a model server's /metrics: the bounded parser and the scrape's load
//! extraction give the same samples, stats and load for any chunking, within their limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelgate_core::config::parse_json;
use modelgate_core::prom::{Limits, Parser};
use modelgate_core::scrape::{MetricsReader, ScrapeConfig, ScrapeConfigJson};
use modelgate_fuzz::{chunks, seed_and_data};

fn parse(pieces: &[&[u8]], limits: Limits) -> String {
    let mut out = String::new();
    let mut p = Parser::new(limits);
    let mut on = |s: &modelgate_core::prom::Sample<'_>| {
        let labels: Vec<_> = s.labels.iter().collect();
        out.push_str(&format!("{} {labels:?} {:?}\n", s.name, s.value));
    };
    for piece in pieces {
        if !p.feed(piece, &mut on) {
            break;
        }
    }
    let stats = p.finish(&mut on);
    assert!(stats.bytes <= limits.max_bytes);
    format!("{out}{stats:?}")
}

fn load(pieces: &[&[u8]], cfg: &ScrapeConfig) -> String {
    let mut r = MetricsReader::new(cfg);
    for piece in pieces {
        if !r.feed(piece) {
            break;
        }
    }
    format!("{:?}", r.finish())
}

fuzz_target!(|input: &[u8]| {
    thread_local! {
        static CFG: ScrapeConfig = ScrapeConfig::validate(
            &parse_json::<ScrapeConfigJson>(br#"{"cluster": "model_server", "max_body_bytes": 2048}"#)
                .expect("JSON"),
            "scrape",
        )
        .expect("config");
    }
    let (seed, data) = seed_and_data(input);
    let pieces = chunks(data, seed);
    for limits in [
        Limits::default(),
        Limits {
            max_bytes: 300,
            max_line_bytes: 40,
        },
    ] {
        assert_eq!(parse(&[data], limits), parse(&pieces, limits), "{limits:?}");
    }
    CFG.with(|cfg| assert_eq!(load(&[data], cfg), load(&pieces, cfg)));
});
