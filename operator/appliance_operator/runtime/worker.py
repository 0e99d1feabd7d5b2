"""The worker loop: one, for jobs and pools alike.

A worker takes a key off its :class:`WorkQueue`, copies the object out of the cache on the
event loop (where kopf updates the indexes), runs the reconcile in a thread (its API calls
block), and puts the key back when the reconcile asks to look again or failed. What differs
between jobs and pools is a :class:`Work`: :class:`JobWork` and :class:`PoolWork`.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Hashable
from concurrent.futures import Executor
from typing import Any, Generic, TypeVar

from appliance_operator.job.controller import Controller, JobKey
from appliance_operator.kubeapi import ApiError
from appliance_operator.metrics import Metrics
from appliance_operator.observe import PodView
from appliance_operator.pool.controller import PoolController, PoolKey, PoolSnapshot
from appliance_operator.runtime.cache import Caches
from appliance_operator.workqueue import QueueShutDownError, WorkQueue

logger = logging.getLogger("appliance_operator")

K = TypeVar("K", bound=Hashable)
S = TypeVar("S")


class Work(ABC, Generic[K, S]):
    """What a worker loop does with the keys of one queue: ``S`` is the snapshot of one
    object that :meth:`reconcile` gets."""

    def __init__(self, queue: WorkQueue[K]) -> None:
        self.queue = queue

    def taken(self) -> None:
        """Called on the event loop as a key is taken off the queue (before the snapshot)."""

    @abstractmethod
    def snapshot(self, key: K) -> S:
        """The object and what its reconcile needs, copied out of the cache (event loop)."""

    @abstractmethod
    def reconcile(self, key: K, snapshot: S) -> float | None:
        """In a thread: when to look again (seconds), or None."""

    @abstractmethod
    def gone(self, snapshot: S) -> bool:
        """The object no longer exists: its scheduled adds are dropped."""

    @abstractmethod
    def retry_after(self, key: K, error: Exception) -> float:
        """The reconcile raised ``error``: log it (called inside the ``except``, so a
        traceback can be logged) and say when to try again."""


async def run_worker(work: Work[K, S], executor: Executor) -> None:
    """Take keys until the queue is shut down; a key is never reconciled by two workers at
    once (the queue's promise), and one that fails is retried, never dropped."""
    loop = asyncio.get_running_loop()
    queue = work.queue
    while True:
        try:
            key = await queue.get()
        except QueueShutDownError:
            return
        work.taken()
        try:
            snapshot = work.snapshot(key)
            delay = await loop.run_in_executor(executor, work.reconcile, key, snapshot)
            if work.gone(snapshot):
                queue.forget(key)
            elif delay is not None:
                queue.add_after(key, delay)
        except Exception as exc:
            queue.add_after(key, work.retry_after(key, exc))
        finally:
            queue.done(key)


JobSnapshot = tuple[dict[str, Any] | None, list[PodView], PoolSnapshot | None]


class JobWork(Work[JobKey, JobSnapshot]):
    """ExecuteJobs: the job, its pods and (for a job of a pool) the pool, to
    :meth:`Controller.reconcile`; the queue's depth is a metric."""

    def __init__(
        self, queue: WorkQueue[JobKey], caches: Caches, controller: Controller, metrics: Metrics
    ) -> None:
        super().__init__(queue)
        self.caches = caches
        self.controller = controller
        self.metrics = metrics

    def taken(self) -> None:
        self.metrics.queue_depth.set(len(self.queue))

    def snapshot(self, key: JobKey) -> JobSnapshot:
        body, pods = self.caches.job(key)
        pool_name = ((body or {}).get("spec") or {}).get("pool")
        pool = self.caches.pool((key[0], pool_name)) if pool_name else None
        return body, pods, pool

    def reconcile(self, key: JobKey, snapshot: JobSnapshot) -> float | None:
        body, pods, pool = snapshot
        return self.controller.reconcile(key, body, pods, pool)

    def gone(self, snapshot: JobSnapshot) -> bool:
        return snapshot[0] is None

    def retry_after(self, key: JobKey, error: Exception) -> float:
        delay = self.controller.retry_delay(key)
        if isinstance(error, ApiError):
            logger.warning("[%s/%s] reconcile failed (%s); retrying in %.1fs", *key, error, delay)
            return delay
        logger.exception("[%s/%s] reconcile crashed; retrying in %.1fs", *key, delay)
        return max(delay, 5.0)


#: A failed pool reconcile is tried again after this many seconds.
POOL_RETRY_SECONDS = 2.0


class PoolWork(Work[PoolKey, PoolSnapshot]):
    """WorkerPools: the pool and its pods (those not known gone) to
    :meth:`PoolController.reconcile`."""

    def __init__(self, queue: WorkQueue[PoolKey], caches: Caches, pools: PoolController) -> None:
        super().__init__(queue)
        self.caches = caches
        self.pools = pools

    def snapshot(self, key: PoolKey) -> PoolSnapshot:
        snapshot = self.caches.pool(key)
        gone = self.caches.tombstones
        return PoolSnapshot(snapshot.body, tuple(p for p in snapshot.pods if p.uid not in gone))

    def reconcile(self, key: PoolKey, snapshot: PoolSnapshot) -> float | None:
        return self.pools.reconcile(key, snapshot.body, list(snapshot.pods))

    def gone(self, snapshot: PoolSnapshot) -> bool:
        return snapshot.body is None

    def retry_after(self, key: PoolKey, error: Exception) -> float:
        logger.exception("[%s/%s] pool reconcile failed; retrying in %gs", *key, POOL_RETRY_SECONDS)
        return POOL_RETRY_SECONDS
