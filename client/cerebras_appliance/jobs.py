"""``submit``: snapshot the tracked variables and start an execute job."""

from __future__ import annotations

import os
import secrets
import types
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Literal

from pydantic import ValidationError

from cerebras_appliance import settings
from cerebras_appliance.backends.local.pool import ProcessPool
from cerebras_appliance.code import Capture, capture
from cerebras_appliance.contract.api import (
    EnvVar,
    ExecuteJob,
    ExecuteJobSpec,
    InvalidJobError,
    ObjectMeta,
    SecretKeySelector,
    WorkerTemplate,
    env_from_snapshot,
    format_validation_error,
)
from cerebras_appliance.contract.names import AWAITING_VALUES_ANNOTATION
from cerebras_appliance.environment import ApplianceEnviron, appliance_environ
from cerebras_appliance.handle import JobHandle, JobNotFoundError

Backend = Literal["auto", "local", "kubernetes"]

#: The worker image used when neither ``image=`` nor ``$APPLIANCE_WORKER_IMAGE`` names one
#: (the local backend ignores it).
DEFAULT_IMAGE = settings.DEFAULT_WORKER_IMAGE


#: What ``submit()`` and ``get_job()`` return, on every backend (:mod:`.handle`): ``status()``,
#: ``wait()`` with progress, ``result()``, ``logs()`` (``follow=True`` too), ``stream_logs()``,
#: ``suspend()``, ``resume()``, ``scale()``, ``delete()``, a context manager that deletes the
#: job unless ``keep()``; async variants.
Job = JobHandle


def generate_name(prefix: str = "ej") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def values_secret_name(job_name: str) -> str:
    """A new name for the Secret holding a job's values: ``<job>-values-<8 hex>``.

    Random, so a Secret of an earlier job of the same name (garbage collection pending) is
    never in the way and never needs replacing.
    """
    return f"{job_name}-values-{secrets.token_hex(4)}"


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
    inline: bool = False,
    pool: str | None = None,
) -> ExecuteJob:
    """A validated ExecuteJob for a snapshot. Raises InvalidJobError naming each bad field.
    ``image``: default ``$APPLIANCE_WORKER_IMAGE``, then :data:`DEFAULT_IMAGE` (read now).

    Every value is a ``secretKeyRef`` into one Secret, :func:`values_secret_name` (key:
    :func:`secret_key_for` of the variable name), never inline: the job carries names and
    references only, and the annotation :data:`AWAITING_VALUES_ANNOTATION` naming that
    Secret, which ``submit()`` writes and then removes. ``inline=True`` (for a manifest to
    apply by hand, without the client) puts the values inline instead, where everyone who
    may read the job reads them, except the names in ``sensitive``. ``sensitive`` must name
    tracked variables that are set; without ``inline`` it changes nothing (every value is
    already in the Secret).
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
    by_reference = set(sensitive) if inline else {n for n, _ in snapshot}
    secret_name = values_secret_name(job_name)
    refs = {n: SecretKeySelector(name=secret_name, key=secret_key_for(n)) for n in by_reference}
    try:
        env: list[EnvVar] = env_from_snapshot(snapshot, secret_refs=refs)
        spec = ExecuteJobSpec.model_validate(
            {
                "replicas": replicas,
                "image": settings.image_setting(image).value,
                "entrypoint": entrypoint,
                "args": list(args),
                "env": env,
                "template": template if template is not None else WorkerTemplate(),
                "backoffLimit": backoff_limit,
                "activeDeadlineSeconds": active_deadline_seconds,
                "ttlSecondsAfterFinished": ttl_seconds_after_finished,
                "pool": pool,
            }
        )
    except ValidationError as exc:
        raise InvalidJobError(format_validation_error(exc, prefix="spec")) from None
    try:
        metadata = ObjectMeta(
            name=job_name,
            namespace=namespace,
            labels=dict(labels or {}),
            annotations={AWAITING_VALUES_ANNOTATION: secret_name} if refs else {},
        )
    except ValidationError as exc:
        raise InvalidJobError(format_validation_error(exc, prefix="metadata")) from None
    return ExecuteJob(metadata=metadata, spec=spec)


def secret_key_for(name: str) -> str:
    """The Secret key of a variable. Keys allow ``[-._a-zA-Z0-9]``; anything else becomes
    ``_x<hex>_``, and so does a ``_`` followed by ``x`` (so the mapping is one-to-one: no
    two names share a key). ``API_TOKEN`` stays ``API_TOKEN``."""
    out = []
    for i, c in enumerate(name):
        plain = c.isascii() and (c.isalnum() or c in "-.")
        if c == "_":
            plain = name[i + 1 : i + 2] != "x"
        out.append(c if plain else f"_x{ord(c):x}_")
    return "".join(out)


def submit(
    entrypoint: str | Callable[..., Any],
    replicas: int = 1,
    *,
    args: Sequence[str] = (),
    name: str | None = None,
    backend: Backend | None = None,
    namespace: str | None = None,
    image: str | None = None,
    sensitive: Collection[str] = (),
    template: WorkerTemplate | Mapping[str, Any] | None = None,
    backoff_limit: int = 0,
    active_deadline_seconds: int | None = None,
    ttl_seconds_after_finished: int | None = None,
    workdir: str | os.PathLike[str] | None = None,
    environ: ApplianceEnviron | None = None,
    pool: str | ProcessPool | None = None,
    working_dir: str | os.PathLike[str] | None = None,
    py_modules: Sequence[str | os.PathLike[str] | types.ModuleType] = (),
    requirements: Sequence[str] = (),
) -> Job:
    """Create an execute job running ``entrypoint`` in ``replicas`` input workers.

    The variables set through ``appliance_environ`` (and still set) are snapshotted *now*:
    changing them afterwards affects only jobs submitted later. The client's configuration
    variables (:data:`settings.CONFIG_VARS`: ``APPLIANCE_BACKEND``, ``APPLIANCE_NAMESPACE``,
    ``APPLIANCE_WORKER_IMAGE``) are read, never sent, even when set through it.

    ``backend``, ``namespace`` and ``image``: the argument, else ``$APPLIANCE_BACKEND``,
    ``$APPLIANCE_NAMESPACE``, ``$APPLIANCE_WORKER_IMAGE``, else the defaults: backend
    ``"auto"`` (Kubernetes in a pod whose service account may create ExecuteJobs there, local
    elsewhere), the pod's own namespace (else the kubeconfig context's, else ``default``),
    :data:`DEFAULT_IMAGE`. See :mod:`cerebras_appliance.settings`.

    ``backend="local"`` runs the workers as subprocesses here (``workdir`` is their working
    directory, default the current one); ``backend="kubernetes"`` creates an ExecuteJob in
    ``namespace`` for the operator, with every value in a Secret the job owns (never inline:
    see :func:`build_job`). ``sensitive`` is accepted for compatibility: it must name tracked
    variables that are set, and changes nothing (every value is treated as sensitive).
    Kubernetes errors are ``kube.KubernetesError``s: ``NoCredentialsError``,
    ``ForbiddenError`` (naming the verb, the resource and the Role that grants it),
    ``NotInstalledError`` (no CRD); the chosen backend and namespace are in their notes.

    ``pool``: warm workers. On the local backend a :class:`~cerebras_appliance.pool.LocalPool`
    (its idle processes are claimed, the rest start cold; with ``backend`` "auto", a
    ``LocalPool`` means the local backend); on Kubernetes the name of a ``WorkerPool`` in the
    namespace (``spec.pool``), whose image must be the job's.

    **Your own code, without an image build** (:mod:`cerebras_appliance.code`):
    ``entrypoint`` may be a function (a notebook's, closures included: it runs in each worker
    with ``args``); ``working_dir``: a local directory the workers run in a copy of (a script
    entrypoint is a path inside it); ``py_modules``: local packages or modules importable in
    the workers; ``requirements``: pip requirements each worker installs from the package
    index the platform configures. Captured *now*, like the variables: editing the files
    afterwards changes only the next job. Warm workers receive the code with the snapshot.
    """
    captured: Capture | None = None
    if callable(entrypoint) or working_dir is not None or py_modules or requirements:
        if working_dir is not None and workdir is not None:
            raise InvalidJobError(
                [
                    "workdir: with working_dir= the workers run in a copy of working_dir; "
                    "pass one of them"
                ]
            )
        captured = capture(
            entrypoint, working_dir=working_dir, py_modules=py_modules, requirements=requirements
        )
        entrypoint = captured.entrypoint
    elif not isinstance(entrypoint, str):
        raise InvalidJobError([f"entrypoint: {entrypoint!r} is neither a string nor callable"])
    bundle = captured.bundle if captured is not None else None
    source = appliance_environ if environ is None else environ
    # build_job refuses values that are not UTF-8
    snapshot = [(k, v) for k, v in source.tracked().items() if k not in settings.CONFIG_VARS]
    wanted = settings.backend_setting(backend)
    if wanted.value == "auto" and isinstance(pool, ProcessPool):
        chosen = settings.Setting("local", "pool= (a LocalPool)")
    elif wanted.value == "auto":
        chosen = _decide_auto(namespace)
    else:
        chosen = wanted
    problem = None
    if chosen.value == "local" and pool is not None and not isinstance(pool, ProcessPool):
        problem = (
            f"pool: {pool!r} names a WorkerPool, but the backend is local (from "
            f"{chosen.source}); the local backend claims from a LocalPool"
        )
    if chosen.value == "kubernetes" and isinstance(pool, ProcessPool):
        problem = "pool: a LocalPool serves the local backend; name a WorkerPool on Kubernetes"
    if problem is not None:
        raise InvalidJobError([problem])
    ns: settings.Setting | None = None
    if chosen.value == "kubernetes":
        from cerebras_appliance.backends.kubernetes import config as kube

        ns = kube.namespace_setting(namespace)
    job = build_job(
        entrypoint,
        replicas,
        snapshot,
        args=args,
        name=name,
        namespace=ns.value if ns is not None else namespace,
        image=image,
        sensitive=sensitive,
        template=template,
        backoff_limit=backoff_limit,
        active_deadline_seconds=active_deadline_seconds,
        ttl_seconds_after_finished=ttl_seconds_after_finished,
        pool=pool if isinstance(pool, str) else None,
    )
    if chosen.value == "local":
        from cerebras_appliance.backends.local.job import LocalJob

        return LocalJob(
            job,
            snapshot,
            workdir=workdir,
            pool=pool if isinstance(pool, ProcessPool) else None,
            code=bundle,
        )
    from cerebras_appliance.backends.kubernetes import KubernetesError, KubernetesJob

    try:
        return KubernetesJob.create(job, snapshot, code=bundle)
    except KubernetesError as exc:
        exc.add_note(f"backend 'kubernetes' from {chosen.source}; namespace {ns}")
        raise


def _decide_auto(namespace: str | None) -> settings.Setting:
    """``"auto"`` decided (``settings.decide_auto``). Outside a pod nothing Kubernetes is
    imported (a local submit stays light); in one, the access review uses the process's
    API client, which the job then uses too."""

    def ns() -> settings.Setting:
        from cerebras_appliance.backends.kubernetes import config as kube

        return kube.namespace_setting(namespace)

    def may_create(name: str) -> tuple[bool, str]:
        from cerebras_appliance.backends.kubernetes import KubernetesError
        from cerebras_appliance.backends.kubernetes import config as kube

        try:
            api_client = kube.shared_api_client()
        except KubernetesError as exc:
            return False, str(exc)
        return kube.may_create_executejobs(name, api_client)

    return settings.decide_auto(ns, may_create)


def get_job(
    name: str,
    namespace: str | None = None,
    *,
    backend: Backend | None = None,
) -> Job:
    """A handle on an existing job, e.g. after a notebook's kernel restarted.

    ``backend``: the argument, else ``$APPLIANCE_BACKEND``, else ``"auto"``: a local job of
    this process by that name, else the ExecuteJob. ``"kubernetes"``: the ExecuteJob ``name``
    in ``namespace`` (default: ``$APPLIANCE_NAMESPACE``, the pod's own, the kubeconfig
    context's, ``default``). ``"local"``: a job this process submitted and has not deleted
    (local workers belong to the process that started them). Raises
    :class:`JobNotFoundError` when there is no such job.
    """
    wanted = settings.backend_setting(backend).value
    if wanted in ("local", "auto"):
        from cerebras_appliance.backends.local.job import find_local_job

        found = find_local_job(name)
        if found is not None:
            return found
        if wanted == "local":
            raise JobNotFoundError(
                f"no local job {name!r} in this process (local jobs cannot be reattached from "
                "another process: their workers stop when the submitting process exits)"
            )
    from cerebras_appliance.backends.kubernetes import KubernetesJob

    return KubernetesJob.get(name, namespace)
