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
from appliance_operator.job.env import ENV_RESOLVED
from appliance_operator.observe import JobView, PodView, attempt_of, parse_time
from appliance_operator.pool.plan import POOL_CLAIM
from cerebras_appliance.contract.api import Condition, ExecuteJobStatus
from cerebras_appliance.contract.lifecycle import Decision, decide, time_until
from cerebras_appliance.contract.status import (
    FAILED,
    WORKERS_READY,
    describe_failure,
    now_rfc3339,
    stamp_transition,
)

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

    #: <job>-env is needed and not known to be there: no pod is created (the controller
    #: asks :func:`needs_env` first and makes sure of the Secret before planning)
    ensure_secret: bool = False
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


@dataclass(frozen=True)
class _Workers:
    """The lifecycle's decision for one job's pods, before the env and the status."""

    mine: list[PodView]  # the pods this job owns
    orphaned: tuple[PodView, ...]  # tracked pods named for it, owned by an earlier job
    previous: ExecuteJobStatus | None
    decision: Decision
    create: tuple[WorkerId, ...]  # the workers to create, with free attempt numbers
    undelivered: bool  # an adopted pool pod still waits for the snapshot


def _owned(inputs: Inputs) -> tuple[list[PodView], tuple[PodView, ...]]:
    """(The pods this job owns, the tracked pods named for it that an earlier job owns.)"""
    job = inputs.job
    mine = [p for p in inputs.pods if p.owner_uid == job.uid]
    # Pods named for this job but owned by an earlier job of the same name (deleted and
    # recreated at once, e.g. `kubectl replace --force`): the deleted job's reconcile never
    # ran under this key, so their finalizers go here, or they would stay Terminating.
    orphaned = tuple(
        p for p in inputs.pods if p.owner_uid != job.uid and p.tracked and not p.released
    )
    return mine, orphaned


def _workers(inputs: Inputs) -> _Workers:
    """The lifecycle's decision (:func:`decide`) for a job that is not being deleted."""
    job = inputs.job
    mine, orphaned = _owned(inputs)
    previous = inputs.previous if inputs.previous is not None else job.status
    counted_before = frozenset(previous.counted_pods) if previous is not None else frozenset()
    decision = decide(
        job.job.spec,
        [attempt_of(p, counted_before) for p in mine],
        previous,
        env_hash=inputs.env.env_hash or (previous.env_hash if previous is not None else None),
        now=inputs.now,
        generation=job.generation,
    )
    # A name held by another pod (an earlier job of the same name, still terminating) is
    # skipped: the next attempt number is free.
    taken = {p.name for p in inputs.pods}
    create: list[WorkerId] = []
    for index, first in decision.create:
        number = first
        while pod_name(job.name, index, number) in taken:
            number += 1
        create.append(WorkerId(index, number))
    # Adopted pool pods wait for the snapshot too (it is delivered from the Secret).
    undelivered = any(p.warm and not p.confirmed and p.active for p in mine)
    return _Workers(mine, orphaned, previous, decision, tuple(create), undelivered)


def needs_env(inputs: Inputs) -> bool:
    """Whether the job needs ``<job>-env`` now and it is not known to be there: workers are
    to be created, or adopted pool pods wait for their snapshot (the controller makes sure
    of the Secret first, so that :func:`plan` runs once, on the outcome)."""
    if inputs.env.secret_ready or inputs.job.deleting:
        return False
    workers = _workers(inputs)
    return bool(workers.create) or workers.undelivered


def _with_conditions(
    status: ExecuteJobStatus, inputs: Inputs, previous: ExecuteJobStatus | None
) -> ExecuteJobStatus:
    """The operator's own conditions (env, replica failure, pool claim), from what this
    process knows, else carried over from the previous status."""
    stamp = now_rfc3339(inputs.now)

    def known(condition: Condition | None, type_: str) -> Condition | None:
        if condition is None and previous is not None:
            return previous.condition(type_)
        return condition

    env_condition = known(inputs.env.condition, ENV_RESOLVED)
    if env_condition is not None:
        status = _upsert_condition(status, env_condition, previous, stamp)
    replica = known(inputs.replica_failure, REPLICA_FAILURE)
    if replica is not None and not (previous is not None and previous.finished):
        status = _upsert_condition(status, replica, previous, stamp)
    pool_condition = known(inputs.pool_condition, POOL_CLAIM)
    if pool_condition is not None:
        status = _upsert_condition(status, pool_condition, previous, stamp)
    return status


def _status_write(
    previous: ExecuteJobStatus | None, status: ExecuteJobStatus, inputs: Inputs
) -> tuple[ExecuteJobStatus | None, Event | None, float | None]:
    """(The status to write now or None, its phase's Event, seconds until a deferred
    progress write is due): a phase or condition change is written at once, counters at
    most every :data:`PROGRESS_WRITE_INTERVAL`."""
    if status == previous:
        return None, None, None
    if significant_change(previous, status):
        return status, _phase_event(previous, status), None
    last = inputs.last_status_write
    elapsed = (inputs.now - last).total_seconds() if last is not None else None
    if elapsed is None or elapsed >= PROGRESS_WRITE_INTERVAL:
        return status, None, None
    return None, None, PROGRESS_WRITE_INTERVAL - elapsed


def _failure_events(
    newly: Sequence[PodView], status: ExecuteJobStatus, backoff_limit: int
) -> list[Event]:
    return [
        Event(
            "Warning",
            "WorkerFailed",
            f"{describe_failure(attempt_of(pod).state())}; "
            f"{status.failed} failure(s), backoffLimit is {backoff_limit}",
        )
        for pod in newly
        if pod.phase == "Failed"
    ]


def plan(inputs: Inputs) -> Plan:
    """The actions that bring one job's pods, Secret and status to the desired state."""
    job, now = inputs.job, inputs.now
    if job.deleting:
        # The garbage collector removes what the job owns, once the finalizers are gone.
        mine, orphaned = _owned(inputs)
        return Plan(release=(*(p for p in mine if p.tracked and not p.released), *orphaned))
    workers = _workers(inputs)
    mine, previous, decision = workers.mine, workers.previous, workers.decision
    spec = job.job.spec
    by_name = {p.name: p for p in mine}
    newly = [by_name[a.name] for a in decision.counted]
    # A uid leaves countedPods only once the watch shows its pod without the finalizer (or
    # gone): never on this process's memory of having removed it, which expires, while a
    # lagging watch could still show the pod tracked and ended (counted twice).
    still_tracked = {p.uid for p in mine if p.tracked}
    counted_pods = [u for u in previous.counted_pods if u in still_tracked] if previous else []
    counted_pods += [p.uid for p in newly if p.uid not in counted_pods]
    status = decision.status.model_copy(update={"counted_pods": counted_pods})
    status = _with_conditions(status, inputs, previous)

    requeue: list[float] = []
    if decision.requeue_after is not None:
        requeue.append(decision.requeue_after)
    disrupted = {a.name for a in decision.disrupted}
    release = [
        p
        for p in mine
        if p.tracked and not p.released and (p.uid in counted_pods or p.name in disrupted)
    ]
    release.extend(workers.orphaned)

    delete_job = False
    if status.finished and spec.ttl_seconds_after_finished is not None:
        finished = parse_time(status.completion_time) if status.completion_time else now
        delete_job, ttl_left = time_until(finished, spec.ttl_seconds_after_finished, now)
        if ttl_left is not None:
            requeue.append(ttl_left)

    ensure_secret = (bool(workers.create) or workers.undelivered) and not inputs.env.secret_ready
    events = _failure_events(newly, status, spec.backoff_limit)
    write, phase_event, progress_due = _status_write(previous, status, inputs)
    if phase_event is not None:
        events.append(phase_event)
    if progress_due is not None:
        requeue.append(progress_due)
    return Plan(
        ensure_secret=ensure_secret,
        create=() if ensure_secret else workers.create,  # pods only once their Secret exists
        needed=workers.create,
        delete=tuple(by_name[a.name] for a in decision.stop),
        status=write,
        release=tuple(release),
        events=tuple(events),
        delete_job=delete_job,
        requeue_after=min(requeue) if requeue else None,
        phase=status.phase,
    )
