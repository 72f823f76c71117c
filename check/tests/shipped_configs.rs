//! `modelgate check` on every shipped configuration (must pass) and on broken copies
//! (must fail, exit 1, the field named).
#![allow(clippy::expect_used)] // test helpers: a failed setup step is the test failing

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn modelgate(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("run modelgate");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// The values scripts/run.sh renders the templates with.
const SETS: &[&str] = &[
    "--set",
    "ADMIN_PORT=9901",
    "--set",
    "LISTEN_PORT=10000",
    "--set",
    "POD_A_PORT=10001",
    "--set",
    "POD_B_PORT=10002",
    "--set",
    "POD_C_PORT=10003",
    "--set",
    "WASM_DIR=/dist",
    "--set",
    "SATURATION=0.8",
    "--set",
    "SIM_PORT=8001",
    "--set",
    "LOADER_PORT=8101",
    "--set",
    "MODEL=llama-3-8b",
    "--set",
    "READINESS_LOADER=null",
    "--set",
    "READINESS_PERIOD=1s",
];

fn istio_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(root().join("istio"))
        .expect("istio/")
        .filter_map(|e| e.ok())
        .map(|e| format!("istio/{}", e.file_name().to_string_lossy()))
        .filter(|f| f.ends_with(".yaml") && !f.ends_with("kustomization.yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_shipped_envoy_config_passes() {
    for f in [
        "envoy/gateway.yaml",
        "envoy/sidecar.yaml",
        "envoy/orca-gateway.yaml",
    ] {
        let mut args = vec!["check"];
        args.extend_from_slice(SETS);
        args.push(f);
        let (code, out) = modelgate(&args);
        assert_eq!(code, 0, "{f}: {out}");
        assert!(
            !out.contains(" 0 filter configurations"),
            "{f}: found no filters: {out}"
        );
    }
}

#[test]
fn the_istio_base_passes_as_one_mesh() {
    let files = istio_files();
    let mut args = vec!["check"];
    args.extend(files.iter().map(String::as_str));
    let (code, out) = modelgate(&args);
    assert_eq!(code, 0, "{out}");
    // One chain per pool (metrics, gate, shedder) and one on the gateway (metrics, router,
    // shedder, endpoint picker).
    assert!(out.contains(": 3 filter configurations"), "{out}");
}

fn broken(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("modelgate-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

#[test]
fn a_broken_istio_manifest_fails_with_the_field_named() {
    let text = std::fs::read_to_string(root().join("istio/sidecar-chain.yaml")).expect("read");
    let bad = broken("gate.yaml", &text.replacen("period: 1s", "period: soon", 1));
    let (code, out) = modelgate(&["check", bad.to_str().expect("utf-8")]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("chain at spec.pluginConfig: field `filters[1].config.period`"),
        "{out}"
    );
}

#[test]
fn a_gateway_metrics_list_missing_a_router_name_fails() {
    // The metrics stage comes first in the gateway chain: its `gpt-4o-mini` goes, the
    // router's (a later stage of the same chain) stays.
    let text = std::fs::read_to_string(root().join("istio/gateway-chain.yaml")).expect("read");
    let bad = broken(
        "gateway.yaml",
        &text.replacen("\"gpt-4o-mini\"", "\"gpt-4o\"", 1),
    );
    let (code, out) = modelgate(&["check", bad.to_str().expect("utf-8")]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("chain at ")
            && out.contains("field `filters[0].config.models`")
            && out.contains("`gpt-4o-mini`"),
        "{out}"
    );
}

#[test]
fn a_json_config_needs_and_uses_the_filter_name() {
    let good = broken("router.json", r#"{"models": [{"name": "m"}]}"#);
    let good = good.to_str().expect("utf-8");
    assert_eq!(modelgate(&["check", good]).0, 2);
    assert_eq!(modelgate(&["check", "--filter", "model_router", good]).0, 0);
    let bad = broken("shed.json", r#"{"on_stale": "maybe"}"#);
    let (code, out) = modelgate(&[
        "check",
        "--filter",
        "load_shedder",
        bad.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("field `on_stale`"), "{out}");
}
