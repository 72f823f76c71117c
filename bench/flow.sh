#!/usr/bin/env bash
# Flow control vs shedding at once (issue 16): one modelgate-sim (--max-num-seqs 4) behind
# the shipped sidecar (envoy/sidecar.yaml), offered twice its capacity for
# FLOW_BENCH_SECONDS (default 30) per mode, open loop, two tenants (one sends 10x more),
# critical / standard / sheddable mixed. Prints a markdown section on stdout, progress on
# stderr. Needs `make build` (dist/, target/release) and tools/envoy.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ENVOY=${MODELGATE_ENVOY:-$ROOT/tools/envoy}
SIM=$ROOT/target/release/modelgate-sim
SECONDS_PER_MODE=${FLOW_BENCH_SECONDS:-30}
for f in "$ENVOY" "$SIM" "$ROOT/dist/load_shedder.wasm"; do
  [ -e "$f" ] || { echo "flow bench: $f missing (make build)" >&2; exit 1; }
done
PY=python3
. "$ROOT/bench/common.bash"
bench_start flow

SIM_PORT=$(free_port)
"$SIM" --host 127.0.0.1 --port "$SIM_PORT" --served-model-name sim-model \
  --max-num-seqs 4 --ttft-ms 50 --itl-ms 10 --max-tokens 16 >"$W/sim.log" 2>&1 &
PIDS+=($!)

# mode -> a rendered sidecar; "shed" is the same config without its flow block.
start_sidecar() {
  local mode=$1 port=$2 admin=$3
  scripts/render.py envoy/sidecar.yaml "$W/$mode.yaml" LISTEN_PORT="$port" \
    ADMIN_PORT="$admin" SIM_PORT="$SIM_PORT" LOADER_PORT=1 WASM_DIR="$ROOT/dist" \
    MODEL=sim-model READINESS_LOADER=null READINESS_PERIOD=500ms
  python3 - "$W/$mode.yaml" "$mode" <<'PY'
import re, sys
p, mode = sys.argv[1:3]
text = open(p).read()
# The pod stands behind a gateway it trusts (over mTLS in istio/): the client's
# criticality is honoured, so critical requests are critical in both modes.
text, n = re.subn(r'("default_criticality": "standard",)', r'\1 "trust_criticality_header": true,', text)
assert n == 1, "default_criticality not found in envoy/sidecar.yaml"
if mode == "shed":
    # Drops `"flow": {...}` (two lines in the template) and the comma before it.
    text, n = re.subn(r',\s*"flow": \{[^{}]*(\{[^{}]*\}[^{}]*)*\}', "", text)
    assert n == 1, "flow block not found in envoy/sidecar.yaml"
open(p, "w").write(text)
PY
  "$ENVOY" -c "$W/$mode.yaml" --disable-hot-restart --concurrency 2 -l warning \
    >"$W/envoy-$mode.log" 2>&1 &
  PIDS+=($!)
}

log "sim on $SIM_PORT; ${SECONDS_PER_MODE}s per mode"
results=()
for mode in shed flow; do
  port=$(free_port); admin=$(free_port)
  start_sidecar "$mode" "$port" "$admin"
  python3 bench/flow_load.py --mode "$mode" --port "$port" --sim-port "$SIM_PORT" \
    --seconds "$SECONDS_PER_MODE" --out "$W/$mode.json" >&2
  results+=("$W/$mode.json")
  kill "${PIDS[-1]}" 2>/dev/null || true
  wait "${PIDS[-1]}" 2>/dev/null || true
  unset 'PIDS[-1]'
done
python3 bench/flow_load.py --report "${results[@]}"
