#!/usr/bin/env python3
"""Builds OCI image layouts without a container daemon (`make oci`, docs/istio.md "Images").

  oci.py wasm NAME MODULE.wasm OUT_DIR TAG
      A Wasm filter as the image variant istio-agent tries first for an OCI manifest
      (pkg/wasm/imagefetcher.go, "compat"): one tar+gzip layer holding `plugin.wasm`.
  oci.py loader BINARY CA_BUNDLE OUT_DIR TAG
      modelgate-loader, a static binary, on an empty base with the CA certificates.

Deterministic: fixed timestamps and owners, so the same inputs give the same digests.
Prints the manifest digest.
"""
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
INDEX = "application/vnd.oci.image.index.v1+json"
EPOCH = "1970-01-01T00:00:00Z"


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def tar_layer(entries):
    """entries: (path, bytes or None for a directory, mode). Returns (tar, tar.gz)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data, mode in entries:
            info = tarfile.TarInfo(path)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            info.mode = mode
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", compresslevel=9, mtime=0) as g:
        g.write(tar_bytes)
    return tar_bytes, gz.getvalue()


def write_blob(out, data):
    digest = hashlib.sha256(data).hexdigest()
    path = os.path.join(out, "blobs", "sha256", digest)
    with open(path, "wb") as fh:
        fh.write(data)
    return f"sha256:{digest}"


def image(out, tag, entries, container_config, title):
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(os.path.join(out, "blobs", "sha256"))
    tar_bytes, gz = tar_layer(entries)
    layer = {"mediaType": LAYER, "digest": write_blob(out, gz), "size": len(gz)}
    config = canonical({
        "architecture": "amd64", "os": "linux", "config": container_config,
        "created": EPOCH,
        "rootfs": {"type": "layers",
                   "diff_ids": [f"sha256:{hashlib.sha256(tar_bytes).hexdigest()}"]},
        "history": [{"created": EPOCH, "created_by": "scripts/oci.py"}],
    })
    manifest = canonical({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": write_blob(out, config),
                   "size": len(config)},
        "layers": [layer],
        "annotations": {"org.opencontainers.image.title": title},
    })
    digest = write_blob(out, manifest)
    index = {"schemaVersion": 2, "mediaType": INDEX, "manifests": [{
        "mediaType": MANIFEST, "digest": digest, "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    with open(os.path.join(out, "index.json"), "wb") as fh:
        fh.write(canonical(index))
    with open(os.path.join(out, "oci-layout"), "wb") as fh:
        fh.write(canonical({"imageLayoutVersion": "1.0.0"}))
    return digest


def read(path):
    with open(path, "rb") as fh:
        return fh.read()


def main(argv):
    if len(argv) == 6 and argv[1] == "wasm":
        _, _, name, module, out, tag = argv
        data = read(module)
        if not data.startswith(b"\0asm"):
            sys.exit(f"oci.py: {module} is not a Wasm module")
        digest = image(out, tag, [("plugin.wasm", data, 0o644)], {}, name)
    elif len(argv) == 6 and argv[1] == "loader":
        _, _, binary, ca, out, tag = argv
        entries = [
            ("etc", None, 0o755), ("etc/ssl", None, 0o755), ("etc/ssl/certs", None, 0o755),
            ("etc/ssl/certs/ca-certificates.crt", read(ca), 0o644),
            ("modelgate-loader", read(binary), 0o755),
        ]
        config = {
            "Entrypoint": ["/modelgate-loader"],
            "User": "65532:65532",
            "Env": ["SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
        }
        digest = image(out, tag, entries, config, "modelgate-loader")
    else:
        sys.exit(__doc__)
    print(digest)


if __name__ == "__main__":
    main(sys.argv)
