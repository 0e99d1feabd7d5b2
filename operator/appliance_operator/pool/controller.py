"""Warm pools, the acting part: keep a pool's idle pods, claim them for jobs, deliver claims.

:class:`PoolController` reconciles one WorkerPool (its claim Secrets, its idle pods, its
status) from :func:`appliance_operator.pool.plan.plan_pool`. Its claim methods
(:meth:`PoolController.claim`, :meth:`PoolController.prepare_delivery`,
:meth:`PoolController.deliver_one`) are what the job controller uses for a job with
``spec.pool``: adopt idle pods for workers about to be created (one merge patch each, with the
observed ``resourceVersion`` as precondition), then send each adopted worker the job's
snapshot over the claim channel (:mod:`appliance_operator.pool.tls`) and mark it confirmed.
A job with ``spec.code`` sends its code bundle with the snapshot, read from the job's
``<job>-code-<i>`` Secrets and checked against ``spec.code.sha256`` first
(:func:`read_job_code`): code that cannot be read or is not the bundle the job names is never
sent, the job says so (``PoolClaim=False`` naming the Secret) and its workers start cold.
Delivery is level-triggered: a claimed pod that is not confirmed (the operator died between
adoption and delivery) is delivered to by the next reconcile. A pod is confirmed only on its
worker's answer to this very claim (the job's uid and a nonce repeated); a worker that no
longer listens, or answers otherwise, is deleted (the job replaces it), and the pool is then
claimed from no more (``ClaimsDelivered=False``) until one of its idle pods answers a probe
(backoff 5 s doubling to 5 min): a job never loops on a pool that cannot take its claims, it
starts cold. The claim Secrets are named after and bound to the pool's uid, and idle pods
carry the hash of the spec they were made from (others are replaced, never claimed).

What this process keeps per pool is one :class:`PoolMemory`, dropped with the pool; what it
wrote that the watch does not show yet (idle pods created, pods claimed) are
:class:`~appliance_operator.expectations.Expectations`, as the job controller's.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import hmac
import logging
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from appliance_operator import desired
from appliance_operator.expectations import Expectations
from appliance_operator.kubeapi import ApiError, KubeApi
from appliance_operator.metrics import Metrics
from appliance_operator.observe import JobView, PodView, pod_view
from appliance_operator.pool import network as poolnetwork
from appliance_operator.pool import tls as pooltls
from appliance_operator.pool.plan import (
    CLAIMS_DELIVERED,
    REPLICA_FAILURE,
    ClaimChoice,
    PoolPlan,
    PoolPodView,
    choose_claims,
    plan_pool,
    pool_spec_hash,
)
from cerebras_appliance.contract import bundle, channel, envfile, names
from cerebras_appliance.contract import claim as claims
from cerebras_appliance.contract.api import (
    Condition,
    InvalidJobError,
    WorkerPool,
    WorkerPoolStatus,
    code_chunk_key,
    code_secret_name,
    parse_pool,
)
from cerebras_appliance.contract.names import POOL_SPEC_HASH_ANNOTATION
from cerebras_appliance.contract.status import now_rfc3339

logger = logging.getLogger("appliance_operator")

PoolKey = tuple[str, str]
#: How the claim patches are run: ``map``, or a thread pool's ``map`` (in parallel).
Runner = Callable[..., Iterable[Any]]
#: At most this long after a claim, the pool's refill waits for the claim's delivery.
REFILL_HOLD = 3.0
#: After a failed delivery the pool is not claimed from; it is probed (an idle pod's channel
#: asked to answer, claiming nothing) after PROBE_BACKOFF seconds, doubling with each
#: failure in a row up to PROBE_BACKOFF_MAX; the first probe answered lifts the block.
PROBE_BACKOFF = 5.0
PROBE_BACKOFF_MAX = 300.0
PROBE_TIMEOUT = 5.0
#: Each new idle pod is claimable only once it answered a probe from this operator (a policy
#: enforcer may admit its claim port seconds after the pod is Ready, a sidecar or a foreign CA
#: never): probed with this timeout, again every CHECK_RETRY seconds; after CHECK_GRACE
#: seconds without an answer the pool says so (ClaimsDelivered=False, ChannelNotAnswering).
CHECK_TIMEOUT = 2.0
CHECK_RETRY = 1.0
CHECK_GRACE = 30.0
#: How often claim Secrets that cannot be used are read again (the operator watches no Secret).
SECRET_RECHECK = 10.0
CONDITION_MESSAGE_LIMIT = 1024
#: Seconds until the next reconcile writes a condition this one found (a refused create).
STATUS_SOON = 0.5


@dataclass
class DeliveryTrouble:
    """A pool whose claims could not be delivered: why, and when to probe it again."""

    failures: int
    message: str
    next_probe: float
    cleared: bool = False


def probe_backoff(failures: int) -> float:
    return float(min(PROBE_BACKOFF * 2 ** max(failures - 1, 0), PROBE_BACKOFF_MAX))


@dataclass
class PoolMemory:
    """What this process keeps for one pool (under its uid); it goes with the pool."""

    context: ssl.SSLContext | None = None  # the operator's TLS context for its channel
    creds_ready: bool = False  # its claim Secrets exist and are bound to it
    secret_problem: str = ""  # why its claim Secrets cannot be used
    #: idle pods this process created (by name), until the watch shows them
    created: Expectations[str, None] = field(default_factory=Expectations)
    trouble: DeliveryTrouble | None = None  # deliveries failing
    answered: set[str] = field(default_factory=set)  # idle pods that answered a probe: claimable
    #: idle pod uid -> (name, first probed, the last error) while they do not answer
    unanswered: dict[str, tuple[str, float, str]] = field(default_factory=dict)
    create_failed: Condition | None = None  # ReplicaFailure, while its idle pods are refused


@dataclass(frozen=True)
class PoolSnapshot:
    """A pool and its pods, copied out of the operator's cache for one reconcile."""

    body: Mapping[str, Any] | None
    pods: tuple[PoolPodView, ...] = ()


@dataclass(frozen=True)
class Delivery:
    """What a job's claims carry, prepared once for all its adopted workers: the operator's
    TLS context for the pool, the env file's content and hash, and the code bundle (b""
    without ``spec.code``), already checked against ``spec.code.sha256``."""

    context: ssl.SSLContext
    snapshot: str
    env_hash: str
    code: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class CodeProblem:
    """The job's code cannot be sent: a ``PoolClaim`` reason and a message naming the Secret
    and the fix (never a byte of the code, nor a name inside the bundle)."""

    reason: str
    message: str


def read_job_code(api: KubeApi, job: JobView) -> bytes | CodeProblem:
    """The job's code bundle from its ``<job>-code-<i>`` Secrets (b"" without ``spec.code``),
    or why it cannot be sent.

    Each Secret must exist, be owned by the job (a same-named Secret of an earlier job of
    that name, not yet garbage-collected, is not this job's) and hold its chunk under its key
    as base64; the chunks joined must be ``spec.code.size`` bytes whose content hash
    (:func:`cerebras_appliance.contract.bundle.digest`, which reads the archive as the worker
    would) is ``spec.code.sha256``, the hash the job's creator set and no one may change."""
    code = job.job.spec.code
    if code is None:
        return b""
    chunks: list[bytes] = []
    for index in range(code.chunks):
        name = code_secret_name(job.name, index)
        try:
            secret = api.read_secret(job.namespace, name)
        except ApiError as exc:
            return CodeProblem(
                "CodeSecretUnreadable",
                f"the operator could not read Secret {name} of the job's code ({exc.code} "
                f"{exc.reason}); it needs get on secrets in namespace {job.namespace}",
            )
        if secret is None:
            return CodeProblem(
                "CodeSecretNotFound",
                f"Secret {name} of the job's code does not exist (the client writes "
                f"{code.chunks} Secret(s) before it releases the job); submit the job again",
            )
        owners = {
            str(r.get("uid")) for r in (secret.get("metadata") or {}).get("ownerReferences") or []
        }
        if job.uid not in owners:
            return CodeProblem(
                "CodeSecretNotOwned",
                f"Secret {name} is not owned by this job (an earlier job of the same name "
                "left it, or someone else made it); delete it, or submit under another name",
            )
        key = code_chunk_key(index)
        try:
            chunks.append(base64.b64decode((secret.get("data") or {})[key], validate=True))
        except (KeyError, TypeError, binascii.Error, ValueError):
            return CodeProblem(
                "CodeSecretInvalid",
                f"Secret {name} holds no chunk of the job's code under key {key!r}; submit "
                "the job again",
            )
    data = bundle.join(chunks)
    try:
        found = bundle.digest(data) if len(data) == code.size else ""
    except bundle.BundleError:
        found = ""
    if not hmac.compare_digest(found, code.sha256):
        first, last = code_secret_name(job.name, 0), code_secret_name(job.name, code.chunks - 1)
        where = first if code.chunks == 1 else f"{first} .. {last}"
        return CodeProblem(
            "CodeHashMismatch",
            f"the code in Secret(s) {where} is not the bundle spec.code names (its size or "
            "its hash is not spec.code's); it is not sent: submit the job again",
        )
    return data


def _pool_of(body: Mapping[str, Any] | None) -> WorkerPool | None:
    if body is None:
        return None
    try:
        return parse_pool(dict(body))
    except InvalidJobError:
        return None


#: The ``outcome`` label values of ``appliance_operator_pool_claims_total``.
CLAIM_OUTCOMES = ("claimed", "cold", "conflict", "failed")


class PoolController:
    def __init__(
        self,
        api: KubeApi,
        metrics: Metrics,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        claim_port: int = names.CLAIM_PORT,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.metrics = metrics
        self.clock = clock
        self.claim_port = claim_port
        #: The clock of this process's expectations, probes and holds (injected by tests).
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._pools: dict[str, PoolMemory] = {}  # pool uid -> what this process keeps
        self._uids: dict[PoolKey, str] = {}  # the uid each pool's memory is kept under
        self._claimed: Expectations[str, None] = Expectations()  # pod uids claimed here
        # The claim port's NetworkPolicy in each pool's namespace (pool/network.py).
        self.network = poolnetwork.PolicyKeeper(api, poolnetwork.source_from_os(), claim_port)

    # -- one pool ------------------------------------------------------------------------

    def _memory(self, uid: str) -> PoolMemory:
        """The memory of pool ``uid``, made on first use (call under the lock)."""
        memory = self._pools.get(uid)
        if memory is None:
            memory = self._pools[uid] = PoolMemory()
        return memory

    def track(self, key: PoolKey, uid: str | None) -> None:
        """Pool ``key`` is now pool ``uid`` (None: deleted): what this process keeps for the
        pool that had this key before goes (its TLS context, credentials, expectations and
        claim counters), so the operator's memory is bounded by the pools that exist, not
        by all there ever were. Each reconcile records this."""
        with self._lock:
            old = self._uids.pop(key, None)
            if uid is not None:
                self._uids[key] = uid
            if old is None or old == uid:
                return
            self._pools.pop(old, None)
        if uid is None:
            for outcome in CLAIM_OUTCOMES:
                with contextlib.suppress(KeyError):
                    self.metrics.pool_claims.remove(key[0], key[1], outcome)

    def remembered(self) -> set[str]:
        """The pool uids this process keeps anything for (read-only: tests, debugging)."""
        with self._lock:
            return set(self._pools) | set(self._uids.values())

    def reconcile(
        self, key: PoolKey, body: Mapping[str, Any] | None, pods: Sequence[PoolPodView]
    ) -> float | None:
        """Reconcile one pool from its cached body and pods; returns when to look again
        (seconds), or None. Raises ApiError when the API failed (the caller retries)."""
        namespace, name = key
        if body is None:
            for state in ("idle", "refilling", "claimed"):
                with contextlib.suppress(KeyError):
                    self.metrics.pool_workers.remove(namespace, name, state)
            self.network.forget(namespace, name)
            self.track(key, None)
            return None
        pool = _pool_of(body)
        if pool is None:
            logger.error("[%s/%s] cannot read the WorkerPool; fix its spec", namespace, name)
            return None
        meta = body.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        self.track(key, uid)  # a pool recreated under the same name: the old one's state
        secret_problem = self._ensure_credentials(namespace, pool, uid)
        current = pool_spec_hash(pool)
        self.network.ensure(namespace, name, uid)
        now = self.monotonic()
        pods, expected = self._observed(name, uid, pods, current, now)
        previous = WorkerPoolStatus.model_validate(body.get("status") or {})
        check_in, not_answering = self._check_channels(namespace, pool, uid, pods, current)
        pods = self._warm_once_answered(uid, pods)
        hold = self._refill_hold(pods, now)
        delivery, probe_in = self._delivery_condition(namespace, pool, uid, pods, previous, current)
        with self._lock:
            create_failure = self._memory(uid).create_failed
        steps = plan_pool(
            pool,
            [*pods, *expected],
            previous if body.get("status") else None,
            generation=meta.get("generation"),
            now=now_rfc3339(self.clock()),
            hold_refill=hold > 0 or bool(secret_problem),
            delivery=_claims_delivered(delivery, not_answering, secret_problem),
            create_failure=create_failure,
        )
        first_refusal = self._create_idle(namespace, pool, uid, current, steps.create)
        self._execute(namespace, name, steps, previous, current)
        # No Secret watch: a claim Secret someone must delete is looked at again periodically.
        with self._lock:
            refused = self._memory(uid).create_failed is not None
        recheck = SECRET_RECHECK if secret_problem or refused else 0.0
        if first_refusal:
            recheck = STATUS_SOON  # the status planned above does not show the refusal yet
        waits = [t for t in (hold, probe_in, check_in, recheck) if t]
        return min(waits) if waits else None

    def _observed(
        self, name: str, uid: str, pods: Sequence[PoolPodView], current: str, now: float
    ) -> tuple[list[PoolPodView], list[PoolPodView]]:
        """(The watched pods, those this process just claimed shown claimed; the idle pods
        it created that the watch does not show yet.)"""
        seen = {p.name for p in pods}
        with self._lock:
            # A pod this process just claimed is the job's, even while the watch still shows
            # it idle: never counted as idle, never removed as surplus.
            claimed = [
                dataclasses.replace(p, state=desired.CLAIMED)
                if p.state == desired.IDLE and p.uid in self._claimed
                else p
                for p in pods
            ]
            created = self._memory(uid).created
            created.prune(now, met=seen.__contains__)
            expected = [
                PoolPodView(
                    name=n,
                    uid="",
                    resource_version="",
                    pool=name,
                    state="idle",
                    phase="Pending",
                    spec_hash=current,
                )
                for n in created
            ]
        return claimed, expected

    def _warm_once_answered(self, uid: str, pods: Sequence[PoolPodView]) -> list[PoolPodView]:
        """Not warm before it answered this operator: counted as starting, never claimed."""
        with self._lock:
            answered = set(self._memory(uid).answered)
        return [
            dataclasses.replace(p, ready=False)
            if p.state == desired.IDLE and p.ready and p.uid not in answered
            else p
            for p in pods
        ]

    def _create_idle(
        self, namespace: str, pool: WorkerPool, uid: str, current: str, count: int
    ) -> bool:
        """Start ``count`` idle pods (stopping at the first failure); True when the API
        server refused one for the first time (its condition is in the next status)."""
        name = pool.metadata.name or ""
        for _ in range(count):
            pod = desired.pool_pod(pool, uid, "")
            pod["metadata"].setdefault("annotations", {})[POOL_SPEC_HASH_ANNOTATION] = current
            pod["metadata"].pop("name")
            pod["metadata"]["generateName"] = f"{name}-"
            try:
                created = self.api.create_pod(namespace, pod)
            except ApiError as exc:
                logger.warning("[%s/%s] creating an idle worker failed: %s", namespace, name, exc)
                if exc.code not in (400, 403, 404, 422):
                    return False
                # Refused as it is: say so in the status.
                message = f"creating idle workers: {exc}"[:CONDITION_MESSAGE_LIMIT]
                with self._lock:
                    memory = self._memory(uid)
                    first = memory.create_failed is None
                    memory.create_failed = Condition(
                        type=REPLICA_FAILURE, status="True", reason="FailedCreate", message=message
                    )
                return first
            pod_name = str((created.get("metadata") or {}).get("name"))
            with self._lock:
                memory = self._memory(uid)
                memory.created.expect(pod_name, None, self.monotonic())
                memory.create_failed = None
        return False

    def _execute(
        self,
        namespace: str,
        name: str,
        steps: PoolPlan,
        previous: WorkerPoolStatus,
        current: str,
    ) -> None:
        """The plan's deletes and status write; the pool's gauges and log."""
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
        stale = [v for v in steps.delete if v.active and v.spec_hash != current]
        if stale:
            logger.info(
                "[%s/%s] replacing %d idle worker(s) made from an earlier spec",
                namespace,
                name,
                len(stale),
            )

    def probe_new_pods(
        self, key: PoolKey, body: Mapping[str, Any], pods: Sequence[PoolPodView]
    ) -> None:
        """Probe the pool's Ready idle pods that have not answered this process yet: the step
        of a reconcile that makes them claimable, alone (what a restarted operator's first
        pool reconcile would do, without its delivery probe)."""
        pool = _pool_of(body)
        uid = str((body.get("metadata") or {}).get("uid") or "")
        if pool is not None:
            self._check_channels(key[0], pool, uid, pods, pool_spec_hash(pool))

    def _check_channels(
        self,
        namespace: str,
        pool: WorkerPool,
        uid: str,
        pods: Sequence[PoolPodView],
        current: str,
    ) -> tuple[float, str]:
        """Probe the idle pods of the ``current`` spec hash that are Ready and have not
        answered this operator yet (in parallel); (seconds until the next check, "" or why the
        pool's channel does not answer: a pod that has not answered for CHECK_GRACE seconds)."""
        now = self.monotonic()
        live = {p.uid for p in pods}
        with self._lock:
            memory = self._memory(uid)
            answered, unanswered = memory.answered, memory.unanswered
            answered.intersection_update(live)
            for gone in set(unanswered) - live:
                del unanswered[gone]
            todo = [
                p for p in pods if p.claimable and p.spec_hash == current and p.uid not in answered
            ]
        if not todo:
            return 0.0, ""
        name = pool.metadata.name or ""
        try:
            context = self.context_for(namespace, name, uid)
        except (pooltls.ClaimRefusedError, channel.ChannelError) as exc:
            errors = {p.uid: str(exc) for p in todo}
        else:

            def check(p: PoolPodView) -> str:
                try:
                    pooltls.probe(context, p.ip, port=self.claim_port, timeout=CHECK_TIMEOUT)
                except pooltls.ClaimRefusedError as exc:
                    return str(exc)
                return ""

            with ThreadPoolExecutor(max_workers=min(8, len(todo))) as run:
                errors = dict(zip((p.uid for p in todo), run.map(check, todo), strict=True))
        oldest = now
        problem = ""
        with self._lock:
            for p in todo:
                error = errors[p.uid]
                if not error:
                    answered.add(p.uid)
                    unanswered.pop(p.uid, None)
                    continue
                first = unanswered.get(p.uid, (p.name, now, ""))[1]
                unanswered[p.uid] = (p.name, first, error)
                if first <= oldest:
                    oldest = first
                    if now - first >= CHECK_GRACE:
                        problem = (
                            f"idle pod {p.name} has not answered the operator on its claim "
                            f"channel for {now - first:.0f} s: {error}; it is not claimed (check "
                            "NetworkPolicies admitting the operator to port "
                            f"{self.claim_port}, sidecars on the pool's pods, the pool's claim "
                            "Secrets)"
                        )
        left = [u for u in errors if errors[u]]
        if not left:
            return 0.0, ""
        return (CHECK_RETRY if now - oldest < CHECK_GRACE else PROBE_BACKOFF), problem

    # -- claims that cannot be delivered --------------------------------------------------

    def undeliverable(self, uid: str, body: Mapping[str, Any] | None) -> str:
        """Why this pool's claims cannot be delivered now ("": they can). Known from this
        process's deliveries and probes, else (after a restart) from the pool's status."""
        with self._lock:
            memory = self._pools.get(uid)
            problem = memory.secret_problem if memory is not None else ""
            trouble = memory.trouble if memory is not None else None
        if problem:
            return problem
        if trouble is not None:
            return "" if trouble.cleared else trouble.message
        for c in ((body or {}).get("status") or {}).get("conditions") or []:
            if c.get("type") == CLAIMS_DELIVERED and c.get("status") == "False":
                return str(c.get("message") or c.get("reason") or "deliveries failed")
        return ""

    def delivery_failed(self, uid: str, pod: str, issue: str) -> None:
        """A claim of the pool with ``uid`` could not be delivered to ``pod``: the pool is not
        claimed from until a probe of one of its idle pods is answered."""
        now = self.monotonic()
        with self._lock:
            memory = self._memory(uid)
            old = memory.trouble
            failures = (old.failures if old is not None else 0) + 1
            memory.trouble = DeliveryTrouble(
                failures=failures,
                message=f"the claim to pod {pod} was not delivered: {issue}",
                next_probe=now + probe_backoff(failures),
            )

    def delivery_succeeded(self, uid: str) -> None:
        with self._lock:
            memory = self._pools.get(uid)
            trouble = memory.trouble if memory is not None else None
            if trouble is not None:
                trouble.failures, trouble.cleared = 0, True

    def _delivery_condition(
        self,
        namespace: str,
        pool: WorkerPool,
        uid: str,
        pods: Sequence[PoolPodView],
        previous: WorkerPoolStatus,
        current: str,
    ) -> tuple[Condition | None, float]:
        """The ClaimsDelivered condition (None: no delivery ever failed), probing one idle pod
        when the pool is blocked and its probe is due; and seconds until the next probe."""
        now = self.monotonic()
        with self._lock:
            memory = self._memory(uid)
            trouble = memory.trouble
            if trouble is None:
                old = next((c for c in previous.conditions if c.type == CLAIMS_DELIVERED), None)
                if old is None or old.status == "True" or old.reason == "ClaimSecretsNotBound":
                    return None, 0.0
                # Blocked before this process started: probe now.
                trouble = DeliveryTrouble(failures=1, message=old.message, next_probe=now)
                memory.trouble = trouble
        due = not trouble.cleared and now >= trouble.next_probe
        # No idle pod to probe yet: a pod event brings one (no busy requeue meanwhile).
        unprobed = due and not self._probe(namespace, pool, uid, pods, trouble, current)
        wait = PROBE_BACKOFF if unprobed else 0.0
        if trouble.cleared:
            return (
                Condition(
                    type=CLAIMS_DELIVERED,
                    status="True",
                    reason="Delivered",
                    message="the pool's channel answers again",
                ),
                0.0,
            )
        return (
            Condition(
                type=CLAIMS_DELIVERED,
                status="False",
                reason="DeliveryFailed",
                message=f"{trouble.message}; no idle worker is claimed until one answers a "
                "probe (check NetworkPolicies admitting the operator to port "
                f"{self.claim_port}, sidecars on the pool's pods, the pool's claim Secrets)",
            ),
            max(trouble.next_probe - self.monotonic(), wait, 0.1),
        )

    def _probe(
        self,
        namespace: str,
        pool: WorkerPool,
        uid: str,
        pods: Sequence[PoolPodView],
        trouble: DeliveryTrouble,
        current: str,
    ) -> bool:
        """Ask the newest claimable idle pod (of the ``current`` spec hash) to answer (it
        claims nothing); False when there is none to ask."""
        with self._lock:
            candidates = [
                p
                for p in pods
                if p.claimable and p.spec_hash == current and p.uid not in self._claimed
            ]
        if not candidates:
            return False  # probed once an idle pod is Ready (its pod event reconciles the pool)
        target = max(candidates, key=lambda p: (p.created, p.name))
        name = pool.metadata.name or ""
        try:
            context = self.context_for(namespace, name, uid)
            pooltls.probe(context, target.ip, port=self.claim_port, timeout=PROBE_TIMEOUT)
        except (pooltls.ClaimRefusedError, channel.ChannelError) as exc:
            with self._lock:
                trouble.failures += 1
                trouble.next_probe = self.monotonic() + probe_backoff(trouble.failures)
                trouble.message = f"pod {target.name} did not answer a probe: {exc}"
            logger.warning("[%s/%s] %s", namespace, name, trouble.message)
            if "ConnectionRefused" in str(exc):
                # Idle-labelled but listening no more: someone claimed it outside the
                # operator, or its worker broke. It holds no job of ours: replaced.
                with contextlib.suppress(ApiError):
                    self.api.delete_pod(namespace, target.name, target.uid)
            return True
        with self._lock:
            trouble.cleared = True
        logger.info("[%s/%s] pod %s answered a probe: claiming again", namespace, name, target.name)
        return True

    def _refill_hold(self, pods: Sequence[PoolPodView], now: float) -> float:
        """Seconds the refill still waits: while a pod this process claimed in the last
        :data:`REFILL_HOLD` seconds has not confirmed its snapshot (0: refill now)."""
        with self._lock:
            since = [
                since
                for p in pods
                if (since := self._claimed.since(p.uid)) is not None
                and p.active
                and not p.confirmed
            ]
        return max([0.0, *(REFILL_HOLD - (now - t) for t in since)])

    def _ensure_credentials(self, namespace: str, pool: WorkerPool, uid: str) -> str:
        """The pool's claim Secrets, bound to its uid; "" or why they cannot be used.

        The operator's Secret is made first, with one create: it holds the operator's pair
        and a copy of the workers' (the CA's key is gone after signing both). The workers'
        Secret is then made from that copy, so an error between the two creates leaves
        nothing that cannot be finished. Both are named after the pool's uid, owned by it
        (controller), annotated with its uid and the CA's fingerprint, and checked: a Secret
        at either name the operator did not make for this pool is never used (the operator
        may not delete Secrets: the message says which one to delete)."""
        with self._lock:
            known = self._pools.get(uid)
            if known is not None and known.creds_ready:
                return ""
        name = pool.metadata.name or ""
        if not uid:
            return "the WorkerPool has no uid yet"
        labels = desired.pool_labels(name)
        owner = desired.pool_owner_reference(pool, uid)
        op_name = desired.operator_secret_name(name, uid)
        wk_name = desired.worker_secret_name(name, uid)

        def fix(secret_name: str, problem: str) -> str:
            message = (
                f"Secret {secret_name}: {problem}; delete it (kubectl -n {namespace} delete "
                f"secret {secret_name}) and the operator makes the pool's claim Secrets"
            )
            with self._lock:
                self._memory(uid).secret_problem = message
            logger.warning("[%s/%s] %s", namespace, name, message)
            return message

        def create(body: dict[str, Any]) -> dict[str, Any] | None:
            try:
                return self.api.create_secret(namespace, body)
            except ApiError as exc:
                if exc.code != 409:
                    raise ApiError(
                        exc.code, exc.reason, f"creating Secret {body['metadata']['name']} failed"
                    ) from None
            return self.api.read_secret(namespace, body["metadata"]["name"])

        operator = self.api.read_secret(namespace, op_name)
        if operator is None:
            creds = pooltls.new_pool_credentials(name)
            operator = create(
                pooltls.claim_secret(
                    op_name,
                    namespace,
                    labels,
                    owner,
                    uid,
                    creds.fingerprint,
                    pooltls.operator_secret_data(creds),
                )
            )
            if operator is None:
                raise ApiError(409, "Conflict", f"Secret {op_name} was deleted while made")
        problem = pooltls.binding_problem(operator, uid)
        if problem:
            return fix(op_name, problem)
        fingerprint = str(operator["metadata"]["annotations"][names.CA_FINGERPRINT_ANNOTATION])
        worker = self.api.read_secret(namespace, wk_name)
        if worker is None:
            try:
                creds = pooltls.credentials_from_operator_secret(dict(operator.get("data") or {}))
            except channel.ChannelError as exc:
                return fix(op_name, str(exc))
            if pooltls.ca_fingerprint(creds.worker.ca_pem) != fingerprint:
                return fix(op_name, "its copy of the workers' pair is of another CA")
            worker = create(
                pooltls.claim_secret(
                    wk_name, namespace, labels, owner, uid, fingerprint, creds.worker.secret_data()
                )
            )
            if worker is None:
                raise ApiError(409, "Conflict", f"Secret {wk_name} was deleted while made")
        problem = pooltls.binding_problem(worker, uid, fingerprint)
        if problem:
            return fix(wk_name, problem)
        with self._lock:
            memory = self._memory(uid)
            memory.secret_problem = ""
            memory.creds_ready = True
        return ""

    def context_for(self, namespace: str, pool: str, uid: str) -> ssl.SSLContext:
        with self._lock:
            memory = self._pools.get(uid)
            context = memory.context if memory is not None else None
        if context is not None:
            return context
        if not uid:
            raise pooltls.ClaimRefusedError(f"WorkerPool {pool} is not known (no uid)")
        secret_name = desired.operator_secret_name(pool, uid)
        secret = self.api.read_secret(namespace, secret_name)
        if secret is None:
            raise pooltls.ClaimRefusedError(f"Secret {secret_name} of WorkerPool {pool} is missing")
        problem = pooltls.binding_problem(secret, uid)
        if problem:
            raise pooltls.ClaimRefusedError(f"Secret {secret_name}: {problem}")
        pair = pooltls.KeyPair.from_secret_data(dict(secret.get("data") or {}))
        context = pooltls.client_context(pair)
        with self._lock:
            self._memory(uid).context = context
        return context

    # -- claims (used by the job controller) ----------------------------------------------

    def recently_claimed(self, uid: str) -> bool:
        now = self.monotonic()
        with self._lock:
            self._claimed.prune(now)
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
        with self._lock:
            memory = self._pools.get(pool_uid_of(snapshot))
            answered = set(memory.answered) if memory is not None else set()
        pods = [
            p
            for p in (snapshot.pods if snapshot else ())
            if not self.recently_claimed(p.uid) and p.uid in answered
        ]
        blocked = self.undeliverable(pool_uid_of(snapshot), snapshot.body if snapshot else None)
        choice = choose_claims(job.job.spec, pool, pods, creates, blocked if pool else "")
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
                self._claimed.expect(pod.uid, None, self.monotonic())
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
    ) -> Delivery | CodeProblem | str:
        """The operator's TLS context for the job's pool, the job's env file content and its
        hash (from ``<job>-env``, the very file a cold worker mounts: ``written``, the Secret
        this reconcile created, else read back and sent only when it carries ``env_hash``, the
        hash the controller wrote or verified: ``desired.trusted_env_snapshot``) and its
        checked code (:func:`read_job_code`); or the problem: a :class:`CodeProblem` (the
        job's workers start cold), or why the snapshot cannot be sent now (retried)."""
        secret = written or self.api.read_secret(job.namespace, desired.env_secret_name(job.name))
        if secret is None:
            return "the job's env Secret is not there yet"
        found = desired.trusted_env_snapshot(secret, job.uid, env_hash=env_hash)
        if isinstance(found, str):
            return f"the job's env Secret is not the snapshot the operator wrote: {found}"
        text = envfile.dumps(found.env, found.env_hash, found.env_key)
        code = read_job_code(self.api, job)
        if isinstance(code, CodeProblem):
            return code
        try:
            context = self.context_for(job.namespace, job.job.spec.pool or "", pool_uid)
        except (pooltls.ClaimRefusedError, channel.ChannelError) as exc:
            return str(exc)
        return Delivery(context, text, found.env_hash, code)

    def deliver_one(
        self, job: JobView, pod: PodView, delivery: Delivery, pool_uid: str = ""
    ) -> str:
        """Send the snapshot (and the code) to one adopted worker and mark it confirmed; ""
        or the problem (never a value). Confirmed only on the worker's answer to this very
        claim (it repeats the job's uid and a nonce made for this delivery): a worker that
        does not listen any more, or answers for another job, took someone else's claim and
        is never confirmed. A failure blocks the pool's claims (:meth:`delivery_failed`)."""
        pool_name = job.job.spec.pool or ""
        nonce = secrets.token_hex(16)
        plumbing = [
            (names.JOB_NAME_VAR, job.name),
            (names.WORKER_NAME_VAR, pod.name),
            (names.WORKER_INDEX_VAR, str(pod.index)),
        ]
        code = job.job.spec.code
        if code is not None:
            plumbing.append((names.CODE_SHA256_VAR, code.sha256))
        message = claims.dumps(
            claims.Claim(
                worker=pod.name,
                entrypoint=job.job.spec.entrypoint,
                args=tuple(job.job.spec.args),
                plumbing=tuple(plumbing),
                snapshot=delivery.snapshot,
                job=job.uid,
                nonce=nonce,
                code=delivery.code if code is not None else b"",
            )
        )
        try:
            pooltls.deliver(
                delivery.context, pod.ip, message, port=self.claim_port, job=job.uid, nonce=nonce
            )
        except pooltls.ClaimRefusedError as exc:
            self.metrics.pool_claims.labels(job.namespace, pool_name, "failed").inc()
            if pool_uid:
                self.delivery_failed(pool_uid, pod.name, str(exc))
            return str(exc)
        if pool_uid:
            self.delivery_succeeded(pool_uid)
        try:
            self.api.patch_pod(
                job.namespace, pod.name, desired.confirm_patch(delivery.env_hash, job.uid)
            )
        except ApiError as exc:
            if exc.code != 404:
                raise
        self.metrics.pool_claims.labels(job.namespace, pool_name, "claimed").inc()
        return ""


def _claims_delivered(
    delivery: Condition | None, not_answering: str, secret_problem: str
) -> Condition | None:
    """The pool's ClaimsDelivered condition: its claim Secrets' problem first, then its
    deliveries (``delivery``), then idle pods whose channel does not answer."""
    if secret_problem:
        return Condition(
            type=CLAIMS_DELIVERED,
            status="False",
            reason="ClaimSecretsNotBound",
            message=secret_problem,
        )
    if not_answering and (delivery is None or delivery.status == "True"):
        return Condition(
            type=CLAIMS_DELIVERED,
            status="False",
            reason="ChannelNotAnswering",
            message=not_answering,
        )
    return delivery


def pool_uid_of(snapshot: PoolSnapshot | None) -> str:
    body = snapshot.body if snapshot else None
    return str(((body or {}).get("metadata") or {}).get("uid") or "")
