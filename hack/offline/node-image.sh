#!/usr/bin/env bash
# Assemble a kind node image locally, where kindest/node cannot be pulled (no registry) and
# `kind build node-image` cannot run (it always pulls etcd, CoreDNS, pause, kindnetd and
# local-path images). Cached by the hash of its inputs; a warm machine only checks the tag.
#
#   rootfs      debootstrap <suite> + systemd, containerd, runc, CNI plugins, iptables, ...,
#               laid out as kind's base image is (kind's own files, images/base/files of the
#               sigs.k8s.io/kind module in the Go module cache, used here and never copied
#               into this repository)                                   (cold ~2-3 min; cached)
#   binaries    kubeadm, kubelet, kubectl (hack/offline/cluster-build/build.sh), crictl (hack/offline/tools.sh)
#   images      kube-apiserver, -controller-manager, -scheduler, kube-proxy, etcd, CoreDNS,
#               pause: built here from the same binaries (images/oci.py) and preloaded into
#               the node's containerd under the names kubeadm asks for, so nothing is pulled
#   CNI         kindnetd is not available: hack/offline/node-cni.sh in a DaemonSet (its image built
#               here too) writes a ptp CNI config for the node's podCIDR and routes to the other
#               nodes' podCIDRs
#   policies    that pod network enforces no NetworkPolicy: kube-router's firewall alone
#               (--run-router=false --run-service-proxy=false: iptables + ipset) in a DaemonSet
#               (its binary from hack/offline/tools.sh, its image built here) does
#
# Usage: hack/offline/node-image.sh            build/import what is missing; print the image name
#        hack/offline/node-image.sh --name     print the image name (computed; builds nothing)
# Needs root (debootstrap, chroot, a temporary containerd), Docker (hack/offline/dockerd.sh up),
# and the Go toolchain once (the binaries).
set -euo pipefail
# shellcheck source=hack/kind/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../kind/lib.sh"
use_docker

ROOTFS_PACKAGES=systemd,dbus,containerd,runc,containernetworking-plugins,iptables,ipset,nftables,jq,kmod,conntrack,iproute2,ethtool,mount,libseccomp2,pigz,ca-certificates,procps,e2fsprogs,socat,curl
IMAGE_REPO=appliance-operator/kind-node
t0=$SECONDS
step() { log "node image: $* (t+$((SECONDS - t0))s)"; }


# --- cache keys ---------------------------------------------------------------------------
recipe() { sed -n "/^$1()/,/^}/p" "$0"; }
ROOTFS_KEY=$(printf '%s\n' "$NODE_SUITE" "$ROOTFS_PACKAGES" "$KIND_VERSION" "$(uname -m)" \
  "$(recipe build_rootfs)" | sha256sum | cut -c1-16)
NODE_KEY=$(
  {
    echo "$ROOTFS_KEY"
    grep -hE '^[A-Z_]+=' "$KIND_DIR/versions.env" "$OFFLINE_DIR/versions.env" "$CLUSTER_BUILD_DIR/versions.env"
    cluster_key
    cat "$OFFLINE_DIR/node-cni.sh" "$REPO_ROOT/images/oci.py" "$REPO_ROOT/images/pause/pause.c"
    cat "$0"
  } | sha256sum | cut -c1-16
)
NODE_IMAGE=$IMAGE_REPO:$KUBE_VERSION-$NODE_KEY
NODE_CNI_IMAGE=localhost/appliance-operator/node-cni:$NODE_KEY
KUBE_ROUTER_IMAGE=localhost/appliance-operator/kube-router:$KUBE_ROUTER_VERSION-$NODE_KEY
if [[ ${1:-} == --name ]]; then echo "$NODE_IMAGE"; exit 0; fi
[[ -z ${1:-} ]] || die "unknown argument: $1 (see the header of $0)"

if docker image inspect "$NODE_IMAGE" >/dev/null 2>&1; then
  echo "$NODE_IMAGE"
  exit 0
fi
[[ $(id -u) == 0 ]] || die "building the kind node image needs root (debootstrap, chroot, containerd)"
ensure_debs /usr/sbin/debootstrap=debootstrap /usr/bin/gcc=gcc \
  "/usr/lib/$(gcc -dumpmachine 2>/dev/null || echo x86_64-linux-gnu)/libc.a=libc6-dev" \
  /usr/bin/unshare=util-linux

mkdir -p "$KIND_CACHE"
exec 8>"$KIND_CACHE/node-image.lock"
flock -w 3600 8 || die "timed out waiting for $KIND_CACHE/node-image.lock"
if docker image inspect "$NODE_IMAGE" >/dev/null 2>&1; then echo "$NODE_IMAGE"; exit 0; fi
WORK=$(mktemp -d "$KIND_CACHE/.work.XXXXXX")
cleanup() {
  [[ -n ${CONTAINERD_PID:-} ]] && kill "$CONTAINERD_PID" 2>/dev/null && wait "$CONTAINERD_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
ROOTFS_TAR=$KIND_CACHE/rootfs-$ROOTFS_KEY.tar

# --- rootfs: Debian + systemd + containerd, as kind's base image -------------------------
build_rootfs() {
  local root=$WORK/rootfs kind_files
  kind_files=$(kind_module_dir)/images/base/files
  [[ -f $kind_files/usr/local/bin/entrypoint ]] || die "no kind base files in $kind_files"
  step "debootstrap $NODE_SUITE with systemd, containerd, runc, CNI plugins, iptables (cold: minutes)"
  mkdir -p "$KIND_CACHE/debs"
  if ! unshare --mount --propagation private -- debootstrap --variant=minbase \
    --include="$ROOTFS_PACKAGES" --cache-dir="$KIND_CACHE/debs" \
    "$NODE_SUITE" "$root" ${DEBOOTSTRAP_MIRROR:+"$DEBOOTSTRAP_MIRROR"} >"$WORK/debootstrap.log" 2>&1; then
    tail -n 30 "$WORK/debootstrap.log" >&2
    [[ -f $root/debootstrap/debootstrap.log ]] && tail -n 30 "$root/debootstrap/debootstrap.log" >&2
    die "debootstrap failed (log above); it needs Debian's package mirror"
  fi
  step "kind's base files and services"
  install -m 0755 "$kind_files"/usr/local/bin/* "$root/usr/local/bin/"
  mkdir -p "$root/kind/bin" "$root/LICENSES" "$root/etc/containerd" "$root/etc/kubernetes/manifests"
  cp -r "$kind_files/kind/." "$root/kind/"
  chmod 0755 "$root/kind" "$root/kind/bin" "$root"/kind/bin/*
  cp "$kind_files"/LICENSES/* "$root/LICENSES/"
  cp "$kind_files"/etc/crictl.yaml "$root/etc/"
  cp "$kind_files"/etc/default/kubelet "$root/etc/default/"
  cp "$kind_files"/etc/sysctl.d/* "$root/etc/sysctl.d/"
  cp "$kind_files"/etc/systemd/system/*.service "$kind_files"/etc/systemd/system/*.slice "$root/etc/systemd/system/"
  mkdir -p "$root/etc/systemd/system/kubelet.service.d"
  cp "$kind_files"/etc/systemd/system/kubelet.service.d/* "$root/etc/systemd/system/kubelet.service.d/"
  # containerd: kind's config, with restrict_oom_score_adj (a sandbox without CAP_SYS_RESOURCE
  # cannot lower oom_score_adj: "can't get final child's PID from pipe: EOF" otherwise).
  sed 's/^\(\s*restrict_oom_score_adj\s*=\s*\).*/\1true/' "$kind_files/etc/containerd/config.toml" \
    >"$root/etc/containerd/config.toml"
  grep -q 'restrict_oom_score_adj = true' "$root/etc/containerd/config.toml" ||
    die "kind's containerd config has no restrict_oom_score_adj line to set"
  # kind's units run containerd from /usr/local/bin; Debian installs it in /usr/bin.
  for b in containerd containerd-shim-runc-v2 ctr; do ln -sf "/usr/bin/$b" "$root/usr/local/bin/$b"; done
  # The CNI plugins where containerd looks for them.
  mkdir -p "$root/opt/cni"
  ln -sfn /usr/lib/cni "$root/opt/cni/bin"
  # What kind's Dockerfile does after installing its packages.
  chroot "$root" /bin/sh -euc '
    find /lib/systemd/system/sysinit.target.wants/ -name systemd-tmpfiles-setup.service -delete
    rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* \
      /lib/systemd/system/local-fs.target.wants/* /lib/systemd/system/sockets.target.wants/*udev* \
      /lib/systemd/system/sockets.target.wants/*initctl* /lib/systemd/system/basic.target.wants/*
    echo ReadKMsg=no >>/etc/systemd/journald.conf
    ln -sf /usr/lib/systemd/systemd /sbin/init
    systemctl enable kubelet.service containerd.service undo-mount-hacks.service
    systemctl mask systemd-binfmt.service
    ctr oci spec \
      | jq ".hooks.createContainer[.hooks.createContainer | length] |= . + {\"path\": \"/kind/bin/mount-product-files.sh\"}" \
      | jq "del(.process.rlimits)" >/etc/containerd/cri-base.json
  '
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
    "$root"/var/log/* "$root"/debootstrap "$root"/etc/hostname "$root"/etc/resolv.conf \
    "$root"/etc/machine-id "$root"/var/lib/containerd/*
  step "packing the rootfs"
  tar --numeric-owner --xattrs --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
    --exclude='./run/*' --exclude='./tmp/*' -C "$root" -cf "$ROOTFS_TAR.partial" .
  mv -f "$ROOTFS_TAR.partial" "$ROOTFS_TAR"
  rm -rf "$root"
}

# --- the control plane's images ------------------------------------------------------------
# copy_progs ROOT DEST FILE...: FILEs of ROOT (programs, shared objects) into DEST, with the
# shared libraries they load (ldd, run in ROOT).
copy_progs() {
  local root=$1 dest=$2 f lib
  shift 2
  for f in "$@"; do
    mkdir -p "$dest$(dirname "$f")"
    cp -L "$root$f" "$dest$f"
    for lib in $(chroot "$root" ldd "$f" 2>/dev/null | grep -oE '/[^ ]+' | sort -u); do
      [[ -e $dest$lib ]] && continue
      mkdir -p "$dest$(dirname "$lib")"
      cp -L "$root$lib" "$dest$lib"
    done
  done
}

# layer_of DIR TAR: a reproducible layer of DIR's content (root-owned)
layer_of() { tar --sort=name --numeric-owner --owner=0 --group=0 --mtime=@0 -C "$1" -cf "$2" .; }

# image NAME CONFIG_JSON LAYER...: an OCI archive $WORK/images/<n>.tar
image() {
  local name=$1 config=$2 n
  shift 2
  n=$(printf '%s' "$name" | tr '/:' '__')
  printf '%s' "$config" >"$WORK/images/$n.json"
  local args=() layer
  for layer in "$@"; do args+=(--layer "$layer"); done
  python3 "$REPO_ROOT/images/oci.py" --name "$name" --config "$WORK/images/$n.json" "${args[@]}" \
    --output "$WORK/images/$n.tar"
}

build_images() {
  local bin=$1 root=$2 l=$WORK/layers reg=registry.k8s.io
  mkdir -p "$l" "$WORK/images"
  local path='"Env":["PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin"]'
  # A base layer: /tmp, /etc/passwd and /etc/group with root and nobody, CA certificates.
  mkdir -p "$l/base/tmp" "$l/base/etc/ssl/certs"
  chmod 1777 "$l/base/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' >"$l/base/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$l/base/etc/group"
  cp "$root/etc/ssl/certs/ca-certificates.crt" "$l/base/etc/ssl/certs/"
  layer_of "$l/base" "$l/base.tar"
  for c in kube-apiserver kube-controller-manager kube-scheduler; do
    mkdir -p "$l/$c/usr/local/bin"
    cp "$bin/$c" "$l/$c/usr/local/bin/"
    layer_of "$l/$c" "$l/$c.tar"
    image "$reg/$c:$KUBE_VERSION" "{$path}" "$l/base.tar" "$l/$c.tar"
  done
  mkdir -p "$l/etcd/usr/local/bin" "$l/etcd/var/lib/etcd"
  cp "$bin/etcd" "$l/etcd/usr/local/bin/"
  layer_of "$l/etcd" "$l/etcd.tar"
  image "$reg/etcd:$ETCD_IMAGE_TAG" "{$path}" "$l/base.tar" "$l/etcd.tar"
  mkdir -p "$l/coredns"
  cp "$KIND_BIN_DIR/coredns" "$l/coredns/coredns"
  layer_of "$l/coredns" "$l/coredns.tar"
  image "$reg/coredns/coredns:$COREDNS_VERSION" '{"Entrypoint":["/coredns"],"ExposedPorts":{"53/tcp":{},"53/udp":{}}}' \
    "$l/base.tar" "$l/coredns.tar"
  mkdir -p "$l/pause"
  gcc -static -Os -s -o "$l/pause/pause" "$REPO_ROOT/images/pause/pause.c"
  layer_of "$l/pause" "$l/pause.tar"
  image "$reg/pause:$PAUSE_TAG" '{"Entrypoint":["/pause"],"User":"65535:65535"}' "$l/pause.tar"
  # kube-proxy: its binary, the iptables and nft userland of the node (with their libraries and
  # xtables modules) and a dash-only wrapper that picks the backend the node uses, as the
  # upstream image's iptables-wrapper does.
  local kp=$l/kube-proxy mods
  mkdir -p "$kp/usr/sbin" "$kp/bin" "$kp/run" "$kp/var/lib/iptables"
  mods=$(cd "$root" && ls -d usr/lib/*/xtables)
  copy_progs "$root" "$kp" /usr/sbin/xtables-legacy-multi /usr/sbin/xtables-nft-multi /usr/sbin/nft \
    /usr/sbin/conntrack /usr/bin/dash /usr/bin/ln "/$mods"/*.so
  ln -s /usr/bin/dash "$kp/bin/sh"
  cat >"$kp/usr/sbin/iptables-wrapper" <<'WRAPPER'
#!/bin/sh
# Point iptables* at the backend (legacy or nft) that holds the node's rules, then run it.
count() { n=0; while read -r line; do case $line in -*) n=$((n + 1)) ;; esac; done; echo "$n"; }
legacy=$( (xtables-legacy-multi iptables-save; xtables-legacy-multi ip6tables-save) 2>/dev/null | count)
nft=$( (xtables-nft-multi iptables-save; xtables-nft-multi ip6tables-save) 2>/dev/null | count)
mode=nft
[ "$legacy" -gt "$nft" ] && mode=legacy
for cmd in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
  ln -sf "xtables-$mode-multi" "/usr/sbin/$cmd"
done
exec "$0" "$@"
WRAPPER
  chmod 0755 "$kp/usr/sbin/iptables-wrapper"
  for cmd in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    ln -s iptables-wrapper "$kp/usr/sbin/$cmd"
  done
  layer_of "$kp" "$l/iptables.tar"
  mkdir -p "$l/kube-proxy-bin/usr/local/bin"
  cp "$bin/kube-proxy" "$l/kube-proxy-bin/usr/local/bin/"
  layer_of "$l/kube-proxy-bin" "$l/kube-proxy.tar"
  image "$reg/kube-proxy:$KUBE_VERSION" "{$path}" "$l/base.tar" "$l/iptables.tar" "$l/kube-proxy.tar"
  # node-cni (the pod network, hack/offline/node-cni.sh): the iptables layer + bash, jq, ip,
  # kubectl and the few coreutils the script uses.
  local nc=$l/node-cni
  copy_progs "$root" "$nc" /usr/bin/bash /usr/bin/jq /usr/sbin/ip /usr/bin/mv /usr/bin/cat \
    /usr/bin/timeout /usr/bin/sleep
  mkdir -p "$nc/usr/local/bin" "$nc/etc/cni/net.d" "$nc/bin"
  ln -s /usr/bin/bash "$nc/bin/bash"
  cp "$bin/kubectl" "$nc/usr/local/bin/"
  install -m 0755 "$OFFLINE_DIR/node-cni.sh" "$nc/usr/local/bin/node-cni"
  layer_of "$nc" "$l/node-cni.tar"
  image "$NODE_CNI_IMAGE" '{"Entrypoint":["/usr/local/bin/node-cni"],'"$path"'}' \
    "$l/base.tar" "$l/iptables.tar" "$l/node-cni.tar"
  # kube-router (its firewall: NetworkPolicy with iptables and ipset): the iptables layer, the
  # node's ipset, and kube-router.
  local kr=$l/kube-router
  copy_progs "$root" "$kr" /usr/sbin/ipset
  mkdir -p "$kr/usr/local/bin"
  cp "$KUBE_ROUTER" "$kr/usr/local/bin/"
  layer_of "$kr" "$l/kube-router.tar"
  image "$KUBE_ROUTER_IMAGE" '{"Entrypoint":["/usr/local/bin/kube-router"],'"$path"'}' \
    "$l/base.tar" "$l/iptables.tar" "$l/kube-router.tar"
}

# --- the node: rootfs + binaries + preloaded images + CNI -> docker import -----------------
build_node() {
  local bin=$1 root=$2 sock=$WORK/containerd.sock
  for b in kubeadm kubelet kubectl; do install -m 0755 "$bin/$b" "$root/usr/bin/$b"; done
  install -m 0755 "$KIND_BIN_DIR/crictl" "$root/usr/local/bin/crictl"
  # The CNI: kind applies /kind/manifests/default-cni.yaml when the cluster uses the default CNI.
  mkdir -p "$root/kind/manifests"
  sed -e "s|@NODE_CNI_IMAGE@|$NODE_CNI_IMAGE|" -e "s|@KUBE_ROUTER_IMAGE@|$KUBE_ROUTER_IMAGE|" \
    >"$root/kind/manifests/default-cni.yaml" <<'MANIFEST'
# The pod network of this node image (hack/offline/node-cni.sh in the repository that built it):
# per node, a ptp CNI config for its podCIDR and routes to the other nodes' podCIDRs.
apiVersion: v1
kind: ServiceAccount
metadata:
  name: node-cni
  namespace: kube-system
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: node-cni
rules:
- apiGroups: [""]
  resources: [nodes]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: node-cni
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: node-cni
subjects:
- kind: ServiceAccount
  name: node-cni
  namespace: kube-system
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: node-cni
  namespace: kube-system
  labels: {app: node-cni}
spec:
  selector:
    matchLabels: {app: node-cni}
  template:
    metadata:
      labels: {app: node-cni}
    spec:
      serviceAccountName: node-cni
      hostNetwork: true
      priorityClassName: system-node-critical
      tolerations:
      - operator: Exists
      containers:
      - name: node-cni
        image: @NODE_CNI_IMAGE@
        imagePullPolicy: Never
        env:
        - name: NODE_NAME
          valueFrom:
            fieldRef: {fieldPath: spec.nodeName}
        securityContext:
          capabilities:
            add: [NET_ADMIN, NET_RAW]
        resources:
          requests: {cpu: 10m, memory: 20Mi}
        volumeMounts:
        - {name: cni-conf, mountPath: /etc/cni/net.d}
        - {name: xtables-lock, mountPath: /run/xtables.lock}
      volumes:
      - name: cni-conf
        hostPath: {path: /etc/cni/net.d, type: DirectoryOrCreate}
      - name: xtables-lock
        hostPath: {path: /run/xtables.lock, type: FileOrCreate}
---
# NetworkPolicy: the pod network above enforces none; kube-router's firewall (alone: no
# routing, no service proxy) does, with iptables rules and ipsets on every node.
apiVersion: v1
kind: ServiceAccount
metadata:
  name: kube-router-firewall
  namespace: kube-system
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: kube-router-firewall
rules:
# What its informers list and watch (it starts them all, whichever part runs).
- apiGroups: [""]
  resources: [pods, namespaces, nodes, services, endpoints]
  verbs: [get, list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: kube-router-firewall
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: kube-router-firewall
subjects:
- kind: ServiceAccount
  name: kube-router-firewall
  namespace: kube-system
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: kube-router-firewall
  namespace: kube-system
  labels: {app: kube-router-firewall}
spec:
  selector:
    matchLabels: {app: kube-router-firewall}
  template:
    metadata:
      labels: {app: kube-router-firewall}
    spec:
      serviceAccountName: kube-router-firewall
      hostNetwork: true
      priorityClassName: system-node-critical
      tolerations:
      - operator: Exists
      containers:
      - name: kube-router
        image: @KUBE_ROUTER_IMAGE@
        imagePullPolicy: Never
        args:
        - --run-firewall=true
        - --run-router=false
        - --run-service-proxy=false
        - --hostname-override=$(NODE_NAME)
        - --service-cluster-ip-range=10.96.0.0/16
        - --metrics-port=0
        env:
        - name: NODE_NAME
          valueFrom:
            fieldRef: {fieldPath: spec.nodeName}
        securityContext:
          privileged: true
        readinessProbe:
          httpGet: {host: 127.0.0.1, port: 20244, path: /healthz}
          periodSeconds: 5
        resources:
          requests: {cpu: 10m, memory: 30Mi}
        volumeMounts:
        - {name: xtables-lock, mountPath: /run/xtables.lock}
        - {name: lib-modules, mountPath: /lib/modules, readOnly: true}
      volumes:
      - name: xtables-lock
        hostPath: {path: /run/xtables.lock, type: FileOrCreate}
      - name: lib-modules
        hostPath: {path: /lib/modules, type: DirectoryOrCreate}
MANIFEST
  # No local-path provisioner image here: a default StorageClass for static volumes only.
  cat >"$root/kind/manifests/default-storage.yaml" <<'MANIFEST'
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
MANIFEST
  printf '%s\n' "$KUBE_VERSION" >"$root/kind/version"
  step "preloading the images into the node's containerd"
  cat >"$WORK/containerd.toml" <<TOML
version = 2
root = "$root/var/lib/containerd"
state = "$WORK/containerd-state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$sock"
TOML
  "$root/usr/bin/containerd" --config "$WORK/containerd.toml" >"$WORK/containerd.log" 2>&1 &
  CONTAINERD_PID=$!
  local deadline=$((SECONDS + 30))
  until "$root/usr/bin/ctr" -a "$sock" version >/dev/null 2>&1; do
    kill -0 "$CONTAINERD_PID" 2>/dev/null || { cat "$WORK/containerd.log" >&2; die "containerd exited"; }
    ((SECONDS < deadline)) || die "containerd did not start in 30 s"
    sleep 0.2
  done
  for a in "$WORK"/images/*.tar; do
    "$root/usr/bin/ctr" -a "$sock" -n k8s.io images import --label=io.cri-containerd.pinned=pinned \
      --all-platforms --no-unpack --digests "$a" >/dev/null
  done
  # `--digests` also names each image import-<date>@sha256:...: keep only the real names.
  "$root/usr/bin/ctr" -a "$sock" -n k8s.io images ls -q | grep '^import-' |
    xargs -r "$root/usr/bin/ctr" -a "$sock" -n k8s.io images rm >/dev/null
  "$root/usr/bin/ctr" -a "$sock" -n k8s.io images ls -q | sed 's/^/  preloaded: /' >&2
  kill "$CONTAINERD_PID"; wait "$CONTAINERD_PID" 2>/dev/null || true
  CONTAINERD_PID=
  step "docker import $NODE_IMAGE"
  # `docker import` cannot set STOPSIGNAL: a one-line build on top of the import does.
  local imported=$IMAGE_REPO:import-$NODE_KEY
  tar --numeric-owner --xattrs -C "$root" -c . |
    docker import --message "kind node $KUBE_VERSION, assembled by hack/offline/node-image.sh" - "$imported" >/dev/null
  printf '%s\n' "FROM $imported" 'ENV container=docker' 'STOPSIGNAL SIGRTMIN+3' \
    'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' |
    docker build -q -t "$NODE_IMAGE" - >/dev/null
  docker rmi "$imported" >/dev/null
}

[[ -f $ROOTFS_TAR ]] || build_rootfs
step "binaries (hack/offline/cluster-build/build.sh, hack/offline/tools.sh)"
BIN=$(bash "$CLUSTER_BUILD_DIR/build.sh" | tail -n 1)
bash "$OFFLINE_DIR/tools.sh" >/dev/null
[[ -x $KUBE_ROUTER ]] || die "hack/offline/tools.sh did not build $KUBE_ROUTER"
# The images kubeadm will ask for must be those preloaded.
want=$("$BIN/kubeadm" config images list --kubernetes-version "$KUBE_VERSION" 2>/dev/null | sort)
have=$(printf '%s\n' "registry.k8s.io/kube-apiserver:$KUBE_VERSION" "registry.k8s.io/kube-controller-manager:$KUBE_VERSION" \
  "registry.k8s.io/kube-scheduler:$KUBE_VERSION" "registry.k8s.io/kube-proxy:$KUBE_VERSION" \
  "registry.k8s.io/coredns/coredns:$COREDNS_VERSION" "registry.k8s.io/pause:$PAUSE_TAG" \
  "registry.k8s.io/etcd:$ETCD_IMAGE_TAG" | sort)
[[ $want == "$have" ]] || die "kubeadm $KUBE_VERSION wants these images:
$want
but hack/offline/versions.env gives:
$have"
mkdir -p "$WORK/node"
tar --numeric-owner --xattrs -C "$WORK/node" -xf "$ROOTFS_TAR"
step "component images"
build_images "$BIN" "$WORK/node"
build_node "$BIN" "$WORK/node"
# Older node images of this repository (other keys) only take space; one still used by a
# cluster's containers stays (docker refuses to remove it).
docker images --format '{{.Repository}}:{{.Tag}}' "$IMAGE_REPO" | grep -vxF "$NODE_IMAGE" |
  xargs -r docker rmi >/dev/null 2>&1 || true
step "done: $NODE_IMAGE"
echo "$NODE_IMAGE"
