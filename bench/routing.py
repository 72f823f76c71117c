#!/usr/bin/env python3
"""Routing-quality benchmark (bench/routing.sh): 4 modelgate-sim pods with prefix caching and
a prefill cost per uncached token, each behind a sidecar Envoy (load_shedder: scrape + ORCA
reports), and a gateway Envoy (model_router + load_shedder gateway mode) whose cluster
balances with one policy per run: round robin, least request, ring hash on the router's
prefix hash, ORCA client-side weighted round robin, and the endpoint picker
(override_host). Same seeded workload for each: shared system prompts and multi-turn
conversations at a steady rate plus a burst. Fresh pods (cold caches) for every run.
Prints a markdown section to stdout; progress goes to stderr."""
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENVOY = os.environ.get("MODELGATE_ENVOY", os.path.join(ROOT, "tools/envoy"))
SIM = os.path.join(ROOT, "target/release/modelgate-sim")
WASM = os.path.join(ROOT, "dist")
MODEL = "llama-3-8b"

# Each row pools the runs of these seeds (one workload and one prefix placement each): the
# p99 of one run of ~300 requests swings by a third between runs on a shared machine.
SEEDS = [int(x) for x in os.environ.get("BENCH_SEEDS", "7 8").split()]
PODS = 4
DURATION_S = float(os.environ.get("BENCH_ROUTING_SECONDS", "10"))
CONV_RATE = float(os.environ.get("BENCH_ROUTING_RATE", "2.5"))  # conversations started / s
# A flash crowd on the most popular application: from, to (s), rate multiplier; the extra
# conversations all use system prompt 0, more than its pod alone can serve.
BURST = (10.0, 14.0, 3.0)
SYSTEM_PROMPTS = int(os.environ.get("BENCH_ROUTING_PROMPTS", "24"))
MAX_TOKENS = 24
SIM_ARGS = [
    "--max-num-seqs", "2", "--ttft-ms", "5", "--prefill-ms-per-token", "0.5",
    "--itl-ms", "5", "--kv-cache-tokens", os.environ.get("BENCH_ROUTING_KV", "24000"), "--max-model-len", "24000",
]
ORCA_CAPACITY = int(os.environ.get("BENCH_ORCA_CAP", "32"))  # running + waiting at utilisation 1 (sidecar and picker agree)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The pods' addresses are fixed (one loopback IP each, one port), so prefix placement by
# ring hash and by the picker's rendezvous hashing depends on the seed only, not on which
# ports were free: every run of a seed is the same experiment.
POD_PORT = int(os.environ.get("BENCH_ROUTING_POD_PORT", "18080"))


def pod_address(i):
    host = f"127.0.1.{i + 1}"
    with socket.socket() as s:
        # As Envoy's listener: connections of the previous row in TIME_WAIT do not count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, POD_PORT))
        except OSError as e:
            raise SystemExit(f"routing bench: {host}:{POD_PORT} is not free ({e}); "
                             f"set BENCH_ROUTING_POD_PORT")
    return f"{host}:{POD_PORT}"


def wasm_filter(name, config, stop_iteration=False):
    knob = "\n                allow_on_headers_stop_iteration: true" if stop_iteration else ""
    cfg = json.dumps(config)
    return f"""
          - name: modelgate.{name}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: {name}
                root_id: {name}{knob}
                vm_config:
                  vm_id: modelgate
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: "{WASM}/{name}.wasm" }} }}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{cfg}'"""


def envoy_config(admin, listen, filters, cluster_name, cluster_body, endpoints, hash_policy=""):
    """`listen` and `endpoints`: "IP:port"."""
    eps = "\n".join(
        f"        - endpoint: {{ address: {{ socket_address: {{ address: {a.split(':')[0]}, port_value: {a.split(':')[1]} }} }} }}"
        for a in endpoints
    )
    listen_ip, listen_port = listen.split(":")
    return f"""
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
stats_config:
  stats_tags:
  - {{ tag_name: model_name, regex: '(model_name=\\.=(.*?);\\.;)' }}
  - {{ tag_name: pod, regex: '(pod=\\.=(.*?);\\.;)' }}
  - {{ tag_name: reason, regex: '(reason=\\.=(.*?);\\.;)' }}
static_resources:
  listeners:
  - name: l
    address: {{ socket_address: {{ address: {listen_ip}, port_value: {listen_port} }} }}
    per_connection_buffer_limit_bytes: 8388608
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: l
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route:
                  cluster: {cluster_name}
                  timeout: 300s{hash_policy}
          http_filters:{filters}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: {cluster_name}
    connect_timeout: 1s
    type: STATIC
    circuit_breakers: {{ thresholds: [{{ max_connections: 10000, max_pending_requests: 10000, max_requests: 10000 }}] }}{cluster_body}
    load_assignment:
      cluster_name: {cluster_name}
      endpoints:
      - lb_endpoints:
{eps}
"""


def sidecar_config(admin, listen, sim_port):
    shed = {
        "scrape": {"cluster": "model_server", "path": "/metrics", "period": "50ms", "timeout": "500ms"},
        "default_criticality": "standard",
        "trust_criticality_header": True,
        # The benchmark measures routing: the sidecar reports load but never sheds.
        "thresholds": {"standard": {"queue": 1000000, "kv_cache": 1.0}},
        "on_stale": "admit",
        "orca": {"capacity": ORCA_CAPACITY, "window": "500ms"},
    }
    return envoy_config(admin, listen, wasm_filter("load_shedder", shed), "model_server", "",
                        [f"127.0.0.1:{sim_port}"])


POLICIES = {
    "round robin": ("\n    lb_policy: ROUND_ROBIN", False, False),
    "least request": ("\n    lb_policy: LEAST_REQUEST", False, False),
    "ring hash (prefix hash)": ("""
    load_balancing_policy:
      policies:
      - typed_extension_config:
          name: envoy.load_balancing_policies.ring_hash
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash
            minimum_ring_size: 1024
            consistent_hashing_lb_config: { hash_balance_factor: 150 }""", True, False),
    "ORCA weighted round robin": ("""
    load_balancing_policy:
      policies:
      - typed_extension_config:
          name: envoy.load_balancing_policies.client_side_weighted_round_robin
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.load_balancing_policies.client_side_weighted_round_robin.v3.ClientSideWeightedRoundRobin
            blackout_period: 1s
            weight_update_period: 0.2s
            weight_expiration_period: 30s""", False, False),
    "endpoint picker": ("""
    load_balancing_policy:
      policies:
      - typed_extension_config:
          name: envoy.load_balancing_policies.override_host
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.load_balancing_policies.override_host.v3.OverrideHost
            override_host_sources: [{ header: x-gateway-destination-endpoint }]
            fallback_policy:
              policies:
              - typed_extension_config:
                  name: envoy.load_balancing_policies.least_request
                  typed_config:
                    "@type": type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest""", False, True),
}


def picker_cold():
    return float(os.environ.get("BENCH_PICKER_COLD", "0.8"))


def gateway_config(admin, listen, policy, pods):
    body, ring, picker = POLICIES[policy]
    router = {"models": [{"name": MODEL, "criticality": "standard"}], "prefix_affinity": {"chars": 256}}
    filters = wasm_filter("model_router", router, stop_iteration=True)
    filters += wasm_filter("load_shedder", {"gateway": {"utilization_threshold": 0.8, "report_ttl": "2s"},
                                            "trust_criticality_header": True})
    if picker:
        filters += wasm_filter("endpoint_picker", {
            "pools": {MODEL: pods},
            "capacity": ORCA_CAPACITY,
            "saturation": {"utilization": 0.9, "in_flight": ORCA_CAPACITY},
            # Prefill 0.5 ms per uncached token, ~170 tokens per KB of this workload's JSON:
            # 85 ms per KB; one request ahead in a 2-slot queue waits ~100 ms (prefill of
            # its new turn ~75 ms + 24 tokens x 5 ms, over 2 slots).
            "cold_prefill_per_kb": picker_cold(),
            "report_ttl": "2s",
        })
    hp = "\n                  hash_policy: [{ header: { header_name: x-modelgate-prefix-hash } }]" if ring else ""
    return envoy_config(admin, listen, filters, MODEL, body, pods, hp)


class Procs:
    def __init__(self, tmp):
        self.procs, self.tmp = [], tmp

    def start(self, name, cmd):
        out = open(os.path.join(self.tmp, name + ".log"), "w")
        self.procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT))

    def envoy(self, name, yaml):
        path = os.path.join(self.tmp, name + ".yaml")
        with open(path, "w") as f:
            f.write(yaml)
        self.start(name, [ENVOY, "-c", path, "--disable-hot-restart", "--concurrency", "1",
                          "-l", "warn"])

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []


def wait_for(fn, what, bound_s=60):
    deadline = time.time() + bound_s
    while time.time() < deadline:
        try:
            if fn():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"routing bench: {what} did not come up within {bound_s} s")


def chat_ok(addr):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "warm up"}], "max_tokens": 1}
    return httpx.post(f"http://{addr}/v1/chat/completions", json=body, timeout=5).status_code == 200


def prefix_counters(sim_ports):
    q = h = 0.0
    for p in sim_ports:
        for line in httpx.get(f"http://127.0.0.1:{p}/metrics", timeout=5).text.splitlines():
            if line.startswith("vllm:prefix_cache_queries_total{"):
                q += float(line.rsplit(" ", 1)[1])
            elif line.startswith("vllm:prefix_cache_hits_total{"):
                h += float(line.rsplit(" ", 1)[1])
    return q, h


def pick_reasons(admins):
    """The picker's decisions summed over gateways and pods: reason -> count."""
    out = {}
    for a in admins:
        text = httpx.get(f"http://127.0.0.1:{a}/stats/prometheus", timeout=5).text
        for line in text.splitlines():
            if line.startswith("ml_picker_picks_total{"):
                reason = line.split('reason="', 1)[1].split('"', 1)[0]
                out[reason] = out.get(reason, 0) + int(float(line.rsplit(" ", 1)[1]))
    return out


def workload(seed):
    """Conversations: (start time, system prompt, turns [(user words, assistant words, think s)])."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(5000)]
    words = lambda n: " ".join(rng.choice(vocab) for _ in range(n))
    systems = [words(rng.randint(1000, 2000)) for _ in range(SYSTEM_PROMPTS)]
    # Some applications are busier than others (popularity ~ 1/rank).
    weights = [1 / (i + 1) for i in range(SYSTEM_PROMPTS)]
    convs, t = [], 0.0
    while t < DURATION_S:
        burst = BURST[0] <= t < BURST[1]
        rate = CONV_RATE * (BURST[2] if burst else 1.0)
        t += rng.expovariate(rate)
        turns = [(words(rng.randint(60, 250)), words(rng.randint(80, 250)), rng.uniform(0.2, 1.0))
                 for _ in range(rng.randint(3, 6))]
        crowd = burst and rng.random() < 1 - 1 / BURST[2]
        convs.append((t, systems[0] if crowd else rng.choices(systems, weights)[0], turns))
    return convs


async def run_load(gateway_ports, seed):
    convs = workload(seed)
    pick = random.Random(seed + 1)
    results = []  # (ok, ttft, e2e)
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        t0 = time.monotonic()

        async def conversation(start, system, turns):
            await asyncio.sleep(max(0.0, start - (time.monotonic() - t0)))
            messages = [{"role": "system", "content": system}]
            for user, assistant, think in turns:
                messages.append({"role": "user", "content": user})
                body = {"model": MODEL, "messages": messages, "max_tokens": MAX_TOKENS, "stream": True}
                port = gateway_ports[pick.randrange(len(gateway_ports))]
                sent = time.monotonic()
                ttft, ok = None, False
                try:
                    async with client.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions",
                                             json=body) as r:
                        async for line in r.aiter_lines():
                            if ttft is None and line.startswith("data: {") and '"content":"' in line \
                                    and '"content":""' not in line:
                                ttft = time.monotonic() - sent
                        ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                results.append((ok, ttft, time.monotonic() - sent, time.monotonic() - t0))
                messages.append({"role": "assistant", "content": assistant})
                await asyncio.sleep(think)

        await asyncio.gather(*(conversation(*c) for c in convs))
        wall = time.monotonic() - t0
    return results, wall


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def run_policy(policy, seed, replicas=1):
    """One run: (results, wall s, prefix-cache queries, hits, pick reasons)."""
    tmp = tempfile.mkdtemp(prefix="modelgate-routing-")
    procs = Procs(tmp)
    try:
        sims, sidecars = [], []
        for i in range(PODS):
            sp, lp = free_port(), pod_address(i)
            procs.start(f"sim{i}", [SIM, "--port", str(sp), "--served-model-name", MODEL,
                                    "--pod-name", f"pod-{i}", *SIM_ARGS])
            procs.envoy(f"sidecar{i}", sidecar_config(free_port(), lp, sp))
            sims.append(sp)
            sidecars.append(lp)
        gateways, admins = [], []
        for r in range(replicas):
            gp, ap = free_port(), free_port()
            procs.envoy(f"gateway{r}", gateway_config(ap, f"127.0.0.1:{gp}", policy, sidecars))
            gateways.append(gp)
            admins.append(ap)
        for a in sidecars + [f"127.0.0.1:{g}" for g in gateways]:
            wait_for(lambda a=a: chat_ok(a), a)
        q0, h0 = prefix_counters(sims)
        results, wall = asyncio.run(run_load(gateways, seed))
        q1, h1 = prefix_counters(sims)
        reasons = pick_reasons(admins)
    finally:
        procs.stop()
    return results, wall, q1 - q0, h1 - h0, reasons


def pooled(runs):
    """One row from several runs: percentiles over all their requests, throughput and hit
    rate over their sums."""
    results = [r for run in runs for r in run[0]]
    ok = [r for r in results if r[0]]
    ttfts = [r[1] * 1000 for r in ok if r[1] is not None]
    e2e = [r[2] * 1000 for r in ok]
    q, h = sum(run[2] for run in runs), sum(run[3] for run in runs)
    reasons = {}
    for run in runs:
        for k, v in run[4].items():
            reasons[k] = reasons.get(k, 0) + v
    return {
        "requests": len(results),
        "errors": len(results) - len(ok),
        "ttft50": pct(ttfts, 50), "ttft99": pct(ttfts, 99),
        "e2e50": pct(e2e, 50), "e2e99": pct(e2e, 99),
        "rps": len(ok) / sum(run[1] for run in runs),
        "hit": h / q * 100 if q > 0 else float("nan"),
        "reasons": reasons,
    }


def main():
    # SIGTERM (a stopped `make bench`) runs the `finally` that stops the processes started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    for path in (ENVOY, SIM):
        if not os.path.exists(path):
            raise SystemExit(f"routing bench: {path} is missing (make build)")
    # Seed by seed, every policy in turn, so a slow spell of the machine hits all rows alike.
    variants = [(p, p, 1) for p in POLICIES]
    variants.append(("endpoint picker, 2 gateway replicas", "endpoint picker", 2))
    runs = {name: [] for name, _, _ in variants}
    for seed in SEEDS:
        for name, policy, replicas in variants:
            log(f"routing bench: seed {seed}, {name} ...")
            runs[name].append(run_policy(policy, seed, replicas))
    rows = [(name, pooled(runs[name])) for name, _, _ in variants]
    n = rows[0][1]["requests"]
    print("## Routing quality: which pod gets each request\n")
    seeds = ", ".join(map(str, SEEDS))
    print(f"`bench/routing.sh` (seeds {seeds}: each row pools one run per seed, all rows in "
          f"one session): {PODS} `modelgate-sim` pods "
          f"at fixed addresses (127.0.1.1–{PODS}:{POD_PORT}, so where a prefix hashes to "
          f"depends on the seed alone) (2 slots; prefix cache of {SIM_ARGS[SIM_ARGS.index('--kv-cache-tokens') + 1]} tokens; "
          f"prefill 5 ms + 0.5 ms per uncached prompt token; 5 ms per output token), each behind "
          f"a sidecar Envoy whose load shedder sends ORCA load reports; a gateway Envoy with "
          f"model_router (prefix hash over the first 256 characters of the system prompt and "
          f"first user turn) and the cluster policy of the row (the picker: "
          f"`cold_prefill_per_kb` {picker_cold()}, `capacity` {ORCA_CAPACITY}, saturated at "
          f"{ORCA_CAPACITY} in flight or utilisation 0.9). Workload: {SYSTEM_PROMPTS} "
          f"applications' system prompts (1000–2000 words, popularity ~ 1/rank) and multi-turn "
          f"conversations (3–6 turns, 60–250-word user turns, 80–250-word assistant turns "
          f"kept in the history, {MAX_TOKENS} streamed output tokens) starting at {CONV_RATE}/s "
          f"for {DURATION_S:.0f} s, and a flash crowd from {BURST[0]:.0f} to {BURST[1]:.0f} s "
          f"({BURST[2]:.0f}x the rate, the extra conversations all on the most popular "
          f"application, more than one pod can serve): {n} requests "
          f"per row ({len(SEEDS)} runs), the same for each. Fresh pods (cold caches) for every row. TTFT and "
          f"latency in ms at the client; hit rate = prompt tokens found in the pods' prefix "
          f"caches (`vllm:prefix_cache_hits_total / vllm:prefix_cache_queries_total`); "
          f"picks = the picker's `ml_picker_picks_total` by reason.\n")
    print("| policy | TTFT p50 | TTFT p99 | latency p50 | latency p99 | throughput (req/s) | prefix-cache hit rate | errors | picks (affinity / spill / queued) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        rs = r["reasons"]
        picks = f"{rs.get('affinity', 0)} / {rs.get('spill', 0)} / {rs.get('queued', 0)}" if rs else "–"
        print(f"| {name} | {r['ttft50']:.0f} | {r['ttft99']:.0f} | {r['e2e50']:.0f} | {r['e2e99']:.0f} "
              f"| {r['rps']:.1f} | {r['hit']:.1f}% | {r['errors']} | {picks} |")
    by = dict(rows)
    base, pk, two = by["round robin"], by["endpoint picker"], rows[-1][1]
    ring, wrr = by["ring hash (prefix hash)"], by["ORCA weighted round robin"]
    print(f"\nEndpoint picker vs round robin: p99 TTFT {base['ttft99'] / pk['ttft99']:.2f}x lower, "
          f"throughput {pk['rps'] / base['rps']:.2f}x. P99 TTFT and hit rate, picker against ring "
          f"hash: {pk['ttft99']:.0f} vs {ring['ttft99']:.0f} ms, {pk['hit'] - ring['hit']:+.1f} "
          f"points; against ORCA weighted round robin: {pk['ttft99']:.0f} vs {wrr['ttft99']:.0f} ms, "
          f"{pk['hit'] - wrr['hit']:+.1f} points. A second gateway replica (requests split "
          f"at random between the two): hit rate {two['hit'] - pk['hit']:+.1f} points. "
          f"On a shared 2-core machine; the runs of one seed differ by up to a third in p99, "
          f"so compare the pooled rows and the spread below.\n")
    print("Each seed's run alone (TTFT p99 ms / hit rate):\n")
    print("| policy | " + " | ".join(f"seed {x}" for x in SEEDS) + " |")
    print("|---|" + "---|" * len(SEEDS))
    for name, _, _ in variants:
        cells = [pooled([run]) for run in runs[name]]
        print(f"| {name} | " + " | ".join(f"{c['ttft99']:.0f} / {c['hit']:.1f}%" for c in cells) + " |")
    print()


if __name__ == "__main__":
    main()
