# appliance-operator: the verbs. `make demo` and `make test` work on a fresh machine:
# they create .venv/ and install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: help venv demo test unit lint bench crds clean

help:
	@echo "make demo   - run the docs example on the local backend (no cluster needed)"
	@echo "make test   - lint + unit tests (+ integration tests on a local control plane)"
	@echo "make unit   - unit tests only"
	@echo "make lint   - ruff + mypy --strict"
	@echo "make bench  - benchmarks (ratios against a baseline measured in the same run)"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,operator]'
	@touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

unit: $(STAMP)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check client operator tests bench examples
	$(PY) -m ruff format --check client operator tests bench examples
	$(PY) -m mypy

test: lint unit

bench: $(STAMP)
	$(PY) bench/bench_environ.py
	$(PY) bench/bench_local_start.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
