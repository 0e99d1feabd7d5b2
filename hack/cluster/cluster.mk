# Local Kubernetes cluster verbs; included by the top-level Makefile.
#   make cluster-build               build the pinned binaries once (cached outside the repo;
#                                    hack/offline/cluster-build: from source, nothing is pulled)
#   make cluster-up [NODES=kwok]     start the control plane on 127.0.0.1 (+ kwok fake nodes)
#   make cluster-down                stop it and remove .cluster/
CLUSTER_MK_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
CLUSTER_BUILD_SH := $(patsubst %/,%,$(dir $(CLUSTER_MK_DIR)))/offline/cluster-build/build.sh
NODES ?=
KWOK_NODES ?= 3

.PHONY: cluster-build cluster-up cluster-down
cluster-build:
	bash $(CLUSTER_BUILD_SH)
cluster-up:
	NODES='$(NODES)' KWOK_NODES='$(KWOK_NODES)' bash $(CLUSTER_MK_DIR)/up.sh
cluster-down:
	bash $(CLUSTER_MK_DIR)/down.sh
