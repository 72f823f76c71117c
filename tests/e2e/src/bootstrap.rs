//! Envoy bootstraps for the tests, one way: [`shipped`] renders a config from `envoy/`
//! (what `make run` and users deploy), [`Bootstrap`] builds one for a test's own listener and
//! filter chain. Both carry `envoy/stats-tags.yaml` unchanged, so every test sees the shipped
//! tag extraction and histogram buckets.

use std::fs;

use serde_json::{json, Value};

use crate::e2e::{render, repo_root, wasm};

/// `envoy/stats-tags.yaml` as shipped (a top-level `stats_config` block).
pub fn stats_tags_yaml() -> String {
    fs::read_to_string(repo_root().join("envoy/stats-tags.yaml")).expect("envoy/stats-tags.yaml")
}

/// Renders `envoy/<file>` with `vars` (`{{KEY}}` placeholders), its `stats_config` replaced
/// by `envoy/stats-tags.yaml`. Tests may edit the text further before starting Envoy.
pub fn shipped(file: &str, vars: &[(&str, String)]) -> String {
    let path = repo_root().join("envoy").join(file);
    let template = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let rendered = render(&template, vars);
    assert!(
        !rendered.contains("{{"),
        "{file}: placeholder left unrendered"
    );
    format!("{}{}", without_stats_config(&rendered), stats_tags_yaml())
}

/// Drops a top-level `stats_config:` block (up to the next top-level key).
fn without_stats_config(yaml: &str) -> String {
    let mut out = String::with_capacity(yaml.len());
    let mut skipping = false;
    for line in yaml.lines() {
        if line.starts_with("stats_config:") {
            skipping = true;
            continue;
        }
        let nested = line.is_empty() || line.starts_with([' ', '#']);
        if skipping && nested {
            continue;
        }
        skipping = false;
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A proxy-wasm filter of a shipped module in `dist/`.
#[derive(Clone, Debug)]
pub struct WasmFilter {
    /// Module name (`ml_metrics` → `dist/ml_metrics.wasm`), also the plugin name and root id.
    pub module: String,
    pub vm_id: String,
    /// The plugin configuration (JSON text).
    pub config: String,
    /// `allow_on_headers_stop_iteration`; every modelgate filter sets it (CONTRACTS.md).
    pub allow_on_headers_stop_iteration: bool,
}

impl WasmFilter {
    /// `module` in VM `vm_id` with configuration `config` (JSON value or text).
    pub fn new(module: &str, vm_id: &str, config: impl ToString) -> Self {
        Self {
            module: module.to_string(),
            vm_id: vm_id.to_string(),
            config: config.to_string(),
            allow_on_headers_stop_iteration: true,
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "name": format!("modelgate.{}", self.module),
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": self.module,
                    "root_id": self.module,
                    "allow_on_headers_stop_iteration": self.allow_on_headers_stop_iteration,
                    "vm_config": {
                        "vm_id": self.vm_id,
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": wasm(&self.module).display().to_string()}}
                    },
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": self.config
                    }
                }
            }
        })
    }
}

/// An HTTP listener on 127.0.0.1: routes and a filter chain ending in the router.
#[derive(Clone, Debug)]
pub struct Listener {
    pub name: String,
    pub port: u16,
    routes: Vec<Value>,
    filters: Vec<WasmFilter>,
    /// Extra HttpConnectionManager fields (timeouts, limits).
    hcm: serde_json::Map<String, Value>,
    /// Extra listener fields (e.g. `per_connection_buffer_limit_bytes`).
    fields: serde_json::Map<String, Value>,
}

impl Listener {
    pub fn new(name: &str, port: u16) -> Self {
        Self {
            name: name.to_string(),
            port,
            routes: Vec::new(),
            filters: Vec::new(),
            hcm: serde_json::Map::new(),
            fields: serde_json::Map::new(),
        }
    }

    /// A route entry as Envoy's `RouteConfiguration` takes it (`match`, `route` /
    /// `direct_response`, ...). Routes are matched in the order they were added.
    pub fn route(mut self, route: Value) -> Self {
        self.routes.push(route);
        self
    }

    /// Everything (prefix `/`) to `cluster`, with a route timeout (`0s`: none).
    pub fn route_all_to(self, cluster: &str, timeout: &str) -> Self {
        self.route(
            json!({"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": timeout}}),
        )
    }

    /// Appends a wasm filter (before the router).
    pub fn filter(mut self, filter: WasmFilter) -> Self {
        self.filters.push(filter);
        self
    }

    /// Sets an HttpConnectionManager field, e.g. `("stream_idle_timeout", json!("2s"))`.
    pub fn hcm(mut self, key: &str, value: Value) -> Self {
        self.hcm.insert(key.to_string(), value);
        self
    }

    /// Sets a listener field, e.g. `("per_connection_buffer_limit_bytes", json!(8388608))`.
    pub fn field(mut self, key: &str, value: Value) -> Self {
        self.fields.insert(key.to_string(), value);
        self
    }

    fn to_json(&self) -> Value {
        let mut filters: Vec<Value> = self.filters.iter().map(WasmFilter::to_json).collect();
        filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
        }));
        let mut hcm = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": self.name,
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": self.routes}]},
            "http_filters": filters
        });
        for (k, v) in &self.hcm {
            hcm[k] = v.clone();
        }
        let mut listener = json!({
            "name": self.name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": self.port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": hcm
            }]}]
        });
        for (k, v) in &self.fields {
            listener[k] = v.clone();
        }
        listener
    }
}

/// A test's own Envoy bootstrap: admin on 127.0.0.1, listeners, STATIC loopback clusters,
/// and `envoy/stats-tags.yaml`.
#[derive(Clone, Debug)]
pub struct Bootstrap {
    pub admin_port: u16,
    stats_flush_interval: Option<String>,
    listeners: Vec<Listener>,
    clusters: Vec<Value>,
    /// Listeners come from this file (LDS `path_config_source`) instead of the bootstrap.
    lds_path: Option<std::path::PathBuf>,
}

impl Bootstrap {
    pub fn new(admin_port: u16) -> Self {
        Self {
            admin_port,
            stats_flush_interval: None,
            listeners: Vec::new(),
            clusters: Vec::new(),
            lds_path: None,
        }
    }

    /// Serves the listeners from `path` (a file-based LDS): write them there with
    /// [`Bootstrap::write_listeners`]; replacing the file by a rename pushes a new config
    /// to the running Envoy.
    pub fn dynamic_listeners(mut self, path: &std::path::Path) -> Self {
        self.lds_path = Some(path.to_path_buf());
        self
    }

    /// Writes the listeners as an LDS response to `path` atomically (write, then rename:
    /// Envoy watches the file's directory for moves).
    pub fn write_listeners(listeners: &[Listener], path: &std::path::Path) {
        let resources: Vec<Value> = listeners
            .iter()
            .map(|l| {
                let mut v = l.to_json();
                v["@type"] = json!("type.googleapis.com/envoy.config.listener.v3.Listener");
                v
            })
            .collect();
        let text = serde_yaml::to_string(&json!({ "resources": resources })).expect("LDS YAML");
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, text).expect("write LDS file");
        fs::rename(&tmp, path).expect("move LDS file into place");
    }

    /// How often histograms reach `/stats/prometheus` (Envoy's default is 5 s).
    pub fn stats_flush_interval(mut self, interval: &str) -> Self {
        self.stats_flush_interval = Some(interval.to_string());
        self
    }

    pub fn listener(mut self, listener: Listener) -> Self {
        self.listeners.push(listener);
        self
    }

    /// A STATIC cluster of one endpoint, 127.0.0.1:`port` (1 s connect timeout).
    pub fn cluster(self, name: &str, port: u16) -> Self {
        self.cluster_json(json!({
            "name": name,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
            ]}]}
        }))
    }

    /// Any cluster, as Envoy's `Cluster` message in JSON.
    pub fn cluster_json(mut self, cluster: Value) -> Self {
        self.clusters.push(cluster);
        self
    }

    /// The bootstrap as YAML text, `envoy/stats-tags.yaml` appended as shipped.
    pub fn yaml(&self) -> String {
        let mut root = json!({
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": self.admin_port}}},
            "static_resources": {
                "listeners": self.listeners.iter().map(Listener::to_json).collect::<Vec<_>>(),
                "clusters": self.clusters
            }
        });
        if let Some(i) = &self.stats_flush_interval {
            root["stats_flush_interval"] = json!(i);
        }
        if let Some(path) = &self.lds_path {
            Self::write_listeners(&self.listeners, path);
            root["static_resources"]["listeners"] = json!([]);
            // Envoy requires a node identity for any xDS, a file included.
            root["node"] = json!({"id": "modelgate-test", "cluster": "modelgate-test"});
            root["dynamic_resources"] = json!({"lds_config": {
                "resource_api_version": "V3",
                "path_config_source": {
                    "path": path.display().to_string(),
                    "watched_directory": {"path": path.parent().map(|p| p.display().to_string()).unwrap_or_default()}
                }
            }});
        }
        let text = serde_yaml::to_string(&root).expect("bootstrap YAML");
        format!("{text}{}", stats_tags_yaml())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats_config(yaml: &str) -> serde_yaml::Value {
        let doc: serde_yaml::Value = serde_yaml::from_str(yaml).expect("YAML");
        doc["stats_config"].clone()
    }

    #[test]
    fn shipped_configs_carry_the_shipped_stats_tags() {
        let expected = stats_config(&stats_tags_yaml());
        assert!(expected["stats_tags"]
            .as_sequence()
            .is_some_and(|s| !s.is_empty()));
        let stripped = without_stats_config(
            "admin: {}\n# note\nstats_config:\n  stats_tags:\n  - {}\n\n  # c\nstatic_resources: {}\n",
        );
        assert_eq!(stripped, "admin: {}\n# note\nstatic_resources: {}\n");
        let rendered = format!("{stripped}{}", stats_tags_yaml());
        assert_eq!(stats_config(&rendered), expected);
    }

    #[test]
    fn built_bootstraps_parse_and_carry_the_shipped_stats_tags() {
        let b = Bootstrap::new(9)
            .stats_flush_interval("1s")
            .listener(
                Listener::new("l", 10)
                    .route_all_to("c", "0s")
                    .hcm("stream_idle_timeout", json!("2s")),
            )
            .cluster("c", 11);
        let doc: serde_yaml::Value = serde_yaml::from_str(&b.yaml()).expect("YAML");
        assert_eq!(doc["stats_config"], stats_config(&stats_tags_yaml()));
        assert_eq!(doc["stats_flush_interval"], "1s");
        let hcm = &doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        assert_eq!(hcm["stream_idle_timeout"], "2s");
        assert_eq!(hcm["http_filters"][0]["name"], "envoy.filters.http.router");
    }
}
