# Run the operator in a kind or minikube cluster, from the same chart and Dockerfiles as
# everything else; included by the top-level Makefile (docs/install.md explains each step).
#
#   make kind-up        kind cluster + images (docker build, kind load) + helm install
#   make kind-down      delete that kind cluster
#   make minikube-up    minikube profile + images (minikube image build) + helm install
#   make minikube-down  delete that minikube profile
#   make chart-install  (re)install the chart into KUBE_CONTEXT (CRD applied first)
#   make chart-lint     helm lint --strict (the chart tests: make unit)
#   make chart-crds     copy crds/executejobs.yaml into the chart after `make crds`
#
# Variables (override on the command line, e.g. `make kind-up KIND_CLUSTER=dev`):
KIND ?= kind
MINIKUBE ?= minikube
DOCKER ?= docker
HELM ?= helm
KUBECTL ?= kubectl
KIND_CLUSTER ?= appliance
MINIKUBE_PROFILE ?= appliance
IMAGE_TAG ?= 0.1.0
OPERATOR_REPOSITORY ?= appliance-operator/operator
WORKER_REPOSITORY ?= appliance-operator/worker
OPERATOR_IMAGE := $(OPERATOR_REPOSITORY):$(IMAGE_TAG)
WORKER_IMAGE := $(WORKER_REPOSITORY):$(IMAGE_TAG)
OPERATOR_DOCKERFILE ?= images/operator.Dockerfile
WORKER_DOCKERFILE ?= images/worker.Dockerfile
HELM_RELEASE ?= appliance-operator
HELM_NAMESPACE ?= appliance-system
# Extra `helm upgrade --install` arguments, e.g. HELM_ARGS='--set rbac.scope=namespace'
HELM_ARGS ?=
KUBE_CONTEXT ?=

KIND_MK_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
KIND_MK_REPO := $(patsubst %/,%,$(dir $(KIND_MK_DIR)))
CHART_DIR := $(KIND_MK_REPO)/charts/appliance-operator
CRD_SOURCE := $(KIND_MK_REPO)/crds/executejobs.yaml

.PHONY: kind-up kind-down minikube-up minikube-down chart-install chart-lint chart-crds \
	docker-images

# kind_mk_need TOOL,HINT: stop with a clear message when a tool is missing.
kind_mk_need = @command -v $(1) >/dev/null 2>&1 || { echo "$(1) not found: $(2)" >&2; exit 1; }
kind_mk_dockerfiles = @for f in $(WORKER_DOCKERFILE) $(OPERATOR_DOCKERFILE); do \
	test -f $(KIND_MK_REPO)/$$f || { echo "$$f not found (set WORKER_DOCKERFILE / OPERATOR_DOCKERFILE)" >&2; exit 1; }; done

docker-images:
	$(call kind_mk_need,$(DOCKER),install Docker (or set DOCKER=podman))
	$(kind_mk_dockerfiles)
	$(DOCKER) build -f $(KIND_MK_REPO)/$(WORKER_DOCKERFILE) -t $(WORKER_IMAGE) $(KIND_MK_REPO)
	$(DOCKER) build -f $(KIND_MK_REPO)/$(OPERATOR_DOCKERFILE) -t $(OPERATOR_IMAGE) $(KIND_MK_REPO)

kind-up: docker-images
	$(call kind_mk_need,$(KIND),see https://kind.sigs.k8s.io/docs/user/quick-start/#installation)
	$(call kind_mk_need,$(HELM),install helm v3 (or use the pinned one: bash hack/cluster/build.sh))
	$(KIND) get clusters 2>/dev/null | grep -qx '$(KIND_CLUSTER)' || \
		$(KIND) create cluster --name $(KIND_CLUSTER) --wait 180s
	$(KIND) load docker-image --name $(KIND_CLUSTER) $(WORKER_IMAGE) $(OPERATOR_IMAGE)
	$(call chart_install,kind-$(KIND_CLUSTER))

kind-down:
	$(call kind_mk_need,$(KIND),see https://kind.sigs.k8s.io/docs/user/quick-start/#installation)
	$(KIND) delete cluster --name $(KIND_CLUSTER)

minikube-up:
	$(call kind_mk_need,$(MINIKUBE),see https://minikube.sigs.k8s.io/docs/start/)
	$(call kind_mk_need,$(HELM),install helm v3 (or use the pinned one: bash hack/cluster/build.sh))
	$(MINIKUBE) status -p $(MINIKUBE_PROFILE) >/dev/null 2>&1 || \
		$(MINIKUBE) start -p $(MINIKUBE_PROFILE) --wait=all
	$(kind_mk_dockerfiles)
	# Built inside minikube's own runtime: no registry, no host Docker needed.
	cd $(KIND_MK_REPO) && $(MINIKUBE) -p $(MINIKUBE_PROFILE) image build \
		-f $(WORKER_DOCKERFILE) -t $(WORKER_IMAGE) .
	cd $(KIND_MK_REPO) && $(MINIKUBE) -p $(MINIKUBE_PROFILE) image build \
		-f $(OPERATOR_DOCKERFILE) -t $(OPERATOR_IMAGE) .
	$(call chart_install,$(MINIKUBE_PROFILE))

minikube-down:
	$(call kind_mk_need,$(MINIKUBE),see https://minikube.sigs.k8s.io/docs/start/)
	$(MINIKUBE) delete -p $(MINIKUBE_PROFILE)

# chart_install CONTEXT: the CRD first (server-side apply, idempotent: Helm installs a chart's
# crds/ only on the first install and never upgrades them, so a changed CRD would otherwise
# be ignored), then the release. The images were loaded into the nodes, never pulled:
# pullPolicy IfNotPresent with a fixed tag finds them there.
define chart_install
$(call kind_mk_need,$(HELM),install helm v3 (or use the pinned one: bash hack/cluster/build.sh))
$(call kind_mk_need,$(KUBECTL),install kubectl (or use the pinned one: bash hack/cluster/build.sh))
$(KUBECTL) $(if $(1),--context $(1)) apply --server-side \
	--field-manager=appliance-operator-crds -f $(CHART_DIR)/crds/
$(HELM) upgrade --install $(HELM_RELEASE) $(CHART_DIR) $(if $(1),--kube-context $(1)) \
	--namespace $(HELM_NAMESPACE) --create-namespace \
	--set image.repository=$(OPERATOR_REPOSITORY) --set image.tag=$(IMAGE_TAG) \
	--set image.pullPolicy=IfNotPresent \
	--wait --timeout 5m $(HELM_ARGS)
@echo "operator ready; try: $(KUBECTL) $(if $(1),--context $(1) )apply -n default -f examples/executejob.yaml"
endef

chart-install:
	$(call chart_install,$(KUBE_CONTEXT))

chart-lint:
	$(call kind_mk_need,$(HELM),install helm v3 (or use the pinned one: bash hack/cluster/build.sh))
	$(HELM) lint --strict $(CHART_DIR)

chart-crds:
	cp $(CRD_SOURCE) $(CHART_DIR)/crds/executejobs.yaml
