//! Properties of every streaming parser and decision in core that sees outside input: any
//! split of a body gives the same answer as the whole body (Envoy cuts bodies wherever the
//! network did), a rewrite routes to what it says, and numbers from upstreams stay finite.
//! The `cargo fuzz` targets in `fuzz/` check the same on arbitrary bytes; these run on
//! stable in `make test` with a fixed number of cases.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::unreachable
)]

use modelgate_core::config::{parse_json, FilterConfig};
use modelgate_core::json_scan::{ModelScanner, ScanError};
use modelgate_core::orca::parse_orca;
use modelgate_core::prng::Prng;
use modelgate_core::prom::{self, Limits, Parser};
use modelgate_core::router::{BodyRouting, BodyStep, Router};
use modelgate_core::scrape::{MetricsReader, ScrapeConfig, ScrapeConfigJson};
use modelgate_core::sse::SseParser;
use modelgate_core::usage::UsageScanner;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{json, Value};

/// The router configuration the property tests and the `router_body` fuzz target share.
const ROUTER: &str = include_str!("data/router.json");

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        // No files: the suite also runs on wasm32 without a filesystem.
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..ProptestConfig::default()
    }
}

/// Cuts `data` at the given offsets (taken modulo its length, sorted).
fn pieces<'a>(data: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    at.sort_unstable();
    let mut out = Vec::new();
    let mut start = 0;
    for c in at {
        out.push(&data[start..c]);
        start = c;
    }
    out.push(&data[start..]);
    out
}

/// JSON text with escapes, Unicode and the characters that matter to a scanner.
fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("\"".to_string()),
            Just("\\".to_string()),
            Just("model".to_string()),
            Just("\u{e9}\u{2603}\u{1F600}".to_string()),
            Just("\n\t\r".to_string()),
            "[a-z ]{0,12}",
        ],
        0..6,
    )
    .prop_map(|v| v.concat())
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e300f64..1e300).prop_map(Value::from),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::vec((text(), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Request bodies: OpenAI-like objects whose `model` is a served name, an alias, unknown,
/// not a string or missing, somewhere among other keys; sometimes broken or cut short.
fn request_body() -> impl Strategy<Value = Vec<u8>> {
    let model = prop_oneof![
        Just(Some(json!("llama-3-8b"))),
        Just(Some(json!("qwen"))),
        Just(Some(json!("chat"))),
        Just(Some(json!("meta-llama/Meta-Llama-3-8B-Instruct"))),
        text().prop_map(|t| Some(Value::from(t))),
        json_value().prop_map(Some),
        Just(None),
    ];
    let messages = prop::collection::vec(
        (
            prop_oneof![Just("system"), Just("user"), Just("assistant")],
            text(),
        ),
        0..4,
    );
    (
        model,
        messages,
        prop::collection::vec((text(), json_value()), 0..3),
        0usize..4,
        prop_oneof![
            4 => Just(None),
            1 => any::<u64>().prop_map(Some),
            1 => (any::<u64>(), any::<u8>()).prop_map(|(at, b)| Some(at ^ (u64::from(b) << 48))),
        ],
    )
        .prop_map(|(model, messages, extra, model_at, damage)| {
            let mut members: Vec<(String, Value)> = extra;
            members.push((
                "messages".into(),
                Value::from(
                    messages
                        .into_iter()
                        .map(|(r, c)| json!({"role": r, "content": c}))
                        .collect::<Vec<_>>(),
                ),
            ));
            if let Some(m) = model {
                members.insert(model_at.min(members.len()), ("model".into(), m));
            }
            let mut body = b"{".to_vec();
            for (i, (k, v)) in members.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(Value::from(k.as_str()).to_string().as_bytes());
                body.push(b':');
                body.extend_from_slice(v.to_string().as_bytes());
            }
            body.push(b'}');
            match damage {
                // Cut short (the high bits pick a replacement byte when set).
                Some(at) if at >> 48 == 0 => body.truncate((at % (body.len() as u64 + 1)) as usize),
                Some(at) => {
                    let i = ((at & 0xFFFF_FFFF) % body.len() as u64) as usize;
                    body[i] = (at >> 48) as u8;
                }
                None => {}
            }
            body
        })
}

#[derive(Debug, PartialEq)]
struct Scan {
    result: Result<(), ScanError>,
    model: Option<String>,
    span: Option<(usize, usize)>,
}

/// The prefix-affinity hash the router's scanner computes over a whole body.
fn prefix_hash(body: &[u8], chars: usize) -> Option<u64> {
    let mut s = ModelScanner::with_prefix_hash(chars);
    let _ = s.feed_all(body);
    s.prefix_hash()
}

fn scan(pieces: &[&[u8]]) -> Scan {
    let mut s = ModelScanner::new();
    for piece in pieces {
        match s.feed_all(piece) {
            Ok(n) => assert_eq!(n, piece.len(), "feed consumed nothing"),
            Err(_) => break,
        }
    }
    // An error is sticky: `finish` reports the first one.
    Scan {
        result: s.finish(),
        model: s.model().map(str::to_string),
        span: s.model_span(),
    }
}

/// The router's answer as Envoy would drive it: the buffered total grows chunk by chunk,
/// each call sees the bytes from `consumed()` on.
fn route(router: &Router, pieces: &[&[u8]]) -> (String, Option<Vec<u8>>) {
    let mut rng = Prng::new(11);
    let mut routing = BodyRouting::new(router);
    let mut buffered = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        buffered.extend_from_slice(piece);
        let eos = i + 1 == pieces.len();
        let from = routing.consumed();
        match routing.feed(router, &buffered[from..], buffered.len(), eos, &mut rng) {
            BodyStep::NeedMore => assert!(!eos, "NeedMore at the end of the body"),
            BodyStep::Error(e) => return (format!("error {e:?}"), None),
            BodyStep::Route(r) => {
                // The edit touches only the front; the rest streams through unchanged.
                let whole = pieces.concat();
                let body = r.edit.as_ref().map(|e| e.apply(&whole));
                let hash = r.prefix_hash;
                let target = router
                    .model(r.model)
                    .and_then(|m| m.targets.get(r.target))
                    .map(|t| t.name.clone());
                return (format!("route {target:?} {body:?} {hash:?}"), body);
            }
        }
    }
    unreachable!("the last piece has end_of_stream")
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn model_scan_is_the_same_for_any_split(body in request_body(), cuts in prop::collection::vec(any::<usize>(), 0..6)) {
        let whole = scan(&[&body]);
        let split = scan(&pieces(&body, &cuts));
        prop_assert_eq!(&whole.result, &split.result);
        if whole.result.is_ok() {
            prop_assert_eq!(&whole, &split);
        }
        // Whatever serde_json reads as an object with a string model, the scanner reads too.
        if let (Ok(Value::Object(map)), Ok(())) = (serde_json::from_slice::<Value>(&body), &whole.result) {
            match map.get("model") {
                Some(Value::String(m)) => prop_assert_eq!(whole.model.as_deref(), Some(m.as_str())),
                Some(other) => prop_assert!(false, "non-string model {other} accepted"),
                None => prop_assert_eq!(whole.model, None),
            }
        }
    }

    #[test]
    fn model_scan_of_any_bytes_is_the_same_for_any_split(body in prop::collection::vec(any::<u8>(), 0..200), cuts in prop::collection::vec(any::<usize>(), 0..6)) {
        let whole = scan(&[&body]);
        let split = scan(&pieces(&body, &cuts));
        prop_assert_eq!(&whole.result, &split.result);
    }

    #[test]
    fn routing_is_the_same_for_any_split(body in request_body(), cuts in prop::collection::vec(any::<usize>(), 0..6)) {
        let router = Router::parse(ROUTER.as_bytes()).expect("config");
        let whole = route(&router, &[&body]);
        let split = route(&router, &pieces(&body, &cuts));
        prop_assert_eq!(&whole.0, &split.0);
        // A rewritten body names the target it was routed to, and is still valid JSON.
        if let Some(rewritten) = whole.1 {
            let again = scan(&[&rewritten]);
            prop_assert_eq!(again.result, Ok(()));
            let target = again.model.expect("a rewritten body has a model");
            prop_assert!(whole.0.contains(&format!("Some({target:?})")), "{} vs {}", whole.0, target);
        }
    }

    #[test]
    fn prefix_hash_ignores_later_turns(system in text(), user in text(), later in text(), chars in 1usize..300) {
        // The hash covers the first `chars` characters of prompt text: later turns are
        // outside it once the first turns fill it.
        let stable = system.chars().count() + user.chars().count();
        prop_assume!(stable > 0);
        let chars = 1 + chars % stable;
        let convo = |extra: &str| json!({"messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
            {"role": "assistant", "content": extra},
            {"role": "user", "content": extra}]}).to_string();
        prop_assert_eq!(prefix_hash(convo("").as_bytes(), chars), prefix_hash(convo(&later).as_bytes(), chars));
    }

    #[test]
    fn sse_and_usage_are_the_same_for_any_split(
        events in prop::collection::vec((json_value(), any::<bool>(), 0u64..1_000_000, 0u64..1_000_000), 0..6),
        crlf in any::<bool>(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let nl = if crlf { "\r\n" } else { "\n" };
        let mut stream = String::new();
        for (v, usage, p, c) in &events {
            let data = if *usage {
                json!({"choices": [], "usage": {"prompt_tokens": p, "completion_tokens": c}})
            } else {
                json!({"choices": [{"delta": {"content": v}}]})
            };
            stream.push_str(&format!(": keep-alive{nl}data: {data}{nl}{nl}"));
        }
        stream.push_str(&format!("data: [DONE]{nl}{nl}"));
        let run = |parts: &[&[u8]]| {
            let mut p = SseParser::new();
            let (mut tokens, mut usage, mut done) = (0, None, false);
            let mut steps: Vec<_> = parts.iter().map(|c| p.feed(c)).collect();
            steps.push(p.finish());
            for s in steps {
                tokens += s.token_events;
                usage = s.usage.or(usage);
                done |= s.done;
            }
            (tokens, usage, done)
        };
        let whole = run(&[stream.as_bytes()]);
        prop_assert_eq!(whole, run(&pieces(stream.as_bytes(), &cuts)));
        prop_assert!(whole.2, "[DONE] not seen");
        let expected_tokens = events.iter().filter(|e| !e.1).count() as u32;
        prop_assert_eq!(whole.0, expected_tokens);
        if let Some((_, _, p, c)) = events.iter().rev().find(|e| e.1) {
            let u = whole.1.expect("usage chunk");
            prop_assert_eq!((u.prompt_tokens, u.completion_tokens), (*p, *c));
        }
        // The JSON (non-streaming) response path: one document, any split.
        let doc = json!({"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": 3, "completion_tokens": 4}, "extra": events.first().map(|e| e.0.clone())}).to_string();
        let usage = |parts: &[&[u8]]| {
            let mut u = UsageScanner::new();
            for p in parts {
                u.feed(p);
            }
            (u.usage(), u.choices_nonempty(), u.broken())
        };
        let whole = usage(&[doc.as_bytes()]);
        prop_assert_eq!(whole, usage(&pieces(doc.as_bytes(), &cuts)));
        let u = whole.0.expect("usage");
        prop_assert_eq!((u.prompt_tokens, u.completion_tokens), (3, 4));
    }

    #[test]
    fn prometheus_text_is_the_same_for_any_split(
        lines in prop::collection::vec(prop_oneof![
            (0u8..4, any::<f64>()).prop_map(|(m, v)| format!("{}{{model_name=\"m\"}} {v:?}", ["vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc", "other_metric"][m as usize])),
            Just("vllm:num_requests_waiting 1e308".to_string()),
            Just("vllm:num_requests_running NaN".to_string()),
            Just("# HELP x y".to_string()),
            "[ -~]{0,40}",
        ], 0..12),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let body = lines.join("\n");
        let parse = |parts: &[&[u8]], limits: Limits| {
            let mut out = Vec::new();
            let mut p = Parser::new(limits);
            let mut on = |s: &prom::Sample<'_>| out.push(format!("{} {:?} {:?}", s.name, s.labels.iter().collect::<Vec<_>>(), s.value));
            for part in parts {
                if !p.feed(part, &mut on) {
                    break;
                }
            }
            let stats = p.finish(&mut on);
            (out, stats)
        };
        let split = pieces(body.as_bytes(), &cuts);
        for limits in [Limits::default(), Limits { max_bytes: 200, max_line_bytes: 30 }] {
            prop_assert_eq!(parse(&[body.as_bytes()], limits), parse(&split, limits));
        }
        let raw: ScrapeConfigJson = parse_json(br#"{"cluster": "model_server"}"#).expect("JSON");
        let cfg = ScrapeConfig::validate(&raw, "scrape").expect("config");
        let load = |parts: &[&[u8]]| {
            let mut r = MetricsReader::new(&cfg);
            for p in parts {
                r.feed(p);
            }
            format!("{:?}", r.finish())
        };
        prop_assert_eq!(load(&[body.as_bytes()]), load(&split));
    }

    #[test]
    fn orca_reports_are_finite(u in any::<f64>(), r in any::<f64>(), junk in "[ -~]{0,20}") {
        for value in [
            format!("TEXT application_utilization={u:?}, rps_fractional={r:?}"),
            format!("TEXT cpu_utilization={u:e}, {junk}"),
            format!("TEXT {junk}"),
        ] {
            if let Some(report) = parse_orca(&value) {
                prop_assert!(report.utilization.is_finite() && report.utilization >= 0.0, "{value}: {report:?}");
                prop_assert!(report.rps.is_none_or(|x| x.is_finite() && x >= 0.0), "{value}: {report:?}");
            }
        }
    }
}
