#!/usr/bin/env bash
# Build (once, cached) the binaries of the local cluster (hack/cluster) from the Go module proxy:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl, helm, kwok,
# and kubeadm + kube-proxy for the kind node image (hack/offline/node-image.sh). From source,
# because no release binary can be downloaded here.
#
# Usage: hack/offline/cluster-build/build.sh               build what is missing, print the bin dir
#        hack/offline/cluster-build/build.sh --print-bindir print the bin dir (built or not) and exit
#        hack/offline/cluster-build/build.sh --check        exit 0 if the bin dir is complete, 1 otherwise
#        hack/offline/cluster-build/build.sh --find-go      print the go command a build would use (exit 1: none)
#        hack/offline/cluster-build/build.sh --prune        remove bin dirs of other (old) versions
#
# The bin dir is $APPLIANCE_OPERATOR_CACHE/bin/<key>, <key> a hash of versions.env and the
# wrapper modules (hack/cluster/lib.sh: the files' contents, not their paths), so a version
# change builds into a new dir and a warm machine skips the build.
set -euo pipefail
# shellcheck source=hack/cluster/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../cluster/lib.sh"

case ${1:-} in
  --print-bindir) echo "$BIN_DIR"; exit 0 ;;
  --check) bindir_complete; exit $? ;;
  --find-go) find_go; exit $? ;;
  --prune)
    for d in "$CACHE_ROOT"/bin/*/; do
      [[ -d $d && ${d%/} != "$BIN_DIR" ]] || continue
      log "removing $d"; rm -rf "$d"
    done
    exit 0 ;;
  "") ;;
  *) die "unknown argument: $1 (see the header of $0)" ;;
esac

if bindir_complete; then
  log "cluster binaries are up to date in $BIN_DIR"
  echo "$BIN_DIR"
  exit 0
fi

GO_BIN=$(find_go) || die "no Go toolchain found (put go on PATH or set GO=...); it is needed once to build the cluster binaries"
# shellcheck disable=SC2153 # GO_TOOLCHAIN comes from versions.env
export GOTOOLCHAIN=$GO_TOOLCHAIN CGO_ENABLED=0 GOFLAGS='' GOWORK=off
log "using $("$GO_BIN" version) (GOTOOLCHAIN=$GOTOOLCHAIN)"

mkdir -p "$CACHE_ROOT/bin"
# One build at a time per cache (make and pytest may both ask).
exec 9>"$CACHE_ROOT/build.lock"
if ! flock -n 9; then
  log "another build is running; waiting for it (up to 60 min)"
  flock -w 3600 9 || die "timed out waiting for the build lock $CACHE_ROOT/build.lock"
fi
if bindir_complete; then echo "$BIN_DIR"; exit 0; fi
mkdir -p "$BIN_DIR"
STAGE=$(mktemp -d "$BIN_DIR/.stage.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT

# The wrapper modules must pin what versions.env says.
mod_version() { (cd "$CLUSTER_BUILD_DIR/$1" && "$GO_BIN" list -m -f '{{with .Replace}}{{.Version}}{{else}}{{.Version}}{{end}}' "$2"); }
[[ $(mod_version k8s k8s.io/kubernetes) == "$KUBE_VERSION" ]] ||
  die "k8s/go.mod pins k8s.io/kubernetes $(mod_version k8s k8s.io/kubernetes), versions.env says $KUBE_VERSION"
[[ $(mod_version k8s k8s.io/client-go) == "$KUBE_STAGING_VERSION" ]] ||
  die "k8s/go.mod replaces k8s.io/client-go with $(mod_version k8s k8s.io/client-go), versions.env says $KUBE_STAGING_VERSION"
[[ $(mod_version etcd go.etcd.io/etcd/server/v3) == "$ETCD_VERSION" ]] ||
  die "etcd/go.mod pins etcd $(mod_version etcd go.etcd.io/etcd/server/v3), versions.env says $ETCD_VERSION"

missing() { [[ ! -x $BIN_DIR/$1 ]]; }
t0=$SECONDS
step() { log "$* (t+$((SECONDS - t0))s)"; }

# --- Kubernetes -------------------------------------------------------------------------
K8S_CMDS=()
for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl kubeadm kube-proxy; do
  missing "$c" && K8S_CMDS+=("$c")
done
if ((${#K8S_CMDS[@]})); then
  step "building ${K8S_CMDS[*]} $KUBE_VERSION (a cold build downloads modules and compiles for 15-30 min on 2 cores)"
  (
    cd "$CLUSTER_BUILD_DIR/k8s"
    build_date=$("$GO_BIN" list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' k8s.io/kubernetes)
    minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
    ldflags="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
      ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
    done
    pkgs=()
    for c in "${K8S_CMDS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
    "$GO_BIN" build -trimpath -ldflags "$ldflags" -o "$STAGE/" "${pkgs[@]}"
  )
  for c in "${K8S_CMDS[@]}"; do mv -f "$STAGE/$c" "$BIN_DIR/$c"; done
fi

# --- etcd -------------------------------------------------------------------------------
if missing etcd; then
  step "building etcd $ETCD_VERSION"
  (cd "$CLUSTER_BUILD_DIR/etcd" && "$GO_BIN" build -trimpath -ldflags "-s -w" -o "$STAGE/etcd" .)
  mv -f "$STAGE/etcd" "$BIN_DIR/etcd"
fi

# --- helm and kwok (go install pkg@version: their own go.mod/go.sum decide the deps) -----
if missing helm; then
  step "building helm $HELM_VERSION"
  (cd "$STAGE" && GOBIN=$STAGE "$GO_BIN" install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION")
  mv -f "$STAGE/helm" "$BIN_DIR/helm"
fi
if missing kwok; then
  step "building kwok $KWOK_VERSION"
  (cd "$STAGE" && GOBIN=$STAGE "$GO_BIN" install -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=$KUBE_VERSION" \
    "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION")
  mv -f "$STAGE/kwok" "$BIN_DIR/kwok"
fi

# kwok alone ships no default Stages (kwokctl injects them): take the "fast" node/pod stages and
# the lease heartbeat from the same kwok release, as kwokctl does.
if [[ ! -f $BIN_DIR/kwok-stages.yaml ]]; then
  kwok_dir=$(cd "$STAGE" && "$GO_BIN" mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
    pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    echo "---"; cat "$kwok_dir/kustomize/stage/$f"
  done >"$STAGE/kwok-stages.yaml"
  mv -f "$STAGE/kwok-stages.yaml" "$BIN_DIR/kwok-stages.yaml"
fi

# --- check and seal ---------------------------------------------------------------------
step "checking the binaries run"
# The output is read whole before it is matched: `cmd | grep -q` under pipefail fails at
# random when grep exits at its match and the command still writes (SIGPIPE; seen with etcd).
reports() { # <binary> <expected, grep -E> <command...>
  local what=$1 want=$2 out
  shift 2
  out=$("$@" 2>&1) || die "$what does not run: $out"
  grep -qE "$want" <<<"$out" || die "$what does not report $want: $out"
}
reports kubectl "gitVersion: $KUBE_VERSION\$" "$BIN_DIR/kubectl" version --client -o yaml
reports kube-apiserver "^Kubernetes $KUBE_VERSION\$" "$BIN_DIR/kube-apiserver" --version
reports kubeadm "^$KUBE_VERSION\$" "$BIN_DIR/kubeadm" version -o short
reports etcd "^etcd Version: ${ETCD_VERSION#v}\$" "$BIN_DIR/etcd" --version
reports helm "^$HELM_VERSION" "$BIN_DIR/helm" version --short
reports kwok "" "$BIN_DIR/kwok" --version
for b in "${CLUSTER_BINARIES[@]}"; do [[ -x $BIN_DIR/$b ]] || die "missing $BIN_DIR/$b"; done

{
  echo "# built $(date -u +%Y-%m-%dT%H:%M:%SZ) with $("$GO_BIN" version)"
  grep -E '^[A-Z_]+=' "$CLUSTER_BUILD_DIR/versions.env"
} >"$BIN_DIR/.complete"
step "done; binaries in $BIN_DIR"
echo "$BIN_DIR"
