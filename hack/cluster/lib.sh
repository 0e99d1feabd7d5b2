# shellcheck shell=bash
# Shared helpers for hack/cluster/*.sh. Source it from a script that has `set -euo pipefail`.
#
# Environment (all optional):
#   APPLIANCE_OPERATOR_CACHE        cache root (default: $XDG_CACHE_HOME or $HOME/.cache, + /appliance-operator)
#   APPLIANCE_OPERATOR_CLUSTER_DIR  state dir of the running cluster (default: <repo>/.cluster)
#   GO                              go command to build with (default: go on PATH)

CLUSTER_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$CLUSTER_DIR/../.." && pwd)
CACHE_ROOT=${APPLIANCE_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/appliance-operator}
STATE_DIR=${APPLIANCE_OPERATOR_CLUSTER_DIR:-$REPO_ROOT/.cluster}

# shellcheck source=versions.env
. "$CLUSTER_DIR/versions.env"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Cache key: everything that decides what the binaries are.
cluster_key() {
  (cd "$CLUSTER_DIR" && cat versions.env k8s/go.mod k8s/go.sum k8s/*.go etcd/go.mod etcd/go.sum etcd/*.go) |
    sha256sum | cut -c1-16
}

BIN_DIR=$CACHE_ROOT/bin/$(cluster_key)

# Binaries a complete bin dir holds (build.sh writes .complete once all exist).
CLUSTER_BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl helm kwok)

bindir_complete() { [[ -f $BIN_DIR/.complete ]]; }

# Find a go command; the Go tarball's default install location is tried after PATH.
find_go() {
  if [[ -n ${GO:-} ]]; then command -v "$GO" && return 0; return 1; fi
  command -v go && return 0
  [[ -x /usr/local/go/bin/go ]] && echo /usr/local/go/bin/go && return 0
  return 1
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
  [[ $exe == "$CACHE_ROOT"/bin/* ]]
}

# stop_component NAME [timeout_s]: TERM, wait, then KILL; only a PID that pid_alive accepts.
stop_component() {
  local name=$1 timeout=${2:-20} pid deadline
  if pid_alive "$name"; then
    pid=$(<"$STATE_DIR/pids/$name.pid")
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + timeout))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name (pid $pid) ignored SIGTERM for ${timeout}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      deadline=$((SECONDS + 10))
      while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    fi
    log "stopped $name (pid $pid)"
  fi
  rm -f "$STATE_DIR/pids/$name.pid"
}

# Components in start order; stopped in reverse.
CLUSTER_COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

stop_all() {
  local i f name
  # Anything recorded that is not a control-plane component first (e.g. a kubelet started
  # by a later script), then the control plane in reverse start order.
  if [[ -d $STATE_DIR/pids ]]; then
    for f in "$STATE_DIR"/pids/*.pid; do
      [[ -e $f ]] || continue
      name=$(basename "$f" .pid)
      [[ " ${CLUSTER_COMPONENTS[*]} " == *" $name "* ]] || stop_component "$name"
    done
  fi
  for ((i = ${#CLUSTER_COMPONENTS[@]} - 1; i >= 0; i--)); do
    stop_component "${CLUSTER_COMPONENTS[i]}"
  done
}
