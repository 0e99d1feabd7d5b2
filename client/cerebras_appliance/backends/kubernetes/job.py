"""The handle on an ExecuteJob (:class:`KubernetesJob`): the primitives
:class:`~cerebras_appliance.handle.JobHandle` needs, written over this package's modules
(:mod:`.create` the create protocol, :mod:`.watch` the status feed, :mod:`.logs` the pods'
logs, :mod:`.objects` the requests on the job itself)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any

from kubernetes import client

from cerebras_appliance.backends.kubernetes import config
from cerebras_appliance.backends.kubernetes.create import create_executejob
from cerebras_appliance.backends.kubernetes.errors import (
    _EJ,
    CONNECTION_ERRORS,
    KubernetesError,
    _api_error,
    is_missing_object,
    message_of,
    unreachable,
)
from cerebras_appliance.backends.kubernetes.logs import PodLogs
from cerebras_appliance.backends.kubernetes.objects import JobRef, status_of
from cerebras_appliance.backends.kubernetes.watch import StatusFeed
from cerebras_appliance.contract.api import (
    CodeBundle,
    ExecuteJob,
    ExecuteJobStatus,
    InvalidJobError,
)
from cerebras_appliance.contract.bundle import SECRET_CHUNK_BYTES, Bundle
from cerebras_appliance.contract.names import JOB_NAME_LABEL
from cerebras_appliance.handle import AttemptRef, JobDeletedError, JobHandle, JobNotFoundError

#: How long ``suspend()``, ``resume()`` and ``scale()`` wait for the operator to observe the
#: change (its status then answers it) before they return the status as it is.
_OBSERVE_CHANGE_S = 30.0
#: The longest single wait for news while they do.
_OBSERVE_TICK_S = 0.5


class KubernetesJob(JobHandle):
    """Handle on an ExecuteJob in a cluster."""

    def __init__(
        self,
        name: str,
        namespace: str,
        manifest: dict[str, Any],
        api_client: client.ApiClient | None = None,
    ) -> None:
        self.name = name
        self.namespace = namespace
        self.manifest = manifest
        self._ref = JobRef(
            name, namespace, api_client if api_client is not None else config.shared_api_client()
        )
        self._logs = PodLogs(self._ref)

    @property
    def ref(self) -> JobRef:
        """Where the job lives and the API clients that reach it (read-only)."""
        return self._ref

    # -- creation ------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        job: ExecuteJob,
        snapshot: Sequence[tuple[str, str]],
        *,
        sensitive: Collection[str] = (),
        api_client: client.ApiClient | None = None,
        code: Bundle | None = None,
    ) -> KubernetesJob:
        """Create the job and the Secret of its values; return its handle.

        ``code``: the user's code bundle (issue 23), written to Secrets the job owns before
        the job is released; ``spec.code`` is set from it when the job does not describe it
        already (ValueError when it describes another bundle).

        The order of :mod:`.create` makes an interruption harmless: an error or an exception
        (Ctrl-C included) once the job exists deletes it, and with it the Secret; a SIGKILL
        leaves a job that waits for its values and starts nothing. ``sensitive`` is accepted
        for compatibility and changes nothing (every value goes to the Secret).

        Raises InvalidJobError when the API server refuses the job (the message names the
        field), KubernetesError for anything else (e.g. a job of that name exists), naming
        the object and the fix.
        """
        del sensitive  # every value goes to the Secret
        name = job.metadata.name
        if not name:
            raise InvalidJobError(["metadata.name: a Kubernetes job needs a name"])
        namespace = job.metadata.namespace or config.default_namespace()
        job = job.model_copy(
            update={"metadata": job.metadata.model_copy(update={"namespace": namespace})}
        )
        if code is not None and job.spec.code is None:
            described = CodeBundle(
                sha256=code.sha256,
                chunks=-(-len(code.data) // SECRET_CHUNK_BYTES),
                size=len(code.data),
            )
            job = job.model_copy(update={"spec": job.spec.model_copy(update={"code": described})})
        handle = cls(name, namespace, job.to_manifest(), api_client)
        create_executejob(handle.ref, job, handle.manifest, snapshot, code)
        return handle

    # -- reattaching --------------------------------------------------------------------

    @classmethod
    def get(
        cls, name: str, namespace: str | None = None, api_client: client.ApiClient | None = None
    ) -> KubernetesJob:
        """A handle on the existing ExecuteJob ``namespace/name`` (JobNotFoundError if none)."""
        handle = cls(name, namespace or config.default_namespace(), {}, api_client)
        obj = handle.ref.get()
        if obj is None:
            raise JobNotFoundError(f"ExecuteJob {handle.namespace}/{name} does not exist")
        manifest = {k: v for k, v in obj.items() if k != "status"}
        metadata = manifest.get("metadata") or {}
        manifest["metadata"] = {
            k: v for k, v in metadata.items() if k in ("name", "namespace", "labels")
        }
        handle.manifest = manifest
        handle._last_status = status_of(obj)
        return handle

    # -- following -----------------------------------------------------------------------

    @property
    def label(self) -> str:
        return self._ref.label

    def status(self) -> ExecuteJobStatus:
        """The job's status as the operator last wrote it (phase Pending before that)."""
        obj = self._ref.get()
        if obj is None:
            raise KubernetesError(f"ExecuteJob {self.namespace}/{self.name} does not exist")
        return status_of(obj)

    def _refresh(self) -> ExecuteJobStatus:
        obj = self._ref.get()
        if obj is None:
            raise JobDeletedError(f"job {self.label} was deleted", self._last_status)
        self._last_status = status_of(obj)
        return self._last_status

    @contextlib.contextmanager
    def _observer(self) -> Iterator[Callable[[float], ExecuteJobStatus]]:
        """Watches the job (no polling) in a thread for the duration of a wait."""
        feed = StatusFeed(self._ref, self._saw)
        try:
            yield feed.next
        finally:
            feed.close()

    def _saw(self, status: ExecuteJobStatus) -> None:
        self._last_status = status

    def _attempts(self) -> list[AttemptRef]:
        return self._logs.attempts()

    def _read_log(self, name: str, tail: int | None) -> str:
        return self._logs.read(name, tail)

    def _follow_attempt(
        self, ref: AttemptRef, stop: threading.Event, finished: threading.Event
    ) -> Iterator[str]:
        return self._logs.follow(ref, stop, finished)

    def _stop_following(self) -> None:
        self._logs.stop_following()

    def _no_status_hint(self, status: ExecuteJobStatus) -> str:
        if status.observed_generation is not None:
            return ""
        return (
            f"the operator has written no status for job {self.label}: it is not running, or "
            f"it does not watch namespace {self.namespace!r} (kubectl get pods -A -l "
            "app.kubernetes.io/name=appliance-operator; installed with rbac.scope=namespace, "
            "the namespace must be in watchNamespaces)"
        )

    def _after_interrupt_delete(self) -> str:
        return (
            f" (its pods are being removed: kubectl get pods -n {self.namespace} "
            f"-l {JOB_NAME_LABEL}={self.name})"
        )

    def _reattach_hint(self) -> str:
        return (
            f"follow it again with cerebras_appliance.get_job({self.name!r}, "
            f"namespace={self.namespace!r}); stop it with job.delete()"
        )

    # -- changing the spec ----------------------------------------------------------------

    def suspend(self) -> ExecuteJobStatus:
        """``spec.suspend = true``: the operator removes the workers (not a failure) and keeps
        the job (phase ``Suspended``; a ``wait()`` raises JobSuspendedError). Returns the
        status the operator wrote once it observed the change (see :meth:`_patch_spec`)."""
        return self._patch_spec({"suspend": True}, "suspending")

    def resume(self) -> ExecuteJobStatus:
        """``spec.suspend = false``: the operator starts the workers that have not succeeded.
        Returns the status the operator wrote once it observed the change, so a ``wait()``
        right after it does not see the job still suspended."""
        return self._patch_spec({"suspend": False}, "resuming")

    def scale(self, replicas: int) -> ExecuteJobStatus:
        """Change ``spec.replicas`` (mutable, unlike the image, entrypoint, env and pool: the
        snapshot does not depend on it): workers beyond it stop, missing ones start. The API
        server checks the bounds (InvalidJobError names them). Returns the status the
        operator wrote once it observed the change."""
        return self._patch_spec({"replicas": replicas}, f"scaling to {replicas} workers")

    def _patch_spec(self, changes: dict[str, Any], doing: str) -> ExecuteJobStatus:
        """Merge ``changes`` into the spec; then wait (up to :data:`_OBSERVE_CHANGE_S`) for
        the operator to observe the new generation, as the local backend applies a change
        before it returns. An operator that does not (not running, not watching the
        namespace) leaves the status as it was: it is returned as it is then."""
        what = f"{doing} ExecuteJob {self.namespace}/{self.name}"
        try:
            obj = self._ref.patch({"spec": changes})
        except client.ApiException as exc:
            if exc.status == 422:
                raise InvalidJobError([message_of(exc)]) from None
            if is_missing_object(exc):
                raise KubernetesError(
                    f"ExecuteJob {self.namespace}/{self.name} does not exist"
                ) from None
            raise _api_error(what, exc, "patch", _EJ, self.namespace) from None
        except CONNECTION_ERRORS as exc:
            raise KubernetesError(f"{what}: {unreachable(exc)}") from None
        if isinstance(self.manifest.get("spec"), dict):
            self.manifest["spec"].update(changes)
        self._last_status = status_of(obj)
        generation = (obj.get("metadata") or {}).get("generation")
        if generation is None:
            return self._last_status
        return self._observed(int(generation))

    def _observed(self, generation: int) -> ExecuteJobStatus:
        """The first status written for ``generation`` or later; the newest one when none
        came within :data:`_OBSERVE_CHANGE_S`."""
        status = self._last_status or ExecuteJobStatus()
        if (status.observed_generation or 0) >= generation:
            return status
        deadline = time.monotonic() + _OBSERVE_CHANGE_S
        with self._observer() as observe:
            while (status.observed_generation or 0) < generation:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                status = observe(min(_OBSERVE_TICK_S, remaining))
        return status

    # -- stopping ------------------------------------------------------------------------

    def delete(self) -> None:
        """Delete the job; its pods and Secrets go with it (ownerReferences)."""
        self._stop_following()
        try:
            self._ref.delete(client.V1DeleteOptions(propagation_policy="Background"))
        except client.ApiException as exc:
            if exc.status != 404:
                raise _api_error(
                    f"deleting ExecuteJob {self.namespace}/{self.name}",
                    exc,
                    "delete",
                    _EJ,
                    self.namespace,
                ) from None

    def __repr__(self) -> str:
        return f"<KubernetesJob {self.namespace}/{self.name}>"
