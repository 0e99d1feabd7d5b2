"""The worker lifecycle: one decision over worker attempts, shared by every backend (pure).

The operator observes pods, the local backend observes subprocesses; each reduces what it sees
to :class:`Attempt` values and calls :func:`decide`, which says what to count, which workers to
start and stop, and what the job's status is. A rule is written here once.

The rules (``docs/operator.md`` has the reasoning and where they depart from the Job
controller):

* **What is a failure.** Only the user's code failing: a worker that exited non-zero (or was
  OOM-killed) on its own. A worker that was stopped or deleted (by the operator for a suspend,
  a scale-down or a finished job; by a person; by an eviction, a drain, a preemption or node
  loss) is *disrupted*: it never consumes ``backoffLimit`` and is replaced while the job
  still needs it.
* **Counting survives worker loss.** What finished is counted once, into a :class:`Record`
  (``status.completedIndexes`` and ``status.failed`` on Kubernetes), and an attempt is
  ``counted`` from then on. Counts never go backwards when finished workers disappear, and a
  worker index that succeeded is never run again.
* **Replacement.** Each worker index runs one attempt at a time: ``<job>-worker-<i>`` first,
  then ``<job>-worker-<i>-<a>`` with ``a`` one more than any attempt still observed. A
  disrupted or failed attempt (within ``backoffLimit``) is replaced at once, even while the
  old one is still terminating (the Job controller's default ``podReplacementPolicy``).
* **Stopping.** A finished or suspended job stops every active attempt; indexes beyond
  ``replicas`` (scale-down) and indexes that already succeeded are stopped too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from cerebras_appliance.contract.api import ExecuteJobSpec, ExecuteJobStatus
from cerebras_appliance.contract.status import (
    Observation,
    WorkerPhase,
    WorkerState,
    compute_status,
)

Outcome = Literal["succeeded", "failed", "disrupted"]

#: Exit codes of a worker that was stopped by a signal: SIGTERM (the worker's own code for
#: a requested stop), SIGKILL (the grace period ran out), SIGINT.
STOPPED_EXIT_CODES = frozenset({128 + 15, 128 + 9, 128 + 2})


@dataclass(frozen=True)
class Attempt:
    """One attempt of one worker, as a backend observed it."""

    index: int
    attempt: int
    name: str
    phase: WorkerPhase
    ready: bool = False
    exit_code: int | None = None
    reason: str = ""
    #: being stopped or deleted, by anyone (a pod's deletionTimestamp; a signalled process)
    stopping: bool = False
    #: the platform says it was disrupted (a pod's DisruptionTarget condition, an eviction)
    disrupted: bool = False
    #: its outcome is already in the record (or it was settled as disrupted)
    counted: bool = False
    waiting: str = ""
    waiting_message: str = ""
    finished_at: str = ""  # RFC 3339; orders failures counted in one decision

    @property
    def active(self) -> bool:
        """Pending or running, and not being stopped."""
        return self.phase in ("Pending", "Running") and not self.stopping

    def state(self) -> WorkerState:
        return WorkerState(
            name=self.name,
            phase=self.phase,
            ready=self.ready and self.phase == "Running",
            exit_code=self.exit_code,
            reason=self.reason,
            waiting=self.waiting,
            waiting_message=self.waiting_message,
        )


def outcome(attempt: Attempt) -> Outcome | None:
    """How an attempt ended, or None while it has not (and nobody is stopping it)."""
    if attempt.phase == "Succeeded":
        return "succeeded"
    if attempt.phase == "Failed":
        if attempt.disrupted:
            return "disrupted"
        if attempt.reason == "OOMKilled":
            return "failed"  # the user's code ran out of memory, even while being stopped
        if attempt.stopping and (
            attempt.exit_code is None or attempt.exit_code in STOPPED_EXIT_CODES
        ):
            return "disrupted"
        return "failed"
    if attempt.stopping:
        return "disrupted"  # going away before it finished: replaced, not counted
    return None


@dataclass(frozen=True)
class Record:
    """What has been counted; it outlives the workers it counts."""

    completed: frozenset[int] = frozenset()
    failed: int = 0


@dataclass(frozen=True)
class Decision:
    record: Record
    #: attempts whose outcome was counted now (succeeded or failed), in record order
    counted: tuple[Attempt, ...] = ()
    #: attempts settled now without being counted (disrupted)
    disrupted: tuple[Attempt, ...] = ()
    create: tuple[tuple[int, int], ...] = ()  # (index, attempt) to start
    stop: tuple[Attempt, ...] = ()
    status: ExecuteJobStatus = field(default_factory=ExecuteJobStatus)
    requeue_after: float | None = None  # seconds until the deadline is due

    @property
    def settled(self) -> tuple[Attempt, ...]:
        """Every attempt whose outcome was settled now (counted or disrupted)."""
        return self.counted + self.disrupted


def format_indexes(indexes: Iterable[int]) -> str:
    """``{0, 1, 2, 5}`` -> ``"0-2,5"`` (the Job controller's completedIndexes format)."""
    ranges: list[str] = []
    ordered = sorted(set(indexes))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        ranges.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(ranges)


def parse_indexes(text: str) -> frozenset[int]:
    """The inverse of :func:`format_indexes`; raises ValueError on a malformed string."""
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        first, sep, last = part.partition("-")
        lo, hi = int(first), int(last) if sep else int(first)
        if lo < 0 or hi < lo:
            raise ValueError(f"bad index range {part!r}")
        out.update(range(lo, hi + 1))
    return frozenset(out)


def record_of(status: ExecuteJobStatus | None) -> Record:
    if status is None:
        return Record()
    return Record(completed=parse_indexes(status.completed_indexes), failed=status.failed)


def time_until(start: datetime, seconds: int, now: datetime) -> tuple[bool, float | None]:
    """(due, seconds left) for something due ``seconds`` after ``start``. Never raises: a due
    date past the last one a datetime can hold (year 9999) is never due, and has no time left
    to wait for (``(False, None)``): no value an API server stores can crash a reconcile."""
    try:
        due = start + timedelta(seconds=seconds)
    except OverflowError:
        return False, None
    if now >= due:
        return True, None
    return False, (due - now).total_seconds()


def deadline_due(
    spec: ExecuteJobSpec, start_time: datetime | None, now: datetime
) -> tuple[bool, float | None]:
    """(exceeded, seconds until due). The deadline counts from the job's latest start and
    is not enforced while suspended."""
    if spec.active_deadline_seconds is None or spec.suspend or start_time is None:
        return False, None
    return time_until(start_time, spec.active_deadline_seconds, now)


def decide(
    spec: ExecuteJobSpec,
    attempts: Sequence[Attempt],
    previous: ExecuteJobStatus | None,
    *,
    env_hash: str | None,
    now: datetime,
    generation: int | None = None,
) -> Decision:
    """Count what finished, then say which workers to start and stop, and the status."""
    record = record_of(previous)
    finished_before = previous is not None and previous.finished
    completed, failed = set(record.completed), record.failed
    counted: list[Attempt] = []
    disrupted: list[Attempt] = []
    failures: list[WorkerState] = []
    ended = [a for a in attempts if not a.counted and outcome(a) is not None]
    ended.sort(key=lambda a: (a.finished_at, a.index, a.attempt))
    for attempt in ended:
        result = outcome(attempt)
        if finished_before or result == "disrupted":
            disrupted.append(attempt)  # a finished job counts nothing more
        elif result == "succeeded":
            completed.add(attempt.index)
            counted.append(attempt)
        else:
            failed += 1
            failures.append(attempt.state())
            counted.append(attempt)
    record = Record(frozenset(completed), failed)

    start = previous.start_time if previous is not None else None
    start_dt = datetime.fromisoformat(start.replace("Z", "+00:00")) if start else now
    exceeded, due_in = deadline_due(spec, start_dt, now)
    active = [a for a in attempts if a.active]
    current = [a for a in active if a.index < spec.replicas and a.index not in completed]
    observation = Observation(
        workers=[a.state() for a in current],
        succeeded=sum(1 for i in completed if i < spec.replicas),
        failed=failed,
        failures=failures,
        deadline_exceeded=exceeded,
        generation=generation,
    )
    status = compute_status(spec, observation, previous, env_hash=env_hash, now=now)
    if not finished_before:
        status = status.model_copy(update={"completed_indexes": format_indexes(completed)})

    create: list[tuple[int, int]] = []
    stop: list[Attempt] = []
    if status.finished or spec.suspend:
        stop = active
    else:
        for attempt in active:
            if attempt.index >= spec.replicas or attempt.index in completed:
                stop.append(attempt)  # scaled down, or already done
        for index in range(spec.replicas):
            if index in completed:
                continue
            mine = sorted(
                (a for a in active if a.index == index), key=lambda a: a.attempt, reverse=True
            )
            stop.extend(mine[1:])  # one attempt per index (a duplicate after a lost race)
            if not mine:
                seen = [a.attempt for a in attempts if a.index == index]
                create.append((index, max(seen, default=-1) + 1))
    return Decision(
        record=record,
        counted=tuple(counted),
        disrupted=tuple(disrupted),
        create=tuple(create),
        stop=tuple(stop),
        status=status,
        requeue_after=due_in if not status.finished else None,
    )
