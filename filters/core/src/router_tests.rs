use super::*;

fn router(json: &str) -> Router {
    Router::parse(json.as_bytes()).unwrap()
}

const CONFIG: &str = r#"{
  "models": [
    {"name": "llama-3-8b", "criticality": "critical"},
    {"name": "qwen-2-7b", "aliases": ["qwen"], "criticality": "sheddable",
     "targets": [{"name": "qwen-2-7b", "weight": 3}, {"name": "qwen-2-7b-canary", "weight": 1}]},
    {"name": "chat", "aliases": ["gpt-4o", "gpt-4o-mini"], "targets": [{"name": "llama-3-8b"}]}
  ],
  "max_body_bytes": 4096
}"#;

fn head<'a>(method: &'a str, path: &'a str) -> RequestHead<'a> {
    RequestHead {
        method,
        path,
        content_type: Some("application/json"),
        content_length: None,
        end_of_stream: false,
    }
}

/// Runs a whole body through [`BodyRouting`] in the given pieces; returns the step and
/// the body after the edit.
fn route_pieces<'r>(
    r: &'r Router,
    body: &[u8],
    cuts: &[usize],
    seed: u64,
) -> (BodyStep<'r>, Vec<u8>) {
    let mut rng = Prng::new(seed);
    let mut br = BodyRouting::new(r);
    let mut start = 0;
    for (i, &end) in cuts.iter().enumerate() {
        let eos = i + 1 == cuts.len();
        // Like Envoy: the buffered body grows; we read only the bytes not yet consumed.
        let chunk = &body[br.consumed()..end];
        let step = br.feed(r, chunk, end, eos, &mut rng);
        start = end;
        match step {
            BodyStep::NeedMore => continue,
            BodyStep::Route(ref route) => {
                let out = match &route.edit {
                    Some(e) => e.apply(body),
                    None => body.to_vec(),
                };
                return (step, out);
            }
            other => return (other, body.to_vec()),
        }
    }
    let _ = start;
    panic!("never decided");
}

fn route_whole<'r>(r: &'r Router, body: &str) -> (BodyStep<'r>, Vec<u8>) {
    route_pieces(r, body.as_bytes(), &[body.len()], 1)
}

fn error_status(step: &BodyStep) -> u16 {
    match step {
        BodyStep::Error(e) => e.status,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn rewritten_model(out: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(out).unwrap();
    v["model"].as_str().unwrap().to_string()
}

#[test]
fn config_defaults_and_validation() {
    let r = router(r#"{"models":[{"name":"m"}]}"#);
    assert_eq!(r.max_body_bytes(), 1 << 20);
    assert_eq!(r.models()[0].targets[0].name, "m");
    assert_eq!(r.models()[0].criticality, Criticality::Standard);
    assert_eq!(r.inference_paths.len(), 4);

    let err = |json: &str| Router::parse(json.as_bytes()).unwrap_err().field;
    assert_eq!(err(r#"{"models":[]}"#), "models");
    assert_eq!(err(r#"{"models":[{"name":"m"}],"bogus":1}"#), "bogus");
    assert_eq!(
        err(r#"{"models":[{"name":"m","wieght":1}]}"#),
        "models[0].wieght"
    );
    assert_eq!(
        err(r#"{"models":[{"name":"m"},{"name":"n","weight":2}]}"#),
        "models[1].weight"
    );
    assert_eq!(
        err(r#"{"models":[{"name":"m","targets":[{"name":"t","weight":"2"}]}]}"#),
        "models[0].targets[0].weight"
    );
    assert_eq!(
        err(r#"{"models":[{"name":"m"},{"name":"n","aliases":["m"]}]}"#),
        "models[1].aliases[0]"
    );
    assert_eq!(err(r#"{"models":[{"name":""}]}"#), "models[0].name");
    assert_eq!(
        err(r#"{"models":[{"name":"m","criticality":"urgent"}]}"#),
        "models[0].criticality"
    );
    assert_eq!(
        err(r#"{"models":[{"name":"m","targets":[{"name":"a b"}]}]}"#),
        "models[0].targets[0].name"
    );
    assert_eq!(
        err(r#"{"models":[{"name":"m","targets":[{"name":"a","weight":0}]}]}"#),
        "models[0].targets"
    );
    assert_eq!(
        err(r#"{"models":[{"name":"m","targets":[{"name":"a","weight":2000000}]}]}"#),
        "models[0].targets[0].weight"
    );
    assert_eq!(
        err(r#"{"models":[{"name":"m"}],"default_model":"x"}"#),
        "default_model"
    );
    assert_eq!(
        err(r#"{"models":[{"name":"m"}],"inference_paths":["v1"]}"#),
        "inference_paths[0]"
    );
    assert_eq!(
        err(r#"{"models":[{"name":"m"}],"max_body_bytes":0}"#),
        "max_body_bytes"
    );
    assert_eq!(
        err(r#"{"models":[{"name":"m"}],"prefix_affinity":{"chars":0}}"#),
        "prefix_affinity.chars"
    );
    assert_eq!(
        err(r#"{"models":[{"name":"m"}],"models_path":"x"}"#),
        "models_path"
    );
}

#[test]
fn weighted_choice_matches_the_configured_split() {
    let r = router(
        r#"{"models":[{"name":"m","targets":[
            {"name":"a","weight":70},{"name":"b","weight":20},{"name":"c","weight":10},{"name":"d","weight":0}]}]}"#,
    );
    let mut rng = Prng::new(0x5eed);
    let mut counts = [0u32; 4];
    for _ in 0..10_000 {
        counts[r.choose(0, &mut rng)] += 1;
    }
    // Within 2 percentage points of 70/20/10, and nothing for weight 0.
    for (count, share) in counts.iter().zip([0.70, 0.20, 0.10, 0.0]) {
        let got = f64::from(*count) / 10_000.0;
        assert!((got - share).abs() < 0.02, "{counts:?}");
    }
    assert_eq!(counts[3], 0);
}

#[test]
fn weighted_choice_over_many_seeds() {
    let r = router(CONFIG);
    let q = r.resolve("qwen").unwrap();
    for seed in 0..20 {
        let mut rng = Prng::new(seed);
        let canary = (0..10_000).filter(|_| r.choose(q, &mut rng) == 1).count();
        assert!((2_200..=2_800).contains(&canary), "seed {seed}: {canary}");
    }
}

#[test]
fn headers_decisions() {
    let r = router(CONFIG);
    assert_eq!(
        r.on_headers(&head("POST", "/v1/chat/completions")),
        HeadersAction::ReadBody
    );
    assert_eq!(
        r.on_headers(&head("POST", "/v1/chat/completions?x=1")),
        HeadersAction::ReadBody
    );
    assert_eq!(
        r.on_headers(&head("POST", "/v1/other")),
        HeadersAction::PassThrough
    );
    assert_eq!(
        r.on_headers(&head("GET", "/v1/chat/completions")),
        HeadersAction::PassThrough
    );
    assert_eq!(
        r.on_headers(&head("POST", "/v1/models")),
        HeadersAction::PassThrough
    );
    assert_eq!(
        r.on_headers(&head("GET", "/healthz")),
        HeadersAction::PassThrough
    );

    let mut h = head("POST", "/v1/completions");
    h.content_type = Some("text/plain");
    assert!(matches!(r.on_headers(&h), HeadersAction::Error(e) if e.status == 415));
    h.content_type = Some("Application/JSON; charset=utf-8");
    assert_eq!(r.on_headers(&h), HeadersAction::ReadBody);
    h.content_type = Some("application/vnd.api+json");
    assert_eq!(r.on_headers(&h), HeadersAction::ReadBody);
    h.content_type = None;
    assert_eq!(r.on_headers(&h), HeadersAction::ReadBody);
    h.content_length = Some("4097");
    assert!(matches!(r.on_headers(&h), HeadersAction::Error(e) if e.status == 413));
    h.content_length = Some("4096");
    assert_eq!(r.on_headers(&h), HeadersAction::ReadBody);
    h.end_of_stream = true;
    assert!(matches!(r.on_headers(&h), HeadersAction::Error(e) if e.status == 400));
}

#[test]
fn models_list_and_retrieve() {
    let r = router(CONFIG);
    let HeadersAction::Reply(200, body) = r.on_headers(&head("GET", "/v1/models")) else {
        panic!()
    };
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["llama-3-8b", "qwen-2-7b", "chat"]);
    assert_eq!(v["data"][0]["object"], "model");
    assert_eq!(v["data"][0]["owned_by"], "modelgate");

    let HeadersAction::Reply(200, body) = r.on_headers(&head("GET", "/v1/models/qwen-2-7b")) else {
        panic!()
    };
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["id"], "qwen-2-7b");
    assert!(
        matches!(r.on_headers(&head("GET", "/v1/models/nope")), HeadersAction::Error(e) if e.status == 404)
    );

    let r = router(r#"{"models":[{"name":"org/m:1"}],"models_path":null}"#);
    assert_eq!(
        r.on_headers(&head("GET", "/v1/models")),
        HeadersAction::PassThrough
    );
    let r = router(r#"{"models":[{"name":"org/m:1"}]}"#);
    assert!(matches!(
        r.on_headers(&head("GET", "/v1/models/org%2Fm%3A1")),
        HeadersAction::Reply(200, _)
    ));
    assert!(matches!(
        r.on_headers(&head("GET", "/v1/models/org/m:1")),
        HeadersAction::Reply(200, _)
    ));
}

#[test]
fn same_name_stops_at_the_model_without_reading_on() {
    let r = router(CONFIG);
    let body = br#"{"model":"llama-3-8b","messages":[{"role":"user","content":"hi"}]}"#;
    let mut br = BodyRouting::new(&r);
    let mut rng = Prng::new(1);
    let step = br.feed(&r, &body[..30], 30, false, &mut rng);
    let BodyStep::Route(route) = step else {
        panic!("{step:?}")
    };
    assert_eq!(r.model(route.model).unwrap().name, "llama-3-8b");
    assert_eq!(route.edit, None);
    assert_eq!(route.prefix_hash, None);
    // Only up to the end of the model string was scanned.
    assert_eq!(br.consumed(), r#"{"model":"llama-3-8b""#.len());
}

#[test]
fn alias_is_rewritten_and_content_length_follows() {
    let r = router(CONFIG);
    let body =
        r#"{"stream":false,"model":"gpt-4o","messages":[{"role":"user","content":"héllo"}]}"#;
    let (step, out) = route_whole(&r, body);
    let BodyStep::Route(route) = step else {
        panic!("{step:?}")
    };
    assert_eq!(r.model(route.model).unwrap().name, "chat");
    let edit = route.edit.unwrap();
    assert_eq!(rewritten_model(&out), "llama-3-8b");
    assert_eq!(out.len(), edit.new_body_len(body.len()));
    assert_eq!(edit.keep, r#"{"stream":false,"model":"#.len());
    // Everything but the model is byte-identical.
    let expected = body.replace(r#""gpt-4o""#, r#""llama-3-8b""#);
    assert_eq!(String::from_utf8(out).unwrap(), expected);
}

#[test]
fn alias_is_rewritten_at_the_model_without_reading_on() {
    let r = router(CONFIG);
    let body = format!(
        r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(3000)
    );
    let mut br = BodyRouting::new(&r);
    // The first chunk only; the body has not ended.
    let step = br.feed(&r, &body.as_bytes()[..100], 100, false, &mut Prng::new(1));
    let BodyStep::Route(route) = step else {
        panic!("{step:?}")
    };
    let edit = route.edit.unwrap();
    assert_eq!(br.consumed(), r#"{"model":"gpt-4o""#.len());
    assert_eq!((edit.keep, edit.drop), (9, br.consumed()));
    let out = edit.apply(body.as_bytes());
    assert_eq!(rewritten_model(&out), "llama-3-8b");
    assert_eq!(out.len(), edit.new_body_len(body.len()));
}

#[test]
fn chunked_body_is_measured_after_the_route() {
    let r = router(CONFIG); // max_body_bytes 4096
    let mut br = BodyRouting::new(&r);
    let step = br.feed(
        &r,
        br#"{"model":"llama-3-8b","#,
        100,
        false,
        &mut Prng::new(1),
    );
    assert!(matches!(step, BodyStep::Route(_)), "{step:?}");
    assert_eq!(br.streamed(&r, 3996), None);
    let err = br.streamed(&r, 1).unwrap();
    assert_eq!((err.status, err.code), (413, "request_too_large"));
}

#[test]
fn escaped_model_names_resolve_and_need_no_rewrite_when_equal() {
    let r = router(CONFIG);
    let body = r#"{"model":"llama\u002d3-8b"}"#;
    let (step, out) = route_whole(&r, body);
    let BodyStep::Route(route) = step else {
        panic!("{step:?}")
    };
    assert_eq!(route.edit, None);
    assert_eq!(out, body.as_bytes());
}

#[test]
fn weighted_targets_rewrite_to_the_chosen_name() {
    let r = router(CONFIG);
    let body = r#"{"model":"qwen","prompt":"x"}"#;
    let mut seen = HashMap::new();
    for seed in 0..200 {
        let (step, out) = route_pieces(&r, body.as_bytes(), &[body.len()], seed);
        let BodyStep::Route(route) = step else {
            panic!("{step:?}")
        };
        let target = &r.model(route.model).unwrap().targets[route.target].name;
        assert_eq!(&rewritten_model(&out), target);
        *seen.entry(target.clone()).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
}

#[test]
fn every_chunk_boundary_gives_the_same_result() {
    let r = router(CONFIG);
    let bodies = [
        r#"{"messages":[{"role":"user","content":"a \"model\": \u00e9 😀"}],"model":"qwen","n":1}"#,
        r#"{"model":"llama-3-8b","messages":[]}"#,
        r#"{"model":"gpt-4o-mini","tools":[{"model":"x"}],"stream":true}"#,
        r#"{"model":"unknown-model"}"#,
        r#"{"model":12}"#,
        r#"{"model":"chat","x":[1,2,}"#,
        r#"{"prompt":"no model"}"#,
    ];
    for body in bodies {
        let b = body.as_bytes();
        let whole = route_pieces(&r, b, &[b.len()], 9);
        for cut in 1..b.len() {
            assert_eq!(
                route_pieces(&r, b, &[cut, b.len()], 9),
                whole,
                "{body} cut at {cut}"
            );
        }
        let bytes: Vec<usize> = (1..=b.len()).collect();
        assert_eq!(route_pieces(&r, b, &bytes, 9), whole, "{body} byte by byte");
    }
}

#[test]
fn errors_map_to_openai_statuses() {
    let r = router(CONFIG);
    let (step, _) = route_whole(&r, r#"{"model":"nope"}"#);
    match &step {
        BodyStep::Error(e) => {
            assert_eq!((e.status, e.code), (404, "model_not_found"));
            assert!(e.message.contains("nope"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(error_status(&route_whole(&r, "{not json").0), 400);
    assert_eq!(error_status(&route_whole(&r, r#"{"model":["a"]}"#).0), 400);
    assert_eq!(error_status(&route_whole(&r, r#"{"prompt":"x"}"#).0), 400);
    assert_eq!(error_status(&route_whole(&r, r#"["model"]"#).0), 400);
    // The route is given at the model: what follows it is the server's to validate.
    assert!(matches!(
        route_whole(&r, r#"{"model":"chat","x":}"#).0,
        BodyStep::Route(_)
    ));
    // ... but everything before it is checked.
    assert_eq!(
        error_status(&route_whole(&r, r#"{"x":,"model":"chat"}"#).0),
        400
    );
    // Over the limit while buffering.
    let mut br = BodyRouting::new(&r);
    let big = format!(r#"{{"prompt":"{}","model":"chat"}}"#, "x".repeat(5000));
    let step = br.feed(&r, big.as_bytes(), big.len(), true, &mut Prng::new(1));
    assert_eq!(error_status(&step), 413);
}

#[test]
fn default_model_is_inserted() {
    let r =
        router(r#"{"models":[{"name":"m","targets":[{"name":"real-m"}]}],"default_model":"m"}"#);
    let (step, out) = route_whole(&r, r#"{"prompt":"hi"}"#);
    assert!(matches!(step, BodyStep::Route(_)), "{step:?}");
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["model"], "real-m");
    assert_eq!(v["prompt"], "hi");
    let (_, out) = route_whole(&r, " { } ");
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["model"], "real-m");
    // An explicit unknown model is still 404.
    assert_eq!(error_status(&route_whole(&r, r#"{"model":"x"}"#).0), 404);
}

#[test]
fn criticality_can_only_be_lowered() {
    use Criticality::*;
    // The router never trusts the client's header: it may only lower the model's value.
    let eff = |configured, client| effective_criticality(client, configured, false);
    assert_eq!(eff(Standard, Some("sheddable")), Sheddable);
    assert_eq!(eff(Standard, Some("CRITICAL")), Standard);
    assert_eq!(eff(Critical, Some(" standard ")), Standard);
    assert_eq!(eff(Sheddable, Some("critical")), Sheddable);
    assert_eq!(eff(Critical, Some("bogus")), Critical);
    assert_eq!(eff(Critical, None), Critical);
    let r = router(CONFIG);
    assert_eq!(
        r.model(r.resolve("qwen").unwrap()).unwrap().criticality,
        Sheddable
    );
    assert_eq!(
        r.model(r.resolve("llama-3-8b").unwrap())
            .unwrap()
            .criticality,
        Critical
    );
}

/// The prefix hash of `body` under a router hashing `chars` characters (model optional).
fn hash_of(body: &str, chars: usize) -> Option<u64> {
    let r = router(&format!(
        r#"{{"models":[{{"name":"m"}}],"default_model":"m","prefix_affinity":{{"chars":{chars}}}}}"#
    ));
    match route_whole(&r, body).0 {
        BodyStep::Route(route) => route.prefix_hash,
        other => panic!("{other:?}"),
    }
}

#[test]
fn prefix_hash_covers_the_first_characters_of_the_prompt_text() {
    let chat = |system: &str, user: &str, later: &str| {
        serde_json::json!({"model":"m","messages":[
            {"role":"system","content":system},
            {"role":"user","content":user},
            {"role":"assistant","content":"ok"},
            {"role":"user","content":later}]})
        .to_string()
    };
    let h = |body: &str| hash_of(body, 32);
    let a = h(&chat(
        "You are helpful.",
        "Summarise the following document",
        "q1",
    ))
    .unwrap();
    // Later turns and text beyond N chars do not matter.
    assert_eq!(
        a,
        h(&chat(
            "You are helpful.",
            "Summarise the following document: ...",
            "q2"
        ))
        .unwrap()
    );
    assert_ne!(
        a,
        h(&chat(
            "You are terse.",
            "Summarise the following document",
            "q1"
        ))
        .unwrap()
    );
    // Escapes decode to the same text as raw characters; parts concatenate; other fields
    // (roles, part types, URLs) are not text.
    let escaped = r#"{"messages":[{"role":"system","content":"caf\u00e9"},{"role":"user","content":[{"type":"text","text":"hi"},{"type":"image_url","image_url":{"url":"x"}}]}]}"#;
    let raw = r#"{"messages":[{"role":"system","content":"café"},{"role":"user","content":"hi"}]}"#;
    assert_eq!(h(escaped), h(raw));
    // Completions, embeddings and responses shapes.
    assert_eq!(h(r#"{"prompt":"hello"}"#), h(r#"{"prompt":["hello"]}"#));
    assert_ne!(
        h(r#"{"prompt":"hello"}"#),
        h(r#"{"prompt":["hello","other"]}"#)
    );
    assert_eq!(h(r#"{"input":"hello"}"#), h(r#"{"prompt":"hello"}"#));
    assert!(h(r#"{"instructions":"sys","input":[{"role":"user","content":[{"type":"input_text","text":"u"}]}]}"#).is_some());
    assert_eq!(h(r#"{"model":"m"}"#), None);
    assert_eq!(h(r#"{"prompt":[1,2,3]}"#), None);
    assert_eq!(h(r#"{"model":"m","n":"not prompt text"}"#), None);
    // Lone surrogates hash as U+FFFD instead of failing the request.
    assert_eq!(h(r#"{"prompt":"a\ud800"}"#), h(r#"{"prompt":"a\ufffd"}"#));
}

#[test]
fn prefix_affinity_reads_only_the_prompt_prefix() {
    let r = router(r#"{"models":[{"name":"m"}],"prefix_affinity":{"chars":8}}"#);
    let body = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"0123456789{}"}}]}}"#,
        "x".repeat(5000)
    );
    let mut br = BodyRouting::new(&r);
    let step = br.feed(&r, body.as_bytes(), body.len(), false, &mut Prng::new(1));
    let BodyStep::Route(route) = step else {
        panic!("{step:?}")
    };
    assert_eq!(route.edit, None);
    assert_eq!(route.prefix_hash, hash_of(r#"{"prompt":"01234567"}"#, 8));
    // Read up to the ninth character of the content, not beyond.
    assert_eq!(body[..br.consumed()].rsplit('"').next(), Some("012345678"));
    // Every chunking gives the same decision.
    for cut in 1..200 {
        let whole = route_pieces(&r, body.as_bytes(), &[body.len()], 3);
        assert_eq!(
            route_pieces(&r, body.as_bytes(), &[cut, body.len()], 3),
            whole
        );
    }
}
