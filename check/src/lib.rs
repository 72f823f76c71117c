//! `modelgate check`: finds every modelgate filter configuration in JSON files, Envoy
//! bootstraps and Istio manifests, validates each with the code the filter itself runs in
//! `on_configure` (modelgate-core), and cross-checks the filters that share a proxy, alone
//! or as stages of a `chain` module.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use modelgate_core::config::{ConfigError, FilterConfig};
use modelgate_core::metrics::MetricsConfig;
use modelgate_core::picker::PickerConfig;
use modelgate_core::readiness::ReadinessConfig;
use modelgate_core::router::Router;
use modelgate_core::shed::ShedConfig;
use serde_json::Value;

const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
use modelgate_core::vocab::MODEL_HEADER;
/// Istio's root namespace: its WasmPlugins and EnvoyFilters apply in every namespace.
const ROOT_NAMESPACE: &str = "istio-system";

/// The modelgate filters, by module name: core's own list, so a new filter is checked too.
pub use modelgate_core::config::FilterKind as Filter;

/// Where a configuration (or a problem) was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    /// 1-based YAML document number (1 for JSON files).
    pub doc: usize,
    /// `Kind namespace/name` of a Kubernetes object, or `bootstrap`, or `json`.
    pub object: String,
    pub filter: Option<Filter>,
    /// Path of the configuration inside the document.
    pub path: String,
}

/// One error: where, which field, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub at: Location,
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = &self.at;
        write!(f, "{}: document {} ({})", a.file, a.doc, a.object)?;
        if let Some(filter) = a.filter {
            write!(f, ": {}", filter.name())?;
        }
        if !a.path.is_empty() {
            write!(f, " at {}", a.path)?;
        }
        write!(f, ": field `{}`: {}", self.field, self.message)
    }
}

/// The proxy a configuration lands in, for the cross-checks.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
    /// One Envoy bootstrap document (file, doc).
    Bootstrap(String, usize),
    /// Istio: the namespace and workload selector of a WasmPlugin / EnvoyFilter.
    Istio {
        namespace: String,
        labels: BTreeMap<String, String>,
    },
}

/// What a valid configuration tells the cross-checks.
#[derive(Debug, Clone)]
enum Facts {
    Router {
        /// Every client-facing name and alias, and every target.
        names: BTreeSet<String>,
        /// The values the router sets in `x-modelgate-model`.
        targets: BTreeSet<String>,
    },
    Metrics {
        models: BTreeSet<String>,
        scrape: Option<Value>,
    },
    Shedder {
        scrape: Option<Value>,
    },
    /// A filter with nothing to cross-check.
    Other,
}

/// One filter found valid: alone, or one stage of a chain (whose `at` is the chain's).
struct Found {
    at: Location,
    scope: Scope,
    /// The filter the facts are about (a chain's stage: that stage's filter).
    kind: Filter,
    /// Prefix of the facts' fields in the configuration: `""`, or `filters[i].config.`.
    prefix: String,
    facts: Facts,
}

/// The result of checking a set of files together.
#[derive(Default)]
pub struct Report {
    pub checked: usize,
    pub problems: Vec<Problem>,
    found: Vec<Found>,
    /// `x-modelgate-model` values that routes match on, per bootstrap document.
    bootstrap_routes: BTreeMap<(String, usize), BTreeSet<String>>,
    /// The same from Istio VirtualServices (any document), `None` when there are none.
    istio_routes: Option<BTreeSet<String>>,
    /// Pods of Deployments: namespace and template labels.
    pods: Vec<(String, BTreeMap<String, String>)>,
}

impl Report {
    /// Checks one file's text. `filter` names the filter of a plain JSON configuration;
    /// `vars` replaces `{{KEY}}` placeholders of the shipped templates first.
    pub fn check_text(
        &mut self,
        file: &str,
        text: &str,
        filter: Option<Filter>,
        vars: &[(String, String)],
    ) {
        let mut text = text.to_string();
        for (k, v) in vars {
            text = text.replace(&format!("{{{{{k}}}}}"), v);
        }
        let at = |doc: usize, object: &str| Location {
            file: file.to_string(),
            doc,
            object: object.to_string(),
            filter,
            path: String::new(),
        };
        if let Some(filter) = filter {
            let at = Location {
                filter: Some(filter),
                ..at(1, "json")
            };
            self.config(at, Scope::Bootstrap(file.to_string(), 1), &text);
            return;
        }
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let doc_no = i + 1;
            let value = match <serde_yaml::Value as serde::Deserialize>::deserialize(doc) {
                Ok(v) => yaml_to_json(v),
                Err(e) => {
                    self.problem(at(doc_no, "yaml"), "<document>", format!("not YAML: {e}"));
                    // A syntax error ends the stream: nothing after it can be read.
                    return;
                }
            };
            self.document(file, doc_no, &value);
        }
    }

    fn problem(&mut self, at: Location, field: &str, message: String) {
        self.problems.push(Problem {
            at,
            field: field.to_string(),
            message,
        });
    }

    fn document(&mut self, file: &str, doc: usize, value: &Value) {
        let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
        let meta = value.get("metadata");
        let namespace = meta
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        let name = meta
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let object = if kind.is_empty() {
            "bootstrap".to_string()
        } else {
            format!("{kind} {namespace}/{name}")
        };
        let at = |filter: Option<Filter>, path: &str| Location {
            file: file.to_string(),
            doc,
            object: object.clone(),
            filter,
            path: path.to_string(),
        };
        let spec = value.get("spec");
        match kind {
            "WasmPlugin" => {
                let plugin = spec
                    .and_then(|s| s.get("pluginName"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let Some(filter) = Filter::from_name(plugin) else {
                    return;
                };
                let labels = labels_at(spec, &["selector", "matchLabels"]);
                let config = spec
                    .and_then(|s| s.get("pluginConfig"))
                    .cloned()
                    .unwrap_or(Value::Object(Default::default()));
                let text = config.to_string();
                self.config(
                    at(Some(filter), "spec.pluginConfig"),
                    Scope::Istio { namespace, labels },
                    &text,
                );
            }
            "EnvoyFilter" => {
                let labels = labels_at(spec, &["workloadSelector", "labels"]);
                let scope = Scope::Istio { namespace, labels };
                let mut hits = Vec::new();
                find_wasm(value, String::new(), &mut hits);
                for (path, filter, text) in hits {
                    self.config(at(Some(filter), &path), scope.clone(), &text);
                }
            }
            "VirtualService" => {
                let routes = self.istio_routes.get_or_insert_with(BTreeSet::new);
                for http in array_at(spec, "http") {
                    for m in array_at(Some(http), "match") {
                        if let Some(v) = m
                            .get("headers")
                            .and_then(|h| h.get(MODEL_HEADER))
                            .and_then(|h| h.get("exact"))
                            .and_then(Value::as_str)
                        {
                            routes.insert(v.to_string());
                        }
                    }
                }
            }
            "Deployment" => {
                let labels = labels_at(spec, &["template", "metadata", "labels"]);
                self.pods.push((namespace, labels));
            }
            "" if value.get("static_resources").is_some() => {
                let scope = Scope::Bootstrap(file.to_string(), doc);
                let mut hits = Vec::new();
                find_wasm(value, String::new(), &mut hits);
                for (path, filter, text) in hits {
                    self.config(at(Some(filter), &path), scope.clone(), &text);
                }
                let mut routes = BTreeSet::new();
                find_route_matches(value, &mut routes);
                self.bootstrap_routes
                    .insert((file.to_string(), doc), routes);
            }
            _ => {}
        }
    }

    /// Validates one configuration with the filter's own code.
    fn config(&mut self, at: Location, scope: Scope, text: &str) {
        let Some(filter) = at.filter else { return };
        self.checked += 1;
        if let Some(p) = placeholder(text) {
            self.problem(
                at,
                "<configuration>",
                format!("template placeholder {{{{{p}}}}} left: pass --set {p}=VALUE"),
            );
            return;
        }
        match validate(filter, text.as_bytes()) {
            Ok(found) => {
                for (kind, prefix, facts) in found {
                    self.found.push(Found {
                        at: at.clone(),
                        scope: scope.clone(),
                        kind,
                        prefix,
                        facts,
                    });
                }
            }
            Err(e) => self.problems.push(Problem {
                at,
                field: e.field,
                message: e.message,
            }),
        }
    }

    /// Cross-checks between the filters of one proxy; call after every file is in.
    pub fn finish(&mut self) {
        let mut problems = Vec::new();
        for f in &self.found {
            let Facts::Router { targets, .. } = &f.facts else {
                continue;
            };
            let routes = match &f.scope {
                Scope::Bootstrap(file, doc) => self.bootstrap_routes.get(&(file.clone(), *doc)),
                Scope::Istio { .. } => self.istio_routes.as_ref(),
            };
            let Some(routes) = routes else { continue };
            for t in targets.iter().filter(|t| !routes.contains(*t)) {
                problems.push(Problem {
                    at: f.at.clone(),
                    field: format!("{}models", f.prefix),
                    message: format!(
                        "target `{t}` has no route matching header {MODEL_HEADER}: {t:?}; \
                         its requests would get the default route"
                    ),
                });
            }
        }
        for proxy in self.proxies() {
            let members: Vec<&Found> = proxy.iter().filter_map(|i| self.found.get(*i)).collect();
            cross_check_proxy(&members, &mut problems);
        }
        problems.dedup();
        self.problems.extend(problems);
    }

    /// Groups the valid configurations by the proxy they land in: per bootstrap
    /// document; for Istio, per Deployment whose pods they select, and per distinct
    /// selector that selects no Deployment here (e.g. the ingress gateway).
    fn proxies(&self) -> Vec<Vec<usize>> {
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut by_bootstrap: BTreeMap<(String, usize), Vec<usize>> = BTreeMap::new();
        let mut unplaced: Vec<(String, BTreeMap<String, String>, Vec<usize>)> = Vec::new();
        let mut pods: Vec<Vec<usize>> = vec![Vec::new(); self.pods.len()];
        for (i, f) in self.found.iter().enumerate() {
            match &f.scope {
                Scope::Bootstrap(file, doc) => by_bootstrap
                    .entry((file.clone(), *doc))
                    .or_default()
                    .push(i),
                Scope::Istio { namespace, labels } => {
                    let mut placed = false;
                    for (p, (pod_ns, pod_labels)) in self.pods.iter().enumerate() {
                        let ns_ok = namespace == pod_ns || namespace == ROOT_NAMESPACE;
                        let sel_ok = labels.iter().all(|(k, v)| pod_labels.get(k) == Some(v));
                        if ns_ok && sel_ok {
                            if let Some(g) = pods.get_mut(p) {
                                g.push(i);
                            }
                            placed = true;
                        }
                    }
                    if !placed {
                        match unplaced
                            .iter_mut()
                            .find(|(n, l, _)| n == namespace && l == labels)
                        {
                            Some((_, _, g)) => g.push(i),
                            None => unplaced.push((namespace.clone(), labels.clone(), vec![i])),
                        }
                    }
                }
            }
        }
        groups.extend(by_bootstrap.into_values());
        groups.extend(pods);
        groups.extend(unplaced.into_iter().map(|(_, _, g)| g));
        groups
    }
}

/// Metrics `models` must name every name the router on the same proxy knows, and every
/// filter with a `scrape` block must give the same one (they share one scraper).
fn cross_check_proxy(members: &[&Found], problems: &mut Vec<Problem>) {
    let router_names: BTreeSet<&String> = members
        .iter()
        .filter_map(|f| match &f.facts {
            Facts::Router { names, .. } => Some(names),
            _ => None,
        })
        .flatten()
        .collect();
    for f in members {
        if let Facts::Metrics { models, .. } = &f.facts {
            for n in router_names.iter().filter(|n| !models.contains(**n)) {
                problems.push(Problem {
                    at: f.at.clone(),
                    field: format!("{}models", f.prefix),
                    message: format!(
                        "`{n}` (a name of the model router on this proxy) is not listed: \
                         its requests are counted as `other`"
                    ),
                });
            }
        }
    }
    let scrapes: Vec<(&Found, &Value)> = members
        .iter()
        .filter_map(|f| match &f.facts {
            Facts::Metrics {
                scrape: Some(s), ..
            }
            | Facts::Shedder { scrape: Some(s) } => Some((*f, s)),
            _ => None,
        })
        .collect();
    if let Some((first, block)) = scrapes.first() {
        for (f, s) in scrapes.iter().skip(1) {
            if s != block {
                problems.push(Problem {
                    at: f.at.clone(),
                    field: format!("{}scrape", f.prefix),
                    message: format!(
                        "differs from the `scrape` block of {}{} in {} (document {}): filters \
                         on one proxy share one scraper and must give the same block",
                        first.kind.name(),
                        if first.prefix.is_empty() {
                            String::new()
                        } else {
                            format!(" (`{}` of a chain)", first.prefix.trim_end_matches('.'))
                        },
                        first.at.file,
                        first.at.doc
                    ),
                });
            }
        }
    }
}

/// Runs the filter's own configuration code (the same calls as its `on_configure`): the
/// facts of the filter, or of each stage of a chain (with the prefix of its fields).
fn validate(filter: Filter, bytes: &[u8]) -> Result<Vec<(Filter, String, Facts)>, ConfigError> {
    if filter != Filter::Chain {
        return facts(filter, bytes).map(|f| vec![(filter, String::new(), f)]);
    }
    let chain = modelgate_core::chain::ChainConfig::parse(bytes)?;
    let mut out = Vec::new();
    for (i, (kind, stage)) in chain.stages.iter().enumerate() {
        let prefix = format!("filters[{i}].config.");
        // Valid: the chain's parse validated every stage with the same code.
        let f = facts(*kind, stage)
            .map_err(|e| ConfigError::new(format!("{prefix}{}", e.field), e.message))?;
        out.push((*kind, prefix, f));
    }
    Ok(out)
}

/// What one (non-chain) filter's valid configuration tells the cross-checks.
fn facts(filter: Filter, bytes: &[u8]) -> Result<Facts, ConfigError> {
    match filter {
        Filter::ReadinessGate => ReadinessConfig::parse(bytes).map(|_| Facts::Other),
        Filter::EndpointPicker => PickerConfig::parse(bytes).map(|_| Facts::Other),
        Filter::Chain => Err(ConfigError::new(
            "<root>",
            "a chain cannot be a stage of a chain",
        )),
        Filter::ModelRouter => {
            let router = Router::parse(bytes)?;
            let mut names = BTreeSet::new();
            let mut targets = BTreeSet::new();
            for m in router.models() {
                names.insert(m.name.clone());
                names.extend(m.aliases.iter().cloned());
                if m.targets.is_empty() {
                    targets.insert(m.name.clone());
                }
                for t in &m.targets {
                    names.insert(t.name.clone());
                    targets.insert(t.name.clone());
                }
            }
            Ok(Facts::Router { names, targets })
        }
        Filter::LoadShedder => {
            ShedConfig::parse(bytes)?;
            Ok(Facts::Shedder {
                scrape: raw_field(bytes, "scrape"),
            })
        }
        Filter::MlMetrics => {
            let cfg = MetricsConfig::parse(bytes)?;
            Ok(Facts::Metrics {
                models: cfg.models.into_iter().collect(),
                scrape: raw_field(bytes, "scrape"),
            })
        }
    }
}

fn raw_field(bytes: &[u8], key: &str) -> Option<Value> {
    serde_json::from_slice::<Value>(bytes)
        .ok()?
        .get(key)
        .filter(|v| !v.is_null())
        .cloned()
}

/// The first `{{KEY}}` placeholder left in a configuration, if any.
fn placeholder(text: &str) -> Option<&str> {
    let start = text.find("{{")? + 2;
    let rest = text.get(start..)?;
    let end = rest.find("}}")?;
    let key = rest.get(..end)?;
    (!key.is_empty() && key.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')).then_some(key)
}

/// Every Wasm filter config of a modelgate filter below `v`: (path of the JSON string,
/// filter, the JSON text).
fn find_wasm(v: &Value, path: String, out: &mut Vec<(String, Filter, String)>) {
    match v {
        Value::Object(map) => {
            if map.get("@type").and_then(Value::as_str) == Some(WASM_TYPE) {
                if let Some(config) = map.get("config") {
                    let name = ["root_id", "name"]
                        .iter()
                        .find_map(|k| config.get(*k).and_then(Value::as_str))
                        .and_then(Filter::from_name);
                    if let Some(filter) = name {
                        let value = config.get("configuration").and_then(|c| c.get("value"));
                        let text = value.and_then(Value::as_str).unwrap_or("").to_string();
                        out.push((format!("{path}.config.configuration.value"), filter, text));
                        return;
                    }
                }
            }
            for (k, child) in map {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                find_wasm(child, p, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                find_wasm(child, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// `x-modelgate-model` values that Envoy routes match exactly (`string_match.exact` or
/// the older `exact_match`).
fn find_route_matches(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(map) => {
            if map.get("name").and_then(Value::as_str) == Some(MODEL_HEADER) {
                let exact = map
                    .get("string_match")
                    .and_then(|s| s.get("exact"))
                    .or_else(|| map.get("exact_match"))
                    .and_then(Value::as_str);
                if let Some(e) = exact {
                    out.insert(e.to_string());
                }
            }
            map.values().for_each(|c| find_route_matches(c, out));
        }
        Value::Array(items) => items.iter().for_each(|c| find_route_matches(c, out)),
        _ => {}
    }
}

fn labels_at(v: Option<&Value>, path: &[&str]) -> BTreeMap<String, String> {
    let mut cur = v;
    for p in path {
        cur = cur.and_then(|c| c.get(*p));
    }
    cur.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn array_at<'a>(v: Option<&'a Value>, key: &str) -> impl Iterator<Item = &'a Value> {
    v.and_then(|v| v.get(key))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// YAML to JSON; non-string keys (e.g. `8000:`) become their text.
fn yaml_to_json(v: serde_yaml::Value) -> Value {
    use serde_yaml::Value as Y;
    match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => serde_json::to_value(&n).unwrap_or(Value::Null),
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(items.into_iter().map(yaml_to_json).collect()),
        Y::Mapping(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let key = match k {
                        Y::String(s) => s,
                        other => serde_yaml::to_string(&other)
                            .unwrap_or_default()
                            .trim()
                            .to_string(),
                    };
                    (key, yaml_to_json(v))
                })
                .collect(),
        ),
        Y::Tagged(t) => yaml_to_json(t.value),
    }
}

#[cfg(test)]
mod tests;
