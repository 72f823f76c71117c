#!/usr/bin/env python3
"""The Istio base (istio/) and the Envoy configs (envoy/), checked against the published
schemas and against each other. Run by `make test-manifests` (part of `make test`).

Each test names the mistake it keeps out (issue 12's findings and issue 11's findings 3
and 8). Needs: the venv of scripts/setup.sh (PyYAML, jsonschema, kubernetes-validate),
target/*/modelgate (cargo build -p modelgate-check), target/release/modelgate-loader
(make native), tools/envoy; kubectl for `kubectl kustomize` when present.
"""
import glob
import json
import os
import re
import shutil
import subprocess
import tempfile
import unittest

import jsonschema
import kubernetes_validate
import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ISTIO = os.path.join(ROOT, "istio")
# Native sidecars (initContainers with restartPolicy: Always) need Kubernetes >= 1.29.
K8S_VERSIONS = ["1.29.0", "1.33.0"]
MODELGATE_FILTERS = {"readiness_gate", "model_router", "load_shedder", "ml_metrics", "endpoint_picker"}
# The module that runs several of them (`{"filters": [{"name": ..., "config": ...}]}`).
CHAIN = "chain"
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
# What scripts/run.sh renders the Envoy templates with.
ENVOY_VALUES = {
    "ADMIN_PORT": "9901", "LISTEN_PORT": "10000", "POD_A_PORT": "10001",
    "POD_B_PORT": "10002", "POD_C_PORT": "10003", "SATURATION": "0.8", "SIM_PORT": "8001",
    "LOADER_PORT": "8101", "MODEL": "llama-3-8b", "READINESS_LOADER": "null",
    "READINESS_PERIOD": "1s",
}


def read(path):
    with open(path) as fh:
        return fh.read()


def manifest_files():
    return sorted(f for f in glob.glob(os.path.join(ISTIO, "*.yaml"))
                  if os.path.basename(f) != "kustomization.yaml")


def objects():
    """Every (file, document number, object) of the base."""
    out = []
    for f in manifest_files():
        for i, doc in enumerate(yaml.safe_load_all(read(f)), 1):
            if doc is not None:
                out.append((os.path.basename(f), i, doc))
    return out


def of_kind(kind):
    return [o for _, _, o in objects() if o.get("kind") == kind]


def walk(node):
    yield node
    if isinstance(node, dict):
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def wasm_configs(node):
    """Wasm PluginConfigs of modelgate modules (a filter or the chain) inside an EnvoyFilter
    or bootstrap."""
    for n in walk(node):
        if isinstance(n, dict) and n.get("@type") == WASM_TYPE and "config" in n:
            if n["config"].get("root_id") in MODELGATE_FILTERS | {CHAIN}:
                yield n["config"]


def stages(module, config):
    """(filter, its configuration) for a module's configuration: the filter itself, or each
    stage of a chain in order."""
    if module == CHAIN:
        return [(st["name"], st.get("config") or {}) for st in config["filters"]]
    return [(module, config)]


def envoy_filter_stages(ef):
    """(filter, configuration) of every modelgate filter an EnvoyFilter installs, in order."""
    return [st for cfg in wasm_configs(ef)
            for st in stages(cfg["root_id"], json.loads(cfg["configuration"]["value"]))]


def selects(selector, namespace, pod_ns, pod_labels):
    ns_ok = namespace in (pod_ns, "istio-system")
    return ns_ok and all(pod_labels.get(k) == v for k, v in (selector or {}).items())


def pools():
    """(namespace, pod labels, pod spec, served model name) per Deployment."""
    out = []
    for d in of_kind("Deployment"):
        tpl = d["spec"]["template"]
        vllm = next(c for c in tpl["spec"]["containers"] if c["name"] == "vllm")
        args = vllm["args"]
        served = args[args.index("--served-model-name") + 1]
        out.append((d["metadata"]["namespace"], tpl["metadata"]["labels"], tpl, served))
    return out


GATEWAY = ("istio-system", {"istio": "ingressgateway"})


def filters_on(pod_ns, pod_labels):
    """Every modelgate filter that lands on the pod, alone or as a stage of a chain, in
    each object's order: (filter, vm_id it really gets, obj, the filter's configuration)."""
    out = []
    for wp in of_kind("WasmPlugin"):
        spec = wp["spec"]
        sel = spec.get("selector", {}).get("matchLabels", {})
        if spec["pluginName"] in MODELGATE_FILTERS | {CHAIN} and selects(
                sel, wp["metadata"]["namespace"], pod_ns, pod_labels):
            # istiod never sets vm_id for a WasmPlugin (pilot/pkg/model/extensions.go).
            for f, cfg in stages(spec["pluginName"], spec.get("pluginConfig") or {}):
                out.append((f, "", wp, cfg))
    for ef in of_kind("EnvoyFilter"):
        sel = ef["spec"].get("workloadSelector", {}).get("labels", {})
        if selects(sel, ef["metadata"]["namespace"], pod_ns, pod_labels):
            for cfg in wasm_configs(ef):
                vm = cfg.get("vm_config", {}).get("vm_id", "")
                for f, c in stages(cfg["root_id"], json.loads(cfg["configuration"]["value"])):
                    out.append((f, vm, ef, c))
    return out


def binary(name):
    for profile in ("release", "debug"):
        p = os.path.join(ROOT, "target", profile, name)
        if os.access(p, os.X_OK):
            return p
    raise AssertionError(f"{name} not built (make native / cargo build -p modelgate-check)")


class KustomizeBase(unittest.TestCase):
    def test_every_manifest_is_a_resource_of_the_kustomization(self):
        kz = yaml.safe_load(read(os.path.join(ISTIO, "kustomization.yaml")))
        listed = sorted(kz["resources"])
        present = sorted(os.path.basename(f) for f in manifest_files())
        self.assertEqual(listed, present)

    def test_every_document_is_a_kubernetes_object(self):
        # Finding 4: a promtool test file in the folder broke `kubectl apply -f istio/`.
        for f, i, o in objects():
            with self.subTest(file=f, doc=i):
                self.assertIsInstance(o, dict)
                for key in ("apiVersion", "kind"):
                    self.assertIn(key, o)
                self.assertTrue(o.get("metadata", {}).get("name"), "metadata.name")
                self.assertTrue(o["metadata"].get("namespace") or o["kind"] == "Namespace",
                                "namespaced objects name their namespace")

    def test_kustomize_builds_the_base(self):
        kubectl = shutil.which("kubectl")
        if not kubectl:
            self.skipTest("kubectl not installed: the resource list is checked above")
        out = subprocess.run([kubectl, "kustomize", ISTIO], capture_output=True, text=True,
                             timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr)
        built = [d for d in yaml.safe_load_all(out.stdout) if d]
        self.assertEqual(len(built), len(objects()))


class Schemas(unittest.TestCase):
    crds = json.loads(read(os.path.join(os.path.dirname(__file__), "schemas", "crds.json")))

    def test_every_object_matches_the_published_schema(self):
        # Finding 3: a Deployment without selector and containers.
        for f, i, o in objects():
            group_version = o["apiVersion"]
            key = f"{group_version}/{o['kind']}"
            with self.subTest(file=f, doc=i, kind=o["kind"]):
                if key in self.crds:
                    errors = sorted(jsonschema.Draft7Validator(self.crds[key]).iter_errors(o),
                                    key=str)
                    self.assertEqual([], [f"{list(e.absolute_path)}: {e.message}"
                                          for e in errors])
                    continue
                self.assertNotIn(".", group_version.split("/")[0] if "/" in group_version
                                 else "", f"no vendored schema for {key}")
                for v in K8S_VERSIONS:
                    try:
                        kubernetes_validate.validate(o, v, strict=True)
                    except kubernetes_validate.ValidationError as e:
                        self.fail(f"Kubernetes {v}: {e.path}: {e.message}")

    def test_schema_check_rejects_an_unknown_field(self):
        wp = json.loads(json.dumps(of_kind("WasmPlugin")[0]))
        wp["spec"]["vmId"] = "modelgate"
        schema = self.crds["extensions.istio.io/v1alpha1/WasmPlugin"]
        self.assertTrue(list(jsonschema.Draft7Validator(schema).iter_errors(wp)))


class CrossFile(unittest.TestCase):
    def test_each_pool_has_its_own_selector_and_gate_for_its_model(self):
        # Finding 5: one selector gave both pools one gate config; the gate waited for a
        # name nobody served.
        for ns, labels, _, served in pools():
            with self.subTest(model=served):
                gates = [c for f, _, _, c in filters_on(ns, labels) if f == "readiness_gate"]
                self.assertEqual(len(gates), 1, "exactly one readiness gate per pod")
                self.assertEqual(gates[0]["model"], served)
        selectors = [json.dumps(d["spec"]["selector"], sort_keys=True)
                     for d in of_kind("Deployment")]
        self.assertEqual(len(selectors), len(set(selectors)))

    def test_router_targets_are_served_routed_and_have_a_service(self):
        router = next(c for ef in of_kind("EnvoyFilter") for f, c in envoy_filter_stages(ef)
                      if f == "model_router")
        targets = set()
        for m in router["models"]:
            targets |= {t["name"] for t in m.get("targets", [])} or {m["name"]}
        served = {p[3] for p in pools()}
        self.assertEqual(targets, served)
        services = {s["metadata"]["name"]: s for s in of_kind("Service")}
        routed = {}
        for vs in of_kind("VirtualService"):
            for http in vs["spec"]["http"]:
                for m in http["match"]:
                    value = m["headers"]["x-modelgate-model"]["exact"]
                    routed[value] = http["route"][0]["destination"]
        self.assertEqual(set(routed), targets)
        for name, dest in routed.items():
            with self.subTest(target=name):
                self.assertEqual(dest["host"], f"{name}.models.svc.cluster.local")
                svc = services[name]
                ports = {p["port"]: p for p in svc["spec"]["ports"]}
                self.assertIn(dest["port"]["number"], ports)
                pod = next(p for p in pools() if p[3] == name)
                self.assertTrue(all(pod[1].get(k) == v
                                    for k, v in svc["spec"]["selector"].items()))

    def test_filters_on_one_proxy_share_one_vm_id(self):
        # Finding 6: WasmPlugins get vm_id "" while EnvoyFilters set "modelgate": shared
        # data (snapshots, leases, metrics cursor) is only shared within one vm_id.
        proxies = [(ns, labels) for ns, labels, _, _ in pools()] + [GATEWAY]
        for ns, labels in proxies:
            with self.subTest(proxy=labels):
                found = filters_on(ns, labels)
                self.assertTrue(found)
                self.assertEqual(len({vm for _, vm, _, _ in found}), 1,
                                 [(f, vm) for f, vm, _, _ in found])
        gateway = {f for f, _, _, _ in filters_on(*GATEWAY)}
        self.assertEqual(gateway, {"model_router", "load_shedder", "ml_metrics", "endpoint_picker"})

    def test_filter_order_in_each_proxy(self):
        # Finding 9: ordering must not rest on an unset priority (it sorts last). Objects
        # sort by phase and priority (Istio) or priority (EnvoyFilters before the router);
        # a chain's stages run in their listed order (stable sort keeps it).
        phases = {"AUTHN": 0, "AUTHZ": 1, "STATS": 2}
        for wp in of_kind("WasmPlugin"):
            self.assertIn("priority", wp["spec"], wp["metadata"]["name"])
        for ns, labels, _, served in pools():
            with self.subTest(model=served):
                sidecar = sorted(filters_on(ns, labels),
                                 key=lambda x: (phases[x[2]["spec"]["phase"]],
                                                -x[2]["spec"]["priority"]))
                self.assertEqual([f for f, _, _, _ in sidecar],
                                 ["ml_metrics", "readiness_gate", "load_shedder"])
        gateway = sorted(filters_on(*GATEWAY), key=lambda x: x[2]["spec"].get("priority", 0))
        self.assertEqual([f for f, _, _, _ in gateway],
                         ["ml_metrics", "model_router", "load_shedder", "endpoint_picker"])

    def test_the_default_deploys_one_chain_module_per_proxy(self):
        # Issue 10: the chain module is the shipped default, one per tier.
        for ns, labels, _, served in pools():
            with self.subTest(model=served):
                objs = {id(o): o for _, _, o, _ in filters_on(ns, labels)}.values()
                self.assertEqual([o["spec"]["pluginName"] for o in objs], [CHAIN])
        objs = list({id(o): o for _, _, o, _ in filters_on(*GATEWAY)}.values())
        self.assertEqual([[c["root_id"] for c in wasm_configs(o)] for o in objs], [[CHAIN]])

    def test_ecds_filters_accept_the_fallback_rbac_and_state_a_failure_policy(self):
        # Finding 7: istio-agent replaces a module it cannot fetch with an RBAC filter;
        # without the RBAC type there, gateways never warm.
        for ef in of_kind("EnvoyFilter"):
            for n in walk(ef):
                if isinstance(n, dict) and "config_discovery" in n:
                    urls = n["config_discovery"]["type_urls"]
                    if WASM_TYPE in urls:
                        self.assertIn(RBAC_TYPE, urls, ef["metadata"]["name"])
            for cfg in wasm_configs(ef):
                self.assertIn(cfg.get("failure_policy"), ("FAIL_OPEN", "FAIL_CLOSED"))
        for wp in of_kind("WasmPlugin"):
            self.assertIn(wp["spec"].get("failStrategy"), ("FAIL_OPEN", "FAIL_CLOSE"))

    def test_model_port_is_strict_mtls_and_only_the_probe_is_plain_text(self):
        # Finding 8 (and issue 11.3): a PERMISSIVE model port let any client claim
        # `critical`; only the gateway may call it.
        for ns, labels, tpl, served in pools():
            with self.subTest(model=served):
                pas = [p for p in of_kind("PeerAuthentication")
                       if selects(p["spec"].get("selector", {}).get("matchLabels"),
                                  p["metadata"]["namespace"], ns, labels)]
                self.assertEqual(len(pas), 1)
                spec = pas[0]["spec"]
                self.assertEqual(spec["mtls"]["mode"], "STRICT")
                vllm = next(c for c in tpl["spec"]["containers"] if c["name"] == "vllm")
                api_port = vllm["ports"][0]["containerPort"]
                probe = vllm["readinessProbe"]["httpGet"]
                plain = {int(p) for p, m in spec.get("portLevelMtls", {}).items()
                         if m["mode"] != "STRICT"}
                self.assertEqual(plain, {probe["port"]})
                self.assertNotEqual(probe["port"], api_port)
                self.assertNotIn("livenessProbe", vllm, "a kubelet probe cannot pass STRICT")
                gate = next(c for f, _, _, c in filters_on(ns, labels) if f == "readiness_gate")
                self.assertEqual(probe["path"], gate["probe_path"])
                ann = tpl["metadata"]["annotations"]
                self.assertEqual(ann["sidecar.istio.io/rewriteAppHTTPProbers"], "false")
                policies = [a for a in of_kind("AuthorizationPolicy")
                            if selects(a["spec"]["selector"]["matchLabels"],
                                       a["metadata"]["namespace"], ns, labels)]
                self.assertEqual(len(policies), 1)
                api_rules = [r for r in policies[0]["spec"]["rules"]
                             if str(api_port) in r["to"][0]["operation"]["ports"]]
                self.assertEqual([r["from"][0]["source"]["principals"] for r in api_rules],
                                 [["cluster.local/ns/istio-system/sa/"
                                   "istio-ingressgateway-service-account"]])

    def test_local_clusters_point_at_the_pod_ports(self):
        ef = next(e for e in of_kind("EnvoyFilter")
                  if e["metadata"]["name"] == "modelgate-local-clusters")
        ports = {p["patch"]["value"]["name"]: p["patch"]["value"]["load_assignment"]
                 ["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                 ["socket_address"]["port_value"] for p in ef["spec"]["configPatches"]}
        for ns, labels, tpl, _ in pools():
            vllm = next(c for c in tpl["spec"]["containers"] if c["name"] == "vllm")
            loader = next(c for c in tpl["spec"]["initContainers"]
                          if c["name"] == "model-loader")
            self.assertEqual(ports["model_server"], vllm["ports"][0]["containerPort"])
            self.assertEqual(ports["loader"], loader["ports"][0]["containerPort"])
            env = {e["name"]: e.get("value") for e in loader["env"]}
            self.assertTrue(env["MODELGATE_STATUS_ADDR"].endswith(f":{ports['loader']}"))
            self.assertEqual(tpl["metadata"]["annotations"]
                             ["traffic.sidecar.istio.io/excludeInboundPorts"],
                             str(ports["loader"]))
            self.assertEqual(loader["restartPolicy"], "Always")
            clusters = {n["cluster"] for _, _, _, c in filters_on(ns, labels)
                        for n in walk(c) if isinstance(n, dict) and "cluster" in n}
            self.assertTrue(clusters)
            self.assertLessEqual(clusters, set(ports))

    def test_stop_iteration_knob_and_the_minimum_istio_version_stated_everywhere(self):
        # Finding 1: istiod < 1.28 drops allow_on_headers_stop_iteration silently.
        router = [c for ef in of_kind("EnvoyFilter") for c in wasm_configs(ef)
                  if "model_router" in [f for f, _ in stages(
                      c["root_id"], json.loads(c["configuration"]["value"]))]]
        self.assertEqual(len(router), 1)
        self.assertIs(router[0].get("allow_on_headers_stop_iteration"), True)
        texts = {f: read(f) for f in manifest_files()
                 + [os.path.join(ISTIO, "kustomization.yaml"),
                    os.path.join(ROOT, "README.md"), os.path.join(ROOT, "docs", "istio.md")]
                 + glob.glob(os.path.join(ROOT, "docs", "*.md"))}
        for f, text in texts.items():
            for m in re.finditer(r"Istio\s*(?:>=|≥)\s*1\.(\d+)", text):
                self.assertGreaterEqual(int(m.group(1)), 28, f"{f}: {m.group(0)}")
        for f in ("gateway-chain.yaml", "kustomization.yaml"):
            self.assertRegex(texts[os.path.join(ISTIO, f)], r"Istio (>=|≥) ?1\.28")

    def test_every_image_is_pinned_by_digest(self):
        # scripts/oci-pin.py (make oci) writes them; an EnvoyFilter repeats the digest in
        # remote.sha256, which istio-agent checks against the pulled manifest.
        refs = 0
        for f, i, o in objects():
            for n in walk(o):
                if isinstance(n, dict):
                    for key in ("url", "uri", "image"):
                        v = n.get(key)
                        # Ours; vLLM's image is the user's choice (pin the one you tested).
                        if isinstance(v, str) and "ghcr.io/modelgate/" in v:
                            refs += 1
                            with self.subTest(file=f, doc=i, ref=v):
                                m = re.search(r"@sha256:([0-9a-f]{64})$", v)
                                self.assertTrue(m, "pinned by digest")
                                self.assertNotEqual(set(m.group(1)), {"0"}, "a real digest")
                    remote = n.get("remote")
                    if isinstance(remote, dict) and "http_uri" in remote:
                        digest = remote["http_uri"]["uri"].rsplit("@sha256:", 1)[-1]
                        self.assertEqual(remote.get("sha256"), digest)
        self.assertGreaterEqual(refs, 5)  # 3 chain module references, 2 loader images

    def test_envoyfilter_wasm_has_no_pull_secret(self):
        # Finding 9: EnvoyFilter Wasm cannot reference an imagePullSecret.
        for ef in of_kind("EnvoyFilter"):
            self.assertNotIn("ISTIO_META_WASM_IMAGE_PULL_SECRET", json.dumps(ef))


class PathNormalisation(unittest.TestCase):
    # Issue 11.8: `//v1/...` or `/%76%31/...` must not skip the gate and the metrics.
    WANT = {"normalize_path": True, "merge_slashes": True,
            "path_with_escaped_slashes_action": "UNESCAPE_AND_FORWARD"}
    HCM = ("type.googleapis.com/envoy.extensions.filters.network."
           "http_connection_manager.v3.HttpConnectionManager")

    def hcms(self, node):
        return [n for n in walk(node) if isinstance(n, dict) and n.get("@type") == self.HCM]

    def test_every_envoy_config_normalises_paths(self):
        for f in glob.glob(os.path.join(ROOT, "envoy", "*.yaml")):
            doc = yaml.safe_load(re.sub(r"\{\{[A-Z_]+\}\}", "1", read(f)))
            for hcm in self.hcms(doc):
                with self.subTest(file=f, hcm=hcm.get("stat_prefix")):
                    self.assertEqual({k: hcm.get(k) for k in self.WANT}, self.WANT)

    def test_istio_normalises_paths_on_model_pods_and_the_gateway(self):
        proxies = [(ns, labels, "SIDECAR_INBOUND") for ns, labels, _, _ in pools()]
        proxies.append((*GATEWAY, "GATEWAY"))
        for ns, labels, context in proxies:
            with self.subTest(proxy=labels):
                patched = [p for ef in of_kind("EnvoyFilter")
                           if selects(ef["spec"].get("workloadSelector", {}).get("labels"),
                                      ef["metadata"]["namespace"], ns, labels)
                           for p in ef["spec"]["configPatches"]
                           if p["applyTo"] == "NETWORK_FILTER"
                           and p["match"]["context"] == context]
                values = [h for p in patched for h in self.hcms(p["patch"]["value"])]
                self.assertTrue(any({k: h.get(k) for k in self.WANT} == self.WANT
                                    for h in values))


class Binaries(unittest.TestCase):
    def test_modelgate_check_passes_the_base_and_the_envoy_configs(self):
        # Finding 2 (gateway metrics `models` vs the router's names) is one of its checks.
        tool = binary("modelgate")
        out = subprocess.run([tool, "check", *manifest_files()], capture_output=True,
                             text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        sets = [a for k, v in ENVOY_VALUES.items() for a in ("--set", f"{k}={v}")]
        envoy = glob.glob(os.path.join(ROOT, "envoy", "*.yaml"))
        out = subprocess.run([tool, "check", "--set", "WASM_DIR=/dist", *sets, *envoy],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)

    def test_every_envoy_config_passes_envoy_validate(self):
        envoy = os.environ.get("MODELGATE_ENVOY", os.path.join(ROOT, "tools", "envoy"))
        with tempfile.TemporaryDirectory() as tmp:
            for f in sorted(glob.glob(os.path.join(ROOT, "envoy", "*.yaml"))):
                with self.subTest(file=os.path.basename(f)):
                    rendered = os.path.join(tmp, os.path.basename(f))
                    pairs = [f"{k}={v}" for k, v in ENVOY_VALUES.items()]
                    pairs.append(f"WASM_DIR={os.path.join(ROOT, 'dist')}")
                    subprocess.run(["python3", os.path.join(ROOT, "scripts", "render.py"),
                                    f, rendered, *pairs], check=True, timeout=30)
                    if "static_resources" not in read(rendered):
                        # A fragment (stats-tags.yaml): wrap it in a minimal bootstrap.
                        frag = yaml.safe_load(read(rendered))
                        frag["admin"] = {"address": {"socket_address": {
                            "address": "127.0.0.1", "port_value": 0}}}
                        with open(rendered, "w") as fh:
                            yaml.safe_dump(frag, fh)
                    out = subprocess.run([envoy, "--mode", "validate", "-c", rendered,
                                          "--base-id", str(os.getpid() % 10000)],
                                         capture_output=True, text=True, timeout=120)
                    self.assertEqual(out.returncode, 0, out.stdout[-2000:] + out.stderr[-2000:])

    def test_loader_accepts_the_manifests_flags_and_env(self):
        loader = binary("modelgate-loader")
        for ns, labels, tpl, served in pools():
            c = next(c for c in tpl["spec"]["initContainers"] if c["name"] == "model-loader")
            env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
            with tempfile.TemporaryDirectory() as tmp, self.subTest(model=served):
                run_env = {"PATH": os.environ.get("PATH", ""), **env,
                           # Same values, local places: parse everything, fetch nothing.
                           "MODEL_DIR": os.path.join(tmp, "model"),
                           "MODELGATE_STATUS_ADDR": "127.0.0.1:0",
                           "HF_ENDPOINT": "http://127.0.0.1:9", "MODELGATE_RETRIES": "0"}
                out = subprocess.run([loader, "--once", *c.get("args", [])], env=run_env,
                                     capture_output=True, text=True, timeout=60)
                # clap exits 2 on a flag or value it does not accept; the fetch fails (1).
                self.assertEqual(out.returncode, 1, out.stderr[-2000:])
                self.assertNotRegex(out.stderr, r"invalid value|unexpected argument")
                help_text = subprocess.run([loader, "--help"], capture_output=True,
                                           text=True, timeout=30).stdout
                for name in env:
                    self.assertIn(f"[env: {name}", help_text, name)


if __name__ == "__main__":
    unittest.main(verbosity=2)
