# shellcheck shell=bash
# What the kind scripts fall back on where nothing can be pulled: the project's own dockerd,
# the tools built from the Go module proxy, the versions of the locally assembled node image,
# Debian packages installed on demand. Sourced by hack/kind/lib.sh (which every script of
# hack/kind and hack/offline sources), after KIND_CACHE, KIND_STATE and KIND_VERSION are set.

OFFLINE_DIR=$REPO_ROOT/hack/offline
# shellcheck source=hack/offline/versions.env
. "$OFFLINE_DIR/versions.env"

# The project's own dockerd (only when no other Docker answers): socket and pid in the state dir,
# images and containers in the cache (they outlive a clone), exec root short (socket paths).
OWN_DOCKER_SOCK=$KIND_STATE/docker.sock
OWN_DOCKER_HOST=unix://$OWN_DOCKER_SOCK
OWN_DOCKER_DATA=$CACHE_ROOT/docker

# kind, crictl, coredns: go install'ed (tools.sh) into a bin dir keyed by their versions.
kind_tools_key() { printf '%s\n' "$KIND_VERSION" "$CRICTL_VERSION" "$COREDNS_VERSION" "$GO_TOOLCHAIN" | sha256sum | cut -c1-16; }
KIND_BIN_DIR=$KIND_CACHE/bin/$(kind_tools_key)
KIND=$KIND_BIN_DIR/kind
# kube-router (the node image's NetworkPolicy enforcer): a bin dir of its own, so that its
# version changes nothing of the others' cache.
kube_router_key() { printf '%s\n' "$KUBE_ROUTER_VERSION" "$GO_TOOLCHAIN" | sha256sum | cut -c1-16; }
KUBE_ROUTER_BIN_DIR=$KIND_CACHE/kube-router/$(kube_router_key)
KUBE_ROUTER=$KUBE_ROUTER_BIN_DIR/kube-router

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
