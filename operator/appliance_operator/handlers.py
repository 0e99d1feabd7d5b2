"""The kopf handlers and settings: wiring only, between kopf's watches and the runtime.

* Four kopf *indexes* are the operator's cache (:mod:`appliance_operator.runtime.cache`
  holds their pure parts): worker pods by job, jobs by name, pool pods by pool, pools by name.
* Three kopf *event* handlers (any event on a job, on a pod the operator made, on a pool) put
  the object's key on a coalescing work queue: a burst of events is one reconcile.
* Start-up builds the :class:`~appliance_operator.runtime.state.Runtime` (worker tasks,
  resync, metrics endpoint) and keeps it in kopf's ``memo``; clean-up closes it; the liveness
  probe asks it whether every worker task is alive.

Only event and index handlers are used, so kopf writes nothing to the jobs: no finalizer, no
progress or last-handled-configuration annotations. (A ``kopf.timer`` would put a finalizer
on every job, so the periodic resync is one operator-wide task instead: ``runtime/resync.py``.)

Run with ``python -m appliance_operator`` or ``kopf run -m appliance_operator.handlers``
(configured then by the ``APPLIANCE_OPERATOR_*`` variables of
:class:`~appliance_operator.runtime.config.Config`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, cast

import kopf

from appliance_operator.job.controller import JobKey
from appliance_operator.observe import PodView
from appliance_operator.pool.controller import PoolKey
from appliance_operator.pool.plan import PoolPodView
from appliance_operator.runtime import state
from appliance_operator.runtime.cache import (
    EVERY_NAMESPACE,
    JobRecord,
    Record,
    execute_jobs,
    pool_pods,
    worker_pods,
    worker_pools,
)
from appliance_operator.scope import NamespaceScope
from cerebras_appliance.contract.api import PLURAL, POOL_PLURAL
from cerebras_appliance.contract.names import (
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
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = _EssenceStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # API errors in kopf's own calls (watches): retry quickly first, then back off.
    settings.networking.error_backoffs = [0.5, 1, 2, 5, 10]


# -- indexes: the operator's cache -----------------------------------------------------------


# Each index is a pure function (runtime/cache.py), registered with kopf through an ``async``
# wrapper of the same id: kopf runs a plain ``def`` handler in a thread of its executor, a hop
# per watch event (two per pod event: two indexes watch pods) that the event waits for in
# kopf's per-object queue, whole body and all, behind the reconcile threads' work. On the
# event loop each takes microseconds, so fewer watch events (~20 KiB each as parsed JSON) wait
# at once. kopf passes each index to the start-up handler by its id.


def _scope(memo: Mapping[Any, Any]) -> NamespaceScope:
    runtime = state.runtime_of(memo)
    return EVERY_NAMESPACE if runtime is None else runtime.config.scope


@kopf.index("v1", "pods", labels=MANAGED, id="worker_pods")
async def _index_worker_pods(
    body: kopf.Body, namespace: str | None, memo: kopf.Memo, **_: Any
) -> dict[JobKey, PodView]:
    return worker_pods(body, namespace, _scope(memo))


@kopf.index(GROUP, VERSION, PLURAL, id="execute_jobs")
async def _index_execute_jobs(
    body: kopf.Body, namespace: str | None, name: str, memo: kopf.Memo, **_: Any
) -> dict[JobKey, JobRecord]:
    return execute_jobs(body, namespace, name, _scope(memo))


@kopf.index("v1", "pods", labels=POOL_PODS, id="pool_pods")
async def _index_pool_pods(
    body: kopf.Body, namespace: str | None, memo: kopf.Memo, **_: Any
) -> dict[PoolKey, PoolPodView]:
    return pool_pods(body, namespace, _scope(memo))


@kopf.index(GROUP, VERSION, POOL_PLURAL, id="worker_pools")
async def _index_worker_pools(
    body: kopf.Body, namespace: str | None, name: str, memo: kopf.Memo, **_: Any
) -> dict[PoolKey, Record]:
    return worker_pools(body, namespace, name, _scope(memo))


# -- events: enqueue the job or pool ---------------------------------------------------------


@kopf.on.event(GROUP, VERSION, PLURAL)
async def job_event(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    runtime = state.runtime_of(memo)
    if runtime is not None and runtime.serves(namespace):
        runtime.enqueue_job((namespace or "", name))


@kopf.on.event("v1", "pods", labels=MANAGED)
async def pod_event(
    namespace: str | None, labels: Mapping[str, str], memo: kopf.Memo, **_: Any
) -> None:
    runtime = state.runtime_of(memo)
    if runtime is None or not runtime.serves(namespace):
        return
    job_name = labels.get(JOB_NAME_LABEL)
    if job_name:
        runtime.enqueue_job((namespace or "", job_name))
    pool = labels.get(POOL_NAME_LABEL)
    if pool:
        runtime.enqueue_pool((namespace or "", pool))  # its idle count may have changed


@kopf.on.event(GROUP, VERSION, POOL_PLURAL)
async def pool_event(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    runtime = state.runtime_of(memo)
    if runtime is not None and runtime.serves(namespace):
        runtime.enqueue_pool((namespace or "", name))


# -- lifecycle -------------------------------------------------------------------------------


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    """Configure kopf, start the metrics endpoint, the reconcile workers and the resync."""
    configure_settings(settings)
    config = state.config_of(memo)
    memo[state.RUNTIME] = await state.start(
        config,
        jobs=kwargs["execute_jobs"],  # the indexes, by their ids
        pods=kwargs["worker_pods"],
        pools=kwargs["worker_pools"],
        pool_pods=kwargs["pool_pods"],
    )
    logger.info("appliance-operator started: %d reconcile workers", config.workers)


@kopf.on.probe(id="reconcile_workers")
def probe(memo: kopf.Memo, **_: Any) -> dict[str, int]:
    """Part of the liveness answer; fails (HTTP 500) when a worker task died."""
    runtime = state.runtime_of(memo)
    return {"workers": 0} if runtime is None else runtime.health()


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    runtime = state.runtime_of(memo)
    memo.pop(state.RUNTIME, None)
    if runtime is not None:
        await runtime.close()
