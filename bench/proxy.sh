#!/usr/bin/env bash
# Proxy benchmark (a section of `make bench`): the same one-worker Envoy with no filter, with
# Envoy's Lua filter doing the routing, with each modelgate filter alone, with the shipped
# gateway and sidecar (each one `chain` module) and with their filters as separate modules,
# in front of an Envoy answering from `direct_response`.
# Interleaved rounds; wrk (HTTP/1.1, bench/post.lua) and h2load (HTTP/2) at 1 KB and 100 KB.
# Prints a markdown section on stdout, progress on stderr.
#
# Env: BENCH_SECONDS (per run, default 2), BENCH_ROUNDS (default 3), BENCH_VARIANTS,
# BENCH_SIZES (1k 100k), BENCH_TOOLS (wrk h2load): subsets, space-separated;
# MODELGATE_DIST (modules, default dist/), MODELGATE_ENVOY.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ENVOY=${MODELGATE_ENVOY:-$ROOT/tools/envoy}
DIST=${MODELGATE_DIST:-$ROOT/dist}
PY=${PYTHON:-$ROOT/tools/venv/bin/python}
SECONDS_PER_RUN=${BENCH_SECONDS:-2}
ROUNDS=${BENCH_ROUNDS:-3}
VARIANTS=(${BENCH_VARIANTS:-none noop lua router metrics shedder gate gateway sidecar gatewaysep sidecarsep})
SIZES=(${BENCH_SIZES:-1k 100k})
TOOLS=(${BENCH_TOOLS:-wrk h2load})
CONNS=32
. "$ROOT/bench/common.bash"
bench_start proxy

for t in wrk h2load; do
  command -v $t >/dev/null || { echo "bench/proxy.sh: $t missing (scripts/bench.sh installs it)" >&2; exit 1; }
done
for f in model_router ml_metrics load_shedder readiness_gate; do
  [ -f "$DIST/$f.wasm" ] || { echo "bench/proxy.sh: $DIST/$f.wasm missing (make wasm)" >&2; exit 1; }
done

# The no-op filters: what the Wasm callbacks cost by themselves, through the SDK's dispatcher
# (bench/noop, every callback exported) and on modelgate's (bench/noop_min: context create and
# request headers exported).
for crate in noop noop_min abi_probe; do
  echo "[proxy] building bench/$crate" >&2
  cargo build -q --release --target wasm32-wasip1 --manifest-path "$ROOT/bench/$crate/Cargo.toml" \
    --target-dir "$ROOT/target/bench-noop" >&2
  cp "$ROOT/target/bench-noop/wasm32-wasip1/release/bench_$crate.wasm" "$W/"
done

write_chat_bodies

# The core hot paths natively (std harness), for the table next to the Envoy numbers.
echo "[proxy] cargo bench -p modelgate-core --bench hot_paths" >&2
cargo bench -q -p modelgate-core --bench hot_paths > "$W/hot_paths.md"

# Wasm runtimes compiled into this Envoy: the router alone on each; only those that start run.
RUNTIME_NOTE=()
RUNTIMES=()
for rt in wasmtime wamr; do
  port=$(free_port)
  "$PY" "$ROOT/bench/proxy_config.py" "$W" "$DIST" 1 "router@$rt=$port"
  timeout 5 "$ENVOY" -c "$W/router@$rt.json" --concurrency 1 --use-dynamic-base-id -l warning \
    > "$W/probe-$rt.log" 2>&1 || true
  if grep -q "compiled without support" "$W/probe-$rt.log"; then
    RUNTIME_NOTE+=("\`$rt\`: not compiled into this Envoy build (\"Envoy was compiled without support for it\")")
  else
    RUNTIMES+=("$rt")
  fi
done
for rt in "${RUNTIMES[@]}"; do VARIANTS+=("gateway@$rt"); done

# Pin the proxy to CPU 1 and the load generator and upstream to CPU 0 when there are two.
PROXY_CPU=(); LOAD_CPU=()
if [ "$(nproc)" -ge 2 ]; then PROXY_CPU=(taskset -c 1); LOAD_CPU=(taskset -c 0); fi

UP_PORT=$(free_port)
declare -A PORT PID
pairs=()
for v in "${VARIANTS[@]}"; do PORT[$v]=$(free_port); pairs+=("$v=${PORT[$v]}"); done
"$PY" "$ROOT/bench/proxy_config.py" "$W" "$DIST" "$UP_PORT" "${pairs[@]}"

start() { # name config cpu-prefix...
  local name=$1 cfg=$2; shift 2
  "$@" "$ENVOY" -c "$cfg" --concurrency 1 --use-dynamic-base-id -l warning > "$W/$name.log" 2>&1 &
  PIDS+=($!); PID[$name]=$!
}
start upstream "$W/upstream.json" "${LOAD_CPU[@]}"
for v in "${VARIANTS[@]}"; do start "$v" "$W/$v.json" "${PROXY_CPU[@]}"; done

for v in "${VARIANTS[@]}"; do wait_ready "$v" "${PORT[$v]}" "${PID[$v]}" 300; done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)

# One run: prints "rps p50_us p99_us cpu_us_per_req" (or fails on errors / non-2xx).
run() { # tool variant size seconds
  local tool=$1 v=$2 size=$3 secs=$4 body out c0 c1 n dur p50 p99 bad
  body=$(body_for "$v" "$size")
  out=$W/run.out
  c0=$(cpu_ticks "${PID[$v]}")
  if [ "$tool" = wrk ]; then
    BENCH_BODY=$body "${LOAD_CPU[@]}" wrk -t1 -c$CONNS -d"${secs}s" -s "$ROOT/bench/post.lua" \
      "http://127.0.0.1:${PORT[$v]}" > "$out"
    c1=$(cpu_ticks "${PID[$v]}")
    read -r n dur p50 p99 bad < <(sed -n 's/^RESULT requests=\([0-9]*\) duration_us=\([0-9]*\) p50_us=\([0-9]*\) p99_us=\([0-9]*\) errors=\([0-9]*\) non2xx=\([0-9]*\)/\1 \2 \3 \4 \5+\6/p' "$out")
    bad=$((bad))
  else
    rm -f "$W/h2.log"
    "${LOAD_CPU[@]}" h2load -t1 -c4 -m8 -D "$secs" -d "$body" -H 'content-type: application/json' \
      --log-file="$W/h2.log" "http://127.0.0.1:${PORT[$v]}/v1/chat/completions" > "$out"
    c1=$(cpu_ticks "${PID[$v]}")
    n=$(awk '$2 == 200' "$W/h2.log" | wc -l)
    bad=$(awk '$2 != 200' "$W/h2.log" | wc -l)
    dur=$((secs * 1000000))
    read -r p50 p99 < <(awk '{print $3}' "$W/h2.log" | sort -n | awk '{a[NR]=$1} END {print a[int(NR*0.5)+1], a[int(NR*0.99)+1]}')
  fi
  if [ -z "${n:-}" ] || [ "$n" -eq 0 ] || [ "$bad" -gt 0 ]; then
    echo "bench/proxy.sh: $tool $v $size: $bad failed requests" >&2
    cat "$out" >&2
    return 1
  fi
  awk -v n="$n" -v d="$dur" -v p50="$p50" -v p99="$p99" -v c="$((c1 - c0))" -v t="$TICK" \
    'BEGIN {printf "%.0f %d %d %.1f\n", n * 1e6 / d, p50, p99, c * 1e6 / t / n}'
}

CELLS=$(( ${#VARIANTS[@]} * ${#SIZES[@]} * ${#TOOLS[@]} ))
log "${#VARIANTS[@]} variants (${VARIANTS[*]}) x ${#SIZES[@]} sizes x ${#TOOLS[@]} load generators x $ROUNDS rounds x ${SECONDS_PER_RUN}s = about $(( CELLS * ROUNDS * SECONDS_PER_RUN + ${#VARIANTS[@]} * 2 ))s"
for v in "${VARIANTS[@]}"; do run wrk "$v" 1k 1 > /dev/null; done # warm-up (JIT tiers, pools)

for r in $(seq "$ROUNDS"); do
  for tool in "${TOOLS[@]}"; do
    for size in "${SIZES[@]}"; do
      for v in "${VARIANTS[@]}"; do
        res=$(run "$tool" "$v" "$size" "$SECONDS_PER_RUN")
        echo "$tool $size $v $res" >> "$W/results"
        log "round $r/$ROUNDS $tool $size $v: $res (req/s p50_us p99_us cpu_us/req)"
      done
    done
  done
done

# Memory after the runs: resident set of each proxy.
for v in "${VARIANTS[@]}"; do
  echo "$v $(awk '/^VmRSS/ {print $2}' "/proc/${PID[$v]}/status")" >> "$W/rss"
done

RUNTIME_LIST="v8 ${RUNTIMES[*]}"
BENCH_ROOT=$ROOT "$PY" - "$W" "$DIST" "$SECONDS_PER_RUN" "$ROUNDS" "$CONNS" "$RUNTIME_LIST" "${RUNTIME_NOTE[@]}" <<'EOF'
import os, statistics, sys
from collections import defaultdict
w, dist, secs, rounds, conns, runtimes, *notes = sys.argv[1:]
runs = defaultdict(list)
for line in open(f"{w}/results"):
    tool, size, v, rps, p50, p99, cpu = line.split()
    runs[(tool, size, v)].append((float(rps), float(p50), float(p99), float(cpu)))
med = {k: [statistics.median(x[i] for x in vals) for i in range(4)] for k, vals in runs.items()}
variants = list(dict.fromkeys(k[2] for k in runs))
label = {
    "none": "no filter (the limit)",
    "noop": "a Wasm filter that does nothing (`bench/noop`)",
    "noopmin": "a Wasm filter that does nothing, exporting only context create and request headers (modelgate's dispatcher)",
    "noop3": "three such no-op filters (one VM)",
    "lua": "Envoy Lua: pattern on the body for `model`, set header, clear route cache",
    "router": "`model_router` alone (gateway.yaml config)",
    "metrics": "`ml_metrics` alone (gateway.yaml config)",
    "shedder": "`load_shedder` alone (gateway.yaml config, gateway mode)",
    "gate": "`readiness_gate` alone (sidecar.yaml config)",
    "gateway": "gateway as shipped: one `chain` module (envoy/gateway.yaml)",
    "sidecar": "sidecar as shipped: one `chain` module (envoy/sidecar.yaml)",
    "gatewaysep": "gateway's filters as separate modules (same configs)",
    "sidecarsep": "sidecar's filters as separate modules (same configs)",
}
def name(v):
    base, _, rt = v.partition("@")
    return label.get(base, base) + (f" on `{rt}`" if rt else "")
print("## Proxy: modelgate filters in Envoy\n")
print(f"`bench/proxy.sh`: one Envoy worker (`--concurrency 1`, pinned to CPU 1) per variant, all "
      f"with the same listener and routes; the upstream is an Envoy answering from "
      f"`direct_response` (pinned with the load generator to CPU 0). POST "
      f"`/v1/chat/completions`, chat bodies of exactly 1 KiB and 100 KiB (`model` first, alias "
      f"`llama3` for gateway-side variants, `llama-3-8b` for sidecar-side ones). "
      f"`wrk -t1 -c{conns}` (HTTP/1.1) and `h2load -t1 -c4 -m8` (HTTP/2), {secs} s per run, "
      f"{rounds} interleaved rounds, medians. Ratios are to *no filter* in the same run: "
      f"req/s (higher is better), p50 / p99 latency and Envoy CPU per request (`utime+stime` "
      f"from `/proc/PID/stat`; lower is better). Every request must answer 200.\n")
for tool in ("wrk", "h2load"):
    print(f"### {'HTTP/1.1 (wrk)' if tool == 'wrk' else 'HTTP/2 (h2load)'}\n")
    print("| proxy | body | req/s | ratio | p50 µs | ratio | p99 µs | ratio | CPU µs/req | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size in ("1k", "100k"):
        base = med.get((tool, size, "none"))
        for v in variants:
            m = med.get((tool, size, v))
            if not m or not base:
                continue
            rps, p50, p99, cpu = m
            print(f"| {name(v)} | {'1 KiB' if size == '1k' else '100 KiB'} | {rps:.0f} | "
                  f"**{rps / base[0]:.2f}** | {p50:.0f} | {p50 / base[1]:.2f} | {p99:.0f} | "
                  f"{p99 / base[2]:.2f} | {cpu:.1f} | {cpu / base[3]:.2f} |")
    print()
print("### Targets of issue 10 (req/s ratios above; met = in this run)\n")
print("| target | HTTP/1.1 (wrk) | HTTP/2 (h2load) |\n|---|---|---|")
def ratio(tool, size, v):
    m, b = med.get((tool, size, v)), med.get((tool, size, "none"))
    return m[0] / b[0] if m and b else None
def check(desc, pred):
    cells = []
    for tool in ("wrk", "h2load"):
        ok, shown = pred(tool)
        cells.append("n/a" if ok is None else f"{'met' if ok else '**not met**'} ({shown})")
    print(f"| {desc} | {cells[0]} | {cells[1]} |")
def at_least(v, size, bound):
    def pred(tool):
        r = ratio(tool, size, v)
        return (None, "") if r is None else (r >= bound, f"{r:.2f}")
    return pred
def beats_lua(v, size):
    def pred(tool):
        r, l = ratio(tool, size, v), ratio(tool, size, "lua")
        return (None, "") if r is None or l is None else (r > l, f"{r:.2f} vs Lua {l:.2f}")
    return pred
for v in ("router", "metrics", "shedder", "gate"):
    if v in variants:
        check(f"{name(v)} ≥ 0.92 at 1 KiB", at_least(v, "1k", 0.92))
        for size in ("1k", "100k"):
            check(f"{name(v)} faster than Lua at {'1 KiB' if size == '1k' else '100 KiB'}", beats_lua(v, size))
for v in ("gateway", "gatewaysep"):
    if v in variants:
        check(f"{name(v)} ≥ 0.85 at 1 KiB", at_least(v, "1k", 0.85))
        check(f"{name(v)} ≥ 0.80 at 100 KiB", at_least(v, "100k", 0.80))
for v in ("sidecar", "sidecarsep"):
    if v in variants:
        check(f"{name(v)} ≥ 0.85 at 1 KiB", at_least(v, "1k", 0.85))
        check(f"{name(v)} ≥ 0.85 at 100 KiB", at_least(v, "100k", 0.85))
print()
print("### Core hot paths, natively\n")
print("`cargo bench -p modelgate-core --bench hot_paths` (`filters/core/benches/hot_paths.rs`): "
      "the filters' per-request logic without Envoy or Wasm, release build.\n")
print(open(f"{w}/hot_paths.md").read())
print("### Modules and memory\n")
print("| module | size (bytes) |\n|---|---|")
for f in sorted(os.listdir(dist)):
    if f.endswith(".wasm"):
        print(f"| `{f}` | {os.path.getsize(os.path.join(dist, f))} |")
print()
rss = dict(l.split() for l in open(f"{w}/rss"))
print("| proxy | Envoy RSS after the runs (MiB) |\n|---|---|")
for v in variants:
    if v in rss:
        print(f"| {name(v)} | {int(rss[v]) / 1024:.1f} |")
print()
print(f"Wasm runtimes measured: {', '.join('`' + r + '`' for r in runtimes.split())}.")
for n in notes:
    print(f"- {n}")
print()
analysis = os.path.join(os.environ["BENCH_ROOT"], "bench", "proxy-analysis.md")
if os.path.exists(analysis):
    print(open(analysis).read())
EOF
