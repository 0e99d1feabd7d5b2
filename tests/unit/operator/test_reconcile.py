"""plan(): the reconcile decision for one job, and pods -> PodView -> Attempt (pure)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from support import objects

from appliance_operator.desired import WorkerId
from appliance_operator.job.env import ENV_RESOLVED
from appliance_operator.job.plan import (
    PROGRESS_WRITE_INTERVAL,
    EnvKnowledge,
    Inputs,
    plan,
)
from appliance_operator.observe import PodView, attempt_of, job_view, pod_view
from cerebras_appliance.contract.api import Condition, ExecuteJobStatus

UID = objects.JOB_UID
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
READY = EnvKnowledge(secret_ready=True)


def job_body(status: ExecuteJobStatus | None = None, **spec: Any) -> dict[str, Any]:
    dumped = (
        status.model_dump(mode="json", by_alias=True, exclude_none=True)
        if status is not None
        else None
    )
    return objects.job_body(status=dumped, **spec)


def pod(
    index: int,
    phase: str = "Running",
    *,
    attempt: int = 0,
    ready: bool = True,
    exit_code: int | None = None,
    owner: str = UID,
    terminating: bool = False,
    finished_at: str = "",
    tracked: bool = True,
    disrupted: bool = False,
) -> PodView:
    name = f"demo-worker-{index}" + (f"-{attempt}" if attempt else "")
    return PodView(
        name=name,
        uid=f"uid-{name}-{owner}",
        job_name="demo",
        owner_uid=owner,
        index=index,
        attempt=attempt,
        phase=phase,  # type: ignore[arg-type]
        ready=ready and phase == "Running",
        exit_code=exit_code,
        reason="Error" if exit_code else "",
        terminating=terminating,
        finished_at=finished_at,
        tracked=tracked,
        disrupted=disrupted,
    )


def run(
    pods: list[PodView],
    *,
    status: ExecuteJobStatus | None = None,
    env: EnvKnowledge = READY,
    now: datetime = T0,
    last_write: datetime | None = None,
    **spec: Any,
):  # type: ignore[no-untyped-def]
    job = job_view(job_body(status, **spec))
    return plan(Inputs(job=job, pods=pods, env=env, now=now, last_status_write=last_write))


def settle(pods: list[PodView], **kw: Any) -> ExecuteJobStatus:
    """The status after as many reconciles as it takes to stop writing."""
    status = None
    for _ in range(5):
        step = run(pods, status=status, **kw)
        if step.status is None:
            assert status is not None
            return status
        status = step.status
    raise AssertionError("status never settled")


# -- creation -------------------------------------------------------------------------------


def test_new_job_writes_its_secret_first() -> None:
    step = run([], env=EnvKnowledge())
    assert step.ensure_secret and step.create == ()
    assert step.status is not None and step.status.phase == "Pending"
    assert step.status.replicas == 2
    assert step.status.env_hash is None  # known once <job>-env is written (a keyed hash)
    assert step.events == ()  # no event for a job just being accepted


def test_creates_every_worker_once_the_secret_exists() -> None:
    step = run([])
    assert not step.ensure_secret
    assert step.create == (WorkerId(0, 0), WorkerId(1, 0))


def test_existing_pods_are_not_created_again() -> None:
    step = run([pod(0, "Pending", ready=False)])
    assert step.create == (WorkerId(1, 0),)


def test_a_pod_of_an_earlier_job_with_the_same_name_is_skipped() -> None:
    stale = pod(0, "Running", owner="uid-old-job", terminating=True)
    step = run([stale])
    assert step.create == (WorkerId(0, 1), WorkerId(1, 0))  # the next free name, no wait
    assert step.delete == ()  # and it is not ours to delete
    assert step.status is not None and step.status.phase == "Pending"  # not counted


# -- status ---------------------------------------------------------------------------------


def test_running_and_ready() -> None:
    step = run([pod(0), pod(1)])
    assert step.create == ()
    assert step.status is not None and step.status.phase == "Running"
    assert step.status.ready_replicas == 2
    cond = step.status.condition("WorkersReady")
    assert cond is not None and cond.status == "True" and cond.reason == "EnvApplied"
    assert [(e.type, e.reason) for e in step.events] == [("Normal", "Running")]


def test_unchanged_status_is_not_written_again() -> None:
    status = settle([pod(0), pod(1)])
    again = run([pod(0), pod(1)], status=status, now=T0 + timedelta(minutes=5))
    assert again.status is None and again.events == () and again.create == ()


def test_progress_only_changes_are_rate_limited() -> None:
    one_ready = [pod(0), pod(1, ready=False)]
    status = settle(one_ready)
    both = [pod(0), pod(1)]
    # WorkersReady flipping to True is a condition change: written at once.
    assert run(both, status=status, last_write=T0).status is not None
    # A counter move (2 running, 0 -> 1 ready) is progress: deferred within the interval.
    none_ready = [pod(0, ready=False), pod(1, ready=False)]
    status = settle(none_ready)
    soon = T0 + timedelta(seconds=PROGRESS_WRITE_INTERVAL / 4)
    deferred = run(one_ready, status=status, now=soon, last_write=T0)
    assert deferred.status is None
    assert deferred.requeue_after is not None
    assert abs(deferred.requeue_after - PROGRESS_WRITE_INTERVAL * 0.75) < 1e-6
    later = T0 + timedelta(seconds=PROGRESS_WRITE_INTERVAL)
    written = run(one_ready, status=status, now=later, last_write=T0)
    assert written.status is not None and written.status.ready_replicas == 1


def test_all_succeeded() -> None:
    done = [pod(0, "Succeeded", exit_code=0), pod(1, "Succeeded", exit_code=0)]
    step = run(done)
    assert step.status is not None and step.status.phase == "Succeeded"
    assert step.create == () and step.delete == ()
    assert [(e.type, e.reason) for e in step.events] == [("Normal", "Succeeded")]


def test_failed_worker_fails_the_job_with_its_exit_code() -> None:
    pods = [pod(0), pod(1, "Failed", exit_code=3)]
    step = run(pods)
    assert step.status is not None and step.status.phase == "Failed"
    failed = step.status.condition("Failed")
    assert failed is not None and failed.reason == "BackoffLimitExceeded"
    assert "worker demo-worker-1 failed (exit code 3)" in failed.message
    assert step.create == ()
    assert [p.name for p in step.delete] == ["demo-worker-0"]  # released
    assert [(e.type, e.reason) for e in step.events] == [
        ("Warning", "WorkerFailed"),
        ("Warning", "Failed"),
    ]
    assert all("exit code 3" in e.message for e in step.events)
    # Counted exactly once: its uid is recorded with the count (the controller writes every
    # status on the version planned on), and the finalizer goes only after that write.
    assert step.status.counted_pods == ["uid-demo-worker-1-uid-job-1"]
    assert [p.name for p in step.release] == ["demo-worker-1"]


def test_finished_job_stays_finished_and_releases_leftovers() -> None:
    failed = settle([pod(0), pod(1, "Failed", exit_code=3)])
    # Later the remaining worker is still running (e.g. the delete was lost): delete again.
    step = run([pod(0), pod(1, "Failed", exit_code=3)], status=failed)
    assert step.status is None
    assert [p.name for p in step.delete] == ["demo-worker-0"]
    # A pod already being deleted is not deleted twice.
    step = run([pod(0, terminating=True), pod(1, "Failed", exit_code=3)], status=failed)
    assert step.delete == ()


# -- replacement under backoffLimit ---------------------------------------------------------


def test_failed_worker_is_replaced_under_backoff_limit() -> None:
    pods = [pod(0), pod(1, "Failed", exit_code=3)]
    step = run(pods, backoffLimit=1)
    assert step.create == (WorkerId(1, 1),)
    assert step.status is not None and step.status.phase == "Running"
    assert step.status.failed == 1


def test_replacement_decision_is_restart_safe() -> None:
    """Everything the decision needs is in the pods: a restarted operator decides the same,
    and once the replacement exists nothing more is created."""
    pods = [pod(0), pod(1, "Failed", exit_code=3), pod(1, "Pending", attempt=1, ready=False)]
    step = run(pods, backoffLimit=1)
    assert step.create == ()
    assert step.status is not None and step.status.failed == 1
    assert step.status.phase == "Running"


def test_second_failure_beyond_backoff_limit_fails_the_job() -> None:
    pods = [
        pod(0),
        pod(1, "Failed", exit_code=3, finished_at="2026-03-01T12:00:01Z"),
        pod(1, "Failed", attempt=1, exit_code=4, finished_at="2026-03-01T12:00:05Z"),
    ]
    step = run(pods, backoffLimit=1)
    assert step.create == ()
    assert step.status is not None and step.status.phase == "Failed"
    failed = step.status.condition("Failed")
    assert failed is not None
    assert "demo-worker-1-1 failed (exit code 4)" in failed.message
    assert "2 worker failure(s), backoffLimit is 1" in failed.message


def test_pod_deleted_from_outside_is_replaced_at_once_and_not_a_failure() -> None:
    step = run([pod(0), pod(1, terminating=True)])
    assert step.create == (WorkerId(1, 1),)  # a new name: no wait for the old one
    assert [p.name for p in step.release] == ["demo-worker-1"]  # settled: disrupted
    assert step.status is not None and step.status.failed == 0
    # It ends Failed with 143 (SIGTERM) after its finalizer went: nothing is counted.
    gone = pod(1, "Failed", exit_code=143, terminating=True, tracked=False)
    later = run([pod(0), gone, pod(1, attempt=1)], status=step.status)
    assert later.create == () and (later.status is None or later.status.failed == 0)


def test_disruptions_are_never_failures() -> None:
    cases = [
        pod(1, "Failed", exit_code=143, terminating=True),  # deleted: SIGTERM
        pod(1, "Failed", exit_code=137, terminating=True),  # deleted: grace period ran out
        pod(1, "Failed", disrupted=True),  # evicted, preempted, drained (DisruptionTarget)
    ]
    for case in cases:
        step = run([pod(0), case])
        assert step.status is not None and step.status.failed == 0, case
        assert step.create == (WorkerId(1, 1),), case
        assert [p.name for p in step.release] == ["demo-worker-1"]


def test_oom_kill_is_a_failure_even_while_deleted() -> None:
    oom = dataclasses.replace(pod(1, "Failed", exit_code=137, terminating=True), reason="OOMKilled")
    step = run([pod(0), oom], backoffLimit=1)
    assert step.status is not None and step.status.failed == 1


def test_counts_survive_finished_pods_disappearing() -> None:
    """Once counted (finalizer gone), a pod deleted by pod GC or a person changes nothing:
    the succeeded index is not run again, the failure still counts."""
    first = run([pod(0, "Succeeded", exit_code=0), pod(1, "Failed", exit_code=3)], backoffLimit=1)
    assert first.status is not None
    assert (first.status.succeeded, first.status.failed) == (1, 1)
    assert first.status.completed_indexes == "0"
    # Both pods deleted after their finalizers went; worker 1's replacement runs.
    later = run([pod(1, attempt=1)], status=first.status, backoffLimit=1)
    assert later.create == ()  # worker 0 is done: never run again
    status = later.status or first.status
    assert (status.succeeded, status.failed) == (1, 1)
    assert status.counted_pods == []  # the uids whose finalizers went are dropped


def test_a_counted_pod_whose_finalizer_removal_was_lost_is_not_counted_again() -> None:
    failed = pod(1, "Failed", exit_code=3)
    first = run([pod(0), failed], backoffLimit=5)
    assert first.status is not None and first.status.failed == 1
    # The operator died before removing the finalizer: the pod is still tracked.
    again = run([pod(0), failed, pod(1, attempt=1)], status=first.status, backoffLimit=5)
    assert again.status is None or again.status.failed == 1
    assert [p.name for p in again.release] == ["demo-worker-1"]  # removal retried


# -- lifecycle ------------------------------------------------------------------------------


def test_suspend_deletes_active_pods_but_keeps_failed_ones() -> None:
    pods = [pod(0), pod(1, "Failed", exit_code=3), pod(1, "Pending", attempt=1, ready=False)]
    step = run(pods, backoffLimit=2, suspend=True)
    assert sorted(p.name for p in step.delete) == ["demo-worker-0", "demo-worker-1-1"]
    assert step.create == ()
    assert step.status is not None and step.status.phase == "Suspended"
    assert step.status.failed == 1
    # The stopped pods end with 143: not failures.
    stopped = [
        pod(0, "Failed", exit_code=143, terminating=True),
        pod(1, "Failed", exit_code=3, tracked=False),
        pod(1, "Failed", attempt=1, exit_code=143, terminating=True),
    ]
    after = run(stopped, status=step.status, backoffLimit=2, suspend=True)
    assert after.status is None or after.status.failed == 1
    assert after.create == ()
    # Resumed: the workers come back with new names, the failure still counts.
    resumed = run(stopped, status=step.status, backoffLimit=2)
    assert resumed.create == (WorkerId(0, 1), WorkerId(1, 2))
    assert resumed.status is not None and resumed.status.failed == 1


def test_active_deadline() -> None:
    started = ExecuteJobStatus(phase="Running", start_time="2026-03-01T12:00:00Z", replicas=2)
    step = run(
        [pod(0), pod(1)], status=started, activeDeadlineSeconds=30, now=T0 + timedelta(seconds=10)
    )
    assert step.requeue_after == 20
    step = run(
        [pod(0), pod(1)], status=started, activeDeadlineSeconds=30, now=T0 + timedelta(seconds=30)
    )
    assert step.status is not None and step.status.phase == "Failed"
    failed = step.status.condition("Failed")
    assert failed is not None and failed.reason == "DeadlineExceeded"
    assert len(step.delete) == 2


def test_ttl_after_finished() -> None:
    done = [pod(0, "Succeeded", exit_code=0), pod(1, "Succeeded", exit_code=0)]
    status = settle(done, ttlSecondsAfterFinished=60)
    assert status.completion_time == "2026-03-01T12:00:00Z"
    step = run(done, status=status, ttlSecondsAfterFinished=60, now=T0 + timedelta(seconds=15))
    assert not step.delete_job and step.requeue_after == 45
    step = run(done, status=status, ttlSecondsAfterFinished=60, now=T0 + timedelta(seconds=60))
    assert step.delete_job


def test_a_ttl_past_the_calendar_never_deletes_and_does_not_raise() -> None:
    """Issue 21, defect 9: finished + ttlSecondsAfterFinished past year 9999 raised
    OverflowError in every reconcile (status frozen, finalizers never released)."""
    done = [pod(0, "Succeeded", exit_code=0), pod(1, "Succeeded", exit_code=0)]
    late = datetime(9999, 12, 31, tzinfo=UTC)
    longest = 2**31 - 1  # api.MAX_DURATION_SECONDS, the most the models and the CRD admit
    status = settle(done, ttlSecondsAfterFinished=longest, now=late)
    assert status.phase == "Succeeded"
    step = run(done, status=status, ttlSecondsAfterFinished=longest, now=late)
    assert not step.delete_job and step.requeue_after is None


def test_scale_down_deletes_extra_workers() -> None:
    step = run([pod(0), pod(1), pod(2)], replicas=2)
    assert [p.name for p in step.delete] == ["demo-worker-2"]


def test_deleting_job_is_left_to_the_garbage_collector() -> None:
    body = job_body()
    body["metadata"]["deletionTimestamp"] = "2026-03-01T12:01:00Z"
    step = plan(Inputs(job=job_view(body), pods=[pod(0), pod(1, tracked=False)], now=T0))
    assert step == type(step)(release=(pod(0),))  # only its pods' finalizers go


def test_pods_of_an_earlier_job_of_the_same_name_are_released() -> None:
    """`kubectl replace --force`: the job is deleted and recreated under the same name before
    the operator reconciled the deletion. The old job's pods (another owner uid) must lose
    the tracking finalizer, or they stay Terminating until the new job goes."""
    old = [
        pod(0, "Failed", exit_code=143, owner="uid-of-the-deleted-job", terminating=True),
        pod(1, "Running", owner="uid-of-the-deleted-job", terminating=True),
        pod(2, "Succeeded", exit_code=0, owner="uid-of-the-deleted-job", tracked=False),
    ]
    step = run(old)
    assert sorted(p.uid for p in step.release) == sorted(p.uid for p in old[:2])
    assert step.status is not None and step.status.failed == 0  # not this job's failures
    body = job_body()
    body["metadata"]["deletionTimestamp"] = "2026-03-01T12:01:00Z"
    step = plan(Inputs(job=job_view(body), pods=[pod(0), *old], now=T0))
    assert [p.uid for p in step.release] == [pod(0).uid, old[0].uid, old[1].uid]


def test_env_problem_is_a_condition_and_keeps_the_job_pending() -> None:
    problem = Condition(
        type=ENV_RESOLVED,
        status="False",
        reason="SecretNotFound",
        message="spec.env[0] (TOKEN): Secret 'creds' not found",
    )
    step = run([], env=EnvKnowledge(secret_ready=False, condition=problem))
    assert step.ensure_secret  # retried
    assert step.status is not None and step.status.phase == "Pending"
    cond = step.status.condition(ENV_RESOLVED)
    assert cond is not None and cond.status == "False" and "creds" in cond.message
    # After a restart (nothing in memory) the condition is carried over from the status.
    again = run([], status=step.status, env=EnvKnowledge())
    assert again.status is None


# -- observing pods -------------------------------------------------------------------------


def pod_dict(phase: str, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "demo-worker-1-2",
            "uid": "u1",
            "labels": {
                "app.kubernetes.io/managed-by": "appliance-operator",
                "appliance.dev/job-name": "demo",
                "appliance.dev/worker-index": "1",
                "appliance.dev/attempt": "2",
            },
            "ownerReferences": [
                {"uid": "other", "controller": False},
                {"uid": UID, "controller": True},
            ],
        },
        "status": {"phase": phase, **status},
    }


def test_pod_view_of_a_running_ready_pod() -> None:
    view = pod_view(pod_dict("Running", conditions=[{"type": "Ready", "status": "True"}]))
    assert view is not None
    assert (view.index, view.attempt, view.owner_uid) == (1, 2, UID)
    assert view.phase == "Running" and view.ready and view.active
    state = attempt_of(view).state()
    assert state.phase == "Running" and state.ready


def test_pod_view_of_a_failed_pod() -> None:
    terminated = {"exitCode": 3, "reason": "Error", "finishedAt": "2026-03-01T12:00:09Z"}
    view = pod_view(
        pod_dict(
            "Failed", containerStatuses=[{"name": "worker", "state": {"terminated": terminated}}]
        )
    )
    assert view is not None
    assert view.exit_code == 3 and view.reason == "Error" and not view.active
    assert view.finished_at == "2026-03-01T12:00:09Z"
    assert attempt_of(view).exit_code == 3


def test_pod_view_of_an_evicted_pod_and_of_foreign_pods() -> None:
    view = pod_view(pod_dict("Failed", reason="Evicted"))
    assert view is not None and view.reason == "Evicted" and view.exit_code is None
    assert view.disrupted
    unmanaged = pod_dict("Running")
    unmanaged["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "someone-else"
    assert pod_view(unmanaged) is None
    no_index = pod_dict("Running")
    del no_index["metadata"]["labels"]["appliance.dev/worker-index"]
    assert pod_view(no_index) is None


def test_terminating_running_pod_is_not_counted_as_running() -> None:
    body = pod_dict("Running", conditions=[{"type": "Ready", "status": "True"}])
    body["metadata"]["deletionTimestamp"] = "2026-03-01T12:00:00Z"
    view = pod_view(body)
    assert view is not None and view.terminating and not view.active
    assert attempt_of(view).stopping and not attempt_of(view).active
    assert dataclasses.replace(view, terminating=False).active


def test_pod_view_of_stuck_and_disrupted_pods() -> None:
    waiting = {"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling "x"'}}
    view = pod_view(pod_dict("Pending", containerStatuses=[{"name": "worker", "state": waiting}]))
    assert view is not None and view.waiting == "ImagePullBackOff"
    assert "pulling" in view.waiting_message
    creating = {"waiting": {"reason": "ContainerCreating"}}
    view = pod_view(pod_dict("Pending", containerStatuses=[{"name": "worker", "state": creating}]))
    assert view is not None and view.waiting == ""  # ordinary progress
    unschedulable = pod_dict(
        "Pending",
        conditions=[
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/2"}
        ],
    )
    view = pod_view(unschedulable)
    assert view is not None and (view.waiting, view.waiting_message) == ("Unschedulable", "0/2")
    drained = pod_dict(
        "Failed", conditions=[{"type": "DisruptionTarget", "status": "True", "reason": "x"}]
    )
    view = pod_view(drained)
    assert view is not None and view.disrupted
    tracked = pod_dict("Running")
    tracked["metadata"]["finalizers"] = ["appliance.dev/worker-tracking"]
    view = pod_view(tracked)
    assert view is not None and view.tracked


KUBELET_STUCK = (  # container waiting reasons of a worker that will not start by itself
    "ErrImagePull",
    "ImagePullBackOff",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    "CrashLoopBackOff",
)


@pytest.mark.parametrize("reason", KUBELET_STUCK)
def test_every_stuck_reason_is_a_condition_naming_the_pod(reason: str) -> None:
    """What the kubelet reports in a container's waiting state for a worker that cannot start
    (a missing Secret or ConfigMap key: CreateContainerConfigError, and the others) reaches the
    job's WorkersReady condition with the pod, instead of a silent Pending."""
    waiting = {"waiting": {"reason": reason, "message": f"details of {reason}"}}
    view = pod_view(pod_dict("Pending", containerStatuses=[{"name": "worker", "state": waiting}]))
    assert view is not None and view.waiting == reason
    step = run([pod(0), dataclasses.replace(view, uid="u-stuck")])
    assert step.status is not None
    cond = step.status.condition("WorkersReady")
    assert cond is not None and (cond.status, cond.reason) == ("False", reason)
    assert "demo-worker-1-2" in cond.message and f"details of {reason}" in cond.message
