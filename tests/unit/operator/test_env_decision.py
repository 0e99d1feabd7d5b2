"""decide_env: the env-Secret decision of one job, without an API server (pure).

Each test walks the decision as the controller does: ask, answer the call it asks for, ask
again; and checks the call asked for or the outcome (what to record, what to tell the user).
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

from support.objects import JOB_UID, job_body

from appliance_operator import desired
from appliance_operator.job import env
from appliance_operator.job.env import (
    Create,
    Created,
    EnvFacts,
    EnvFail,
    EnvReady,
    EnvRetry,
    EnvWait,
    Read,
    ReadExisting,
    ReadRecorded,
    Resolve,
    Resolved,
    decide_env,
)
from appliance_operator.kubeapi import ApiError
from appliance_operator.observe import JobView, job_view
from cerebras_appliance.contract import envfile, names
from cerebras_appliance.contract.names import AWAITING_VALUES_ANNOTATION

UID = JOB_UID
PAIRS = [("DATA_ROOT", "/mnt/data"), ("TOKEN", "t0ps3cret")]
KEY = "k" * 64


def job(status: dict[str, Any] | None = None, annotations: dict[str, str] | None = None) -> JobView:
    env = [{"name": n, "value": v} for n, v in PAIRS]
    return job_view(job_body(status=status, annotations=annotations or {}, replicas=1, env=env))


def resolved(facts: EnvFacts) -> EnvFacts:
    assert decide_env(facts) == Resolve()
    return dataclasses.replace(facts, resolved=Resolved(PAIRS, KEY))


def created(facts: EnvFacts, error: ApiError | None = None) -> tuple[EnvFacts, Create]:
    step = decide_env(facts)
    assert isinstance(step, Create), step
    return dataclasses.replace(facts, created=Created(error)), step


def snapshot_secret(pairs: list[tuple[str, str]], owner: str = UID) -> dict[str, Any]:
    """A ``<job>-env`` as the operator writes it, owned by ``owner``."""
    env_hash = envfile.snapshot_hash(pairs, KEY)
    view = job()
    body = desired.env_secret(view.job, owner, pairs, KEY, env_hash)
    return body


def test_a_job_awaiting_its_values_reads_nothing_and_says_what_it_waits_for() -> None:
    outcome = decide_env(EnvFacts(job(annotations={AWAITING_VALUES_ANNOTATION: "demo-v"})))
    assert isinstance(outcome, EnvWait) and outcome.condition is not None
    assert outcome.condition.reason == "AwaitingValues" and "demo-v" in outcome.condition.message


def test_a_new_job_resolves_then_creates_the_sealed_snapshot_and_is_ready() -> None:
    facts, step = created(resolved(EnvFacts(job())))
    assert step.name == "demo-env"
    text = base64.b64decode(step.body["data"][names.SNAPSHOT_KEY]).decode()
    assert envfile.parse(text, "test").env == tuple(PAIRS)
    outcome = decide_env(facts)
    assert isinstance(outcome, EnvReady)
    assert outcome.env_hash == envfile.snapshot_hash(PAIRS, KEY)
    assert outcome.fresh == step.body  # a warm delivery reads nothing back
    assert outcome.condition.status == "True" and outcome.condition.reason == "SnapshotWritten"
    assert "2 variable(s) written to Secret demo-env" in outcome.condition.message


def test_an_unresolvable_env_fails_with_the_resolutions_reason() -> None:
    error = desired.EnvResolutionError("SecretNotFound", ["spec.env[1] (TOKEN): no Secret"])
    outcome = decide_env(EnvFacts(job(), resolved=Resolved(error)))
    assert outcome == EnvFail("SecretNotFound", str(error))
    assert outcome.condition.status == "False" and outcome.condition.type == env.ENV_RESOLVED


def test_a_snapshot_over_the_secret_limit_is_never_sent() -> None:
    big = [("BLOB", "x" * (desired.MAX_SECRET_BYTES + 1))]
    outcome = decide_env(EnvFacts(job(), resolved=Resolved(big, KEY)))
    assert isinstance(outcome, EnvFail) and outcome.reason == "SnapshotTooLarge"


def test_a_refused_create_names_the_cause_and_a_forbidden_one_the_grant() -> None:
    for code, reason in ((403, "SecretForbidden"), (422, "SecretRefused"), (413, "SecretRefused")):
        facts, _ = created(resolved(EnvFacts(job())), ApiError(code, "X", "quoted body"))
        outcome = decide_env(facts)
        assert isinstance(outcome, EnvFail) and outcome.reason == reason, (code, outcome)
        assert "quoted body" not in outcome.message  # the server's text could quote values


def test_a_terminating_namespace_waits_in_silence() -> None:
    terminating = ApiError(403, "Forbidden", "namespace ml is being terminated")
    facts, _ = created(resolved(EnvFacts(job())), terminating)
    assert decide_env(facts) == EnvWait()


def test_another_api_error_fails_the_reconcile_without_the_servers_text() -> None:
    facts, _ = created(resolved(EnvFacts(job())), ApiError(500, "InternalError", "values..."))
    outcome = decide_env(facts)
    assert isinstance(outcome, EnvRetry)
    assert outcome.error.code == 500 and outcome.error.message == "creating Secret demo-env failed"


def test_a_conflict_reads_the_secret_in_the_way_and_uses_it_only_if_it_is_this_snapshot() -> None:
    facts, _ = created(resolved(EnvFacts(job())), ApiError(409, "AlreadyExists", ""))
    assert decide_env(facts) == ReadExisting("demo-env")
    ours = decide_env(dataclasses.replace(facts, existing=Read(snapshot_secret(PAIRS))))
    assert isinstance(ours, EnvReady) and ours.fresh is None
    other = snapshot_secret([("DATA_ROOT", "/elsewhere"), PAIRS[1]])
    injected = decide_env(dataclasses.replace(facts, existing=Read(other)))
    assert isinstance(injected, EnvFail) and injected.reason == "UntrustedSecret"
    assert "/elsewhere" not in injected.message
    gone = decide_env(dataclasses.replace(facts, existing=Read(None)))
    assert gone == EnvWait()  # created next time


def test_a_secret_of_an_earlier_job_of_the_same_name_is_waited_for() -> None:
    facts, _ = created(resolved(EnvFacts(job())), ApiError(409, "AlreadyExists", ""))
    old = snapshot_secret(PAIRS, owner="uid-of-a-deleted-job")
    outcome = decide_env(dataclasses.replace(facts, existing=Read(old)))
    assert isinstance(outcome, EnvWait) and outcome.condition is not None
    assert outcome.condition.reason == "WaitingForOldSecret"


def test_a_secret_nobody_of_ours_made_is_reported_as_a_taken_name() -> None:
    facts, _ = created(resolved(EnvFacts(job())), ApiError(409, "AlreadyExists", ""))
    foreign = {"metadata": {"name": "demo-env", "labels": {}}, "data": {}}
    outcome = decide_env(dataclasses.replace(facts, existing=Read(foreign)))
    assert isinstance(outcome, EnvFail) and outcome.reason == "SecretNameTaken"


def test_a_recorded_snapshot_is_reused_only_with_the_hash_the_status_recorded() -> None:
    env_hash = envfile.snapshot_hash(PAIRS, KEY)
    status = {
        "envHash": env_hash,
        "conditions": [{"type": env.ENV_RESOLVED, "status": "True", "reason": "SnapshotWritten"}],
    }
    facts = EnvFacts(job(status=status))
    assert decide_env(facts) == ReadRecorded("demo-env")
    reused = decide_env(dataclasses.replace(facts, recorded=Read(snapshot_secret(PAIRS))))
    assert isinstance(reused, EnvReady) and reused.env_hash == env_hash
    assert reused.condition.reason == "SnapshotWritten" and reused.fresh is None
    swapped = snapshot_secret([("DATA_ROOT", "/elsewhere"), PAIRS[1]])
    refused = decide_env(dataclasses.replace(facts, recorded=Read(swapped)))
    assert isinstance(refused, EnvFail) and refused.reason == "UntrustedSecret"
    # Gone since (a Secret it referenced may be gone too): written again from spec.env.
    assert decide_env(dataclasses.replace(facts, recorded=Read(None))) == Resolve()
