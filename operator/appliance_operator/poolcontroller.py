"""Warm pools, the acting part: keep a pool's idle pods, claim them for jobs, deliver claims.

:class:`PoolController` reconciles one WorkerPool (its claim Secrets, its idle pods, its
status) from :func:`appliance_operator.poolplan.plan_pool`. :class:`Claimer` is what the job
controller uses for a job with ``spec.pool``: adopt idle pods for workers about to be created
(one merge patch each, with the observed ``resourceVersion`` as precondition), then send each
adopted worker the job's snapshot over the claim channel (:mod:`appliance_operator.pooltls`)
and mark it confirmed. Delivery is level-triggered: a claimed pod that is not confirmed (the
operator died between adoption and delivery) is delivered to by the next reconcile; a worker
that no longer listens has already accepted its one claim, which only this job's operator
could have sent, since the pod was adopted before anything was sent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from appliance_operator import desired, poolnetwork, pooltls
from appliance_operator.kubeapi import ApiError, KubeApi
from appliance_operator.metrics import Metrics
from appliance_operator.observe import JobView, PodView, pod_view
from appliance_operator.poolplan import ClaimChoice, PoolPodView, choose_claims, plan_pool
from cerebras_appliance import channel, envfile
from cerebras_appliance import claim as claims
from cerebras_appliance.api import InvalidJobError, WorkerPool, WorkerPoolStatus, parse_pool
from cerebras_appliance.status import now_rfc3339

logger = logging.getLogger("appliance_operator")

PoolKey = tuple[str, str]
#: How the claim patches are run: ``map``, or a thread pool's ``map`` (in parallel).
Runner = Callable[..., Iterable[Any]]
#: How long a pod this process created or claimed is remembered before the watch shows it.
EXPECTATION_TTL = 30.0
#: At most this long after a claim, the pool's refill waits for the claim's delivery.
REFILL_HOLD = 3.0


@dataclass(frozen=True)
class PoolSnapshot:
    """A pool and its pods, copied out of the operator's cache for one reconcile."""

    body: Mapping[str, Any] | None
    pods: tuple[PoolPodView, ...] = ()


def _pool_of(body: Mapping[str, Any] | None) -> WorkerPool | None:
    if body is None:
        return None
    try:
        return parse_pool(dict(body))
    except InvalidJobError:
        return None


class PoolController:
    def __init__(
        self,
        api: KubeApi,
        metrics: Metrics,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        claim_port: int = desired.CLAIM_PORT,
    ) -> None:
        self.api = api
        self.metrics = metrics
        self.clock = clock
        self.claim_port = claim_port
        self._lock = threading.Lock()
        self._contexts: dict[str, ssl.SSLContext] = {}  # pool uid -> operator TLS context
        self._creds_ready: set[str] = set()  # pool uids whose claim Secrets exist
        self._created: dict[str, dict[str, float]] = {}  # pool uid -> pod name -> when
        self._claimed: dict[str, float] = {}  # pod uid -> when this process claimed it
        # The claim port's NetworkPolicy in each pool's namespace (poolnetwork.py).
        self.network = poolnetwork.PolicyKeeper(api, poolnetwork.source_from_os(), claim_port)

    # -- one pool ------------------------------------------------------------------------

    def reconcile(
        self, key: PoolKey, body: Mapping[str, Any] | None, pods: Sequence[PoolPodView]
    ) -> float | None:
        namespace, name = key
        if body is None:
            for state in ("idle", "refilling", "claimed"):
                with contextlib.suppress(KeyError):
                    self.metrics.pool_workers.remove(namespace, name, state)
            self.network.forget(namespace, name)
            return None
        pool = _pool_of(body)
        if pool is None:
            logger.error("[%s/%s] cannot read the WorkerPool; fix its spec", namespace, name)
            return None
        meta = body.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        self._ensure_credentials(namespace, pool, uid)
        self.network.ensure(namespace, name, uid)
        seen = {p.name for p in pods}
        now = time.monotonic()
        with self._lock:
            # A pod this process just claimed is the job's, even while the watch still shows
            # it idle: never counted as idle, never removed as surplus.
            pods = [
                dataclasses.replace(p, state=desired.CLAIMED)
                if p.state == desired.IDLE and p.uid in self._claimed
                else p
                for p in pods
            ]
            pending = self._created.setdefault(uid, {})
            for pod_name, since in list(pending.items()):
                if pod_name in seen or now - since > EXPECTATION_TTL:
                    del pending[pod_name]
            expected = [
                PoolPodView(
                    name=n, uid="", resource_version="", pool=name, state="idle", phase="Pending"
                )
                for n in pending
            ]
        previous = WorkerPoolStatus.model_validate(body.get("status") or {})
        hold = self._refill_hold(pods, now)
        steps = plan_pool(
            pool,
            [*pods, *expected],
            previous if body.get("status") else None,
            generation=meta.get("generation"),
            now=now_rfc3339(self.clock()),
            hold_refill=hold > 0,
        )
        for _ in range(steps.create):
            pod = desired.pool_pod(pool, uid, "")
            pod["metadata"].pop("name")
            pod["metadata"]["generateName"] = f"{name}-"
            try:
                created = self.api.create_pod(namespace, pod)
            except ApiError as exc:
                logger.warning("[%s/%s] creating an idle worker failed: %s", namespace, name, exc)
                break
            with self._lock:
                pending[str((created.get("metadata") or {}).get("name"))] = time.monotonic()
        for view in steps.delete:
            if not view.uid:
                continue
            try:
                self.api.delete_pod(namespace, view.name, view.uid)
            except ApiError as exc:
                if exc.code not in (404, 409):
                    raise
        if steps.status is not None:
            try:
                self.api.patch_pool_status(
                    namespace, name, steps.status.model_dump(mode="json", by_alias=True)
                )
            except ApiError as exc:
                if exc.code != 404:
                    raise
        status = steps.status or previous
        self.metrics.pool_workers.labels(namespace, name, "idle").set(status.idle)
        self.metrics.pool_workers.labels(namespace, name, "refilling").set(status.starting)
        self.metrics.pool_workers.labels(namespace, name, "claimed").set(status.claimed)
        if steps.create:
            logger.info("[%s/%s] started %d idle worker(s)", namespace, name, steps.create)
        return hold or None

    def _refill_hold(self, pods: Sequence[PoolPodView], now: float) -> float:
        """Seconds the refill still waits: while a pod this process claimed in the last
        :data:`REFILL_HOLD` seconds has not confirmed its snapshot (0: refill now)."""
        with self._lock:
            since = [
                self._claimed[p.uid]
                for p in pods
                if p.uid in self._claimed and p.active and not p.confirmed
            ]
        return max([0.0, *(REFILL_HOLD - (now - t) for t in since)])

    def _ensure_credentials(self, namespace: str, pool: WorkerPool, uid: str) -> None:
        """The pool's two claim Secrets (a new CA the first time; 409: already there)."""
        if uid in self._creds_ready:
            return
        name = pool.metadata.name or ""
        existing = self.api.read_secret(namespace, pooltls.operator_secret_name(name))
        if existing is None:
            creds = pooltls.new_pool_credentials(name)
            owner = desired.pool_owner_reference(pool, uid)
            for secret_name, pair in (
                (pooltls.worker_secret_name(name), creds.worker),
                (pooltls.operator_secret_name(name), creds.operator),
            ):
                body = {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {
                        "name": secret_name,
                        "namespace": namespace,
                        "labels": desired.pool_labels(name),
                        "ownerReferences": [owner],
                    },
                    "type": "Opaque",
                    "immutable": True,
                    "data": pair.secret_data(),
                }
                try:
                    self.api.create_secret(namespace, body)
                except ApiError as exc:
                    if exc.code != 409:
                        raise ApiError(
                            exc.code, exc.reason, f"creating Secret {secret_name} failed"
                        ) from None
        self._creds_ready.add(uid)

    def context_for(self, namespace: str, pool: str, uid: str) -> ssl.SSLContext:
        cache_key = uid or f"{namespace}/{pool}"
        with self._lock:
            context = self._contexts.get(cache_key)
        if context is not None:
            return context
        secret = self.api.read_secret(namespace, pooltls.operator_secret_name(pool))
        if secret is None:
            raise pooltls.ClaimRefusedError(
                f"Secret {pooltls.operator_secret_name(pool)} of WorkerPool {pool} is missing"
            )
        pair = pooltls.KeyPair.from_secret_data(dict(secret.get("data") or {}))
        context = pooltls.client_context(pair)
        with self._lock:
            self._contexts[cache_key] = context
        return context

    # -- claims (used by the job controller) ----------------------------------------------

    def recently_claimed(self, uid: str) -> bool:
        now = time.monotonic()
        with self._lock:
            for pod_uid, since in list(self._claimed.items()):
                if now - since > EXPECTATION_TTL:
                    del self._claimed[pod_uid]
            return uid in self._claimed

    def claim(
        self,
        job: JobView,
        creates: Sequence[desired.WorkerId],
        snapshot: PoolSnapshot | None,
        run: Runner = map,
    ) -> tuple[ClaimChoice, list[PodView]]:
        """Adopt idle pods for some of ``creates``; returns the choice and the adopted pods.

        The patches are independent (one pod each, each with its own precondition), so
        ``run`` (the controller's thread pool's ``map``) sends them in parallel."""
        pool = _pool_of(snapshot.body if snapshot else None)
        pods = [p for p in (snapshot.pods if snapshot else ()) if not self.recently_claimed(p.uid)]
        choice = choose_claims(job.job.spec, pool, pods, creates)
        pool_name = job.job.spec.pool or ""

        def adopt(claim: tuple[desired.WorkerId, PoolPodView]) -> PodView | ApiError | None:
            worker, pod = claim
            body = desired.claim_patch(job.job, job.uid, worker, pod.resource_version)
            try:
                answer = self.api.patch_pod(job.namespace, pod.name, body)
            except ApiError as exc:
                if exc.code not in (404, 409):
                    return exc
                self.metrics.pool_claims.labels(job.namespace, pool_name, "conflict").inc()
                return None
            with self._lock:
                self._claimed[pod.uid] = time.monotonic()
            return pod_view(answer)

        results = list(run(adopt, choice.claims))
        adopted = [r for r in results if isinstance(r, PodView)]
        errors = [r for r in results if isinstance(r, ApiError)]
        if errors:
            raise errors[0]  # the adopted pods are this job's: the retry delivers to them
        cold = len(creates) - len(adopted)
        if cold and pool is not None:
            self.metrics.pool_claims.labels(job.namespace, pool_name, "cold").inc(cold)
        return choice, adopted

    def prepare_delivery(
        self,
        job: JobView,
        pool_uid: str,
        env_hash: str,
        written: Mapping[str, Any] | None = None,
    ) -> tuple[ssl.SSLContext, str, str] | str:
        """The operator's TLS context for the job's pool, the job's env file content and its
        hash (from ``<job>-env``, the very file a cold worker mounts: ``written``, the Secret
        this reconcile created, else read back and sent only when it carries ``env_hash``, the
        hash the controller wrote or verified: ``desired.trusted_env_snapshot``); or the
        problem."""
        secret = written or self.api.read_secret(job.namespace, desired.env_secret_name(job.name))
        if secret is None:
            return "the job's env Secret is not there yet"
        found = desired.trusted_env_snapshot(secret, job.uid, env_hash=env_hash)
        if isinstance(found, str):
            return f"the job's env Secret is not the snapshot the operator wrote: {found}"
        text = envfile.dumps(found.env, found.env_hash, found.env_key)
        env_hash = found.env_hash
        try:
            context = self.context_for(job.namespace, job.job.spec.pool or "", pool_uid)
        except (pooltls.ClaimRefusedError, channel.ChannelError) as exc:
            return str(exc)
        return context, text, env_hash

    def deliver_one(
        self, job: JobView, pod: PodView, context: ssl.SSLContext, text: str, env_hash: str
    ) -> str:
        """Send the snapshot to one adopted worker and mark it confirmed; "" or the problem
        (never a value)."""
        pool_name = job.job.spec.pool or ""
        message = claims.dumps(
            claims.Claim(
                worker=pod.name,
                entrypoint=job.job.spec.entrypoint,
                args=tuple(job.job.spec.args),
                plumbing=(
                    ("APPLIANCE_JOB_NAME", job.name),
                    ("APPLIANCE_WORKER_NAME", pod.name),
                    ("APPLIANCE_WORKER_INDEX", str(pod.index)),
                ),
                snapshot=text,
            )
        )
        try:
            pooltls.deliver(context, pod.ip, message, port=self.claim_port)
        except pooltls.ClaimRefusedError as exc:
            if "ConnectionRefused" not in str(exc):
                self.metrics.pool_claims.labels(job.namespace, pool_name, "failed").inc()
                return str(exc)
            # Not listening any more: it accepted its one claim already, which only this
            # job's operator could send (the pod was adopted before anything was sent).
        try:
            self.api.patch_pod(job.namespace, pod.name, desired.confirm_patch(env_hash))
        except ApiError as exc:
            if exc.code != 404:
                raise
        self.metrics.pool_claims.labels(job.namespace, pool_name, "claimed").inc()
        return ""


def pool_uid_of(snapshot: PoolSnapshot | None) -> str:
    body = snapshot.body if snapshot else None
    return str(((body or {}).get("metadata") or {}).get("uid") or "")


def confirmed_view(pod: PodView) -> PodView:
    return dataclasses.replace(pod, confirmed=True)
