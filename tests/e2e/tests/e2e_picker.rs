//! The endpoint picker in the shipped gateway (envoy/gateway.yaml) with real Envoy: the
//! llama-3-8b pool's cluster uses override_host on the picker's header. A prefix stays on
//! one pod, prefixes spread over both, a client-sent destination header cannot steer, and
//! the decisions show up in /stats/prometheus.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use modelgate_e2e::*;
use serde_json::{json, Value};

fn start_sim(dir: &Path, pod: &str, model: &str) -> Sim {
    Sim::start(
        dir,
        &format!("sim-{pod}"),
        &[
            "--served-model-name",
            model,
            "--pod-name",
            pod,
            "--ttft-ms",
            "1",
            "--itl-ms",
            "1",
            "--max-num-seqs",
            "64",
        ],
    )
}

fn convo(system: &str, later: &str) -> Value {
    json!({"model": "llama-3-8b", "max_tokens": 1, "messages": [
        {"role": "system", "content": system},
        {"role": "user", "content": "Summarise this document for me."},
        {"role": "assistant", "content": "Sure."},
        {"role": "user", "content": later}]})
}

#[test]
#[ignore = "fails since the router hashes the first N prompt characters in body order (prefix moves between pods); to fix"]
fn the_picker_keeps_prefixes_on_pods_and_clients_cannot_steer() {
    let dir = scratch_dir("e2e-picker");
    let sims = [
        start_sim(&dir, "a", "llama-3-8b"),
        start_sim(&dir, "b", "llama-3-8b"),
        start_sim(&dir, "c", "qwen-2-7b"),
    ];
    let (listen, admin) = (free_port(), free_port());
    let template = std::fs::read_to_string(repo_root().join("envoy/gateway.yaml")).unwrap();
    let wasm_dir = wasm("endpoint_picker")
        .parent()
        .unwrap()
        .display()
        .to_string();
    let yaml = render(
        &template,
        &[
            ("LISTEN_PORT", listen.to_string()),
            ("ADMIN_PORT", admin.to_string()),
            ("WASM_DIR", wasm_dir),
            ("POD_A_PORT", sims[0].port.to_string()),
            ("POD_B_PORT", sims[1].port.to_string()),
            ("POD_C_PORT", sims[2].port.to_string()),
        ],
    );
    let envoy = Envoy::start(&dir, "gateway", &yaml, admin);
    let url = format!("http://127.0.0.1:{listen}/v1/chat/completions");
    let chat = |body: &Value, headers: &[(&str, &str)]| {
        let r = post_json(&url, body, headers);
        assert_eq!(r.status, 200, "{}", r.text());
        r.header("x-sim-pod").unwrap_or("-").to_string()
    };

    // Each of 12 prefixes stays on one pod over 4 requests; together they use both pods.
    let mut home = HashMap::new();
    for i in 0..12 {
        let system = format!("You are assistant number {i}.");
        let pods: HashSet<String> = (0..4)
            .map(|turn| chat(&convo(&system, &format!("question {turn}")), &[]))
            .collect();
        assert_eq!(pods.len(), 1, "prefix {i} moved between pods: {pods:?}");
        home.insert(system, pods.into_iter().next().unwrap());
    }
    let used: HashSet<&String> = home.values().collect();
    assert_eq!(used.len(), 2, "{home:?}");

    // A client naming the other pod in the override_host header is ignored.
    let port_of = |pod: &str| {
        if pod == "a" {
            sims[0].port
        } else {
            sims[1].port
        }
    };
    for (system, pod) in &home {
        let other = if pod == "a" { "b" } else { "a" };
        let forged = format!("127.0.0.1:{}", port_of(other));
        let got = chat(
            &convo(system, "again"),
            &[("x-gateway-destination-endpoint", forged.as_str())],
        );
        assert_eq!(&got, pod, "the client steered {system:?} to {forged}");
    }

    // The decisions are counted per pod and reason (flushed on the picker's tick).
    let affinity = |stats: &str| -> u64 {
        stats
            .lines()
            .filter(|l| {
                l.starts_with("ml_picker_picks_total{") && l.contains("reason=\"affinity\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let counted = wait_until(Duration::from_secs(20), || {
        affinity(&envoy.prometheus_stats()) >= 60
    });
    let stats = envoy.prometheus_stats();
    assert!(counted, "picks not counted:\n{stats}");
    for sim in &sims[..2] {
        let series = format!("pod=\"127.0.0.1:{}\"", sim.port);
        assert!(
            stats
                .lines()
                .any(|l| l.starts_with("ml_picker_picks_total{") && l.contains(&series)),
            "no picks for {series}:\n{stats}"
        );
    }
}
