//! Debian's Prometheus server for the tests: scrapes the given targets every second and
//! evaluates the rules of `istio/alerts.yaml`; queries go through its HTTP API.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::e2e::{free_port, get, repo_root, wait_until, with_fresh_ports, Proc, START_TIMEOUT};

/// One scrape target: `host:port`, metrics path, and labels added to its series.
pub struct Target {
    pub addr: String,
    pub path: &'static str,
    pub labels: Vec<(&'static str, String)>,
}

/// A running Prometheus.
pub struct Prometheus {
    pub port: u16,
    pub proc: Proc,
}

impl Prometheus {
    /// Starts Prometheus (scrape and rule interval 1 s) on `targets` and waits until ready.
    pub fn start(dir: &Path, targets: &[Target]) -> Prometheus {
        let mut scrape = String::new();
        for (i, t) in targets.iter().enumerate() {
            let labels: Vec<String> = t.labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            scrape.push_str(&format!(
                "- job_name: t{i}\n  metrics_path: {}\n  static_configs:\n  - targets: [\"{}\"]\n    labels: {{{}}}\n",
                t.path,
                t.addr,
                labels.join(", ")
            ));
        }
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [\"{}\"]\nscrape_configs:\n{scrape}",
            alert_rules_file(dir).display()
        );
        let cfg = dir.join("prometheus.yml");
        fs::write(&cfg, config).expect("write prometheus.yml");
        with_fresh_ports("prometheus", || {
            let port = free_port();
            let mut cmd = Command::new("prometheus");
            cmd.arg(format!("--config.file={}", cfg.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("tsdb").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--log.level=warn");
            let mut proc = Proc::spawn("prometheus", cmd, dir);
            let ready = wait_until(START_TIMEOUT, || {
                get(&format!("http://127.0.0.1:{port}/-/ready")).status == 200
                    || proc.try_exit().is_some()
            });
            match proc.try_exit() {
                None if ready => Ok(Prometheus { port, proc }),
                _ => Err(proc.log_text()),
            }
        })
    }

    /// The API's answer to instant query `promql` (asserted to parse).
    pub fn query(&self, promql: &str) -> serde_json::Value {
        let url = format!(
            "http://127.0.0.1:{}/api/v1/query?query={}",
            self.port,
            urlencode(promql)
        );
        let v = get(&url).json();
        assert_eq!(v["status"], "success", "{promql} does not parse: {v}");
        v
    }

    /// The value of an instant query that returns one sample (`None`: no sample yet).
    pub fn scalar(&self, promql: &str) -> Option<f64> {
        let v = self.query(promql);
        let result = v["data"]["result"].as_array()?.clone();
        assert!(
            result.len() <= 1,
            "{promql} returned {} series: {v}",
            result.len()
        );
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    /// Waits (up to 30 s: scrape, flush and rule intervals) until `promql` has a value
    /// that satisfies `ok`, then returns it; panics with the last value otherwise.
    pub fn wait_for(&self, promql: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let mut last = None;
        let done = wait_until(Duration::from_secs(30), || {
            last = self.scalar(promql);
            last.is_some_and(&ok)
        });
        assert!(done, "{promql}: last value {last:?}");
        last.unwrap_or_default()
    }

    /// Waits until `promql` has the value `expected`.
    pub fn expect(&self, promql: &str, expected: f64) {
        let v = self.wait_for(promql, |v| (v - expected).abs() < 1e-9);
        println!("{promql} = {v}");
    }

    /// Waits up to `timeout` until `promql` returns at least one series; its last answer.
    pub fn wait_for_series(&self, promql: &str, timeout: Duration) -> Option<serde_json::Value> {
        let mut last = serde_json::Value::Null;
        let found = wait_until(timeout, || {
            last = self.query(promql);
            last["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
        });
        found.then_some(last)
    }
}

/// The rule groups of `istio/alerts.yaml` (a PrometheusRule) as a plain rules file in `dir`.
pub fn alert_rules_file(dir: &Path) -> PathBuf {
    let text = fs::read_to_string(repo_root().join("istio/alerts.yaml")).expect("alerts.yaml");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("alerts.yaml is YAML");
    let mut out = serde_yaml::Mapping::new();
    out.insert("groups".into(), doc["spec"]["groups"].clone());
    let path = dir.join("rules.yaml");
    fs::write(&path, serde_yaml::to_string(&out).expect("rules")).expect("write rules");
    path
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
