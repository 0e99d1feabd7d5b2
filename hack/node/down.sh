#!/usr/bin/env bash
# Stop the node started by hack/node/up.sh and leave nothing behind: the kubelet and containerd
# are stopped by their recorded PIDs (never by name), every pod container and sandbox is
# killed and removed, leftover mounts below the node's directories are unmounted, the pod
# bridge is deleted and the node's state dir removed. The control plane keeps running
# (hack/cluster/down.sh calls this script first). containerd's root (images) is kept.
#
# Usage: hack/node/down.sh
# Environment: KEEP_LOGS=1 keeps $STATE_DIR/node/logs (up.sh uses it after a failed start).
set -euo pipefail
# shellcheck source=hack/node/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ ! -d $NODE_DIR ]]; then
  nlog "no node state in $NODE_DIR; nothing to stop"
  exit 0
fi

# 1. The kubelet first, so it restarts nothing while the pods go away.
stop_node_process kubelet 20

# 2. The pods: kill and remove every container and sandbox in containerd's k8s.io namespace.
if node_pid containerd >/dev/null && [[ -S $CONTAINERD_SOCK ]]; then
  mapfile -t containers < <(timeout 20 ctr --address "$CONTAINERD_SOCK" -n k8s.io containers ls -q 2>/dev/null || true)
  for c in "${containers[@]}"; do
    [[ -n $c ]] || continue
    timeout 10 ctr --address "$CONTAINERD_SOCK" -n k8s.io tasks kill -s KILL "$c" >/dev/null 2>&1 || true
  done
  for c in "${containers[@]}"; do
    [[ -n $c ]] || continue
    timeout 10 ctr --address "$CONTAINERD_SOCK" -n k8s.io tasks rm -f "$c" >/dev/null 2>&1 || true
    timeout 10 ctr --address "$CONTAINERD_SOCK" -n k8s.io containers rm "$c" >/dev/null 2>&1 || true
  done
  ((${#containers[@]} == 0)) || nlog "removed ${#containers[@]} containers (pods and sandboxes)"
  # libcni's result cache of those sandboxes (containerd would drop it on a CNI DEL).
  for c in "${containers[@]}"; do
    [[ -n $c ]] && rm -f /var/lib/cni/results/*-"$c"-*
  done
fi

# 3. containerd. Its shims outlive it, but their tasks were killed above.
stop_node_process containerd 20

# 4. Anything still running in the node's cgroup (pods whose containerd had died, shims'
#    children) is killed by PID; then shims that served our containerd socket.
remove_node_cgroup
for d in /proc/[0-9]*; do
  [[ $(readlink "$d/exe" 2>/dev/null) == */containerd-shim-runc-v2 ]] || continue
  cmdline=$(tr '\0' ' ' <"$d/cmdline" 2>/dev/null) || continue
  if [[ $cmdline == *"-address $CONTAINERD_SOCK "* ]]; then
    nlog "killing shim ${d#/proc/} left over from our containerd"
    kill -KILL "${d#/proc/}" 2>/dev/null || true
  fi
done

# 5. Mounts containerd or the kubelet left (container rootfs, sandbox shm, netns, volumes).
unmount_under "$NODE_DIR" "$CONTAINERD_ROOT"

# 6. Containers' CRI bookkeeping in the persistent root (the images and their snapshots stay).
rm -rf "$CONTAINERD_ROOT/io.containerd.grpc.v1.cri/sandboxes" "$CONTAINERD_ROOT/io.containerd.grpc.v1.cri/containers"

# 7. The pod bridge (the veths went with their network namespaces).
if [[ -e /sys/class/net/$CNI_BRIDGE ]]; then
  if ip link delete "$CNI_BRIDGE" 2>/dev/null; then
    nlog "deleted bridge $CNI_BRIDGE"
  else
    nlog "WARNING: could not delete bridge $CNI_BRIDGE"
  fi
fi

# 8. The kubelet's symlinks in /var/log/containers that point into our pod logs.
if [[ -d /var/log/containers ]]; then
  find /var/log/containers -maxdepth 1 -type l -lname "$NODE_DIR/*" -delete 2>/dev/null || true
fi

# 9. The Node object, when the control plane is still up (hack/node/down.sh alone).
if [[ -f $STATE_DIR/env && -f $STATE_DIR/kubeconfig ]]; then
  # shellcheck disable=SC1091
  bin=$(. "$STATE_DIR/env" && echo "$BIN_DIR")
  "$bin/kubectl" --kubeconfig "$STATE_DIR/kubeconfig" --request-timeout=5s delete node "$NODE_NAME" \
    --ignore-not-found --wait=false >/dev/null 2>&1 || true
fi

still_mounted=$(mounts_under "$NODE_DIR" "$CONTAINERD_ROOT")
[[ -z $still_mounted ]] || { nlog "ERROR: still mounted, not removing $NODE_DIR:"$'\n'"$still_mounted"; exit 1; }
if [[ ${KEEP_LOGS:-} == 1 ]]; then
  find "$NODE_DIR" -mindepth 1 -maxdepth 1 ! -name logs -exec rm -rf {} +
else
  rm -rf "$NODE_DIR"
fi
[[ $(cat "$NODE_OWNER_FILE" 2>/dev/null) == "$NODE_DIR" ]] && rm -f "$NODE_OWNER_FILE"
sock_dir=$(dirname "$CONTAINERD_SOCK")
[[ $sock_dir == /run/appliance-node-* ]] && rm -rf "$sock_dir"
nlog "node stopped"
