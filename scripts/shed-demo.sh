#!/usr/bin/env bash
# Floods a running modelgate (`make run`) with sheddable requests and shows the load
# shedder at work: counts of 200 / 429, one 429 in full, and the shed counters.
#
#   scripts/shed-demo.sh [URL] [MODEL] [REQUESTS] [CONCURRENCY]
#
# Defaults: the `make run` gateway (http://127.0.0.1:10000), model "chat" (the router marks
# it sheddable), 200 requests, 40 at a time. Against a single pod's sidecar, pass its URL
# and served model name; the script also sends `x-modelgate-criticality: sheddable`.
set -euo pipefail
URL=${1:-http://127.0.0.1:10000}
MODEL=${2:-chat}
N=${3:-200}
P=${4:-40}
ADMIN=${ADMIN:-}
body="{\"model\":\"$MODEL\",\"messages\":[{\"role\":\"user\",\"content\":\"hello\"}],\"max_tokens\":32}"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "sending $N sheddable requests for '$MODEL' to $URL, $P at a time..."
seq "$N" | xargs -P "$P" -I{} sh -c \
  "curl -s -o '$out/{}.body' -D '$out/{}.head' -w '%{http_code}\n' \
     -H 'content-type: application/json' -H 'x-modelgate-criticality: sheddable' \
     -d '$body' '$URL/v1/chat/completions' || echo 000" > "$out/codes"

echo "status counts:"
sort "$out/codes" | uniq -c | sed 's/^/  /'
shed=$(grep -l '^HTTP/1.1 429' "$out"/*.head 2>/dev/null | head -1 || true)
if [ -n "$shed" ]; then
  echo "one shed response:"
  grep -iE '^(HTTP/|retry-after|x-modelgate-shed|content-type)' "$shed" | tr -d '\r' | sed 's/^/  /'
  sed 's/^/  /' "${shed%.head}.body"; echo
else
  echo "nothing was shed (more requests or concurrency, or slower pods, fill the queue)"
fi
if [ -n "$ADMIN" ]; then
  echo "shed counters at $ADMIN:"
  curl -s "$ADMIN/stats/prometheus" | grep -E '^modelgate_shedder_(shed|admitted)_total' | sed 's/^/  /' || true
fi
