#!/usr/bin/env bash
# Runs modelgate-core's unit tests compiled to wasm32-wasip1 on wasmtime (the `wasi-run`
# runner of tests/abi): no preopened directories, no environment, no threads — so a core
# test that quietly needs what a proxy VM lacks fails here. (The monotonic clock is caught
# one layer up: the ABI host answers ENOTSUP for it, as Envoy does.)
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $'\n'"$(rustup target list --installed 2>/dev/null)"$'\n' == *$'\n'wasm32-wasip1$'\n'* ]] || rustup target add wasm32-wasip1
# The runner is a host binary: build it for the host, in the same target dir.
cargo build --quiet -p modelgate-abi-tests --bin wasi-run
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
export CARGO_TARGET_WASM32_WASIP1_RUNNER="$target_dir/debug/wasi-run"
# wasm32 aborts on the first failing test (no unwinding), which would lose libtest's captured
# output; print it as it comes so the failing test's panic message is shown.
export RUST_TEST_NOCAPTURE=1
exec cargo test -p modelgate-core --target wasm32-wasip1 "$@"
