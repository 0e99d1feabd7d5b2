# Run the operator in a kind (or minikube) cluster, from the same chart and Dockerfiles as
# everything else; included by the top-level Makefile (docs/kind.md explains each step).
#
#   make kind-up        kind cluster + images (docker build, kind load) + helm install (tested)
#   make kind-down      delete that cluster (and the project's own dockerd if kind-up started it)
#   make kind-e2e-up    the e2e tests' cluster, kept running between test runs (fast reruns)
#   make kind-e2e-down  delete it
#   make minikube-up    minikube profile + images (minikube image build) + helm install (untested)
#   make minikube-down  delete that minikube profile
#   make chart-install  (re)install the chart into KUBE_CONTEXT (CRD applied first)
#   make chart-lint     helm lint --strict (the chart tests: make unit)
#   make chart-crds     copy crds/*.yaml into the chart after `make crds`
#
# Variables (override on the command line, e.g. `make kind-up KIND_CLUSTER=dev`):
MINIKUBE ?= minikube
KIND_CLUSTER ?= appliance
KIND_WORKERS ?= 1
KIND_E2E_CLUSTER ?= appliance-e2e
KIND_E2E_WORKERS ?= 2
MINIKUBE_PROFILE ?= appliance
IMAGE_TAG ?= 0.1.0
OPERATOR_REPOSITORY ?= appliance-operator/operator
WORKER_REPOSITORY ?= appliance-operator/worker
USER_REPOSITORY ?= appliance-operator/user
OPERATOR_IMAGE := $(OPERATOR_REPOSITORY):$(IMAGE_TAG)
WORKER_IMAGE := $(WORKER_REPOSITORY):$(IMAGE_TAG)
USER_IMAGE := $(USER_REPOSITORY):$(IMAGE_TAG)
OPERATOR_DOCKERFILE ?= images/operator.Dockerfile
WORKER_DOCKERFILE ?= images/worker.Dockerfile
HELM_RELEASE ?= appliance-operator
HELM_NAMESPACE ?= appliance-system
# Extra `helm upgrade --install` arguments, e.g. HELM_ARGS='--set rbac.scope=namespace'
HELM_ARGS ?=
KUBE_CONTEXT ?=

KIND_MK_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
KIND_MK_REPO := $(patsubst %/,%,$(dir $(patsubst %/,%,$(dir $(KIND_MK_DIR)))))
CHART_DIR := $(KIND_MK_REPO)/charts/appliance-operator
CRD_SOURCE := $(KIND_MK_REPO)/crds/executejobs.yaml
# helm and kubectl: the ones on PATH, else the pinned ones hack/offline/cluster-build/build.sh
# builds.
KIND_MK_BIN = $(shell bash $(KIND_MK_REPO)/hack/offline/cluster-build/build.sh --print-bindir)
HELM ?= $(or $(shell command -v helm),$(KIND_MK_BIN)/helm)
KUBECTL ?= $(or $(shell command -v kubectl),$(KIND_MK_BIN)/kubectl)
export IMAGE_TAG OPERATOR_REPOSITORY WORKER_REPOSITORY USER_REPOSITORY

.PHONY: kind-up kind-down kind-e2e-up kind-e2e-down minikube-up minikube-down chart-install \
	chart-lint chart-crds docker-images

# kind_mk_need TOOL,HINT: stop with a clear message when a tool is missing.
kind_mk_need = @command -v $(1) >/dev/null 2>&1 || { echo "$(1) not found: $(2)" >&2; exit 1; }
kind_mk_dockerfiles = @for f in $(WORKER_DOCKERFILE) $(OPERATOR_DOCKERFILE); do \
	test -f $(KIND_MK_REPO)/$$f || { echo "$$f not found (set WORKER_DOCKERFILE / OPERATOR_DOCKERFILE)" >&2; exit 1; }; done

# The images, from images/*.Dockerfile (a local Debian base where none can be pulled).
docker-images:
	bash $(KIND_MK_DIR)/images.sh $(IMAGE_TAG)

# Docker (yours, else the project's own dockerd), kind (built once from the Go module proxy),
# the cluster (kind's node image, else one assembled locally), the images, kind load, helm.
# Writes the cluster's context into your kubeconfig, as `kind create cluster` does.
kind-up:
	@command -v helm >/dev/null && command -v kubectl >/dev/null || bash $(KIND_MK_REPO)/hack/offline/cluster-build/build.sh >/dev/null
	bash $(KIND_MK_REPO)/hack/kind/up.sh --name $(KIND_CLUSTER) --workers $(KIND_WORKERS) --images
	$(call chart_install,kind-$(KIND_CLUSTER))

kind-down:
	bash $(KIND_MK_REPO)/hack/kind/down.sh --name $(KIND_CLUSTER)

# The e2e tests' settings (tests/e2e/conftest.py): a lost node is NotReady after 20 s.
kind-e2e-up:
	KIND_NODE_MONITOR_GRACE_PERIOD=$${KIND_NODE_MONITOR_GRACE_PERIOD:-20s} bash $(KIND_MK_REPO)/hack/kind/up.sh --name $(KIND_E2E_CLUSTER) --workers $(KIND_E2E_WORKERS) \
		--images --kubeconfig $(KIND_MK_REPO)/.kind/$(KIND_E2E_CLUSTER).kubeconfig

kind-e2e-down:
	bash $(KIND_MK_REPO)/hack/kind/down.sh --name $(KIND_E2E_CLUSTER)

minikube-up:
	$(call kind_mk_need,$(MINIKUBE),see https://minikube.sigs.k8s.io/docs/start/)
	$(MINIKUBE) status -p $(MINIKUBE_PROFILE) >/dev/null 2>&1 || \
		$(MINIKUBE) start -p $(MINIKUBE_PROFILE) --wait=all
	$(kind_mk_dockerfiles)
	# Built inside minikube's own runtime: no registry, no host Docker needed.
	cd $(KIND_MK_REPO) && $(MINIKUBE) -p $(MINIKUBE_PROFILE) image build \
		-f $(WORKER_DOCKERFILE) -t $(WORKER_IMAGE) .
	cd $(KIND_MK_REPO) && $(MINIKUBE) -p $(MINIKUBE_PROFILE) image build \
		-f $(OPERATOR_DOCKERFILE) -t $(OPERATOR_IMAGE) .
	cd $(KIND_MK_REPO) && $(MINIKUBE) -p $(MINIKUBE_PROFILE) image build \
		-f images/user.Dockerfile -t $(USER_IMAGE) .
	$(call chart_install,$(MINIKUBE_PROFILE))

minikube-down:
	$(call kind_mk_need,$(MINIKUBE),see https://minikube.sigs.k8s.io/docs/start/)
	$(MINIKUBE) delete -p $(MINIKUBE_PROFILE)

# chart_install CONTEXT: the CRD first (server-side apply, idempotent: Helm installs a chart's
# crds/ only on the first install and never upgrades them, so a changed CRD would otherwise
# be ignored), then the release with the chart's defaults. The images were loaded into the
# nodes, never pulled: pullPolicy IfNotPresent with a fixed tag finds them there.
define chart_install
$(KUBECTL) $(if $(1),--context $(1)) apply --server-side \
	--field-manager=appliance-operator-crds -f $(CHART_DIR)/crds/
$(HELM) upgrade --install $(HELM_RELEASE) $(CHART_DIR) $(if $(1),--kube-context $(1)) \
	--namespace $(HELM_NAMESPACE) --create-namespace \
	--set image.repository=$(OPERATOR_REPOSITORY) --set image.tag=$(IMAGE_TAG) \
	--wait --timeout 5m $(HELM_ARGS)
@echo "operator ready; try: $(KUBECTL) $(if $(1),--context $(1) )apply -n default -f examples/executejob.yaml"
endef

chart-install:
	$(call chart_install,$(KUBE_CONTEXT))

chart-lint:
	$(HELM) lint --strict $(CHART_DIR)

chart-crds:
	cp $(CRD_SOURCE) $(KIND_MK_REPO)/crds/workerpools.yaml $(CHART_DIR)/crds/
