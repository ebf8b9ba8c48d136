# esbhub — two commands on a fresh machine:
#   make run    venv + install + start the hub on embedded defaults with the telecom demo (no external service)
#   make test   venv + test deps + start local services/peers + the whole suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-long lint bench docs clean services peers install

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/esbhub serve --demo $(ARGS)

services:
	@scripts/services.sh

peers:
	@scripts/peers.sh

lint: $(STAMP)
	$(BIN)/ruff check esbhub tests bench

test: $(STAMP) services peers lint
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-long: $(STAMP) services peers
	$(BIN)/python -m pytest -m "slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

docs: $(STAMP)
	$(BIN)/esbhub docs generate

clean:
	rm -rf $(VENV) var .pytest_cache
