# Two commands on a fresh machine: `make run` and `make test`.
# Both bootstrap .venv (and the system packages the tests need) themselves.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_STAMP := $(VENV)/.apt-installed
ENDPOINT ?= tcp:8080:backlog=1024
ARGS ?=

.PHONY: run test check lint unit bench bench-idle soak install system-packages sslyze browser-drivers js-tools test-outage bench-smoke run-cluster bench-cluster clean

# The browser tests drive Debian's Chromium and Firefox ESR (never a
# downloaded build; Firefox through puppeteer-core on node) and cut the
# network with nftables; the TURN test runs a real coturn on loopback; the
# metrics test a real Prometheus; the benchmark's load generator and
# peerjs-server run on Node (the peerjs wire tests run peerjs-server too, so
# unit installs it); the cluster tests a real Redis.
SYSTEM_PACKAGES := chromium coturn firefox-esr nodejs nftables prometheus redis-server
# puppeteer-core for Firefox, pinned by tests/browsers/package-lock.json.
BROWSER_DRIVERS := tests/browsers/node_modules/.package-lock.json

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# A regular (non-editable) install keeps the twistd plugin visible.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet ".[test]"
	touch $@

install: $(STAMP)

# sslyze (the TLS scanner the tests run against an ssl: endpoint) pins an
# older cryptography than the project's pyOpenSSL needs, so it gets a
# virtualenv of its own.
SSLYZE := .venv-sslyze/bin/sslyze
$(SSLYZE):
	$(PYTHON) -m venv .venv-sslyze
	.venv-sslyze/bin/pip install --quiet "sslyze>=6.3,<7"

sslyze: $(SSLYZE)

system-packages:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# npm comes with some builds of nodejs, and is a package of its own in Debian's.
$(BROWSER_DRIVERS): tests/browsers/package.json tests/browsers/package-lock.json
	@command -v npm >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends npm >/dev/null; }
	cd tests/browsers && PUPPETEER_SKIP_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error
	touch $@

browser-drivers: system-packages $(BROWSER_DRIVERS)

# The browser client library's tools, pinned by js/package-lock.json:
# typescript (its types and JSDoc, in `make lint`), ws (its Node tests) and
# esbuild (only to measure its minified size).
JS_TOOLS := js/node_modules/.package-lock.json
$(JS_TOOLS): js/package.json js/package-lock.json
	@command -v npm >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null; }
	cd js && npm ci --no-audit --no-fund --loglevel=error
	touch $@

js-tools: $(JS_TOOLS)
TSC := node js/node_modules/typescript/bin/tsc

run: install
	$(BIN)/twistd --pidfile= -n rtcsignal --endpoint $(ENDPOINT) $(ARGS)

# Cluster mode on one machine: a local redis-server and NODES rtcsignal
# processes sharing PORT through SO_REUSEPORT (the reuseport: endpoint), so
# the kernel spreads connections over all the cores, and then each node hands
# every upgrade to its room's node (--handover HANDOVER), so the peers of a
# room are on one node (docs/cluster.md).  Ctrl-C stops them all.
NODES ?= $(shell nproc)
PORT ?= 8080
REDIS_PORT ?= 6390
HANDOVER ?= $(or $(XDG_RUNTIME_DIR),/tmp)/rtcsignal-handover-$(PORT)
run-cluster: install
	@command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install redis-server)"; exit 1; }
	@trap 'kill 0' INT TERM EXIT; \
	redis-server --port $(REDIS_PORT) --bind 127.0.0.1 --save '' --appendonly no & \
	for i in $$(seq $(NODES)); do \
	  $(BIN)/twistd --pidfile= -n rtcsignal --endpoint reuseport:$(PORT):interface=127.0.0.1:backlog=1024 \
	    --redis redis://127.0.0.1:$(REDIS_PORT)/0 --handover $(HANDOVER) $(ARGS) & \
	done; wait

lint: install $(JS_TOOLS)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(TSC) -p js/tsconfig.declarations.json
	$(TSC) -p js/tsconfig.conformance.json
	$(TSC) -p js/tsconfig.json

# The two fast tiers (pure and in-memory tests, docs/testing.md): an answer
# in seconds, without lint. One process: two xdist workers would each
# collect the whole tree first, which costs more than these tests take.
check: install
	$(BIN)/pytest -q -m "pure or memory" $(PYTEST_ARGS)

# Every tier on four xdist workers, two of them taking the browser tests in
# two lanes from the start, the other two the other tiers lightest first:
# each worker has its own reactor, every server and child process its own
# free port, every browser its own network namespace. A test that must not
# share the machine goes in an xdist_group (docs/testing.md). XDIST= runs
# them in one process.
XDIST ?= -n 4 --dist loadgroup --no-loadscope-reorder
unit: install system-packages browser-drivers $(JS_TOOLS) $(SSLYZE) bench/node_modules/.installed
	$(BIN)/pip install --quiet --no-deps --force-reinstall . >/dev/null
	$(BIN)/pytest -q $(XDIST) $(PYTEST_ARGS)

BENCH_SMOKE := $(BIN)/python bench/suite.py --smoke --no-plots

# unit has just installed the package: the smoke run needs no second install.
test: lint unit bench/node_modules/.installed
	$(BENCH_SMOKE)

# The UDP-outage browser test (2 runs in `make test`) RUNS times in a row,
# to see how reliably calls come back: make test-outage RUNS=10
RUNS ?= 10
test-outage: install system-packages browser-drivers
	$(BIN)/pip install --quiet --no-deps --force-reinstall . >/dev/null
	RTCSIGNAL_OUTAGE_RUNS=$(RUNS) $(BIN)/pytest -q -s tests/test_browser_outage.py $(PYTEST_ARGS)

# The benchmark's load generator (ws) and peerjs-server, pinned by
# bench/package-lock.json, installed into bench/node_modules (npm comes
# with browser-drivers).
bench/node_modules/.installed: bench/package.json bench/package-lock.json | browser-drivers
	cd bench && npm ci --no-audit --no-fund --silent
	touch $@

# The side-by-side suite (about 12 minutes): see docs/benchmarks.md.
bench: install bench/node_modules/.installed
	$(BIN)/pip install --quiet ".[bench]"
	$(BIN)/pip install --quiet --no-deps --force-reinstall . >/dev/null
	$(BIN)/python bench/suite.py $(BENCH_ARGS)
	$(BIN)/python bench/metrics_overhead.py
	$(BIN)/python bench/idle.py

# What idle connections cost: bytes each (connections per GB) and the
# keepalive's CPU per 10,000 (about 2 minutes; also the end of `make bench`).
bench-idle: install bench/node_modules/.installed
	$(BIN)/pip install --quiet --no-deps --force-reinstall . >/dev/null
	$(BIN)/python bench/idle.py $(BENCH_ARGS)

# A few seconds of every figure with small counts, without peerjs-server:
# keeps the suite working (part of `make test`).
bench-smoke: install bench/node_modules/.installed
	$(BIN)/pip install --quiet --no-deps --force-reinstall . >/dev/null
	$(BENCH_SMOKE)

bench-cluster: install system-packages bench/node_modules/.installed
	$(BIN)/pip install --quiet --no-deps --force-reinstall . >/dev/null
	$(BIN)/python bench/cluster.py $(BENCH_ARGS)

# Many peers joining, chatting and leaving for SOAK_ARGS="--minutes N" (5):
# fails if memory grows after the churn or a message is lost. Not in `make test`.
soak: install
	$(BIN)/pip install --quiet --no-deps --force-reinstall . >/dev/null
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .venv-sslyze build *.egg-info twisted/plugins/dropin.cache tests/browsers/node_modules bench/node_modules js/node_modules
