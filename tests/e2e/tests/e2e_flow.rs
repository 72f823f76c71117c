//! Flow control in a real Envoy: the shipped sidecar (envoy/sidecar.yaml, flow control on)
//! in front of one sim with 4 running slots, overloaded by two tenants — a heavy one
//! (standard and sheddable) and a light one (standard). Every request gets an answer (200,
//! or a 429 with a flow reason), none hangs; the light tenant is served
//! while the heavy one is held back; the server's own queue stays at the target; a client
//! that gives up leaves the queue at once.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use modelgate_e2e::*;
use serde_json::json;

const MODEL: &str = "sim-model";

struct Pod {
    port: u16,
    envoy: Envoy,
    sim: Sim,
}

/// `knob`: the chain's `allow_on_headers_stop_iteration` (shipped in envoy/sidecar.yaml;
/// Istio's WasmPlugin, istio/sidecar-chain.yaml, cannot set it).
fn start_pod(dir: &std::path::Path, knob: bool) -> Pod {
    let sim = Sim::start(
        dir,
        "sim",
        &[
            "--served-model-name",
            MODEL,
            "--max-num-seqs",
            "4",
            "--ttft-ms",
            "30",
            "--itl-ms",
            "10",
            "--max-tokens",
            "8",
        ],
    );
    let envoy = Shipped::sidecar(Ports::free(), sim.port, MODEL)
        .filter_field(
            "load_shedder",
            "allow_on_headers_stop_iteration",
            json!(knob),
        )
        .start(dir, "sidecar");
    let port = envoy.port;
    let up = wait_until(START_TIMEOUT, || {
        chat(port, "warmup", "standard").status == 200
    });
    assert!(up, "the pod never answered:\n{}", envoy.proc.log_text());
    Pod { port, envoy, sim }
}

fn chat(port: u16, tenant: &str, class: &str) -> Response {
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]});
    post_json(
        &format!("http://127.0.0.1:{port}/v1/chat/completions"),
        &body,
        &[
            ("x-modelgate-tenant", tenant),
            ("x-modelgate-criticality", class),
        ],
    )
}

/// (tenant, class, status, shed reason) of every finished request.
type Outcomes = Arc<Mutex<Vec<(&'static str, &'static str, u16, String)>>>;

fn client(
    port: u16,
    tenant: &'static str,
    class: &'static str,
    stop: Arc<AtomicBool>,
    out: Outcomes,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let r = chat(port, tenant, class);
            let reason = r.header("x-modelgate-shed").unwrap_or("").to_string();
            out.lock().unwrap().push((tenant, class, r.status, reason));
        }
    })
}

/// Held requests that ended with `outcome` (held, released, expired, abandoned, refused).
fn flow_outcome(envoy: &Envoy, outcome: &str) -> f64 {
    envoy.prometheus_sum(
        "modelgate_shedder_flow_requests_total",
        &[&format!("outcome=\"{outcome}\"")],
    )
}

fn sim_gauge(sim: &Sim, name: &str) -> f64 {
    get(&sim.url("/metrics"))
        .text()
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn overload_is_held_fairly_and_every_request_is_answered() {
    overload_is_held(true);
}

/// As Istio's WasmPlugin runs the chain: without the knob Envoy turns the held request's
/// pause into StopAll and keeps its body until the shedder resumes it.
#[test]
fn without_the_knob_as_in_istio_overload_is_held_and_answered() {
    overload_is_held(false);
}

fn overload_is_held(knob: bool) {
    let dir = scratch_dir(if knob { "flow" } else { "flow-noknob" });
    let pod = start_pod(&dir, knob);
    let stop = Arc::new(AtomicBool::new(false));
    let out: Outcomes = Arc::default();
    // Capacity is 4 running + 1 waiting: 14 clients are about three times that.
    let mut threads = Vec::new();
    for _ in 0..6 {
        threads.push(client(
            pod.port,
            "heavy",
            "standard",
            stop.clone(),
            out.clone(),
        ));
        threads.push(client(
            pod.port,
            "heavy",
            "sheddable",
            stop.clone(),
            out.clone(),
        ));
    }
    for _ in 0..2 {
        threads.push(client(
            pod.port,
            "light",
            "standard",
            stop.clone(),
            out.clone(),
        ));
    }
    // Watch the server's own queue while the load runs; meanwhile a client gives up on
    // held requests until one is seen leaving the queue (a probe may be answered before
    // it gives up, so it tries again, a bounded number of times).
    let mut max_waiting: f64 = 0.0;
    let mut probes = 0;
    let mut abandoned = 0.0;
    for i in 0..60 {
        std::thread::sleep(Duration::from_millis(200));
        max_waiting = max_waiting.max(sim_gauge(&pod.sim, "vllm:num_requests_waiting"));
        if i >= 20 && abandoned < 1.0 && probes < MAX_PROBES {
            probes += 1;
            if give_up(pod.port) {
                // Counted on the shedder's next tick.
                wait_until(Duration::from_secs(2), || {
                    abandoned = flow_outcome(&pod.envoy, "abandoned");
                    abandoned >= 1.0
                });
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    let out = out.lock().unwrap().clone();
    let count = |tenant: &str, class: &str, ok: bool| {
        out.iter()
            .filter(|(t, c, s, _)| *t == tenant && *c == class && (*s == 200) == ok)
            .count()
    };
    let summary = format!(
        "light standard {}/{}; heavy standard {}/{}; heavy sheddable {}/{}; server queue max {max_waiting}",
        count("light", "standard", true),
        count("light", "standard", true) + count("light", "standard", false),
        count("heavy", "standard", true),
        count("heavy", "standard", true) + count("heavy", "standard", false),
        count("heavy", "sheddable", true),
        count("heavy", "sheddable", true) + count("heavy", "sheddable", false),
    );
    println!("{summary}");
    // Every request was answered: 200, or a 429 of flow control; nothing else, no hang.
    for (tenant, class, status, reason) in &out {
        assert!(
            *status == 200
                || (*status == 429 && ["flow_timeout", "flow_full"].contains(&reason.as_str())),
            "{tenant} {class}: {status} {reason:?}\n{summary}"
        );
    }
    // Light tenant: served in turn with the heavy one, not behind its queue.
    let light_ok = count("light", "standard", true) as f64;
    let light_all = light_ok + count("light", "standard", false) as f64;
    assert!(
        light_all >= 10.0 && light_ok / light_all >= 0.95,
        "{summary}"
    );
    let light_rate = light_ok / 2.0;
    let heavy_rate = count("heavy", "standard", true) as f64 / 6.0;
    assert!(
        light_rate > heavy_rate,
        "per client, the light tenant should get more: {summary}"
    );
    // The server's queue stays at the target (1); critical traffic could exceed it.
    assert!(max_waiting <= 1.0, "{summary}");
    // A client that gave up left the queue at once.
    println!("abandoned {abandoned} after {probes} probes");
    assert!(
        abandoned >= 1.0,
        "no held request was counted abandoned after {probes} probes: {}",
        pod.envoy.prometheus_stats()
    );
    assert!(flow_outcome(&pod.envoy, "released") >= 1.0, "{summary}");
    let drained = wait_until(Duration::from_secs(30), || {
        pod.envoy
            .prometheus_sum("modelgate_shedder_flow_queued", &[])
            == 0.0
    });
    assert!(drained, "requests still held once the load is gone");
}

/// Abandoning probes at most (each takes 300 ms, or 2 s when it was not answered).
const MAX_PROBES: usize = 15;

/// Sends a request on a raw connection and closes it after 300 ms; true when no answer
/// came in that time (the request was held, or still running at the server). As the heavy
/// tenant's sheddable request it queues behind that tenant's held ones: a new tenant
/// would be served first.
fn give_up(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let body = format!(r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"hi"}}]}}"#);
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: pod\r\ncontent-type: application/json\r\n\
         x-modelgate-tenant: heavy\r\nx-modelgate-criticality: sheddable\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
    let mut buf = [0u8; 16];
    let answered = matches!(std::io::Read::read(&mut s, &mut buf), Ok(n) if n > 0);
    drop(s);
    !answered
}
