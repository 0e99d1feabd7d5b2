"""The kopf handlers: thin wiring between kopf's watches and :class:`Controller`.

* Two kopf *indexes* are the operator's cache: worker pods by job, and jobs by name. kopf
  fills them from its list+watch of each resource and runs no other handler until both
  initial lists are in, so the first reconcile after a (re)start sees every existing pod.
* Two kopf *event* handlers (any event on a job, or on a pod the operator made) put the
  job's key on a coalescing :class:`WorkQueue`: a burst of events is one reconcile.
* Worker tasks take keys, copy the job and its pods out of the indexes (on the event loop,
  where kopf updates them) and run the reconcile in a thread (its API calls block).

Only event and index handlers are used, so kopf writes nothing to the jobs: no finalizer, no
progress or last-handled-configuration annotations. (A ``kopf.timer`` would put a finalizer
on every job — one more write per job, and jobs that cannot be deleted while the operator is
down — so the periodic resync is one operator-wide task instead.)

Run with ``python -m appliance_operator`` or ``kopf run -m appliance_operator.handlers``
(configured then by the ``APPLIANCE_OPERATOR_*`` variables of :class:`Config`).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import os
import random
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

import kopf

from appliance_operator.job.controller import Controller, JobKey
from appliance_operator.kubeapi import ApiError, KubeApi
from appliance_operator.metrics import Metrics
from appliance_operator.observe import PodView, pod_view
from appliance_operator.pool.controller import PoolController, PoolKey, PoolSnapshot
from appliance_operator.pool.plan import PoolPodView, pool_pod_view
from appliance_operator.scope import NamespaceScope
from appliance_operator.workqueue import QueueShutDownError, WorkQueue
from cerebras_appliance.contract.api import PLURAL, POOL_PLURAL
from cerebras_appliance.contract.names import (
    AWAITING_VALUES_ANNOTATION,
    GROUP,
    JOB_NAME_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    MANAGED_SELECTOR,
    POOL_NAME_LABEL,
    VERSION,
)

logger = logging.getLogger("appliance_operator")

MANAGED = {MANAGED_BY_LABEL: MANAGED_BY}
#: The pods of warm pools (idle, and claimed ones, which keep the label).
POOL_PODS: dict[str, Any] = {MANAGED_BY_LABEL: MANAGED_BY, POOL_NAME_LABEL: kopf.PRESENT}
#: Every this many resync periods the indexes are checked against the API server (with the
#: default 60 s period: every 5 minutes, the watches' own renewal interval).
DRIFT_EVERY = 5


@dataclass
class Config:
    workers: int = 8  # concurrent reconciles (of different jobs)
    metrics_port: int = 8081  # 0: no metrics endpoint
    metrics_address: str = "0.0.0.0"  # a pod's port, scraped by Prometheus
    resync_seconds: float = 60.0
    #: The namespaces served (``--namespace``); kopf may watch more (scope.py).
    scope: NamespaceScope = field(default_factory=NamespaceScope)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Config:
        """From ``APPLIANCE_OPERATOR_*``. A value that is not a number is ignored with a
        warning: Kubernetes injects Service link variables such as
        ``APPLIANCE_OPERATOR_METRICS_PORT=tcp://10.0.0.7:8081`` when the release is named
        ``appliance-operator`` and service links are on."""
        defaults = cls()

        def number(name: str, default: float) -> float:
            text = environ.get(name)
            if text is None:
                return default
            try:
                return float(text)
            except ValueError:
                logger.warning("ignoring %s=%r: not a number (a Service link?)", name, text)
                return default

        return cls(
            workers=int(number("APPLIANCE_OPERATOR_WORKERS", defaults.workers)),
            metrics_port=int(number("APPLIANCE_OPERATOR_METRICS_PORT", defaults.metrics_port)),
            metrics_address=environ.get(
                "APPLIANCE_OPERATOR_METRICS_ADDRESS", defaults.metrics_address
            ),
            resync_seconds=number("APPLIANCE_OPERATOR_RESYNC_SECONDS", defaults.resync_seconds),
        )


_config: Config | None = None


def set_config(config: Config) -> None:
    """Used by ``python -m appliance_operator`` before kopf starts."""
    global _config  # noqa: PLW0603 - one operator per process
    _config = config


@dataclass
class _Runtime:
    config: Config
    controller: Controller
    queue: WorkQueue[JobKey]
    metrics: Metrics
    pods: Any  # kopf.Index[JobKey, PodView]
    jobs: Any  # kopf.Index[JobKey, JobRecord]
    executor: ThreadPoolExecutor
    pools: PoolController
    pool_queue: WorkQueue[PoolKey]
    pool_pods: Any  # kopf.Index[PoolKey, PoolPodView]
    pool_bodies: Any  # kopf.Index[PoolKey, dict]
    tasks: list[asyncio.Task[None]] = field(default_factory=list)  # end when queues shut
    periodic: list[asyncio.Task[None]] = field(default_factory=list)  # cancelled at clean-up
    #: uids of objects that no longer exist but that kopf's indexes still hold (a watch
    #: re-listed after 410 Gone delivers no DELETED for what vanished meanwhile)
    tombstones: set[str] = field(default_factory=set)
    metrics_server: Any = None


_runtime: _Runtime | None = None


def _serves(namespace: str | None) -> bool:
    """Whether objects of this namespace are the operator's (it may watch more)."""
    return _config is None or _config.scope.serves(namespace)


# -- settings --------------------------------------------------------------------------------


class _EssenceStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's annotations diff-base storage, with the same essence built from less.

    kopf builds every watched object's essence on every watch event (even with no handler
    that reads it), starting with a deep copy of the whole body, then dropping its metadata
    and status: for a pod, most of what was copied (managedFields, status). This hands it the
    fields it keeps (spec and the rest, labels, annotations, and what its keys look at), so
    the copy on the event loop is only of those; the essence is the same."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        if extra_fields:  # a handler of more fields (status ones): kopf's own way
            return super().build(body=body, extra_fields=extra_fields)
        meta = body.get("metadata") or {}
        light = {k: v for k, v in body.items() if k not in ("metadata", "status")}
        light["metadata"] = {
            k: meta[k] for k in ("labels", "annotations", "ownerReferences") if k in meta
        }
        return super().build(body=kopf.Body(cast(kopf.RawBody, light)), extra_fields=extra_fields)


def configure_settings(settings: kopf.OperatorSettings) -> None:
    """kopf settings, each chosen on purpose."""
    # One replica (the Deployment uses strategy Recreate): no peering objects to watch and
    # patch. Two operators at once would still not duplicate pods (deterministic names).
    settings.peering.standalone = True
    # kopf's own k8s Events (handler retries/failures) only when something is wrong; the
    # operator posts its own Events on phase transitions.
    settings.posting.level = logging.WARNING
    # Ask the API server to end each watch after 5 min and give up on a silent connection
    # a bit later: a stale watch behind a dead load balancer is noticed and re-listed.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    # Watch only the pods the operator made (server-side filter): kopf never sees, caches
    # or memorises any other pod of the cluster.
    settings.watching.label_selectors["v1", "pods"] = MANAGED_SELECTOR
    # Event and index handlers keep no state on the objects, so kopf writes nothing to the
    # jobs (no progress, no last-handled-configuration). The storages matter only to
    # on.create/update/resume handlers, which this operator does not use; should one be added,
    # its annotations would be under appliance.dev/ rather than kopf's default prefix.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="appliance.dev")
    settings.persistence.diffbase_storage = _EssenceStorage(
        prefix="appliance.dev", key="last-handled-configuration"
    )
    # API errors in kopf's own calls (watches): retry quickly first, then back off.
    settings.networking.error_backoffs = [0.5, 1, 2, 5, 10]


# -- indexes: the operator's cache -----------------------------------------------------------


# Each index is a pure function, registered with kopf through an ``async`` wrapper of the
# same id: kopf runs a plain ``def`` handler in a thread of its executor, a hop per watch event
# (two per pod event: two indexes watch pods) that the event waits for in kopf's per-object
# queue, whole body and all, behind the reconcile threads' work. On the event loop each takes
# microseconds, so fewer watch events (~20 KiB each as parsed JSON) wait at once.


def worker_pods(body: kopf.Body, namespace: str | None, **_: Any) -> dict[JobKey, PodView]:
    view = pod_view(body) if _serves(namespace) else None
    return {} if view is None else {(namespace or "", view.job_name): view}


_JOB_META = (
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "labels",
)  # not annotations: kubectl's last-applied-configuration would be a second copy of the env


class JobRecord(Mapping[str, Any]):
    """An ExecuteJob as the cache keeps it: the parts the reconcile reads, as compact JSON
    text, plus the few fields the loop looks at without decoding it.

    A job's spec and status as nested dicts took ~15 KiB of the operator's memory per job;
    as JSON text ~2.5 KiB (1,000 jobs: ~12 MiB less). A reconcile decodes it once
    (:meth:`body`, tens of microseconds); reading it as a mapping decodes it each time.
    """

    __slots__ = ("_json", "created", "deleting", "finished_ttl", "phase", "uid")

    def __init__(self, record: Mapping[str, Any]) -> None:
        meta = record.get("metadata") or {}
        self.uid = str(meta.get("uid") or "")
        self.created = str(meta.get("creationTimestamp") or "")
        self.deleting = bool(meta.get("deletionTimestamp"))
        self.phase = str((record.get("status") or {}).get("phase") or "")
        self.finished_ttl = (record.get("spec") or {}).get("ttlSecondsAfterFinished") is not None
        self._json = json.dumps(record, separators=(",", ":"))

    def body(self) -> dict[str, Any]:
        """A fresh copy of the job as a dict (the reconcile's to keep)."""
        decoded: dict[str, Any] = json.loads(self._json)
        return decoded

    def __getitem__(self, key: str) -> Any:
        return self.body()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.body())

    def __len__(self) -> int:
        return len(self.body())


def execute_jobs(
    body: kopf.Body, namespace: str | None, name: str, **_: Any
) -> dict[JobKey, JobRecord]:
    if not _serves(namespace):
        return {}
    meta = body.get("metadata", {})
    metadata: dict[str, Any] = {k: meta[k] for k in _JOB_META if k in meta}
    awaiting = (meta.get("annotations") or {}).get(AWAITING_VALUES_ANNOTATION)
    if awaiting is not None:  # the only annotation the operator reads (docs/security.md)
        metadata["annotations"] = {AWAITING_VALUES_ANNOTATION: awaiting}
    record = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": metadata,
        "spec": body.get("spec", {}),
    }
    if body.get("status"):
        record["status"] = body["status"]
    # Encoded at once: the record shares nothing with kopf's body (no deep copy needed).
    return {(namespace or "", name): JobRecord(record)}


def pool_pods(body: kopf.Body, namespace: str | None, **_: Any) -> dict[PoolKey, PoolPodView]:
    view = pool_pod_view(body) if _serves(namespace) else None
    return {} if view is None else {(namespace or "", view.pool): view}


def worker_pools(
    body: kopf.Body, namespace: str | None, name: str, **_: Any
) -> dict[PoolKey, dict[str, Any]]:
    if not _serves(namespace):
        return {}
    meta = body.get("metadata", {})
    record = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {k: copy.deepcopy(meta[k]) for k in _JOB_META if k in meta},
        "spec": copy.deepcopy(dict(body.get("spec", {}))),
    }
    if body.get("status"):
        record["status"] = copy.deepcopy(dict(body["status"]))
    return {(namespace or "", name): record}


@kopf.index("v1", "pods", labels=MANAGED, id="worker_pods")
async def _index_worker_pods(
    body: kopf.Body, namespace: str | None, **_: Any
) -> dict[JobKey, PodView]:
    return worker_pods(body, namespace)


@kopf.index(GROUP, VERSION, PLURAL, id="execute_jobs")
async def _index_execute_jobs(
    body: kopf.Body, namespace: str | None, name: str, **_: Any
) -> dict[JobKey, JobRecord]:
    return execute_jobs(body, namespace, name)


@kopf.index("v1", "pods", labels=POOL_PODS, id="pool_pods")
async def _index_pool_pods(
    body: kopf.Body, namespace: str | None, **_: Any
) -> dict[PoolKey, PoolPodView]:
    return pool_pods(body, namespace)


@kopf.index(GROUP, VERSION, POOL_PLURAL, id="worker_pools")
async def _index_worker_pools(
    body: kopf.Body, namespace: str | None, name: str, **_: Any
) -> dict[PoolKey, dict[str, Any]]:
    return worker_pools(body, namespace, name)


# -- events: enqueue the job -----------------------------------------------------------------


def _enqueue(key: JobKey) -> None:
    if _runtime is not None:
        _runtime.queue.add(key)
        _runtime.metrics.queue_depth.set(len(_runtime.queue))


@kopf.on.event(GROUP, VERSION, PLURAL)
async def job_event(namespace: str | None, name: str, **_: Any) -> None:
    if _serves(namespace):
        _enqueue((namespace or "", name))  # not blocking: a set and a deque


@kopf.on.event("v1", "pods", labels=MANAGED)
async def pod_event(namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
    if not _serves(namespace):
        return
    job_name = labels.get(JOB_NAME_LABEL)
    if job_name:
        _enqueue((namespace or "", job_name))
    pool = labels.get(POOL_NAME_LABEL)
    if pool and _runtime is not None:
        _runtime.pool_queue.add((namespace or "", pool))  # its idle count may have changed


@kopf.on.event(GROUP, VERSION, POOL_PLURAL)
async def pool_event(namespace: str | None, name: str, **_: Any) -> None:
    if _runtime is not None and _serves(namespace):
        _runtime.pool_queue.add((namespace or "", name))


# -- lifecycle -------------------------------------------------------------------------------


def _snapshot(rt: _Runtime, key: JobKey) -> tuple[dict[str, Any] | None, list[PodView]]:
    """The job and its pods, copied out of the indexes (on the event loop)."""
    gone = rt.tombstones
    records: list[JobRecord] = [r for r in rt.jobs.get(key, ()) if r.uid not in gone]
    # Two objects under one name only while a deleted job's DELETED event is in flight.
    live = [r for r in records if not r.deleting] or records
    record = max(live, key=lambda r: r.created, default=None)
    body = None if record is None else record.body()
    return body, [p for p in rt.pods.get(key, ()) if p.uid not in gone]


def _pool_snapshot(rt: _Runtime, key: PoolKey) -> PoolSnapshot:
    """A pool and its pods, copied out of the indexes (on the event loop)."""
    bodies = [b for b in rt.pool_bodies.get(key, ()) if not b["metadata"].get("deletionTimestamp")]
    body = max(bodies, key=lambda b: b["metadata"].get("creationTimestamp", ""), default=None)
    return PoolSnapshot(body=body, pods=tuple(rt.pool_pods.get(key, ())))


async def _pool_worker(rt: _Runtime) -> None:
    loop = asyncio.get_running_loop()
    while True:
        try:
            key = await rt.pool_queue.get()
        except QueueShutDownError:
            return
        try:
            snap = _pool_snapshot(rt, key)
            pods = [p for p in snap.pods if p.uid not in rt.tombstones]
            delay = await loop.run_in_executor(
                rt.executor, rt.pools.reconcile, key, snap.body, pods
            )
            if snap.body is None:
                rt.pool_queue.forget(key)
            elif delay is not None:
                rt.pool_queue.add_after(key, delay)
        except Exception:
            logger.exception("[%s/%s] pool reconcile failed; retrying in 2s", *key)
            rt.pool_queue.add_after(key, 2.0)
        finally:
            rt.pool_queue.done(key)


async def _worker(rt: _Runtime) -> None:
    loop = asyncio.get_running_loop()
    while True:
        try:
            key = await rt.queue.get()
        except QueueShutDownError:
            return
        rt.metrics.queue_depth.set(len(rt.queue))
        try:
            body, pods = _snapshot(rt, key)
            pool_name = ((body or {}).get("spec") or {}).get("pool")
            pool = _pool_snapshot(rt, (key[0], pool_name)) if pool_name else None
            delay = await loop.run_in_executor(
                rt.executor, rt.controller.reconcile, key, body, pods, pool
            )
            if body is None:
                rt.queue.forget(key)
            elif delay is not None:
                rt.queue.add_after(key, delay)
        except ApiError as exc:
            delay = rt.controller.retry_delay(key)
            logger.warning("[%s/%s] reconcile failed (%s); retrying in %.1fs", *key, exc, delay)
            rt.queue.add_after(key, delay)
        except Exception:
            delay = rt.controller.retry_delay(key)
            logger.exception("[%s/%s] reconcile crashed; retrying in %.1fs", *key, delay)
            rt.queue.add_after(key, max(delay, 5.0))
        finally:
            rt.queue.done(key)


def _settled(rt: _Runtime, key: JobKey) -> bool:
    """A finished job without a TTL and without pods to release: nothing about it can change
    by time alone, so the resync skips it (its pods' events still reconcile it)."""
    records: list[JobRecord] = list(rt.jobs.get(key, ()))
    if len(records) != 1:
        return False
    record = records[0]
    if record.phase not in ("Succeeded", "Failed") or record.finished_ttl:
        return False
    return not any(p.tracked or p.active for p in rt.pods.get(key, ()))


async def _resync(rt: _Runtime) -> None:
    """Safety net: every job that can still change is reconciled about every
    ``resync_seconds``, spread over the period (no burst); every ``DRIFT_EVERY`` periods the
    indexes are checked against the API server."""
    period = rt.config.resync_seconds
    rounds = 0
    while True:
        await asyncio.sleep(period)
        rounds += 1
        if rounds % DRIFT_EVERY == 0:
            try:
                await _check_drift(rt)
            except ApiError as exc:
                logger.warning("drift check failed (%s); next period", exc)
        for key in list(rt.jobs):
            if not _settled(rt, key):
                rt.queue.add_after(key, random.uniform(0, period))


def prune_tombstones(rt: _Runtime) -> None:
    """Forget the tombstones of uids no index holds any more (a later watch event or re-list
    dropped them): the set stays as small as the ghosts still cached, not all there were."""
    indexed: set[str] = set()
    for key in list(rt.jobs):
        indexed.update(record.uid for record in rt.jobs.get(key, ()))
    for key in list(rt.pool_bodies):
        indexed.update(str(body["metadata"].get("uid")) for body in rt.pool_bodies.get(key, ()))
    for views in (rt.pods, rt.pool_pods):
        for key in list(views):
            indexed.update(view.uid for view in views.get(key, ()))
    rt.tombstones.intersection_update(indexed)


async def _check_drift(rt: _Runtime) -> None:
    """Find objects the indexes hold that are gone from the API server, tombstone them and
    reconcile their jobs. Only objects indexed *before* the list started are judged, so one
    created meanwhile is never mistaken for a ghost."""
    prune_tombstones(rt)
    before: dict[str, tuple[dict[str, JobKey], dict[str, JobKey]]] = {}
    for key in list(rt.jobs):
        pods, jobs = before.setdefault(key[0], ({}, {}))
        for record in rt.jobs.get(key, ()):
            jobs[record.uid] = key  # not record["metadata"]: that decodes the whole job
    for key in list(rt.pods):
        pods, jobs = before.setdefault(key[0], ({}, {}))
        for view in rt.pods.get(key, ()):
            pods[view.uid] = key
    loop = asyncio.get_running_loop()
    api = rt.controller.api
    for namespace, (pods, jobs) in before.items():
        listed_pods = await loop.run_in_executor(rt.executor, api.list_uids, namespace, "pods")
        listed_jobs = await loop.run_in_executor(
            rt.executor, api.list_uids, namespace, "executejobs"
        )
        for uids, listed in ((pods, listed_pods), (jobs, listed_jobs)):
            for uid, key in uids.items():
                if uid not in listed and uid not in rt.tombstones:
                    logger.warning(
                        "[%s/%s] %s is gone but was still cached: forgetting it", *key, uid
                    )
                    rt.tombstones.add(uid)
                    rt.queue.add(key)


def _api_client() -> Any:
    from kubernetes import client, config

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))  # type: ignore[no-untyped-call]
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = 32  # reconcile workers + parallel pod creates
    api_client = client.ApiClient(configuration)
    api_client.user_agent = "appliance-operator"  # the field manager of its writes
    return api_client


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **kwargs: Any) -> None:
    """Configure kopf, start the metrics endpoint, the reconcile workers and the resync."""
    global _runtime  # noqa: PLW0603 - one operator per process
    configure_settings(settings)
    config = _config or Config.from_env()
    metrics = Metrics()
    api_client = await asyncio.to_thread(_api_client)
    kube = KubeApi(api_client, metrics)
    pools = PoolController(kube, metrics)
    controller = Controller(kube, metrics, pools=pools, background_events=True)
    rt = _Runtime(
        config=config,
        controller=controller,
        queue=WorkQueue(),
        metrics=metrics,
        pods=kwargs["worker_pods"],  # the indexes, by their function names
        jobs=kwargs["execute_jobs"],
        executor=ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="reconcile"),
        pools=pools,
        pool_queue=WorkQueue(),
        pool_pods=kwargs["pool_pods"],
        pool_bodies=kwargs["worker_pools"],
    )
    if config.metrics_port:
        from prometheus_client import start_http_server

        rt.metrics_server = start_http_server(
            config.metrics_port, addr=config.metrics_address, registry=metrics.registry
        )
        logger.info("metrics on http://%s:%d/metrics", config.metrics_address, config.metrics_port)
    rt.tasks = [asyncio.create_task(_worker(rt)) for _ in range(config.workers)]
    rt.tasks.append(asyncio.create_task(_pool_worker(rt)))
    rt.periodic.append(asyncio.create_task(_resync(rt)))
    _runtime = rt
    logger.info("appliance-operator started: %d reconcile workers", config.workers)


@kopf.on.probe(id="reconcile_workers")
def probe(**_: Any) -> dict[str, int]:
    """Part of the liveness answer; fails (HTTP 500) when a worker task died."""
    rt = _runtime
    if rt is None:
        return {"workers": 0}
    alive = sum(1 for t in rt.tasks if not t.done())
    if alive < len(rt.tasks):
        raise RuntimeError(f"{len(rt.tasks) - alive} reconcile task(s) died")
    return {"workers": alive - 1, "queued": len(rt.queue), "processing": rt.queue.processing}


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    global _runtime
    rt, _runtime = _runtime, None
    if rt is None:
        return
    rt.queue.shutdown()
    rt.pool_queue.shutdown()
    for task in rt.periodic:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*rt.tasks, *rt.periodic, return_exceptions=True)
    rt.executor.shutdown(wait=False, cancel_futures=True)
    rt.controller.close()
    if rt.metrics_server is not None:
        server, _thread = rt.metrics_server
        server.shutdown()
