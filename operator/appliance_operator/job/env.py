"""The env-Secret decision of one job (pure): what to read or write next for ``<job>-env``.

A job's workers start only once ``<job>-env`` (its resolved, sealed env snapshot) exists
and is provably the job's. Getting there takes up to four API calls, each depending on the
answer of the one before: read the Secret the status recorded, resolve ``spec.env`` (reading
the Secrets it references), create ``<job>-env``, read back the one in the way. The
controller calls :func:`decide_env` with what it has found so far (:class:`EnvFacts`) and
gets either the next call to make or the outcome; it makes the call, adds the answer to the
facts and asks again. All the rules (which Secret to trust, which refusal to report and how,
when to wait in silence) are here, testable without an API server; the controller only
executes them (:meth:`appliance_operator.job.controller.Controller`).

Outcomes: :class:`EnvReady` (the workers may start), :class:`EnvWait` (not now, retried,
no Warning), :class:`EnvFail` (``EnvResolved=False`` with a reason and a Warning, retried),
:class:`EnvRetry` (an API error the reconcile fails with, retried with backoff).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from appliance_operator import desired
from appliance_operator.kubeapi import ApiError, namespace_terminating
from appliance_operator.observe import JobView
from cerebras_appliance.contract import envfile, names
from cerebras_appliance.contract.api import Condition
from cerebras_appliance.contract.names import AWAITING_VALUES_ANNOTATION

#: The operator's own condition: was the env snapshot resolved and written to ``<job>-env``?
ENV_RESOLVED = "EnvResolved"
#: Answers of the API server to creating ``<job>-env`` that refuse it as it is: the user is
#: told why (and it is retried slowly), rather than a silent retry.
REFUSED_CODES = (400, 403, 413, 422)


# -- what was found ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Read:
    """The answer to reading a Secret: its body, or None when it does not exist."""

    secret: Mapping[str, Any] | None


@dataclass(frozen=True)
class Resolved:
    """``spec.env`` resolved (the pairs and a new key to seal them with), or why not."""

    pairs: Sequence[tuple[str, str]] | desired.EnvResolutionError
    env_key: str = ""


@dataclass(frozen=True)
class Created:
    """The answer to creating ``<job>-env``: None when it was created, else the error."""

    error: ApiError | None = None


@dataclass(frozen=True)
class EnvFacts:
    """What the controller has found so far for one job (None: not asked yet)."""

    job: JobView
    recorded: Read | None = None  # <job>-env, read because the status records a snapshot
    resolved: Resolved | None = None
    created: Created | None = None
    existing: Read | None = None  # <job>-env, read back after the create answered 409


# -- the next call ------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadRecorded:
    """Read ``name``: the status records a snapshot, which is used if the Secret holds it."""

    name: str


@dataclass(frozen=True)
class Resolve:
    """Resolve ``spec.env`` (reading the Secrets it references) and make a new key."""


@dataclass(frozen=True)
class Create:
    """Create this Secret (the sealed snapshot)."""

    name: str
    body: Mapping[str, Any]


@dataclass(frozen=True)
class ReadExisting:
    """Read ``name``: the create answered that a Secret of that name exists."""

    name: str


# -- the outcome ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EnvReady:
    """``<job>-env`` is in place and the job's: its hash, the condition to record and, when
    this reconcile created it, its body (a warm delivery then needs no read-back)."""

    env_hash: str
    condition: Condition
    fresh: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class EnvWait:
    """Not now, without a Warning: record ``condition`` (None: keep the one recorded)."""

    condition: Condition | None = None


@dataclass(frozen=True)
class EnvFail:
    """``EnvResolved=False`` with this reason and message, and a Warning (once)."""

    reason: str
    message: str

    @property
    def condition(self) -> Condition:
        return Condition(
            type=ENV_RESOLVED, status="False", reason=self.reason, message=self.message
        )


@dataclass(frozen=True)
class EnvRetry:
    """Fail the reconcile with this error (it is retried with backoff)."""

    error: ApiError


EnvStep = ReadRecorded | Resolve | Create | ReadExisting
EnvOutcome = EnvReady | EnvWait | EnvFail | EnvRetry


def decide_env(facts: EnvFacts) -> EnvStep | EnvOutcome:
    """The next API call to make for the job's ``<job>-env``, or the outcome."""
    job = facts.job
    name = desired.env_secret_name(job.name)
    awaiting = awaiting_condition(job)
    if awaiting is not None:
        return EnvWait(awaiting)
    recorded = _recorded(facts, name)
    if recorded is not None:
        return recorded
    if facts.resolved is None:
        return Resolve()
    pairs = facts.resolved.pairs
    if isinstance(pairs, desired.EnvResolutionError):
        return EnvFail(pairs.reason, str(pairs))
    env_hash = envfile.snapshot_hash(pairs, facts.resolved.env_key)
    body = desired.env_secret(job.job, job.uid, pairs, facts.resolved.env_key, env_hash)
    size = desired.secret_size(body)
    if size > desired.MAX_SECRET_BYTES:
        return EnvFail(*desired.env_secret_refused(name, None, size))
    if facts.created is None:
        return Create(name, body)
    error = facts.created.error
    if error is None:
        return _ready(name, pairs, env_hash, fresh=body)
    if namespace_terminating(error):
        return EnvWait()  # the job goes with its namespace
    if error.code in REFUSED_CODES:  # refused as it is: say why, retry slowly
        return EnvFail(*desired.env_secret_refused(name, error.code, size))
    if error.code != 409:
        # The API's message could quote what was sent: report the code only.
        return EnvRetry(ApiError(error.code, error.reason, f"creating Secret {name} failed"))
    if facts.existing is None:
        return ReadExisting(name)
    return _in_the_way(job, name, pairs, facts.existing.secret)


def awaiting_condition(job: JobView) -> Condition | None:
    """``EnvResolved=False`` (AwaitingValues) while the client has created the job but not
    yet written (or not yet released) the Secret of its values: read nothing, start nothing,
    until it removes the mark. None when it has."""
    awaiting = job.job.metadata.annotations.get(AWAITING_VALUES_ANNOTATION)
    if awaiting is None:
        return None
    return Condition(
        type=ENV_RESOLVED,
        status="False",
        reason="AwaitingValues",
        message=(
            f"waiting for the client to write Secret {awaiting} and remove the "
            f"annotation {AWAITING_VALUES_ANNOTATION}; if the client was interrupted, "
            "delete this job (its Secret goes with it) and submit again"
        ),
    )


def _recorded(facts: EnvFacts, name: str) -> ReadRecorded | EnvReady | EnvFail | None:
    """Written before (by us, or by the operator before a restart): the snapshot is the one
    in ``<job>-env``, even if a Secret it referenced is gone since; trusted only with the
    hash our status recorded (docs/security.md, "<job>-env"). None: resolve and write."""
    status = facts.job.status
    resolved = status.condition(ENV_RESOLVED) if status is not None else None
    recorded = status.env_hash if status is not None else None
    if resolved is None or resolved.status != "True" or not recorded:
        return None
    if facts.recorded is None:
        return ReadRecorded(name)
    if facts.recorded.secret is None:
        return None  # gone: written again from spec.env
    found = desired.trusted_env_snapshot(facts.recorded.secret, facts.job.uid, env_hash=recorded)
    if isinstance(found, str):
        return untrusted(name, found)
    return EnvReady(found.env_hash, resolved)


def _in_the_way(
    job: JobView, name: str, pairs: Sequence[tuple[str, str]], existing: Mapping[str, Any] | None
) -> EnvReady | EnvWait | EnvFail:
    """The outcome when a Secret named ``<job>-env`` was there before this create."""
    if existing is None:
        return EnvWait()  # gone meanwhile: create it next time
    owners = _owner_uids(existing)
    if job.uid in owners:
        # Ours from before a restart, or made by someone else to inject variables: used
        # only when it holds exactly the snapshot just resolved.
        found = desired.trusted_env_snapshot(existing, job.uid, env=pairs)
        if isinstance(found, str):
            return untrusted(name, found)
        return _ready(name, pairs, found.env_hash)
    labels = (existing.get("metadata") or {}).get("labels") or {}
    ours = (
        labels.get(names.MANAGED_BY_LABEL) == names.MANAGED_BY
        and labels.get(names.JOB_NAME_LABEL) == job.name
    )
    if ours and owners:
        # Left by an earlier job of the same name: the garbage collector deletes it (its
        # owner is gone). Wait for that; the operator may not delete Secrets
        # (docs/security.md).
        return EnvWait(
            Condition(
                type=ENV_RESOLVED,
                status="False",
                reason="WaitingForOldSecret",
                message=(
                    f"Secret {name} of an earlier job of the same name is being "
                    "garbage-collected; the job starts once it is gone"
                ),
            )
        )
    return EnvFail(
        "SecretNameTaken",
        f"Secret {name} already exists and does not belong to this job; delete or rename it "
        "(the operator writes the job's env snapshot there)",
    )


def untrusted(name: str, why: str) -> EnvFail:
    """An existing ``<job>-env`` the operator did not write (or cannot prove it did): the
    job waits, its workers never mount it, and the user is told (no value is named)."""
    return EnvFail(
        "UntrustedSecret",
        f"Secret {name} is owned by this job but is not the snapshot the operator wrote "
        f"({why}); someone who may create Secrets in this namespace made it. Delete it: "
        "the operator then writes the job's snapshot there and the job starts",
    )


def _ready(
    name: str,
    pairs: Sequence[tuple[str, str]],
    env_hash: str,
    fresh: Mapping[str, Any] | None = None,
) -> EnvReady:
    return EnvReady(
        env_hash,
        Condition(
            type=ENV_RESOLVED,
            status="True",
            reason="SnapshotWritten",
            message=f"{len(pairs)} variable(s) written to Secret {name} ({env_hash})",
        ),
        fresh,
    )


def _owner_uids(obj: Mapping[str, Any]) -> set[str]:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return {str(ref.get("uid")) for ref in refs}
