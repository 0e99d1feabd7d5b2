#!/usr/bin/env bash
# A kind cluster for the operator: Docker (the user's, or the project's own: dockerd.sh), kind
# (tools.sh), the node image (kind's default where it can be pulled, else node-image.sh builds
# one), `kind create cluster`, and optionally the worker/operator images (images.sh) loaded with
# `kind load docker-image` (worker, operator and user images).
#
# Usage: hack/kind/up.sh [--name NAME] [--workers N] [--images] [--kubeconfig FILE] [--prepare]
#   --name NAME        cluster name (default $KIND_CLUSTER, else "appliance")
#   --workers N        worker nodes besides the control plane (default 1)
#   --images           also build images/*.Dockerfile and kind-load them into the nodes
#   --kubeconfig FILE  write the cluster's kubeconfig there (default: kind's, i.e. $KUBECONFIG or
#                      ~/.kube/config; a copy is always kept in .kind/NAME.kubeconfig)
#   --prepare          only make sure of what a cluster needs (Docker, kind, the node image, with
#                      --images the images): the slow, cached steps, e.g. before tests with timeouts
# Environment: KIND_NODE_IMAGE   a node image to use (default: kind's own if it can be pulled, else
#                                "local": the one node-image.sh builds)
#              KIND_CREATE_WAIT  how long `kind create cluster` waits for the nodes (default 300s)
#              KIND_NODE_MONITOR_GRACE_PERIOD  kube-controller-manager's --node-monitor-grace-period
#                                (default: Kubernetes' own, 50s): how long a silent kubelet takes
#                                to make its node NotReady. The e2e tests use 20s (lost nodes)
#              IMAGE_TAG, WORKER_REPOSITORY, OPERATOR_REPOSITORY, USER_REPOSITORY (images.sh)
# Idempotent: a healthy cluster of that name (all nodes Ready) is reused as it is; one that is
# not (its containers stopped, e.g. after its dockerd ended) is deleted and made afresh.
# Prints, last: KUBECONFIG=, DOCKER_HOST=, NODES= (the workers), CREATED=1|0, and with --images
# WORKER_IMAGE=, OPERATOR_IMAGE=, USER_IMAGE=.
set -euo pipefail
# shellcheck source=hack/kind/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NAME=${KIND_CLUSTER:-appliance}
WORKERS=1
IMAGES=
KUBECONFIG_OUT=
PREPARE=
while (($#)); do
  case $1 in
    --name) NAME=${2:?--name needs a value}; shift 2 ;;
    --workers) WORKERS=${2:?--workers needs a value}; shift 2 ;;
    --images) IMAGES=1; shift ;;
    --prepare) PREPARE=1; shift ;;
    --kubeconfig) KUBECONFIG_OUT=${2:?--kubeconfig needs a value}; shift 2 ;;
    *) die "unknown argument: $1 (see the header of $0)" ;;
  esac
done
[[ $WORKERS =~ ^[0-9]+$ ]] || die "--workers must be a number (got '$WORKERS')"
[[ $NAME =~ ^[a-z0-9][a-z0-9-]*$ ]] || die "--name must be a DNS label (got '$NAME')"
t0=$SECONDS
step() { log "kind: $* (t+$((SECONDS - t0))s)"; }

eval "export $(bash "$OFFLINE_DIR/dockerd.sh" up)"
[[ -n $DOCKER_HOST ]] || unset DOCKER_HOST
mkdir -p "$KIND_STATE"
KUBECONFIG_COPY=$KIND_STATE/$NAME.kubeconfig
bash "$OFFLINE_DIR/tools.sh" --kind-only >/dev/null
# kubectl: the pinned one when it is built (or can be: a local node image needs the build anyway),
# else the one on PATH.
if bash "$CLUSTER_BUILD_DIR/build.sh" --check || ! command -v kubectl >/dev/null; then
  KUBECTL=$(bash "$CLUSTER_BUILD_DIR/build.sh" | tail -n 1)/kubectl
else
  KUBECTL=$(command -v kubectl)
fi

nodes_of() { "$KIND" get nodes --name "$NAME" 2>/dev/null | sort; }
healthy() {
  # Not `grep -q`: it exits at the first match, and kind, still writing the next cluster's
  # name, dies of SIGPIPE, which pipefail reads as "no such cluster" (a healthy cluster listed
  # before another one was deleted and made again).
  "$KIND" get clusters 2>/dev/null | grep -x "$NAME" >/dev/null || return 1
  "$KIND" get kubeconfig --name "$NAME" >"$KUBECONFIG_COPY.tmp" 2>/dev/null || return 1
  mv -f "$KUBECONFIG_COPY.tmp" "$KUBECONFIG_COPY"
  local ready
  ready=$("$KUBECTL" --kubeconfig "$KUBECONFIG_COPY" get nodes --request-timeout=10s \
    -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null) || return 1
  [[ -n $ready && $(grep -vcx True <<<"$ready") == 0 ]] || return 1
  (($(grep -c . <<<"$ready") == WORKERS + 1)) || {
    log "kind cluster $NAME has $(grep -c . <<<"$ready") nodes, not $((WORKERS + 1)): making it afresh"
    return 1
  }
}

node_image() {
  local image=${KIND_NODE_IMAGE:-}
  if [[ -z $image ]]; then
    # kind's default node image, as this kind version names it (pinned by digest).
    image=$(sed -n 's/^const Image = "\(.*\)"$/\1/p' "$(kind_module_dir)/pkg/apis/config/defaults/image.go" 2>/dev/null || true)
    if [[ -n $image ]] && { docker image inspect "$image" >/dev/null 2>&1 || timeout 900 docker pull -q "$image" >/dev/null 2>&1; }; then
      echo "$image"
      return 0
    fi
    log "kind's node image cannot be pulled here: using one assembled locally (hack/offline/node-image.sh)"
    image=local
  fi
  if [[ $image == local ]]; then
    bash "$OFFLINE_DIR/tools.sh" >/dev/null
    image=$(bash "$OFFLINE_DIR/node-image.sh" | tail -n 1)
  fi
  echo "$image"
}

if [[ -n $PREPARE ]]; then
  step "node image: $(node_image)"
  [[ -z $IMAGES ]] || bash "$KIND_DIR/images.sh" >&2
  step "prepared"
  exit 0
fi

CREATED=0
if healthy; then
  step "kind cluster $NAME is up and healthy; reusing it"
else
  if "$KIND" get clusters 2>/dev/null | grep -x "$NAME" >/dev/null; then
    step "kind cluster $NAME exists but is not healthy: deleting it"
    "$KIND" delete cluster --name "$NAME"
  fi
  image=$(node_image)
  config=$KIND_STATE/$NAME.kind.yaml
  {
    echo "kind: Cluster"
    echo "apiVersion: kind.x-k8s.io/v1alpha4"
    echo "# written by hack/kind/up.sh"
    echo "nodes:"
    echo "- role: control-plane"
    for ((i = 0; i < WORKERS; i++)); do echo "- role: worker"; done
    if [[ -n ${KIND_NODE_MONITOR_GRACE_PERIOD:-} ]]; then
      # kind writes kubeadm's v1beta3 config for Kubernetes < 1.36 (extraArgs a map): merged in.
      echo "kubeadmConfigPatches:"
      echo "- '{kind: ClusterConfiguration, controllerManager: {extraArgs: {node-monitor-grace-period: \"$KIND_NODE_MONITOR_GRACE_PERIOD\"}}}'"
    fi
  } >"$config"
  # Every node runs kubelet, kube-proxy and the policy enforcer, each with inotify watchers on
  # the host's kernel: the default 128 instances per user run out with a second cluster up
  # (kube-proxy then fails with "too many open files"; kind's known issues). Raised, never
  # lowered, when we may.
  for limit in max_user_instances=512 max_user_watches=524288; do
    file=/proc/sys/fs/inotify/${limit%%=*}
    if [[ -w $file ]] && (($(<"$file") < ${limit#*=})); then echo "${limit#*=}" >"$file"; fi
  done
  step "kind create cluster --name $NAME ($((WORKERS + 1)) nodes, image $image)"
  "$KIND" create cluster --name "$NAME" --image "$image" --config "$config" \
    --wait "${KIND_CREATE_WAIT:-300s}" ${KUBECONFIG_OUT:+--kubeconfig "$KUBECONFIG_OUT"}
  CREATED=1
  "$KIND" get kubeconfig --name "$NAME" >"$KUBECONFIG_COPY"
  # kind waits for the control plane only; the workers (and their pod network) follow.
  "$KUBECTL" --kubeconfig "$KUBECONFIG_COPY" wait --for=condition=Ready node --all \
    --timeout="${KIND_CREATE_WAIT:-300s}" >&2 || true
  healthy || die "kind cluster $NAME was created but its nodes are not all Ready (kind export logs --name $NAME)"
  # The locally assembled node image enforces NetworkPolicy with kube-router's firewall
  # (node-image.sh): ready on every node before anything relies on a policy.
  if "$KUBECTL" --kubeconfig "$KUBECONFIG_COPY" -n kube-system get daemonset kube-router-firewall >/dev/null 2>&1; then
    "$KUBECTL" --kubeconfig "$KUBECONFIG_COPY" -n kube-system rollout status daemonset/kube-router-firewall \
      --timeout="${KIND_CREATE_WAIT:-300s}" >&2 ||
      die "kube-router's firewall did not become ready on every node of $NAME (kubectl -n kube-system logs ds/kube-router-firewall)"
  fi
  step "kind cluster $NAME up"
fi
if [[ -n $KUBECONFIG_OUT && $CREATED == 0 && ! $KUBECONFIG_OUT -ef $KUBECONFIG_COPY ]]; then
  cp "$KUBECONFIG_COPY" "$KUBECONFIG_OUT"
fi

images_out=
if [[ -n $IMAGES ]]; then
  images_out=$(bash "$KIND_DIR/images.sh")
  eval "$images_out"
  # Into the nodes that run pods (the control plane is tainted), when there are any.
  workers=$(nodes_of | { grep -v -- '-control-plane$' || true; } | paste -sd, -)
  step "kind load docker-image $WORKER_IMAGE $OPERATOR_IMAGE $USER_IMAGE ${workers:+(nodes $workers)}"
  "$KIND" load docker-image --name "$NAME" ${workers:+--nodes "$workers"} "$WORKER_IMAGE" "$OPERATOR_IMAGE" "$USER_IMAGE" >&2
fi
step "done"
echo "KUBECONFIG=$KUBECONFIG_COPY"
echo "DOCKER_HOST=${DOCKER_HOST:-}"
echo "NODES=$(nodes_of | { grep -v -- '-control-plane$' || true; } | paste -sd, -)"
echo "CREATED=$CREATED"
[[ -z $images_out ]] || echo "$images_out"
