# The two commands of the README:
#   make demo   — set up and run the main scenario on the embedded defaults
#   make test   — set up and run the whole test suite (lint, types, tests)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: setup demo test lint bench bench-smoke clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,embed]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

lint: setup
	$(BIN)/ruff check memsync projections cli.py tests benchmarks
	$(BIN)/ruff format --check memsync projections cli.py tests benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/python tests/neo4j_server.py build
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

bench: setup
	$(BIN)/python -m benchmarks.run

bench-smoke: setup
	$(BIN)/python -m benchmarks.run --smoke

clean:
	rm -rf $(VENV) .memsync .pytest_cache .mypy_cache .ruff_cache
