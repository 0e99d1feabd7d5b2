"""The operator's runtime: everything kopf's handlers share, from start-up to clean-up.

:func:`start` builds a :class:`Runtime` (API client, controllers, queues, worker tasks,
resync, metrics endpoint); ``handlers.py`` keeps it in kopf's *memo*, which kopf passes to
every handler, so no module holds it in a global. :meth:`Runtime.close` undoes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Collection, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import kopf
from kubernetes import client
from kubernetes import config as kube_config
from prometheus_client import start_http_server

from appliance_operator.job.controller import Controller, JobKey
from appliance_operator.kubeapi import KubeApi
from appliance_operator.metrics import Metrics
from appliance_operator.observe import PodView
from appliance_operator.pool.controller import PoolController, PoolKey
from appliance_operator.pool.plan import PoolPodView
from appliance_operator.runtime.cache import Caches, JobRecord, Record
from appliance_operator.runtime.config import Config
from appliance_operator.runtime.resync import Resync
from appliance_operator.runtime.worker import JobWork, PoolWork, run_worker
from appliance_operator.workqueue import WorkQueue

logger = logging.getLogger("appliance_operator")

#: The memo keys: the :class:`Config` given by ``python -m appliance_operator`` (absent under
#: ``kopf run``: then from the environment), and the :class:`Runtime` once started.
CONFIG = "config"
RUNTIME = "runtime"

#: Task names: the job workers are ``JOB_WORKER-0`` ... ``JOB_WORKER-<n-1>``.
JOB_WORKER = "reconcile-job"
POOL_WORKER = "reconcile-pools"
RESYNC = "resync"


class OperatorMemo(kopf.Memo):
    """kopf's memo for this operator, shared by every handler of every object.

    kopf gives each watched object a shallow copy of the operator's memo; this one hands out
    itself instead. The operator keeps no per-object state in a memo, and a copy holding the
    runtime costs ~0.2 KiB per object (2 MiB at 1,000 jobs of 8 pods); shared, clean-up's
    removal of the runtime is also seen by every object's handlers at once."""

    def __copy__(self) -> OperatorMemo:
        return self


def runtime_of(memo: Mapping[Any, Any]) -> Runtime | None:
    """The running operator's :class:`Runtime` (None before start-up and after clean-up)."""
    runtime = memo.get(RUNTIME)
    return runtime if isinstance(runtime, Runtime) else None


def config_of(memo: Mapping[Any, Any]) -> Config:
    config = memo.get(CONFIG)
    return config if isinstance(config, Config) else Config.from_env()


@dataclass
class Runtime:
    config: Config
    metrics: Metrics
    controller: Controller
    pools: PoolController
    caches: Caches
    executor: ThreadPoolExecutor
    jobs: WorkQueue[JobKey] = field(default_factory=WorkQueue)
    pool_queue: WorkQueue[PoolKey] = field(default_factory=WorkQueue)
    #: Tasks by name: the workers end when the queues shut down ...
    workers: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    #: ... the periodic ones are cancelled at clean-up.
    periodic: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    metrics_server: Any = None
    closed: bool = False

    def serves(self, namespace: str | None) -> bool:
        """Whether objects of this namespace are the operator's (it may watch more)."""
        return self.config.scope.serves(namespace)

    def enqueue_job(self, key: JobKey) -> None:
        """Not blocking (a set and a deque): called from kopf's event handlers."""
        if not self.closed:
            self.jobs.add(key)
            self.metrics.queue_depth.set(len(self.jobs))

    def enqueue_pool(self, key: PoolKey) -> None:
        if not self.closed:
            self.pool_queue.add(key)

    def start_tasks(self) -> None:
        """The job workers (``config.workers``), the pool worker and the resync."""
        job_work = JobWork(self.jobs, self.caches, self.controller, self.metrics)
        for n in range(self.config.workers):
            self._spawn(self.workers, f"{JOB_WORKER}-{n}", run_worker(job_work, self.executor))
        pool_work = PoolWork(self.pool_queue, self.caches, self.pools)
        self._spawn(self.workers, POOL_WORKER, run_worker(pool_work, self.executor))
        resync = Resync(
            self.caches,
            self.jobs,
            self.controller.api.list_uids,
            self.config.resync_seconds,
            self.executor,
        )
        self._spawn(self.periodic, RESYNC, resync.run())

    @staticmethod
    def _spawn(
        tasks: dict[str, asyncio.Task[None]], name: str, coro: Coroutine[Any, Any, None]
    ) -> None:
        tasks[name] = asyncio.create_task(coro, name=name)

    def health(self) -> dict[str, int]:
        """The liveness answer's part; raises (HTTP 500) when a worker task died."""
        died = [name for name, task in self.workers.items() if task.done()]
        if died:
            raise RuntimeError(f"{len(died)} reconcile task(s) died")
        job_workers = sum(1 for name in self.workers if name.startswith(f"{JOB_WORKER}-"))
        return {
            "workers": job_workers,
            "queued": len(self.jobs),
            "processing": self.jobs.processing,
        }

    async def close(self) -> None:
        """Stop taking work, end the tasks, then release the threads, the controller's
        resources and the metrics endpoint."""
        self.closed = True
        self.jobs.shutdown()
        self.pool_queue.shutdown()
        for task in self.periodic.values():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(
                *self.workers.values(), *self.periodic.values(), return_exceptions=True
            )
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.controller.close()
        if self.metrics_server is not None:
            server, _thread = self.metrics_server
            server.shutdown()


def api_client() -> Any:
    """The Kubernetes client: in-cluster credentials, else ``$KUBECONFIG``."""
    try:
        kube_config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kube_config.ConfigException:
        kube_config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))  # type: ignore[no-untyped-call]
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = 32  # reconcile workers + parallel pod creates
    api = client.ApiClient(configuration)
    api.user_agent = "appliance-operator"  # the field manager of its writes
    return api


async def start(
    config: Config,
    *,
    jobs: Mapping[JobKey, Collection[JobRecord]],
    pods: Mapping[JobKey, Collection[PodView]],
    pools: Mapping[PoolKey, Collection[Record]],
    pool_pods: Mapping[PoolKey, Collection[PoolPodView]],
) -> Runtime:
    """Build the runtime over kopf's indexes, start the metrics endpoint and the tasks."""
    metrics = Metrics()
    kube = KubeApi(await asyncio.to_thread(api_client), metrics)
    pool_controller = PoolController(kube, metrics)
    runtime = Runtime(
        config=config,
        metrics=metrics,
        controller=Controller(kube, metrics, pools=pool_controller, background_events=True),
        pools=pool_controller,
        caches=Caches(jobs=jobs, pods=pods, pools=pools, pool_pods=pool_pods),
        executor=ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="reconcile"),
    )
    if config.metrics_port:
        runtime.metrics_server = start_http_server(
            config.metrics_port, addr=config.metrics_address, registry=metrics.registry
        )
        logger.info("metrics on http://%s:%d/metrics", config.metrics_address, config.metrics_port)
    runtime.start_tasks()
    return runtime
