#!/usr/bin/env bash
# Build (once, cached) kind and what the locally built node image needs besides the cluster
# binaries of hack/offline/cluster-build/build.sh: crictl, CoreDNS and kube-router (its NetworkPolicy
# firewall). All from the Go module proxy with `go install pkg@version` (their own
# go.mod/go.sum decide the dependencies).
#
# Usage: hack/offline/tools.sh                 build what is missing; print the bin dir
#        hack/offline/tools.sh --print-bindir  print the bin dir (built or not)
#        hack/offline/tools.sh --kind-only     build kind only (enough where the node image is pulled)
# The bin dir is $APPLIANCE_OPERATOR_CACHE/kind/bin/<hash of the versions>; kube-router's is
# $APPLIANCE_OPERATOR_CACHE/kind/kube-router/<hash of its version> ($KUBE_ROUTER, hack/offline/lib.sh).
set -euo pipefail
# shellcheck source=hack/kind/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../kind/lib.sh"

want=(kind crictl coredns kube-router)
case ${1:-} in
  --print-bindir) echo "$KIND_BIN_DIR"; exit 0 ;;
  --kind-only) want=(kind) ;;
  "") ;;
  *) die "unknown argument: $1 (see the header of $0)" ;;
esac

dir_of() { if [[ $1 == kube-router ]]; then echo "$KUBE_ROUTER_BIN_DIR"; else echo "$KIND_BIN_DIR"; fi; }
missing=()
for t in "${want[@]}"; do [[ -x $(dir_of "$t")/$t ]] || missing+=("$t"); done
if ((${#missing[@]} == 0)); then echo "$KIND_BIN_DIR"; exit 0; fi

GO_BIN=$(find_go) || die "no Go toolchain found (put go on PATH or set GO=...); it builds ${missing[*]} once"
export GOTOOLCHAIN=$GO_TOOLCHAIN CGO_ENABLED=0 GOFLAGS='' GOWORK=off
mkdir -p "$KIND_CACHE"
exec 9>"$KIND_CACHE/tools.lock"
flock -w 3600 9 || die "timed out waiting for $KIND_CACHE/tools.lock"
mkdir -p "$KIND_BIN_DIR"
STAGE=$(mktemp -d "$KIND_BIN_DIR/.stage.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT

t0=$SECONDS
for t in "${missing[@]}"; do
  [[ -x $(dir_of "$t")/$t ]] && continue
  case $t in
    kind) pkg=sigs.k8s.io/kind@$KIND_VERSION ldflags="-s -w" ;;
    crictl) pkg=sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION
      ldflags="-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" ;;
    coredns) pkg=github.com/coredns/coredns@$COREDNS_VERSION ldflags="-s -w" ;;
    kube-router) pkg=github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$KUBE_ROUTER_VERSION
      ldflags="-s -w -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$KUBE_ROUTER_VERSION" ;;
  esac
  log "building $t ($pkg; cold: kind <1 min, crictl ~1 min, coredns and kube-router a few minutes each on 2 cores) (t+$((SECONDS - t0))s)"
  (cd "$STAGE" && GOBIN=$STAGE "$GO_BIN" install -trimpath -ldflags "$ldflags" "$pkg")
  mkdir -p "$(dir_of "$t")"
  mv -f "$STAGE/$t" "$(dir_of "$t")/$t"
done
"$KIND" version | grep -q "kind $KIND_VERSION " || die "kind does not report $KIND_VERSION: $("$KIND" version)"
log "kind tools in $KIND_BIN_DIR (t+$((SECONDS - t0))s)"
echo "$KIND_BIN_DIR"
