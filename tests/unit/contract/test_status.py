"""compute_status: phases, counts and conditions from observed workers (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from cerebras_appliance.contract.api import Condition, ExecuteJobSpec, ExecuteJobStatus
from cerebras_appliance.contract.status import (
    Observation,
    WorkerState,
    compute_status,
    stamp_transition,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SPEC = ExecuteJobSpec(image="i", entrypoint="loader.py", replicas=2)


def status_of(
    workers: list[WorkerState], spec: ExecuteJobSpec = SPEC, **kw: Any
) -> ExecuteJobStatus:
    return compute_status(spec, Observation(workers=workers, **kw), None, env_hash="h", now=T0)


def test_pending_then_running_then_ready() -> None:
    assert status_of([]).phase == "Pending"
    running = status_of([WorkerState("w0", "Running"), WorkerState("w1", "Pending")])
    assert running.phase == "Running" and running.ready_replicas == 0
    assert running.start_time == "2026-01-01T00:00:00Z"
    ready = status_of([WorkerState("w0", "Running", ready=True)] * 2)
    cond = ready.condition("WorkersReady")
    assert cond is not None and cond.status == "True" and cond.reason == "EnvApplied"
    assert ready.ready_replicas == 2


def test_all_succeeded() -> None:
    done = status_of([], succeeded=2)
    assert done.phase == "Succeeded" and done.succeeded == 2
    assert done.completion_time is not None
    cond = done.condition("Succeeded")
    assert cond is not None and cond.status == "True"


def test_failure_beyond_backoff_limit_names_worker_and_exit_code() -> None:
    failed = WorkerState("job-worker-1", "Failed", exit_code=3, reason="Error")
    st = status_of([WorkerState("w0", "Running")], failed=1, failures=[failed])
    assert st.phase == "Failed" and st.failed == 1
    cond = st.condition("Failed")
    assert cond is not None and cond.reason == "BackoffLimitExceeded"
    assert "worker job-worker-1 failed (exit code 3)" in cond.message


def test_failure_within_backoff_limit_keeps_running() -> None:
    spec = SPEC.model_copy(update={"backoff_limit": 1})
    failed = WorkerState("w1", "Failed", exit_code=1)
    st = status_of([WorkerState("w0", "Running")], spec, failed=1, failures=[failed])
    assert st.phase == "Running" and st.failed == 1


def test_deadline_and_suspend() -> None:
    st = status_of([WorkerState("w0", "Running")], deadline_exceeded=True)
    cond = st.condition("Failed")
    assert st.phase == "Failed" and cond is not None and cond.reason == "DeadlineExceeded"
    suspended = status_of([], SPEC.model_copy(update={"suspend": True}))
    assert suspended.phase == "Suspended"
    assert suspended.start_time is None


def test_terminal_phase_is_sticky_and_transition_times_are_kept() -> None:
    first = status_of([], succeeded=2)
    later = compute_status(
        SPEC, Observation(workers=[]), first, env_hash="h", now=T0 + timedelta(hours=1)
    )
    assert later.phase == "Succeeded"
    assert later.completion_time == first.completion_time
    assert later.condition("Succeeded") == first.condition("Succeeded")


def test_condition_transition_time_changes_only_on_status_change() -> None:
    a = status_of([WorkerState("w0", "Running")])
    b = compute_status(
        SPEC,
        Observation(workers=[WorkerState("w0", "Running", ready=True)] * 2),
        a,
        env_hash="h",
        now=T0 + timedelta(seconds=5),
    )
    ready_a, ready_b = a.condition("WorkersReady"), b.condition("WorkersReady")
    assert ready_a is not None and ready_b is not None
    assert ready_a.last_transition_time != ready_b.last_transition_time
    succ_a, succ_b = a.condition("Succeeded"), b.condition("Succeeded")
    assert succ_a is not None and succ_b is not None
    assert succ_a.last_transition_time == succ_b.last_transition_time


def test_a_stuck_worker_names_itself_and_its_reason() -> None:
    stuck = WorkerState(
        "job-worker-1", "Pending", waiting="ImagePullBackOff", waiting_message='pulling "x"'
    )
    st = status_of([WorkerState("w0", "Running", ready=True), stuck])
    cond = st.condition("WorkersReady")
    assert cond is not None and cond.status == "False" and cond.reason == "ImagePullBackOff"
    assert "job-worker-1" in cond.message and 'pulling "x"' in cond.message
    assert "1/2 workers applied the env" in cond.message


def test_start_time_is_cleared_by_a_suspend() -> None:
    running = status_of([WorkerState("w0", "Running")])
    assert running.start_time is not None
    suspended = compute_status(
        SPEC.model_copy(update={"suspend": True}),
        Observation(workers=[]),
        running,
        env_hash="h",
        now=T0,
    )
    assert suspended.phase == "Suspended" and suspended.start_time is None


def test_a_condition_keeps_its_transition_time_until_its_status_changes() -> None:
    """The one helper every status writer stamps conditions with (the job's, the operator's
    plan, a pool's): a new reason or message is no transition, a new status is."""
    old = Condition(
        type="Ready", status="False", reason="A", message="a", last_transition_time="T1"
    )
    moved = stamp_transition(
        Condition(type="Ready", status="False", reason="B", message="b"), [old], "T2", 7
    )
    assert moved.last_transition_time == "T1" and moved.observed_generation == 7
    assert moved.reason == "B" and moved.message == "b"
    flipped = stamp_transition(Condition(type="Ready", status="True"), [old], "T2", 7)
    assert flipped.last_transition_time == "T2"
    fresh = stamp_transition(Condition(type="Other", status="False"), [old], "T2", None)
    assert fresh.last_transition_time == "T2" and fresh.observed_generation is None


def test_a_stored_condition_without_a_time_gets_one() -> None:
    """A condition read back without ``lastTransitionTime`` (a hand edit: the CRD does not
    require it) is stamped now rather than left without one."""
    old = Condition(type="Ready", status="True")
    stamped = stamp_transition(Condition(type="Ready", status="True"), [old], "T2", 1)
    assert stamped.last_transition_time == "T2"
