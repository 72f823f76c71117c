//! Path spellings a server reads as `/v1/...` are gated and counted like `/v1/...` (issue 11,
//! finding 8): doubled slashes, percent-encoded unreserved characters and dot segments.

use modelgate_abi_tests::{Action, Host, Vm};

const TRICKS: &[&str] = &[
    "//v1/chat/completions",
    "/%76%31/chat/completions",
    "/v1//chat/completions",
    "/health/../v1/chat/completions",
];

fn configured(host: &Host, filter: &str, config: &str) -> Vm {
    host.vm(filter)
        .root_id(filter)
        .configure(config)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
fn the_readiness_gate_refuses_every_spelling_of_a_gated_path() {
    let mut vm = configured(&Host::new(), "readiness_gate", r#"{"model": "m"}"#);
    for path in TRICKS {
        let mut req = vm.http();
        let action = req.request_headers(
            &[(":method", "POST"), (":path", path), (":authority", "pod")],
            false,
        );
        let reply = req.local_reply();
        req.finish();
        assert_eq!(action, Action::Pause, "{path}");
        assert_eq!(reply.map(|r| r.status), Some(503), "{path}");
    }
}

#[test]
fn ml_metrics_counts_every_spelling_of_a_counted_path() {
    let host = Host::new();
    let mut vm = configured(&host, "ml_metrics", r#"{"models": ["m"]}"#);
    for path in TRICKS {
        let mut req = vm.http();
        req.request_headers(
            &[
                (":method", "POST"),
                (":path", path),
                (":authority", "pod"),
                ("content-type", "application/json"),
            ],
            false,
        );
        req.request_body(br#"{"model":"m"}"#, true);
        req.response_headers(&[(":status", "200")], true);
        req.finish();
    }
    let counted: i64 = host
        .metrics()
        .iter()
        .filter(|(n, _)| n.ends_with(";.;ml_requests_total"))
        .map(|(_, m)| m.value)
        .sum();
    assert_eq!(counted, TRICKS.len() as i64);
}
