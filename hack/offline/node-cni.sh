#!/bin/bash
# The pod network of a kind cluster on a node image built by hack/offline/node-image.sh (kindnetd's
# job; kindnetd is not available there). It runs in a DaemonSet pod on every node (hostNetwork,
# NET_ADMIN; /kind/manifests/default-cni.yaml, applied by `kind create cluster`) and keeps:
#   - /etc/cni/net.d/10-node-cni.conflist: ptp + host-local for this node's spec.podCIDR
#     (containerd picks it up; the node turns Ready)
#   - a route to every other node's podCIDR via that node's InternalIP (proto 200, so stale ones
#     are found and removed)
#   - masquerade for pod traffic that leaves the pod network (chain NODE-CNI-MASQ)
# It reads the nodes with its ServiceAccount (list/watch nodes) and resyncs on every node change
# (kubectl get nodes --watch) and at least every 2 minutes.
set -euo pipefail
CONF=/etc/cni/net.d/10-node-cni.conflist
PROTO=200
NODE=${NODE_NAME:?NODE_NAME must be set (the downward API: spec.nodeName)}
MASQ_STATE=/run/node-cni-masq

log() { echo "node-cni: $*" >&2; }

# kubectl with the pod's ServiceAccount (kubectl has no in-cluster fallback of its own).
SA=/var/run/secrets/kubernetes.io/serviceaccount
export KUBECONFIG=/tmp/node-cni.kubeconfig
printf '%s\n' "apiVersion: v1" "kind: Config" "current-context: sa" \
  "clusters: [{name: sa, cluster: {server: 'https://${KUBERNETES_SERVICE_HOST:?}:${KUBERNETES_SERVICE_PORT:?}', certificate-authority: $SA/ca.crt}}]" \
  "users: [{name: sa, user: {tokenFile: $SA/token}}]" \
  "contexts: [{name: sa, context: {cluster: sa, user: sa}}]" >"$KUBECONFIG"

sync_once() {
  local nodes cidr cidrs want peers line dst via
  nodes=$(kubectl get nodes -o json --request-timeout=30s) || return 1
  cidr=$(jq -r --arg n "$NODE" '.items[] | select(.metadata.name == $n) | .spec.podCIDR // empty' <<<"$nodes")
  [[ -n $cidr ]] || { log "no podCIDR on $NODE yet"; return 0; }
  want=$(jq -c -n --arg cidr "$cidr" '{cniVersion: "0.4.0", name: "node-cni", plugins: [
    {type: "ptp", ipMasq: false, mtu: 1500, ipam: {type: "host-local", dataDir: "/run/cni-ipam-state",
      routes: [{dst: "0.0.0.0/0"}], ranges: [[{subnet: $cidr}]]}},
    {type: "portmap", capabilities: {portMappings: true}}]}')
  if [[ ! -f $CONF || $(<"$CONF") != "$want" ]]; then
    printf '%s' "$want" >"$CONF.tmp"
    mv -f "$CONF.tmp" "$CONF"
    log "CNI config for $cidr written"
  fi
  # Routes to the other nodes' pods.
  peers=$(jq -r --arg n "$NODE" '.items[] | select(.metadata.name != $n and .spec.podCIDR != null)
    | "\(.spec.podCIDR) \(first(.status.addresses[]? | select(.type == "InternalIP") | .address) // "")"' <<<"$nodes")
  while read -r dst via; do
    [[ -n $dst && -n $via ]] || continue
    ip route replace "$dst" via "$via" proto "$PROTO"
  done <<<"$peers"
  while read -r line; do
    dst=${line%% *}
    [[ -n $dst ]] || continue
    if [[ $'\n'$peers != *$'\n'"$dst "* ]]; then
      ip route del "$dst" proto "$PROTO" || true
      log "route to $dst removed"
    fi
  done < <(ip route show proto "$PROTO")
  # Masquerade what leaves the pod network (rebuilt when the set of podCIDRs changes).
  cidrs=$(jq -r '[.items[].spec.podCIDR // empty] | sort | join(" ")' <<<"$nodes")
  if [[ "$cidr $cidrs" != "$(cat "$MASQ_STATE" 2>/dev/null)" ]]; then
    iptables -w -t nat -N NODE-CNI-MASQ 2>/dev/null || iptables -w -t nat -F NODE-CNI-MASQ
    iptables -w -t nat -C POSTROUTING -j NODE-CNI-MASQ 2>/dev/null ||
      iptables -w -t nat -A POSTROUTING -j NODE-CNI-MASQ
    for dst in $cidrs; do iptables -w -t nat -A NODE-CNI-MASQ -d "$dst" -j RETURN; done
    iptables -w -t nat -A NODE-CNI-MASQ -s "$cidr" -j MASQUERADE
    printf '%s' "$cidr $cidrs" >"$MASQ_STATE"
  fi
}

log "started on $NODE"
while true; do
  sync_once || log "sync failed; retrying"
  # Resync on every node event, and at least every 2 minutes.
  timeout 120 kubectl get nodes --watch-only -o name 2>/dev/null |
    while read -r _; do sync_once || log "sync failed; retrying"; done || true
  sleep 1
done
