//! Every shipped module would load in Envoy 1.40: it imports only host functions Envoy
//! registers, declares ABI 0.2.1, exports malloc/memory/_initialize, and instantiates
//! against this host (which checks the import signatures).

use modelgate_abi_tests::{dist_dir, envoy_load_problems, Host};

/// The filters `make wasm` ships (the Makefile's FILTERS).
const FILTERS: &[&str] = &[
    "readiness_gate",
    "model_router",
    "load_shedder",
    "ml_metrics",
    "endpoint_picker",
];

fn shipped() -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dist_dir())
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

#[test]
fn every_shipped_module_imports_only_what_envoy_provides() {
    let modules = shipped();
    assert!(
        !modules.is_empty(),
        "no modules in {} — run `make wasm` first",
        dist_dir().display()
    );
    let mut report = Vec::new();
    for path in &modules {
        for p in envoy_load_problems(path).unwrap() {
            report.push(format!("{}: {p}", path.display()));
        }
    }
    assert!(
        report.is_empty(),
        "modules Envoy 1.40 would refuse:\n{}",
        report.join("\n")
    );
}

#[test]
fn every_shipped_module_instantiates_and_starts() {
    for path in shipped() {
        // Instantiation checks every import's signature; `_initialize` runs with Envoy's
        // restricted host calls. The configuration may be rejected: that is not a load error.
        let result = std::panic::catch_unwind(|| Host::new().vm_from_file(&path).configure("{}"));
        match result {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                let msg = format!("{e:#}");
                assert!(
                    !msg.contains("would fail to load") && !msg.contains("missing malloc"),
                    "{}: {msg}",
                    path.display()
                );
            }
            Err(panic) => panic!(
                "{}: trapped while starting: {}",
                path.display(),
                panic.downcast_ref::<String>().cloned().unwrap_or_default()
            ),
        }
    }
}

/// With MODELGATE_REQUIRE_ALL_FILTERS=1 (set by `make test-abi`), a missing module fails
/// instead of being skipped, so `make test` checks what `make build` shipped.
#[test]
fn all_filters_are_shipped_when_required() {
    if std::env::var_os("MODELGATE_REQUIRE_ALL_FILTERS").is_none() {
        return;
    }
    let missing: Vec<&str> = FILTERS
        .iter()
        .copied()
        .filter(|f| !dist_dir().join(format!("{f}.wasm")).exists())
        .collect();
    assert!(missing.is_empty(), "missing in dist/: {missing:?}");
}
