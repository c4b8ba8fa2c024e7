# One entry point for people and CI. Every target works on a fresh machine:
# it installs the wasm32-wasip2 target itself. CARGO_TARGET_DIR is honoured.

CARGO ?= cargo
TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
WASM_DIR := $(TARGET_DIR)/wasm32-wasip2/release
PLUGINS := isobar-plugin-ingress isobar-plugin-faults isobar-plugin-old-contract

.PHONY: all plugins build run translate test bench fmt

all: build

## plugins: build the example and test plugins as Wasm components
plugins:
	@rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
	$(CARGO) build --release --target wasm32-wasip2 $(addprefix -p ,$(PLUGINS))
	@ls -l $(WASM_DIR)/*.wasm

build: plugins
	$(CARGO) build -p isobar

## run: translate the example manifests with the Ingress plugin
run: build
	ISOBAR_PLUGIN=$(WASM_DIR)/isobar_plugin_ingress.wasm $(TARGET_DIR)/debug/isobar translate -f examples/

## test: every test in the workspace, against the real plugin components
test: plugins
	$(CARGO) test --workspace --no-fail-fast
	$(CARGO) test -p isobar-tests --benches --no-run

## bench: translation benchmarks (Wasm vs native side by side, incremental, per call, memory)
bench: plugins
	$(CARGO) bench -p isobar-tests --bench translate

fmt:
	$(CARGO) fmt --all
