#!/usr/bin/env bash
# Start a single-node Kubernetes control plane on 127.0.0.1 (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler), optionally with kwok fake nodes. The binaries come
# from hack/offline/cluster-build/build.sh (built once when missing, cached outside the repo).
#
# Usage: hack/cluster/up.sh
# Environment:
#   NODES=kwok            also run a kwok controller and create fake nodes (default: no nodes)
#   KWOK_NODES=3          how many fake nodes with NODES=kwok
#   CLUSTER_START_TIMEOUT seconds to wait for each component to become healthy (default 120)
#   (and those of lib.sh: APPLIANCE_OPERATOR_CACHE, APPLIANCE_OPERATOR_CLUSTER_DIR, GO)
#
# Idempotent: a healthy cluster is left as it is (kwok is added when NODES=kwok asks for it);
# stale state (a dead process) is cleaned and the cluster started afresh.
# The admin kubeconfig is written to $STATE_DIR/kubeconfig (default <repo>/.cluster/kubeconfig).
set -euo pipefail
# shellcheck source=hack/cluster/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NODES=${NODES:-}
KWOK_NODES=${KWOK_NODES:-3}
TIMEOUT=${CLUSTER_START_TIMEOUT:-120}
SERVICE_CIDR=10.0.0.0/24
SERVICE_IP=10.0.0.1 # first address of SERVICE_CIDR: the `kubernetes` Service
case $NODES in "" | none | kwok) ;; *) die "NODES must be empty, 'none' or 'kwok' (got '$NODES')" ;; esac
[[ $KWOK_NODES =~ ^[0-9]+$ ]] || die "KWOK_NODES must be a number (got '$KWOK_NODES')"

PKI=$STATE_DIR/pki
KUBECONFIG_ADMIN=$STATE_DIR/kubeconfig
t0=$SECONDS
step() { log "$* (t+$((SECONDS - t0))s)"; }

kubectl() { "$BIN_DIR/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

# --- processes --------------------------------------------------------------------------
start() { # start NAME ARGS...: run $BIN_DIR/NAME in its own session, log and pid in the state dir
  local name=$1
  shift
  setsid "$BIN_DIR/$name" "$@" >"$STATE_DIR/logs/$name.log" 2>&1 </dev/null &
  local pid=$! deadline=$((SECONDS + 10))
  echo "$pid" >"$STATE_DIR/pids/$name.pid"
  # Until the forked shell has exec'd setsid and setsid the binary, /proc/PID/exe is not ours and
  # pid_alive says "not running": a health check right away would report "exited while
  # starting" with an empty log (a flake seen when the machine was busy, e.g. right after
  # cluster-down). Wait for the exec (or the process's end, which wait_healthy reports).
  while [[ $(readlink "/proc/$pid/exe" 2>/dev/null) != "$BIN_DIR/$name"* ]]; do
    kill -0 "$pid" 2>/dev/null || break
    ((SECONDS < deadline)) || break
    sleep 0.02
  done
  step "started $name (pid $pid, log $STATE_DIR/logs/$name.log)"
}

fail() { # fail NAME MESSAGE: show the component's last log lines, stop everything, exit 1
  local name=$1
  shift
  log "ERROR: $*"
  if [[ -f $STATE_DIR/logs/$name.log ]]; then
    log "last lines of $STATE_DIR/logs/$name.log:"
    tail -n 40 "$STATE_DIR/logs/$name.log" >&2 || true
  fi
  log "stopping what was started; logs are kept in $STATE_DIR/logs (the next up.sh cleans them)"
  stop_all
  exit 1
}

wait_healthy() { # wait_healthy NAME CURL_ARGS...: poll until curl succeeds, the process dies, or timeout
  local name=$1 deadline=$((SECONDS + TIMEOUT))
  shift
  while true; do
    pid_alive "$name" || fail "$name" "$name exited while starting"
    curl -fsS --max-time 3 -o /dev/null "$@" 2>/dev/null && break
    ((SECONDS < deadline)) || fail "$name" "$name not healthy after ${TIMEOUT}s ($*)"
    sleep 0.3
  done
  step "$name is healthy"
}

wait_cmd() { # wait_cmd WHAT NAME CMD...: poll CMD until it succeeds (NAME: the component to blame)
  local what=$1 name=$2 deadline=$((SECONDS + TIMEOUT))
  shift 2
  until "$@" >/dev/null 2>&1; do
    pid_alive "$name" || fail "$name" "$name exited while waiting for $what"
    ((SECONDS < deadline)) || fail "$name" "timed out after ${TIMEOUT}s waiting for $what"
    sleep 0.3
  done
  step "$what"
}

apiserver_ready() {
  [[ -f $STATE_DIR/env ]] || return 1
  # shellcheck disable=SC1091
  (. "$STATE_DIR/env" && curl -fsS --max-time 3 --cacert "$PKI/ca.crt" "https://127.0.0.1:$APISERVER_PORT/readyz" >/dev/null 2>&1)
}

control_plane_alive() {
  local c
  for c in etcd kube-apiserver kube-controller-manager kube-scheduler; do pid_alive "$c" || return 1; done
  apiserver_ready
}

# --- certificates and kubeconfigs -------------------------------------------------------
new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

new_ca() { # new_ca NAME CN: self-signed CA key + certificate
  new_key "$PKI/$1.key"
  openssl req -x509 -new -key "$PKI/$1.key" -sha256 -days 3650 -subj "/CN=$2" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$PKI/$1.crt"
}

sign_cert() { # sign_cert CA NAME SUBJECT EXTENSIONS: key + certificate signed by CA
  local ca=$1 name=$2 subj=$3 ext=$4
  new_key "$PKI/$name.key"
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr"
  printf '%b\n' "$ext" >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 3650 -sha256 \
    -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

gen_pki() {
  mkdir -p "$PKI"
  new_ca ca appliance-operator-local-ca
  local client="basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth"
  sign_cert ca apiserver "/CN=kube-apiserver" \
    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,IP:$SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  sign_cert ca admin "/O=system:masters/CN=kubernetes-admin" "$client"
  sign_cert ca kube-controller-manager "/CN=system:kube-controller-manager" "$client"
  sign_cert ca kube-scheduler "/CN=system:kube-scheduler" "$client"
  sign_cert ca apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
  # Aggregation layer: the apiserver's front-proxy client identity and the CA components trust for it.
  new_ca front-proxy-ca appliance-operator-front-proxy-ca
  sign_cert front-proxy-ca front-proxy-client "/CN=front-proxy-client" "$client"
  # Service-account token signing key pair.
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI/sa.key" 2>/dev/null
  openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"
  chmod 600 "$PKI"/*.key
}

write_kubeconfig() { # write_kubeconfig FILE CERT_NAME USER: self-contained (certs embedded)
  local file=$1 cert=$2 user=$3
  b64() { base64 -w0 "$1"; }
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: appliance-local
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(b64 "$PKI/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(b64 "$PKI/$cert.crt")
    client-key-data: $(b64 "$PKI/$cert.key")
contexts:
- name: appliance-local
  context:
    cluster: appliance-local
    user: $user
current-context: appliance-local
EOF
  chmod 600 "$file"
}

# --- kwok fake nodes ----------------------------------------------------------------------
start_kwok() {
  [[ -f $BIN_DIR/kwok-stages.yaml ]] || die "missing $BIN_DIR/kwok-stages.yaml; re-run hack/offline/cluster-build/build.sh"
  # Nodes annotated kwok.x-k8s.io/node=fake are kwok's; pods bound to them get fake IPs from --cidr
  # (no traffic is ever sent to them).
  start kwok --kubeconfig="$KUBECONFIG_ADMIN" --config="$BIN_DIR/kwok-stages.yaml" \
    --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --manage-nodes-with-label-selector= \
    --node-lease-duration-seconds=40 \
    --cidr=10.244.0.1/16 --node-ip=10.244.0.1 \
    --server-address="127.0.0.1:$KWOK_PORT"
  wait_healthy kwok "http://127.0.0.1:$KWOK_PORT/healthz"
  local i
  for ((i = 0; i < KWOK_NODES; i++)); do
    cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    kubernetes.io/arch: amd64
    kubernetes.io/os: linux
    kubernetes.io/hostname: kwok-node-$i
    kubernetes.io/role: agent
    node-role.kubernetes.io/agent: ""
spec:
  # Keep pods that do not ask for it off fake nodes (kwok's recommendation): a pod meant for
  # kwok needs this toleration (and nodeSelector type=kwok).
  taints:
  - key: kwok.x-k8s.io/node
    value: fake
    effect: NoSchedule
status:
  allocatable: {cpu: "32", memory: 256Gi, pods: "110"}
  capacity: {cpu: "32", memory: 256Gi, pods: "110"}
EOF
  done | kubectl apply -f - >/dev/null
  if ((KWOK_NODES > 0)); then
    wait_cmd "$KWOK_NODES kwok node(s) Ready" kwok kubectl wait --for=condition=Ready node -l type=kwok --timeout=5s
  fi
}

print_usage() {
  cat <<EOF

Kubernetes $KUBE_VERSION control plane is up on 127.0.0.1 (state: $STATE_DIR).
  export KUBECONFIG=$KUBECONFIG_ADMIN
  export PATH=$BIN_DIR:\$PATH   # kubectl, helm, kwok at the pinned versions
  kubectl get --raw /readyz
Stop it with: bash hack/cluster/down.sh   (or: make cluster-down)
EOF
}

# --- main ---------------------------------------------------------------------------------
if [[ -d $STATE_DIR ]]; then
  if control_plane_alive; then
    # shellcheck disable=SC1091
    . "$STATE_DIR/env"
    if [[ $NODES == kwok ]] && ! pid_alive kwok; then
      step "control plane already up; adding kwok nodes"
      start_kwok
    else
      step "cluster already up and healthy; nothing to do"
    fi
    print_usage
    exit 0
  fi
  step "found stale cluster state in $STATE_DIR; cleaning it"
  stop_all
  rm -rf "$STATE_DIR"
fi

BIN_DIR=$(bash "$CLUSTER_BUILD_DIR/build.sh")
step "binaries: $BIN_DIR"

mkdir -p "$STATE_DIR"/{pids,logs,kubeconfigs,etcd,cert-dirs}
echo '*' >"$STATE_DIR/.gitignore" # the state dir ignores itself
read -r ETCD_PORT ETCD_PEER_PORT APISERVER_PORT KCM_PORT SCHEDULER_PORT KWOK_PORT < <(free_ports 6)
cat >"$STATE_DIR/env" <<EOF
BIN_DIR=$BIN_DIR
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
APISERVER_PORT=$APISERVER_PORT
KCM_PORT=$KCM_PORT
SCHEDULER_PORT=$SCHEDULER_PORT
KWOK_PORT=$KWOK_PORT
EOF

gen_pki
write_kubeconfig "$KUBECONFIG_ADMIN" admin kubernetes-admin
write_kubeconfig "$STATE_DIR/kubeconfigs/kube-controller-manager.conf" kube-controller-manager system:kube-controller-manager
write_kubeconfig "$STATE_DIR/kubeconfigs/kube-scheduler.conf" kube-scheduler system:kube-scheduler
step "generated certificates and kubeconfigs"

start etcd --name=default --data-dir="$STATE_DIR/etcd" \
  --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster="default=http://127.0.0.1:$ETCD_PEER_PORT" \
  --unsafe-no-fsync --log-level=warn
wait_healthy etcd "http://127.0.0.1:$ETCD_PORT/health"

# --endpoint-reconciler-type=none: the only address is loopback, which Endpoints may not hold.
start kube-apiserver \
  --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
  --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$APISERVER_PORT" \
  --endpoint-reconciler-type=none \
  --cert-dir="$STATE_DIR/cert-dirs/kube-apiserver" \
  --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
  --client-ca-file="$PKI/ca.crt" \
  --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
  --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" --requestheader-allowed-names=front-proxy-client \
  --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
  --requestheader-extra-headers-prefix=X-Remote-Extra- \
  --proxy-client-cert-file="$PKI/front-proxy-client.crt" --proxy-client-key-file="$PKI/front-proxy-client.key" \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
  --authorization-mode=Node,RBAC \
  --enable-admission-plugins=NodeRestriction \
  --allow-privileged=true \
  --profiling=false
wait_healthy kube-apiserver --cacert "$PKI/ca.crt" "https://127.0.0.1:$APISERVER_PORT/readyz"

KCM_CONF=$STATE_DIR/kubeconfigs/kube-controller-manager.conf
start kube-controller-manager \
  --kubeconfig="$KCM_CONF" --authentication-kubeconfig="$KCM_CONF" --authorization-kubeconfig="$KCM_CONF" \
  --bind-address=127.0.0.1 --secure-port="$KCM_PORT" --cert-dir="$STATE_DIR/cert-dirs/kube-controller-manager" \
  --leader-elect=false \
  --controllers='*,-nodeipam' \
  --use-service-account-credentials=true \
  --root-ca-file="$PKI/ca.crt" \
  --service-account-private-key-file="$PKI/sa.key" \
  --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --cluster-name=appliance-local \
  --profiling=false

SCHED_CONF=$STATE_DIR/kubeconfigs/kube-scheduler.conf
start kube-scheduler \
  --kubeconfig="$SCHED_CONF" --authentication-kubeconfig="$SCHED_CONF" --authorization-kubeconfig="$SCHED_CONF" \
  --bind-address=127.0.0.1 --secure-port="$SCHEDULER_PORT" --cert-dir="$STATE_DIR/cert-dirs/kube-scheduler" \
  --leader-elect=false \
  --profiling=false

wait_healthy kube-controller-manager -k "https://127.0.0.1:$KCM_PORT/healthz"
wait_healthy kube-scheduler -k "https://127.0.0.1:$SCHEDULER_PORT/healthz"
# The controllers are really working once the default ServiceAccount exists.
wait_cmd "controllers working (default ServiceAccount exists)" kube-controller-manager \
  kubectl -n default get serviceaccount default

if [[ $NODES == kwok ]]; then
  start_kwok
fi

step "cluster is up"
print_usage
