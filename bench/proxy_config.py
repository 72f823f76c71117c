#!/usr/bin/env python3
"""Writes the Envoy configs of the proxy benchmark (bench/proxy.sh) into OUT_DIR.

Usage: proxy_config.py OUT_DIR WASM_DIR UPSTREAM_PORT VARIANT=PORT...

Every variant is the same proxy (one listener, the routes of envoy/gateway.yaml reduced to one
cluster, the same buffer limit) and differs only in its http_filters, taken from the shipped
envoy/gateway.yaml and envoy/sidecar.yaml (rendered as scripts/run.sh renders them), so the
benchmark measures the shipped filter configs: `gateway` and `sidecar` are the shipped
`chain` modules, `gatewaysep` and `sidecarsep` their stages as separate modules, `router`,
`metrics`, `shedder`, `gate` one stage alone. `upstream.json` is the model server stand-in:
an Envoy answering every request from `direct_response`."""
import json
import os
import re
import sys

import yaml

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CHAT = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "llama-3-8b",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "ok"}}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
})
MODELS = json.dumps({"object": "list", "data": [
    {"id": "llama-3-8b", "object": "model", "created": 0, "owned_by": "bench"}]})
METRICS = ("vllm:num_requests_running{model_name=\"llama-3-8b\"} 0\n"
           "vllm:num_requests_waiting{model_name=\"llama-3-8b\"} 0\n"
           "vllm:kv_cache_usage_perc{model_name=\"llama-3-8b\"} 0.1\n")


def render(name, values):
    """The shipped template with its placeholders filled (comment lines kept as they are)."""
    out = []
    for line in open(os.path.join(ROOT, "envoy", name)):
        if not line.lstrip().startswith("#"):
            for k, v in values.items():
                line = line.replace("{{" + k + "}}", v)
            left = re.findall(r"\{\{([A-Z_]+)\}\}", line)
            if left:
                sys.exit(f"proxy_config: envoy/{name}: no value for {', '.join(left)}")
        out.append(line)
    return yaml.safe_load("".join(out))


def http_filters(doc):
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    return hcm["typed_config"]["http_filters"]


def as_separate(filters, wasm_dir):
    """Each stage of a `chain` filter as a module of its own (dist/<name>.wasm) with the
    stage's configuration and the chain's other fields, in the chain's order."""
    out = []
    for f in filters:
        config = f["typed_config"]["config"]
        if config.get("root_id") != "chain":
            out.append(f)
            continue
        for stage in json.loads(config["configuration"]["value"])["filters"]:
            one = json.loads(json.dumps(f))
            c = one["typed_config"]["config"]
            one["name"] = f"modelgate.{stage['name']}"
            c["name"] = c["root_id"] = stage["name"]
            c["vm_config"]["code"] = {"local": {
                "filename": os.path.join(wasm_dir, f"{stage['name']}.wasm")}}
            c["configuration"]["value"] = json.dumps(stage["config"])
            out.append(one)
    return out


def direct(prefix, body, ctype="application/json"):
    return {"match": {"prefix": prefix},
            "direct_response": {"status": 200, "body": {"inline_string": body}},
            "response_headers_to_add": [{"header": {"key": "content-type", "value": ctype}}]}


def hcm(routes, filters):
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "bench", "codec_type": "AUTO",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
        "http_filters": filters}}


def listener(port, routes, filters):
    return {"name": "bench", "per_connection_buffer_limit_bytes": 8388608,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [hcm(routes, filters)]}]}


def cluster(name, port):
    return {"name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {
                    "address": "127.0.0.1", "port_value": port}}}}]}]}}


def main():
    out, wasm_dir, upstream_port, *pairs = sys.argv[1:]
    upstream_port = int(upstream_port)
    router = {"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
    gateway_doc = render("gateway.yaml", {
        "LISTEN_PORT": "1", "ADMIN_PORT": "2", "WASM_DIR": wasm_dir,
        "POD_A_PORT": "3", "POD_B_PORT": "4", "POD_C_PORT": "5"})
    gateway = http_filters(gateway_doc)[:-1]
    sidecar = http_filters(render("sidecar.yaml", {
        "LISTEN_PORT": "1", "ADMIN_PORT": "2", "SIM_PORT": "3", "LOADER_PORT": "4",
        "WASM_DIR": wasm_dir, "MODEL": "llama-3-8b", "READINESS_LOADER": "null",
        "READINESS_PERIOD": "1s"}))[:-1]
    gateway_sep = as_separate(gateway, wasm_dir)
    sidecar_sep = as_separate(sidecar, wasm_dir)
    by_name = {f["name"]: f for f in gateway_sep}
    side_by_name = {f["name"]: f for f in sidecar_sep}
    lua = {"name": "envoy.filters.http.lua", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
        "default_source_code": {"inline_string": open(os.path.join(ROOT, "bench", "route.lua")).read()}}}
    def noop(i, module="bench_noop"):
        return {"name": f"bench.noop{i}", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {"name": f"noop{i}", "root_id": "", "vm_config": {
                "vm_id": "modelgate", "runtime": "envoy.wasm.runtime.v8",
                "code": {"local": {"filename": os.path.join(out, f"{module}.wasm")}}}}}}
    def probe(variant):
        """`probe` or `probe_get5+set4`: bench/abi_probe making the named host calls."""
        spec = variant.removeprefix("probe").removeprefix("_")
        ops = ",".join(re.sub(r"^([a-z]+)(\d+)$", r"\1=\2", op) for op in spec.split("+") if op)
        f = noop(1, "bench_abi_probe")
        f["typed_config"]["config"].update({"allow_on_headers_stop_iteration": True, "configuration": {
            "@type": "type.googleapis.com/google.protobuf.StringValue", "value": ops}})
        return [f]
    chains = {
        "none": [],
        "noop": [noop(1)],
        "noopmin": [noop(1, "bench_noop_min")],
        "noop3": [noop(1), noop(2), noop(3)],
        "lua": [lua],
        "router": [by_name["modelgate.model_router"]],
        "metrics": [by_name["modelgate.ml_metrics"]],
        "shedder": [by_name["modelgate.load_shedder"]],
        "gate": [side_by_name["modelgate.readiness_gate"]],
        "gateway": gateway,
        "sidecar": sidecar,
        "gatewaysep": gateway_sep,
        "sidecarsep": sidecar_sep,
    }
    # The same routes as envoy/gateway.yaml (match on the router's header), one cluster.
    routes = [
        {"match": {"prefix": "/", "headers": [{"name": "x-modelgate-model",
                                               "string_match": {"exact": "llama-3-8b"}}]},
         "route": {"cluster": "model_server", "timeout": "300s"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "model_server", "timeout": "300s"}},
    ]
    for pair in pairs:
        variant, port = pair.split("=")
        base, _, runtime = variant.partition("@")
        filters = json.loads(json.dumps(chains[base] if base in chains else probe(base)))
        for f in filters:
            vm = f["typed_config"].get("config", {}).get("vm_config")
            if vm is not None and runtime:
                vm["runtime"] = f"envoy.wasm.runtime.{runtime}"
        doc = {"stats_config": gateway_doc["stats_config"], "static_resources": {
            "listeners": [listener(int(port), routes, filters + [router])],
            "clusters": [cluster("model_server", upstream_port)]}}
        json.dump(doc, open(os.path.join(out, f"{variant}.json"), "w"), indent=1)
    upstream = {"static_resources": {"listeners": [listener(upstream_port, [
        direct("/health", "ok", "text/plain"),
        direct("/v1/models", MODELS),
        direct("/metrics", METRICS, "text/plain; version=0.0.4"),
        direct("/", CHAT),
    ], [router])], "clusters": []}}
    json.dump(upstream, open(os.path.join(out, "upstream.json"), "w"), indent=1)


main()
