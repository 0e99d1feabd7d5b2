"""The reconcile decision: desired vs observed state of one ExecuteJob (pure).

:func:`plan` takes everything it depends on as arguments (the job, its observed pods, what
the operator knows about the env Secret, the clock) and returns the actions that move the
cluster toward the desired state. It is called again after every event, so every action is
idempotent, and a decision made on a stale view is at worst repeated (create answers 409).

Failure counting and replacement (restart-safe, no bookkeeping outside the cluster):

* Worker ``i`` first runs as pod ``<job>-worker-<i>`` (attempt 0). When the latest attempt of
  a worker fails and the job's failures do not exceed ``backoffLimit``, attempt ``a + 1``
  runs as ``<job>-worker-<i>-<a+1>``.
* Failed pods are kept while the job runs: the failures are the job's own Failed pods, so a
  restarted operator counts exactly what the previous one counted, and the next attempt's
  name follows from the pods that exist (create-if-absent makes a repeated decision harmless).
* A worker pod deleted from outside (not failed) is recreated under the same name once it is
  gone; it does not count as a failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from appliance_operator.desired import WorkerId, pod_name
from appliance_operator.observe import JobView, PodView, parse_time, worker_state
from cerebras_appliance.api import Condition, ExecuteJobStatus
from cerebras_appliance.status import (
    FAILED,
    WORKERS_READY,
    Observation,
    WorkerState,
    compute_status,
    now_rfc3339,
)

#: The operator's own condition: was the env snapshot resolved and written to ``<job>-env``?
ENV_RESOLVED = "EnvResolved"

#: Status changes that only move counters (e.g. 3 -> 5 ready workers) are written at most
#: this often per job; phase and condition changes are written at once.
PROGRESS_WRITE_INTERVAL = 1.0


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Plan:
    """What to do now. Empty tuples/None mean nothing to do."""

    ensure_secret: bool = False  # resolve the env and create <job>-env before any pod
    create: tuple[WorkerId, ...] = ()
    delete: tuple[PodView, ...] = ()
    status: ExecuteJobStatus | None = None  # the status to write (None: unchanged/deferred)
    events: tuple[Event, ...] = ()
    delete_job: bool = False  # ttlSecondsAfterFinished has passed
    requeue_after: float | None = None  # seconds until a time-based transition is due
    phase: str = "Pending"  # the job's phase after this plan (for metrics)


@dataclass(frozen=True)
class EnvKnowledge:
    """What the operator knows about the job's env Secret (in memory; empty after restart)."""

    secret_ready: bool = False  # <job>-env exists and belongs to this job
    condition: Condition | None = None  # new EnvResolved condition to record, if any


@dataclass(frozen=True)
class Inputs:
    job: JobView
    pods: Sequence[PodView]
    env: EnvKnowledge = field(default_factory=EnvKnowledge)
    now: datetime = field(default_factory=lambda: datetime.now().astimezone())
    last_status_write: datetime | None = None  # when this operator last wrote the status
    previous: ExecuteJobStatus | None = None  # the status as last written, if newer than job's


def _latest_per_index(pods: Sequence[PodView], replicas: int) -> dict[int, PodView]:
    latest: dict[int, PodView] = {}
    for pod in pods:
        if pod.index >= replicas:
            continue
        current = latest.get(pod.index)
        if current is None or pod.attempt > current.attempt:
            latest[pod.index] = pod
    return latest


def _failures(pods: Sequence[PodView]) -> list[WorkerState]:
    failed = [p for p in pods if p.phase == "Failed"]
    failed.sort(key=lambda p: (p.finished_at, p.index, p.attempt))
    return [worker_state(p) for p in failed]


def _upsert_condition(
    status: ExecuteJobStatus, condition: Condition, previous: ExecuteJobStatus | None, now: str
) -> ExecuteJobStatus:
    old = previous.condition(condition.type) if previous else None
    changed = old is None or old.status != condition.status
    stamped = condition.model_copy(
        update={
            "last_transition_time": now if changed or old is None else old.last_transition_time,
            "observed_generation": status.observed_generation,
        }
    )
    others = [c for c in status.conditions if c.type != condition.type]
    return status.model_copy(update={"conditions": [*others, stamped]})


def significant_change(old: ExecuteJobStatus | None, new: ExecuteJobStatus) -> bool:
    """True when the phase, a condition's status/reason, or a timestamp changed; False when
    only counters and messages moved (progress)."""
    if old is None:
        return True

    def shape(s: ExecuteJobStatus) -> tuple[object, ...]:
        return (
            s.phase,
            s.replicas,
            s.env_hash,
            s.start_time,
            s.completion_time,
            s.observed_generation,
            sorted((c.type, c.status, c.reason) for c in s.conditions),
        )

    return shape(old) != shape(new)


def _phase_event(old: ExecuteJobStatus | None, new: ExecuteJobStatus) -> Event | None:
    old_phase = old.phase if old else None
    if old_phase == new.phase or (old_phase is None and new.phase == "Pending"):
        return None
    ready = new.condition(WORKERS_READY)
    failed = new.condition(FAILED)
    messages = {
        "Pending": "waiting for workers to run",
        "Running": ready.message if ready else "workers are running",
        "Succeeded": f"all {new.replicas} workers succeeded",
        "Failed": failed.message if failed else "the job failed",
        "Suspended": "spec.suspend is true: worker pods deleted",
    }
    return Event(
        type="Warning" if new.phase == "Failed" else "Normal",
        reason=new.phase,
        message=messages[new.phase],
    )


def plan(inputs: Inputs) -> Plan:
    """The actions that bring one job's pods, Secret and status to the desired state."""
    job, now = inputs.job, inputs.now
    if job.deleting:
        return Plan()  # the garbage collector removes what the job owns
    spec = job.job.spec
    previous = inputs.previous if inputs.previous is not None else job.status
    mine = [p for p in inputs.pods if p.owner_uid == job.uid]
    # A name taken by a pod of an earlier job with the same name: wait until it is gone.
    taken = {p.name for p in inputs.pods}

    requeue: list[float] = []
    deadline_exceeded = False
    if spec.active_deadline_seconds is not None and not spec.suspend:
        due = job.created + timedelta(seconds=spec.active_deadline_seconds)
        if now >= due:
            deadline_exceeded = True
        else:
            requeue.append((due - now).total_seconds())

    latest = _latest_per_index(mine, spec.replicas)
    failures = _failures(mine)
    observation = Observation(
        workers=[worker_state(latest[i]) for i in sorted(latest)],
        failures=failures,
        deadline_exceeded=deadline_exceeded,
        generation=job.generation,
    )
    stamp = now_rfc3339(now)
    status = compute_status(spec, observation, previous, env_hash=job.job.env_hash, now=now)
    env_condition = inputs.env.condition
    if env_condition is None and previous is not None:
        env_condition = previous.condition(ENV_RESOLVED)
    if env_condition is not None and not status.finished:
        status = _upsert_condition(status, env_condition, previous, stamp)

    create: list[WorkerId] = []
    delete: list[PodView] = []
    delete_job = False
    if status.finished or spec.suspend:
        # A finished job releases its workers; a suspended one keeps only its failed pods
        # (they hold the failure count).
        delete = [p for p in mine if p.active]
        if status.finished and spec.ttl_seconds_after_finished is not None:
            finished = parse_time(status.completion_time) if status.completion_time else now
            due = finished + timedelta(seconds=spec.ttl_seconds_after_finished)
            if now >= due:
                delete_job = True
            else:
                requeue.append((due - now).total_seconds())
    else:
        delete = [p for p in mine if p.index >= spec.replicas and p.active]  # scaled down
        for index in range(spec.replicas):
            current = latest.get(index)
            if current is None:
                want = WorkerId(index, 0)
            elif current.phase == "Failed":
                want = WorkerId(index, current.attempt + 1)  # within backoffLimit (not failed)
            elif current.terminating and current.phase != "Succeeded":
                want = WorkerId(index, current.attempt)  # deleted from outside: recreate
            else:
                continue
            if pod_name(job.name, want.index, want.attempt) not in taken:
                create.append(want)

    ensure_secret = bool(create) and not inputs.env.secret_ready
    if ensure_secret:
        create = []  # pods only once their Secret exists

    events: list[Event] = []
    write: ExecuteJobStatus | None = None
    if status != previous:
        if significant_change(previous, status):
            write = status
            event = _phase_event(previous, status)
            if event is not None:
                events.append(event)
        else:
            last = inputs.last_status_write
            elapsed = (now - last).total_seconds() if last is not None else None
            if elapsed is None or elapsed >= PROGRESS_WRITE_INTERVAL:
                write = status
            else:
                requeue.append(PROGRESS_WRITE_INTERVAL - elapsed)
    return Plan(
        ensure_secret=ensure_secret,
        create=tuple(create),
        delete=tuple(delete),
        status=write,
        events=tuple(events),
        delete_job=delete_job,
        requeue_after=min(requeue) if requeue else None,
        phase=status.phase,
    )
