"""Warm pools, the pure part: what a pool's pods are, how many to start or remove, which idle
pods a job claims (like :mod:`appliance_operator.job.plan`, no API call here).

* A pool pod is idle (label ``appliance.dev/pool-state=idle``, owned by the WorkerPool) until
  a job claims it: one merge patch with the observed ``resourceVersion`` as precondition
  (:func:`appliance_operator.desired.claim_patch`) makes it the job's worker, so a pod is
  claimed once, by one job, whatever races. It never returns to the pool.
* The pool counts only its idle pods toward ``spec.replicas``: every claim is refilled in the
  background; a job never waits for that (what it cannot claim starts cold at once).
* A job naming a pool that does not exist, or whose image or pod template is not the pool's
  (an idle pod already runs with the pool's), gets a ``PoolClaim=False`` condition saying
  so, and starts all its workers cold.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from appliance_operator.desired import (
    CLAIMED,
    IDLE,
    WorkerId,
    controller_uid,
    pool_selector,
)
from cerebras_appliance.contract.api import Condition, ExecuteJobSpec, WorkerPool, WorkerPoolStatus
from cerebras_appliance.contract.names import (
    CLAIM_CONFIRMED_ANNOTATION,
    CLAIMED_FOR_ANNOTATION,
    CONTAINER_NAME,
    JOB_NAME_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    POOL_NAME_LABEL,
    POOL_SPEC_HASH_ANNOTATION,
    POOL_STATE_LABEL,
)
from cerebras_appliance.contract.status import stamp_transition

#: The job condition about its pool.
POOL_CLAIM = "PoolClaim"
#: The pool's conditions: Ready (all idle workers warm), WarmStartFailed (an idle pod died).
POOL_READY = "Ready"
WARM_START_FAILED = "WarmStartFailed"
#: False while the pool's claims cannot be delivered (its idle pods are not claimed then).
CLAIMS_DELIVERED = "ClaimsDelivered"
#: True while the API server refuses the pool's idle pods (as a ReplicaSet's).
REPLICA_FAILURE = "ReplicaFailure"


#: The shape of the idle pods this operator makes (``desired.pool_pod``) beyond what the
#: pool's spec says: part of :func:`pool_spec_hash`, so when it changes the idle pods an older
#: operator made are replaced, never claimed. 2 (issue 23): the state volume has room for the
#: code a claim may bring (an older pod's 1 MiB cannot hold it: its claim would fail).
POOL_POD_LAYOUT = 2


def pool_spec_hash(pool: WorkerPool) -> str:
    """The hash of everything an idle pod is built from (``spec`` but ``replicas``, and the
    operator's :data:`POOL_POD_LAYOUT`)."""
    spec = pool.spec.model_dump(mode="json", by_alias=True, exclude={"replicas"})
    if POOL_POD_LAYOUT > 1:  # layout 1 hashed the spec alone
        spec = {"layout": POOL_POD_LAYOUT, "spec": spec}
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class PoolPodView:
    name: str
    uid: str
    resource_version: str
    pool: str
    state: str  # idle | claimed
    phase: str
    ready: bool = False
    ip: str = ""
    terminating: bool = False
    created: str = ""
    image: str = ""
    reason: str = ""
    confirmed: bool = False  # claimed, and its worker accepted the job's snapshot
    spec_hash: str = ""  # the pool spec it was made from (POOL_SPEC_HASH_ANNOTATION)

    @property
    def active(self) -> bool:
        return self.phase in ("Pending", "Running") and not self.terminating

    @property
    def claimable(self) -> bool:
        """Idle, warm (Ready: imports done, listening), reachable."""
        return self.state == IDLE and self.active and self.ready and bool(self.ip)


def pool_pod_view(pod: Mapping[str, Any]) -> PoolPodView | None:
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    pool = labels.get(POOL_NAME_LABEL)
    if labels.get(MANAGED_BY_LABEL) != MANAGED_BY or not pool:
        return None
    state = CLAIMED if labels.get(JOB_NAME_LABEL) else str(labels.get(POOL_STATE_LABEL) or IDLE)
    status = pod.get("status") or {}
    phase = str(status.get("phase") or "Pending")
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    image = next(
        (
            str(c.get("image") or "")
            for c in (pod.get("spec") or {}).get("containers") or []
            if c.get("name") == CONTAINER_NAME
        ),
        "",
    )
    reason = str(status.get("reason") or "")
    annotations = meta.get("annotations") or {}
    owner = controller_uid(pod)
    for cs in status.get("containerStatuses") or []:
        if cs.get("name") == CONTAINER_NAME:
            term = (cs.get("state") or {}).get("terminated") or {}
            if term:
                reason = f"{term.get('reason') or 'Terminated'} (exit code {term.get('exitCode')})"
    return PoolPodView(
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
        resource_version=str(meta.get("resourceVersion") or ""),
        pool=str(pool),
        state=state,
        phase=phase,
        ready=ready and phase == "Running",
        ip=str(status.get("podIP") or ""),
        terminating=meta.get("deletionTimestamp") is not None,
        created=str(meta.get("creationTimestamp") or ""),
        image=image,
        reason=reason,
        confirmed=bool(annotations.get(CLAIM_CONFIRMED_ANNOTATION))
        and owner is not None
        and annotations.get(CLAIMED_FOR_ANNOTATION) == owner,
        spec_hash=str(annotations.get(POOL_SPEC_HASH_ANNOTATION) or ""),
    )


@dataclass(frozen=True)
class PoolPlan:
    create: int = 0
    delete: tuple[PoolPodView, ...] = ()
    status: WorkerPoolStatus | None = None  # None: unchanged


def _condition(type_: str, ok: bool, reason: str, message: str) -> Condition:
    return Condition(type=type_, status="True" if ok else "False", reason=reason, message=message)


def plan_pool(
    pool: WorkerPool,
    pods: Sequence[PoolPodView],
    previous: WorkerPoolStatus | None,
    *,
    generation: int | None,
    now: str,
    hold_refill: bool = False,
    delivery: Condition | None = None,
    create_failure: Condition | None = None,
) -> PoolPlan:
    """Keep ``spec.replicas`` idle pods: start the missing ones, remove the surplus (those
    not yet warm first, then the newest) and idle pods that ended (a failed import, a node
    lost: an idle pod holds no job's value, so nothing is lost with it). Idle pods made from
    another version of the spec (their :data:`POOL_SPEC_HASH_ANNOTATION`) are removed and
    replaced; claimed pods are the jobs' and never touched.

    ``delivery``: the :data:`CLAIMS_DELIVERED` condition, when there is one to show;
    ``create_failure``: :data:`REPLICA_FAILURE`, while idle pods cannot be created.

    ``hold_refill``: a claim of this pool is being delivered; the missing pods are started
    after it, so that no pod start competes with it for the nodes' CPU and the API server
    (a job's cold remainder is the job's own, never held)."""
    name = pool.metadata.name or ""
    current = pool_spec_hash(pool)
    stale = [p for p in pods if p.state == IDLE and p.active and p.spec_hash != current]
    idle = [p for p in pods if p.state == IDLE and p.active and p.spec_hash == current]
    ended = [p for p in pods if p.state == IDLE and not p.active and not p.terminating]
    claimed = [p for p in pods if p.state == CLAIMED and p.active]
    want = pool.spec.replicas
    # Not yet warm first, then the newest (a stable sort by readiness of newest-first).
    newest_first = sorted(idle, key=lambda p: (p.created, p.name), reverse=True)
    surplus = sorted(newest_first, key=lambda p: p.ready)[: max(0, len(idle) - want)]
    warm = [p for p in idle if p.ready]
    create = 0 if hold_refill else max(0, want - len(idle))
    conditions = [
        _condition(
            POOL_READY,
            len(warm) >= want,
            "Warm" if len(warm) >= want else "Refilling",
            f"{len(warm)}/{want} idle workers warm",
        )
    ]
    if delivery is not None:
        conditions.append(delivery)
    if create_failure is not None:
        conditions.append(create_failure)
    if ended:
        conditions.append(
            _condition(
                WARM_START_FAILED,
                True,
                "IdleWorkerEnded",
                "; ".join(f"{p.name}: {p.reason or p.phase}" for p in ended[:5])
                + " (see the pod's log: an import of spec.imports failing ends it)",
            )
        )
    status = WorkerPoolStatus(
        replicas=len(idle),
        idle=len(warm),
        starting=len(idle) - len(warm),
        claimed=len(claimed),
        selector=pool_selector(name),
        conditions=_stamp(conditions, previous, now, generation),
        observed_generation=generation,
    )
    return PoolPlan(
        create=create,
        delete=tuple(surplus) + tuple(ended) + tuple(stale),
        status=None if previous is not None and _same(previous, status) else status,
    )


def _same(a: WorkerPoolStatus, b: WorkerPoolStatus) -> bool:
    def shape(s: WorkerPoolStatus) -> tuple[object, ...]:
        return (
            s.replicas,
            s.idle,
            s.starting,
            s.claimed,
            s.selector,
            s.observed_generation,
            sorted((c.type, c.status, c.reason, c.message) for c in s.conditions),
        )

    return shape(a) == shape(b)


def _stamp(
    conditions: list[Condition], previous: WorkerPoolStatus | None, now: str, generation: int | None
) -> list[Condition]:
    before = previous.conditions if previous is not None else ()
    return [stamp_transition(c, before, now, generation) for c in conditions]


@dataclass(frozen=True)
class ClaimChoice:
    claims: tuple[tuple[WorkerId, PoolPodView], ...] = ()
    condition: Condition | None = None


def choose_claims(
    spec: ExecuteJobSpec,
    pool: WorkerPool | None,
    pods: Sequence[PoolPodView],
    creates: Sequence[WorkerId],
    undeliverable: str = "",
) -> ClaimChoice:
    """Which idle pods become which of the workers about to be created (the rest go cold).

    Only idle pods made from the pool's current spec are claimed. ``undeliverable``: why the
    pool's claims cannot be delivered now (its ``ClaimsDelivered`` condition): nothing is
    claimed, every worker starts cold."""
    name = spec.pool or ""
    if pool is None:
        return ClaimChoice(
            condition=_condition(
                POOL_CLAIM,
                False,
                "PoolNotFound",
                f"spec.pool: WorkerPool {name!r} does not exist in the job's namespace; the "
                "workers start cold (create the pool, or leave spec.pool out)",
            )
        )
    if pool.spec.image != spec.image:
        return ClaimChoice(
            condition=_condition(
                POOL_CLAIM,
                False,
                "PoolImageMismatch",
                f"spec.image {spec.image!r} is not the image of WorkerPool {name!r} "
                f"({pool.spec.image!r}); the workers start cold (use the pool's image, or "
                "another pool)",
            )
        )
    if spec.template != pool.spec.template:
        return ClaimChoice(
            condition=_condition(
                POOL_CLAIM,
                False,
                "PoolTemplateMismatch",
                f"spec.template differs from the template of WorkerPool {name!r}: its idle "
                "workers already run with the pool's; the workers start cold (use the pool's "
                "template, or another pool)",
            )
        )
    if undeliverable:
        return ClaimChoice(
            condition=_condition(
                POOL_CLAIM,
                False,
                "PoolClaimsNotDelivered",
                f"WorkerPool {name!r} cannot deliver claims ({undeliverable}); the workers "
                "start cold (see the pool's ClaimsDelivered condition)",
            )
        )
    current = pool_spec_hash(pool)
    idle = sorted(
        (p for p in pods if p.claimable and p.spec_hash == current),
        key=lambda p: (p.created, p.name),
    )
    claims = tuple(zip(creates, idle, strict=False))
    cold = len(creates) - len(claims)
    return ClaimChoice(
        claims=claims,
        condition=_condition(
            POOL_CLAIM,
            True,
            "Claimed" if not cold else "PartlyCold",
            f"{len(claims)} worker(s) claimed warm from WorkerPool {name!r}, {cold} started cold",
        ),
    )
