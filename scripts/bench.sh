#!/usr/bin/env bash
# `make bench`: installs the load generators (Debian's wrk and h2load) and valgrind (none of
# them part of `make test`), runs every section script bench/*.sh in name order (each prints a
# markdown section on stdout and its progress on stderr) and writes BENCHMARKS.md from the
# machine facts and the sections.
# BENCH_ONLY="proxy routing" runs only those sections and replaces only them in an existing
# BENCHMARKS.md (matched by their `## ` title; each says it was rerun alone, when and at
# which commit); without an existing file it writes one with those sections.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v valgrind >/dev/null || need+=(valgrind)
if [ ${#need[@]} -gt 0 ]; then
  echo "[bench] installing ${need[*]} from Debian" >&2
  SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >&2
fi

OUT=$(mktemp -d /tmp/modelgate-bench.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
start=$(date +%s)
load0=$(cut -d" " -f1-3 /proc/loadavg)
failed=()
sections=()
for s in bench/*.sh; do
  name=$(basename "$s" .sh)
  if [ -n "${BENCH_ONLY:-}" ] && [[ " $BENCH_ONLY " != *" $name "* ]]; then continue; fi
  echo "[bench] section $name ($s)" >&2
  t0=$(date +%s)
  if "$s" > "$OUT/$name.md"; then
    sections+=("$name")
  else
    rc=$?
    failed+=("$name")
    printf '## %s\n\n**This section failed** (`%s` exited %s); see the output of `make bench`.\n\n' \
      "$name" "$s" "$rc" > "$OUT/$name.md"
    sections+=("$name")
  fi
  echo "[bench] section $name took $(( $(date +%s) - t0 ))s" >&2
done

if [ -n "${BENCH_ONLY:-}" ] && [ -f BENCHMARKS.md ]; then
  note="_Rerun alone (\`BENCH_ONLY=\"$BENCH_ONLY\" make bench\`) on $(date -u '+%Y-%m-%d %H:%M UTC') at commit \`$(git rev-parse --short HEAD 2>/dev/null || echo unknown)\`$(git diff --quiet 2>/dev/null || echo ' (with local changes)'), loadavg at the start $load0; the machine facts above are from the full run._"
  for name in "${sections[@]}"; do
    python3 - "$OUT/$name.md" "$note" <<'PY'
import sys
path, note = sys.argv[1], sys.argv[2]
new = open(path).read().rstrip("\n").split("\n")
title = new[0]
new = [title, "", note] + new[1:]
old = open("BENCHMARKS.md").read().rstrip("\n").split("\n")
if title in old:
    start = old.index(title)
    end = next((i for i in range(start + 1, len(old)) if old[i].startswith("## ")), len(old))
    out = old[:start] + new + [""] + old[end:]
else:
    out = old + [""] + new
open("BENCHMARKS.md", "w").write("\n".join(out).rstrip("\n") + "\n")
PY
  done
  echo "[bench] replaced ${sections[*]} in BENCHMARKS.md in $(( $(date +%s) - start ))s" >&2
  [ ${#failed[@]} -eq 0 ] || { echo "[bench] failed sections: ${failed[*]}" >&2; exit 1; }
  exit 0
fi

{
  echo "# Benchmarks"
  echo
  echo "Written by \`make bench\` (\`scripts/bench.sh\`); do not edit by hand. Regenerate with:"
  echo
  echo '```'
  echo "make bench${BENCH_ONLY:+   # here: BENCH_ONLY=\"$BENCH_ONLY\"}"
  echo '```'
  echo
  echo "| | |"
  echo "|---|---|"
  echo "| date | $(date -u '+%Y-%m-%d %H:%M UTC') |"
  echo "| commit | \`$(git rev-parse --short HEAD 2>/dev/null || echo unknown)\`$(git diff --quiet 2>/dev/null || echo ' (with local changes)') |"
  echo "| CPU | $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores |"
  echo "| memory | $(free -g | awk '/^Mem/ {print $2}') GiB |"
  echo "| kernel | $(uname -r) |"
  echo "| Envoy | $("${MODELGATE_ENVOY:-$ROOT/tools/envoy}" --version 2>/dev/null | sed -n 's/.*version: //p' | head -1) |"
  echo "| rustc | $(rustc --version 2>/dev/null) |"
  echo "| wrk | $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2) |"
  echo "| h2load | $(h2load --version 2>/dev/null | head -1) |"
  echo "| load on the machine | loadavg at the start: $load0 (other work shares the cores; compare ratios, not absolute numbers) |"
  echo "| whole run | $(( $(date +%s) - start )) s |"
  echo
  for name in "${sections[@]}"; do cat "$OUT/$name.md"; echo; done
} > BENCHMARKS.md
echo "[bench] wrote BENCHMARKS.md in $(( $(date +%s) - start ))s" >&2
[ ${#failed[@]} -eq 0 ] || { echo "[bench] failed sections: ${failed[*]}" >&2; exit 1; }
