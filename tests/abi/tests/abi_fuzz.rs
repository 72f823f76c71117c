//! The shipped `.wasm` modules, with every shipped plugin configuration, driven through the
//! ABI host in random orders: several streams interleaved chunk by chunk (random cuts,
//! trailers, clients that go away mid-body), ticks with the clock moving, and the modules'
//! polls answered late, out of order, reset, timed out, or with garbage, `1e308`, `NaN` or
//! an enormous body. No module may trap, and every local reply is JSON. A second property:
//! the router forwards the same body and headers (or the same error) for any cut of the
//! body. Proptest with a fixed seed and case count: deterministic and fast (`make test`).

use modelgate_abi_tests::configs::{built_plugins, Plugin};
use modelgate_abi_tests::{Action, CallOutcome, Host, Vm};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, RngAlgorithm, TestRng, TestRunner};

const CASES: u32 = 24;

fn runner(cases: u32) -> TestRunner {
    let config = Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha))
}

const HEADER_SETS: &[&[(&str, &[u8])]] = &[
    &[
        (":method", b"POST"),
        (":path", b"/v1/chat/completions"),
        (":authority", b"gw"),
        ("content-type", b"application/json"),
    ],
    &[
        (":method", b"POST"),
        (":path", b"/v1/completions?x=1"),
        (":authority", b"gw"),
        ("content-type", b"application/json; charset=utf-8"),
        ("x-modelgate-criticality", b"sheddable"),
        ("content-length", b"99999999"),
    ],
    &[
        (":method", b"POST"),
        (":path", b"/v1/chat/completions"),
        (":authority", b"h\xe9"),
        ("content-type", b"text/plain\xff"),
        ("x-modelgate-criticality", b"\xc3\x28"),
        ("x-modelgate-model", b"\xf0\x28"),
    ],
    &[
        (":method", b"GET"),
        (":path", b"/v1/models"),
        (":authority", b"gw"),
    ],
    &[
        (":method", b"GET"),
        (":path", b"/modelgate/ready"),
        (":authority", b"gw"),
    ],
    &[
        (":method", b"POST"),
        (":path", b"//v1/chat/completions"),
        (":authority", b"gw"),
        ("content-type", b"application/json"),
        ("x-modelgate-criticality", b"critical"),
    ],
];

fn request_bodies() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = [
        &br#"{"model":"sim-model","messages":[{"role":"user","content":"hi"}],"stream":true}"#[..],
        br#"{"messages":[{"role":"system","content":"caf\u00e9 \"model\""}],"model":"llama3"}"#,
        br#"{"model":"chat","prompt":"x"}"#,
        br#"{"model":"qwen","model":"chat"}"#,
        br#"{"model":7}"#,
        br#"{"model": "sim-model", "#,
        b"",
        b"\xff\xfe{\"model\":\"\xc3\x28\"}",
        br#"[{"model":"sim-model"}]"#,
    ]
    .iter()
    .map(|b| b.to_vec())
    .collect();
    v.push(format!("{}1{}", "[".repeat(400), "]".repeat(400)).into_bytes());
    v.push(
        format!(
            r#"{{"messages":[{{"role":"user","content":"{}"}}],"model":"qwen"}}"#,
            "x".repeat(20_000)
        )
        .into_bytes(),
    );
    v
}

fn response_bodies() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("application/json", br#"{"choices":[{"message":{"content":"a"}}],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#.to_vec()),
        ("text/event-stream", b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1e308,\"completion_tokens\":-1}}\r\n\r\ndata: [DONE]\n\n".to_vec()),
        ("text/event-stream", b"data: \xff\xfe\n\n: x\ndata: {\"choices\":[{}]\n\n\n".to_vec()),
        ("application/json", b"not json \xff".to_vec()),
        ("text/plain", Vec::new()),
    ]
}

/// Answers to the modules' polls (health, model list, loader, metrics scrapes).
fn call_outcome(pick: u8, path: &str) -> CallOutcome {
    let metrics = |v: &str| {
        CallOutcome::text(
            200,
            &format!(
                "vllm:num_requests_running{{model_name=\"sim-model\"}} {v}\nvllm:num_requests_waiting{{model_name=\"sim-model\"}} {v}\nvllm:kv_cache_usage_perc{{model_name=\"sim-model\"}} {v}\n"
            ),
        )
    };
    match pick % 10 {
        0 | 1 if path.contains("models") => CallOutcome::json(
            200,
            r#"{"object":"list","data":[{"id":"sim-model","object":"model"}]}"#,
        ),
        0 | 1 if path.contains("ready") => {
            CallOutcome::json(200, r#"{"state":"ready","revision":"r1"}"#)
        }
        0 | 1 if path.contains("metrics") => metrics("3"),
        0 | 1 => CallOutcome::status(200),
        2 => metrics("1e308"),
        3 => metrics("NaN"),
        4 => CallOutcome::text(200, "garbage \u{fffd}\n{{{{ ]]] 1 2 3\n"),
        5 => CallOutcome::status(500),
        6 => CallOutcome::Reset,
        7 => CallOutcome::timeout(),
        8 => CallOutcome::connect_failure(),
        _ => CallOutcome::text(200, &"vllm:num_requests_waiting 1\n".repeat(200_000)),
    }
}

/// One client request's life, cut into steps another stream's steps can interleave with.
#[derive(Debug, Clone)]
struct Script {
    headers: usize,
    body: usize,
    req_cuts: Vec<usize>,
    req_trailers: bool,
    status: u16,
    response: usize,
    resp_cuts: Vec<usize>,
    resp_trailers: bool,
    /// The client goes away after this many steps (None: runs to the end).
    abandon_after: Option<usize>,
}

#[derive(Debug, Clone)]
enum Op {
    NewStream(Script),
    /// Advance the stream picked (modulo the live ones) by one step.
    Step(usize),
    Tick(u16),
    /// Answer the pending call picked (modulo the pending ones).
    Answer(usize, u8),
    ExpireCalls,
}

fn script() -> impl Strategy<Value = Script> {
    (
        0..HEADER_SETS.len(),
        0usize..11,
        prop::collection::vec(any::<usize>(), 0..5),
        any::<bool>(),
        prop_oneof![
            Just(200u16),
            Just(429),
            Just(500),
            Just(503),
            Just(101),
            Just(999)
        ],
        0usize..5,
        prop::collection::vec(any::<usize>(), 0..5),
        any::<bool>(),
        prop::option::weighted(0.2, 0usize..12),
    )
        .prop_map(|t| Script {
            headers: t.0,
            body: t.1,
            req_cuts: t.2,
            req_trailers: t.3,
            status: t.4,
            response: t.5,
            resp_cuts: t.6,
            resp_trailers: t.7,
            abandon_after: t.8,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => script().prop_map(Op::NewStream),
        6 => any::<usize>().prop_map(Op::Step),
        2 => (0u16..3000).prop_map(Op::Tick),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(i, o)| Op::Answer(i, o)),
        1 => Just(Op::ExpireCalls),
    ]
}

/// Cut points of `len` bytes from arbitrary numbers.
fn cuts_of(len: usize, raw: &[usize]) -> Vec<usize> {
    let mut c: Vec<usize> = raw.iter().map(|r| r % (len + 1)).collect();
    c.sort_unstable();
    c
}

fn chunks(body: &[u8], raw: &[usize]) -> Vec<(Vec<u8>, bool)> {
    let cuts = cuts_of(body.len(), raw);
    let mut out = Vec::new();
    let mut start = 0;
    for c in cuts {
        out.push((body[start..c].to_vec(), false));
        start = c;
    }
    out.push((body[start..].to_vec(), true));
    out
}

/// A stream's remaining steps.
enum Step {
    ReqHeaders(Vec<(String, Vec<u8>)>, bool),
    ReqBody(Vec<u8>, bool),
    ReqTrailers,
    RespHeaders(Vec<(String, Vec<u8>)>, bool),
    RespBody(Vec<u8>, bool),
    RespTrailers,
}

fn steps(s: &Script, req_bodies: &[Vec<u8>], resp_bodies: &[(&str, Vec<u8>)]) -> Vec<Step> {
    let headers: Vec<(String, Vec<u8>)> = HEADER_SETS[s.headers]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_vec()))
        .collect();
    let is_get = headers.iter().any(|(k, v)| k == ":method" && v == b"GET");
    let mut out = Vec::new();
    if is_get {
        out.push(Step::ReqHeaders(headers, true));
    } else {
        out.push(Step::ReqHeaders(headers, false));
        let body = &req_bodies[s.body % req_bodies.len()];
        let mut parts = chunks(body, &s.req_cuts);
        if s.req_trailers {
            if let Some(last) = parts.last_mut() {
                last.1 = false;
            }
        }
        out.extend(parts.into_iter().map(|(c, e)| Step::ReqBody(c, e)));
        if s.req_trailers {
            out.push(Step::ReqTrailers);
        }
    }
    let (ct, body) = &resp_bodies[s.response];
    let resp_headers = vec![
        (":status".to_string(), s.status.to_string().into_bytes()),
        ("content-type".to_string(), ct.as_bytes().to_vec()),
        (
            "endpoint-load-metrics".to_string(),
            b"TEXT application_utilization=1e308, rps_fractional=NaN".to_vec(),
        ),
    ];
    out.push(Step::RespHeaders(resp_headers, body.is_empty()));
    if !body.is_empty() {
        let mut parts = chunks(body, &s.resp_cuts);
        if s.resp_trailers {
            if let Some(last) = parts.last_mut() {
                last.1 = false;
            }
        }
        out.extend(parts.into_iter().map(|(c, e)| Step::RespBody(c, e)));
        if s.resp_trailers {
            out.push(Step::RespTrailers);
        }
    }
    out
}

fn refs(h: &[(String, Vec<u8>)]) -> Vec<(&str, &[u8])> {
    h.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect()
}

struct Live {
    id: u32,
    steps: std::collections::VecDeque<Step>,
    done: usize,
    abandon_after: Option<usize>,
}

fn check_local_reply(vm: &mut Vm, id: u32) {
    if let Some(r) = vm.stream(id).local_reply() {
        assert!(
            serde_json::from_slice::<serde_json::Value>(&r.body).is_ok(),
            "local reply {} is not JSON: {}",
            r.status,
            r.body_text()
        );
    }
}

fn run(plugin: &Plugin, ops: &[Op]) {
    let (req_bodies, resp_bodies) = (request_bodies(), response_bodies());
    let host = Host::new();
    let Ok(mut vm) = host
        .vm(&plugin.module)
        .root_id(&plugin.root_id)
        .vm_id(&plugin.vm_id)
        .configure(&plugin.configuration)
    else {
        return;
    };
    let mut live: Vec<Live> = Vec::new();
    for op in ops {
        match op {
            Op::NewStream(s) => {
                let id = vm.http().id();
                live.push(Live {
                    id,
                    steps: steps(s, &req_bodies, &resp_bodies).into(),
                    done: 0,
                    abandon_after: s.abandon_after,
                });
            }
            Op::Step(pick) if !live.is_empty() => {
                let i = pick % live.len();
                let l = &mut live[i];
                let abandoned = l.abandon_after.is_some_and(|n| l.done >= n);
                let step = if abandoned { None } else { l.steps.pop_front() };
                let Some(step) = step else {
                    let l = live.remove(i);
                    check_local_reply(&mut vm, l.id);
                    vm.stream(l.id).finish();
                    continue;
                };
                l.done += 1;
                let mut st = vm.stream(l.id);
                let _: Action = match step {
                    Step::ReqHeaders(h, eos) => st.request_headers_bytes(&refs(&h), eos),
                    Step::ReqBody(c, eos) => st.request_body(&c, eos),
                    Step::ReqTrailers => st.request_trailers(&[("x-t", "1")]),
                    Step::RespHeaders(h, eos) => st.response_headers_bytes(&refs(&h), eos),
                    Step::RespBody(c, eos) => st.response_body(&c, eos),
                    Step::RespTrailers => st.response_trailers(&[("grpc-status", "0")]),
                };
            }
            Op::Step(_) => {}
            Op::Tick(ms) => {
                host.advance_ms(u64::from(*ms));
                if vm.tick_period_ms() > 0 {
                    vm.tick();
                }
            }
            Op::Answer(pick, outcome) => {
                let pending = vm.pending_calls();
                if !pending.is_empty() {
                    let call = &pending[pick % pending.len()];
                    vm.answer(call.token, call_outcome(*outcome, &call.path()));
                }
            }
            Op::ExpireCalls => {
                vm.expire_calls();
            }
        }
    }
    // Everything still open ends (Envoy tears streams down on shutdown).
    for l in live {
        check_local_reply(&mut vm, l.id);
        vm.stream(l.id).finish();
    }
    vm.answer_all(|c| call_outcome(0, &c.path()));
    vm.shutdown();
}

#[test]
fn no_module_traps_in_any_callback_order() {
    let plugins = built_plugins();
    assert!(
        !plugins.is_empty(),
        "no shipped module with a shipped configuration"
    );
    let strategy = (0..plugins.len(), prop::collection::vec(op(), 1..60));
    let result = runner(CASES * plugins.len() as u32).run(&strategy, |(p, ops)| {
        run(&plugins[p], &ops);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The gateway's models, as in core's property tests and the `router_body` fuzz target.
const ROUTER: &str = include_str!("../../../filters/core/tests/data/router.json");

/// What the upstream (or the client, for an error) gets from the router.
fn routed(body: &[u8], cuts: &[usize]) -> String {
    let mut vm = Host::new()
        .vm("model_router")
        .configure(ROUTER)
        .expect("config");
    let mut req = vm.http();
    req.request_headers_bytes(HEADER_SETS[0], false);
    req.request_body_split(body, &cuts_of(body.len(), cuts));
    let out = match req.local_reply() {
        Some(r) => format!("reply {} {}", r.status, r.body_text()),
        None => format!(
            "forward {:?} {:?} {:?} {:?}",
            req.request_header("x-modelgate-model"),
            req.request_header("x-modelgate-prefix-hash"),
            req.request_header("content-length"),
            String::from_utf8_lossy(&req.forwarded_request_body())
        ),
    };
    req.finish();
    out
}

#[test]
fn router_forwards_the_same_for_any_cut_of_the_body() {
    let bodies = request_bodies();
    let strategy = (0..bodies.len(), prop::collection::vec(any::<usize>(), 1..6));
    let result = runner(CASES * 2).run(&strategy, |(b, cuts)| {
        let body = &bodies[b];
        let whole = routed(body, &[]);
        let cut = routed(body, &cuts);
        prop_assert_eq!(whole, cut);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
