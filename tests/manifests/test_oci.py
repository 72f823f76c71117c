#!/usr/bin/env python3
"""The images of `make oci` through a real registry: pushed with skopeo to Debian's
docker-registry on a free loopback port, pulled back with this file's own client (the
registry HTTP API, as istio-agent reads it: manifest, last layer, `plugin.wasm` in a
tar+gzip), compared byte for byte with dist/*.wasm, then loaded by a real Envoy that
serves a request through all five filters and the chain module running them. Part of
`make test-manifests`.
"""
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
import unittest
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OCI = os.path.join(ROOT, "dist", "oci")
FILTERS = ["readiness_gate", "model_router", "load_shedder", "ml_metrics", "endpoint_picker"]
# Every Wasm image: each filter, and the chain module istio/ deploys.
MODULES = FILTERS + ["chain"]
TAG = "0.1.0"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
# How long a process may take to answer its first request on a loaded 2-core machine.
START_BOUND_S = 90


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, accept=None):
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, dict(r.headers), r.read()


def wait_for(url, proc):
    deadline = time.monotonic() + START_BOUND_S
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[0]} exited ({proc.returncode}) before {url}")
        try:
            if get(url)[0] == 200:
                return
        except OSError as e:
            last = e
        time.sleep(0.2)
    raise AssertionError(f"{url} not answering after {START_BOUND_S}s: {last}")


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Registry(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        for tool in ("docker-registry", "skopeo"):
            if not shutil.which(tool):
                raise AssertionError(f"{tool} missing: scripts/setup.sh installs it")
        for f in MODULES:
            if not os.path.exists(os.path.join(OCI, f, "index.json")):
                raise AssertionError(f"dist/oci/{f} missing: make oci-wasm")
        cls.tmp = tempfile.mkdtemp(prefix="modelgate-oci-")
        cls.port = free_port()
        config = os.path.join(cls.tmp, "registry.yml")
        with open(config, "w") as fh:
            fh.write(f"""version: 0.1
log: {{level: warn}}
storage:
  filesystem: {{rootdirectory: {cls.tmp}/data}}
  delete: {{enabled: true}}
http: {{addr: 127.0.0.1:{cls.port}}}
""")
        cls.log = open(os.path.join(cls.tmp, "registry.log"), "w")
        cls.registry = subprocess.Popen(["docker-registry", "serve", config],
                                        stdout=cls.log, stderr=subprocess.STDOUT)
        cls.base = f"http://127.0.0.1:{cls.port}"
        try:
            wait_for(f"{cls.base}/v2/", cls.registry)
        except Exception:
            stop(cls.registry)
            raise

    @classmethod
    def tearDownClass(cls):
        stop(cls.registry)
        cls.log.close()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def push(self, name):
        subprocess.run(["skopeo", "copy", "--quiet", "--preserve-digests",
                        "--dest-tls-verify=false", f"oci:{os.path.join(OCI, name)}:{TAG}",
                        f"docker://127.0.0.1:{self.port}/modelgate/{name}:{TAG}"],
                       check=True, timeout=120, capture_output=True)

    def pull_plugin(self, name):
        """The module as istio-agent extracts it from an OCI manifest."""
        status, headers, body = get(f"{self.base}/v2/modelgate/{name}/manifests/{TAG}",
                                    accept=MANIFEST)
        self.assertEqual(status, 200)
        manifest = json.loads(body)
        self.assertEqual(manifest["mediaType"], MANIFEST)
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        self.assertEqual(headers.get("Docker-Content-Digest"), digest)
        layer = manifest["layers"][-1]
        self.assertEqual(layer["mediaType"], LAYER)
        _, _, blob = get(f"{self.base}/v2/modelgate/{name}/blobs/{layer['digest']}")
        self.assertEqual("sha256:" + hashlib.sha256(blob).hexdigest(), layer["digest"])
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
            member = next(m for m in tar.getmembers()
                          if os.path.basename(m.name) == "plugin.wasm")
            return digest, tar.extractfile(member).read()

    def test_filters_round_trip_byte_identical_and_load_in_envoy(self):
        modules = {}
        for name in MODULES:
            with self.subTest(filter=name):
                self.push(name)
                digest, module = self.pull_plugin(name)
                with open(os.path.join(OCI, name, "index.json")) as fh:
                    self.assertEqual(digest, json.load(fh)["manifests"][0]["digest"],
                                     "the registry serves the digest the manifests pin")
                with open(os.path.join(ROOT, "dist", f"{name}.wasm"), "rb") as fh:
                    self.assertEqual(module, fh.read())
                path = os.path.join(self.tmp, f"{name}.wasm")
                with open(path, "wb") as fh:
                    fh.write(module)
                modules[name] = path
        self.serve_through_envoy(modules)

    def test_loader_image_round_trips(self):
        layout = os.path.join(OCI, "modelgate-loader")
        if not os.path.exists(layout):
            self.skipTest("dist/oci/modelgate-loader not built (make oci builds it; the "
                          "static build takes minutes, so make test does not)")
        self.push("modelgate-loader")
        _, _, body = get(f"{self.base}/v2/modelgate/modelgate-loader/manifests/{TAG}",
                         accept=MANIFEST)
        manifest = json.loads(body)
        _, _, config = get(f"{self.base}/v2/modelgate/modelgate-loader/blobs/"
                           f"{manifest['config']['digest']}")
        self.assertEqual(json.loads(config)["config"]["Entrypoint"], ["/modelgate-loader"])
        _, _, blob = get(f"{self.base}/v2/modelgate/modelgate-loader/blobs/"
                         f"{manifest['layers'][-1]['digest']}")
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
            names = set(tar.getnames())
            binary = tar.extractfile("modelgate-loader").read()
        self.assertIn("etc/ssl/certs/ca-certificates.crt", names)
        path = os.path.join(self.tmp, "modelgate-loader")
        with open(path, "wb") as fh:
            fh.write(binary)
        os.chmod(path, 0o755)
        # Static: no program interpreter (runs on an empty base).
        self.assertNotIn(b"/lib64/ld-linux", binary[:4096])
        out = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)

    def serve_through_envoy(self, modules):
        envoy = os.environ.get("MODELGATE_ENVOY", os.path.join(ROOT, "tools", "envoy"))
        admin, listen = free_port(), free_port()
        configs = {
            "ml_metrics": {"models": ["m"]},
            "readiness_gate": {"model": "m", "health": {"cluster": "admin"},
                               "period": "1s", "gated_prefixes": ["/v1/"]},
            "model_router": {"models": [{"name": "m"}]},
            "load_shedder": {"gateway": {"utilization_threshold": 0.8}},
            "endpoint_picker": {"pools": {"m": ["127.0.0.1:9"]}},
        }
        filters = [{
            "name": f"modelgate.{n}",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": n, "root_id": n, "allow_on_headers_stop_iteration": True,
                    "vm_config": {"vm_id": "modelgate", "runtime": "envoy.wasm.runtime.v8",
                                  "code": {"local": {"filename": modules[n]}}},
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": json.dumps(configs[n])}}}} for n in FILTERS]
        # The chain module with every filter as a stage, as istio/ deploys it.
        filters.append({
            "name": "modelgate.chain",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": "chain", "root_id": "chain", "allow_on_headers_stop_iteration": True,
                    "vm_config": {"vm_id": "modelgate", "runtime": "envoy.wasm.runtime.v8",
                                  "code": {"local": {"filename": modules["chain"]}}},
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": json.dumps({"filters": [
                            {"name": n, "config": configs[n]} for n in FILTERS]})}}}})
        filters.append({"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
        addr = lambda p: {"socket_address": {"address": "127.0.0.1", "port_value": p}}
        bootstrap = {
            "admin": {"address": addr(admin)},
            "static_resources": {
                "listeners": [{"name": "l", "address": addr(listen), "filter_chains": [{
                    "filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network."
                                     "http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "oci",
                            "route_config": {"virtual_hosts": [{
                                "name": "v", "domains": ["*"], "routes": [{
                                    "match": {"prefix": "/"},
                                    "direct_response": {"status": 200, "body": {
                                        "inline_string": "served"}}}]}]},
                            "http_filters": filters}}]}]}],
                "clusters": [{"name": "admin", "type": "STATIC", "connect_timeout": "1s",
                              "load_assignment": {"cluster_name": "admin", "endpoints": [{
                                  "lb_endpoints": [{"endpoint": {"address": addr(admin)}}]}]}}],
            },
        }
        config = os.path.join(self.tmp, "envoy.json")
        with open(config, "w") as fh:
            json.dump(bootstrap, fh)
        log_path = os.path.join(self.tmp, "envoy.log")
        with open(log_path, "w") as log:
            proc = subprocess.Popen([envoy, "-c", config, "--base-id", str(listen),
                                     "--log-level", "warn"], stdout=log,
                                    stderr=subprocess.STDOUT)
            try:
                wait_for(f"http://127.0.0.1:{admin}/ready", proc)
                status, _, body = get(f"http://127.0.0.1:{listen}/healthz")
                self.assertEqual((status, body), (200, b"served"))
                _, _, stats = get(f"http://127.0.0.1:{admin}/stats?filter=wasm")
                created = [line for line in stats.decode().splitlines()
                           if line.startswith("wasm.envoy.wasm.runtime.v8.created:")]
                self.assertTrue(created and int(created[0].split(":")[1]) >= len(MODULES), stats)
            finally:
                stop(proc)
        with open(log_path) as fh:
            self.assertNotIn("Wasm VM failed", fh.read())


if __name__ == "__main__":
    unittest.main(verbosity=2)
