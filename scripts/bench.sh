#!/usr/bin/env bash
# `make bench`: the benchmarks that exist so far. Loader throughput against modelgate-hub on
# loopback (release builds; BENCH_MIB sets the file size, default 256).
set -euo pipefail
cd "$(dirname "$0")/.."
bench/loader.sh
