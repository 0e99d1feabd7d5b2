"""Job status from observed workers: one pure function shared by every backend.

The local backend observes subprocesses, the operator observes pods; both reduce what they
see to :class:`WorkerState` and call :func:`compute_status`, so phases, counts and conditions
mean the same thing everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from cerebras_appliance.contract.api import Condition, ExecuteJobSpec, ExecuteJobStatus, Phase

WorkerPhase = Literal["Pending", "Running", "Succeeded", "Failed"]

# Condition types.
WORKERS_READY = "WorkersReady"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
SUSPENDED = "Suspended"


@dataclass(frozen=True)
class WorkerState:
    """What a backend observed of one worker attempt."""

    name: str
    phase: WorkerPhase
    ready: bool = False  # the entrypoint applied the env (readiness marker written)
    exit_code: int | None = None
    reason: str = ""  # e.g. "OOMKilled", "Error"
    #: Why a Pending worker does not run yet, when the platform says (CamelCase, e.g.
    #: "ImagePullBackOff", "Unschedulable", "CreateContainerConfigError"), and its message.
    waiting: str = ""
    waiting_message: str = ""


@dataclass(frozen=True)
class Observation:
    """Everything the status depends on, besides the spec and the previous status.

    ``succeeded`` and ``failed`` are the job's counted totals (:mod:`.lifecycle`
    keeps them, so they survive the loss of the workers they count); ``workers`` are the
    current attempts of the workers that have not succeeded; ``failures`` the failures counted
    just now (the latest is named when the job fails).
    """

    workers: Sequence[WorkerState]
    succeeded: int = 0
    failed: int = 0
    failures: Sequence[WorkerState] = ()
    deadline_exceeded: bool = False
    generation: int | None = None


def now_rfc3339(now: datetime | None = None) -> str:
    moment = now or datetime.now(UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe_failure(worker: WorkerState) -> str:
    detail = f"exit code {worker.exit_code}" if worker.exit_code is not None else "no exit code"
    if worker.reason and worker.reason not in ("Error", "Completed"):
        detail += f", {worker.reason}"
    return f"worker {worker.name} failed ({detail})"


def stamp_transition(
    condition: Condition, previous: Sequence[Condition], now: str, generation: int | None
) -> Condition:
    """``condition`` with its ``lastTransitionTime`` and ``observedGeneration`` set: the time
    is kept from the condition of the same type in ``previous`` while its status is the same
    (a message or a reason moving is no transition), else it is ``now``.

    Written once for every status the project writes (the job's here and in the operator's
    plan, a pool's), so a transition means the same thing on each."""
    old = next((c for c in previous if c.type == condition.type), None)
    kept = old is not None and old.status == condition.status and old.last_transition_time
    return condition.model_copy(
        update={
            "last_transition_time": old.last_transition_time if kept and old else now,
            "observed_generation": generation,
        }
    )


def _set_condition(
    conditions: list[Condition],
    previous: Sequence[Condition],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    now: str,
    generation: int | None,
) -> None:
    value: Literal["True", "False"] = "True" if status else "False"
    condition = Condition(type=type_, status=value, reason=reason, message=message)
    conditions.append(stamp_transition(condition, previous, now, generation))


def _phase(spec: ExecuteJobSpec, observed: Observation) -> tuple[Phase, str, str]:
    """The phase, and the reason and message of a failure (empty otherwise)."""
    failed = observed.failed
    if observed.deadline_exceeded:
        return (
            "Failed",
            "DeadlineExceeded",
            f"job ran longer than activeDeadlineSeconds={spec.active_deadline_seconds}",
        )
    if failed > spec.backoff_limit:
        failures = observed.failures
        latest = f"{describe_failure(failures[-1])}; " if failures else ""
        message = f"{latest}{failed} worker failure(s), backoffLimit is {spec.backoff_limit}"
        return "Failed", "BackoffLimitExceeded", message
    if observed.succeeded >= spec.replicas:
        return "Succeeded", "", ""
    if spec.suspend:
        return "Suspended", "", ""
    if any(w.phase == "Running" for w in observed.workers):
        return "Running", "", ""
    return "Pending", "", ""


def _readiness(
    spec: ExecuteJobSpec, observed: Observation, ready: int, finished: bool, env_hash: str | None
) -> tuple[bool, str, str]:
    """WorkersReady: whether every worker applied the env, its reason and message."""
    all_ready = ready >= spec.replicas and not finished
    stuck = sorted(
        (w for w in observed.workers if w.phase == "Pending" and w.waiting), key=lambda w: w.name
    )
    if finished:
        return all_ready, "JobFinished", "the job has finished"
    if all_ready:
        return all_ready, "EnvApplied", f"all {spec.replicas} workers applied the env ({env_hash})"
    if stuck:
        # A worker that cannot start says why, instead of a silent Pending.
        first = stuck[0]
        detail = f": {first.waiting_message}" if first.waiting_message else ""
        # Only the first (by name) is named, so the message does not move while the scheduler
        # works through many pods: one status write, not one per pod it marks unschedulable.
        message = (
            f"worker {first.name} is not running: {first.waiting}{detail}; "
            f"{ready}/{spec.replicas} workers applied the env"
        )[:1024]
        return all_ready, first.waiting, message
    return all_ready, "WaitingForWorkers", f"{ready}/{spec.replicas} workers applied the env"


def compute_status(
    spec: ExecuteJobSpec,
    observed: Observation,
    previous: ExecuteJobStatus | None,
    *,
    env_hash: str | None,
    now: datetime | None = None,
) -> ExecuteJobStatus:
    """The job's status. Terminal phases are sticky: a finished job stays finished."""
    prev = previous or ExecuteJobStatus()
    if prev.finished:
        # A finished job stays finished, whatever happens to its workers afterwards.
        gen = observed.generation if observed.generation is not None else prev.observed_generation
        return prev.model_copy(update={"observed_generation": gen})
    stamp = now_rfc3339(now)
    succeeded = observed.succeeded
    failed = observed.failed
    ready = sum(1 for w in observed.workers if w.phase == "Running" and w.ready)
    phase, fail_reason, fail_message = _phase(spec, observed)

    finished = phase in ("Succeeded", "Failed")
    # As a Job's: set when the job starts (not suspended), cleared by a suspend, so that
    # activeDeadlineSeconds counts from the latest start.
    start_time = prev.start_time
    if phase == "Suspended":
        start_time = None
    elif start_time is None:
        start_time = stamp
    completion_time = prev.completion_time
    if completion_time is None and finished:
        completion_time = stamp

    gen = observed.generation
    conditions: list[Condition] = []
    all_ready, ready_reason, ready_message = _readiness(spec, observed, ready, finished, env_hash)
    _set_condition(
        conditions,
        prev.conditions,
        WORKERS_READY,
        all_ready,
        ready_reason,
        ready_message,
        stamp,
        gen,
    )
    _set_condition(
        conditions,
        prev.conditions,
        SUCCEEDED,
        phase == "Succeeded",
        "AllWorkersSucceeded" if phase == "Succeeded" else "NotFinished",
        f"{succeeded}/{spec.replicas} workers succeeded",
        stamp,
        gen,
    )
    _set_condition(
        conditions,
        prev.conditions,
        FAILED,
        phase == "Failed",
        fail_reason or "NoFailure",
        fail_message or f"{failed} worker failure(s)",
        stamp,
        gen,
    )
    suspended = phase == "Suspended"
    _set_condition(
        conditions,
        prev.conditions,
        SUSPENDED,
        suspended,
        "JobSuspended" if suspended else "NotSuspended",
        "spec.suspend is true: workers removed" if suspended else "",
        stamp,
        gen,
    )
    return ExecuteJobStatus(
        phase=phase,
        conditions=conditions,
        replicas=spec.replicas,
        ready_replicas=0 if finished else ready,
        succeeded=succeeded,
        failed=failed,
        env_hash=env_hash,
        start_time=start_time,
        completion_time=completion_time,
        observed_generation=gen,
    )
