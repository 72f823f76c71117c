#!/usr/bin/env bash
# Throughput of modelgate-loader against modelgate-hub on loopback (release builds).
# Usage: loader/scripts/bench.sh [size_mib]   (default 512)
set -euo pipefail
SIZE_MIB=${1:-512}
BIN=${BIN:-$(cd "$(dirname "$0")/../.." && pwd)/target/release}
W=$(mktemp -d /tmp/loader-bench.XXXXXX)
HUB_PID=
cleanup() { [ -n "$HUB_PID" ] && kill "$HUB_PID" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT

R=$W/repos/bench/model
mkdir -p "$R/revisions/r1" "$R/refs"
head -c $((SIZE_MIB * 1048576)) /dev/urandom > "$R/revisions/r1/model.safetensors"
echo '{"model_type":"bench"}' > "$R/revisions/r1/config.json"
echo r1 > "$R/refs/main"
cat "$R/revisions/r1/model.safetensors" > /dev/null   # warm the page cache

"$BIN/modelgate-hub" --port 0 --repos "$W/repos" > "$W/hub.out" &
HUB_PID=$!
for _ in $(seq 50); do grep -q listening "$W/hub.out" 2>/dev/null && break; sleep 0.1; done
PORT=$(sed -n 's/.*:\([0-9]*\)$/\1/p' "$W/hub.out")
export HF_ENDPOINT=http://127.0.0.1:$PORT

run() { # label, extra flags...
  local label=$1; shift
  rm -rf "$W/d"; mkdir -p "$W/d"
  local t0=$(date +%s.%N)
  "$BIN/modelgate-loader" --source bench/model --dest "$W/d/model" --once --progress none "$@" 2> "$W/log"
  local t1=$(date +%s.%N)
  awk -v l="$label" -v s="$SIZE_MIB" -v a="$t0" -v b="$t1" 'BEGIN{printf "%-40s %6.2f s  %7.1f MiB/s\n", l, b-a, s/(b-a)}'
}

echo "file: $SIZE_MIB MiB, loopback, $(nproc) cores"
t0=$(date +%s.%N); sha256sum "$R/revisions/r1/model.safetensors" > /dev/null; t1=$(date +%s.%N)
awk -v s="$SIZE_MIB" -v a="$t0" -v b="$t1" 'BEGIN{printf "%-40s %6.2f s  %7.1f MiB/s\n", "sha256sum (reference)", b-a, s/(b-a)}'
run "hf, 1 range"                 --parallel-ranges 1
run "hf, 4 ranges x 8MiB (default)"
run "hf, 8 ranges x 16MiB"        --parallel-ranges 8 --chunk-size 16MiB
rm -rf "$W/d"; mkdir -p "$W/d"
t0=$(date +%s.%N)
"$BIN/modelgate-loader" --source "file://$R/revisions/r1" --dest "$W/d/model" --once --progress none 2> "$W/log"
t1=$(date +%s.%N)
awk -v s="$SIZE_MIB" -v a="$t0" -v b="$t1" 'BEGIN{printf "%-40s %6.2f s  %7.1f MiB/s\n", "file:// copy (4 ranges)", b-a, s/(b-a)}'
# A new revision that changes only config.json: the big file is hardlinked, not fetched.
run "hf, first load (for reuse test)"
mkdir -p "$R/revisions/r2"; cp "$R/revisions/r1/model.safetensors" "$R/revisions/r2/"
echo '{"model_type":"bench2"}' > "$R/revisions/r2/config.json"; echo r2 > "$R/refs/main"
curl -s "$HF_ENDPOINT/api/models/bench/model/revision/main" > /dev/null   # hub hashes r2 outside the timing
t0=$(date +%s.%N)
"$BIN/modelgate-loader" --source bench/model --dest "$W/d/model" --once --progress none 2> "$W/log"
t1=$(date +%s.%N)
awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%-40s %6.2f s\n", "new revision, big file reused", b-a}'
grep -o 'reusing.*' "$W/log" || true
