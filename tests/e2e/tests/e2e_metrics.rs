//! The metrics filter in a real Envoy in front of modelgate-sim, scraped by a real
//! Prometheus server (Debian's `prometheus`, 1 s interval) while traffic flows. Each metric
//! is then checked with a PromQL query over Prometheus' HTTP API: request counts equal the
//! requests sent (by model, code class, criticality), token counts equal what the sim
//! reported in its `usage` blocks (JSON and the final SSE chunk), shed/gated local replies
//! are counted by reason, the pod-level gauges follow the sim, and the recording rules of
//! `istio/alerts.yaml` give the seed's `*_seconds` / ratio names.
//!
//! The Envoy bootstrap carries `envoy/stats-tags.yaml` unchanged, so the shipped tag
//! extraction is what is tested. The readiness gate joins the chain when its wasm is in
//! dist/ (it feeds `ml_model_healthy` and the health-check latency).

use std::collections::BTreeMap;
use std::time::Duration;

use modelgate_e2e::*;
use serde_json::{json, Value};

const MODEL: &str = "sim-model";
const BROKEN_MODEL: &str = "broken-model";

/// One Envoy, two listeners: `main` (ml_metrics scraping the sim, the gate when built,
/// routes with direct 429/503 local replies marked like the shedder's and the gate's) and
/// `broken` (its own VM, scraping a dead port, for `ml_exporter_errors_total`).
fn bootstrap(admin: u16, main: u16, broken: u16, sim: u16, dead: u16, gate: bool) -> String {
    let metrics_cfg = json!({
        "models": [MODEL],
        "tick_period": "200ms",
        "scrape": {"cluster": "model_server", "period": "200ms", "timeout": "500ms"}
    });
    let broken_cfg = json!({
        "models": [MODEL],
        "model_name": BROKEN_MODEL,
        "tick_period": "200ms",
        "scrape": {"cluster": "dead", "period": "200ms", "timeout": "100ms"}
    });
    let with_routes = |l: Listener| {
        l.route(json!({
            "match": {"prefix": "/", "headers": [{"name": "x-test-reply", "string_match": {"exact": "shed"}}]},
            "direct_response": {"status": 429, "body": {"inline_string": "shed"}},
            "response_headers_to_add": [{"header": {"key": "x-modelgate-shed", "value": "queue"}}]
        }))
        .route(json!({
            "match": {"prefix": "/", "headers": [{"name": "x-test-reply", "string_match": {"exact": "gated"}}]},
            "direct_response": {"status": 503, "body": {"inline_string": "gated"}},
            "response_headers_to_add": [{"header": {"key": "x-modelgate-gated", "value": "not_ready"}}]
        }))
        .route_all_to("model_server", "0s")
    };
    let mut main_listener = with_routes(Listener::new("main", main)).filter(WasmFilter::new(
        "ml_metrics",
        "modelgate",
        &metrics_cfg,
    ));
    if gate {
        let gate_cfg = json!({
            "model": MODEL,
            "health": {"cluster": "model_server", "path": "/health"},
            "models_path": "/v1/models",
            "period": "200ms",
            "timeout": "150ms",
            "retry_after": "1s",
            "probe_path": "/modelgate/ready",
            "gated_prefixes": ["/v1/"]
        });
        main_listener =
            main_listener.filter(WasmFilter::new("readiness_gate", "modelgate", &gate_cfg));
    }
    let broken_listener = with_routes(Listener::new("broken", broken)).filter(WasmFilter::new(
        "ml_metrics",
        "modelgate-broken",
        &broken_cfg,
    ));
    Bootstrap::new(admin)
        // Histograms reach /stats/prometheus at each flush; flush often for the test.
        .stats_flush_interval("1s")
        .listener(main_listener)
        .listener(broken_listener)
        .cluster("model_server", sim)
        .cluster("dead", dead)
        .yaml()
}

/// `usage` of a JSON response or of the final chunk of an SSE stream.
fn usage_of(resp: &Response) -> (u64, u64) {
    let usage = if resp
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/event-stream"))
    {
        resp.text()
            .lines()
            .rev()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .find_map(|v| v.get("usage").cloned())
            .expect("stream has a usage chunk")
    } else {
        resp.json()["usage"].clone()
    };
    let n = |k: &str| usage[k].as_u64().expect("token count");
    (n("prompt_tokens"), n("completion_tokens"))
}

#[test]
fn prometheus_sees_every_metric_with_the_right_values() {
    let dir = scratch_dir("metrics");
    let sim = Sim::start(
        &dir,
        "sim",
        &[
            "--served-model-name",
            MODEL,
            "--ttft-ms",
            "50",
            "--itl-ms",
            "10",
            "--max-tokens",
            "8",
        ],
    );
    let gate = repo_root()
        .join("dist/readiness_gate.wasm")
        .exists()
        .then_some(());
    let (admin, main, broken, dead) = (free_port(), free_port(), free_port(), free_port());
    let yaml = bootstrap(admin, main, broken, sim.port, dead, gate.is_some());
    let envoy = Envoy::start(&dir, "envoy", &yaml, admin);
    let url = |path: &str| format!("http://127.0.0.1:{main}{path}");
    if gate.is_some() {
        assert!(
            wait_until(Duration::from_secs(15), || get(&url("/modelgate/ready"))
                .status
                == 200),
            "gate never ready:\n{}",
            envoy.proc.log_text()
        );
    }
    let prom = Prometheus::start(
        &dir,
        &[Target {
            addr: format!("127.0.0.1:{admin}"),
            path: "/stats/prometheus",
            labels: Vec::new(),
        }],
    );

    // Traffic, spread over a few seconds so Prometheus scrapes while it flows.
    let chat = |model: &str, stream: bool| {
        let mut body =
            json!({"model": model, "messages": [{"role": "user", "content": "hello there"}]});
        if stream {
            body["stream"] = json!(true);
            body["stream_options"] = json!({"include_usage": true});
        }
        body
    };
    let mut sent: BTreeMap<&str, u64> = BTreeMap::new();
    let (mut prompt, mut completion) = (0u64, 0u64);
    let (mut s_prompt, mut s_completion) = (0u64, 0u64);
    for i in 0..6 {
        let crit: &[(&str, &str)] = if i % 2 == 0 {
            &[("x-modelgate-criticality", "standard")]
        } else {
            &[]
        };
        let r = post_json(&url("/v1/chat/completions"), &chat(MODEL, false), crit);
        assert_eq!(r.status, 200, "{}", r.text());
        let (p, c) = usage_of(&r);
        prompt += p;
        completion += c;
        *sent.entry("json").or_default() += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    for _ in 0..4 {
        let r = post_json(
            &url("/v1/chat/completions"),
            &chat(MODEL, true),
            &[("x-modelgate-criticality", "critical")],
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let (p, c) = usage_of(&r);
        s_prompt += p;
        s_completion += c;
        *sent.entry("stream").or_default() += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    for _ in 0..2 {
        let r = post_json(
            &url("/v1/chat/completions"),
            &chat("no-such-model", false),
            &[],
        );
        assert_eq!(r.status, 404, "{}", r.text());
        *sent.entry("unknown").or_default() += 1;
    }
    for _ in 0..3 {
        let r = post_json(
            &url("/v1/chat/completions"),
            &chat(MODEL, false),
            &[
                ("x-test-reply", "shed"),
                ("x-modelgate-criticality", "sheddable"),
            ],
        );
        assert_eq!(r.status, 429);
        *sent.entry("shed").or_default() += 1;
    }
    for _ in 0..2 {
        let r = post_json(
            &url("/v1/chat/completions"),
            &chat(MODEL, false),
            &[("x-test-reply", "gated")],
        );
        assert_eq!(r.status, 503);
        *sent.entry("gated").or_default() += 1;
    }
    // Not inference requests: not counted.
    assert_eq!(get(&url("/v1/models")).status, 200);
    assert_eq!(get(&url("/health")).status, 200);
    let total: u64 = sent.values().sum();
    println!(
        "sent {sent:?}; sim usage: json {prompt}/{completion}, stream {s_prompt}/{s_completion}"
    );

    let m = format!(r#"model_name="{MODEL}",requested_model="{MODEL}""#);
    prom.expect("sum(ml_requests_total)", total as f64);
    prom.expect(
        &format!(r#"sum(ml_requests_total{{{m},code_class="2xx"}})"#),
        10.0,
    );
    prom.expect(
        &format!(r#"sum(ml_requests_total{{{m},code_class="2xx",criticality="standard"}})"#),
        3.0,
    );
    prom.expect(
        &format!(r#"sum(ml_requests_total{{{m},code_class="2xx",criticality="none"}})"#),
        3.0,
    );
    prom.expect(
        &format!(r#"sum(ml_requests_total{{{m},code_class="2xx",criticality="critical"}})"#),
        4.0,
    );
    prom.expect(
        r#"sum(ml_requests_total{model_name="other",requested_model="other",code_class="4xx"})"#,
        2.0,
    );
    prom.expect("sum(ml_request_duration_milliseconds_count)", total as f64);
    prom.expect(
        &format!(r#"sum(ml_tokens_total{{{m},type="prompt"}})"#),
        (prompt + s_prompt) as f64,
    );
    prom.expect(
        &format!(r#"sum(ml_tokens_total{{{m},type="completion"}})"#),
        (completion + s_completion) as f64,
    );
    prom.expect(
        &format!(r#"sum(ml_tokens_total{{{m},type="completion",criticality="critical"}})"#),
        s_completion as f64,
    );
    prom.expect(
        &format!(r#"sum(ml_time_to_first_token_milliseconds_count{{{m},criticality="critical"}})"#),
        4.0,
    );
    prom.expect(
        &format!(r#"sum(ml_time_per_output_token_milliseconds_count{{{m}}})"#),
        4.0,
    );
    prom.expect(
        r#"sum(ml_requests_shed_total{reason="queue",criticality="sheddable"})"#,
        3.0,
    );
    prom.expect(r#"sum(ml_requests_gated_total{reason="not_ready"})"#, 2.0);
    prom.expect(
        r#"sum(ml_requests_total{code_class="4xx",criticality="sheddable"})"#,
        3.0,
    );

    // Latencies match the sim's settings (ttft 50 ms, 10 ms per token), within reason.
    let ttft = prom.wait_for(
        &format!(r#"sum(ml_time_to_first_token_milliseconds_sum{{{m}}}) / sum(ml_time_to_first_token_milliseconds_count{{{m}}})"#),
        |v| v > 0.0,
    );
    let tpot = prom.wait_for(
        &format!(r#"sum(ml_time_per_output_token_milliseconds_sum{{{m}}}) / sum(ml_time_per_output_token_milliseconds_count{{{m}}})"#),
        |v| v > 0.0,
    );
    let p50 = prom.wait_for(
        &format!(r#"histogram_quantile(0.5, sum by (le) (ml_time_to_first_token_milliseconds_bucket{{{m}}}))"#),
        |v| v > 0.0,
    );
    println!("mean ttft {ttft:.1} ms (p50 {p50:.1}), mean time per output token {tpot:.1} ms");
    assert!((45.0..400.0).contains(&ttft), "ttft {ttft}");
    assert!((5.0..60.0).contains(&tpot), "tpot {tpot}");

    // Pod level: the scraper's snapshot (idle sim), the gate's checks, scrape errors.
    let pod = format!(r#"model_name="{MODEL}""#);
    prom.expect(&format!("ml_requests_running{{{pod}}}"), 0.0);
    prom.expect(&format!("ml_requests_waiting{{{pod}}}"), 0.0);
    prom.expect(&format!("ml_gpu_kv_cache_usage_ppm{{{pod}}}"), 0.0);
    prom.expect(&format!(r#"ml_model_info{{{pod},server="vllm"}}"#), 1.0);
    prom.wait_for(&format!(r#"ml_exporter_errors_total{{model_name="{BROKEN_MODEL}",type="connect"}} or ml_exporter_errors_total{{model_name="{BROKEN_MODEL}"}}"#), |v| v >= 1.0);
    if gate.is_some() {
        prom.expect(&format!("ml_model_healthy{{{pod}}}"), 1.0);
        let checks = prom.wait_for(
            &format!("ml_health_check_latency_milliseconds_count{{{pod}}}"),
            |v| v >= 3.0,
        );
        println!("health checks observed: {checks}");
    }

    // The seed's names, from the recording rules of istio/alerts.yaml.
    prom.expect("sum(ml_request_duration_seconds_count)", total as f64);
    let secs = prom.wait_for(
        &format!(r#"sum(ml_time_to_first_token_seconds_sum{{{m}}}) / sum(ml_time_to_first_token_seconds_count{{{m}}})"#),
        |v| v > 0.0,
    );
    assert!(
        (ttft / 1000.0 - secs).abs() < 0.05,
        "seconds {secs} vs ms {ttft}"
    );
    prom.expect(&format!("ml_gpu_kv_cache_usage{{{pod}}}"), 0.0);
    if gate.is_some() {
        prom.wait_for(
            &format!(r#"ml_health_check_latency_seconds_bucket{{{pod},le="+Inf"}}"#),
            |v| v >= 3.0,
        );
    }

    // Under load (4 running slots, 12 long streams) the queue gauges move.
    let load: Vec<_> = (0..12)
        .map(|_| {
            let u = url("/v1/chat/completions");
            std::thread::spawn(move || {
                let body = json!({"model": MODEL, "max_tokens": 150, "stream": true,
                                  "messages": [{"role": "user", "content": "long"}]});
                post_json(&u, &body, &[]).status
            })
        })
        .collect();
    for h in load {
        assert_eq!(h.join().expect("load thread"), 200);
    }
    for g in [
        "ml_requests_running",
        "ml_requests_waiting",
        "ml_gpu_kv_cache_usage_ppm",
    ] {
        let v = prom.wait_for(&format!("max_over_time({g}{{{pod}}}[1m])"), |v| v >= 1.0);
        println!("max {g} under load: {v}");
    }

    // The real gate: the sim turns unhealthy, the gate answers 503 marked `not_ready`.
    if gate.is_some() {
        let r = post_json(&sim.url("/sim/health"), &json!({"healthy": false}), &[]);
        assert_eq!(r.status, 200);
        let probe = url("/modelgate/ready");
        assert!(wait_until(Duration::from_secs(10), || get(&probe).status == 503));
        // Each worker's VM reads the gate's snapshot on its own tick (200 ms): let all see it.
        std::thread::sleep(Duration::from_secs(1));
        for _ in 0..2 {
            let r = post_json(&url("/v1/chat/completions"), &chat(MODEL, false), &[]);
            assert_eq!(r.status, 503, "{}", r.text());
        }
        prom.expect(r#"sum(ml_requests_gated_total{reason="not_ready"})"#, 4.0);
        prom.expect(&format!("ml_model_healthy{{{pod}}}"), 0.0);
    }

    // Labels are bounded: no series carries the unknown model's name.
    let text = envoy.prometheus_stats();
    assert!(
        !text.contains("no-such-model"),
        "unknown model leaked into labels"
    );
    assert!(text.contains("# TYPE ml_request_duration_milliseconds histogram"));
    assert!(text.contains("# TYPE ml_requests_total counter"));
    assert!(text.contains("# TYPE ml_requests_running gauge"));
}
