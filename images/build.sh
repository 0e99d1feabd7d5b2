#!/usr/bin/env bash
# Build the local node's images without Docker or a registry, cached by the hash of their inputs:
#
#   pause     the pod sandbox image (a static C binary, images/pause/pause.c)
#   worker    Debian minbase + python3 + cerebras_appliance (+ pydantic, kubernetes); runs as
#             uid 65532; entrypoint `python3 -m cerebras_appliance.worker`
#   operator  the worker's layers + kopf & co; entrypoint `python3 -m appliance_operator`
#
# Layers (uncompressed tarballs, shared between images):
#   rootfs    debootstrap --variant=minbase <suite> + python3, trimmed      (minutes, cold; cached)
#   deps      the runtime deps at the versions installed in .venv         (~30 s; cached)
#   opdeps    what the `operator` extra adds                               (~15 s; cached)
#   app       the working tree's cerebras_appliance + appliance_operator   (seconds; per change)
# Python files are byte-compiled with the image's own python3 (chroot), unchecked-hash pycs, so a
# worker starts without compiling anything.
#
# Usage:
#   images/build.sh                  build what is missing; print PAUSE_IMAGE=, WORKER_IMAGE=, OPERATOR_IMAGE=
#   images/build.sh --refs           print the refs only (computed from the inputs; builds nothing)
#   images/build.sh --import SOCKET  build, then import into containerd at SOCKET (namespace k8s.io)
#                                    the images it does not have yet
#   images/build.sh --save DIR       build, then write DIR/<name>.tar: OCI archives that
#                                    `ctr images import`, `docker load` and `kind load image-archive` take
# Environment:
#   APPLIANCE_OPERATOR_CACHE  cache root (default $XDG_CACHE_HOME or $HOME/.cache, + /appliance-operator)
#   IMAGE_PREFIX              image name prefix (default localhost/appliance-operator)
#   PYTHON                    python with pip whose installed versions pin the deps (default .venv/bin/python)
#   DEBOOTSTRAP_MIRROR        Debian mirror for debootstrap (default: debootstrap's own default)
# Needs root (debootstrap, chroot) and: debootstrap, gcc (static libc), tar, python3 >= 3.11.
set -euo pipefail

IMAGES_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$IMAGES_DIR/.." && pwd)
CACHE_ROOT=${APPLIANCE_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/appliance-operator}
IMG_CACHE=$CACHE_ROOT/images
PREFIX=${IMAGE_PREFIX:-localhost/appliance-operator}

SUITE=bookworm
GLIBC_TAG=2_36 # bookworm's glibc: the newest manylinux wheels its python can load
ROOTFS_PACKAGES=python3
PY_MINOR=3.11 # bookworm's python3
SITE=usr/local/lib/python$PY_MINOR/dist-packages
WORKER_UID=65532
# Bump a revision when its recipe below changes (it is part of that layer's cache key).
ROOTFS_REVISION=1
DEPS_REVISION=1
APP_REVISION=1
PAUSE_REVISION=1

log() { printf '[%s] images: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
t0=$SECONDS
step() { log "$* (t+$((SECONDS - t0))s)"; }

mode=build
case ${1:-} in
  "") ;;
  --refs) mode=refs ;;
  --import) mode=import; SOCKET=${2:?--import needs the containerd socket path} ;;
  --save) mode=save; SAVE_DIR=${2:?--save needs a directory} ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown argument: $1 (see images/build.sh --help)" ;;
esac

case $(uname -m) in
  x86_64) ARCH=amd64 WHEEL_ARCH=x86_64 ;;
  aarch64) ARCH=arm64 WHEEL_ARCH=aarch64 ;;
  *) die "unsupported machine $(uname -m) (amd64 and arm64 are)" ;;
esac

PY=${PYTHON:-$REPO_ROOT/.venv/bin/python}
if [[ ! -x $PY ]]; then
  PY=$(command -v python3) || die "no python: create .venv (make venv) or set PYTHON"
fi

hash_of() { sha256sum | cut -c1-16; }

# --- cache keys (cheap: computed before anything is built) --------------------------------
ROOTFS_KEY=$(printf '%s\n' "$SUITE" "$ROOTFS_PACKAGES" "$ARCH" "$WORKER_UID" "$ROOTFS_REVISION" \
  "$(sed -n '/^build_rootfs()/,/^}/p' "$0")" | hash_of)
DEPS_PINS=$("$PY" "$IMAGES_DIR/pins.py")
OPDEPS_PINS=$("$PY" "$IMAGES_DIR/pins.py" --extra operator --exclude-base)
DEPS_KEY=$(printf '%s\n' "$ROOTFS_KEY" "$DEPS_REVISION" "$DEPS_PINS" | hash_of)
OPDEPS_KEY=$(printf '%s\n' "$DEPS_KEY" "$OPDEPS_PINS" | hash_of)
app_sources() {
  (cd "$REPO_ROOT" && find client/cerebras_appliance operator/appliance_operator -type f \
    ! -name '*.pyc' ! -path '*/__pycache__/*' | LC_ALL=C sort)
}
APP_KEY=$( (
  echo "$ROOTFS_KEY $APP_REVISION"
  cd "$REPO_ROOT" && app_sources | while read -r f; do echo "$f"; cat "$f"; done
  cat pyproject.toml
) | hash_of)
PAUSE_KEY=$(printf '%s\n' "$PAUSE_REVISION" "$ARCH" | cat - "$IMAGES_DIR/pause/pause.c" | hash_of)

ROOTFS_DIR=$IMG_CACHE/rootfs/$ROOTFS_KEY
L_ROOTFS=$IMG_CACHE/layers/rootfs-$ROOTFS_KEY.tar
L_DEPS=$IMG_CACHE/layers/deps-$DEPS_KEY.tar
L_OPDEPS=$IMG_CACHE/layers/opdeps-$OPDEPS_KEY.tar
L_APP=$IMG_CACHE/layers/app-$APP_KEY.tar
L_PAUSE=$IMG_CACHE/layers/pause-$PAUSE_KEY.tar

PATH_ENV="PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
config_json() { # config_json ENTRYPOINT_JSON USER: the image's runtime config
  printf '{"User":"%s","Env":["%s","LANG=C.UTF-8","PYTHONUNBUFFERED=1"],"Entrypoint":%s,"WorkingDir":"/home/appliance","Labels":{"org.opencontainers.image.source":"appliance-operator","org.opencontainers.image.version":"0.1.0"}}' \
    "$2" "$PATH_ENV" "$1"
}
WORKER_CONFIG=$(config_json '["python3","-m","cerebras_appliance.worker"]' "$WORKER_UID:$WORKER_UID")
OPERATOR_CONFIG=$(config_json '["python3","-m","appliance_operator"]' "$WORKER_UID:$WORKER_UID")
PAUSE_CONFIG='{"User":"65535:65535","Entrypoint":["/pause"]}'

tag_of() { printf '%s\n' "$@" | hash_of | cut -c1-12; }
PAUSE_IMAGE=$PREFIX/pause:$(tag_of "$PAUSE_KEY" "$PAUSE_CONFIG")
WORKER_IMAGE=$PREFIX/worker:$(tag_of "$ROOTFS_KEY" "$DEPS_KEY" "$APP_KEY" "$WORKER_CONFIG")
OPERATOR_IMAGE=$PREFIX/operator:$(tag_of "$ROOTFS_KEY" "$DEPS_KEY" "$OPDEPS_KEY" "$APP_KEY" "$OPERATOR_CONFIG")

print_refs() {
  echo "PAUSE_IMAGE=$PAUSE_IMAGE"
  echo "WORKER_IMAGE=$WORKER_IMAGE"
  echo "OPERATOR_IMAGE=$OPERATOR_IMAGE"
}
if [[ $mode == refs ]]; then print_refs; exit 0; fi

# --- building -------------------------------------------------------------------------------
[[ $(id -u) == 0 ]] || die "building the images needs root (debootstrap and chroot); run as root"
for tool in debootstrap gcc tar unshare chroot flock sha256sum; do
  command -v "$tool" >/dev/null || die "missing $tool; run: bash hack/node/install-deps.sh"
done
mkdir -p "$IMG_CACHE"/{rootfs,layers,debs}
# One build at a time per cache (make, pytest and the node scripts may all ask).
exec 8>"$IMG_CACHE/build.lock"
if ! flock -n 8; then
  log "another image build is running; waiting for it (up to 30 min)"
  flock -w 1800 8 || die "timed out waiting for $IMG_CACHE/build.lock"
fi
WORK=$(mktemp -d "$IMG_CACHE/.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# tar of a staged directory, reproducible: sorted, root-owned, fixed mtime (the pycs are
# unchecked-hash, so no mtime is ever compared).
tar_stage() { # tar_stage DIR OUT
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$1" -cf "$2.partial" .
  mv -f "$2.partial" "$2"
}

# Run a command in a chroot of the rootfs with DIR bind-mounted on its site-packages, in a
# private mount namespace (the mount goes away with the process, whatever happens).
in_rootfs_with_site() { # in_rootfs_with_site DIR CMD...
  local dir=$1
  shift
  # shellcheck disable=SC2016 # expanded by the inner bash
  unshare --mount --propagation private -- bash -euc \
    'mount --bind "$1" "$2/$3"; shift 3; exec chroot "$@"' _ \
    "$dir" "$ROOTFS_DIR" "$SITE" "$ROOTFS_DIR" "$@"
}
compile_site() { # compile_site STAGE: byte-compile STAGE/$SITE with the image's python
  in_rootfs_with_site "$1/$SITE" python3 -B -m compileall -q -j 0 \
    --invalidation-mode unchecked-hash "/$SITE" >/dev/null
}

build_rootfs() {
  local target=$WORK/rootfs
  step "debootstrap --variant=minbase $SUITE + $ROOTFS_PACKAGES (cold: 1-5 min; cached afterwards)"
  # A private mount namespace: the /proc and /sys debootstrap mounts in the target cannot leak.
  # The .debs are kept in $IMG_CACHE/debs, so a recipe change does not download them again.
  if ! unshare --mount --propagation private -- debootstrap --variant=minbase \
    --include="$ROOTFS_PACKAGES" --cache-dir="$IMG_CACHE/debs" \
    "$SUITE" "$target" ${DEBOOTSTRAP_MIRROR:+"$DEBOOTSTRAP_MIRROR"} >"$WORK/debootstrap.log" 2>&1; then
    tail -n 30 "$WORK/debootstrap.log" >&2
    [[ -f $target/debootstrap/debootstrap.log ]] && tail -n 30 "$target/debootstrap/debootstrap.log" >&2
    die "debootstrap failed (log above); it needs Debian's package mirror to be reachable"
  fi
  [[ -x $target/usr/bin/python$PY_MINOR ]] || die "debootstrap gave no python$PY_MINOR (PY_MINOR in $0 is out of date?)"
  # Trim what a container never uses: apt lists and caches, docs, man pages, locales.
  rm -rf "$target"/var/lib/apt/lists/* "$target"/var/cache/apt/* "$target"/var/cache/debconf/*-old \
    "$target"/usr/share/doc/* "$target"/usr/share/man/* "$target"/usr/share/info/* \
    "$target"/usr/share/locale/* "$target"/var/log/* "$target"/debootstrap \
    "$target"/etc/hostname "$target"/etc/resolv.conf "$target"/etc/machine-id
  # The unprivileged user workers run as; its home is the working directory.
  echo "appliance:x:$WORKER_UID:$WORKER_UID:appliance worker:/home/appliance:/usr/sbin/nologin" >>"$target/etc/passwd"
  echo "appliance:x:$WORKER_UID:" >>"$target/etc/group"
  echo "appliance:*:19000:0:99999:7:::" >>"$target/etc/shadow"
  install -d -m 0755 -o "$WORKER_UID" -g "$WORKER_UID" "$target/home/appliance"
  install -d -m 0755 "$target/$SITE"
  step "packing the rootfs layer"
  # The runtime provides /dev, /proc, /sys and /run; keep the directories, not their contents.
  # mtimes are kept: the stdlib's pycs are timestamp-checked against them.
  tar --sort=name --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
    --exclude='./run/*' --exclude='./tmp/*' -C "$target" -cf "$L_ROOTFS.partial" .
  rm -rf "$ROOTFS_DIR"
  mv "$target" "$ROOTFS_DIR"
  mv -f "$L_ROOTFS.partial" "$L_ROOTFS"
}

if [[ ! -f $L_ROOTFS ]]; then
  build_rootfs
elif [[ ! -x $ROOTFS_DIR/usr/bin/python3 ]]; then
  step "unpacking the cached rootfs layer (for chroot steps)"
  rm -rf "$ROOTFS_DIR" "$ROOTFS_DIR.partial"
  mkdir -p "$ROOTFS_DIR.partial"
  tar --numeric-owner -C "$ROOTFS_DIR.partial" -xf "$L_ROOTFS"
  mv "$ROOTFS_DIR.partial" "$ROOTFS_DIR"
fi

pip_layer() { # pip_layer NAME PINS OUT
  local name=$1 pins=$2 out=$3 stage=$WORK/$1 nodeps=() platforms=() v
  # pip does not widen --platform to older manylinux tags: list every glibc the rootfs can load.
  for ((v = ${GLIBC_TAG#2_}; v >= 17; v--)); do platforms+=(--platform "manylinux_2_${v}_$WHEEL_ARCH"); done
  platforms+=(--platform "manylinux2014_$WHEEL_ARCH")
  step "building the $name layer ($(wc -l <<<"$pins") packages)"
  mkdir -p "$stage/$SITE"
  printf '%s\n' "$pins" >"$WORK/$name.txt"
  # Exact pins of a whole closure: no resolution needed (and none against the host's python).
  grep -qv '==' "$WORK/$name.txt" || nodeps=(--no-deps)
  "$PY" -m pip install --quiet --disable-pip-version-check --no-compile --no-warn-script-location \
    --target "$stage/$SITE" --only-binary=:all: --implementation cp \
    --python-version "$PY_MINOR" "${platforms[@]}" \
    "${nodeps[@]}" -r "$WORK/$name.txt" ||
    die "pip could not install the $name layer's packages for python $PY_MINOR (list: $WORK/$name.txt)"
  rm -rf "${stage:?}/$SITE/bin" # console scripts with the host's shebang
  compile_site "$stage"
  tar_stage "$stage" "$out"
}

[[ -f $L_DEPS ]] || pip_layer deps "$DEPS_PINS" "$L_DEPS"
if [[ ! -f $L_OPDEPS ]]; then
  if [[ -n $OPDEPS_PINS ]]; then
    pip_layer opdeps "$OPDEPS_PINS" "$L_OPDEPS"
  else
    mkdir -p "$WORK/opdeps-empty" && tar_stage "$WORK/opdeps-empty" "$L_OPDEPS"
  fi
fi

if [[ ! -f $L_APP ]]; then
  step "building the app layer (the working tree's packages)"
  stage=$WORK/app
  mkdir -p "$stage/$SITE"
  (cd "$REPO_ROOT" && app_sources) | while read -r f; do
    dest=$stage/$SITE/${f#*/} # client/cerebras_appliance/x.py -> $SITE/cerebras_appliance/x.py
    install -D -m 0644 "$REPO_ROOT/$f" "$dest"
  done
  version=$("$PY" -c 'import sys,tomllib; print(tomllib.load(open(sys.argv[1],"rb"))["project"]["version"])' "$REPO_ROOT/pyproject.toml")
  info=$stage/$SITE/appliance_operator-$version.dist-info
  mkdir -p "$info"
  printf 'Metadata-Version: 2.1\nName: appliance-operator\nVersion: %s\n' "$version" >"$info/METADATA"
  printf 'appliance_operator\ncerebras_appliance\n' >"$info/top_level.txt"
  echo images/build.sh >"$info/INSTALLER"
  compile_site "$stage"
  tar_stage "$stage" "$L_APP"
fi

if [[ ! -f $L_PAUSE ]]; then
  step "building the pause layer"
  mkdir -p "$WORK/pause"
  gcc -static -Os -s -Wall -Wextra -Werror -o "$WORK/pause/pause" "$IMAGES_DIR/pause/pause.c" ||
    die "could not build the pause binary (needs gcc and libc6-dev: hack/node/install-deps.sh)"
  tar_stage "$WORK/pause" "$L_PAUSE"
fi

# --- assembling -------------------------------------------------------------------------------
assemble() { # assemble NAME OUT: write the OCI archive of image NAME (pause|worker|operator) to OUT (- = stdout)
  local cfg=$WORK/$1.config.json layers=()
  case $1 in
    pause) printf '%s' "$PAUSE_CONFIG" >"$cfg"; layers=(--layer "$L_PAUSE" --history "pause (images/pause/pause.c)") ;;
    worker)
      printf '%s' "$WORKER_CONFIG" >"$cfg"
      layers=(--layer "$L_ROOTFS" --history "debootstrap --variant=minbase $SUITE + $ROOTFS_PACKAGES"
        --layer "$L_DEPS" --history "pip: runtime dependencies" --layer "$L_APP" --history "appliance-operator")
      ;;
    operator)
      printf '%s' "$OPERATOR_CONFIG" >"$cfg"
      layers=(--layer "$L_ROOTFS" --history "debootstrap --variant=minbase $SUITE + $ROOTFS_PACKAGES"
        --layer "$L_DEPS" --history "pip: runtime dependencies"
        --layer "$L_OPDEPS" --history "pip: operator dependencies" --layer "$L_APP" --history "appliance-operator")
      ;;
  esac
  local ref_var=${1^^}_IMAGE
  python3 "$IMAGES_DIR/oci.py" --name "${!ref_var}" --config "$cfg" "${layers[@]}" --output "$2" \
    ${SKIP_BLOBS:+--skip-blobs "$SKIP_BLOBS"}
}

case $mode in
  import)
    [[ -S $SOCKET ]] || die "no containerd socket at $SOCKET"
    ctr_() { ctr --address "$SOCKET" --namespace k8s.io "$@"; }
    have=$(ctr_ images ls -q) || die "cannot list images through $SOCKET"
    SKIP_BLOBS=$WORK/have-blobs
    for name in pause worker operator; do
      ref_var=${name^^}_IMAGE
      if grep -qxF "${!ref_var}" <<<"$have"; then continue; fi
      step "importing ${!ref_var}"
      # Layers containerd already has are left out of the archive (it unpacks from its store).
      ctr_ content ls -q >"$SKIP_BLOBS" || die "cannot list content through $SOCKET"
      assemble "$name" - | ctr_ images import - >"$WORK/import.log" 2>&1 ||
        { cat "$WORK/import.log" >&2; die "ctr images import of ${!ref_var} failed"; }
      # (the list is captured first: `ctr | grep -q` can fail on SIGPIPE under pipefail)
      have=$(ctr_ images ls -q)
      grep -qxF "${!ref_var}" <<<"$have" || {
        cat "$WORK/import.log" >&2
        die "imported ${!ref_var} but containerd does not list it"
      }
    done
    # Older builds of our images (earlier working trees) are dropped; their shared layers stay.
    stale=$(ctr_ images ls -q | grep -E "^$PREFIX/(pause|worker|operator):" |
      grep -vxF -e "$PAUSE_IMAGE" -e "$WORKER_IMAGE" -e "$OPERATOR_IMAGE" || true)
    if [[ -n $stale ]]; then
      # shellcheck disable=SC2086
      ctr_ images rm $stale >/dev/null && step "removed $(wc -l <<<"$stale") older image(s)"
    fi
    # ...and the image-ID aliases (sha256:<config>) the CRI plugin made for them: those whose
    # manifest no named image points at any more.
    stale=$(ctr_ images ls | awk 'NR > 1 { if ($1 ~ /^sha256:/) alias[$1] = $3; else named[$3] = 1 }
      END { for (a in alias) if (!(alias[a] in named)) print a }')
    # shellcheck disable=SC2086
    [[ -z $stale ]] || ctr_ images rm $stale >/dev/null
    ;;
  save)
    mkdir -p "$SAVE_DIR"
    for name in pause worker operator; do
      assemble "$name" "$SAVE_DIR/$name.tar"
      step "wrote $SAVE_DIR/$name.tar"
    done
    ;;
esac
step "images ready"
print_refs
