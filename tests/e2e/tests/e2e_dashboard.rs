//! The Grafana dashboard (`dashboards/modelgate.json`) against real data: the shipped
//! gateway and sidecar bootstraps (envoy/gateway.yaml, envoy/sidecar.yaml) in front of three
//! modelgate-sim pods, a modelgate-loader beside pod a, and Debian's Prometheus scraping all
//! of them with the rules of `istio/alerts.yaml`, labelled as Istio's pod scraping labels
//! them (gateway: namespace istio-system; pods: namespace models, pod). After routed,
//! streamed, refused, shed and gated traffic, every query of every panel must parse and
//! return at least one series.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use modelgate_e2e::*;
use serde_json::{json, Value};

struct Pod {
    name: &'static str,
    sim: Sim,
    port: u16,
    admin: u16,
    _envoy: Envoy,
}

fn start_pod(
    dir: &Path,
    name: &'static str,
    model: &str,
    sim_args: &[&str],
    loader: Option<u16>,
) -> Pod {
    let mut args = vec!["--served-model-name", model, "--pod-name", name];
    args.extend_from_slice(sim_args);
    let sim = Sim::start(dir, &format!("sim-{name}"), &args);
    let mut sidecar = Shipped::sidecar(Ports::free(), sim.port, model)
        // Shed at once: the shed panels need 429s within seconds, not after a TTL; flow
        // control has its own test (e2e_flow).
        .flow_control(false);
    if let Some(loader) = loader {
        sidecar = sidecar.loader(loader);
    }
    let envoy = sidecar.start(dir, &format!("sidecar-{name}"));
    let (port, admin) = (envoy.port, envoy.admin_port);
    Pod {
        name,
        sim,
        port,
        admin,
        _envoy: envoy,
    }
}

/// modelgate-loader serving a small local model, with its status server.
fn start_loader(dir: &Path) -> (u16, Proc) {
    let src = dir.join("model-src");
    fs::create_dir_all(&src).expect("model dir");
    fs::write(src.join("config.json"), r#"{"model_type": "demo"}"#).expect("config.json");
    fs::write(src.join("model.safetensors"), vec![7u8; 4096]).expect("weights");
    fs::create_dir_all(dir.join("models")).expect("models volume");
    let port = free_port();
    let mut cmd = Command::new(release_bin("modelgate-loader"));
    cmd.arg("--source")
        .arg(&src)
        .arg("--dest")
        .arg(dir.join("models").join("model"))
        .arg("--status-addr")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--progress")
        .arg("log");
    let mut proc = Proc::spawn("loader", cmd, dir);
    let ready = wait_until(Duration::from_secs(60), || {
        get(&format!("http://127.0.0.1:{port}/ready")).status == 200 || proc.try_exit().is_some()
    });
    assert!(
        ready && proc.try_exit().is_none(),
        "loader not ready:\n{}",
        proc.log_text()
    );
    (port, proc)
}

/// Every query of the dashboard, with Grafana's variables as an "All" selection would set
/// them: (panel title, PromQL).
fn dashboard_queries() -> Vec<(String, String)> {
    let text =
        fs::read_to_string(repo_root().join("dashboards/modelgate.json")).expect("dashboard");
    let dash: Value = serde_json::from_str(&text).expect("dashboard JSON");
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(vars, ["datasource", "scope", "model", "pod"], "variables");
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().into_iter().flatten() {
            assert_eq!(
                t["datasource"]["uid"], "${datasource}",
                "datasource variable"
            );
            let expr = t["expr"]
                .as_str()
                .expect("expr")
                .replace("$__rate_interval", "1m")
                .replace("$scope", "istio-system")
                .replace("$model", ".*")
                .replace("$pod", ".*");
            out.push((panel["title"].as_str().unwrap_or("?").to_string(), expr));
        }
    }
    out
}

fn chat(url: &str, model: &str, stream: bool, headers: &[(&str, &str)]) -> Response {
    let mut body = json!({"model": model, "messages": [{"role": "user", "content": "hello there"}],
                          "max_tokens": 4});
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    post_json(&format!("{url}/v1/chat/completions"), &body, headers)
}

#[test]
fn every_dashboard_query_returns_data_after_traffic() {
    let dir = scratch_dir("dashboard");
    let (loader_port, _loader) = start_loader(&dir);
    let fast = ["--ttft-ms", "5", "--itl-ms", "2", "--max-num-seqs", "64"];
    // Pod c is slow and serves one request at a time, so its queue fills and sheddable
    // requests are shed.
    let slow = [
        "--ttft-ms",
        "5",
        "--itl-ms",
        "100",
        "--max-num-seqs",
        "1",
        "--max-tokens",
        "20",
    ];
    let pods = [
        start_pod(&dir, "pod-a", "llama-3-8b", &fast, Some(loader_port)),
        start_pod(&dir, "pod-b", "llama-3-8b", &fast, None),
        start_pod(&dir, "pod-c", "qwen-2-7b", &slow, None),
    ];
    let gateway = Shipped::gateway(Ports::free(), [pods[0].port, pods[1].port, pods[2].port])
        .start(&dir, "gateway");
    let (listen, admin) = (gateway.port, gateway.admin_port);
    let gw = format!("http://127.0.0.1:{listen}");

    let target = |addr: String, path, namespace: &'static str, pod: &str| Target {
        addr,
        path,
        labels: vec![
            ("namespace", namespace.to_string()),
            ("pod", pod.to_string()),
        ],
    };
    let mut targets = vec![target(
        format!("127.0.0.1:{admin}"),
        "/stats/prometheus",
        "istio-system",
        "gateway",
    )];
    for p in &pods {
        targets.push(target(
            format!("127.0.0.1:{}", p.admin),
            "/stats/prometheus",
            "models",
            p.name,
        ));
    }
    targets.push(target(
        format!("127.0.0.1:{loader_port}"),
        "/metrics",
        "models",
        "pod-a",
    ));
    let prom = Prometheus::start(&dir, &targets);

    // Every pod ready (the gates poll every 500 ms).
    let ready = wait_until(Duration::from_secs(60), || {
        pods.iter()
            .all(|p| get(&format!("http://127.0.0.1:{}/modelgate/ready", p.port)).status == 200)
    });
    assert!(ready, "pods not ready");

    // Routed traffic through the gateway: JSON and streams, aliases, the split, a 404.
    for i in 0..12 {
        let r = chat(&gw, "llama3", i % 2 == 0, &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(chat(&gw, "qwen", true, &[]).status, 200);
    }
    for _ in 0..4 {
        chat(&gw, "gpt-4o-mini", true, &[]);
    }
    assert_eq!(chat(&gw, "no-such-model", false, &[]).status, 404);

    // Shed: a flood straight at pod c's sidecar (its `critical` counts as standard there:
    // the hop is not a trusted principal) keeps the server's queue deep; sheddable probes
    // are shed once a scrape sees it.
    let pod_c = format!("http://127.0.0.1:{}", pods[2].port);
    let flood: Vec<_> = (0..8)
        .map(|_| {
            let url = pod_c.clone();
            std::thread::spawn(move || {
                for _ in 0..4 {
                    chat(
                        &url,
                        "qwen-2-7b",
                        false,
                        &[("x-modelgate-criticality", "critical")],
                    );
                }
            })
        })
        .collect();
    let shed = wait_until(Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(200));
        let r = chat(
            &pod_c,
            "qwen-2-7b",
            false,
            &[("x-modelgate-criticality", "sheddable")],
        );
        eprintln!("sheddable probe at pod c: {} {}", r.status, r.text());
        r.status == 429
    });
    for f in flood {
        let _ = f.join();
    }
    assert!(shed, "pod c never shed");

    // Gated: pod b's server turns unhealthy; its gate answers 503 until it recovers.
    let health = |healthy: bool| {
        post_json(
            &pods[1].sim.url("/sim/health"),
            &json!({"healthy": healthy}),
            &[],
        )
        .status
    };
    assert_eq!(health(false), 200);
    let pod_b = format!("http://127.0.0.1:{}", pods[1].port);
    let gated = wait_until(Duration::from_secs(30), || {
        chat(&pod_b, "llama-3-8b", false, &[]).status == 503
    });
    assert!(gated, "pod b's gate never refused");
    assert_eq!(health(true), 200);

    // Every query parses and returns data (scrape 1 s, Envoy stats flush 5 s, rules 1 s).
    let mut missing = Vec::new();
    for (title, expr) in dashboard_queries() {
        let ok = prom
            .wait_for_series(&expr, Duration::from_secs(60))
            .is_some();
        println!("{title}: {expr} -> {}", if ok { "data" } else { "EMPTY" });
        if !ok {
            missing.push(format!("{title}: {expr}"));
        }
    }
    assert!(
        missing.is_empty(),
        "queries without data:\n{}",
        missing.join("\n")
    );
}
