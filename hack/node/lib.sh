# shellcheck shell=bash disable=SC2034 # the variables are used by the scripts that source this
# Shared helpers for hack/node/*.sh (sourced after `set -euo pipefail`). Builds on
# hack/cluster/lib.sh: the same cache root, state dir and logging.
#
# Environment (all optional):
#   NODE_NAME                    the node's name (default 127.0.0.1, see docs/node.md)
#   APPLIANCE_NODE_CONTAINERD_ROOT  containerd's root (images, snapshots); kept across
#                                up/down so a warm start imports nothing
#                                (default $APPLIANCE_OPERATOR_CACHE/node/containerd)
#   NODE_START_TIMEOUT           seconds to wait for containerd and for the node to be Ready (120)

NODE_SCRIPTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=hack/cluster/lib.sh
. "$NODE_SCRIPTS/../cluster/lib.sh"

# Named like this, the kubelet reports InternalIP = Hostname = 127.0.0.1: the apiserver reaches
# it (logs, exec) over loopback. A --node-ip of 127.0.0.1 is refused by the kubelet.
NODE_NAME=${NODE_NAME:-127.0.0.1}
NODE_DIR=$STATE_DIR/node
CONTAINERD_ROOT=${APPLIANCE_NODE_CONTAINERD_ROOT:-$CACHE_ROOT/node/containerd}
NODE_TIMEOUT=${NODE_START_TIMEOUT:-120}
CNI_BIN_DIR=${CNI_BIN_DIR:-/usr/lib/cni}
CNI_BRIDGE=appl-cni0
POD_SUBNET=10.88.0.0/16
CONTAINERD_BIN=$(command -v containerd 2>/dev/null || echo /usr/bin/containerd)
# One node per machine (they would share the bridge, the cgroup and containerd's root): the
# state dir of the running one is recorded here.
NODE_OWNER_FILE=$CACHE_ROOT/node/owner

# A unix socket path must fit in 108 bytes; deep checkouts get a short one under /run instead.
node_socket() {
  local sock=$NODE_DIR/run/containerd.sock
  if ((${#sock} > 100)); then
    sock=/run/appliance-node-$(printf '%s' "$NODE_DIR" | sha256sum | cut -c1-12)/containerd.sock
  fi
  echo "$sock"
}
CONTAINERD_SOCK=$(node_socket)

nlog() { printf '[%s] node: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
ndie() { nlog "ERROR: $*"; exit 1; }

ctr_() { ctr --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"; }

# node_pid NAME -> prints the PID in $NODE_DIR/pids/NAME.pid when it is alive and still runs the
# executable recorded next to it (guards against PID reuse); fails otherwise.
node_pid() {
  local f=$NODE_DIR/pids/$1.pid pid exe want
  [[ -f $f && -f $NODE_DIR/pids/$1.exe ]] || return 1
  pid=$(<"$f")
  want=$(<"$NODE_DIR/pids/$1.exe")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  if [[ $exe != "$want" ]]; then
    # Right after the start the process may still be setsid, about to exec $want.
    local cmdline
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $exe == */setsid && $cmdline == *"$want"* ]] || return 1
  fi
  echo "$pid"
}

# just_started_alive NAME: the process up.sh started moments ago still runs (right after the
# start its exe may still be setsid's, so node_pid's check does not apply yet).
just_started_alive() {
  local f=$NODE_DIR/pids/$1.pid
  [[ -f $f ]] && kill -0 "$(<"$f")" 2>/dev/null
}

# stop_node_process NAME [TIMEOUT]: TERM, wait, then KILL; only a PID node_pid accepts.
stop_node_process() {
  local name=$1 timeout=${2:-20} pid deadline
  if pid=$(node_pid "$name"); then
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + timeout))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      nlog "$name (pid $pid) ignored SIGTERM for ${timeout}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      deadline=$((SECONDS + 10))
      while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    fi
    nlog "stopped $name (pid $pid)"
  fi
  rm -f "$NODE_DIR/pids/$name.pid" "$NODE_DIR/pids/$name.exe"
}

# Mount points at or below one of the given directories, deepest first.
mounts_under() {
  local d
  for d in "$@"; do
    [[ -n $d ]] || continue
    awk -v d="$d" '{ gsub(/\\040/, " ", $2); if ($2 == d || index($2, d "/") == 1) print $2 }' /proc/self/mounts
  done | awk '{ print length($0) " " $0 }' | sort -rn | cut -d' ' -f2- | uniq
}

unmount_under() { # unmount_under DIR...: unmount everything mounted below DIR (lazy as a last resort)
  local m
  while read -r m; do
    [[ -n $m ]] || continue
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || nlog "WARNING: could not unmount $m"
  done < <(mounts_under "$@")
}

# Every pod (and the smoke-test container) runs below this cgroup, in each hierarchy: the
# kubelet's cgroupRoot. down.sh kills what is left in it and removes it, and touches no other
# cgroup (a kubelet of the host's own would use /kubepods).
NODE_CGROUP=/appliance-node

# The directories of $NODE_CGROUP: one per mounted v1 hierarchy, or the one v2 directory.
node_cgroup_dirs() {
  if [[ $(stat -fc %T /sys/fs/cgroup) == cgroup2fs ]]; then
    echo "/sys/fs/cgroup$NODE_CGROUP"
    return
  fi
  local h
  for h in /sys/fs/cgroup/*/; do
    h=${h%/}
    [[ -f $h/cgroup.procs && $(stat -fc %T "$h") == cgroup* ]] && echo "$h$NODE_CGROUP"
  done
}

create_node_cgroup() {
  local d parent
  while read -r d; do
    mkdir -p "$d"
    parent=$(dirname "$d")
    # A new v1 cpuset is empty (no CPUs, no memory nodes) until given its parent's.
    if [[ -f $d/cpuset.cpus && -z $(<"$d/cpuset.cpus") ]]; then
      cat "$parent/cpuset.cpus" >"$d/cpuset.cpus"
      cat "$parent/cpuset.mems" >"$d/cpuset.mems"
    fi
  done < <(node_cgroup_dirs)
}

# PIDs of every process in $NODE_CGROUP or below (in any hierarchy).
node_cgroup_pids() {
  local d
  while read -r d; do
    [[ -d $d ]] && find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null
  done < <(node_cgroup_dirs) | sort -un
}

remove_node_cgroup() { # kill what still runs below $NODE_CGROUP, then remove the (empty) cgroups
  local pids deadline d
  pids=$(node_cgroup_pids)
  if [[ -n $pids ]]; then
    nlog "killing $(wc -w <<<"$pids") process(es) still in $NODE_CGROUP: $(tr '\n' ' ' <<<"$pids")"
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    deadline=$((SECONDS + 10))
    while [[ -n $(node_cgroup_pids) ]] && ((SECONDS < deadline)); do sleep 0.1; done
  fi
  while read -r d; do
    [[ -d $d ]] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
  done < <(node_cgroup_dirs)
  true
}
