#!/usr/bin/env bash
# Stop the local cluster started by up.sh and remove its state dir (<repo>/.cluster by default).
# Processes are stopped by the PIDs up.sh recorded (TERM, then KILL after a timeout), and only
# when the PID still runs one of our cached binaries; nothing is killed by name.
set -euo pipefail
# shellcheck source=hack/cluster/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ ! -d $STATE_DIR ]]; then
  log "no cluster state in $STATE_DIR; nothing to stop"
  exit 0
fi
stop_all
rm -rf "$STATE_DIR"
log "cluster stopped; removed $STATE_DIR"
