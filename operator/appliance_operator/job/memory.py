"""What the job controller remembers of one job between reconciles, one dataclass per concern.

Nothing here is needed for correctness after a restart (the memory is then empty, and the
job's status and the cluster say the rest): it spares the API server repeated writes and the
user repeated Warnings. :class:`JobMemory` is the whole record of one job; its parts are:

* :class:`Writes`: what this process wrote that the watch does not show yet (expectations);
* :class:`Retries`: the failed reconciles in a row, and the one backoff formula;
* :class:`Warnings`: which Warning was posted last (a retry does not repeat it);
* :class:`EnvState`: what is known of the job's ``<job>-env`` Secret;
* :class:`PoolState`: the claim decided for a job with ``spec.pool``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from appliance_operator.expectations import Expectations
from appliance_operator.observe import PodView
from cerebras_appliance.contract.api import Condition, ExecuteJobStatus

#: Retry delays after a failed reconcile or an unresolved env (seconds; doubled, capped).
RETRY_BASE, RETRY_MAX = 0.5, 60.0


@dataclass(frozen=True)
class StatusWrite:
    """Our last status write, until the watch shows it."""

    #: the job versions the cache may still show that are older than this write: the one it
    #: was planned on and those our earlier writes in a row produced
    older: frozenset[str]
    status: ExecuteJobStatus
    version: str  # the job version the write produced


@dataclass(slots=True)
class Writes:
    """This process's writes the watch may not show yet: pods created (or adopted) by name,
    and per pod uid: deleted, finalizer released, claim delivered; the last status write."""

    created: Expectations[str, PodView] = field(default_factory=Expectations)
    deleted: Expectations[str, None] = field(default_factory=Expectations)
    released: Expectations[str, None] = field(default_factory=Expectations)
    confirmed: Expectations[str, None] = field(default_factory=Expectations)
    status: StatusWrite | None = None
    last_status_write: datetime | None = None

    def pending(self, resource_version: str) -> StatusWrite | None:
        """Our last status write while the cached job (at ``resource_version``) is older
        than it, else None."""
        written = self.status
        return written if written is not None and resource_version in written.older else None

    def merge(self, pods: Sequence[PodView], now: float) -> list[PodView]:
        """The watched pods plus what this process did that the watch has not shown yet."""
        seen = {p.name for p in pods}
        self.created.prune(now, met=seen.__contains__)
        # Per pod uid, what this process wrote that the watch may not show yet (until the pod
        # is gone or the TTL has passed): deleted it, released its finalizer, delivered its
        # claim. A pod this process adopted may be written to before the watch shows it.
        present = {p.uid for p in pods} | {v.uid for v in self.created.values()}
        for written in (self.deleted, self.released, self.confirmed):
            written.prune(now, met=lambda uid: uid not in present)
        marked = {*self.deleted, *self.released, *self.confirmed}
        merged = [
            dataclasses.replace(
                p,
                terminating=p.terminating or p.uid in self.deleted,
                released=p.uid in self.released,
                confirmed=p.confirmed or p.uid in self.confirmed,
            )
            if p.uid in marked
            else p
            for p in pods
        ]
        merged.extend(self.created.values())
        return merged


def backoff_delay(failures: int) -> float:
    """Seconds before the next try after ``failures`` in a row: doubled, capped."""
    return float(min(RETRY_BASE * 2 ** max(failures - 1, 0), RETRY_MAX))


@dataclass(slots=True)
class Retries:
    """Reconciles in a row that failed (an API error) or found a problem to retry."""

    failures: int = 0

    def failed(self) -> float:
        """Count one more failure; the delay before the next try."""
        self.failures += 1
        return backoff_delay(self.failures)

    def delay(self) -> float:
        return backoff_delay(self.failures)

    def reset(self) -> None:
        """A reconcile went through: the next failure waits the base delay again."""
        self.failures = 0


@dataclass(slots=True)
class Warnings:
    """The Warning Event posted last, so that retries do not repeat it."""

    last: str = ""
    invalid: str = ""  # the parse error last reported for this job

    def first(self, reason: str, message: str) -> bool:
        """True (and remembered) when this Warning differs from the last one posted."""
        if self.last == f"{reason}:{message}":
            return False
        self.last = f"{reason}:{message}"
        return True


@dataclass(slots=True)
class EnvState:
    """What the controller knows of the job's ``<job>-env`` Secret."""

    secret_ready: bool = False
    env_hash: str | None = None  # the keyed hash of <job>-env (its annotation)
    condition: Condition | None = None  # EnvResolved, to record
    #: The <job>-env Secret this reconcile created (warm delivery needs no read-back); only
    #: for the reconcile that wrote it: no value stays in the operator's memory after it.
    fresh_secret: Mapping[str, Any] | None = None
    awaiting_since: float | None = None  # when this process first saw it awaiting values
    observed: bool = False  # the time-to-env histogram has this job


@dataclass(slots=True)
class PoolState:
    """The claim decided for a job with ``spec.pool``."""

    condition: Condition | None = None  # PoolClaim, once a claim was decided
    #: Workers the claim made while the job awaited its values left to start cold: decided
    #: once (PoolClaim, the cold count), started cold once the values are there.
    decided_cold: frozenset[tuple[int, int]] = frozenset()
    #: The job's code could not be sent to a claimed worker (``pool.controller.CodeProblem``):
    #: it claims no more, every worker starts cold.
    code_problem: bool = False


@dataclass(slots=True)  # one per job the operator has seen: no __dict__ per record
class JobMemory:
    uid: str
    writes: Writes = field(default_factory=Writes)
    retries: Retries = field(default_factory=Retries)
    warnings: Warnings = field(default_factory=Warnings)
    env: EnvState = field(default_factory=EnvState)
    pool: PoolState = field(default_factory=PoolState)
    replica_failure: Condition | None = None  # ReplicaFailure, once a create went wrong
