"""What the operator observes, reduced to small immutable values (pure functions).

A pod becomes a :class:`PodView` as soon as its watch event arrives (the operator keeps
these, not whole pods), and a :class:`PodView` becomes the :class:`WorkerState` that
:func:`cerebras_appliance.contract.status.compute_status` understands — the same function the local
backend uses, so phases and conditions mean the same on every backend.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from appliance_operator.desired import controller_uid
from cerebras_appliance.contract.api import ExecuteJob, ExecuteJobStatus, parse_job
from cerebras_appliance.contract.lifecycle import Attempt
from cerebras_appliance.contract.names import (
    ATTEMPT_LABEL,
    CLAIM_CONFIRMED_ANNOTATION,
    CLAIMED_FOR_ANNOTATION,
    CONTAINER_NAME,
    JOB_NAME_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    POOL_NAME_LABEL,
    TRACKING_FINALIZER,
    WORKER_INDEX_LABEL,
)
from cerebras_appliance.contract.status import WorkerPhase

#: Container waiting reasons that mean "this will not start by itself soon" (the kubelet's
#: names); ContainerCreating and PodInitializing are ordinary progress and not listed.
STUCK_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "ErrImageNeverPull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
        "CrashLoopBackOff",
    }
)
MESSAGE_LIMIT = 300

_PHASES: dict[str, WorkerPhase] = {
    "Pending": "Pending",
    "Running": "Running",
    "Succeeded": "Succeeded",
    "Failed": "Failed",
}


@dataclass(frozen=True, slots=True)
class PodView:
    """The parts of a worker pod the reconcile loop needs.

    One per worker pod stays in the operator's cache (8,000 at 1,000 jobs x 8): slots, not a
    ``__dict__`` per view (~0.3 KiB less each), and the job's name and uid are shared by its
    pods' views (``pod_view`` interns them) rather than copied out of each pod's body.
    """

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
    tracked: bool = False  # carries the tracking finalizer: its outcome is not counted yet
    #: This process removed the finalizer and the watch does not show that yet (its memory:
    #: :meth:`appliance_operator.job.memory.Writes.merge`). Counted, but ``tracked`` stays
    #: what the watch shows, so its uid stays in ``status.countedPods`` until the watch
    #: shows the finalizer gone.
    released: bool = False
    disrupted: bool = False  # DisruptionTarget condition, or evicted by the kubelet
    waiting: str = ""  # why it cannot start (ImagePullBackOff, Unschedulable, ...)
    waiting_message: str = ""
    #: Claimed from a warm pool: Ready only once its worker confirmed the snapshot over the
    #: claim channel (``confirmed``); ``ip`` is where the claim goes.
    warm: bool = False
    confirmed: bool = False
    ip: str = ""

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
    owner = controller_uid(pod)
    status = pod.get("status") or {}
    phase = _PHASES.get(status.get("phase") or "Pending", "Pending")  # "Unknown" -> Pending
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    exit_code: int | None = None
    reason = str(status.get("reason") or "")  # pod-level: Evicted, DeadlineExceeded, ...
    finished_at = ""
    waiting, waiting_message = "", ""
    conditions = {str(c.get("type")): c for c in status.get("conditions") or []}
    disruption = conditions.get("DisruptionTarget")
    disrupted = (disruption is not None and disruption.get("status") == "True") or (
        reason == "Evicted"
    )
    scheduled = conditions.get("PodScheduled")
    if scheduled is not None and scheduled.get("status") == "False":
        waiting = str(scheduled.get("reason") or "Unschedulable")
        waiting_message = str(scheduled.get("message") or "")
    for cs in status.get("containerStatuses") or []:
        if cs.get("name") != CONTAINER_NAME:
            continue
        state = cs.get("state") or {}
        terminated = state.get("terminated")
        if terminated:
            exit_code = _int(terminated.get("exitCode"))
            reason = str(terminated.get("reason") or reason)
            finished_at = str(terminated.get("finishedAt") or "")
        stuck = state.get("waiting") or {}
        if stuck.get("reason") in STUCK_REASONS:
            waiting = str(stuck["reason"])
            waiting_message = str(stuck.get("message") or "")
    warm = POOL_NAME_LABEL in labels
    annotations = meta.get("annotations") or {}
    # Confirmed for this job only: the worker's answer named the job that owns the pod (a
    # worker that took another's claim is never Ready as this job's).
    confirmed = bool(annotations.get(CLAIM_CONFIRMED_ANNOTATION)) and (
        owner is not None and annotations.get(CLAIMED_FOR_ANNOTATION) == owner
    )
    return PodView(
        name=str(meta.get("name")),
        uid=str(meta.get("uid") or ""),
        job_name=sys.intern(job_name),
        owner_uid=None if owner is None else sys.intern(owner),
        index=index,
        attempt=attempt,
        phase=phase,
        ready=ready and phase == "Running" and (confirmed or not warm),
        exit_code=exit_code,
        reason=reason,
        terminating=meta.get("deletionTimestamp") is not None,
        finished_at=finished_at,
        tracked=TRACKING_FINALIZER in (meta.get("finalizers") or ()),
        disrupted=disrupted,
        waiting=waiting if phase == "Pending" else "",
        waiting_message=waiting_message[:MESSAGE_LIMIT] if phase == "Pending" else "",
        warm=warm,
        confirmed=confirmed,
        ip=str(status.get("podIP") or ""),
    )


def attempt_of(pod: PodView, counted: frozenset[str] = frozenset()) -> Attempt:
    """A pod as :func:`cerebras_appliance.contract.lifecycle.decide` sees it: counted when it
    no longer carries the tracking finalizer, or when its uid is in ``status.countedPods``."""
    return Attempt(
        index=pod.index,
        attempt=pod.attempt,
        name=pod.name,
        phase=pod.phase,
        ready=pod.ready,
        exit_code=pod.exit_code,
        reason=pod.reason,
        stopping=pod.terminating,
        disrupted=pod.disrupted,
        counted=not pod.tracked or pod.released or pod.uid in counted,
        waiting=pod.waiting,
        waiting_message=pod.waiting_message,
        finished_at=pod.finished_at,
    )


@dataclass(frozen=True, slots=True)
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
