"""The one worker loop (runtime/worker.py), what differs for jobs and pools, and the
runtime's named tasks, probe and clean-up (runtime/state.py). No cluster."""

from __future__ import annotations

import asyncio
import copy
import logging
import sys
import threading
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import kopf
import pytest
from kubernetes import client

from appliance_operator import handlers
from appliance_operator.job.controller import Controller
from appliance_operator.kubeapi import ApiError, KubeApi
from appliance_operator.metrics import Metrics
from appliance_operator.pool.controller import PoolController, PoolSnapshot
from appliance_operator.runtime import state
from appliance_operator.runtime.cache import (
    Caches,
    execute_jobs,
    pool_pods,
    worker_pools,
)
from appliance_operator.runtime.config import Config
from appliance_operator.runtime.worker import JobWork, PoolWork, Work, run_worker
from appliance_operator.scope import namespace_scope
from appliance_operator.workqueue import WorkQueue
from cerebras_appliance.contract import names

T = TypeVar("T")
NS = "ml"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout=10))


class Script(Work[str, str]):
    """A Work whose reconciles answer from a script: per key, a list of delays (float or
    None) or exceptions to raise, taken in order; records where each step ran."""

    def __init__(self, queue: WorkQueue[str], script: dict[str, list[Any]]) -> None:
        super().__init__(queue)
        self.script = script
        self.done = asyncio.Event()
        self.reconciled: list[str] = []
        self.threads: dict[str, set[str]] = {"snapshot": set(), "reconcile": set()}
        self.retried: list[tuple[str, bool]] = []  # (key, the error is being handled)
        self.taken_count = 0

    def taken(self) -> None:
        self.taken_count += 1

    def snapshot(self, key: str) -> str:
        self.threads["snapshot"].add(threading.current_thread().name)
        return "gone" if key.startswith("gone") else "here"

    def reconcile(self, key: str, snapshot: str) -> float | None:
        self.threads["reconcile"].add(threading.current_thread().name)
        self.reconciled.append(key)
        step = self.script[key].pop(0)
        if isinstance(step, Exception):
            raise step
        result: float | None = step
        return result

    def gone(self, snapshot: str) -> bool:
        return snapshot == "gone"

    def retry_after(self, key: str, error: Exception) -> float:
        self.retried.append((key, sys.exc_info()[1] is error))
        return 0.01


async def drive(work: Script, *keys: str, until: int) -> None:
    """Run two workers over ``keys`` until ``until`` reconciles happened, then shut down."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="reconcile") as executor:
        workers = [asyncio.create_task(run_worker(work, executor)) for _ in range(2)]
        for key in keys:
            work.queue.add(key)
        while len(work.reconciled) < until:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)  # nothing more should come
        work.queue.shutdown()
        await asyncio.gather(*workers)


def test_a_reconcile_that_asks_to_look_again_is_scheduled_then_taken_again() -> None:
    async def scenario() -> Script:
        work = Script(WorkQueue(), {"a": [0.02, None], "b": [None]})
        await drive(work, "a", "b", until=3)
        return work

    work = run(scenario())
    assert sorted(work.reconciled) == ["a", "a", "b"]
    assert work.taken_count == 3
    # Snapshots on the event loop (where kopf updates the indexes), reconciles in threads.
    assert work.threads["snapshot"] == {threading.main_thread().name}
    assert all(t.startswith("reconcile") for t in work.threads["reconcile"])


def test_a_failed_reconcile_is_retried_with_the_error_in_hand() -> None:
    """The key is neither lost nor busy-looped: retry_after, called while the error is being
    handled (so it can log the traceback), says when."""

    async def scenario() -> Script:
        work = Script(WorkQueue(), {"a": [RuntimeError("boom"), None]})
        await drive(work, "a", until=2)
        return work

    work = run(scenario())
    assert work.reconciled == ["a", "a"]
    assert work.retried == [("a", True)]


def test_the_scheduled_look_of_an_object_that_is_gone_is_dropped() -> None:
    async def scenario() -> tuple[Script, int]:
        queue: WorkQueue[str] = WorkQueue()
        work = Script(queue, {"gone-a": [None]})
        queue.add_after("gone-a", 30)  # e.g. its deadline, scheduled by an earlier reconcile
        await drive(work, "gone-a", until=1)
        return work, queue.scheduled

    work, scheduled = run(scenario())
    assert work.reconciled == ["gone-a"] and scheduled == 0


def test_a_worker_ends_when_its_queue_is_shut_down() -> None:
    async def scenario() -> bool:
        queue: WorkQueue[str] = WorkQueue()
        with ThreadPoolExecutor(max_workers=1) as executor:
            task = asyncio.create_task(run_worker(Script(queue, {}), executor))
            await asyncio.sleep(0.01)
            queue.shutdown()
            await asyncio.wait_for(task, timeout=2)
            return task.done() and task.exception() is None

    assert run(scenario())


# -- what differs: jobs and pools ---------------------------------------------------------------


def kube() -> KubeApi:
    """A real KubeApi that never connects (nothing here calls the API)."""
    return KubeApi(client.ApiClient(client.Configuration()), Metrics())


def pool_body(name: str, uid: str, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": NS, "uid": uid, "creationTimestamp": "t"}
    if deleting:
        meta["deletionTimestamp"] = "t2"
    return {"apiVersion": "appliance.dev/v1alpha1", "kind": "WorkerPool", "metadata": meta}


def pool_pod(pool: str, uid: str) -> dict[str, Any]:
    labels = {names.MANAGED_BY_LABEL: names.MANAGED_BY, names.POOL_NAME_LABEL: pool}
    return {"metadata": {"name": f"{pool}-{uid}", "uid": uid, "labels": labels}}


def caches_with_a_pool() -> Caches:
    ((key, record),) = worker_pools(kopf.Body(pool_body("warm", "pool-1")), NS, "warm").items()
    pods = [
        view
        for uid in ("pp-1", "pp-ghost")
        for view in pool_pods(kopf.Body(pool_pod("warm", uid)), NS).values()
    ]
    job = {"metadata": {"name": "j", "uid": "job-1"}, "spec": {"image": "i", "pool": "warm"}}
    ((job_key, job_record),) = execute_jobs(kopf.Body(job), NS, "j").items()
    return Caches(
        jobs={job_key: [job_record]}, pods={}, pools={key: [record]}, pool_pods={key: pods}
    )


def test_a_job_of_a_pool_is_reconciled_with_its_pools_snapshot() -> None:
    caches = caches_with_a_pool()
    metrics = Metrics()
    work = JobWork(WorkQueue(), caches, Controller(kube(), metrics), metrics)
    body, pods, pool = work.snapshot((NS, "j"))
    assert body is not None and body["spec"]["pool"] == "warm" and pods == []
    assert pool is not None and pool.body is not None
    assert pool.body["metadata"]["uid"] == "pool-1"
    assert [p.uid for p in pool.pods] == ["pp-1", "pp-ghost"]
    assert work.snapshot((NS, "no-such-job")) == (None, [], None)


def test_a_pool_is_reconciled_without_its_tombstoned_pods_and_a_deleted_pool_is_gone() -> None:
    caches = caches_with_a_pool()
    caches.tombstones.add("pp-ghost")
    work = PoolWork(WorkQueue(), caches, PoolController(kube(), Metrics()))
    snapshot = work.snapshot((NS, "warm"))
    assert snapshot.body is not None and [p.uid for p in snapshot.pods] == ["pp-1"]
    assert not work.gone(snapshot)
    deleting = worker_pools(kopf.Body(pool_body("warm", "pool-1", deleting=True)), NS, "warm")
    caches.pools = {k: [v] for k, v in deleting.items()}
    assert work.gone(work.snapshot((NS, "warm")))
    assert work.snapshot((NS, "never")) == PoolSnapshot(body=None, pods=())


def test_a_jobs_api_error_backs_off_and_a_crash_waits_at_least_five_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    controller = Controller(kube(), metrics)
    work = JobWork(WorkQueue(), caches_with_a_pool(), controller, metrics)
    backoff = controller.retry_delay((NS, "j"))
    with caplog.at_level(logging.WARNING, logger="appliance_operator"):
        assert work.retry_after((NS, "j"), ApiError(500, "InternalError", "x")) == backoff
        try:
            raise ValueError("a bug")
        except ValueError as exc:
            assert work.retry_after((NS, "j"), exc) == max(backoff, 5.0)
    failed, crashed = caplog.records
    assert failed.levelno == logging.WARNING and failed.exc_info is None
    assert crashed.levelno == logging.ERROR and crashed.exc_info is not None


# -- the runtime: named tasks, probe, clean-up, memo ---------------------------------------------


def runtime(config: Config) -> state.Runtime:
    metrics = Metrics()
    pools = PoolController(kube(), metrics)
    return state.Runtime(
        config=config,
        metrics=metrics,
        controller=Controller(kube(), metrics, pools=pools),
        pools=pools,
        caches=Caches(jobs={}, pods={}, pools={}, pool_pods={}),
        executor=ThreadPoolExecutor(max_workers=config.workers),
    )


def test_the_probe_counts_job_workers_and_fails_when_a_worker_task_died() -> None:
    async def scenario() -> None:
        rt = runtime(Config(workers=3, metrics_port=0))
        rt.start_tasks()
        await asyncio.sleep(0)
        expected_names = {"reconcile-job-0", "reconcile-job-1", "reconcile-job-2"}
        assert set(rt.workers) == {*expected_names, "reconcile-pools"}
        assert set(rt.periodic) == {"resync"}
        assert {t.get_name() for t in rt.workers.values()} == set(rt.workers)
        assert rt.health() == {"workers": 3, "queued": 0, "processing": 0}
        rt.workers["reconcile-pools"].cancel()
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="1 reconcile task"):
            rt.health()
        await rt.close()

    run(scenario())


def test_clean_up_ends_every_task_by_name_and_stops_taking_work() -> None:
    async def scenario() -> None:
        rt = runtime(Config(workers=2, metrics_port=0))
        rt.start_tasks()
        await asyncio.sleep(0)
        await rt.close()
        assert all(t.done() for t in [*rt.workers.values(), *rt.periodic.values()])
        assert rt.periodic["resync"].cancelled()
        assert not any(t.cancelled() for t in rt.workers.values()), "workers end on their own"
        rt.enqueue_job((NS, "late"))
        rt.enqueue_pool((NS, "late"))
        assert len(rt.jobs) == 0 and len(rt.pool_queue) == 0

    run(scenario())


def test_the_operators_memo_is_one_for_every_object_and_holds_the_runtime() -> None:
    """kopf gives each object a shallow copy of the operator's memo: this one is shared, so
    no object carries a copy of it, and clean-up's removal of the runtime reaches them all."""
    rt = runtime(Config(workers=1, metrics_port=0))
    memo = state.OperatorMemo({state.CONFIG: rt.config})
    assert copy.copy(memo) is memo
    assert state.config_of(memo) is rt.config
    assert state.runtime_of(memo) is None
    memo[state.RUNTIME] = rt
    assert state.runtime_of(copy.copy(memo)) is rt
    assert state.config_of(kopf.Memo()) == Config.from_env()
    rt.executor.shutdown()


def test_the_event_handlers_enqueue_through_the_memo_for_served_namespaces_only() -> None:
    async def scenario() -> None:
        rt = runtime(Config(workers=1, metrics_port=0, scope=namespace_scope(["!kube-*"])))
        memo = state.OperatorMemo({state.RUNTIME: rt})
        await handlers.job_event(namespace="kube-system", name="x", memo=memo)
        await handlers.job_event(namespace=NS, name="a", memo=memo)
        labels = {names.JOB_NAME_LABEL: "b", names.POOL_NAME_LABEL: "warm"}
        await handlers.pod_event(namespace=NS, labels=labels, memo=memo)
        await handlers.pod_event(namespace="kube-public", labels=labels, memo=memo)
        await handlers.pool_event(namespace=NS, name="cold", memo=memo)
        assert [await rt.jobs.get(), await rt.jobs.get()] == [(NS, "a"), (NS, "b")]
        assert len(rt.jobs) == 0
        assert [await rt.pool_queue.get(), await rt.pool_queue.get()] == [
            (NS, "warm"),
            (NS, "cold"),
        ]
        assert len(rt.pool_queue) == 0
        assert handlers.probe(memo=memo) == {"workers": 0, "queued": 0, "processing": 2}
        await handlers.cleanup(memo=memo)
        assert state.runtime_of(memo) is None and rt.closed
        assert handlers.probe(memo=memo) == {"workers": 0}
        await handlers.job_event(namespace=NS, name="after", memo=memo)  # no runtime: nothing

    run(scenario())
