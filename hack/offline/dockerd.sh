#!/usr/bin/env bash
# A Docker daemon for kind: the one the user has, else the project's own.
#
# Usage: hack/offline/dockerd.sh up     make sure a daemon answers; print DOCKER_HOST=... (may be empty)
#        hack/offline/dockerd.sh env    print DOCKER_HOST=... for the daemon to use (starts nothing)
#        hack/offline/dockerd.sh down [--if-idle]   stop the project's own dockerd (if it runs;
#                                       --if-idle: only when no container runs in it)
#        hack/offline/dockerd.sh status exit 0 when the project's own dockerd runs
#
# Which daemon: $DOCKER_HOST if set; else the project's own if it runs; else the default socket
# if a daemon answers there (a laptop with Docker: nothing is started); else the project's own
# is started. That needs root and `dockerd` (installed from Debian's docker.io when missing and
# apt-get exists). It runs without systemd, detached, with everything of its own:
#   socket and pid file   <repo>/.kind/docker.sock, .kind/dockerd.pid   (APPLIANCE_KIND_STATE)
#   data root             $APPLIANCE_OPERATOR_CACHE/docker (images and the node image survive a clone)
#   exec root             /run/appliance-operator-docker-<hash of the state dir> (short socket paths)
#   --iptables=false --ip-forward=false --ip-masq=false --bridge=none: the host's firewall and
#   routes are left as they are (kind's own network is all the nodes need).
#   an OCI runtime, hack/offline/runc-drop-caps, that drops the capabilities this host's bounding
#   set lacks (kind's --privileged nodes otherwise fail where CAP_SYS_RESOURCE is missing);
#   registered as the default runtime only when some capability is missing.
# `down` stops only that dockerd (by its pid file, checked to be our dockerd), never another one.
set -euo pipefail
# shellcheck source=hack/kind/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../kind/lib.sh"

PIDFILE=$KIND_STATE/dockerd.pid
LOGFILE=$KIND_STATE/dockerd.log
EXEC_ROOT=/run/appliance-operator-docker-$(printf '%s' "$KIND_STATE" | sha256sum | cut -c1-8)
START_TIMEOUT=${DOCKERD_START_TIMEOUT:-60}

own_pid() { # the pid of our dockerd, if it runs
  local pid exe
  [[ -f $PIDFILE ]] || return 1
  pid=$(<"$PIDFILE")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  [[ ${exe##*/} == dockerd ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "-H $OWN_DOCKER_HOST" || return 1
  echo "$pid"
}

answers() { DOCKER_HOST=$1 timeout 20 docker info >/dev/null 2>&1; }

choose() { # print the DOCKER_HOST to use, or return 1 when none answers
  if [[ -n ${DOCKER_HOST:-} ]]; then echo "$DOCKER_HOST"; return 0; fi
  if own_pid >/dev/null && answers "$OWN_DOCKER_HOST"; then echo "$OWN_DOCKER_HOST"; return 0; fi
  if answers ""; then echo ""; return 0; fi
  return 1
}

install_dockerd() {
  command -v dockerd >/dev/null && return 0
  command -v apt-get >/dev/null ||
    die "no Docker daemon answers and dockerd is not installed: install Docker (or set DOCKER_HOST)"
  # Debian's dockerd (with containerd and runc); without an init system it is not started as a
  # service. A docker client already on PATH (any version) is kept.
  ensure_debs /usr/sbin/dockerd=docker.io
}

missing_caps() { # 0 when this host's bounding set lacks some capability runc knows
  local bnd
  bnd=$(sed -n 's/^CapBnd:\s*//p' /proc/self/status)
  # CAP_LAST_CAP of the running kernel: all bits up to it set = nothing missing.
  local last
  last=$(cat /proc/sys/kernel/cap_last_cap)
  (((16#$bnd) != (1 << (last + 1)) - 1))
}

start_own() {
  [[ $(id -u) == 0 ]] || die "no Docker daemon answers; starting the project's own dockerd needs root (or set DOCKER_HOST)"
  install_dockerd
  for tool in containerd runc; do
    command -v "$tool" >/dev/null || die "$tool not found (Debian's docker.io brings it)"
  done
  mkdir -p "$KIND_STATE" "$OWN_DOCKER_DATA" "$EXEC_ROOT"
  [[ -f $KIND_STATE/daemon.json ]] || echo '{}' >"$KIND_STATE/daemon.json"
  rm -f "$OWN_DOCKER_SOCK"
  local args=(
    --config-file "$KIND_STATE/daemon.json"
    --data-root "$OWN_DOCKER_DATA" --exec-root "$EXEC_ROOT" --pidfile "$PIDFILE"
    -H "$OWN_DOCKER_HOST"
    --iptables=false --ip-forward=false --ip-masq=false --bridge=none
  )
  if missing_caps; then
    args+=(--add-runtime "runc-drop-caps=$OFFLINE_DIR/runc-drop-caps" --default-runtime runc-drop-caps)
  fi
  log "starting the project's own dockerd (log $LOGFILE)"
  setsid dockerd "${args[@]}" >"$LOGFILE" 2>&1 </dev/null &
  local pid=$! deadline=$((SECONDS + START_TIMEOUT))
  until answers "$OWN_DOCKER_HOST"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$LOGFILE" >&2 || true
      die "dockerd exited while starting (log above, $LOGFILE)"
    fi
    ((SECONDS < deadline)) || { tail -n 30 "$LOGFILE" >&2; die "dockerd did not answer within ${START_TIMEOUT}s"; }
    sleep 0.5
  done
  log "dockerd up (pid $pid, DOCKER_HOST=$OWN_DOCKER_HOST)"
}

stop_own() {
  local pid
  pid=$(own_pid) || { log "the project's own dockerd is not running"; return 0; }
  log "stopping the project's own dockerd (pid $pid)"
  kill -TERM "$pid"
  local deadline=$((SECONDS + 60))
  while kill -0 "$pid" 2>/dev/null; do
    ((SECONDS < deadline)) || { log "dockerd (pid $pid) still runs after 60 s; sending SIGKILL"; kill -KILL "$pid"; }
    sleep 0.2
  done
  rm -f "$PIDFILE" "$OWN_DOCKER_SOCK"
}

case ${1:-} in
  up)
    if ! host=$(choose); then start_own; host=$OWN_DOCKER_HOST; fi
    echo "DOCKER_HOST=$host" ;;
  env)
    host=$(choose) || die "no Docker daemon answers (hack/offline/dockerd.sh up starts one)"
    echo "DOCKER_HOST=$host" ;;
  down)
    if [[ ${2:-} == --if-idle ]] && own_pid >/dev/null &&
      [[ -n $(DOCKER_HOST=$OWN_DOCKER_HOST docker ps -q 2>/dev/null) ]]; then
      log "the project's dockerd keeps running: containers run in it"
      exit 0
    fi
    stop_own ;;
  status) own_pid >/dev/null ;;
  *) die "usage: $0 up|env|down|status" ;;
esac
