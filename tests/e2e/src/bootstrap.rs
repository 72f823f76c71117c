//! Envoy bootstraps for the tests, one way: [`shipped`] renders a config from `envoy/`
//! (what `make run` and users deploy), [`Bootstrap`] builds one for a test's own listener and
//! filter chain. Both carry `envoy/stats-tags.yaml` unchanged, so every test sees the shipped
//! tag extraction and histogram buckets.

use std::fs;

use serde_json::{json, Value};

use std::path::Path;

use crate::e2e::{render, repo_root, wasm, wasm_dir, with_fresh_ports, Envoy, Ports};

/// `envoy/stats-tags.yaml` as shipped (a top-level `stats_config` block).
pub fn stats_tags_yaml() -> String {
    fs::read_to_string(repo_root().join("envoy/stats-tags.yaml")).expect("envoy/stats-tags.yaml")
}

/// Renders `envoy/<file>` with `vars` (`{{KEY}}` placeholders), its `stats_config` replaced
/// by `envoy/stats-tags.yaml`. For a test's changes use [`Shipped`].
pub fn shipped(file: &str, vars: &[(&str, String)]) -> String {
    Shipped::new(file, vars).yaml()
}

/// A change [`Shipped`] makes to the rendered config (as JSON, before it is written).
type Edit = Box<dyn Fn(&mut Value)>;

/// A shipped config from `envoy/` (what `make run` and users deploy) rendered for a test,
/// with the test's changes made on the parsed config by name (a filter's configuration,
/// whether it runs alone or as a stage of the `chain` module; a filter field; a connection
/// manager field), never by editing the rendered text.
pub struct Shipped {
    file: String,
    vars: Vec<(String, String)>,
    edits: Vec<Edit>,
    separate: bool,
}

impl Shipped {
    /// `envoy/<file>` with `vars` for its `{{KEY}}` placeholders.
    pub fn new(file: &str, vars: &[(&str, String)]) -> Self {
        Self {
            file: file.to_string(),
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            edits: Vec::new(),
            separate: false,
        }
    }

    /// With `on`, each stage of the shipped `chain` module, with its configuration (after
    /// the other edits), as a module of its own (dist/<name>.wasm), in the chain's order and
    /// place: what the configs were before the chain module became the default, for tests
    /// that compare both.
    pub fn as_separate(mut self, on: bool) -> Self {
        self.separate = on;
        self
    }

    /// `envoy/sidecar.yaml` on `ports` in front of the model server on `model_server`,
    /// serving `model`: no loader check (its cluster points at port 1, where nothing
    /// listens), readiness polled every 500 ms.
    pub fn sidecar(ports: Ports, model_server: u16, model: &str) -> Self {
        Self::new(
            "sidecar.yaml",
            &[
                ("LISTEN_PORT", ports.listen.to_string()),
                ("ADMIN_PORT", ports.admin.to_string()),
                ("SIM_PORT", model_server.to_string()),
                ("LOADER_PORT", "1".to_string()),
                ("WASM_DIR", wasm_dir()),
                ("MODEL", model.to_string()),
                ("READINESS_LOADER", "null".to_string()),
                ("READINESS_PERIOD", "500ms".to_string()),
            ],
        )
    }

    /// `envoy/gateway.yaml` on `ports` in front of pods a, b (llama-3-8b) and c (qwen-2-7b).
    pub fn gateway(ports: Ports, pods: [u16; 3]) -> Self {
        Self::new(
            "gateway.yaml",
            &[
                ("LISTEN_PORT", ports.listen.to_string()),
                ("ADMIN_PORT", ports.admin.to_string()),
                ("WASM_DIR", wasm_dir()),
                ("POD_A_PORT", pods[0].to_string()),
                ("POD_B_PORT", pods[1].to_string()),
                ("POD_C_PORT", pods[2].to_string()),
            ],
        )
    }

    /// Sets placeholder `key`.
    pub fn var(mut self, key: &str, value: impl ToString) -> Self {
        let value = value.to_string();
        match self.vars.iter_mut().find(|(k, _)| k == key) {
            Some(v) => v.1 = value,
            None => self.vars.push((key.to_string(), value)),
        }
        self
    }

    /// Sidecar: the readiness gate also requires the loader's `/ready` on `port`.
    pub fn loader(self, port: u16) -> Self {
        self.var("LOADER_PORT", port).var(
            "READINESS_LOADER",
            r#"{"cluster": "loader", "path": "/ready"}"#,
        )
    }

    /// Sidecar: the readiness gate's poll period.
    pub fn readiness_period(self, period: &str) -> Self {
        self.var("READINESS_PERIOD", period)
    }

    /// Changes the configuration (JSON) of filter `module` (a wasm filter's root id, or the
    /// name of a stage of a `chain` module).
    pub fn plugin_config(mut self, module: &str, edit: impl Fn(&mut Value) + 'static) -> Self {
        let module = module.to_string();
        self.edits.push(Box::new(move |root| {
            for filter in wasm_filters(root, &module) {
                let in_chain = filter["typed_config"]["config"]["root_id"] != module.as_str();
                let value = &mut filter["typed_config"]["config"]["configuration"]["value"];
                let mut config = configuration(value, &module);
                if in_chain {
                    let stages = config["filters"].as_array_mut().into_iter().flatten();
                    for stage in stages.filter(|s| s["name"] == module.as_str()) {
                        edit(&mut stage["config"]);
                    }
                } else {
                    edit(&mut config);
                }
                *value = json!(config.to_string());
            }
        }));
        self
    }

    /// Sidecar: the load shedder refuses at once instead of holding (flow control off).
    pub fn flow_control(self, on: bool) -> Self {
        self.plugin_config("load_shedder", move |c| {
            if let Some(flow) = c.get_mut("flow").and_then(Value::as_object_mut) {
                flow.insert("enabled".into(), json!(on));
            }
        })
    }

    /// Gateway: the endpoint picker's pool of `model` is these ports on 127.0.0.1.
    pub fn picker_pool(self, model: &str, ports: &[u16]) -> Self {
        let model = model.to_string();
        let hosts: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        self.plugin_config("endpoint_picker", move |c| {
            c["pools"][&model] = json!(hosts);
        })
    }

    /// Sets a field of the `config` (the `PluginConfig`) of the wasm filter that runs
    /// `module` (alone, or the `chain` module it is a stage of), e.g.
    /// `allow_on_headers_stop_iteration`.
    pub fn filter_field(mut self, module: &str, key: &str, value: Value) -> Self {
        let (module, key) = (module.to_string(), key.to_string());
        self.edits.push(Box::new(move |root| {
            for filter in wasm_filters(root, &module) {
                filter["typed_config"]["config"][&key] = value.clone();
            }
        }));
        self
    }

    /// Sets an HttpConnectionManager field of every listener, e.g. `stream_idle_timeout`.
    pub fn hcm(mut self, key: &str, value: Value) -> Self {
        let key = key.to_string();
        self.edits.push(Box::new(move |root| {
            for hcm in connection_managers(root) {
                hcm[&key] = value.clone();
            }
        }));
        self
    }

    /// The config as YAML, `envoy/stats-tags.yaml` in place of its `stats_config`.
    pub fn yaml(&self) -> String {
        let path = repo_root().join("envoy").join(&self.file);
        let template =
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let vars: Vec<(&str, String)> = self
            .vars
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let rendered = render(&template, &vars);
        assert!(
            !rendered.contains("{{"),
            "{}: placeholder left unrendered",
            self.file
        );
        let mut root: Value = serde_yaml::from_str(&rendered)
            .unwrap_or_else(|e| panic!("{}: not YAML: {e}", self.file));
        let tags: Value = serde_yaml::from_str(&stats_tags_yaml()).expect("stats-tags YAML");
        root["stats_config"] = tags["stats_config"].clone();
        for edit in &self.edits {
            edit(&mut root);
        }
        if self.separate {
            for hcm in connection_managers(&mut root) {
                into_separate(&mut hcm["http_filters"]);
            }
        }
        serde_yaml::to_string(&root).expect("bootstrap YAML")
    }

    /// Writes the config to `<dir>/<name>.yaml` and starts Envoy on it; when a port was
    /// taken meanwhile, again on fresh `LISTEN_PORT` and `ADMIN_PORT`. The ports in use are
    /// the returned Envoy's `port` and `admin_port`.
    pub fn start(mut self, dir: &Path, name: &str) -> Envoy {
        let mut first = true;
        with_fresh_ports(name, || {
            if !std::mem::take(&mut first) {
                let ports = Ports::free();
                self = std::mem::replace(&mut self, Shipped::new("", &[]))
                    .var("LISTEN_PORT", ports.listen)
                    .var("ADMIN_PORT", ports.admin);
            }
            let port = |key: &str| -> u16 {
                self.vars
                    .iter()
                    .find(|(k, _)| k == key)
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0)
            };
            let mut envoy = Envoy::try_start(dir, name, &self.yaml(), port("ADMIN_PORT"))?;
            envoy.port = port("LISTEN_PORT");
            Ok(envoy)
        })
    }
}

/// Every HttpConnectionManager config of the static listeners.
fn connection_managers(root: &mut Value) -> Vec<&mut Value> {
    let mut out = Vec::new();
    let listeners = root["static_resources"]["listeners"].as_array_mut();
    for listener in listeners.into_iter().flatten() {
        let chains = listener["filter_chains"].as_array_mut();
        for chain in chains.into_iter().flatten() {
            let filters = chain["filters"].as_array_mut();
            for f in filters.into_iter().flatten() {
                if f["name"] == "envoy.filters.network.http_connection_manager" {
                    out.push(&mut f["typed_config"]);
                }
            }
        }
    }
    out
}

/// A wasm filter's configuration (JSON) parsed; panics when it is not JSON.
fn configuration(value: &Value, module: &str) -> Value {
    value
        .as_str()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_else(|| panic!("{module}: configuration is not JSON"))
}

/// Replaces each `chain` filter of `filters` by its stages, each a wasm filter of its own
/// module with the stage's configuration and the chain's other fields, in its place.
fn into_separate(filters: &mut Value) {
    let Some(list) = filters.as_array_mut() else {
        return;
    };
    let mut out = Vec::new();
    for f in list.drain(..) {
        if f["typed_config"]["config"]["root_id"] != "chain" {
            out.push(f);
            continue;
        }
        let chain = configuration(
            &f["typed_config"]["config"]["configuration"]["value"],
            "chain",
        );
        for stage in chain["filters"].as_array().into_iter().flatten() {
            let name = stage["name"].as_str().expect("stage name").to_string();
            let mut one = f.clone();
            one["name"] = json!(format!("modelgate.{name}"));
            let c = &mut one["typed_config"]["config"];
            c["name"] = json!(name);
            c["root_id"] = json!(name);
            c["vm_config"]["code"]["local"]["filename"] =
                json!(format!("{}/{name}.wasm", wasm_dir()));
            c["configuration"]["value"] = json!(stage["config"].to_string());
            out.push(one);
        }
    }
    *list = out;
}

/// The HTTP wasm filters that run `module` (by root id, or a `chain` filter with a stage of
/// that name) in every listener; panics when there is none, so a test never edits a filter
/// that is not there.
fn wasm_filters<'a>(root: &'a mut Value, module: &str) -> Vec<&'a mut Value> {
    let mut out = Vec::new();
    for hcm in connection_managers(root) {
        let filters = hcm["http_filters"].as_array_mut();
        for f in filters.into_iter().flatten() {
            let config = &f["typed_config"]["config"];
            let runs = config["root_id"] == module
                || (config["root_id"] == "chain"
                    && config["configuration"]["value"]
                        .as_str()
                        .and_then(|s| serde_json::from_str::<Value>(s).ok())
                        .is_some_and(|c| {
                            c["filters"]
                                .as_array()
                                .is_some_and(|st| st.iter().any(|s| s["name"] == module))
                        }));
            if runs {
                out.push(f);
            }
        }
    }
    assert!(!out.is_empty(), "no {module} filter in the config");
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
    fn shipped_configs_carry_the_shipped_stats_tags_and_the_tests_changes() {
        let expected = stats_config(&stats_tags_yaml());
        assert!(expected["stats_tags"]
            .as_sequence()
            .is_some_and(|s| !s.is_empty()));
        let ports = Ports {
            listen: 10,
            admin: 11,
        };
        let yaml = Shipped::gateway(ports, [1, 1, 2])
            .picker_pool("llama-3-8b", &[1])
            .filter_field(
                "model_router",
                "allow_on_headers_stop_iteration",
                json!(false),
            )
            .hcm("stream_idle_timeout", json!("2s"))
            .yaml();
        assert_eq!(stats_config(&yaml), expected);
        let doc: Value = serde_yaml::from_str(&yaml).expect("YAML");
        let hcm = &doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        assert_eq!(hcm["stream_idle_timeout"], "2s");
        // Shipped: one chain module; the field is set on it, the edit made in its stage.
        let chain = wasm_config(&doc, "chain");
        assert_eq!(chain["allow_on_headers_stop_iteration"], false);
        let stages = stages(&chain);
        let names: Vec<&str> = stages.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "ml_metrics",
                "model_router",
                "load_shedder",
                "endpoint_picker"
            ]
        );
        assert_eq!(stages[3].1["pools"]["llama-3-8b"], json!(["127.0.0.1:1"]));
        let sidecar: Value =
            serde_yaml::from_str(&Shipped::sidecar(ports, 3, "m").flow_control(false).yaml())
                .unwrap();
        let shedder = &stages_of(&sidecar)[2];
        assert_eq!(shedder.0, "load_shedder");
        assert_eq!(shedder.1["flow"]["enabled"], false);
        assert_eq!(shedder.1["flow"]["max_running"], 4);
    }

    #[test]
    fn as_separate_runs_each_stage_as_its_own_module_in_order() {
        let ports = Ports {
            listen: 10,
            admin: 11,
        };
        let shipped: Value =
            serde_yaml::from_str(&Shipped::gateway(ports, [1, 1, 2]).yaml()).unwrap();
        let separate: Value = serde_yaml::from_str(
            &Shipped::gateway(ports, [1, 1, 2])
                .as_separate(true)
                .picker_pool("llama-3-8b", &[7])
                .yaml(),
        )
        .unwrap();
        let filters = separate["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
            [0]["typed_config"]["http_filters"]
            .as_array()
            .cloned()
            .unwrap();
        let roots: Vec<&str> = filters
            .iter()
            .map(|f| {
                f["typed_config"]["config"]["root_id"]
                    .as_str()
                    .unwrap_or("-")
            })
            .collect();
        assert_eq!(
            roots,
            [
                "ml_metrics",
                "model_router",
                "load_shedder",
                "endpoint_picker",
                "-"
            ]
        );
        for (f, (name, config)) in filters.iter().zip(stages_of(&shipped)) {
            let c = &f["typed_config"]["config"];
            assert_eq!(f["name"], format!("modelgate.{name}"));
            assert!(c["vm_config"]["code"]["local"]["filename"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/{name}.wasm")));
            assert_eq!(c["vm_config"]["vm_id"], "modelgate");
            let own: Value =
                serde_json::from_str(c["configuration"]["value"].as_str().unwrap()).unwrap();
            if name == "endpoint_picker" {
                assert_eq!(own["pools"]["llama-3-8b"], json!(["127.0.0.1:7"]));
            } else {
                assert_eq!(own, config, "{name}");
            }
        }
    }

    /// The `config` of the wasm filter with root id `root` in the first listener.
    fn wasm_config(doc: &Value, root: &str) -> Value {
        doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            ["http_filters"]
            .as_array()
            .and_then(|fs| {
                fs.iter()
                    .find(|f| f["typed_config"]["config"]["root_id"] == root)
            })
            .map(|f| f["typed_config"]["config"].clone())
            .expect(root)
    }

    /// The (name, config) of each stage of a chain filter's `config`.
    fn stages(chain: &Value) -> Vec<(String, Value)> {
        let c: Value =
            serde_json::from_str(chain["configuration"]["value"].as_str().unwrap()).unwrap();
        c["filters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["name"].as_str().unwrap().to_string(), s["config"].clone()))
            .collect()
    }

    fn stages_of(doc: &Value) -> Vec<(String, Value)> {
        stages(&wasm_config(doc, "chain"))
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
