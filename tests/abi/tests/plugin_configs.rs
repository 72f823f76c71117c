//! Every plugin configuration shipped in `envoy/*.yaml` and `istio/*.yaml` is accepted by
//! the module it is written for, as Envoy would accept it at `proxy_on_configure`.

use modelgate_abi_tests::configs::plugins;
use modelgate_abi_tests::{module_path, Action, Host};

#[test]
fn every_shipped_plugin_configuration_is_accepted() {
    let plugins = plugins();
    let mut failures = Vec::new();
    let mut checked = 0;
    for p in &plugins {
        if !module_path(&p.module).exists() {
            eprintln!(
                "skip {} ({}): dist/{}.wasm not built",
                p.file.display(),
                p.root_id,
                p.module
            );
            continue;
        }
        let host = Host::new();
        let mut b = host.vm(&p.module).root_id(&p.root_id);
        if !p.vm_id.is_empty() {
            b = b.vm_id(&p.vm_id);
        }
        match b.configure(&p.configuration) {
            Ok(_) => checked += 1,
            Err(e) => failures.push(format!(
                "{} (root_id {}, module {}): {e:#}\nconfiguration:\n{}",
                p.file.display(),
                p.root_id,
                p.module,
                p.configuration
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "rejected configurations:\n{}",
        failures.join("\n\n")
    );
    eprintln!("{checked} plugin configurations accepted");
}

/// Envoy configs must follow CONTRACTS.md: `vm_id: modelgate`, and
/// `allow_on_headers_stop_iteration: true` where the filter pauses in request headers — found
/// out by sending an inference request to the module with the knob as configured. Istio
/// WasmPlugins cannot set either field (Istio leaves vm_id empty for all of them, so they
/// still share one namespace; the knob comes from an EnvoyFilter patch), so they are skipped.
#[test]
fn every_envoy_plugin_shares_the_modelgate_vm_and_does_not_stall_requests() {
    for p in plugins().into_iter().filter(|p| !p.from_wasm_plugin) {
        assert_eq!(
            p.vm_id,
            "modelgate",
            "{}: {} must use vm_id modelgate (CONTRACTS.md)",
            p.file.display(),
            p.root_id
        );
        if p.allow_stop || !module_path(&p.module).exists() {
            continue;
        }
        let mut vm = Host::new()
            .vm(&p.module)
            .root_id(&p.root_id)
            .allow_on_headers_stop_iteration(false)
            .configure(&p.configuration)
            .unwrap_or_else(|e| panic!("{}: {e:#}", p.file.display()));
        let mut req = vm.http();
        let action = req.request_headers(
            &[
                (":method", "POST"),
                (":path", "/v1/chat/completions"),
                (":authority", "modelgate"),
                ("content-type", "application/json"),
                ("content-length", "40"),
            ],
            false,
        );
        assert!(
            action == Action::Continue || req.local_reply().is_some(),
            "{}: {} pauses in request headers, so it must set allow_on_headers_stop_iteration: true \
             (without it Envoy never delivers the body and the request hangs)",
            p.file.display(),
            p.root_id
        );
    }
}
