# Two commands on a fresh machine: `make run` and `make test`.
# Both bootstrap .venv (and the system packages the tests need) themselves.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_STAMP := $(VENV)/.apt-installed
ENDPOINT ?= tcp:8080:backlog=1024
ARGS ?=

.PHONY: run test lint unit bench soak install system-packages browser-drivers clean

# The browser tests drive Debian's Chromium and Firefox ESR (never a
# downloaded build; Firefox through puppeteer-core on node) and cut the
# network with nftables; the TURN test runs a real coturn on loopback.
SYSTEM_PACKAGES := chromium coturn firefox-esr nodejs nftables
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

run: install
	$(BIN)/twistd --pidfile= -n rtcsignal --endpoint $(ENDPOINT) $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: install system-packages browser-drivers
	$(BIN)/pip install --quiet --no-deps --force-reinstall . >/dev/null
	$(BIN)/pytest -q $(PYTEST_ARGS)

test: lint unit

bench: install
	$(BIN)/pip install --quiet --no-deps --force-reinstall . >/dev/null
	$(BIN)/python bench/relay.py $(BENCH_ARGS)

# Many peers joining, chatting and leaving for SOAK_ARGS="--minutes N" (5):
# fails if memory grows after the churn or a message is lost. Not in `make test`.
soak: install
	$(BIN)/pip install --quiet --no-deps --force-reinstall . >/dev/null
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info twisted/plugins/dropin.cache tests/browsers/node_modules
