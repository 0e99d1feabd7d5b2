# shellcheck shell=bash
# Shared helpers for hack/kind/*.sh and hack/offline/*.sh; source it from a script that has
# `set -euo pipefail`. It builds on hack/cluster/lib.sh (cache root, pinned Kubernetes, log/die)
# and brings hack/offline/lib.sh (the project's own dockerd, the tools built from the Go module
# proxy: what kind falls back on where nothing can be pulled).
#
# Environment (all optional):
#   APPLIANCE_OPERATOR_CACHE   cache root (default $XDG_CACHE_HOME or $HOME/.cache, + /appliance-operator)
#   APPLIANCE_KIND_STATE       state dir of the kind clusters and of the project's own dockerd
#                              (default <repo>/.kind)
#   DOCKER_HOST                a Docker daemon to use; when unset and none answers on the default
#                              socket, hack/offline/dockerd.sh starts the project's own (see there)

# shellcheck source=hack/cluster/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../cluster/lib.sh"
KIND_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=hack/kind/versions.env
. "$KIND_DIR/versions.env"

KIND_CACHE=$CACHE_ROOT/kind
KIND_STATE=${APPLIANCE_KIND_STATE:-$REPO_ROOT/.kind}

# OFFLINE_DIR, the own dockerd (OWN_DOCKER_*), the tools' bin dirs (KIND: the kind binary),
# the node image's versions and ensure_debs.
# shellcheck source=hack/offline/lib.sh
. "$REPO_ROOT/hack/offline/lib.sh"

kind_module_dir() { # the sigs.k8s.io/kind module in the Go module cache (downloaded if needed)
  local go_bin
  go_bin=$(find_go) || die "no Go toolchain found: it fetches the sigs.k8s.io/kind module"
  (cd "$KIND_CACHE" && GOFLAGS='' GOWORK=off "$go_bin" mod download -json "sigs.k8s.io/kind@$KIND_VERSION" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
}

# Use our dockerd when it runs and no DOCKER_HOST was given (make, pytest and a shell agree).
use_docker() {
  if [[ -z ${DOCKER_HOST:-} && -S $OWN_DOCKER_SOCK ]]; then export DOCKER_HOST=$OWN_DOCKER_HOST; fi
  return 0
}
