use super::*;

fn check(file: &str, text: &str) -> Report {
    let mut r = Report::default();
    r.check_text(file, text, None, &[]);
    r.finish();
    r
}

const ROUTER: &str = r#"{"models": [{"name": "a", "aliases": ["x"]},
  {"name": "c", "targets": [{"name": "a"}, {"name": "b"}]}]}"#;

fn bootstrap(router: &str, metrics_models: &str, routes: &[&str]) -> String {
    let wasm = |name: &str, cfg: &str| {
        format!(
            "    - name: {name}\n      typed_config:\n        \"@type\": {WASM_TYPE}\n        config:\n          root_id: {name}\n          configuration:\n            value: '{}'\n",
            cfg.replace('\n', " ")
        )
    };
    let mut s = String::from("static_resources:\n  listeners:\n  - filters:\n");
    s += &wasm("ml_metrics", &format!(r#"{{"models": {metrics_models}}}"#));
    s += &wasm("model_router", router);
    s += "  routes:\n";
    for r in routes {
        s += &format!(
            "  - match: {{headers: [{{name: x-modelgate-model, string_match: {{exact: {r}}}}}]}}\n"
        );
    }
    s
}

#[test]
fn invalid_field_is_reported_with_its_path() {
    let bad = r#"{"models": [{"name": "a", "criticality": "urgent"}]}"#;
    let r = check("b.yaml", &bootstrap(bad, r#"["a"]"#, &["a"]));
    let p = r.problems.first().expect("a problem");
    assert_eq!(p.at.filter, Some(Filter::ModelRouter));
    assert!(p.field.contains("criticality"), "{p}");
    assert!(
        p.to_string()
            .contains("b.yaml: document 1 (bootstrap): model_router at "),
        "{p}"
    );
}

#[test]
fn wasm_plugin_config_is_validated_and_unknown_fields_named() {
    let doc = "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: g, namespace: m}\nspec:\n  pluginName: readiness_gate\n  pluginConfig: {model: a, perod: 1s}\n";
    let r = check("w.yaml", doc);
    let p = r.problems.first().expect("a problem");
    assert_eq!(p.field, "perod");
    assert_eq!(p.at.object, "WasmPlugin m/g");
    assert_eq!(p.at.path, "spec.pluginConfig");
}

#[test]
fn different_scrape_blocks_on_one_pod_are_reported() {
    let plugin = |name: &str, filter: &str, cfg: &str| {
        format!("---\nkind: WasmPlugin\nmetadata: {{name: {name}, namespace: m}}\nspec:\n  selector: {{matchLabels: {{app: s}}}}\n  pluginName: {filter}\n  pluginConfig: {cfg}\n")
    };
    let pod = "---\nkind: Deployment\nmetadata: {name: d, namespace: m}\nspec:\n  template:\n    metadata: {labels: {app: s, pool: p}}\n";
    let same = plugin("s", "load_shedder", "{scrape: {cluster: c, period: 250ms}}")
        + &plugin("m", "ml_metrics", "{scrape: {cluster: c, period: 250ms}}")
        + pod;
    assert!(check("p.yaml", &same).problems.is_empty());
    let differ = plugin("s", "load_shedder", "{scrape: {cluster: c, period: 250ms}}")
        + &plugin("m", "ml_metrics", "{scrape: {cluster: c, period: 1s}}")
        + pod;
    let r = check("p.yaml", &differ);
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    assert_eq!(r.problems[0].field, "scrape");
}

#[test]
fn template_placeholder_in_a_config_is_reported() {
    let r = check(
        "b.yaml",
        &bootstrap(r#"{"models": [{"name": "{{MODEL}}"}]}"#, "[]", &[]),
    );
    assert!(
        r.problems[0].message.contains("--set MODEL="),
        "{:?}",
        r.problems
    );
}

#[test]
fn non_modelgate_wasm_filters_are_ignored() {
    let doc = "kind: WasmPlugin\nmetadata: {name: other}\nspec: {pluginName: basic_auth, pluginConfig: {x: 1}}\n";
    let r = check("o.yaml", doc);
    assert_eq!((r.checked, r.problems.len()), (0, 0));
}

#[test]
fn a_chain_is_checked_stage_by_stage() {
    let chain = |router: &str| {
        format!(
            "static_resources:\n  listeners:\n  - filters:\n    - name: chain\n      typed_config:\n        \"@type\": {WASM_TYPE}\n        config:\n          root_id: chain\n          configuration:\n            value: '{{\"filters\": [{{\"name\": \"model_router\", \"config\": {router}}}]}}'\n  routes:\n  - match: {{headers: [{{name: x-modelgate-model, string_match: {{exact: a}}}}]}}\n",
        )
    };
    let ok = check("c.yaml", &chain(r#"{"models": [{"name": "a"}]}"#));
    assert_eq!(ok.checked, 1);
    assert!(ok.problems.is_empty(), "{:?}", ok.problems);
    let bad = check(
        "c.yaml",
        &chain(r#"{"models": [{"name": "a", "criticality": "urgent"}]}"#),
    );
    let p = bad.problems.first().expect("a problem");
    assert_eq!(p.at.filter, Some(Filter::Chain));
    assert_eq!(p.field, "filters[0].config.models[0].criticality", "{p}");
}

/// One bootstrap with a chain of ml_metrics (models `metrics_models`), then the router,
/// and routes matching `routes`.
fn chain_bootstrap(router: &str, metrics_models: &str, routes: &[&str]) -> String {
    let config = format!(
        r#"{{"filters": [{{"name": "ml_metrics", "config": {{"models": {metrics_models}}}}}, {{"name": "model_router", "config": {router}}}]}}"#
    )
    .replace('\n', " ");
    let mut s = format!(
        "static_resources:\n  listeners:\n  - filters:\n    - name: chain\n      typed_config:\n        \"@type\": {WASM_TYPE}\n        config:\n          root_id: chain\n          configuration:\n            value: '{config}'\n"
    );
    s += "  routes:\n";
    for r in routes {
        s += &format!(
            "  - match: {{headers: [{{name: x-modelgate-model, string_match: {{exact: {r}}}}}]}}\n"
        );
    }
    s
}

/// A bootstrap, the filters it holds, and where it names the metrics' and the router's
/// `models`.
type Form = (String, usize, [(Filter, &'static str); 2]);

/// The same ml_metrics and router as separate filters and as one chain.
fn both_forms(metrics_models: &str, routes: &[&str]) -> [Form; 2] {
    [
        (
            bootstrap(ROUTER, metrics_models, routes),
            2,
            [
                (Filter::MlMetrics, "models"),
                (Filter::ModelRouter, "models"),
            ],
        ),
        (
            chain_bootstrap(ROUTER, metrics_models, routes),
            1,
            [
                (Filter::Chain, "filters[0].config.models"),
                (Filter::Chain, "filters[1].config.models"),
            ],
        ),
    ]
}

#[test]
fn consistent_filters_pass_alone_or_chained() {
    for (doc, checked, _) in both_forms(r#"["a","b","c","x"]"#, &["a", "b"]) {
        let r = check("b.yaml", &doc);
        assert_eq!(r.checked, checked);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
    }
}

#[test]
fn router_target_without_route_is_named_alone_or_chained() {
    for (doc, _, [_, (filter, field)]) in both_forms(r#"["a","b","c","x"]"#, &["a"]) {
        let r = check("b.yaml", &doc);
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        let p = &r.problems[0];
        assert_eq!((p.at.filter, p.field.as_str()), (Some(filter), field));
        assert!(p.message.contains("target `b`"), "{p}");
    }
}

#[test]
fn metrics_missing_router_alias_is_named_alone_or_chained() {
    for (doc, _, [(filter, field), _]) in both_forms(r#"["a","b","c"]"#, &["a", "b"]) {
        let r = check("b.yaml", &doc);
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        let p = &r.problems[0];
        assert_eq!((p.at.filter, p.field.as_str()), (Some(filter), field));
        assert!(p.message.contains("`x`"), "{p}");
    }
}

#[test]
fn a_chain_and_a_separate_filter_on_one_proxy_are_cross_checked() {
    // The router in a chain, ml_metrics alone in the same bootstrap: still one proxy.
    let config = format!(r#"{{"filters": [{{"name": "model_router", "config": {ROUTER}}}]}}"#)
        .replace('\n', " ");
    let doc = format!(
        "static_resources:\n  listeners:\n  - filters:\n    - name: ml_metrics\n      typed_config:\n        \"@type\": {WASM_TYPE}\n        config:\n          root_id: ml_metrics\n          configuration:\n            value: '{{\"models\": [\"a\", \"b\", \"c\"]}}'\n    - name: chain\n      typed_config:\n        \"@type\": {WASM_TYPE}\n        config:\n          root_id: chain\n          configuration:\n            value: '{config}'\n  routes:\n  - match: {{headers: [{{name: x-modelgate-model, string_match: {{exact: a}}}}, {{name: x-modelgate-model, string_match: {{exact: b}}}}]}}\n"
    );
    let r = check("c.yaml", &doc);
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    let p = &r.problems[0];
    assert_eq!(
        (p.at.filter, p.field.as_str()),
        (Some(Filter::MlMetrics), "models")
    );
    assert!(p.message.contains("`x`"), "{p}");
}

#[test]
fn different_scrape_blocks_inside_a_chain_are_reported() {
    let chain = |metrics_period: &str| {
        format!("---\nkind: WasmPlugin\nmetadata: {{name: c, namespace: m}}\nspec:\n  selector: {{matchLabels: {{app: s}}}}\n  pluginName: chain\n  pluginConfig:\n    filters:\n    - {{name: ml_metrics, config: {{scrape: {{cluster: c, period: {metrics_period}}}}}}}\n    - {{name: load_shedder, config: {{scrape: {{cluster: c, period: 250ms}}}}}}\n")
    };
    assert!(check("p.yaml", &chain("250ms")).problems.is_empty());
    let r = check("p.yaml", &chain("1s"));
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    let p = &r.problems[0];
    assert_eq!(p.field, "filters[1].config.scrape", "{p}");
    assert!(
        p.message
            .contains("ml_metrics (`filters[0].config` of a chain)"),
        "{p}"
    );
}
