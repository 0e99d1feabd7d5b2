#!/usr/bin/env bash
# The e2e tests' kind cluster, made in the background while something else runs (`make test`:
# the integration tests), then reused by the e2e fixture (tests/e2e/conftest.py) and deleted.
#
# Usage: hack/kind/e2e-cluster.sh start   build what the cluster needs (node image, images:
#                                         cached), then start `up.sh` in the background
#        hack/kind/e2e-cluster.sh wait    wait for it; fail (with its log) when it failed
#        hack/kind/e2e-cluster.sh stop    delete the cluster if `start` made it, and the
#                                         project's dockerd if `start` started it
# Environment: KIND_E2E_CLUSTER (default appliance-e2e), KIND_E2E_WORKERS (default 2), and
# those of up.sh. The cluster has the fixture's settings (KIND_NODE_MONITOR_GRACE_PERIOD 20s).
# A cluster of that name that is already up (`make kind-e2e-up`) is reused and kept.
set -euo pipefail
# shellcheck source=hack/kind/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NAME=${KIND_E2E_CLUSTER:-appliance-e2e}
WORKERS=${KIND_E2E_WORKERS:-2}
BG=$KIND_STATE/$NAME.background # .out (up.sh's stdout), .log (stderr), .rc, .own-docker, .made
WAIT_TIMEOUT=${KIND_E2E_WAIT_TIMEOUT:-900}

case ${1:-} in
  start)
    mkdir -p "$KIND_STATE"
    rm -f "$BG".out "$BG".log "$BG".rc "$BG".own-docker "$BG".made
    # Ours afterwards only if no dockerd of the project's ran before.
    bash "$OFFLINE_DIR/dockerd.sh" status || touch "$BG".own-docker
    # The slow, cached steps in the foreground (their output is the user's to see).
    bash "$KIND_DIR/up.sh" --prepare --images >/dev/null
    eval "export $(bash "$OFFLINE_DIR/dockerd.sh" env)"
    [[ -n $DOCKER_HOST ]] || unset DOCKER_HOST
    # Deleted by `stop` only if there was none of that name before (even if its start failed).
    "$KIND" get clusters 2>/dev/null | grep -x "$NAME" >/dev/null || touch "$BG".made
    log "kind cluster $NAME: starting in the background (log $BG.log)"
    (
      rc=0
      KIND_NODE_MONITOR_GRACE_PERIOD=${KIND_NODE_MONITOR_GRACE_PERIOD:-20s} \
        bash "$KIND_DIR/up.sh" --name "$NAME" --workers "$WORKERS" --images \
        --kubeconfig "$KIND_STATE/$NAME.kubeconfig" \
        >"$BG".out 2>"$BG".log </dev/null || rc=$?
      echo "$rc" >"$BG".rc
    ) >/dev/null 2>&1 </dev/null & # holds none of the caller's descriptors (make, CI's pipe)
    ;;
  wait)
    [[ -f $BG.log ]] || die "no background start of $NAME to wait for (run: $0 start)"
    deadline=$((SECONDS + WAIT_TIMEOUT))
    until [[ -s $BG.rc ]]; do
      ((SECONDS < deadline)) || die "kind cluster $NAME not up after ${WAIT_TIMEOUT}s (log $BG.log)"
      sleep 1
    done
    rc=$(<"$BG".rc)
    if [[ $rc != 0 ]]; then
      tail -n 40 "$BG".log >&2
      die "kind cluster $NAME failed to start (exit $rc; log above, $BG.log)"
    fi
    log "kind cluster $NAME is up ($(grep -E '^(CREATED|NODES)=' "$BG".out | paste -sd' '))"
    ;;
  stop)
    if [[ -f $BG.made ]]; then
      args=(--name "$NAME")
      [[ -f $BG.own-docker ]] || args+=(--keep-docker)
      bash "$KIND_DIR/down.sh" "${args[@]}"
    elif [[ -f $BG.own-docker ]]; then
      bash "$OFFLINE_DIR/dockerd.sh" down --if-idle
    fi
    rm -f "$BG".out "$BG".rc "$BG".own-docker "$BG".made
    ;;
  *) die "usage: $0 start|wait|stop" ;;
esac
