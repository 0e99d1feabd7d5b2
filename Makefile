# appliance-operator: the verbs. `make demo` and `make test` work on a fresh machine:
# they create .venv/ and install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_STAMP := $(VENV)/.demo-stamp
PYTEST_ARGS ?=

.PHONY: help venv demo test unit integration e2e lint bench crds clean

include hack/cluster/cluster.mk
include hack/kind/kind.mk

help:
	@echo "make demo   - run the docs example on the local backend (no cluster needed)"
	@echo "make test   - lint + unit tests (+ integration tests on a local control plane)"
	@echo "make unit   - unit tests only"
	@echo "make integration - tests against a real local control plane (builds it once)"
	@echo "make e2e    - end-to-end tests on a kind cluster (3 nodes; builds what it needs once)"
	@echo "make kind-up / kind-down - a kind cluster with the operator installed by Helm"
	@echo "make cluster-up [NODES=kwok] / cluster-down - the local control plane (integration)"
	@echo "make lint   - ruff + mypy --strict"
	@echo "make bench  - benchmarks (ratios against a baseline measured in the same run)"

# The full set (tests, lint, the operator); `make demo` needs only the client package.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,operator]'
	@touch $@ $(DEMO_STAMP)

$(DEMO_STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e .
	@touch $@

venv: $(STAMP)

demo: $(DEMO_STAMP)
	$(PY) examples/demo.py

unit: $(STAMP)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check client operator tests bench examples
	$(PY) -m ruff format --check client operator tests bench examples
	$(PY) -m mypy
	$(VENV)/bin/lint-imports --no-cache  # the layers of .importlinter

# Integration tests need the local control plane's binaries: the first run on a machine
# builds them (about 10 minutes on 2 cores, cached outside the repo), later runs reuse them.
integration: $(STAMP) cluster-build
	$(PY) -m pytest tests/integration --durations=12 $(PYTEST_ARGS)

# End-to-end tests on a kind cluster (control plane + $(KIND_E2E_WORKERS) workers; docs/kind.md).
# What the tests' fixture needs is built first, outside any test timeout (cached: a warm run
# only checks): Docker (the project's own dockerd if none answers; Debian's docker.io is
# installed when missing), kind, the node image where kind's cannot be pulled, the images.
# The fixture creates the cluster and deletes it at the end (a running one, e.g. from
# `make kind-e2e-up`, is reused and kept); the project's dockerd is stopped afterwards when this
# target started it and nothing runs in it.
e2e: $(STAMP) cluster-build
	@own=$$(bash hack/offline/dockerd.sh status && echo yes); \
	bash hack/kind/up.sh --prepare --images || exit $$?; \
	rc=0; $(PY) -m pytest tests/e2e --durations=12 $(PYTEST_ARGS) || rc=$$?; \
	[ -n "$$own" ] || bash hack/offline/dockerd.sh down --if-idle; exit $$rc

# cluster-build first: the chart's unit tests use the pinned helm it builds, and a cold build
# (about 13 minutes on 2 cores) must not run inside a test's timeout. The e2e tests' kind
# cluster is then made in the background (hack/kind/e2e-cluster.sh) while the unit and
# integration tests run; the e2e tests start as soon as it is up, alongside the rest of the
# integration tests (their own control plane: nothing shared but the CPU), with their output
# in $(E2E_LOG), printed when they end. The cluster is deleted at the end, whatever failed.
E2E_CLUSTER_ENV = KIND_E2E_CLUSTER=$(KIND_E2E_CLUSTER) KIND_E2E_WORKERS=$(KIND_E2E_WORKERS)
E2E_LOG := .kind/e2e-tests.log
test: lint cluster-build
	@$(E2E_CLUSTER_ENV) bash hack/kind/e2e-cluster.sh start
	@rc=0; mkdir -p $(dir $(E2E_LOG)); \
	$(MAKE) --no-print-directory unit || rc=$$?; \
	if [ $$rc = 0 ]; then \
	  { $(E2E_CLUSTER_ENV) bash hack/kind/e2e-cluster.sh wait && \
	    APPLIANCE_E2E_KIND_CLUSTER=$(KIND_E2E_CLUSTER) APPLIANCE_E2E_KIND_WORKERS=$(KIND_E2E_WORKERS) \
	      $(MAKE) --no-print-directory e2e; } >$(E2E_LOG) 2>&1 </dev/null & e2e=$$!; \
	  echo "e2e tests: in the background as soon as their cluster is up (output: $(E2E_LOG))"; \
	  $(MAKE) --no-print-directory integration || rc=$$?; \
	  wait $$e2e || rc=$$?; echo "---- e2e tests ($(E2E_LOG)) ----"; cat $(E2E_LOG); \
	fi; \
	$(E2E_CLUSTER_ENV) bash hack/kind/e2e-cluster.sh stop; exit $$rc

bench: $(STAMP)
	$(PY) bench/bench_environ.py
	$(PY) bench/bench_local_start.py
	$(PY) bench/bench_code.py

bench-cluster: $(STAMP) cluster-build
	$(PY) bench/bench_operator.py
	$(PY) bench/bench_e2e.py

# Regenerate the CRD from the pydantic models (a unit test fails when they drift) and keep
# the chart's copy identical.
crds: $(STAMP)
	$(PY) -m appliance_operator.crdgen
	cp crds/executejobs.yaml crds/workerpools.yaml charts/appliance-operator/crds/

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
