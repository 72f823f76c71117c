#!/usr/bin/env bash
# `make run`: the modelgate demo on loopback, shaped like the mesh it stands for.
#
#   client ──► gateway Envoy :10000 (chain: ml_metrics, model_router, load_shedder, endpoint_picker)   admin :9901
#                 ├─► pod-a sidecar Envoy :10001 ─► modelgate-sim :8001 (llama-3-8b)   admin :9902
#                 ├─► pod-b sidecar Envoy :10002 ─► modelgate-sim :8002 (llama-3-8b)   admin :9903
#                 └─► pod-c sidecar Envoy :10003 ─► modelgate-sim :8003 (qwen-2-7b)    admin :9904
#   each pod: modelgate-loader (status :810N) fetches the demo model from modelgate-hub :8200
#   (a local Hugging Face-compatible server); sidecars run a chain of ml_metrics,
#   readiness_gate, load_shedder (envoy/*.yaml: one chain module each). Foreground;
#   Ctrl-C stops exactly the processes started here.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUN=$ROOT/tools/run
WASM_DIR=$ROOT/dist
BIN=$ROOT/target/release
ENVOY=${MODELGATE_ENVOY:-$ROOT/tools/envoy}
STARTUP_DELAY_MS=${STARTUP_DELAY_MS:-10000}

PODS=(a b c)
declare -A MODEL=([a]=llama-3-8b [b]=llama-3-8b [c]=qwen-2-7b)
declare -A N=([a]=1 [b]=2 [c]=3)

pids=()
names=()
cleanup() {
  trap - INT TERM EXIT
  echo
  echo "stopping ${#pids[@]} processes started by make run..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "stopped."
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start() { # name, command...
  local name=$1; shift
  "$@" >"$RUN/logs/$name.log" 2>&1 &
  pids+=($!)
  names+=("$name")
}

port_free() { ! (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }

wanted=(10000 9901 8200)
for p in "${PODS[@]}"; do wanted+=($((10000 + N[$p])) $((9901 + N[$p])) $((8000 + N[$p])) $((8100 + N[$p]))); done
for port in "${wanted[@]}"; do
  port_free "$port" || { echo "port $port is in use; stop whatever holds it and retry" >&2; exit 1; }
done

rm -rf "$RUN"
mkdir -p "$RUN/logs" "$RUN/config"

# A local Hugging Face-compatible hub serving the built-in demo model.
start hub "$BIN/modelgate-hub" --host 127.0.0.1 --port 8200 --demo

for p in "${PODS[@]}"; do
  n=${N[$p]}
  sim_port=$((8000 + n)); loader_port=$((8100 + n))
  # The loader fetches, verifies and links the model, then reports ready on its status port.
  HF_ENDPOINT=http://127.0.0.1:8200 start "loader-$p" "$BIN/modelgate-loader" \
    --source hf://modelgate/demo-model --model-dir "$RUN/pod-$p/model" \
    --status-addr 127.0.0.1:$loader_port --poll-interval 60
  # The model server: healthy only after a start-up delay, like vLLM loading weights.
  start "sim-$p" "$BIN/modelgate-sim" --host 127.0.0.1 --port $sim_port \
    --served-model-name "${MODEL[$p]}" --pod-name "pod-$p" \
    --startup-delay-ms $((STARTUP_DELAY_MS + 1000 * (n - 1))) --max-num-seqs 4
  scripts/render.py envoy/sidecar.yaml "$RUN/config/sidecar-$p.yaml" \
    LISTEN_PORT=$((10000 + n)) ADMIN_PORT=$((9901 + n)) SIM_PORT=$sim_port \
    LOADER_PORT=$loader_port WASM_DIR="$WASM_DIR" MODEL="${MODEL[$p]}" \
    READINESS_LOADER='{"cluster": "loader", "path": "/ready"}' READINESS_PERIOD=1s
  start "sidecar-$p" "$ENVOY" -c "$RUN/config/sidecar-$p.yaml" --disable-hot-restart \
    --concurrency 2 -l warn --component-log-level wasm:info
done

scripts/render.py envoy/gateway.yaml "$RUN/config/gateway.yaml" \
  LISTEN_PORT=10000 ADMIN_PORT=9901 WASM_DIR="$WASM_DIR" \
  POD_A_PORT=10001 POD_B_PORT=10002 POD_C_PORT=10003
start gateway "$ENVOY" -c "$RUN/config/gateway.yaml" --disable-hot-restart \
  --concurrency 2 -l warn --component-log-level wasm:info

for i in "${!pids[@]}"; do printf '  started %-10s pid %s  log tools/run/logs/%s.log\n' "${names[$i]}" "${pids[$i]}" "${names[$i]}"; done

# Wait for the gateway to listen, then show the gate: 503 while the models load, then 200.
for _ in $(seq 300); do port_free 10000 || break; sleep 0.1; done
chat='{"model":"llama-3-8b","messages":[{"role":"user","content":"Hello from make run"}]}'
echo
echo "waiting for the pods: the readiness gates answer 503 until loader and model server are ready"
last=""
for _ in $(seq 120); do
  code=$(curl -s -o "$RUN/last.json" -w '%{http_code}' -H 'content-type: application/json' \
    -d "$chat" http://127.0.0.1:10000/v1/chat/completions || true)
  if [ "$code" != "$last" ]; then
    printf '  %s POST /v1/chat/completions -> %s %s\n' "$(date +%T)" "$code" "$(head -c 160 "$RUN/last.json")"
    last=$code
  fi
  [ "$code" = 200 ] && break
  sleep 0.5
done

cat <<MSG

modelgate demo is up. OpenAI-compatible API on http://127.0.0.1:10000, gateway admin on :9901.
Try:
  curl -s localhost:10000/v1/models
  curl -s localhost:10000/v1/chat/completions -H 'content-type: application/json' \\
    -d '{"model":"llama3","messages":[{"role":"user","content":"Hi"}]}'
  curl -sN localhost:10000/v1/chat/completions -H 'content-type: application/json' \\
    -d '{"model":"chat","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Hi"}]}'
  curl -s localhost:10000/v1/chat/completions -H 'content-type: application/json' -d '{"model":"nope","messages":[]}'
  curl -s localhost:10001/modelgate/ready            # pod-a's readiness probe, answered by its sidecar
  curl -s localhost:8101/ready                       # pod-a's loader status
Metrics (Prometheus text): gateway http://127.0.0.1:9901/stats/prometheus, sidecars :9902 :9903 :9904
Logs: tools/run/logs/. Ctrl-C stops everything.
MSG
wait -n "${pids[@]}" || true
echo "a process exited; see tools/run/logs/" >&2
