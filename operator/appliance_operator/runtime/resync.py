"""The safety nets under the watches: the periodic resync and the drift check.

Events drive the reconciles; these catch what events cannot:

* every job that can still change is reconciled about every ``resync_seconds`` (deadlines
  are also scheduled by the reconcile itself; this covers a lost schedule), spread over the
  period so that 1,000 jobs are not one burst;
* every :data:`DRIFT_EVERY` periods the cache is checked against the API server: a watch
  re-listed after 410 Gone delivers no DELETED for what vanished meanwhile, so kopf's indexes
  may hold objects that no longer exist. Their uids become *tombstones*, which the snapshots
  skip (:class:`~appliance_operator.runtime.cache.Caches`), and their jobs are reconciled.

One operator-wide task, not a ``kopf.timer``: a timer would put a finalizer on every job, one
more write per job, and jobs that cannot be deleted while the operator is down.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from concurrent.futures import Executor

from appliance_operator.job.controller import JobKey
from appliance_operator.kubeapi import ApiError
from appliance_operator.runtime.cache import Caches
from appliance_operator.workqueue import WorkQueue
from cerebras_appliance.contract.api import PLURAL

logger = logging.getLogger("appliance_operator")

#: Every this many resync periods the indexes are checked against the API server (with the
#: default 60 s period: every 5 minutes, the watches' own renewal interval).
DRIFT_EVERY = 5

#: ``KubeApi.list_uids``: the uids of the operator's pods (``"pods"``) or of the ExecuteJobs
#: (``"executejobs"``) that exist now in a namespace; raises ApiError.
ListUids = Callable[[str, str], set[str]]


def prune_tombstones(caches: Caches) -> None:
    """Forget the tombstones of uids no index holds any more (a later watch event or re-list
    dropped them): the set stays as small as the ghosts still cached, not all there were."""
    caches.tombstones.intersection_update(caches.indexed_uids())


class Resync:
    """The periodic resync of ``caches``' jobs onto ``queue``, with the drift check."""

    def __init__(
        self,
        caches: Caches,
        queue: WorkQueue[JobKey],
        list_uids: ListUids,
        period: float,
        executor: Executor | None = None,
    ) -> None:
        self.caches = caches
        self.queue = queue
        self.list_uids = list_uids
        self.period = period
        self.executor = executor  # the list calls block: run there (None: asyncio's default)
        self.rounds = 0

    async def run(self) -> None:
        """Forever: a :meth:`round` every period (cancelled at clean-up)."""
        while True:
            await asyncio.sleep(self.period)
            await self.round()

    async def round(self) -> None:
        """One period's work: the drift check every :data:`DRIFT_EVERY` rounds (its failure
        waits for the next one), then every job not :meth:`~Caches.settled` is scheduled at a
        random point of the coming period."""
        self.rounds += 1
        if self.rounds % DRIFT_EVERY == 0:
            try:
                await self.check_drift()
            except ApiError as exc:
                logger.warning("drift check failed (%s); next period", exc)
        for key in list(self.caches.jobs):
            if not self.caches.settled(key):
                self.queue.add_after(key, random.uniform(0, self.period))

    async def check_drift(self) -> None:
        """Find objects the indexes hold that are gone from the API server, tombstone them and
        reconcile their jobs. Only objects indexed *before* the list started are judged, so one
        created meanwhile is never mistaken for a ghost."""
        caches = self.caches
        prune_tombstones(caches)
        before: dict[str, tuple[dict[str, JobKey], dict[str, JobKey]]] = {}
        for key in list(caches.jobs):
            pods, jobs = before.setdefault(key[0], ({}, {}))
            for record in caches.jobs.get(key, ()):
                jobs[record.uid] = key  # not record["metadata"]: that decodes the whole job
        for key in list(caches.pods):
            pods, jobs = before.setdefault(key[0], ({}, {}))
            for view in caches.pods.get(key, ()):
                pods[view.uid] = key
        loop = asyncio.get_running_loop()
        for namespace, (pods, jobs) in before.items():
            listed_pods = await loop.run_in_executor(
                self.executor, self.list_uids, namespace, "pods"
            )
            listed_jobs = await loop.run_in_executor(
                self.executor, self.list_uids, namespace, PLURAL
            )
            for uids, listed in ((pods, listed_pods), (jobs, listed_jobs)):
                for uid, key in uids.items():
                    if uid not in listed and uid not in caches.tombstones:
                        logger.warning(
                            "[%s/%s] %s is gone but was still cached: forgetting it", *key, uid
                        )
                        caches.tombstones.add(uid)
                        self.queue.add(key)
