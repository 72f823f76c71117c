# modelgate — `make run` (the demo) and `make test` are all a new user needs.
SHELL := /bin/bash
FILTERS := readiness_gate model_router load_shedder ml_metrics endpoint_picker
# Modules: one per filter, and `chain`, any of them in one module (filters/chain).
MODULES := $(FILTERS) chain
WASM_DIR := target/wasm32-wasip1/wasm-release
export MODELGATE_ENVOY ?= $(CURDIR)/tools/envoy

.PHONY: all setup build wasm native test test-alerts test-core test-core-wasm test-sim test-loader test-check test-abi test-e2e test-manifests oci oci-wasm oci-loader lint fmt run bench fuzz soak clean

all: build

setup:
	@scripts/setup.sh

build: setup wasm native

wasm: setup
	cargo build --target wasm32-wasip1 --profile wasm-release $(addprefix -p ,$(FILTERS))
	@# On its own: built with the filters, feature unification would turn their exports on in it.
	cargo build --target wasm32-wasip1 --profile wasm-release -p chain
	@mkdir -p dist
	@for f in $(MODULES); do cp $(WASM_DIR)/$$f.wasm dist/$$f.wasm; done
	@ls -l dist/*.wasm

native:
	cargo build --release -p modelgate-sim -p modelgate-loader -p modelgate-check

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --target wasm32-wasip1 $(addprefix -p ,$(MODULES)) -- -D warnings

test: build lint test-core test-core-wasm test-sim test-loader test-check test-alerts test-manifests test-abi test-e2e

# promtool check + unit tests of istio/alerts.yaml (the PrometheusRule's groups).
test-alerts:
	scripts/check-alerts.sh

# The filters' policy (and every doc block parses: tests/doc_blocks.rs).
test-core:
	cargo test -p modelgate-core

test-sim:
	cargo test -p modelgate-sim

test-loader:
	cargo test -p modelgate-loader

test-check:
	cargo test -p modelgate-check

# istio/ and envoy/ against the published schemas and each other, `modelgate check`,
# `envoy --mode validate`, the loader's flags (docs/istio.md). Needs `make build`.
test-manifests: oci-wasm
	tools/venv/bin/python -m unittest discover -s tests/manifests -p 'test_*.py'

test-core-wasm:
	scripts/test-core-wasm.sh

# Runs the modules in dist/ (from `make wasm`); every shipped filter must be there.
test-abi:
	MODELGATE_REQUIRE_ALL_FILTERS=1 MODELGATE_DIST=$(CURDIR)/dist cargo test -p modelgate-abi-tests --no-fail-fast

test-e2e:
	cargo test -p modelgate-e2e -- --test-threads=2

# OCI image layouts in dist/oci/ (no container daemon; docs/istio.md "Images"): each filter as
# the image istio-agent accepts, modelgate-loader static on an empty base; then pins istio/.
OCI_TAG := 0.1.0
LOADER_STATIC := target/x86_64-unknown-linux-gnu/release/modelgate-loader

oci: oci-wasm oci-loader
	scripts/oci-pin.py

oci-wasm: wasm
	@for f in $(MODULES); do printf '%s ' $$f; scripts/oci.py wasm $$f dist/$$f.wasm dist/oci/$$f $(OCI_TAG); done

# glibc, statically linked (crt-static): the musl target is not assumed to be installed.
oci-loader: setup
	RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target x86_64-unknown-linux-gnu -p modelgate-loader
	@printf 'modelgate-loader '; scripts/oci.py loader $(LOADER_STATIC) /etc/ssl/certs/ca-certificates.crt dist/oci/modelgate-loader $(OCI_TAG)

run: build
	@scripts/run.sh

bench: build
	scripts/bench.sh

# Every cargo-fuzz target for FUZZ_SECONDS each (nightly + cargo-fuzz; docs/testing.md).
FUZZ_SECONDS ?= 30
FUZZ_TARGETS := body_scanner router_body prefix_hash sse_usage prom_text orca_header configs
fuzz:
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz
	@cd fuzz && for t in $(FUZZ_TARGETS); do \
	  mkdir -p corpus/$$t && echo "== fuzz $$t ($(FUZZ_SECONDS) s)" && \
	  cargo +nightly fuzz run -O $$t corpus/$$t seeds/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -print_final_stats=1 || exit 1; \
	done

# The long fault matrix in real Envoy and the loader's chaos runs; writes ROBUSTNESS.md.
soak: build
	scripts/soak.sh

fmt:
	cargo fmt --all

clean:
	cargo clean
	rm -rf dist
