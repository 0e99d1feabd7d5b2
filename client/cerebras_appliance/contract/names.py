"""Every name the client, the worker and the operator must spell the same, written once.

The API group and version, the labels, annotations and finalizer the operator writes on what it
makes (and the client reads back), the variables a worker process is started with, and the
paths where a worker pod finds its volumes. A name used by one side only lives with that side;
a name here is read by one side and written by another, so changing it is a protocol change
(old workers, old clients and the running operator must still agree: see docs/design.md).

This module imports nothing: the worker reads it on its fast path.
"""

from __future__ import annotations

# -- the API ---------------------------------------------------------------------------------

GROUP = "appliance.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# -- labels, annotations and the finalizer on what the operator makes ------------------------

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "appliance-operator"
MANAGED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
#: On a job's pods and its ``<job>-env`` Secret: the ExecuteJob's name.
JOB_NAME_LABEL = f"{GROUP}/job-name"
WORKER_INDEX_LABEL = f"{GROUP}/worker-index"
ATTEMPT_LABEL = f"{GROUP}/attempt"
#: The hash of the snapshot a pod was made for (never a value).
ENV_HASH_ANNOTATION = f"{GROUP}/env-hash"
#: A worker pod is counted (succeeded or failed) before this finalizer is removed, so a pod
#: deleted early is never lost from the job's totals.
TRACKING_FINALIZER = f"{GROUP}/worker-tracking"
#: On an ExecuteJob created by the client before its env Secret is written.
AWAITING_VALUES_ANNOTATION = f"{GROUP}/awaiting-values"

#: On a pool's pods: the WorkerPool's name, and ``idle``/``claimed``.
POOL_NAME_LABEL = f"{GROUP}/pool-name"
POOL_STATE_LABEL = f"{GROUP}/pool-state"
#: The hash of the pool spec an idle pod was made from (stale ones are replaced).
POOL_SPEC_HASH_ANNOTATION = f"{GROUP}/pool-spec-hash"
#: On a claimed pod: the env hash the worker confirmed, and the job (uid) it was claimed for.
CLAIM_CONFIRMED_ANNOTATION = f"{GROUP}/claim-confirmed"
CLAIMED_FOR_ANNOTATION = f"{GROUP}/claimed-for"
#: On a pool pod whose claim was delivered (the claim NetworkPolicy stops admitting to it).
CLAIM_DELIVERED_LABEL = f"{GROUP}/claim-delivered"
#: On a pool's claim Secrets: the pool they belong to and the CA they carry.
POOL_UID_ANNOTATION = f"{GROUP}/pool-uid"
CA_FINGERPRINT_ANNOTATION = f"{GROUP}/claim-ca-sha256"

# -- the variables a worker is started with (set by the operator, the local backend or a claim)

#: The env snapshot file, and the readiness marker the worker writes once it applied it.
ENV_FILE_VAR = "APPLIANCE_ENV_FILE"
READY_FILE_VAR = "APPLIANCE_READY_FILE"
JOB_NAME_VAR = "APPLIANCE_JOB_NAME"
WORKER_NAME_VAR = "APPLIANCE_WORKER_NAME"
WORKER_INDEX_VAR = "APPLIANCE_WORKER_INDEX"
#: Which job and worker this is: set for every worker, cold or claimed.
WORKER_VARS = (JOB_NAME_VAR, WORKER_NAME_VAR, WORKER_INDEX_VAR)
#: Set by the worker on itself before it re-executes (a start-up variable changed).
REEXEC_MARKER = "APPLIANCE_WORKER_REEXECUTED"

#: A warm (pool) worker: ``python -m cerebras_appliance.worker --warm``.
WARM_FLAG = "--warm"
WARM_IMPORTS_VAR = "APPLIANCE_WARM_IMPORTS"
WARM_STARTUP_VARS_VAR = "APPLIANCE_WARM_STARTUP_VARS"
#: Written by a warm worker once it is idle (the pod's readiness; the local pool's signal).
IDLE_FILE_VAR = "APPLIANCE_IDLE_FILE"
#: Local pool: the pipe the claim arrives on. Kubernetes pool: the claim channel below.
CLAIM_FD_VAR = "APPLIANCE_CLAIM_FD"
STATE_DIR_VAR = "APPLIANCE_STATE_DIR"
#: A pool pod's own name (the claim must name it).
POOL_WORKER_VAR = "APPLIANCE_POOL_WORKER"
CLAIM_TLS_DIR_VAR = "APPLIANCE_CLAIM_TLS_DIR"
CLAIM_PORT_VAR = "APPLIANCE_CLAIM_PORT"
#: The address the claim channel listens on (default: every address of the pod).
CLAIM_HOST_VAR = "APPLIANCE_CLAIM_HOST"
CLAIM_PORT = 7443

#: The user's code (issue 23): a directory holding the bundle (``contract.bundle``) as chunk
#: files ``chunk-000``, ``chunk-001``, ... (one for the local backend; one per Secret on
#: Kubernetes), and the bundle's hash, checked before anything is unpacked.
CODE_DIR_VAR = "APPLIANCE_CODE_DIR"
CODE_SHA256_VAR = "APPLIANCE_CODE_SHA256"
CODE_CHUNK_PREFIX = "chunk-"
#: A function submitted by value runs through this ``module:function`` entrypoint, which loads
#: ``files/function.pkl`` of the unpacked bundle and calls it with the job's args.
FUNCTION_ENTRYPOINT = "cerebras_appliance.worker.code:run_function"
FUNCTION_FILE = "function.pkl"

#: The worker pod's one container (the client reads its log and exit code).
CONTAINER_NAME = "worker"

# -- where a worker pod finds its volumes --------------------------------------------------------

#: The key of the ``<job>-env`` Secret that holds the snapshot file.
SNAPSHOT_KEY = "env.json"
ENV_DIR = "/var/run/appliance/env"
#: A cold worker's code bundle: the ``<job>-code-<i>`` Secrets projected read-only, one file
#: ``chunk-NNN`` each (what ``CODE_DIR_VAR`` names in a pod).
CODE_DIR = "/var/run/appliance/code"
STATE_DIR = "/var/run/appliance/state"
CLAIM_TLS_DIR = "/var/run/appliance/claim-tls"
ENV_FILE = f"{ENV_DIR}/{SNAPSHOT_KEY}"
READY_FILE = f"{STATE_DIR}/ready"
