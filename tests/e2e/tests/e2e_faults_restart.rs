//! Envoy itself changes while traffic flows (issue 13.2): a hot restart (`--base-id`,
//! `--restart-epoch`: the new process takes the listeners over, the old one drains and
//! exits) and filter reconfiguration (a new plugin configuration pushed through a
//! file-based LDS, then a broken one, which Envoy must refuse while serving on the last
//! good one). Clients see only 200s throughout; no VM fails; the heap stays bounded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use modelgate_e2e::faults::{report_and_check, Budget, FaultRow, FaultServer};
use modelgate_e2e::*;
use serde_json::json;

const MODEL: &str = "llama-3-8b";

fn router_config(extra_alias: Option<&str>) -> serde_json::Value {
    let mut aliases = vec!["llama3".to_string()];
    aliases.extend(extra_alias.map(str::to_string));
    json!({"models": [{"name": MODEL, "aliases": aliases}]})
}

fn listener(port: u16, router: &serde_json::Value) -> Listener {
    let metrics = json!({"models": [MODEL, "llama3", "fresh"]});
    Listener::new("main", port)
        .route_all_to("model_server", "30s")
        .filter(WasmFilter::new("ml_metrics", "modelgate", &metrics))
        .filter(WasmFilter::new("model_router", "modelgate", router))
}

fn chat(port: u16, model: &str) -> Response {
    post_json(
        &format!("http://127.0.0.1:{port}/v1/chat/completions"),
        &json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
        &[],
    )
}

/// Closed-loop clients sending good requests until `stop`; every answer is recorded.
fn traffic<'s>(
    s: &'s std::thread::Scope<'s, '_>,
    port: u16,
    clients: usize,
    stop: &'s AtomicBool,
    row: &'s Mutex<FaultRow>,
) {
    for _ in 0..clients {
        s.spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let r = chat(port, "llama3");
                row.lock().unwrap().record(&r, r.status == 200, "");
            }
        });
    }
}

#[test]
fn hot_restart_under_traffic_loses_no_request() {
    let budget = Budget::from_env();
    let dir = scratch_dir("faults-hot-restart");
    let server = FaultServer::start(MODEL);
    let port = free_port();
    let base_id = HotRestart::fresh_base_id();
    let config = |admin: u16| {
        Bootstrap::new(admin)
            .listener(listener(port, &router_config(None)))
            .cluster("model_server", server.port)
            .yaml()
    };
    let admin0 = free_port();
    let mut old = Envoy::start_hot(
        &dir,
        "epoch0",
        &config(admin0),
        admin0,
        HotRestart { base_id, epoch: 0 },
    );
    assert!(wait_until(Duration::from_secs(30), || chat(port, "llama3")
        .status
        == 200));
    let heap_before = old.memory_allocated();
    let stop = AtomicBool::new(false);
    let row = Mutex::new(FaultRow::new("hot restart (epoch 0 → 1) under load"));
    let mut new = None;
    std::thread::scope(|s| {
        traffic(s, port, budget.clients, &stop, &row);
        std::thread::sleep(Duration::from_secs(1));
        let admin1 = free_port();
        new = Some(Envoy::start_hot(
            &dir,
            "epoch1",
            &config(admin1),
            admin1,
            HotRestart { base_id, epoch: 1 },
        ));
        // The old generation drains and exits by itself (--parent-shutdown-time-s 4).
        let exited = old.proc.wait_exit(Duration::from_secs(30));
        assert!(
            exited.is_some(),
            "epoch 0 did not exit:\n{}",
            old.proc.log_text()
        );
        std::thread::sleep(Duration::from_secs(budget.seconds.min(10)));
        stop.store(true, Ordering::SeqCst);
    });
    let new = new.expect("epoch 1");
    let mut row = row.into_inner().unwrap();
    let start = Instant::now();
    assert!(wait_until(Duration::from_secs(10), || chat(port, "llama3")
        .status
        == 200));
    row.recovered_ms = Some(start.elapsed().as_millis());
    let heap_after = new.memory_allocated();
    report_and_check(
        "hot restart",
        std::slice::from_ref(&row),
        &[&new, &old],
        (heap_before, heap_after),
    );
}

#[test]
fn plugin_reconfiguration_under_traffic() {
    let budget = Budget::from_env();
    let dir = scratch_dir("faults-reconfigure");
    let server = FaultServer::start(MODEL);
    let (port, admin) = (free_port(), free_port());
    let lds = dir.join("lds").join("listeners.yaml");
    std::fs::create_dir_all(lds.parent().unwrap()).unwrap();
    let yaml = Bootstrap::new(admin)
        .dynamic_listeners(&lds)
        .listener(listener(port, &router_config(None)))
        .cluster("model_server", server.port)
        .yaml();
    let envoy = Envoy::start(&dir, "envoy", &yaml, admin);
    assert!(wait_until(Duration::from_secs(30), || chat(port, "llama3")
        .status
        == 200));
    assert_eq!(
        chat(port, "fresh").status,
        404,
        "`fresh` is not configured yet"
    );
    let heap_before = envoy.memory_allocated();
    let stop = AtomicBool::new(false);
    let row = Mutex::new(FaultRow::new(
        "plugin config pushed (LDS) under load, then a bad one",
    ));
    let rejected = |e: &Envoy| {
        e.stats()
            .get("listener_manager.lds.update_rejected")
            .copied()
            .unwrap_or(0)
    };
    std::thread::scope(|s| {
        traffic(s, port, budget.clients, &stop, &row);
        std::thread::sleep(Duration::from_secs(1));
        // A new router configuration (an alias added) goes live without dropping a request.
        Bootstrap::write_listeners(&[listener(port, &router_config(Some("fresh")))], &lds);
        let live = wait_until(Duration::from_secs(30), || {
            chat(port, "fresh").status == 200
        });
        assert!(
            live,
            "the new plugin configuration never took effect:\n{}",
            envoy.proc.log_text()
        );
        // A configuration the router rejects: Envoy refuses the update, keeps serving.
        let before = rejected(&envoy);
        let bad = json!({"models": [{"name": MODEL, "weight": 2}]});
        Bootstrap::write_listeners(&[listener(port, &bad)], &lds);
        let refused = wait_until(Duration::from_secs(30), || rejected(&envoy) > before);
        assert!(refused, "Envoy did not reject the bad plugin configuration");
        std::thread::sleep(Duration::from_secs(budget.seconds.min(10)));
        stop.store(true, Ordering::SeqCst);
    });
    assert_eq!(
        chat(port, "fresh").status,
        200,
        "the last good configuration is still in use"
    );
    let mut row = row.into_inner().unwrap();
    row.recovered_ms = Some(0);
    let heap_after = envoy.memory_allocated();
    report_and_check(
        "reconfiguration",
        std::slice::from_ref(&row),
        &[&envoy],
        (heap_before, heap_after),
    );
    assert!(
        envoy.proc.log_text().contains("field `weight`"),
        "the rejected configuration is logged with its field"
    );
}
