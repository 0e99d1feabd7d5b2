"""``submit``: snapshot the tracked variables and start an execute job."""

from __future__ import annotations

import os
import secrets
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Literal, Protocol

from pydantic import ValidationError

from cerebras_appliance.api import (
    EnvVar,
    ExecuteJob,
    ExecuteJobSpec,
    ExecuteJobStatus,
    InvalidJobError,
    ObjectMeta,
    SecretKeySelector,
    WorkerTemplate,
    env_from_snapshot,
    format_validation_error,
)
from cerebras_appliance.environment import ApplianceEnviron, appliance_environ

Backend = Literal["local", "kubernetes"]

#: The worker image used when none is given (the local backend ignores it).
DEFAULT_IMAGE = os.environ.get("APPLIANCE_WORKER_IMAGE", "appliance-operator/worker:0.1.0")


class Job(Protocol):
    """What every backend's job handle offers."""

    name: str
    manifest: dict[str, Any]

    def status(self) -> ExecuteJobStatus: ...

    def wait(self, timeout: float | None = None) -> ExecuteJobStatus: ...

    def logs(self) -> dict[str, str]: ...

    def delete(self) -> None: ...


def generate_name(prefix: str = "ej") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def sensitive_secret_name(job_name: str) -> str:
    """The Secret the client writes for values marked sensitive."""
    return f"{job_name}-sensitive"


def build_job(
    entrypoint: str,
    replicas: int,
    snapshot: Sequence[tuple[str, str]],
    *,
    args: Sequence[str] = (),
    name: str | None = None,
    namespace: str | None = None,
    image: str | None = None,
    sensitive: Collection[str] = (),
    template: WorkerTemplate | Mapping[str, Any] | None = None,
    backoff_limit: int = 0,
    active_deadline_seconds: int | None = None,
    ttl_seconds_after_finished: int | None = None,
    labels: Mapping[str, str] | None = None,
) -> ExecuteJob:
    """A validated ExecuteJob for a snapshot. Raises InvalidJobError naming each bad field.

    Names listed in ``sensitive`` are sent as ``secretKeyRef`` items pointing at
    :func:`sensitive_secret_name` (key = variable name), not inline.
    """
    job_name = name or generate_name()
    unknown = sorted(set(sensitive) - {n for n, _ in snapshot})
    if unknown:
        raise InvalidJobError(
            [
                f"sensitive: {n!r} is not a tracked variable that is set; "
                "set it through appliance_environ first"
                for n in unknown
            ]
        )
    refs = {
        n: SecretKeySelector(name=sensitive_secret_name(job_name), key=secret_key_for(n))
        for n in sensitive
    }
    try:
        env: list[EnvVar] = env_from_snapshot(snapshot, secret_refs=refs)
        spec = ExecuteJobSpec.model_validate(
            {
                "replicas": replicas,
                "image": image or DEFAULT_IMAGE,
                "entrypoint": entrypoint,
                "args": list(args),
                "env": env,
                "template": template if template is not None else WorkerTemplate(),
                "backoffLimit": backoff_limit,
                "activeDeadlineSeconds": active_deadline_seconds,
                "ttlSecondsAfterFinished": ttl_seconds_after_finished,
            }
        )
    except ValidationError as exc:
        raise InvalidJobError(format_validation_error(exc, prefix="spec")) from None
    try:
        metadata = ObjectMeta(name=job_name, namespace=namespace, labels=dict(labels or {}))
    except ValidationError as exc:
        raise InvalidJobError(format_validation_error(exc, prefix="metadata")) from None
    return ExecuteJob(metadata=metadata, spec=spec)


def secret_key_for(name: str) -> str:
    """Secret keys allow [-._a-zA-Z0-9]; variable names may hold more, so escape the rest."""
    return "".join(
        c if c.isascii() and (c.isalnum() or c in "-._") else f"_x{ord(c):x}_" for c in name
    )


def submit(
    entrypoint: str,
    replicas: int = 1,
    *,
    args: Sequence[str] = (),
    name: str | None = None,
    backend: Backend = "local",
    namespace: str | None = None,
    image: str | None = None,
    sensitive: Collection[str] = (),
    template: WorkerTemplate | Mapping[str, Any] | None = None,
    backoff_limit: int = 0,
    active_deadline_seconds: int | None = None,
    ttl_seconds_after_finished: int | None = None,
    workdir: str | os.PathLike[str] | None = None,
    environ: ApplianceEnviron | None = None,
) -> Job:
    """Create an execute job running ``entrypoint`` in ``replicas`` input workers.

    The variables set through ``appliance_environ`` (and still set) are snapshotted *now*:
    changing them afterwards affects only jobs submitted later.

    ``backend="local"`` runs the workers as subprocesses here (``workdir`` is their working
    directory, default the current one); ``backend="kubernetes"`` creates an ExecuteJob in
    ``namespace`` for the operator.
    """
    source = appliance_environ if environ is None else environ
    snapshot = list(source.tracked().items())  # build_job refuses values that are not UTF-8
    job = build_job(
        entrypoint,
        replicas,
        snapshot,
        args=args,
        name=name,
        namespace=namespace,
        image=image,
        sensitive=sensitive,
        template=template,
        backoff_limit=backoff_limit,
        active_deadline_seconds=active_deadline_seconds,
        ttl_seconds_after_finished=ttl_seconds_after_finished,
    )
    if backend == "local":
        from cerebras_appliance.local import LocalJob

        return LocalJob(job, snapshot, workdir=workdir)
    if backend == "kubernetes":
        from cerebras_appliance.kube import KubernetesJob

        return KubernetesJob.create(job, snapshot, sensitive=sensitive)
    raise ValueError(f"backend: {backend!r} is not one of 'local', 'kubernetes'")
