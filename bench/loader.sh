#!/usr/bin/env bash
# Loader throughput (issue 10): a Hub look-alike (modelgate-hub) whose LFS files redirect to
# nginx on loopback, 4 files of BENCH_LOADER_MIB (default 384) MiB. Interleaved rounds of:
# parallel curl to /dev/null (the network limit), curl | openssl sha256 (the hashing limit),
# modelgate-loader (verifying every byte; peak RSS), huggingface_hub snapshot_download and
# hf_transfer (neither checks hashes). Prints a markdown section on stdout, progress on stderr.
# Needs release builds (make native), nginx-light (apt) and a bench venv (created here).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MIB=${BENCH_LOADER_MIB:-384}
FILES=4
ROUNDS=${BENCH_LOADER_ROUNDS:-3}
BIN=${BIN:-$ROOT/target/release}
VENV=$ROOT/tools/bench-venv
say() { printf '[bench/loader] %s\n' "$*" >&2; }

[ -x "$BIN/modelgate-loader" ] && [ -x "$BIN/modelgate-hub" ] \
  || cargo build --release -p modelgate-loader >&2
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  say "apt-get install nginx-light"
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends nginx-light >&2
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import huggingface_hub, hf_transfer' 2>/dev/null; then
  say "bench venv: huggingface_hub, hf_transfer"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check huggingface_hub hf_transfer >&2
fi

W=$(mktemp -d /tmp/bench-loader.XXXXXX)
HUB_PID=; NGX_PID=
cleanup() {
  [ -n "$HUB_PID" ] && kill "$HUB_PID" 2>/dev/null
  [ -n "$NGX_PID" ] && kill "$NGX_PID" 2>/dev/null
  rm -rf "$W"
}
trap cleanup EXIT

R=$W/repos/bench/model
mkdir -p "$R/revisions/r1" "$R/refs"
say "writing $FILES x $MIB MiB"
for i in $(seq 1 $FILES); do
  # Pseudo-random bytes at AES speed; openssl dies of SIGPIPE when head has enough.
  { openssl enc -aes-128-ctr -pass pass:"$i" -nosalt -pbkdf2 < /dev/zero 2>/dev/null || true; } \
    | head -c $((MIB * 1048576)) > "$R/revisions/r1/model-0000$i.safetensors"
done
echo '{"model_type":"bench"}' > "$R/revisions/r1/config.json"
echo r1 > "$R/refs/main"
TOTAL=$((FILES * MIB * 1048576 + $(stat -c %s "$R/revisions/r1/config.json")))

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
NPORT=$(free_port)
mkdir -p "$W/nginx/logs"
cat > "$W/nginx/nginx.conf" <<EOF
user root;
daemon off;
worker_processes 2;
pid $W/nginx/nginx.pid;
error_log $W/nginx/logs/error.log;
events { worker_connections 256; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  server {
    listen 127.0.0.1:$NPORT;
    root $W/repos;
  }
}
EOF
"$NGINX" -p "$W/nginx" -c "$W/nginx/nginx.conf" -e "$W/nginx/logs/error.log" &
NGX_PID=$!
"$BIN/modelgate-hub" --port 0 --repos "$W/repos" --lfs-base "http://127.0.0.1:$NPORT" > "$W/hub.out" &
HUB_PID=$!
export HF_ENDPOINT=
for _ in $(seq 600); do
  PORT=$(sed -n 's/.*:\([0-9]*\)$/\1/p' "$W/hub.out" 2>/dev/null)
  if [ -n "$PORT" ] && curl -sf "http://127.0.0.1:$PORT/api/models/bench/model/revision/main" >/dev/null \
     && curl -sf -o /dev/null "http://127.0.0.1:$NPORT/bench/model/revisions/r1/config.json"; then
    break
  fi
  sleep 0.2
done
export HF_ENDPOINT=http://127.0.0.1:$PORT
export HF_HUB_DISABLE_TELEMETRY=1 HF_HUB_DISABLE_PROGRESS_BARS=1
URLS=()
for i in $(seq 1 $FILES); do URLS+=("http://127.0.0.1:$NPORT/bench/model/revisions/r1/model-0000$i.safetensors"); done
cat "$R"/revisions/r1/* > /dev/null   # warm the page cache

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { print b - a }'; }
declare -A T RSS
record() { T[$1]="${T[$1]:-} $2"; }

run_curl() {
  local t0; t0=$(now)
  local pids=()
  for u in "${URLS[@]}"; do curl -s -o /dev/null "$u" & pids+=($!); done; wait "${pids[@]}"
  record curl "$(since "$t0")"
}
run_curl_sha() {
  local t0; t0=$(now)
  local pids=()
  for u in "${URLS[@]}"; do (curl -s "$u" | openssl dgst -sha256 > /dev/null) & pids+=($!); done
  wait "${pids[@]}"
  record curlsha "$(since "$t0")"
}
run_curl_store() {
  rm -rf "$W/c"; mkdir -p "$W/c"
  local pids=() t0; t0=$(now)
  for u in "${URLS[@]}"; do
    (f="$W/c/$(basename "$u")"; curl -s "$u" | tee "$f" | openssl dgst -sha256 > /dev/null && sync "$f") &
    pids+=($!)
  done
  wait "${pids[@]}"
  record curlstore "$(since "$t0")"
  rm -rf "$W/c"
}
run_loader() {
  rm -rf "$W/d"; mkdir -p "$W/d"
  local t0; t0=$(now)
  /usr/bin/time -f %M -o "$W/rss" "$BIN/modelgate-loader" --source bench/model --dest "$W/d/model" \
    --once --progress none 2> "$W/loader.log" || { cat "$W/loader.log" >&2; exit 1; }
  record loader "$(since "$t0")"
  RSS[loader]="${RSS[loader]:-} $(cat "$W/rss")"
}
run_hfhub() {
  rm -rf "$W/h"; mkdir -p "$W/h"
  local t0; t0=$(now)
  "$VENV/bin/python" - "$W/h" <<'PY' >&2
import sys
from huggingface_hub import snapshot_download
snapshot_download("bench/model", revision="main", local_dir=sys.argv[1], max_workers=8)
PY
  record hfhub "$(since "$t0")"
}
run_hftransfer() {
  rm -rf "$W/x"; mkdir -p "$W/x"
  local t0; t0=$(now)
  "$VENV/bin/python" - "$W/x" "${URLS[@]}" <<'PY' >&2
import sys, os
from concurrent.futures import ThreadPoolExecutor
import hf_transfer
out, urls = sys.argv[1], sys.argv[2:]
def get(u):
    hf_transfer.download(u, os.path.join(out, os.path.basename(u)), 8, 10 * 1024 * 1024, 5, 5)
with ThreadPoolExecutor(len(urls)) as ex:
    list(ex.map(get, urls))
PY
  record hftransfer "$(since "$t0")"
}

for r in $(seq 1 "$ROUNDS"); do
  say "round $r/$ROUNDS"
  run_curl; run_curl_sha; run_curl_store; run_loader; run_hfhub; run_hftransfer
done
# The loader's own verification: its served files are the source's.
cmp "$W/d/model/model-00001.safetensors" "$R/revisions/r1/model-00001.safetensors"

median() { printf '%s\n' $1 | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
gibs() { awk -v t="$TOTAL" -v s="$1" 'BEGIN { printf "%.3f", t / 1073741824 / s }'; }
declare -A RATE
for k in curl curlsha curlstore loader hfhub hftransfer; do RATE[$k]=$(gibs "$(median "${T[$k]}")"); done
rss_mib=$(( $(median "${RSS[loader]}") / 1024 ))
ratio() { awk -v a="${RATE[$1]}" -v b="${RATE[$2]}" 'BEGIN { printf "%.2f", a / b }'; }

cat <<EOF
## Loader throughput

$FILES × $MIB MiB from a Hub look-alike (\`modelgate-hub\`, LFS files redirected to nginx on
loopback), $(nproc) cores, median of $ROUNDS interleaved rounds; \`bench/loader.sh\`.

| client | GiB/s | vs \`curl \| openssl sha256\` | checks sha256 |
|---|---|---|---|
| parallel \`curl\` to /dev/null (network limit) | ${RATE[curl]} | $(ratio curl curlsha) | no |
| parallel \`curl \| openssl sha256\` (hashing limit) | ${RATE[curlsha]} | 1.00 | yes |
| parallel \`curl \| tee file \| openssl sha256\`, then fsync (hash-and-store limit) | ${RATE[curlstore]} | $(ratio curlstore curlsha) | yes |
| modelgate-loader (defaults), peak RSS ${rss_mib} MiB | ${RATE[loader]} | $(ratio loader curlsha) | yes, every byte |
| \`huggingface_hub\` snapshot_download (8 workers) | ${RATE[hfhub]} | $(ratio hfhub curlsha) | no |
| \`hf_transfer\` (8 connections per file) | ${RATE[hftransfer]} | $(ratio hftransfer curlsha) | no |

The loader stores and fsyncs every file before it counts as verified (a revision is never
marked complete over data a power cut could lose), so the like-for-like limit is the
hash-and-store row: loader / that row = $(ratio loader curlstore). SHA-256 runs on SHA-NI (sha2
0.10 detects it at run time).
Targets: loader ≥ 0.95 of the hashing limit ($(ratio loader curlsha)), ≥ 2.5× huggingface_hub
($(ratio loader hfhub)×), faster than hf_transfer ($(ratio loader hftransfer)×), RSS ≤ 256 MiB (${rss_mib} MiB).
EOF
