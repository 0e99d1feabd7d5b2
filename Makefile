# appliance-operator: the verbs. `make demo` and `make test` work on a fresh machine:
# they create .venv/ and install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: help venv demo test unit integration e2e lint bench crds clean

include hack/cluster/cluster.mk
include hack/kind.mk

help:
	@echo "make demo   - run the docs example on the local backend (no cluster needed)"
	@echo "make test   - lint + unit tests (+ integration tests on a local control plane)"
	@echo "make unit   - unit tests only"
	@echo "make integration - tests against a real local control plane (builds it once)"
	@echo "make e2e    - end-to-end tests on a real local node (root; builds images once)"
	@echo "make cluster-up [NODES=kwok] [NODE=1] / cluster-down - the local cluster"
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

# Integration tests need the local control plane's binaries: the first run on a machine
# builds them (about 10 minutes on 2 cores, cached outside the repo), later runs reuse them.
integration: $(STAMP) cluster-build
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

# End-to-end tests on a real node (kubelet + containerd + runc, images built locally).
# Needs root; installs containerd/runc/CNI plugins/debootstrap from Debian when missing.
e2e: $(STAMP) cluster-build
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

# cluster-build first: the chart's unit tests use the pinned helm it builds, and a cold build
# (about 10 minutes) must not run inside a test's timeout.
test: lint cluster-build unit integration e2e

bench: $(STAMP)
	$(PY) bench/bench_environ.py
	$(PY) bench/bench_local_start.py

bench-cluster: $(STAMP) cluster-build
	$(PY) bench/bench_operator.py
	$(PY) bench/bench_e2e.py

# Regenerate the CRD from the pydantic models (a unit test fails when they drift) and keep
# the chart's copy identical.
crds: $(STAMP)
	$(PY) -m appliance_operator.crdgen
	cp crds/executejobs.yaml charts/appliance-operator/crds/executejobs.yaml

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
