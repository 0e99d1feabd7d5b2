"""The shared lifecycle decision (pure), and the same rules through both backends' actuators:
the operator's plan() (tests/unit/operator/test_reconcile.py has the Kubernetes-only parts) and the
local backend's subprocesses."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import cerebras_appliance as app
from cerebras_appliance.backends.local.job import LocalJob
from cerebras_appliance.contract.api import (
    MAX_DURATION_SECONDS,
    ExecuteJobSpec,
    ExecuteJobStatus,
    InvalidJobError,
    parse_job,
)
from cerebras_appliance.contract.lifecycle import (
    Attempt,
    deadline_due,
    decide,
    format_indexes,
    outcome,
    parse_indexes,
    time_until,
)

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
SPEC = ExecuteJobSpec(image="i", entrypoint="loader.py", replicas=2)


def att(index: int, phase: str = "Running", attempt: int = 0, **kw: object) -> Attempt:
    name = f"j-worker-{index}" + (f"-{attempt}" if attempt else "")
    return Attempt(index, attempt, name, phase, **kw)  # type: ignore[arg-type]


def run(attempts: list[Attempt], spec: ExecuteJobSpec = SPEC, previous=None):  # type: ignore[no-untyped-def]
    return decide(spec, attempts, previous, env_hash="h", now=T0)


# -- what is a failure ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [
        (att(0, "Succeeded", exit_code=0), "succeeded"),
        (att(0, "Failed", exit_code=3), "failed"),
        (att(0, "Failed", exit_code=137, reason="OOMKilled"), "failed"),
        (att(0, "Failed", exit_code=137, reason="OOMKilled", stopping=True), "failed"),
        (att(0, "Failed", exit_code=143, stopping=True), "disrupted"),
        (att(0, "Failed", exit_code=137, stopping=True), "disrupted"),
        (att(0, "Failed", stopping=True), "disrupted"),
        (att(0, "Failed", exit_code=1, disrupted=True), "disrupted"),
        (att(0, "Failed", exit_code=3, stopping=True), "failed"),  # it failed on its own
        (att(0, "Running", stopping=True), "disrupted"),
        (att(0, "Running"), None),
        (att(0, "Pending"), None),
    ],
)
def test_outcome(attempt: Attempt, expected: str | None) -> None:
    assert outcome(attempt) == expected


# -- counting ------------------------------------------------------------------------------


def test_success_is_counted_once_and_never_run_again() -> None:
    first = run([att(0, "Succeeded", exit_code=0), att(1)])
    assert first.status.succeeded == 1 and first.status.completed_indexes == "0"
    assert [a.name for a in first.counted] == ["j-worker-0"]
    # The succeeded worker is gone (pod GC); counted, so nothing changes and nothing reruns.
    later = run([att(1)], previous=first.status)
    assert later.create == () and later.status.succeeded == 1


def test_counted_attempts_are_not_counted_again() -> None:
    failed = att(1, "Failed", exit_code=3)
    spec = SPEC.model_copy(update={"backoff_limit": 3})
    first = run([att(0), failed], spec)
    assert first.status.failed == 1 and first.create == ((1, 1),)
    again = run([att(0), Attempt(**{**failed.__dict__, "counted": True})], spec, first.status)
    assert again.status.failed == 1 and again.counted == ()


def test_disrupted_attempts_are_replaced_and_not_counted() -> None:
    d = run([att(0), att(1, "Failed", exit_code=143, stopping=True)])
    assert d.status.failed == 0 and d.status.phase == "Running"
    assert d.create == ((1, 1),)
    assert [a.name for a in d.disrupted] == ["j-worker-1"]


def test_a_finished_job_counts_nothing_more() -> None:
    failed = run([att(0), att(1, "Failed", exit_code=3)])
    assert failed.status.phase == "Failed" and [a.name for a in failed.stop] == ["j-worker-0"]
    after = run(
        [att(0, "Succeeded", exit_code=0, stopping=True), att(1, "Failed", counted=True)],
        previous=failed.status,
    )
    assert after.status.phase == "Failed" and after.status.succeeded == 0
    assert [a.name for a in after.disrupted] == ["j-worker-0"]  # settled, not counted


# -- starting and stopping -----------------------------------------------------------------


def test_replacement_takes_the_next_free_attempt_number() -> None:
    old = [att(0, "Failed", exit_code=143, stopping=True, counted=True, attempt=a) for a in (0, 1)]
    d = run([*old, att(1)])
    assert d.create == ((0, 2),)


def test_suspend_stops_everything_and_resume_starts_what_is_not_done() -> None:
    suspended = SPEC.model_copy(update={"suspend": True})
    d = run([att(0), att(1, "Succeeded", exit_code=0)], suspended)
    assert d.status.phase == "Suspended" and [a.name for a in d.stop] == ["j-worker-0"]
    assert d.status.start_time is None  # the deadline restarts on resume
    resumed = run([att(0, "Failed", exit_code=143, stopping=True, counted=True)], SPEC, d.status)
    assert resumed.create == ((0, 1),)  # worker 1 succeeded: not rerun


def test_scale_down_stops_the_extra_index() -> None:
    d = run([att(0), att(1), att(2)])
    assert [a.name for a in d.stop] == ["j-worker-2"] and d.create == ()


def test_deadline_counts_from_the_start_time() -> None:
    spec = SPEC.model_copy(update={"active_deadline_seconds": 30})
    started = ExecuteJobStatus(phase="Running", start_time="2026-03-01T11:59:50Z", replicas=2)
    d = run([att(0), att(1)], spec, started)
    assert d.requeue_after == 20 and d.status.phase == "Running"
    late = decide(spec, [att(0), att(1)], started, env_hash="h", now=T0 + timedelta(seconds=20))
    assert late.status.phase == "Failed" and len(late.stop) == 2


# Issue 21, defect 9: activeDeadlineSeconds around 1e12 raised OverflowError (date value out
# of range) in every reconcile, freezing the job's status and its pods' finalizers. The models
# and the CRD now stop at api.MAX_DURATION_SECONDS; the arithmetic itself never raises, for a
# value an older CRD admitted or a start time near the end of the calendar.
HUGE = 10**12


def test_a_deadline_beyond_the_calendar_is_never_due_and_does_not_raise() -> None:
    spec = SPEC.model_construct(**{**dict(SPEC), "active_deadline_seconds": HUGE})
    started = ExecuteJobStatus(phase="Running", start_time="2026-03-01T11:59:50Z", replicas=2)
    d = run([att(0), att(1)], spec, started)
    assert d.status.phase == "Running" and d.requeue_after is None
    assert deadline_due(spec, T0, T0) == (False, None)


def test_the_longest_admitted_deadline_from_the_last_year_does_not_raise() -> None:
    spec = SPEC.model_copy(update={"active_deadline_seconds": MAX_DURATION_SECONDS})
    late = datetime(9999, 12, 31, tzinfo=UTC)
    assert deadline_due(spec, late, late) == (False, None)
    assert deadline_due(spec, T0, T0) == (False, float(MAX_DURATION_SECONDS))


@given(
    start=st.datetimes(timezones=st.just(UTC)),
    seconds=st.integers(min_value=0, max_value=2**63),
    elapsed=st.integers(min_value=0, max_value=10**6),
)
def test_time_until_never_raises(start: datetime, seconds: int, elapsed: int) -> None:
    """Any start, any duration an API server could store (int64): an answer, never an
    exception; when it is due, it is due at start + seconds."""
    try:
        now = start + timedelta(seconds=elapsed)
    except OverflowError:
        now = start
    due, left = time_until(start, seconds, now)
    if due:
        assert left is None and start + timedelta(seconds=seconds) <= now
    elif left is not None:
        assert 0 < left <= seconds + 1


@pytest.mark.parametrize("field", ["active_deadline_seconds", "ttl_seconds_after_finished"])
@pytest.mark.parametrize("value", [MAX_DURATION_SECONDS + 1, HUGE, 2**63])
def test_durations_above_the_maximum_are_refused(field: str, value: int) -> None:
    alias = {"active_deadline_seconds": "activeDeadlineSeconds"}.get(
        field, "ttlSecondsAfterFinished"
    )
    with pytest.raises(InvalidJobError) as refused:
        parse_job(
            {"metadata": {"name": "j"}, "spec": {"image": "i", "entrypoint": "a.py", alias: value}}
        )
    assert any(
        line.startswith(f"spec.{alias}") and "2147483647" in line for line in refused.value.errors
    ), refused.value.errors


@given(st.frozensets(st.integers(min_value=0, max_value=200), max_size=40))
def test_index_ranges_round_trip(indexes: frozenset[int]) -> None:
    text = format_indexes(indexes)
    assert parse_indexes(text) == indexes
    assert format_indexes({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"


# -- the same rules through the local backend's actuator -----------------------------------


HOLD = textwrap.dedent(
    """
    import os, pathlib, sys, time
    out = pathlib.Path(sys.argv[1])
    me = os.environ["APPLIANCE_WORKER_NAME"]
    try:
        out.joinpath(me + ".started").write_text("1")
        time.sleep(600)
    finally:
        out.joinpath(me + ".cleanup").write_text("1")
    """
)


def wait_status(job: LocalJob, check, what: str, timeout: float = 30):  # type: ignore[no-untyped-def]
    import time

    deadline = time.monotonic() + timeout
    while True:
        status = job.status()
        if check(status):
            return status
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: last status {status.phase} {status}")
        job.wait_for_a_worker(0.05)  # wakes when a worker exits, else after 50 ms


def test_local_suspend_resume_and_scale_are_not_failures(tmp_path: Path) -> None:
    script = tmp_path / "hold.py"
    script.write_text(HOLD)
    job = app.submit(str(script), replicas=3, args=[str(tmp_path)], name="t-life")
    assert isinstance(job, LocalJob)
    try:
        wait_status(job, lambda s: s.ready_replicas == 3, "3 ready")
        # Ready is the env applied; the user code's try block (its clean-up) starts after.
        wait_status(job, lambda s: len(list(tmp_path.glob("*.started"))) == 3, "3 started")
        st = job.suspend()
        st = wait_status(
            job,
            lambda s: (
                s.phase == "Suspended" and all(w.exit_code is not None for w in job.processes)
            ),
            "suspended and stopped",
        )
        assert st.failed == 0
        assert sorted(p.name for p in tmp_path.glob("*.cleanup")) == [
            f"t-life-worker-{i}.cleanup" for i in range(3)
        ]
        assert {w.exit_code for w in job.processes} == {143}
        job.resume()
        st = wait_status(job, lambda s: s.phase == "Running" and s.ready_replicas == 3, "resumed")
        assert st.failed == 0
        names = {w.name for w in job.processes if w.exit_code is None}
        assert names == {f"t-life-worker-{i}-1" for i in range(3)}  # new attempts, as pods
        job.scale(2)
        st = wait_status(job, lambda s: s.ready_replicas == 2 and s.replicas == 2, "scaled to 2")
        assert st.failed == 0 and st.phase == "Running"
        job.scale(3)
        st = wait_status(job, lambda s: s.ready_replicas == 3, "scaled to 3")
        assert st.failed == 0
    finally:
        job.delete()
