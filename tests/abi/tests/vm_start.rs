//! Every module says once, at VM start, which filter, version and git revision it is, so a
//! log shows what build a proxy runs.

use modelgate_abi_tests::configs::plugins;
use modelgate_abi_tests::{module_path, Host, LogLevel};

#[test]
fn every_module_logs_its_name_version_and_revision_once_at_vm_start() {
    // One shipped configuration per module.
    let modules: std::collections::BTreeMap<String, _> = plugins()
        .into_iter()
        .filter(|p| module_path(&p.module).exists())
        .map(|p| (p.module.clone(), p))
        .collect();
    assert!(!modules.is_empty(), "no shipped module");
    let version = env!("CARGO_PKG_VERSION");
    for p in modules.into_values() {
        let vm = Host::new()
            .vm(&p.module)
            .root_id(&p.root_id)
            .vm_id(&p.vm_id)
            .configure(&p.configuration)
            .unwrap_or_else(|e| panic!("{}: {e:#}", p.module));
        let prefix = format!("{} {version} (revision ", p.module);
        let starts: Vec<_> = vm
            .logs()
            .into_iter()
            .filter(|l| l.message.starts_with(&prefix))
            .collect();
        assert_eq!(starts.len(), 1, "{}: {:#?}", p.module, vm.logs());
        let line = starts.first().unwrap();
        assert_eq!(line.level, LogLevel::Info);
        let revision = line
            .message
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix(") started"))
            .unwrap_or_default();
        assert!(
            revision == "unknown"
                || (revision.len() >= 7 && revision.bytes().all(|b| b.is_ascii_hexdigit())),
            "{}: revision `{revision}`",
            p.module
        );
    }
}
