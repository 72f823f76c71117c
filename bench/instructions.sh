#!/usr/bin/env bash
# Instructions per request (a section of `make bench`): the proxy benchmark's Envoys, one at a
# time under valgrind's callgrind, counting the user-space instructions Envoy executes per
# request. Unlike req/s and CPU time this does not move with the machine's load, so small
# differences between variants (a host call, a callback) show. The bench/abi_probe variants
# price each kind of host call against the module doing nothing. Kernel time (syscalls) is
# not counted; it is the same for every variant.
#
# Per variant: Envoy starts uninstrumented; after a warm-up, instructions are counted over an
# idle window (timers, polls) and over a wrk window; the idle rate is subtracted.
# Env: BENCH_IR_VARIANTS (space-separated), BENCH_IR_SECONDS (load window, default 5),
# MODELGATE_DIST, MODELGATE_ENVOY. Prints a markdown section on stdout, progress on stderr.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ENVOY=${MODELGATE_ENVOY:-$ROOT/tools/envoy}
DIST=${MODELGATE_DIST:-$ROOT/dist}
PY=${PYTHON:-$ROOT/tools/venv/bin/python}
LOAD_SECONDS=${BENCH_IR_SECONDS:-2}
IDLE_SECONDS=2
VARIANTS=(${BENCH_IR_VARIANTS:-none noopmin probe probe_get5 probe_pairs probe_set4 lua router gateway sidecar})
. "$ROOT/bench/common.bash"
bench_start instructions
for t in valgrind callgrind_control wrk; do
  command -v $t >/dev/null || { echo "bench/instructions.sh: $t missing (scripts/bench.sh installs it)" >&2; exit 1; }
done

for crate in noop_min abi_probe; do
  cargo build -q --release --target wasm32-wasip1 --manifest-path "$ROOT/bench/$crate/Cargo.toml" \
    --target-dir "$ROOT/target/bench-noop" >&2
  cp "$ROOT/target/bench-noop/wasm32-wasip1/release/bench_$crate.wasm" "$W/"
done
write_chat_bodies

UP_PORT=$(free_port)
declare -A PORT
pairs=()
for v in "${VARIANTS[@]}"; do PORT[$v]=$(free_port); pairs+=("$v=${PORT[$v]}"); done
"$PY" "$ROOT/bench/proxy_config.py" "$W" "$DIST" "$UP_PORT" "${pairs[@]}"
"$ENVOY" -c "$W/upstream.json" --concurrency 1 --use-dynamic-base-id -l warning > "$W/upstream.log" 2>&1 &
PIDS+=($!)

# Instructions counted in dump N of callgrind (since the previous dump or zeroing).
counted() { # out-file-prefix N
  for _ in $(seq 100); do
    grep -q '^totals:' "$1.$2" 2>/dev/null && break
    sleep 0.1
  done
  awk '/^summary:/ {print $2; exit}' "$1.$2"
}

log "${#VARIANTS[@]} variants, about $(( ${#VARIANTS[@]} * (LOAD_SECONDS + IDLE_SECONDS + 10) ))s"
for v in "${VARIANTS[@]}"; do
  out=$W/$v.cg
  valgrind --tool=callgrind --instr-atstart=no --smc-check=all-non-file --callgrind-out-file="$out" \
    "$ENVOY" -c "$W/$v.json" --concurrency 1 --use-dynamic-base-id -l warning > "$W/$v.log" 2>&1 &
  pid=$!
  PIDS+=($pid)
  body=$(body_for "$v" 1k)
  wait_ready "$v" "${PORT[$v]}" "$pid" 1200
  BENCH_BODY=$body wrk -t1 -c4 -d1s -s "$ROOT/bench/post.lua" "http://127.0.0.1:${PORT[$v]}" > /dev/null
  callgrind_control -i on "$pid" > /dev/null 2>&1
  callgrind_control -z "$pid" > /dev/null 2>&1
  sleep "$IDLE_SECONDS"
  callgrind_control -d "$pid" > /dev/null 2>&1
  idle=$(counted "$out" 1)
  BENCH_BODY=$body wrk -t1 -c4 -d"${LOAD_SECONDS}s" -s "$ROOT/bench/post.lua" \
    "http://127.0.0.1:${PORT[$v]}" > "$W/$v.wrk"
  callgrind_control -d "$pid" > /dev/null 2>&1
  busy=$(counted "$out" 2)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  read -r n bad < <(sed -n 's/^RESULT requests=\([0-9]*\) duration_us=[0-9]* p50_us=[0-9]* p99_us=[0-9]* errors=\([0-9]*\) non2xx=\([0-9]*\)/\1 \2+\3/p' "$W/$v.wrk")
  if [ -z "${n:-}" ] || [ "$n" -eq 0 ] || [ $((bad)) -gt 0 ]; then
    echo "bench/instructions.sh: $v: $((bad)) failed requests of ${n:-0}" >&2; exit 1
  fi
  # Idle instructions per second, times the load window, come off before dividing.
  per=$(awk -v b="$busy" -v i="$idle" -v n="$n" -v ls="$LOAD_SECONDS" -v is="$IDLE_SECONDS" \
    'BEGIN {x = (b - i * ls / is) / n; printf "%.0f", x}')
  echo "$v $n $per" >> "$W/results"
  log "$v: $per instructions per request ($n requests)"
done

"$PY" - "$W/results" <<'EOF'
import sys
rows = [l.split() for l in open(sys.argv[1])]
ir = {v: int(x) for v, _, x in rows}
base = ir.get("none")
label = {
    "none": "no filter (the limit)",
    "noopmin": "a Wasm filter that does nothing (context create and request headers exported)",
    "probe": "`bench/abi_probe` doing nothing (request headers and body exported)",
    "probe_get5": "probe: 5 single header reads (4 found, 1 absent)",
    "probe_pairs": "probe: 1 read of the whole header map",
    "probe_set4": "probe: 4 request header writes",
    "probe_time5": "probe: 5 clock reads",
    "lua": "Envoy Lua: pattern on the body for `model`, set header, clear route cache",
    "router": "`model_router` alone",
    "metrics": "`ml_metrics` alone",
    "shedder": "`load_shedder` alone (gateway mode)",
    "gate": "`readiness_gate` alone",
    "gateway": "gateway chain as shipped (one `chain` module)",
    "gatewaysep": "gateway chain as separate modules",
    "sidecar": "sidecar chain as shipped (one `chain` module)",
    "sidecarsep": "sidecar chain as separate modules",
}
print("## Instructions per request (callgrind)\n")
print("`bench/instructions.sh`: each proxy of the proxy benchmark (same configs) under "
      "valgrind's callgrind, 1 KiB chat POSTs from `wrk` over 4 connections; user-space "
      "instructions Envoy executes per request, its idle rate (timers, polls) subtracted. "
      "It moves by a few percent between runs (connection handling is spread over "
      "a different number of requests), not with the machine's load, so it shows what "
      "req/s cannot: the price of each kind of call across the Wasm boundary. Kernel time is not counted.\n")
print("| proxy | instructions / request | ratio | added over no filter |")
print("|---|---|---|---|")
for v, _, x in rows:
    x = int(x)
    r = f"{x / base:.2f}" if base else "n/a"
    add = f"{x - base:+,}" if base else "n/a"
    print(f"| {label.get(v, v)} | {x:,} | {r} | {add} |")
def diff(a, b):
    return ir[a] - ir[b] if a in ir and b in ir else None
notes = []
if (d := diff("noopmin", "none")) is not None:
    notes.append(f"two VM calls (context create, request headers) cost {d:,} instructions, "
                 f"about {d // 2:,} each")
if (d := diff("probe_get5", "probe")) is not None:
    notes.append(f"a single header read {d // 5:,} on average (a found one makes the host call "
                 f"into the module again, to allocate the copy)")
if (d := diff("probe_pairs", "probe")) is not None:
    notes.append(f"reading the whole header map once {d:,}")
if (d := diff("probe_set4", "probe")) is not None:
    notes.append(f"a request header write {d // 4:,}")
if (d := diff("probe_time5", "probe")) is not None:
    notes.append(f"a clock read {d // 5:,}")
if notes:
    print("\nIn this run: " + "; ".join(notes) + ".")
print()
EOF
