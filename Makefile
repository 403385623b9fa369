# Two commands on a fresh machine: `make run` and `make test`.
# Both bootstrap .venv (and the system packages the tests need) themselves.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_STAMP := $(VENV)/.apt-installed
ENDPOINT ?= tcp:8080:backlog=1024
ARGS ?=

.PHONY: run test lint unit bench bench-smoke soak install system-packages clean

# The browser tests drive Debian's Chromium (never a downloaded build); the
# TURN test runs a real coturn on loopback; the benchmark's load generator
# and peerjs-server run on Node (its package here ships npm too).
SYSTEM_PACKAGES := chromium coturn nodejs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# A regular (non-editable) install keeps the twistd plugin visible.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet ".[test]"
	touch $@

install: $(STAMP)

system-packages:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

run: install
	$(BIN)/twistd --pidfile= -n rtcsignal --endpoint $(ENDPOINT) $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: install system-packages
	$(BIN)/pip install --quiet --no-deps --force-reinstall . >/dev/null
	$(BIN)/pytest -q $(PYTEST_ARGS)

BENCH_SMOKE := $(BIN)/python bench/suite.py --smoke --no-plots

# unit has just installed the package: the smoke run needs no second install.
test: lint unit bench/node_modules/.installed
	$(BENCH_SMOKE)

# The benchmark's load generator (ws) and peerjs-server, pinned by
# bench/package-lock.json, installed into bench/node_modules.
bench/node_modules/.installed: bench/package.json bench/package-lock.json | system-packages
	cd bench && npm ci --no-audit --no-fund --silent
	touch $@

# The side-by-side suite (about 12 minutes): see docs/benchmarks.md.
bench: install bench/node_modules/.installed
	$(BIN)/pip install --quiet ".[bench]"
	$(BIN)/pip install --quiet --no-deps --force-reinstall . >/dev/null
	$(BIN)/python bench/suite.py $(BENCH_ARGS)

# A few seconds of every figure with small counts, without peerjs-server:
# keeps the suite working (part of `make test`).
bench-smoke: install bench/node_modules/.installed
	$(BIN)/pip install --quiet --no-deps --force-reinstall . >/dev/null
	$(BENCH_SMOKE)

# Many peers joining, chatting and leaving for SOAK_ARGS="--minutes N" (5):
# fails if memory grows after the churn or a message is lost. Not in `make test`.
soak: install
	$(BIN)/pip install --quiet --no-deps --force-reinstall . >/dev/null
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info twisted/plugins/dropin.cache
