//! The load shedder in a real Envoy in front of modelgate-sim (one running slot, so a
//! burst fills its queue): sheddable requests get 429 + Retry-After + an OpenAI
//! `rate_limit_error` (the official client raises `RateLimitError`) while every critical
//! request succeeds; a client cannot raise its criticality; the in-flight cap and a stale
//! scrape shed on their own; the ORCA header rides on responses; one scrape per period
//! for the whole proxy; counters by reason in /stats/prometheus.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use modelgate_e2e::*;
use serde_json::json;

const MODEL: &str = "sim-model";
const SCRAPE_PERIOD_MS: u64 = 100;
const DEAD_SCRAPE_PERIOD_MS: u64 = 200;

/// Three listeners, each with its own load_shedder configuration:
/// - `a` (vm "modelgate"): default critical, so unlabelled load is critical and clients
///   lower themselves with the header; IE defaults (sheddable queue 5).
/// - `b` (vm "modelgate", same scrape block, so it shares a's lease and snapshot):
///   default standard, the header is not trusted, standard sheds above queue 6.
/// - `c` (vm "modelgate-c", its own shared data): scrapes a dead port (stale from the
///   start, `on_stale: shed_sheddable`) and caps standard requests at 3 in flight.
fn bootstrap(admin: u16, ports: [u16; 3], sim: u16, dead: u16) -> String {
    let scrape = json!({"cluster": "model_server", "period": format!("{SCRAPE_PERIOD_MS}ms"), "timeout": "500ms"});
    let a = json!({"scrape": scrape, "default_criticality": "critical", "retry_after": "2s"});
    let b = json!({"scrape": scrape, "default_criticality": "standard",
                   "thresholds": {"standard": {"queue": 6}}});
    let c = json!({"scrape": {"cluster": "dead", "period": format!("{DEAD_SCRAPE_PERIOD_MS}ms"), "timeout": "100ms"},
                   "on_stale": "shed_sheddable",
                   "thresholds": {"standard": {"max_in_flight": 3}, "sheddable": {"max_in_flight": 3}}});
    let listener = |name: &str, port: u16, vm: &str, config: &serde_json::Value| {
        Listener::new(name, port)
            .route_all_to("model_server", "60s")
            .filter(WasmFilter::new("load_shedder", vm, config))
    };
    Bootstrap::new(admin)
        .listener(listener("a", ports[0], "modelgate", &a))
        .listener(listener("b", ports[1], "modelgate", &b))
        .listener(listener("c", ports[2], "modelgate-c", &c))
        .cluster("model_server", sim)
        .cluster("dead", dead)
        .yaml()
}

fn chat(port: u16, criticality: Option<&str>, max_tokens: u32) -> Response {
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens});
    let mut headers = vec![];
    if let Some(c) = criticality {
        headers.push(("x-modelgate-criticality", c));
    }
    post_json(
        &format!("http://127.0.0.1:{port}/v1/chat/completions"),
        &body,
        &headers,
    )
}

/// A 429 the shedder answered itself, for `reason`.
fn assert_shed(r: &Response, reason: &str) {
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(
        r.header("x-modelgate-shed"),
        Some(reason),
        "{:?}",
        r.headers
    );
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.header("x-sim-pod"),
        None,
        "the request reached the model server"
    );
    let v = r.json();
    assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
    assert_eq!(v["error"]["code"], "overloaded", "{v}");
}

fn sim_gauge(sim: &Sim, name: &str) -> f64 {
    let text = get(&sim.url("/metrics")).text();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Sum of a Prometheus series (all label sets matching every `labels` entry).
fn stat(envoy: &Envoy, name: &str, labels: &[&str]) -> f64 {
    envoy
        .prometheus_stats()
        .lines()
        .filter(|l| {
            l.starts_with(name)
                && (l.len() == name.len() || l[name.len()..].starts_with(['{', ' ']))
        })
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Closed-loop clients sending unlabelled (so critical on listener a) requests.
struct Load {
    stop: Arc<AtomicBool>,
    statuses: Arc<Mutex<Vec<u16>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(port: u16, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let statuses = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|_| {
                let (stop, statuses) = (stop.clone(), statuses.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let r = chat(port, None, 4);
                        statuses.lock().unwrap().push(r.status);
                    }
                })
            })
            .collect();
        Load {
            stop,
            statuses,
            threads,
        }
    }

    fn finish(self) -> Vec<u16> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        Arc::try_unwrap(self.statuses)
            .unwrap()
            .into_inner()
            .unwrap()
    }
}

const OPENAI_CHECK: &str = r#"
import sys, openai
client = openai.OpenAI(base_url=sys.argv[1], api_key="unused", max_retries=0)
try:
    client.chat.completions.create(model="sim-model", messages=[{"role": "user", "content": "hi"}],
                                   max_tokens=4, extra_headers={"x-modelgate-criticality": "sheddable"})
    print("no error"); sys.exit(1)
except openai.RateLimitError as e:
    print("RateLimitError", e.status_code, e.response.headers.get("retry-after"), e.body.get("type") if isinstance(e.body, dict) else e.body)
"#;

#[test]
fn sheds_sheddable_under_a_full_queue_and_never_critical() {
    let dir = scratch_dir("shedder");
    // One running slot and slow tokens: a dozen clients keep about ten requests waiting.
    let sim = Sim::start(
        &dir,
        "sim",
        &[
            "--served-model-name",
            MODEL,
            "--max-num-seqs",
            "1",
            "--ttft-ms",
            "30",
            "--itl-ms",
            "20",
        ],
    );
    let (admin, ports, dead) = (
        free_port(),
        [free_port(), free_port(), free_port()],
        free_port(),
    );
    let yaml = bootstrap(admin, ports, sim.port, dead);
    let envoy = Envoy::start(&dir, "envoy", &yaml, admin);
    let [a, b, c] = ports;

    // Idle: everything passes, with an ORCA load report for the gateway.
    assert!(wait_until(Duration::from_secs(5), || chat(
        a,
        Some("sheddable"),
        2
    )
    .header("endpoint-load-metrics")
    .is_some()));
    let r = chat(a, Some("sheddable"), 2);
    assert_eq!(r.status, 200, "{}", r.text());
    let orca = r.header("endpoint-load-metrics").unwrap().to_string();
    println!("idle ORCA report: {orca}");
    assert!(orca.starts_with("TEXT application_utilization="), "{orca}");
    let field = |name: &str| -> f64 {
        let rest = orca.split(&format!("{name}=")).nth(1).unwrap();
        rest.split(',').next().unwrap().trim().parse().unwrap()
    };
    let rps = field("rps_fractional");
    // The queue, for the endpoint picker: idle but for this request.
    assert!(field("named_metrics.queue") <= 1.0, "{orca}");
    assert!(
        rps > 0.0,
        "Envoy ignores reports without a positive rps_fractional: {orca}"
    );

    // Listener c: the scrape never succeeds, so sheddable is shed as stale, standard passes.
    assert_shed(&chat(c, Some("sheddable"), 2), "stale");
    assert_eq!(chat(c, None, 2).status, 200);

    // Listener c: at most 3 standard requests in flight (long requests, staggered starts
    // so every worker has published its count before the next one arrives).
    let handles: Vec<_> = (0..6)
        .map(|i| {
            std::thread::sleep(Duration::from_millis(if i == 0 { 0 } else { 250 }));
            std::thread::spawn(move || chat(c, None, 40))
        })
        .collect();
    let capped: Vec<Response> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = capped.iter().filter(|r| r.status == 200).count();
    let shed: Vec<&Response> = capped.iter().filter(|r| r.status == 429).collect();
    println!(
        "in-flight cap 3, 6 staggered requests: {ok} x 200, {} x 429",
        shed.len()
    );
    assert_eq!(ok + shed.len(), 6);
    assert!(ok >= 3, "the cap admitted fewer than 3");
    assert!(!shed.is_empty(), "the cap never shed");
    for r in shed {
        assert_shed(r, "concurrency");
    }

    // Fill the queue with critical load.
    let attempts_before = stat(&envoy, "modelgate_scrape_attempts_total", &[]);
    let window = Instant::now();
    let load = Load::start(a, 12);
    let full = wait_until(Duration::from_secs(10), || {
        sim_gauge(&sim, "vllm:num_requests_waiting") >= 8.0
    });
    assert!(full, "the sim's queue did not fill");
    std::thread::sleep(Duration::from_millis(3 * SCRAPE_PERIOD_MS));

    // Sheddable: all 429, never reaching the server.
    let mut sheddable = Vec::new();
    for _ in 0..20 {
        sheddable.push(chat(a, Some("sheddable"), 2));
        std::thread::sleep(Duration::from_millis(50));
    }
    let shed_count = sheddable.iter().filter(|r| r.status == 429).count();
    println!(
        "queue full (waiting {}): sheddable {shed_count}/20 shed",
        sim_gauge(&sim, "vllm:num_requests_waiting")
    );
    for r in &sheddable {
        assert_shed(r, "queue");
    }
    let retry = sheddable[0].header("retry-after").unwrap().to_string();
    assert_eq!(retry, "2");

    // A client claiming critical without a router is standard: shed on b (queue > 6).
    for _ in 0..5 {
        assert_shed(&chat(b, Some("critical"), 2), "queue");
    }

    // The official client raises RateLimitError.
    let out = Command::new(repo_root().join("tools/venv/bin/python"))
        .arg("-c")
        .arg(OPENAI_CHECK)
        .arg(format!("http://127.0.0.1:{a}/v1"))
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("openai client: {}", stdout.trim());
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("RateLimitError 429 2 rate_limit_error"),
        "{stdout}"
    );

    let critical = load.finish();
    let elapsed_ms = window.elapsed().as_millis() as f64;
    let attempts = stat(&envoy, "modelgate_scrape_attempts_total", &[]) - attempts_before;
    let failed = critical.iter().filter(|s| **s != 200).count();
    println!(
        "critical under load: {} requests, {failed} not 200",
        critical.len()
    );
    assert!(critical.len() >= 20, "too little load: {}", critical.len());
    assert_eq!(failed, 0, "critical requests failed: {critical:?}");

    // One scrape per period for the whole proxy: vm "modelgate" (2 workers x 2 filters)
    // every 100 ms plus vm "modelgate-c" (2 workers) every 200 ms, not once per root context.
    let expected = elapsed_ms / SCRAPE_PERIOD_MS as f64 + elapsed_ms / DEAD_SCRAPE_PERIOD_MS as f64;
    println!("scrape attempts in {elapsed_ms:.0} ms: {attempts} (one per period: {expected:.0})");
    assert!(
        attempts <= expected * 1.3 + 3.0,
        "{attempts} attempts: more than one scrape per period"
    );
    assert!(
        attempts >= expected * 0.5,
        "{attempts} attempts: scrapes are missing"
    );

    // Counters by reason and class.
    let shed_queue = stat(
        &envoy,
        "modelgate_shedder_shed_total",
        &["criticality=\"sheddable\"", "reason=\"queue\""],
    );
    let shed_conc = stat(
        &envoy,
        "modelgate_shedder_shed_total",
        &["reason=\"concurrency\""],
    );
    let shed_stale = stat(
        &envoy,
        "modelgate_shedder_shed_total",
        &["reason=\"stale\""],
    );
    let admitted_critical = stat(
        &envoy,
        "modelgate_shedder_admitted_total",
        &["criticality=\"critical\""],
    );
    let connect_failures = stat(
        &envoy,
        "modelgate_scrape_failures_total",
        &["reason=\"connect\""],
    );
    println!(
        "stats: shed queue/sheddable {shed_queue}, concurrency {shed_conc}, stale {shed_stale}, admitted critical {admitted_critical}, scrape connect failures {connect_failures}"
    );
    assert!(shed_queue >= 21.0, "{shed_queue}");
    assert!(shed_conc >= 1.0 && shed_stale >= 1.0);
    assert!(admitted_critical >= critical.len() as f64);
    assert!(connect_failures >= 1.0);

    // Visible in the logs: the dead scrape target and the shed summary.
    let log = envoy.proc.log_text();
    assert!(
        log.contains("scrape of `dead/metrics` failed: connect"),
        "no scrape failure log"
    );

    // After the load: the queue drains and sheddable passes again.
    let drained = wait_until(Duration::from_secs(10), || {
        chat(a, Some("sheddable"), 2).status == 200
    });
    assert!(drained, "sheddable still shed after the load");
}
