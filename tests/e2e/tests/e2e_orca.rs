//! Queue-aware balancing with ORCA: three modelgate-sim "pods" of different speed, each
//! behind its own sidecar Envoy (envoy/sidecar.yaml: readiness gate + load shedder, which
//! adds `endpoint-load-metrics` to responses), and a gateway (envoy/orca-gateway.yaml)
//! whose `pool` cluster uses client_side_weighted_round_robin. The slow pod gets clearly
//! less traffic than with round robin. The gateway's load shedder (gateway mode) sheds
//! sheddable requests while the pool's average utilisation is above its threshold.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use modelgate_e2e::*;
use serde_json::json;

const MODEL: &str = "sim-model";
const PODS: [(&str, &str); 3] = [("fast", "4"), ("medium", "8"), ("slow", "30")];
const CLIENTS: usize = 8;
/// Gateway saturation threshold for the test: the load keeps about 8 requests in the
/// pool, (8 / 3 pods) / capacity 32 = 0.08 average utilisation, twice this.
const SATURATION: &str = "0.04";

/// A pod: sim + sidecar from the shipped envoy/sidecar.yaml.
struct Pod {
    name: &'static str,
    port: u16,
    _envoy: Envoy,
    _sim: Sim,
}

fn start_pod(dir: &Path, name: &'static str, itl_ms: &str) -> Pod {
    let sim = Sim::start(
        dir,
        &format!("sim-{name}"),
        &[
            "--served-model-name",
            MODEL,
            "--pod-name",
            name,
            "--ttft-ms",
            "20",
            "--itl-ms",
            itl_ms,
            "--max-num-seqs",
            "8",
        ],
    );
    let envoy =
        Shipped::sidecar(Ports::free(), sim.port, MODEL).start(dir, &format!("sidecar-{name}"));
    let port = envoy.port;
    Pod {
        name,
        port,
        _envoy: envoy,
        _sim: sim,
    }
}

fn chat(port: u16, headers: &[(&str, &str)]) -> Response {
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]});
    post_json(
        &format!("http://127.0.0.1:{port}/v1/chat/completions"),
        &body,
        headers,
    )
}

/// Runs `CLIENTS` closed-loop clients for `duration`; returns requests per pod.
fn run_load(port: u16, lb: &'static str, duration: Duration) -> BTreeMap<String, usize> {
    let counts = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (counts, stop) = (counts.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let r = chat(port, &[("x-lb", lb)]);
                    assert_eq!(r.status, 200, "{}", r.text());
                    assert_eq!(
                        r.header("endpoint-load-metrics"),
                        None,
                        "the gateway leaked the ORCA report"
                    );
                    let pod = r.header("x-sim-pod").unwrap_or("?").to_string();
                    *counts.lock().unwrap().entry(pod).or_default() += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    Arc::try_unwrap(counts).unwrap().into_inner().unwrap()
}

fn share(counts: &BTreeMap<String, usize>, pod: &str) -> f64 {
    let total: usize = counts.values().sum();
    counts.get(pod).copied().unwrap_or(0) as f64 / total.max(1) as f64
}

fn split(counts: &BTreeMap<String, usize>) -> String {
    let total: usize = counts.values().sum();
    PODS.iter()
        .map(|(p, _)| {
            format!(
                "{p} {} ({:.0}%)",
                counts.get(*p).copied().unwrap_or(0),
                100.0 * share(counts, p)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
        + &format!(" of {total}")
}

#[test]
fn slow_pod_gets_less_traffic_with_orca_than_with_round_robin() {
    let dir = scratch_dir("orca");
    let pods: Vec<Pod> = PODS
        .iter()
        .map(|(name, itl)| start_pod(&dir, name, itl))
        .collect();
    for p in &pods {
        let ready = wait_until(Duration::from_secs(20), || chat(p.port, &[]).status == 200);
        assert!(ready, "pod {} did not become ready", p.name);
        let r = chat(p.port, &[]);
        assert!(
            r.header("endpoint-load-metrics").is_some(),
            "pod {} sends no ORCA report",
            p.name
        );
    }
    let ports = Ports::free();
    let gateway = Shipped::new(
        "orca-gateway.yaml",
        &[
            ("LISTEN_PORT", ports.listen.to_string()),
            ("ADMIN_PORT", ports.admin.to_string()),
            ("WASM_DIR", wasm_dir()),
            ("POD_A_PORT", pods[0].port.to_string()),
            ("POD_B_PORT", pods[1].port.to_string()),
            ("POD_C_PORT", pods[2].port.to_string()),
            ("SATURATION", SATURATION.to_string()),
        ],
    )
    .start(&dir, "gateway");
    let listen = gateway.port;

    let rr = run_load(listen, "rr", Duration::from_secs(6));
    println!("round robin:      {}", split(&rr));

    // Warm up: the pods report, the weights leave their blackout period.
    let warm = run_load(listen, "orca", Duration::from_secs(3));
    println!("ORCA (warm-up):   {}", split(&warm));

    // Measure, and meanwhile check the gateway's saturation shedding.
    let probe = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        let sheddable = chat(listen, &[("x-modelgate-criticality", "sheddable")]);
        let standard = chat(listen, &[]);
        (sheddable, standard)
    });
    let orca = run_load(listen, "orca", Duration::from_secs(8));
    println!("ORCA (measured):  {}", split(&orca));
    let (sheddable, standard) = probe.join().unwrap();

    let (rr_slow, orca_slow) = (share(&rr, "slow"), share(&orca, "slow"));
    let (rr_fast, orca_fast) = (share(&rr, "fast"), share(&orca, "fast"));
    println!(
        "slow pod share: round robin {:.1}% -> ORCA {:.1}%; fast pod {:.1}% -> {:.1}%",
        100.0 * rr_slow,
        100.0 * orca_slow,
        100.0 * rr_fast,
        100.0 * orca_fast
    );
    assert!(
        rr_slow > 0.25,
        "round robin should split evenly: {}",
        split(&rr)
    );
    assert!(
        orca_slow < 0.6 * rr_slow && orca_slow < 0.2,
        "ORCA did not move traffic off the slow pod: {} vs {}",
        split(&orca),
        split(&rr)
    );
    assert!(
        orca_fast > rr_fast + 0.1,
        "the fast pod should take the most: {}",
        split(&orca)
    );

    // Gateway mode: the pool was saturated (for this test's low threshold) under load.
    let stats = gateway.prometheus_stats();
    let pool_ppm = stats
        .lines()
        .find(|l| l.starts_with("modelgate_shedder_pool_utilization_ppm"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    println!(
        "gateway: sheddable under load -> {} {:?}, standard -> {}; pool utilisation {:.3}",
        sheddable.status,
        sheddable.header("x-modelgate-shed"),
        standard.status,
        pool_ppm / 1e6
    );
    assert_eq!(sheddable.status, 429, "{}", sheddable.text());
    assert_eq!(sheddable.header("x-modelgate-shed"), Some("pool_saturated"));
    assert_eq!(sheddable.json()["error"]["type"], "rate_limit_error");
    assert_eq!(standard.status, 200, "{}", standard.text());

    // Idle again: the reports expire and sheddable requests pass.
    let started = Instant::now();
    let passed = wait_until(Duration::from_secs(10), || {
        chat(listen, &[("x-modelgate-criticality", "sheddable")]).status == 200
    });
    assert!(
        passed,
        "sheddable still shed {:?} after the load",
        started.elapsed()
    );
}
