"""The operator's cache: what kopf's indexes keep of each object, and the snapshots of it.

Four kopf *indexes* are the cache: worker pods by job, jobs by name, pool pods by pool and
pools by name. kopf fills them from its list+watch of each resource and runs no other handler
until every initial list is in, so the first reconcile after a (re)start sees every object.

The functions here are the indexes' pure parts (``handlers.py`` registers them with kopf);
:class:`Caches` reads the filled indexes for the worker loop and the resync.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from appliance_operator.job.controller import JobKey
from appliance_operator.observe import PodView, pod_view
from appliance_operator.pool.controller import PoolKey, PoolSnapshot
from appliance_operator.pool.plan import PoolPodView, pool_pod_view
from appliance_operator.scope import NamespaceScope
from cerebras_appliance.contract.api import TERMINAL_PHASES
from cerebras_appliance.contract.names import AWAITING_VALUES_ANNOTATION

#: The default scope: every namespace is served (``--namespace`` not given).
EVERY_NAMESPACE = NamespaceScope()

#: The metadata a record keeps. Not annotations: kubectl's last-applied-configuration would
#: be a second copy of a job's env (the few the operator reads are kept by name).
KEPT_METADATA = (
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "labels",
)


class Record(Mapping[str, Any]):
    """An object as the cache keeps it: the parts a reconcile reads, as compact JSON text,
    plus the few fields the loops look at without decoding it.

    A job's spec and status as nested dicts took ~15 KiB of the operator's memory per job;
    as JSON text ~2.5 KiB (1,000 jobs: ~12 MiB less). A reconcile decodes it once
    (:meth:`body`, tens of microseconds): a fresh copy that shares nothing with kopf's body or
    the cache; reading the record as a mapping decodes it each time.
    """

    __slots__ = ("_json", "created", "deleting", "uid")

    def __init__(self, record: Mapping[str, Any]) -> None:
        meta = record.get("metadata") or {}
        self.uid = str(meta.get("uid") or "")
        self.created = str(meta.get("creationTimestamp") or "")
        self.deleting = bool(meta.get("deletionTimestamp"))
        self._json = json.dumps(record, separators=(",", ":"))

    def body(self) -> dict[str, Any]:
        """A fresh copy of the object as a dict (the reconcile's to keep)."""
        decoded: dict[str, Any] = json.loads(self._json)
        return decoded

    def __getitem__(self, key: str) -> Any:
        return self.body()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.body())

    def __len__(self) -> int:
        return len(self.body())


class JobRecord(Record):
    """An ExecuteJob's record, with what the resync asks of it (:meth:`Caches.settled`)."""

    __slots__ = ("finished_ttl", "phase")

    def __init__(self, record: Mapping[str, Any]) -> None:
        super().__init__(record)
        self.phase = str((record.get("status") or {}).get("phase") or "")
        self.finished_ttl = (record.get("spec") or {}).get("ttlSecondsAfterFinished") is not None


def object_record(body: Mapping[str, Any], annotations: Iterable[str] = ()) -> dict[str, Any]:
    """The parts of a watched custom object the cache keeps: type, :data:`KEPT_METADATA`, the
    named ``annotations`` when present, spec and status. It shares its values with ``body``:
    the caller encodes it (:class:`Record`) before kopf's body changes."""
    meta = body.get("metadata") or {}
    metadata: dict[str, Any] = {k: meta[k] for k in KEPT_METADATA if k in meta}
    present = meta.get("annotations") or {}
    kept = {name: present[name] for name in annotations if present.get(name) is not None}
    if kept:
        metadata["annotations"] = kept
    record = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": metadata,
        "spec": body.get("spec", {}),
    }
    if body.get("status"):
        record["status"] = body["status"]
    return record


# -- the indexes' pure parts (each returns {} for an object of a namespace not served) -------


def worker_pods(
    body: Mapping[str, Any], namespace: str | None, scope: NamespaceScope = EVERY_NAMESPACE
) -> dict[JobKey, PodView]:
    view = pod_view(body) if scope.serves(namespace) else None
    return {} if view is None else {(namespace or "", view.job_name): view}


def execute_jobs(
    body: Mapping[str, Any],
    namespace: str | None,
    name: str,
    scope: NamespaceScope = EVERY_NAMESPACE,
) -> dict[JobKey, JobRecord]:
    if not scope.serves(namespace):
        return {}
    # The awaiting annotation is the only one the operator reads (docs/security.md).
    return {(namespace or "", name): JobRecord(object_record(body, [AWAITING_VALUES_ANNOTATION]))}


def pool_pods(
    body: Mapping[str, Any], namespace: str | None, scope: NamespaceScope = EVERY_NAMESPACE
) -> dict[PoolKey, PoolPodView]:
    view = pool_pod_view(body) if scope.serves(namespace) else None
    return {} if view is None else {(namespace or "", view.pool): view}


def worker_pools(
    body: Mapping[str, Any],
    namespace: str | None,
    name: str,
    scope: NamespaceScope = EVERY_NAMESPACE,
) -> dict[PoolKey, Record]:
    if not scope.serves(namespace):
        return {}
    return {(namespace or "", name): Record(object_record(body))}


# -- reading the filled indexes ---------------------------------------------------------------

R = TypeVar("R", bound=Record)


def newest(records: Iterable[R], gone: Collection[str], *, keep_deleting: bool) -> R | None:
    """The object a name stands for now: the newest of its records not in ``gone``, among
    those not being deleted, or (``keep_deleting``) among all when every one is. Two objects
    share a name only while a deleted one's DELETED event is in flight."""
    present = [r for r in records if r.uid not in gone]
    live = [r for r in present if not r.deleting]
    if keep_deleting:
        live = live or present
    return max(live, key=lambda r: r.created, default=None)


@dataclass
class Caches:
    """kopf's four indexes (read-only mappings of key to values, filled by kopf) and the
    tombstones: uids of objects that no longer exist but that the indexes still hold (a watch
    re-listed after 410 Gone delivers no DELETED for what vanished meanwhile)."""

    jobs: Mapping[JobKey, Collection[JobRecord]]
    pods: Mapping[JobKey, Collection[PodView]]
    pools: Mapping[PoolKey, Collection[Record]]
    pool_pods: Mapping[PoolKey, Collection[PoolPodView]]
    tombstones: set[str] = field(default_factory=set)

    def job(self, key: JobKey) -> tuple[dict[str, Any] | None, list[PodView]]:
        """The job (None: gone) and its pods, copied out (on the event loop). A job being
        deleted is still reconciled: its pods' finalizers are released."""
        gone = self.tombstones
        record = newest(self.jobs.get(key, ()), gone, keep_deleting=True)
        body = None if record is None else record.body()
        return body, [p for p in self.pods.get(key, ()) if p.uid not in gone]

    def pool(self, key: PoolKey) -> PoolSnapshot:
        """A pool (None: gone or being deleted) and its pods as indexed, copied out."""
        record = newest(self.pools.get(key, ()), self.tombstones, keep_deleting=False)
        body = None if record is None else record.body()
        return PoolSnapshot(body=body, pods=tuple(self.pool_pods.get(key, ())))

    def settled(self, key: JobKey) -> bool:
        """A finished job without a TTL and without pods to release: nothing about it can
        change by time alone, so the resync skips it (its pods' events still reconcile it)."""
        records = list(self.jobs.get(key, ()))
        if len(records) != 1:
            return False
        record = records[0]
        if record.phase not in TERMINAL_PHASES or record.finished_ttl:
            return False
        return not any(p.tracked or p.active for p in self.pods.get(key, ()))

    def indexed_uids(self) -> set[str]:
        """The uid of every object some index holds now."""
        uids: set[str] = set()
        for records in (self.jobs, self.pools):
            for key in list(records):
                uids.update(record.uid for record in records.get(key, ()))
        for views in (self.pods, self.pool_pods):
            for key in list(views):
                uids.update(view.uid for view in views.get(key, ()))
        return uids
