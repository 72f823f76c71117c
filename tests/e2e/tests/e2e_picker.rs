//! The endpoint picker in the shipped gateway (envoy/gateway.yaml) with real Envoy: the
//! llama-3-8b pool's cluster uses override_host on the picker's header. A prefix stays on
//! one pod, prefixes spread over both, a client-sent destination header cannot steer, and
//! the decisions show up in /stats/prometheus. With flow control (issue 16), a pool whose
//! pods are all saturated holds a request at the gateway and serves it when a pod has room.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use modelgate_e2e::*;
use serde_json::{json, Value};

/// The shipped gateway (its filters as one `chain` module), or the same filters as
/// separate modules.
fn gateway(sims: &[Sim; 3], separate: bool) -> Shipped {
    Shipped::gateway(Ports::free(), [sims[0].port, sims[1].port, sims[2].port])
        .as_separate(separate)
}

#[test]
fn the_picker_keeps_prefixes_on_pods_and_clients_cannot_steer() {
    keeps_prefixes_on_pods(false);
}

#[test]
fn as_a_separate_module_the_picker_keeps_prefixes_on_pods() {
    keeps_prefixes_on_pods(true);
}

fn keeps_prefixes_on_pods(separate: bool) {
    let dir = scratch_dir(if separate {
        "e2e-picker-separate"
    } else {
        "e2e-picker"
    });
    let sims = [
        Sim::fast(&dir, "a", "llama-3-8b"),
        Sim::fast(&dir, "b", "llama-3-8b"),
        Sim::fast(&dir, "c", "qwen-2-7b"),
    ];
    let envoy = gateway(&sims, separate).start(&dir, "gateway");
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

/// Six slow requests at once, with one request in flight saturating a pod: whichever way
/// Envoy's two workers split them (each counts its own in-flight), one worker has three
/// or more, so at least one request finds both pods saturated. It is held, then sent to
/// the first pod that finishes, and every request is served.
/// (The picker is the last stage of the shipped chain module.)
#[test]
fn a_saturated_pool_holds_a_request_then_serves_it() {
    holds_then_serves(false);
}

/// The picker as a separate module holds and resumes requests the same way.
#[test]
fn as_a_separate_module_the_picker_holds_a_request_then_serves_it() {
    holds_then_serves(true);
}

fn holds_then_serves(separate: bool) {
    let dir = scratch_dir(if separate {
        "e2e-picker-flow-separate"
    } else {
        "e2e-picker-flow"
    });
    let sims = [
        Sim::fast_with_ttft(&dir, "a", "llama-3-8b", 2000),
        Sim::fast_with_ttft(&dir, "b", "llama-3-8b", 2000),
        Sim::fast(&dir, "c", "qwen-2-7b"),
    ];
    let envoy = gateway(&sims, separate)
        // Standard (critical is never held), and one request in flight saturates a pod.
        .plugin_config("model_router", |c| {
            c["models"][0]["criticality"] = json!("standard");
        })
        .plugin_config("endpoint_picker", |c| {
            c["saturation"]["in_flight"] = json!(1);
        })
        .start(&dir, "gateway");
    let url = format!("http://127.0.0.1:{}/v1/chat/completions", envoy.port);
    let clients: Vec<_> = (0..6)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let body = conversation(&system_prompt(&format!("user {i}")), "hi");
                let r = post_json(&url, &body, &[("x-modelgate-tenant", "t")]);
                (r.status, r.text())
            })
        })
        .collect();
    for c in clients {
        let (status, text) = c.join().expect("client thread");
        assert_eq!(status, 200, "{text}");
    }
    let flow = |outcome: &str| {
        envoy.prometheus_sum(
            "ml_picker_flow_requests_total",
            &[
                &format!("outcome=\"{outcome}\""),
                "criticality=\"standard\"",
            ],
        )
    };
    let counted = wait_until(Duration::from_secs(20), || flow("released") >= 1.0);
    let stats = envoy.prometheus_stats();
    assert!(counted, "no request was held and released:\n{stats}");
    assert_eq!(flow("held"), flow("released"), "{stats}");
    assert_eq!(flow("expired") + flow("refused"), 0.0, "{stats}");
}
