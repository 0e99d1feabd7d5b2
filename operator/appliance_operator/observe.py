"""What the operator observes, reduced to small immutable values (pure functions).

A pod becomes a :class:`PodView` as soon as its watch event arrives (the operator keeps
these, not whole pods), and a :class:`PodView` becomes the :class:`WorkerState` that
:func:`cerebras_appliance.status.compute_status` understands — the same function the local
backend uses, so phases and conditions mean the same on every backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from appliance_operator.desired import (
    ATTEMPT_LABEL,
    CONTAINER_NAME,
    JOB_NAME_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    WORKER_INDEX_LABEL,
)
from cerebras_appliance.api import ExecuteJob, ExecuteJobStatus, parse_job
from cerebras_appliance.status import WorkerPhase, WorkerState

_PHASES: dict[str, WorkerPhase] = {
    "Pending": "Pending",
    "Running": "Running",
    "Succeeded": "Succeeded",
    "Failed": "Failed",
}


@dataclass(frozen=True)
class PodView:
    """The parts of a worker pod the reconcile loop needs."""

    name: str
    uid: str
    job_name: str
    owner_uid: str | None  # uid of the controlling ExecuteJob
    index: int
    attempt: int
    phase: WorkerPhase
    ready: bool = False
    exit_code: int | None = None
    reason: str = ""
    terminating: bool = False
    finished_at: str = ""  # RFC 3339, when it terminated ("" while it has not)

    @property
    def active(self) -> bool:
        """Pending or running, and not being deleted."""
        return self.phase in ("Pending", "Running") and not self.terminating


def _int(text: object) -> int | None:
    try:
        return int(str(text))
    except ValueError:
        return None


def pod_view(pod: Mapping[str, Any]) -> PodView | None:
    """A worker pod's view, or None when the pod is not a worker pod the operator made."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    if labels.get(MANAGED_BY_LABEL) != MANAGED_BY:
        return None
    job_name = labels.get(JOB_NAME_LABEL)
    index = _int(labels.get(WORKER_INDEX_LABEL))
    attempt = _int(labels.get(ATTEMPT_LABEL, "0"))
    if not job_name or index is None or attempt is None:
        return None
    owner = next(
        (ref.get("uid") for ref in meta.get("ownerReferences") or [] if ref.get("controller")),
        None,
    )
    status = pod.get("status") or {}
    phase = _PHASES.get(status.get("phase") or "Pending", "Pending")  # "Unknown" -> Pending
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    exit_code: int | None = None
    reason = str(status.get("reason") or "")  # pod-level: Evicted, DeadlineExceeded, ...
    finished_at = ""
    for cs in status.get("containerStatuses") or []:
        if cs.get("name") != CONTAINER_NAME:
            continue
        terminated = (cs.get("state") or {}).get("terminated")
        if terminated:
            exit_code = _int(terminated.get("exitCode"))
            reason = str(terminated.get("reason") or reason)
            finished_at = str(terminated.get("finishedAt") or "")
    return PodView(
        name=str(meta.get("name")),
        uid=str(meta.get("uid") or ""),
        job_name=job_name,
        owner_uid=owner,
        index=index,
        attempt=attempt,
        phase=phase,
        ready=ready and phase == "Running",
        exit_code=exit_code,
        reason=reason,
        terminating=meta.get("deletionTimestamp") is not None,
        finished_at=finished_at,
    )


def worker_state(pod: PodView) -> WorkerState:
    """A pod as compute_status sees it; a pod being deleted counts as neither running nor
    ready (it is going away)."""
    phase: WorkerPhase = pod.phase
    if pod.terminating and phase == "Running":
        phase = "Pending"
    return WorkerState(
        name=pod.name,
        phase=phase,
        ready=pod.ready and phase == "Running",
        exit_code=pod.exit_code,
        reason=pod.reason,
    )


@dataclass(frozen=True)
class JobView:
    """An ExecuteJob as stored, parsed, with the metadata the reconcile loop needs."""

    namespace: str
    name: str
    uid: str
    resource_version: str
    generation: int | None
    created: datetime
    deleting: bool
    job: ExecuteJob

    @property
    def status(self) -> ExecuteJobStatus | None:
        return self.job.status


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def job_view(body: Mapping[str, Any]) -> JobView:
    """Parse a stored ExecuteJob. Raises InvalidJobError (naming the field) when it does not
    satisfy the models (only possible when the CRD and the models disagree)."""
    meta = body.get("metadata") or {}
    job = parse_job(dict(body))
    created = meta.get("creationTimestamp")
    return JobView(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
        resource_version=str(meta.get("resourceVersion") or ""),
        generation=meta.get("generation"),
        created=parse_time(created) if created else datetime.now(UTC),
        deleting=meta.get("deletionTimestamp") is not None,
        job=job,
    )
