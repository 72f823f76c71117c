//! Path tricks do not get past the readiness gate (issue 11, finding 8): the shipped sidecar
//! bootstrap (envoy/sidecar.yaml) normalises paths (`normalize_path`, `merge_slashes`,
//! `path_with_escaped_slashes_action`) before the filters match `gated_prefixes`, so
//! `//v1/...`, `/v1//...` and `/%76%31/...` are refused by the gate like `/v1/...` while the
//! model server is not ready. Only the gate's own 503 carries `x-modelgate-gated`.

use modelgate_e2e::*;

#[test]
fn every_spelling_of_an_inference_path_is_gated_while_not_ready() {
    let dir = scratch_dir("paths");
    // Never ready during the test: /health answers 503.
    let sim = Sim::start(
        &dir,
        "sim",
        &["--served-model-name", "m", "--startup-delay-ms", "600000"],
    );
    let envoy = Shipped::sidecar(Ports::free(), sim.port, "m").start(&dir, "sidecar");
    let port = envoy.port;
    let body = br#"{"model": "m", "messages": [{"role": "user", "content": "hi"}]}"#;
    for path in [
        "/v1/chat/completions",
        "//v1/chat/completions",
        "/v1//chat/completions",
        "/%76%31/chat/completions",
        "/v1/./chat/completions",
        "/x/../v1/chat/completions",
    ] {
        let r = request(
            "POST",
            &format!("http://127.0.0.1:{port}{path}"),
            &[("content-type", "application/json")],
            Some(body),
        );
        assert_eq!(r.status, 503, "{path}: {}", r.text());
        assert!(
            r.header("x-modelgate-gated").is_some(),
            "{path}: not refused by the gate: {:?}",
            r
        );
    }
}
