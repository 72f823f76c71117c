#!/usr/bin/env python3
"""Open-loop load for bench/flow.sh, and its report.

--mode M --port P --sim-port S --seconds N --out F: waits for the sidecar, measures the
unloaded TTFT, then offers twice the pod's capacity for N seconds (Poisson arrivals, two
tenants 10:1, classes mixed), streaming requests so TTFT is seen, sampling the sim's
waiting queue; writes the raw results to F.
--report F...: prints the markdown section comparing the modes.
"""
import argparse
import asyncio
import json
import random
import re
import statistics
import sys
import time
import urllib.request

MODEL = "sim-model"
CLASSES = [("critical", 0.2), ("standard", 0.4), ("sheddable", 0.4)]
TENANTS = [("heavy", 10 / 11), ("light", 1 / 11)]
TIMEOUT_S = 120
FIRST_TOKEN = re.compile(rb'"content":"[^"]')


async def one(port, tenant, cls):
    """(status, ttft_s or None, total_s); status 0 = no answer within TIMEOUT_S."""
    body = json.dumps({"model": MODEL, "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: pod\r\nconnection: close\r\n"
            f"content-type: application/json\r\nx-modelgate-tenant: {tenant}\r\n"
            f"x-modelgate-criticality: {cls}\r\ncontent-length: {len(body)}\r\n\r\n").encode()
    t0 = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), 10)
    except Exception:
        return 0, None, 0.0
    status, ttft, buf = 0, None, b""
    try:
        writer.write(head + body)
        await writer.drain()
        deadline = t0 + TIMEOUT_S
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), max(0.1, deadline - time.monotonic()))
            if not chunk:
                break
            buf += chunk
            if not status and b"\r\n" in buf:
                status = int(buf.split(b" ", 2)[1])
            if status == 200 and ttft is None and FIRST_TOKEN.search(buf):
                ttft = time.monotonic() - t0
            if len(buf) > 1 << 20:
                buf = buf[-4096:]
    except Exception:
        status = 0 if not buf else status
    finally:
        writer.close()
    return status, ttft, time.monotonic() - t0


def wait_ready(port):
    for _ in range(300):
        try:
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                data=json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode(),
                headers={"content-type": "application/json"})
            if urllib.request.urlopen(req, timeout=5).status == 200:
                return
        except Exception:
            pass
        time.sleep(0.1)
    sys.exit(f"the sidecar on {port} never answered")


def waiting(sim_port):
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{sim_port}/metrics", timeout=2).read().decode()
    except Exception:
        return None
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
               if l.startswith("vllm:num_requests_waiting"))


async def run(args):
    wait_ready(args.port)
    # Unloaded: one request at a time, every class.
    base = []
    for i in range(30):
        s, ttft, total = await one(args.port, "light", CLASSES[i % 3][0])
        if s == 200 and ttft is not None:
            base.append((ttft, total))
    service = statistics.mean(t for _, t in base)
    rate = 2 * 4 / service  # twice 4 slots over the unloaded service time
    print(f"[flow] {args.mode}: unloaded service {service * 1000:.0f} ms, offering {rate:.1f} req/s",
          file=sys.stderr)
    rng = random.Random(16)
    tasks, queue = [], []
    stop = time.monotonic() + args.seconds

    async def sample():
        while time.monotonic() < stop:
            w = await asyncio.get_running_loop().run_in_executor(None, waiting, args.sim_port)
            if w is not None:
                queue.append(w)
            await asyncio.sleep(0.25)

    sampler = asyncio.create_task(sample())
    while time.monotonic() < stop:
        tenant = rng.choices([t for t, _ in TENANTS], [w for _, w in TENANTS])[0]
        cls = rng.choices([c for c, _ in CLASSES], [w for _, w in CLASSES])[0]
        tasks.append((tenant, cls, asyncio.create_task(one(args.port, tenant, cls))))
        await asyncio.sleep(rng.expovariate(rate))
    await sampler
    results = []
    for tenant, cls, t in tasks:
        s, ttft, total = await t
        results.append({"tenant": tenant, "class": cls, "status": s, "ttft": ttft, "total": total})
    json.dump({"mode": args.mode, "seconds": args.seconds, "rate": rate,
               "unloaded_ttft": [t for t, _ in base], "queue": queue, "results": results},
              open(args.out, "w"))


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def report(files):
    runs = [json.load(open(f)) for f in files]
    unloaded = [t for r in runs for t in r["unloaded_ttft"]]
    u99 = pct(unloaded, 99) * 1000
    print("## Flow control (issue 16)\n")
    print(f"`bench/flow.sh`: one `modelgate-sim --max-num-seqs 4` (TTFT 50 ms, 16 tokens of 10 ms) "
          f"behind the shipped sidecar, offered {runs[0]['rate']:.0f} req/s (twice its capacity) "
          f"for {runs[0]['seconds']} s per mode, open loop; tenants heavy:light = 10:1; classes "
          f"critical 20 %, standard 40 %, sheddable 40 %. *shed* is the sidecar without its "
          f"`flow` block (429 at once), *flow* the shipped one. Unloaded TTFT p50 "
          f"{pct(unloaded, 50) * 1000:.0f} ms, p99 {u99:.0f} ms.\n")
    print("| mode | tenant | class | sent | success | TTFT p50 ms | TTFT p99 ms | p99 / unloaded |")
    print("|---|---|---|---|---|---|---|---|")
    for r in runs:
        for tenant, _ in TENANTS:
            for cls, _ in CLASSES:
                rs = [x for x in r["results"] if x["tenant"] == tenant and x["class"] == cls]
                ok = [x for x in rs if x["status"] == 200]
                ttft = [x["ttft"] * 1000 for x in ok if x["ttft"] is not None]
                p99 = pct(ttft, 99)
                print(f"| {r['mode']} | {tenant} | {cls} | {len(rs)} | "
                      f"{100 * len(ok) / max(1, len(rs)):.1f} % | {pct(ttft, 50):.0f} | {p99:.0f} | "
                      f"{p99 / u99:.1f}× |")
    print()
    print("| mode | goodput req/s | answered | no answer (hung or lost) | statuses | server queue mean / max |")
    print("|---|---|---|---|---|---|")
    for r in runs:
        res = r["results"]
        ok = sum(1 for x in res if x["status"] == 200)
        lost = sum(1 for x in res if x["status"] == 0)
        codes = {}
        for x in res:
            codes[x["status"]] = codes.get(x["status"], 0) + 1
        q = r["queue"] or [float("nan")]
        print(f"| {r['mode']} | {ok / r['seconds']:.1f} | {len(res) - lost}/{len(res)} | {lost} | "
              f"{', '.join(f'{k}: {v}' for k, v in sorted(codes.items()))} | "
              f"{statistics.mean(q):.2f} / {max(q):.0f} |")
    print()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode")
    ap.add_argument("--port", type=int)
    ap.add_argument("--sim-port", type=int)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--out")
    ap.add_argument("--report", nargs="+")
    args = ap.parse_args()
    if args.report:
        report(args.report)
    else:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
