#!/usr/bin/env bash
# Routing-quality benchmark: round robin, least request, ring hash, ORCA WRR and the endpoint
# picker on the same seeded workload (bench/routing.py). Prints a markdown section to stdout.
# Needs `make build` (dist/*.wasm, target/release/modelgate-sim) and tools/ (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
exec tools/venv/bin/python bench/routing.py
