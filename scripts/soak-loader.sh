#!/usr/bin/env bash
# Long loader chaos run (issue 13): SIGKILL at random points while the hub cuts connections,
# across revision swaps; then a server stalling mid-file and the disk filling up (the latter
# needs root to mount a tmpfs, else it says SKIPPED). Prints one markdown table row per fault:
# kills, bytes lost, corrupt or mixed models served.
# Usage: scripts/soak-loader.sh [kills wanted in all, default 100]
set -euo pipefail
cd "$(dirname "$0")/.."
KILLS=${1:-100}
OUT=$(mktemp /tmp/soak-loader.XXXXXX)
trap 'rm -f "$OUT"' EXIT
echo "loader chaos: about $KILLS kills across revision swaps..." >&2
MODELGATE_CHAOS_KILLS=$KILLS MODELGATE_CHAOS_SUMMARY=$OUT \
  cargo test -q -p modelgate-loader --test chaos -- --nocapture >&2 || status=$?
if [ -s "$OUT" ]; then cat "$OUT"; else echo "| loader chaos | no summary (test failed to run) | | |"; fi
exit "${status:-0}"
