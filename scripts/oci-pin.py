#!/usr/bin/env python3
"""Pins the images of istio/ to the digests of the OCI layouts `make oci` built.

  oci-pin.py [OCI_DIR [MANIFEST_DIR]]     (defaults: dist/oci, istio)

Rewrites `<registry>/<name>@sha256:…` (or `:tag`) for every layout in OCI_DIR (each Wasm
module, modelgate-loader) that istio/ references, and the `sha256:` that follows an
EnvoyFilter's `oci://` uri: istio-agent compares it with the image's manifest digest.
Push the layouts to the registry before applying (docs/istio.md, "Images").
"""
import json
import os
import re
import sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
oci_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "dist", "oci")
manifest_dir = sys.argv[2] if len(sys.argv) > 2 else os.path.join(root, "istio")

digests = {}
for name in sorted(os.listdir(oci_dir)):
    with open(os.path.join(oci_dir, name, "index.json")) as fh:
        digests[name] = json.load(fh)["manifests"][0]["digest"]
if not digests:
    sys.exit(f"oci-pin: no image layouts in {oci_dir}: run make oci")

ref = re.compile(r"(ghcr\.io/modelgate/)([A-Za-z0-9_.-]+)(@sha256:[0-9a-f]{64}|:[A-Za-z0-9_.-]+)")
changed = 0
for f in sorted(os.listdir(manifest_dir)):
    if not f.endswith(".yaml"):
        continue
    path = os.path.join(manifest_dir, f)
    with open(path) as fh:
        lines = fh.read().split("\n")
    out, pending = [], None
    for line in lines:
        m = ref.search(line)
        if m and m.group(2) in digests:
            line = line[:m.start(3)] + "@" + digests[m.group(2)] + line[m.end(3):]
            pending = digests[m.group(2)] if "uri: oci://" in line else None
        elif pending and re.match(r'^\s*sha256: "?[0-9a-f]{64}"?\s*$', line):
            line = re.sub(r'[0-9a-f]{64}', pending.split(":", 1)[1], line)
            pending = None
        out.append(line)
    text = "\n".join(out)
    with open(path) as fh:
        if fh.read() != text:
            changed += 1
            with open(path, "w") as w:
                w.write(text)
for name, d in digests.items():
    print(f"{name} {d}")
print(f"oci-pin: {changed} files updated in {manifest_dir}")
