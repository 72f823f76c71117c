//! The endpoint picker in the shipped gateway (envoy/gateway.yaml) with real Envoy: the
//! llama-3-8b pool's cluster uses override_host on the picker's header. A prefix stays on
//! one pod, prefixes spread over both, a client-sent destination header cannot steer, and
//! the decisions show up in /stats/prometheus.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use modelgate_e2e::*;
use serde_json::Value;

#[test]
fn the_picker_keeps_prefixes_on_pods_and_clients_cannot_steer() {
    let dir = scratch_dir("e2e-picker");
    let sims = [
        Sim::fast(&dir, "a", "llama-3-8b"),
        Sim::fast(&dir, "b", "llama-3-8b"),
        Sim::fast(&dir, "c", "qwen-2-7b"),
    ];
    let envoy = Shipped::gateway(Ports::free(), [sims[0].port, sims[1].port, sims[2].port])
        .start(&dir, "gateway");
    let url = format!("http://127.0.0.1:{}/v1/chat/completions", envoy.port);
    let chat = |body: &Value, headers: &[(&str, &str)]| {
        let r = post_json(&url, body, headers);
        assert_eq!(r.status, 200, "{}", r.text());
        r.header("x-sim-pod").unwrap_or("-").to_string()
    };

    // Each of 12 prefixes (longer than the hashed window) stays on one pod over 4
    // requests; together they use both pods.
    let mut home = HashMap::new();
    for i in 0..12 {
        let system = system_prompt(&format!("assistant number {i}"));
        let pods: HashSet<String> = (0..4)
            .map(|turn| chat(&conversation(&system, &format!("question {turn}")), &[]))
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
            &conversation(system, "again"),
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
