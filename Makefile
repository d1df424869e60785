# fedloom: `make run` trains, `make test` tests; both set everything up first.
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fedloom-installed
CONFIG ?= configs/default.yaml
ARGS ?=

.PHONY: run test test-slow check bench accuracy clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "torch==$(TORCH_VERSION)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/fedloom run $(CONFIG) $(ARGS)

test: $(STAMP)
	$(BIN)/pytest -q

test-slow: $(STAMP)
	$(BIN)/pytest -q -m slow

check: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/overhead.py

accuracy: $(STAMP)
	$(BIN)/python benchmarks/accuracy.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
