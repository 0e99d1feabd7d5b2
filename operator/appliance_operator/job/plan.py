"""The reconcile decision: desired vs observed state of one ExecuteJob (pure).

:func:`plan` takes everything it depends on as arguments (the job, its observed pods, what
the operator knows about the env Secret, the clock) and returns the actions that move the
cluster toward the desired state. It is called again after every event, so every action is
idempotent, and a decision made on a stale view is at worst repeated (create answers 409).

The lifecycle rules (what is a failure, replacement, stopping) are
:func:`cerebras_appliance.contract.lifecycle.decide`, shared with the local backend. What is
Kubernetes-specific is here: counting exactly once with the tracking finalizer.

* Every worker pod is created with the finalizer ``appliance.dev/worker-tracking``. A pod
  that carries it and has ended is not counted yet; one without it is (or never will be).
* Counting is two writes: the status with the new totals (``succeeded``/``failed``,
  ``completedIndexes``) and the pod's uid in ``status.countedPods`` (written with the job's
  resourceVersion as a precondition, so a stale cache cannot count twice); then, only after
  that write, the finalizer is removed; a later status write drops the uid. A pod in
  ``countedPods`` is never counted again, whatever happens between the steps.
* A disrupted pod (stopped, deleted, evicted) needs no count: its finalizer is removed at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from appliance_operator.desired import WorkerId, pod_name
from appliance_operator.observe import JobView, PodView, attempt_of, parse_time
from appliance_operator.pool.plan import POOL_CLAIM
from cerebras_appliance.contract.api import Condition, ExecuteJobStatus
from cerebras_appliance.contract.lifecycle import decide, time_until
from cerebras_appliance.contract.status import (
    FAILED,
    WORKERS_READY,
    describe_failure,
    now_rfc3339,
    stamp_transition,
)

#: The operator's own condition: was the env snapshot resolved and written to ``<job>-env``?
ENV_RESOLVED = "EnvResolved"
#: As a ReplicaSet's: True while worker pods cannot be created (refused, name taken).
REPLICA_FAILURE = "ReplicaFailure"
#: False when the stored job cannot be read by the operator's models.
VALID = "Valid"

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
    #: the workers the job needs now, also while ``create`` waits for the Secret: a warm
    #: pool's idle pods may be adopted for them meanwhile (they get nothing until it exists)
    needed: tuple[WorkerId, ...] = ()
    delete: tuple[PodView, ...] = ()
    status: ExecuteJobStatus | None = None  # the status to write (None: unchanged/deferred)
    #: pods whose tracking finalizer goes, after the status write (if any) succeeded
    release: tuple[PodView, ...] = ()
    events: tuple[Event, ...] = ()
    delete_job: bool = False  # ttlSecondsAfterFinished has passed
    requeue_after: float | None = None  # seconds until a time-based transition is due
    phase: str = "Pending"  # the job's phase after this plan (for metrics)


@dataclass(frozen=True)
class EnvKnowledge:
    """What the operator knows about the job's env Secret (in memory; empty after restart)."""

    secret_ready: bool = False  # <job>-env exists and belongs to this job
    condition: Condition | None = None  # new EnvResolved condition to record, if any
    env_hash: str | None = None  # the keyed hash of <job>-env, once known


@dataclass(frozen=True)
class Inputs:
    job: JobView
    pods: Sequence[PodView]
    env: EnvKnowledge = field(default_factory=EnvKnowledge)
    now: datetime = field(default_factory=lambda: datetime.now().astimezone())
    last_status_write: datetime | None = None  # when this operator last wrote the status
    previous: ExecuteJobStatus | None = None  # the status as last written, if newer than job's
    replica_failure: Condition | None = None  # ReplicaFailure to record, if any
    pool_condition: Condition | None = None  # PoolClaim to record, if any (spec.pool)


def _upsert_condition(
    status: ExecuteJobStatus, condition: Condition, previous: ExecuteJobStatus | None, now: str
) -> ExecuteJobStatus:
    before = previous.conditions if previous is not None else ()
    stamped = stamp_transition(condition, before, now, status.observed_generation)
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
            s.succeeded,
            s.failed,
            s.completed_indexes,
            tuple(s.counted_pods),
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


def plan(inputs: Inputs) -> Plan:  # noqa: PLR0912, PLR0915
    """The actions that bring one job's pods, Secret and status to the desired state."""
    job, now = inputs.job, inputs.now
    mine = [p for p in inputs.pods if p.owner_uid == job.uid]
    # Pods named for this job but owned by an earlier job of the same name (deleted and
    # recreated at once, e.g. `kubectl replace --force`): the deleted job's reconcile never
    # ran under this key, so their finalizers go here, or they would stay Terminating.
    orphaned = tuple(
        p for p in inputs.pods if p.owner_uid != job.uid and p.tracked and not p.released
    )
    if job.deleting:
        # The garbage collector removes what the job owns, once the finalizers are gone.
        return Plan(release=(*(p for p in mine if p.tracked and not p.released), *orphaned))
    spec = job.job.spec
    previous = inputs.previous if inputs.previous is not None else job.status
    counted_before = frozenset(previous.counted_pods) if previous is not None else frozenset()
    decision = decide(
        spec,
        [attempt_of(p, counted_before) for p in mine],
        previous,
        env_hash=inputs.env.env_hash or (previous.env_hash if previous is not None else None),
        now=now,
        generation=job.generation,
    )
    by_name = {p.name: p for p in mine}
    newly = [by_name[a.name] for a in decision.counted]
    # A uid leaves countedPods only once the watch shows its pod without the finalizer (or
    # gone): never on this process's memory of having removed it, which expires, while a
    # lagging watch could still show the pod tracked and ended (counted twice).
    still_tracked = {p.uid for p in mine if p.tracked}
    counted_pods = [u for u in previous.counted_pods if u in still_tracked] if previous else []
    counted_pods += [p.uid for p in newly if p.uid not in counted_pods]
    status = decision.status.model_copy(update={"counted_pods": counted_pods})
    stamp = now_rfc3339(now)
    env_condition = inputs.env.condition
    if env_condition is None and previous is not None:
        env_condition = previous.condition(ENV_RESOLVED)
    if env_condition is not None:
        status = _upsert_condition(status, env_condition, previous, stamp)
    replica = inputs.replica_failure
    if replica is None and previous is not None:
        replica = previous.condition(REPLICA_FAILURE)
    if replica is not None and not (previous is not None and previous.finished):
        status = _upsert_condition(status, replica, previous, stamp)
    pool_condition = inputs.pool_condition
    if pool_condition is None and previous is not None:
        pool_condition = previous.condition(POOL_CLAIM)
    if pool_condition is not None:
        status = _upsert_condition(status, pool_condition, previous, stamp)

    requeue: list[float] = []
    if decision.requeue_after is not None:
        requeue.append(decision.requeue_after)
    # A name held by another pod (an earlier job of the same name, still terminating) is
    # skipped: the next attempt number is free.
    taken = {p.name for p in inputs.pods}
    create: list[WorkerId] = []
    for index, first in decision.create:
        number = first
        while pod_name(job.name, index, number) in taken:
            number += 1
        create.append(WorkerId(index, number))
    delete = [by_name[a.name] for a in decision.stop]
    disrupted = {a.name for a in decision.disrupted}
    release = [
        p
        for p in mine
        if p.tracked and not p.released and (p.uid in counted_pods or p.name in disrupted)
    ]
    release.extend(orphaned)

    delete_job = False
    if status.finished and spec.ttl_seconds_after_finished is not None:
        finished = parse_time(status.completion_time) if status.completion_time else now
        delete_job, ttl_left = time_until(finished, spec.ttl_seconds_after_finished, now)
        if ttl_left is not None:
            requeue.append(ttl_left)

    # Adopted pool pods wait for the snapshot too (it is delivered from the Secret).
    undelivered = any(p.warm and not p.confirmed and p.active for p in mine)
    ensure_secret = (bool(create) or undelivered) and not inputs.env.secret_ready
    needed = tuple(create)
    if ensure_secret:
        create = []  # pods only once their Secret exists

    events: list[Event] = []
    for pod in newly:
        if pod.phase == "Failed":
            events.append(
                Event(
                    "Warning",
                    "WorkerFailed",
                    f"{describe_failure(attempt_of(pod).state())}; "
                    f"{status.failed} failure(s), backoffLimit is {spec.backoff_limit}",
                )
            )
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
        needed=needed,
        delete=tuple(delete),
        status=write,
        release=tuple(release),
        events=tuple(events),
        delete_job=delete_job,
        requeue_after=min(requeue) if requeue else None,
        phase=status.phase,
    )
