# shellcheck shell=bash
# Shared helpers for hack/kind/*.sh; source it from a script that has `set -euo pipefail`.
# It builds on hack/cluster/lib.sh (cache root, pinned Kubernetes, log/die).
#
# Environment (all optional):
#   APPLIANCE_OPERATOR_CACHE   cache root (default $XDG_CACHE_HOME or $HOME/.cache, + /appliance-operator)
#   APPLIANCE_KIND_STATE       state dir of the project's own dockerd (default <repo>/.kind)
#   DOCKER_HOST                a Docker daemon to use; when unset and none answers on the default
#                              socket, hack/kind/dockerd.sh starts the project's own (see there)

# shellcheck source=hack/cluster/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../cluster/lib.sh"
KIND_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=hack/kind/versions.env
. "$KIND_DIR/versions.env"

KIND_CACHE=$CACHE_ROOT/kind
KIND_STATE=${APPLIANCE_KIND_STATE:-$REPO_ROOT/.kind}
# The project's own dockerd (only when no other Docker answers): socket and pid in the state dir,
# images and containers in the cache (they outlive a clone), exec root short (socket paths).
OWN_DOCKER_SOCK=$KIND_STATE/docker.sock
OWN_DOCKER_HOST=unix://$OWN_DOCKER_SOCK
OWN_DOCKER_DATA=$CACHE_ROOT/docker

# kind, crictl, coredns: go install'ed into a bin dir keyed by their versions.
kind_tools_key() { printf '%s\n' "$KIND_VERSION" "$CRICTL_VERSION" "$COREDNS_VERSION" "$GO_TOOLCHAIN" | sha256sum | cut -c1-16; }
KIND_BIN_DIR=$KIND_CACHE/bin/$(kind_tools_key)
KIND=$KIND_BIN_DIR/kind
# kube-router (the node image's NetworkPolicy enforcer): a bin dir of its own, so that its
# version changes nothing of the others' cache.
kube_router_key() { printf '%s\n' "$KUBE_ROUTER_VERSION" "$GO_TOOLCHAIN" | sha256sum | cut -c1-16; }
KUBE_ROUTER_BIN_DIR=$KIND_CACHE/kube-router/$(kube_router_key)
KUBE_ROUTER=$KUBE_ROUTER_BIN_DIR/kube-router

kind_module_dir() { # the sigs.k8s.io/kind module in the Go module cache (downloaded if needed)
  local go_bin
  go_bin=$(find_go) || die "no Go toolchain found: it fetches the sigs.k8s.io/kind module"
  (cd "$KIND_CACHE" && GOFLAGS='' GOWORK=off "$go_bin" mod download -json "sigs.k8s.io/kind@$KIND_VERSION" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
}

# ensure_debs FILE=PACKAGE...: install (apt-get, root) the Debian packages whose FILE is missing;
# a machine that has them all runs no apt command. The lists are refreshed first only when an
# install fails (a fresh machine may have none).
ensure_debs() {
  local pair missing=()
  for pair in "$@"; do [[ -e ${pair%%=*} ]] || missing+=("${pair#*=}"); done
  ((${#missing[@]})) || return 0
  command -v apt-get >/dev/null || die "missing: ${missing[*]} (no apt-get: install them by hand)"
  [[ $(id -u) == 0 ]] || die "missing Debian packages ${missing[*]}: installing them needs root"
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    apt-get update -qq >/dev/null || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
      die "apt-get install ${missing[*]} failed"
  fi
  for pair in "$@"; do [[ -e ${pair%%=*} ]] || die "${pair#*=} installed but ${pair%%=*} is missing"; done
}

# Use our dockerd when it runs and no DOCKER_HOST was given (make, pytest and a shell agree).
use_docker() {
  if [[ -z ${DOCKER_HOST:-} && -S $OWN_DOCKER_SOCK ]]; then export DOCKER_HOST=$OWN_DOCKER_HOST; fi
  return 0
}

docker_ok() { timeout 20 docker info >/dev/null 2>&1; }

# The kind node image to use: $KIND_NODE_IMAGE if set, else the one hack/kind/node-image.sh
# built and recorded (if any).
NODE_IMAGE_RECORD=$KIND_STATE/node-image
