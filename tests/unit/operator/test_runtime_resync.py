"""The resync and the drift check (runtime/resync.py) over caches filled by the real index
functions, against an in-memory API that answers ``list_uids`` as the API server does."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine, Hashable, Mapping
from typing import Any, TypeVar

import kopf
import pytest

from appliance_operator.kubeapi import ApiError
from appliance_operator.runtime.cache import Caches, execute_jobs, worker_pods
from appliance_operator.runtime.resync import DRIFT_EVERY, Resync
from appliance_operator.workqueue import WorkQueue
from cerebras_appliance.contract import names
from cerebras_appliance.contract.api import PLURAL, TERMINAL_PHASES

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
NS = "ml"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout=10))


class FakeCluster:
    """``KubeApi.list_uids`` in memory: the uids of the operator's pods (``"pods"``: the
    managed-by label selects them) or of the ExecuteJobs (any other resource, as the real
    method) that exist now in a namespace; raises ApiError when told to fail."""

    def __init__(self) -> None:
        self.pods: dict[str, set[str]] = {}
        self.jobs: dict[str, set[str]] = {}
        self.calls: list[tuple[str, str]] = []
        self.fail: ApiError | None = None
        self.on_list: list[Any] = []  # callables run during a list (what happens meanwhile)

    def list_uids(self, namespace: str, resource: str) -> set[str]:
        self.calls.append((namespace, resource))
        if self.fail is not None:
            raise self.fail
        for action in self.on_list:
            action()
        objects = self.pods if resource == "pods" else self.jobs
        return set(objects.get(namespace, ()))


class RecordingQueue(WorkQueue[K]):
    """The real queue, noting what was scheduled (the queue shows only how many)."""

    def __init__(self) -> None:
        super().__init__()
        self.added: list[K] = []
        self.scheduled_keys: list[K] = []

    def add(self, key: K) -> None:
        self.added.append(key)
        super().add(key)

    def add_after(self, key: K, delay: float) -> None:
        self.scheduled_keys.append(key)
        super().add_after(key, delay)


def job_body(name: str, uid: str, phase: str = "", ttl: int | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"image": "i", "entrypoint": "a.py", "replicas": 1}
    if ttl is not None:
        spec["ttlSecondsAfterFinished"] = ttl
    body: dict[str, Any] = {
        "apiVersion": "appliance.dev/v1alpha1",
        "kind": "ExecuteJob",
        "metadata": {"name": name, "namespace": NS, "uid": uid, "creationTimestamp": "t"},
        "spec": spec,
    }
    if phase:
        body["status"] = {"phase": phase}
    return body


def pod_body(job: str, uid: str, phase: str = "Running", tracked: bool = False) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"{job}-worker-0",
            "namespace": NS,
            "uid": uid,
            "labels": {
                names.MANAGED_BY_LABEL: names.MANAGED_BY,
                names.JOB_NAME_LABEL: job,
                names.WORKER_INDEX_LABEL: "0",
            },
            "finalizers": [names.TRACKING_FINALIZER] if tracked else [],
        },
        "status": {"phase": phase},
    }


def put(index: dict[Any, list[Any]], entries: Mapping[Any, Any]) -> None:
    """What kopf does with an index function's answer: each value under its key."""
    for key, value in entries.items():
        index.setdefault(key, []).append(value)


class World:
    """Caches as kopf fills them, and the API server's view, kept in step by :meth:`create`."""

    def __init__(self) -> None:
        self.jobs: dict[Any, list[Any]] = {}
        self.pods: dict[Any, list[Any]] = {}
        self.caches = Caches(jobs=self.jobs, pods=self.pods, pools={}, pool_pods={})
        self.cluster = FakeCluster()

    def create_job(self, name: str, uid: str, **kw: Any) -> None:
        put(self.jobs, execute_jobs(kopf.Body(job_body(name, uid, **kw)), NS, name))
        self.cluster.jobs.setdefault(NS, set()).add(uid)

    def create_pod(self, job: str, uid: str, **kw: Any) -> None:
        put(self.pods, worker_pods(kopf.Body(pod_body(job, uid, **kw)), NS))
        self.cluster.pods.setdefault(NS, set()).add(uid)

    def resync(self, queue: WorkQueue[Any], period: float = 60.0) -> Resync:
        return Resync(self.caches, queue, self.cluster.list_uids, period)


def test_the_drift_check_tombstones_what_the_api_server_lost_and_reconciles_its_job() -> None:
    """A watch re-listed after 410 Gone sends no DELETED for what vanished meanwhile: the
    job and the pod the API server no longer has are tombstoned, the snapshots skip them and
    their jobs are queued; what still exists is left alone."""
    world = World()
    world.create_job("lost", "job-lost")
    world.create_pod("lost", "pod-lost")
    world.create_job("kept", "job-kept")
    world.create_pod("kept", "pod-kept")
    world.create_pod("kept-pod-lost", "pod-orphan")
    world.cluster.jobs[NS] -= {"job-lost"}
    world.cluster.pods[NS] -= {"pod-lost", "pod-orphan"}

    async def scenario() -> RecordingQueue[Any]:
        queue: RecordingQueue[Any] = RecordingQueue()
        await world.resync(queue).check_drift()
        return queue

    queue = run(scenario())
    assert world.caches.tombstones == {"job-lost", "pod-lost", "pod-orphan"}
    assert sorted(set(queue.added)) == [(NS, "kept-pod-lost"), (NS, "lost")]
    assert world.caches.job((NS, "lost")) == (None, [])
    body, pods = world.caches.job((NS, "kept"))
    assert body is not None and body["metadata"]["uid"] == "job-kept"
    assert [p.uid for p in pods] == ["pod-kept"]
    assert sorted(world.cluster.calls) == [(NS, PLURAL), (NS, "pods")]


def test_a_ghost_is_reported_and_queued_once_not_at_every_check(
    caplog: pytest.LogCaptureFixture,
) -> None:
    world = World()
    world.create_job("lost", "job-lost")
    world.cluster.jobs[NS].clear()

    async def scenario() -> RecordingQueue[Any]:
        queue: RecordingQueue[Any] = RecordingQueue()
        resync = world.resync(queue)
        await resync.check_drift()
        await resync.check_drift()
        return queue

    with caplog.at_level(logging.WARNING, logger="appliance_operator"):
        queue = run(scenario())
    assert queue.added == [(NS, "lost")]
    assert len([r for r in caplog.records if "still cached" in r.getMessage()]) == 1


def test_an_object_cached_while_the_list_runs_is_not_taken_for_a_ghost() -> None:
    """Only what the indexes held before the list started is judged: a job created (and
    indexed) after the API server answered is absent from the answer, yet not gone."""
    world = World()
    world.create_job("old", "job-old")
    indexed_meanwhile = threading.Event()

    def create_meanwhile() -> None:
        if not indexed_meanwhile.is_set():
            indexed_meanwhile.set()
            put(world.jobs, execute_jobs(kopf.Body(job_body("new", "job-new")), NS, "new"))

    world.cluster.on_list.append(create_meanwhile)

    async def scenario() -> None:
        await world.resync(RecordingQueue()).check_drift()

    run(scenario())
    assert indexed_meanwhile.is_set()
    assert world.caches.tombstones == set()


def test_the_drift_check_forgets_tombstones_no_index_holds_any_more() -> None:
    world = World()
    world.create_job("live", "job-live")
    world.caches.tombstones.update({"gone-1", "gone-2"})

    async def scenario() -> None:
        await world.resync(RecordingQueue()).check_drift()

    run(scenario())
    assert world.caches.tombstones == set()


def test_the_drift_check_runs_every_DRIFT_EVERY_rounds_only() -> None:
    world = World()
    world.create_job("a", "job-a")

    async def scenario() -> None:
        resync = world.resync(RecordingQueue())
        for _ in range(2 * DRIFT_EVERY):
            await resync.round()

    run(scenario())
    # Two lists (pods, jobs) per namespace per check: at rounds DRIFT_EVERY and 2*DRIFT_EVERY.
    assert len(world.cluster.calls) == 2 * 2


def test_a_failed_drift_check_waits_for_the_next_period_and_the_jobs_are_still_resynced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    world = World()
    world.create_job("a", "job-a")
    world.cluster.fail = ApiError(503, "ServiceUnavailable", "etcd is away")

    async def scenario() -> RecordingQueue[Any]:
        queue: RecordingQueue[Any] = RecordingQueue()
        resync = world.resync(queue)
        for _ in range(DRIFT_EVERY):
            await resync.round()
        return queue

    with caplog.at_level(logging.WARNING, logger="appliance_operator"):
        queue = run(scenario())
    assert world.cluster.calls, "the drift check ran"
    assert any("drift check failed" in r.getMessage() for r in caplog.records)
    assert queue.scheduled_keys == [(NS, "a")] * DRIFT_EVERY
    assert world.caches.tombstones == set()


def test_the_resync_schedules_every_job_that_can_still_change_within_the_period() -> None:
    """Settled (skipped): finished, no TTL, no pod left to release. Every other job is
    scheduled at a random point of the coming period, not all at once."""
    assert {"Succeeded", "Failed"} == TERMINAL_PHASES
    world = World()
    world.create_job("running", "u1", phase="Running")
    world.create_job("pending", "u2")
    world.create_job("succeeded", "u3", phase="Succeeded")
    world.create_job("failed", "u4", phase="Failed")
    world.create_job("with-ttl", "u5", phase="Succeeded", ttl=60)
    world.create_job("tracked-pod", "u6", phase="Failed")
    world.create_pod("tracked-pod", "p6", phase="Failed", tracked=True)
    world.create_job("active-pod", "u7", phase="Succeeded")
    world.create_pod("active-pod", "p7", phase="Running")
    world.create_job("done-pod", "u8", phase="Succeeded")
    world.create_pod("done-pod", "p8", phase="Succeeded")
    period = 0.2

    async def scenario() -> tuple[RecordingQueue[Any], list[Any]]:
        queue: RecordingQueue[Any] = RecordingQueue()
        await world.resync(queue, period=period).round()
        assert len(queue) == 0 and queue.scheduled == len(queue.scheduled_keys)
        scheduled, taken = queue.scheduled, []
        while len(taken) < scheduled:
            taken.append(await asyncio.wait_for(queue.get(), timeout=2 * period))
        return queue, taken

    queue, taken = run(scenario())
    expected = {(NS, n) for n in ("running", "pending", "with-ttl", "tracked-pod", "active-pod")}
    assert set(queue.scheduled_keys) == expected
    assert set(taken) == expected


def test_a_name_held_by_two_records_is_never_taken_for_settled() -> None:
    """Two records under one name only while a deleted job's DELETED is in flight: resync."""
    world = World()
    world.create_job("twice", "old", phase="Succeeded")
    world.create_job("twice", "new", phase="Succeeded")
    assert not world.caches.settled((NS, "twice"))


def test_the_periodic_task_runs_a_round_every_period() -> None:
    world = World()
    world.create_job("a", "job-a", phase="Running")

    async def scenario() -> RecordingQueue[Any]:
        queue: RecordingQueue[Any] = RecordingQueue()
        resync = world.resync(queue, period=0.01)
        task = asyncio.create_task(resync.run())
        while resync.rounds < 3:
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return queue

    queue = run(scenario())
    assert len(queue.scheduled_keys) >= 3
