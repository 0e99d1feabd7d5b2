# shellcheck shell=bash
# Shared helpers for hack/cluster/*.sh (the local control plane) and for the build of its
# binaries, hack/offline/cluster-build/build.sh. Source it from a script that has
# `set -euo pipefail`.
#
# Environment (all optional):
#   APPLIANCE_OPERATOR_CACHE        cache root (default: $XDG_CACHE_HOME or $HOME/.cache, + /appliance-operator)
#   APPLIANCE_OPERATOR_CLUSTER_DIR  state dir of the running cluster (default: <repo>/.cluster)
#   GO                              go command to build with (default: go on PATH)

CLUSTER_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$CLUSTER_DIR/../.." && pwd)
# Where the binaries are built from (versions.env and the wrapper modules k8s/ and etcd/): from
# source, through the Go module proxy, as nothing can be downloaded ready-made here.
CLUSTER_BUILD_DIR=$REPO_ROOT/hack/offline/cluster-build
CACHE_ROOT=${APPLIANCE_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/appliance-operator}
STATE_DIR=${APPLIANCE_OPERATOR_CLUSTER_DIR:-$REPO_ROOT/.cluster}

# shellcheck source=hack/offline/cluster-build/versions.env
. "$CLUSTER_BUILD_DIR/versions.env"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Cache key: everything that decides what the binaries are (the files' contents, not their paths).
cluster_key() {
  (cd "$CLUSTER_BUILD_DIR" && cat versions.env k8s/go.mod k8s/go.sum k8s/*.go etcd/go.mod etcd/go.sum etcd/*.go) |
    sha256sum | cut -c1-16
}

BIN_DIR=$CACHE_ROOT/bin/$(cluster_key)

# Binaries a complete bin dir holds (build.sh writes .complete once all exist).
# shellcheck disable=SC2034 # used by build.sh
CLUSTER_BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl kubeadm kube-proxy helm kwok)

bindir_complete() { [[ -f $BIN_DIR/.complete ]]; }

# Find the go command: $GO if set, else go on PATH.
find_go() {
  command -v "${GO:-go}"
}

# Print n free TCP ports on 127.0.0.1 (held open together, so they are distinct).
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# pid_alive NAME -> true when .cluster/pids/NAME.pid names a live process running one of our binaries.
pid_alive() {
  local f=$STATE_DIR/pids/$1.pid pid exe
  [[ -f $f ]] || return 1
  pid=$(<"$f")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  # Only ours: the executable must live in a bin dir of our cache (guards against PID reuse).
  # The bin dir up.sh used is in $STATE_DIR/env (it may differ from the current BIN_DIR).
  local root=$CACHE_ROOT/bin
  if [[ -f $STATE_DIR/env ]]; then
    root=$(sed -n 's/^BIN_DIR=//p' "$STATE_DIR/env")
    root=${root%/*}
  fi
  [[ $exe == "$root"/* ]]
}

# stop_components NAME...: TERM them all, wait up to STOP_TIMEOUT (20s), then KILL what is left.
# Only PIDs that pid_alive accepts are signalled; their pid files are removed.
stop_components() {
  local name pid deadline left
  local -A pids=()
  for name in "$@"; do
    if pid_alive "$name"; then
      pid=$(<"$STATE_DIR/pids/$name.pid")
      pids[$name]=$pid
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  deadline=$((SECONDS + ${STOP_TIMEOUT:-20}))
  while true; do
    left=()
    for name in "${!pids[@]}"; do kill -0 "${pids[$name]}" 2>/dev/null && left+=("$name"); done
    ((${#left[@]} == 0)) && break
    if ((SECONDS >= deadline)); then
      for name in "${left[@]}"; do
        log "$name (pid ${pids[$name]}) ignored SIGTERM for ${STOP_TIMEOUT:-20}s; sending SIGKILL"
        kill -KILL "${pids[$name]}" 2>/dev/null || true
      done
      deadline=$((SECONDS + 10)) # for the KILLed to be reaped; then give up waiting
      while true; do
        left=()
        for name in "${!pids[@]}"; do kill -0 "${pids[$name]}" 2>/dev/null && left+=("$name"); done
        ((${#left[@]} == 0 || SECONDS >= deadline)) && break
        sleep 0.1
      done
      break
    fi
    sleep 0.1
  done
  for name in "$@"; do
    [[ -n ${pids[$name]:-} ]] && log "stopped $name (pid ${pids[$name]})"
    rm -f "$STATE_DIR/pids/$name.pid"
  done
  return 0
}

# Control-plane components, in start order.
CLUSTER_COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

# Stop everything recorded in $STATE_DIR/pids: the clients of the apiserver (kwok, the controllers, anything else recorded there), the apiserver, etcd.
stop_all() {
  local f name others=()
  if [[ -d $STATE_DIR/pids ]]; then
    for f in "$STATE_DIR"/pids/*.pid; do
      [[ -e $f ]] || continue
      name=$(basename "$f" .pid)
      [[ " ${CLUSTER_COMPONENTS[*]} " == *" $name "* ]] || others+=("$name")
    done
  fi
  stop_components "${others[@]}" kwok kube-scheduler kube-controller-manager
  stop_components kube-apiserver
  stop_components etcd
}
