//! The plugin configurations shipped in `envoy/*.yaml` and `istio/*.yaml`, found by walking
//! the YAML: Envoy Wasm filter configs (also inside Istio EnvoyFilter patches) and Istio
//! `WasmPlugin` resources; each stage of a `chain` module also as that filter alone (a stage's
//! configuration is what the filter accepts alone). Used by the configuration and robustness
//! tests.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::Value;

/// Sample values for the `{{KEY}}` placeholders of the templates (e2e tests render them
/// with real ports; only the shape matters here). Each entry lists every variant to try.
pub const SAMPLES: &[(&str, &[&str])] = &[
    ("ADMIN_PORT", &["9901"]),
    ("LISTEN_PORT", &["10000"]),
    ("LOADER_PORT", &["8081"]),
    ("SIM_PORT", &["8000"]),
    ("POD_A_PORT", &["8001"]),
    ("POD_B_PORT", &["8002"]),
    ("POD_C_PORT", &["8003"]),
    ("WASM_DIR", &["/dist"]),
    ("MODEL", &["sim-model"]),
    (
        "READINESS_LOADER",
        &["null", r#"{"cluster": "loader", "path": "/ready"}"#],
    ),
    ("READINESS_PERIOD", &["500ms", "1s"]),
    ("SATURATION", &["0.8"]),
];

/// One plugin configuration found in a file.
#[derive(Debug, Clone)]
pub struct Plugin {
    pub file: PathBuf,
    pub module: String,
    pub root_id: String,
    pub vm_id: String,
    pub allow_stop: bool,
    pub configuration: String,
    pub from_wasm_plugin: bool,
    /// A stage of a `chain` module's configuration, as its own filter (its other fields
    /// are the chain's).
    pub chain_stage: bool,
}

/// `p` and, when it is a `chain`, each of its stages as the filter alone.
fn push_with_stages(p: Plugin, out: &mut Vec<Plugin>) {
    if p.module == "chain" {
        let chain: serde_json::Value = serde_json::from_str(&p.configuration)
            .unwrap_or_else(|e| panic!("{}: chain configuration: {e}", p.file.display()));
        for stage in chain["filters"].as_array().into_iter().flatten() {
            let name = stage["name"].as_str().unwrap_or_default().to_string();
            out.push(Plugin {
                module: name.clone(),
                root_id: name,
                configuration: stage["config"].to_string(),
                chain_stage: true,
                ..p.clone()
            });
        }
    }
    out.push(p);
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Renders a template once per combination of sample values it uses.
fn renderings(text: &str) -> Vec<String> {
    let mut out = vec![text.to_string()];
    for (key, values) in SAMPLES {
        let pat = format!("{{{{{key}}}}}");
        if !text.contains(&pat) {
            continue;
        }
        out = out
            .iter()
            .flat_map(|t| {
                values
                    .iter()
                    .map(|v| t.replace(&pat, v))
                    .collect::<Vec<_>>()
            })
            .collect();
    }
    out
}

fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_mapping()?.get(Value::String(key.to_string()))
}

fn text(v: Option<&Value>) -> String {
    v.and_then(Value::as_str).unwrap_or_default().to_string()
}

/// Module name from a file path or an image/URL: `.../readiness_gate.wasm`,
/// `oci://ghcr.io/modelgate/readiness_gate:0.1.0` → `readiness_gate`.
fn module_of(url_or_file: &str) -> String {
    let last = url_or_file.rsplit('/').next().unwrap_or_default();
    let last = last.split(['@', ':']).next().unwrap_or_default();
    last.trim_end_matches(".wasm").to_string()
}

/// Walks a YAML document for Envoy Wasm filter configs (`...wasm.v3.Wasm` typed configs,
/// also inside Istio EnvoyFilter patches) and Istio `WasmPlugin` resources.
fn collect(file: &Path, v: &Value, out: &mut Vec<Plugin>) {
    if text(get(v, "@type")).ends_with("envoy.extensions.filters.http.wasm.v3.Wasm") {
        if let Some(cfg) = get(v, "config") {
            let vm = get(cfg, "vm_config");
            // `code.local.filename`, or `code.remote.http_uri.uri` (Istio EnvoyFilter + ECDS).
            let code = vm.and_then(|vm| get(vm, "code"));
            let filename = match code.and_then(|c| get(c, "local")) {
                Some(l) => text(get(l, "filename")),
                None => text(
                    code.and_then(|c| get(c, "remote"))
                        .and_then(|r| get(r, "http_uri"))
                        .and_then(|h| get(h, "uri")),
                ),
            };
            let configuration = get(cfg, "configuration")
                .map(|c| match c.as_str() {
                    Some(s) => s.to_string(),
                    None => text(get(c, "value")),
                })
                .unwrap_or_default();
            push_with_stages(
                Plugin {
                    file: file.to_path_buf(),
                    module: module_of(&filename),
                    root_id: text(get(cfg, "root_id")),
                    vm_id: text(vm.and_then(|vm| get(vm, "vm_id"))),
                    allow_stop: get(cfg, "allow_on_headers_stop_iteration")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                    configuration,
                    from_wasm_plugin: false,
                    chain_stage: false,
                },
                out,
            );
        }
    }
    if text(get(v, "kind")) == "WasmPlugin" {
        if let Some(spec) = get(v, "spec") {
            let configuration = get(spec, "pluginConfig")
                .map(|c| serde_json::to_string(c).unwrap())
                .unwrap_or_default();
            push_with_stages(
                Plugin {
                    file: file.to_path_buf(),
                    module: module_of(&text(get(spec, "url"))),
                    root_id: text(get(spec, "pluginName")),
                    vm_id: text(get(spec, "vmConfig").and_then(|c| get(c, "vmId"))),
                    // Istio has no field for it; an EnvoyFilter patch sets it (NOTES.md).
                    allow_stop: true,
                    configuration,
                    from_wasm_plugin: true,
                    chain_stage: false,
                },
                out,
            );
        }
    }
    match v {
        Value::Mapping(m) => m.values().for_each(|x| collect(file, x, out)),
        Value::Sequence(s) => s.iter().for_each(|x| collect(file, x, out)),
        Value::Tagged(t) => collect(file, &t.value, out),
        _ => {}
    }
}

/// Every plugin configuration in `envoy/*.yaml` and `istio/*.yaml`, once per rendering.
pub fn plugins() -> Vec<Plugin> {
    let mut out = Vec::new();
    for dir in ["envoy", "istio"] {
        let Ok(entries) = std::fs::read_dir(repo().join(dir)) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        files.sort();
        for file in files {
            let raw = std::fs::read_to_string(&file).unwrap();
            for rendered in renderings(&raw) {
                // Our placeholders are `{{UPPER_CASE}}`; other `{{ .. }}` (Prometheus alert
                // templates, Helm) are content.
                let missing: Vec<&str> = rendered
                    .match_indices("{{")
                    .filter_map(|(i, _)| {
                        let rest = rendered.get(i..)?;
                        rest.find("}}").and_then(|e| rest.get(..e + 2))
                    })
                    .filter(|p| {
                        let name = p.trim_start_matches("{{").trim_end_matches("}}");
                        !name.is_empty()
                            && name
                                .bytes()
                                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
                    })
                    .collect();
                assert!(
                    missing.is_empty(),
                    "{}: no sample value for {missing:?}: add one to SAMPLES in tests/abi/src/configs.rs",
                    file.display()
                );
                for doc in serde_yaml::Deserializer::from_str(&rendered) {
                    let v = Value::deserialize(doc)
                        .unwrap_or_else(|e| panic!("{}: not YAML: {e}", file.display()));
                    collect(&file, &v, &mut out);
                }
            }
        }
    }
    out
}

/// [`plugins`] whose module is built (in `dist/`), each distinct (module, configuration)
/// pair once.
pub fn built_plugins() -> Vec<Plugin> {
    let mut seen = std::collections::BTreeSet::new();
    plugins()
        .into_iter()
        .filter(|p| crate::module_path(&p.module).exists())
        .filter(|p| seen.insert((p.module.clone(), p.configuration.clone())))
        .collect()
}
