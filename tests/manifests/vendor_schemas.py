#!/usr/bin/env python3
"""Writes schemas/crds.json from published CustomResourceDefinition files: the
openAPIV3Schema of each served version of the kinds istio/ uses, made strict (an object
with `properties` and no x-kubernetes-preserve-unknown-fields rejects other keys, as
`kubectl apply` with server-side field validation does). Run once per upgrade; the result is
committed, so tests need no network. Provenance: schemas/README.md.

usage: vendor_schemas.py OUT.json CRD.yaml...
"""
import json
import sys

import yaml

KINDS = {"WasmPlugin", "EnvoyFilter", "PeerAuthentication", "AuthorizationPolicy",
         "VirtualService", "DestinationRule", "Gateway", "PrometheusRule"}


def strict(node):
    if isinstance(node, dict):
        node = {k: strict(v) for k, v in node.items()}
        if ("properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [strict(v) for v in node]
    return node


out = {}
for path in sys.argv[2:]:
    for doc in yaml.safe_load_all(open(path)):
        if not doc or doc.get("kind") != "CustomResourceDefinition":
            continue
        spec = doc["spec"]
        kind = spec["names"]["kind"]
        if kind not in KINDS:
            continue
        for v in spec["versions"]:
            if not v.get("served", True) or "schema" not in v:
                continue
            schema = strict(v["schema"]["openAPIV3Schema"])
            # apiVersion, kind and metadata are checked by the API server itself.
            props = schema.setdefault("properties", {})
            props.setdefault("apiVersion", {"type": "string"})
            props.setdefault("kind", {"type": "string"})
            props["metadata"] = {"type": "object"}
            out[f"{spec['group']}/{v['name']}/{kind}"] = schema
json.dump(out, open(sys.argv[1], "w"), indent=None, sort_keys=True, separators=(",", ":"))
print(f"{len(out)} schemas: {', '.join(sorted(out))}")
