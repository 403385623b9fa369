# Two commands on a fresh machine: `make run` and `make test`.
# Both bootstrap .venv (and the system packages the tests need) themselves.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_STAMP := $(VENV)/.apt-installed
ENDPOINT ?= tcp:8080
ARGS ?=

.PHONY: run test lint unit install system-packages clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# A regular (non-editable) install keeps the twistd plugin visible.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet ".[test]"
	touch $@

install: $(STAMP)

run: install
	$(BIN)/twistd --pidfile= -n rtcsignal --endpoint $(ENDPOINT) $(ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: install
	$(BIN)/pip install --quiet --no-deps --force-reinstall . >/dev/null
	$(BIN)/pytest -q $(PYTEST_ARGS)

test: lint unit

clean:
	rm -rf $(VENV) build *.egg-info twisted/plugins/dropin.cache
