#!/usr/bin/env bash
# Delete a kind cluster made by hack/kind/up.sh, then stop the project's own dockerd when it
# started one and no kind cluster is left in it.
#
# Usage: hack/kind/down.sh [--name NAME] [--keep-docker]
#   --name NAME     cluster name (default $KIND_CLUSTER, else "appliance")
#   --keep-docker   leave the project's dockerd running even when it has no cluster left
set -euo pipefail
# shellcheck source=hack/kind/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NAME=${KIND_CLUSTER:-appliance}
KEEP_DOCKER=
while (($#)); do
  case $1 in
    --name) NAME=${2:?--name needs a value}; shift 2 ;;
    --keep-docker) KEEP_DOCKER=1; shift ;;
    *) die "unknown argument: $1 (see the header of $0)" ;;
  esac
done

if ! env_line=$(bash "$OFFLINE_DIR/dockerd.sh" env 2>/dev/null); then
  log "no Docker daemon answers: no kind cluster to delete"
  exit 0
fi
eval "export $env_line"
[[ -n $DOCKER_HOST ]] || unset DOCKER_HOST
[[ -x $KIND ]] || die "kind is not built ($KIND): nothing made a cluster with it"
if "$KIND" get clusters 2>/dev/null | grep -x "$NAME" >/dev/null; then
  "$KIND" delete cluster --name "$NAME"
else
  log "no kind cluster named $NAME"
fi
rm -f "$KIND_STATE/$NAME.kubeconfig" "$KIND_STATE/$NAME.kind.yaml"
if [[ -z $KEEP_DOCKER ]] && bash "$OFFLINE_DIR/dockerd.sh" status; then
  left=$("$KIND" get clusters 2>/dev/null || true)
  if [[ -z $left ]]; then
    bash "$OFFLINE_DIR/dockerd.sh" down
  else
    log "the project's dockerd keeps running for the kind clusters: $(paste -sd' ' <<<"$left")"
  fi
fi
