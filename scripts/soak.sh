#!/usr/bin/env bash
# `make soak`: the fault matrix of tests/e2e (e2e_faults*.rs) with the long budget
# (MODELGATE_SOAK=1: thousands of requests per fault, a minute of traffic for the
# time-based ones), then the loader's chaos script when present (scripts/soak-loader.sh,
# which prints a markdown summary row), and writes the summary table to ROBUSTNESS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export MODELGATE_ENVOY="${MODELGATE_ENVOY:-$PWD/tools/envoy}"
rows=$(mktemp)
trap 'rm -f "$rows"' EXIT
started=$(date -u +%Y-%m-%dT%H:%MZ)
status=0
MODELGATE_SOAK=1 MODELGATE_SOAK_SUMMARY="$rows" \
  cargo test -p modelgate-e2e --test e2e_faults --test e2e_faults_restart -- --test-threads=1 --nocapture \
  || status=$?
loader=""
if [ -x scripts/soak-loader.sh ]; then
  loader=$(scripts/soak-loader.sh) || status=$?
fi
python3 - "$rows" "$started" "$status" "$loader" > ROBUSTNESS.md <<'PY'
import re, sys
rows_file, started, status, loader = sys.argv[1:5]
rows, tests = [], []
for line in open(rows_file):
    line = line.rstrip("\n")
    m = re.match(r"<!-- (.*): VM failures (\d+), Envoy heap ([\d.]+) MiB before, ([\d.]+) MiB after", line)
    if m:
        tests.append(m.groups())
    elif line.startswith("|"):
        rows.append(line)
requests = sum(int(r.split("|")[2]) for r in rows)
unexpected = sum(int(r.split("|")[4]) for r in rows)
traps = sum(int(t[1]) for t in tests)
print("# Robustness: the soak run\n")
print(f"Written by `make soak` (scripts/soak.sh), run started {started}; exit status {status}.")
print("How each fault is produced and judged: docs/testing.md.\n")
print("| faults tried | requests sent | unexpected responses | VM traps |")
print("|---|---|---|---|")
print(f"| {len(rows)} | {requests} | {unexpected} | {traps} |\n")
print("## Fault matrix in real Envoy\n")
print("| fault | requests | answers (status×count, 0 = no answer) | unexpected | recovery after the fault |")
print("|---|---|---|---|---|")
for r in rows:
    print(r)
print("\n| Envoy under test | VM failures | heap before | heap after |")
print("|---|---|---|---|")
for name, vm, before, after in tests:
    print(f"| {name} | {vm} | {before} MiB | {after} MiB |")
print("\n## Loader chaos\n")
if loader.strip():
    print("| fault | scale | cost | corrupt or mixed models served |")
    print("|---|---|---|---|")
    print(loader.strip())
else:
    print("scripts/soak-loader.sh is not in this tree: not run.")
print("\nFuzzing (`make fuzz`, not part of this run): [fuzz/RESULTS.md](fuzz/RESULTS.md).")
PY
cat ROBUSTNESS.md
exit "$status"
