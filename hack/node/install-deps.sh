#!/usr/bin/env bash
# Install (only when missing) the Debian packages the local node and the image builds need:
# containerd + runc (the container runtime), the reference CNI plugins, debootstrap (the
# worker image's Debian rootfs) and a C compiler for the pause image. Idempotent: a machine
# that has them all runs no apt command at all.
#
# Usage: hack/node/install-deps.sh          install what is missing (needs root)
#        hack/node/install-deps.sh --check  exit 0 when everything is there, else list what is missing
set -euo pipefail

# package -> a file it installs (how we tell it is there without asking dpkg about each one)
declare -A PACKAGES=(
  [containerd]=/usr/bin/containerd
  [runc]=/usr/sbin/runc
  [containernetworking-plugins]=/usr/lib/cni/bridge
  [debootstrap]=/usr/sbin/debootstrap
  [gcc]=/usr/bin/gcc
  [libc6-dev]=/usr/lib/x86_64-linux-gnu/libc.a
  [iproute2]=/usr/sbin/ip
  [openssl]=/usr/bin/openssl
  [curl]=/usr/bin/curl
  [util-linux]=/usr/bin/unshare
)

missing=()
for pkg in "${!PACKAGES[@]}"; do
  [[ -e ${PACKAGES[$pkg]} ]] || missing+=("$pkg")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
IFS=$'\n' read -r -d '' -a missing < <(printf '%s\n' "${missing[@]}" | sort && printf '\0')
if [[ ${1:-} == --check ]]; then
  echo "missing Debian packages: ${missing[*]} (run: sudo bash hack/node/install-deps.sh)" >&2
  exit 1
fi
[[ $(id -u) == 0 ]] || { echo "ERROR: installing ${missing[*]} needs root (apt-get)" >&2; exit 1; }
command -v apt-get >/dev/null || {
  echo "ERROR: no apt-get: install ${missing[*]} (or their equivalents) by hand" >&2
  exit 1
}
echo "installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# The lists may be missing or stale on a fresh machine; refresh them once per run.
apt-get update -qq
# --no-install-recommends: containerd recommends nothing we need; keeps CI installs short.
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
for pkg in "${missing[@]}"; do
  [[ -e ${PACKAGES[$pkg]} ]] || { echo "ERROR: $pkg installed but ${PACKAGES[$pkg]} is missing" >&2; exit 1; }
done
# The Debian package starts containerd as a system service where an init system runs; the node
# uses its own containerd (own config, socket and state), so the system one is left alone.
echo "installed: ${missing[*]}" >&2
