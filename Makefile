# modelgate — `make run` (the demo) and `make test` are all a new user needs.
SHELL := /bin/bash
FILTERS := readiness_gate model_router load_shedder ml_metrics
WASM_DIR := target/wasm32-wasip1/wasm-release
export MODELGATE_ENVOY ?= $(CURDIR)/tools/envoy

.PHONY: all setup build wasm native test test-alerts test-core test-core-wasm test-sim test-loader test-check test-abi test-e2e test-manifests oci oci-wasm oci-loader lint fmt run bench clean

all: build

setup:
	@scripts/setup.sh

build: setup wasm native

wasm: setup
	cargo build --target wasm32-wasip1 --profile wasm-release $(addprefix -p ,$(FILTERS))
	@mkdir -p dist
	@for f in $(FILTERS); do cp $(WASM_DIR)/$$f.wasm dist/$$f.wasm; done
	@ls -l dist/*.wasm

native:
	cargo build --release -p modelgate-sim -p modelgate-loader -p modelgate-check

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --target wasm32-wasip1 $(addprefix -p ,$(FILTERS)) -- -D warnings

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
	@for f in $(FILTERS); do printf '%s ' $$f; scripts/oci.py wasm $$f dist/$$f.wasm dist/oci/$$f $(OCI_TAG); done

# glibc, statically linked (crt-static): the musl target is not assumed to be installed.
oci-loader: setup
	RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target x86_64-unknown-linux-gnu -p modelgate-loader
	@printf 'modelgate-loader '; scripts/oci.py loader $(LOADER_STATIC) /etc/ssl/certs/ca-certificates.crt dist/oci/modelgate-loader $(OCI_TAG)

run: build
	@scripts/run.sh

bench: build
	scripts/bench.sh

fmt:
	cargo fmt --all

clean:
	cargo clean
	rm -rf dist
