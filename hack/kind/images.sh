#!/usr/bin/env bash
# Build the worker, operator and user images from images/*.Dockerfile with `docker build`.
#
# Usage: hack/kind/images.sh [TAG]   build them; print WORKER_IMAGE=..., OPERATOR_IMAGE=... and
#                                    USER_IMAGE=... (the user pod's: the client, python3)
# Environment: WORKER_REPOSITORY, OPERATOR_REPOSITORY, USER_REPOSITORY
#              (default appliance-operator/{worker,operator,user}),
#              IMAGE_TAG (default 0.1.0), DOCKER_BUILD_ARGS (extra `docker build` arguments)
#
# The Dockerfiles start FROM debian:<suite>-slim. When Docker has no such image and cannot pull
# it (no registry reachable), the one substitution: a Debian base made here with debootstrap
# (minbase, the same suite) and `docker import`ed under that name, cached by input hash. It
# trusts the extra CA certificates this machine trusts (/usr/local/share/ca-certificates), so
# that the builds' apt-get and pip reach the package mirrors the way this machine does. The
# builds run with --network host (no Docker bridge is needed) and get only the files the
# Dockerfile copies (pyproject.toml, README.md, client/, operator/), sent as a tar context.
set -euo pipefail
# shellcheck source=hack/kind/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
use_docker

TAG=${1:-${IMAGE_TAG:-0.1.0}}
WORKER_IMAGE=${WORKER_REPOSITORY:-appliance-operator/worker}:$TAG
OPERATOR_IMAGE=${OPERATOR_REPOSITORY:-appliance-operator/operator}:$TAG
USER_IMAGE=${USER_REPOSITORY:-appliance-operator/user}:$TAG
t0=$SECONDS
step() { log "images: $* (t+$((SECONDS - t0))s)"; }

# The external bases of the Dockerfiles (FROM lines naming an image, not a stage).
bases=$(awk 'toupper($1) == "FROM" && $2 ~ /:/ {print $2}' "$REPO_ROOT"/images/*.Dockerfile | sort -u)

ensure_base() {
  local ref=$1 suite key tar have
  key=$( (echo "$ref"; cat /usr/local/share/ca-certificates/*.crt 2>/dev/null; sed -n '/^ensure_base()/,/^}/p' "$0") | sha256sum | cut -c1-16)
  if have=$(docker image inspect -f '{{index .Config.Labels "dev.appliance.local-base"}}' "$ref" 2>/dev/null); then
    # A pulled image (no label) or our local one of this recipe: done. An older local one: redo.
    [[ -z $have || $have == "$key" ]] && return 0
    step "$ref: a local base of an older recipe; making it again"
  else
    step "$ref: not in Docker; trying to pull it"
    if timeout 120 docker pull -q "$ref" >/dev/null 2>&1; then return 0; fi
  fi
  [[ $ref =~ ^debian:([a-z]+)-slim$ ]] ||
    die "cannot pull $ref and can only make debian:<suite>-slim locally"
  suite=${BASH_REMATCH[1]}
  [[ $(id -u) == 0 ]] || die "cannot pull $ref; making it locally (debootstrap) needs root"
  ensure_debs /usr/sbin/debootstrap=debootstrap
  tar=$KIND_CACHE/base-$suite-$key.tar
  if [[ ! -f $tar ]]; then
    step "$ref: no registry reachable; debootstrap --variant=minbase $suite (cold: 1-2 min)"
    mkdir -p "$KIND_CACHE/debs"
    local root
    root=$(mktemp -d "$KIND_CACHE/.base.XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf '$root'" EXIT
    if ! unshare --mount --propagation private -- debootstrap --variant=minbase \
      --cache-dir="$KIND_CACHE/debs" "$suite" "$root/fs" ${DEBOOTSTRAP_MIRROR:+"$DEBOOTSTRAP_MIRROR"} \
      >"$root/debootstrap.log" 2>&1; then
      tail -n 30 "$root/debootstrap.log" >&2
      die "debootstrap $suite failed (log above)"
    fi
    # What makes Debian's official image "slim", so the Dockerfiles' layers are the size they
    # are there: no docs, man pages or translations from dpkg; apt keeps no .debs or caches.
    mkdir -p "$root/fs/etc/dpkg/dpkg.cfg.d" "$root/fs/etc/apt/apt.conf.d"
    printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
      'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' \
      'path-exclude /usr/share/locale/*' 'path-include /usr/share/locale/locale.alias' \
      'path-exclude /usr/share/groff/*' 'path-exclude /usr/share/lintian/*' \
      >"$root/fs/etc/dpkg/dpkg.cfg.d/local-slim"
    printf '%s\n' 'Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";' \
      'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };' \
      'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };' \
      'Acquire::Languages "none";' \
      >"$root/fs/etc/apt/apt.conf.d/local-slim"
    find "$root/fs/usr/share/doc" -mindepth 2 ! -name copyright -delete 2>/dev/null || true
    rm -rf "$root"/fs/usr/share/man/* "$root"/fs/usr/share/info/* "$root"/fs/usr/share/groff/* \
      "$root"/fs/usr/share/lintian/*
    find "$root/fs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + 2>/dev/null || true
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
      mkdir -p "$root/fs/usr/local/share/ca-certificates"
      cp /usr/local/share/ca-certificates/*.crt "$root/fs/usr/local/share/ca-certificates/"
    fi
    rm -rf "$root"/fs/var/lib/apt/lists/* "$root"/fs/var/cache/apt/*.bin "$root"/fs/var/cache/apt/archives/*.deb \
      "$root"/fs/debootstrap "$root"/fs/etc/hostname "$root"/fs/etc/resolv.conf "$root"/fs/etc/machine-id
    tar --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
      -C "$root/fs" -cf "$tar.partial" .
    mv -f "$tar.partial" "$tar"
    rm -rf "$root"
    trap - EXIT
  fi
  step "$ref: docker import of the local debootstrap base"
  docker import --change 'CMD ["bash"]' --change "LABEL dev.appliance.local-base=$key" \
    --message "local stand-in for $ref (hack/kind/images.sh)" "$tar" "$ref" >/dev/null
}

for b in $bases; do ensure_base "$b"; done

build() { # build DOCKERFILE IMAGE: the context is what the Dockerfile copies, as a tar on stdin
  local dockerfile=$1 image=$2
  local log_file=$KIND_STATE/logs/build-${image//[\/:]/_}.log
  mkdir -p "$KIND_STATE/logs"
  step "docker build -f $dockerfile -t $image (log $log_file)"
  # shellcheck disable=SC2086 # DOCKER_BUILD_ARGS is a list of words
  if ! tar -C "$REPO_ROOT" --exclude='__pycache__' --exclude='*.pyc' --exclude='*.egg-info' \
    -c "$dockerfile" pyproject.toml README.md client operator |
    docker build --network host ${DOCKER_BUILD_ARGS:-} -f "$dockerfile" -t "$image" - >"$log_file" 2>&1; then
    tail -n 40 "$log_file" >&2
    die "docker build of $image failed (log above, $log_file)"
  fi
}
build images/worker.Dockerfile "$WORKER_IMAGE"
build images/operator.Dockerfile "$OPERATOR_IMAGE"
build images/user.Dockerfile "$USER_IMAGE"
step "done"
echo "WORKER_IMAGE=$WORKER_IMAGE"
echo "OPERATOR_IMAGE=$OPERATOR_IMAGE"
echo "USER_IMAGE=$USER_IMAGE"
