"""Desired objects of an ExecuteJob: its env Secret and its worker pods (pure functions).

Naming (deterministic, so a restarted operator finds what it made and never duplicates):

* the env Secret: ``<job>-env`` (key ``env.json``: the resolved snapshot, values included);
* worker ``i``, first attempt: ``<job>-worker-<i>`` (the name the local backend uses too);
  replacement ``a`` (a >= 1) of a failed worker: ``<job>-worker-<i>-<a>``.
* a job's code bundle (``spec.code``, issue 23): ``<job>-code-<i>``, written by the client
  (:func:`cerebras_appliance.contract.api.code_secret_name`), never by the operator.

Env values appear only in the Secret: a pod spec carries the ``APPLIANCE_*`` plumbing
variables and nothing else, so ``kubectl get pod -o yaml`` shows no value. The same holds for
the code: a pod names its Secrets and its hash, never a byte of it.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cerebras_appliance.contract import envfile, names
from cerebras_appliance.contract.api import (
    KIND,
    POOL_KIND,
    EnvVar,
    ExecuteJob,
    WorkerPool,
    WorkerTemplate,
    code_chunk_key,
    code_secret_name,
    reserved_key,
    worker_name,
)
from cerebras_appliance.contract.names import (
    API_VERSION,
    ATTEMPT_LABEL,
    CLAIM_CONFIRMED_ANNOTATION,
    CLAIM_DELIVERED_LABEL,
    CLAIM_PORT,
    CLAIM_TLS_DIR,
    CLAIMED_FOR_ANNOTATION,
    CODE_DIR,
    CONTAINER_NAME,
    ENV_DIR,
    ENV_FILE,
    ENV_HASH_ANNOTATION,
    JOB_NAME_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    MANAGED_SELECTOR,
    POOL_NAME_LABEL,
    POOL_STATE_LABEL,
    READY_FILE,
    STATE_DIR,
    TRACKING_FINALIZER,
    WORKER_INDEX_LABEL,
)

#: The startup probe's budget: how long a worker may take to apply the env (1 s periods).
STARTUP_PROBE_SECONDS = 24 * 3600

ENV_VOLUME = "appliance-env"
STATE_VOLUME = "appliance-state"
#: A cold worker's code bundle: its ``<job>-code-<i>`` Secrets, projected read-only.
CODE_VOLUME = "appliance-code"
#: The state volume (memory-backed): the readiness marker and, on a pool's pod, the env file
#: a claim brings; 1 MiB holds them.
STATE_SIZE = "1Mi"
#: The state volume of a worker that may receive code (a cold worker of a job with
#: ``spec.code``, and every pool pod: any claim may bring code). The worker unpacks the
#: bundle there (``APPLIANCE_STATE_DIR``), in memory as the issue asks (code can hold
#: credentials: never on a disk), and a warm worker also writes the bundle it received.
#: Budget: the unpacked archive is at most ``bundle.MAX_UNPACKED_BYTES`` (64 MiB, headers
#: included) in at most ``bundle.MAX_ENTRIES`` (10,000) entries, each rounded up to a 4 KiB
#: page on tmpfs (at most 39 MiB more), plus a received bundle (8 MiB) and the env file
#: (1 MiB): 112 MiB in the worst case, so 128 MiB. A limit, not a reservation: a
#: memory-backed emptyDir costs the pod's memory only for what is written.
CODE_STATE_SIZE = "128Mi"
DEFAULT_IMAGE_PULL_POLICY = "IfNotPresent"


def env_secret_name(job_name: str) -> str:
    return f"{job_name}-env"


def worker_secret_name(pool: str, uid: str) -> str:
    """The Secret the pool's pods mount. Named after the pool's uid: a pool deleted and made
    again under the same name never finds the old pool's Secrets, and nobody can make the
    Secret before the pool exists."""
    return f"{pool}-claim-worker-{uid}"


def operator_secret_name(pool: str, uid: str) -> str:
    """The Secret only the operator reads (the operator's certificate, and a copy of the
    workers' pair, from which a missing worker Secret is made again)."""
    return f"{pool}-claim-operator-{uid}"


def pod_name(job_name: str, index: int, attempt: int = 0) -> str:
    return worker_name(job_name, index, attempt)


def owner_reference(job: ExecuteJob, uid: str) -> dict[str, Any]:
    """The job as controller of what it owns: deleting the job deletes them (cascade)."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job.metadata.name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def controller_uid(obj: Mapping[str, Any]) -> str | None:
    """The uid of the object's controller (the ownerReference with ``controller: true``; the
    API server allows at most one), or None."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    uid = next((ref.get("uid") for ref in refs if ref.get("controller")), None)
    return None if uid is None else str(uid)


def user_keys(template_keys: Mapping[str, str]) -> dict[str, str]:
    """A template's labels or annotations without the operator's own keys (api.reserved_key):
    the models and the CRD refuse them already; this keeps any that got past (an older CRD)
    from making a pod look claimed, or another job's (issue 21, defect 8)."""
    return {k: v for k, v in template_keys.items() if not reserved_key(k)}


def job_labels(job_name: str) -> dict[str, str]:
    return {MANAGED_BY_LABEL: MANAGED_BY, JOB_NAME_LABEL: job_name}


# -- env resolution -------------------------------------------------------------------------


class EnvResolutionError(Exception):
    """A ``secretKeyRef`` could not be resolved. ``reason`` is a CamelCase condition reason;
    the message names the variable and the Secret (never a value)."""

    def __init__(self, reason: str, problems: Sequence[str]) -> None:
        self.reason = reason
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


#: ``read_secret(name)`` returns the Secret's ``data`` (base64 values), or None when the
#: Secret does not exist.
SecretReader = Callable[[str], Mapping[str, str] | None]


def resolve_env(env: Sequence[EnvVar], read_secret: SecretReader) -> list[tuple[str, str]]:
    """The snapshot's ``(name, value)`` pairs, in order, with secretKeyRefs read.

    Each Secret is read once. Raises :class:`EnvResolutionError` listing every unresolved
    variable, with the fix.
    """
    cache: dict[str, Mapping[str, str] | None] = {}
    pairs: list[tuple[str, str]] = []
    problems: list[str] = []
    reasons: list[str] = []
    for index, item in enumerate(env):
        if item.value_from is None:
            pairs.append((item.name, item.value or ""))
            continue
        ref = item.value_from.secret_key_ref
        where = f"spec.env[{index}] ({item.name})"
        if ref.name not in cache:
            cache[ref.name] = read_secret(ref.name)
        data = cache[ref.name]
        if data is None:
            reasons.append("SecretNotFound")
            problems.append(
                f"{where}: Secret {ref.name!r} not found in the job's namespace; create it "
                "(the job starts once it exists)"
            )
            continue
        if ref.key not in data:
            reasons.append("SecretKeyNotFound")
            problems.append(
                f"{where}: Secret {ref.name!r} has no key {ref.key!r}; add the key to the "
                "Secret (the job starts once it exists)"
            )
            continue
        try:
            value = base64.b64decode(data[ref.key], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            value = None
        if value is None or "\x00" in value:
            reasons.append("SecretValueInvalid")
            problems.append(
                f"{where}: key {ref.key!r} of Secret {ref.name!r} is not UTF-8 text without "
                "NUL characters, so it cannot be an environment variable's value"
            )
            continue
        pairs.append((item.name, value))
    if problems:
        raise EnvResolutionError(reasons[0], problems)
    return pairs


def trusted_env_snapshot(
    secret: Mapping[str, Any] | None,
    job_uid: str,
    *,
    env_hash: str | None = None,
    env: Sequence[tuple[str, str]] | None = None,
) -> envfile.Snapshot | str:
    """The snapshot in an existing ``<job>-env`` when the operator may use it, else why not.

    Anyone who may create Secrets in the namespace can create one named ``<job>-env`` and owned
    by the job (a job's uid is readable by all who can read the job) before the operator writes
    it. So an existing Secret is used only when it is provably the job's snapshot: immutable,
    owned by the job, a well-formed env file whose hash is its values' HMAC under its own key,
    and either carrying the hash the operator recorded (``env_hash``: the job's status, which
    only the operator writes, or this process's memory) or holding exactly the values the
    operator has just resolved itself (``env``). Names no value in what it returns as a reason.
    """
    if env_hash is None and env is None:
        return "there is nothing to check it against"
    if secret is None:
        return "it does not exist"
    if controller_uid(secret) != job_uid:
        return "it is not owned by this job"
    if secret.get("immutable") is not True:
        return "it is not immutable"
    try:
        text = base64.b64decode(
            (secret.get("data") or {})[names.SNAPSHOT_KEY], validate=True
        ).decode("utf-8")
        snapshot = envfile.parse(text, "in the Secret")
    except (KeyError, TypeError, binascii.Error, UnicodeDecodeError, envfile.EnvFileError):
        return f"it holds no well-formed env file under key {names.SNAPSHOT_KEY!r}"
    if not envfile.verify(snapshot):
        return "its hash is not the HMAC of its values under its key"
    if env_hash is not None and not hmac.compare_digest(snapshot.env_hash, env_hash):
        return "its hash is not the one the operator recorded for this job"
    if env is not None and snapshot.env != tuple(env):
        return "its variables are not the ones the job's spec.env resolves to"
    return snapshot


#: The API server refuses a Secret whose values add up to more than 1 MiB (``MaxSecretSize``).
MAX_SECRET_BYTES = 1024 * 1024


def secret_size(body: Mapping[str, Any]) -> int:
    """The bytes of a Secret's values, as the API server counts them against its limit."""
    data = body.get("data") or {}
    return sum(len(base64.b64decode(value)) for value in data.values())


def env_secret_refused(name: str, code: int | None, size: int) -> tuple[str, str]:
    """``(reason, message)`` for an env Secret the API server refuses (``code``, a 4xx) or would
    refuse (``code`` None: over the size limit): the cause and the fix. Never the server's own
    text, which could quote what was sent."""
    if size > MAX_SECRET_BYTES:
        return "SnapshotTooLarge", (
            f"the job's resolved environment is {size} bytes, more than the "
            f"{MAX_SECRET_BYTES} bytes a Secret may hold, so Secret {name} cannot be written; "
            "send fewer or smaller variables (large data belongs in a file or a volume) "
            "and submit the job again"
        )
    if code == 403:
        return "SecretForbidden", (
            f"the API server refused the operator creating Secret {name} (403 Forbidden); "
            "grant the operator's ServiceAccount create on secrets in this namespace "
            "(the chart's Role does: docs/security.md)"
        )
    return "SecretRefused", (
        f"the API server refused Secret {name} ({code}); check the namespace's admission "
        "policies (quotas on Secrets, validating webhooks), then the job is retried"
    )


# -- desired objects ------------------------------------------------------------------------


def env_secret(
    job: ExecuteJob,
    uid: str,
    pairs: Sequence[tuple[str, str]],
    env_key: str,
    env_hash: str,
) -> dict[str, Any]:
    """The per-job Secret holding the resolved snapshot, owned by the job, immutable.

    ``env_hash`` is :func:`envfile.snapshot_hash` of ``pairs`` under ``env_key`` (a new
    random key, :func:`envfile.seal`): the key is stored here only, next to the values, so
    the hash on the Secret, the pods and the status reveals nothing about them."""
    name = _job_name(job)
    content = envfile.dumps(list(pairs), env_hash, env_key)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": env_secret_name(name),
            "namespace": job.metadata.namespace,
            "labels": job_labels(name),
            "annotations": {ENV_HASH_ANNOTATION: env_hash},
            "ownerReferences": [owner_reference(job, uid)],
        },
        "type": "Opaque",
        "immutable": True,
        "data": {names.SNAPSHOT_KEY: base64.b64encode(content.encode("utf-8")).decode("ascii")},
    }


@dataclass(frozen=True)
class WorkerId:
    index: int
    attempt: int = 0


DEFAULT_CONTAINER_SECURITY_CONTEXT: Mapping[str, Any] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def worker_pod(job: ExecuteJob, uid: str, worker: WorkerId, env_hash: str) -> dict[str, Any]:
    """Worker pod ``worker`` of ``job``, with the user's ``spec.template`` merged in.
    ``env_hash``: the env Secret's (keyed) hash, shown as the pod's annotation."""
    name = _job_name(job)
    spec = job.spec
    tpl = spec.template
    pod = pod_name(name, worker.index, worker.attempt)
    labels = {
        **user_keys(tpl.labels),
        **job_labels(name),
        WORKER_INDEX_LABEL: str(worker.index),
        ATTEMPT_LABEL: str(worker.attempt),
    }
    annotations = {**user_keys(tpl.annotations), ENV_HASH_ANNOTATION: env_hash}
    plumbing = [
        {"name": names.ENV_FILE_VAR, "value": ENV_FILE},
        {"name": names.READY_FILE_VAR, "value": READY_FILE},
        {"name": names.JOB_NAME_VAR, "value": name},
        {"name": names.WORKER_NAME_VAR, "value": pod},
        {"name": names.WORKER_INDEX_VAR, "value": str(worker.index)},
        {"name": "PYTHONUNBUFFERED", "value": "1"},  # logs appear as they are written
    ]
    code_mounts: list[dict[str, Any]] = []
    code_volumes: list[dict[str, Any]] = []
    if spec.code is not None:
        plumbing += [
            {"name": names.CODE_DIR_VAR, "value": CODE_DIR},
            {"name": names.CODE_SHA256_VAR, "value": spec.code.sha256},
            {"name": names.STATE_DIR_VAR, "value": STATE_DIR},  # where it is unpacked
        ]
        code_mounts.append({"name": CODE_VOLUME, "mountPath": CODE_DIR, "readOnly": True})
        code_volumes.append(code_volume(name, spec.code.chunks))
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.image,
        "imagePullPolicy": tpl.image_pull_policy or DEFAULT_IMAGE_PULL_POLICY,
        "command": ["python3", "-m", "cerebras_appliance.worker", spec.entrypoint, *spec.args],
        "env": plumbing,
        "volumeMounts": [
            {"name": ENV_VOLUME, "mountPath": ENV_DIR, "readOnly": True},
            {"name": STATE_VOLUME, "mountPath": STATE_DIR},
            *code_mounts,
            *tpl.volume_mounts,
        ],
        # Ready = the entrypoint applied the env (it writes the marker just before user code).
        "startupProbe": ready_file_probe(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    # 0444: readable whatever user the image runs as; nobody writes it.
    secret = {"secretName": env_secret_name(name), "defaultMode": 0o444}
    pod_spec = _pod_spec(
        tpl,
        container,
        {"name": ENV_VOLUME, "secret": secret},
        state_size=STATE_SIZE if spec.code is None else CODE_STATE_SIZE,
        extra_volumes=code_volumes,
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod,
            "namespace": job.metadata.namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner_reference(job, uid)],
            "finalizers": [TRACKING_FINALIZER],
        },
        "spec": pod_spec,
    }


def code_volume(job_name: str, chunks: int) -> dict[str, Any]:
    """The projected volume of a job's code: each ``<job>-code-<i>`` Secret's one key as the
    file of that name (``chunk-000``, ...), 0444 (the worker may run as any user; nobody
    writes). Not optional: a missing Secret or key keeps the pod in ContainerCreating with
    the kubelet's FailedMount event naming it, as a missing ``<job>-env`` does; the worker
    checks the bundle's hash before it unpacks anything."""
    sources = [
        {
            "secret": {
                "name": code_secret_name(job_name, index),
                "items": [{"key": code_chunk_key(index), "path": code_chunk_key(index)}],
            }
        }
        for index in range(chunks)
    ]
    return {"name": CODE_VOLUME, "projected": {"sources": sources, "defaultMode": 0o444}}


def _job_name(job: ExecuteJob) -> str:
    if not job.metadata.name:
        raise ValueError("metadata.name: the job has no name")
    return job.metadata.name


# -- warm pools -----------------------------------------------------------------------------

IDLE, CLAIMED = "idle", "claimed"
CLAIM_TLS_VOLUME = "appliance-claim-tls"
CLAIM_PORT_NAME = "claim"


def pool_labels(pool_name: str) -> dict[str, str]:
    return {MANAGED_BY_LABEL: MANAGED_BY, POOL_NAME_LABEL: pool_name}


def pool_selector(pool_name: str) -> str:
    """The scale subresource's label selector: the pool's idle pods."""
    return f"{MANAGED_SELECTOR},{POOL_NAME_LABEL}={pool_name},{POOL_STATE_LABEL}={IDLE}"


def pool_owner_reference(pool: WorkerPool, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": POOL_KIND,
        "name": pool.metadata.name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def pool_pod(pool: WorkerPool, uid: str, suffix: str) -> dict[str, Any]:
    """An idle pod of ``pool``: ``python -m cerebras_appliance.worker --warm`` with the
    pool's imports, Ready while idle (its readiness file says ``idle``), listening for one
    claim on :data:`CLAIM_PORT` with the pool's worker certificate. No env value: a claim
    brings the job's snapshot; until then the pod holds none."""

    name = pool.metadata.name or ""
    tpl = pool.spec.template
    plumbing = [
        {"name": names.READY_FILE_VAR, "value": READY_FILE},
        {"name": names.IDLE_FILE_VAR, "value": READY_FILE},
        {"name": names.STATE_DIR_VAR, "value": STATE_DIR},
        {"name": names.WARM_IMPORTS_VAR, "value": ",".join(pool.spec.imports)},
        {
            "name": names.WARM_STARTUP_VARS_VAR,
            "value": ",".join(pool.spec.startup_variables),
        },
        {"name": names.CLAIM_TLS_DIR_VAR, "value": CLAIM_TLS_DIR},
        {"name": names.CLAIM_PORT_VAR, "value": str(CLAIM_PORT)},
        {
            "name": names.POOL_WORKER_VAR,
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
        },
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": pool.spec.image,
        "imagePullPolicy": tpl.image_pull_policy or DEFAULT_IMAGE_PULL_POLICY,
        "command": ["python3", "-m", "cerebras_appliance.worker", "--warm"],
        "env": plumbing,
        "ports": [{"name": CLAIM_PORT_NAME, "containerPort": CLAIM_PORT, "protocol": "TCP"}],
        "volumeMounts": [
            {"name": CLAIM_TLS_VOLUME, "mountPath": CLAIM_TLS_DIR, "readOnly": True},
            {"name": STATE_VOLUME, "mountPath": STATE_DIR},
            *tpl.volume_mounts,
        ],
        # Ready = warm and idle (the worker wrote "idle" to the file). That its worker then
        # took a job's snapshot is the operator's confirmation annotation, not a probe.
        "startupProbe": ready_file_probe(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    secret = {"secretName": worker_secret_name(name, uid), "defaultMode": 0o444}
    # Room for code: a claim may bring a bundle, which the worker writes and unpacks there.
    pod_spec = _pod_spec(
        tpl, container, {"name": CLAIM_TLS_VOLUME, "secret": secret}, state_size=CODE_STATE_SIZE
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{name}-{suffix}",
            "namespace": pool.metadata.namespace,
            "labels": {**user_keys(tpl.labels), **pool_labels(name), POOL_STATE_LABEL: IDLE},
            "annotations": user_keys(tpl.annotations),
            "ownerReferences": [pool_owner_reference(pool, uid)],
        },
        "spec": pod_spec,
    }


def claim_patch(
    job: ExecuteJob, uid: str, worker: WorkerId, resource_version: str
) -> dict[str, Any]:
    """The merge patch that adopts an idle pool pod as worker ``worker`` of ``job``.

    ``metadata.resourceVersion`` makes it a compare-and-swap: the API server applies it only
    to the version the operator saw idle, so of two claims of one pod (two operators, or a
    retry after a crash) exactly one succeeds and the other gets 409. The job becomes the
    pod's only controller (deleting the job deletes the pod; the pool no longer counts it),
    the tracking finalizer is added as on a cold worker. No env hash yet: a pod may be
    adopted before the snapshot exists; :func:`confirm_patch` records which one it got."""
    name = _job_name(job)
    return {
        "metadata": {
            "resourceVersion": resource_version,
            "labels": {
                **job_labels(name),
                WORKER_INDEX_LABEL: str(worker.index),
                ATTEMPT_LABEL: str(worker.attempt),
                POOL_STATE_LABEL: CLAIMED,
            },
            "ownerReferences": [owner_reference(job, uid)],
            "finalizers": [TRACKING_FINALIZER],
            # A confirmation the pod may carry from before is not this job's: removed.
            "annotations": {CLAIM_CONFIRMED_ANNOTATION: None, CLAIMED_FOR_ANNOTATION: None},
        }
    }


def confirm_patch(env_hash: str, job_uid: str) -> dict[str, Any]:
    """The merge patch on an adopted pod once its worker accepted the snapshot ``env_hash``
    over the claim channel for the job ``job_uid`` (a cold worker carries the hash from its
    creation)."""
    return {
        "metadata": {
            "labels": {CLAIM_DELIVERED_LABEL: "true"},
            "annotations": {
                ENV_HASH_ANNOTATION: env_hash,
                CLAIM_CONFIRMED_ANNOTATION: env_hash,
                CLAIMED_FOR_ANNOTATION: job_uid,
            },
        }
    }


def ready_file_probe() -> dict[str, Any]:
    """Ready once the worker wrote its marker file. A startup probe, not a readiness probe:
    the marker is written once and stays, so the kubelet execs ``cat`` every second only
    until it first succeeds, never for the worker's whole life (an exec is a runc process on
    the node: a pool of idle workers probed every second was measured to keep a 2-core kind
    node busy); without a readiness probe the pod is then Ready."""
    return {
        "exec": {"command": ["cat", READY_FILE]},
        "periodSeconds": 1,
        "failureThreshold": STARTUP_PROBE_SECONDS,
    }


def _pod_spec(
    tpl: WorkerTemplate,
    container: dict[str, Any],
    secret_volume: dict[str, Any],
    *,
    state_size: str = STATE_SIZE,
    extra_volumes: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The pod spec of a worker (a job's or a pool's) around ``container``: the template's
    resources and security contexts, the worker's Secret and state volumes (``state_size``:
    see :data:`CODE_STATE_SIZE`) and ``extra_volumes`` (the code), then the template's own
    volumes and scheduling fields."""
    if tpl.resources is not None:
        container["resources"] = tpl.resources
    # Hardened unless the job says otherwise: what almost every dataloader runs with, and what
    # the "restricted" Pod Security profile asks of a container beyond a non-root user.
    container["securityContext"] = (
        tpl.security_context
        if tpl.security_context is not None
        else copy.deepcopy(dict(DEFAULT_CONTAINER_SECURITY_CONTEXT))
    )
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # Workers need no Kubernetes API access, and no other Service's address in their env.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "containers": [container],
        "volumes": [
            secret_volume,
            {"name": STATE_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": state_size}},
            *extra_volumes,
            *tpl.volumes,
        ],
    }
    optional: Mapping[str, Any] = {
        "serviceAccountName": tpl.service_account_name,
        "nodeSelector": tpl.node_selector or None,
        "tolerations": tpl.tolerations or None,
        "affinity": tpl.affinity,
        "securityContext": tpl.pod_security_context,
        "priorityClassName": tpl.priority_class_name,
        "imagePullSecrets": tpl.image_pull_secrets or None,
    }
    pod_spec.update({key: value for key, value in optional.items() if value is not None})
    return pod_spec
