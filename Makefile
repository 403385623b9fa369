# Two commands on a fresh machine: `make run` and `make test`.
# Both bootstrap .venv (and the system packages the tests need) themselves.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_STAMP := $(VENV)/.apt-installed
ENDPOINT ?= tcp:8080:backlog=1024
ARGS ?=

.PHONY: run run-cluster test lint unit bench bench-cluster soak install system-packages clean

# The browser tests drive Debian's Chromium (never a downloaded build); the
# TURN test runs a real coturn on loopback; the metrics test a real Prometheus;
# the cluster tests a real Redis.
SYSTEM_PACKAGES := chromium coturn prometheus redis-server

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

# Cluster mode on one machine: a local redis-server and NODES rtcsignal
# processes sharing PORT through SO_REUSEPORT (the reuseport: endpoint), so
# the kernel spreads connections over all the cores.  Ctrl-C stops them all.
NODES ?= $(shell nproc)
PORT ?= 8080
REDIS_PORT ?= 6390
run-cluster: install
	@command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install redis-server)"; exit 1; }
	@trap 'kill 0' INT TERM EXIT; \
	redis-server --port $(REDIS_PORT) --bind 127.0.0.1 --save '' --appendonly no & \
	for i in $$(seq $(NODES)); do \
	  $(BIN)/twistd --pidfile= -n rtcsignal --endpoint reuseport:$(PORT):interface=127.0.0.1:backlog=1024 \
	    --redis redis://127.0.0.1:$(REDIS_PORT)/0 $(ARGS) & \
	done; wait

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: install system-packages
	$(BIN)/pip install --quiet --no-deps --force-reinstall . >/dev/null
	$(BIN)/pytest -q $(PYTEST_ARGS)

test: lint unit

bench: install
	$(BIN)/pip install --quiet --no-deps --force-reinstall . >/dev/null
	$(BIN)/python bench/relay.py $(BENCH_ARGS)

bench-cluster: install system-packages
	$(BIN)/pip install --quiet --no-deps --force-reinstall . >/dev/null
	$(BIN)/python bench/cluster.py $(BENCH_ARGS)

# Many peers joining, chatting and leaving for SOAK_ARGS="--minutes N" (5):
# fails if memory grows after the churn or a message is lost. Not in `make test`.
soak: install
	$(BIN)/pip install --quiet --no-deps --force-reinstall . >/dev/null
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info twisted/plugins/dropin.cache
