"""One reconcile of one ExecuteJob: plan (pure) then act (blocking API calls, in a thread).

The operator's watch caches (kopf indexes) are what it observes. They lag behind its own
writes by a few milliseconds, so :class:`JobMemory` remembers, per job, what this process
just did (pods created or deleted, the status written) until the watch shows it; a reconcile
running in that window does not repeat the work. The memory is only an optimisation: after a
restart it is empty, the caches are complete (kopf lists everything before any handler runs)
and deterministic names plus create-if-absent make any repeated decision harmless.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from appliance_operator import desired
from appliance_operator.job.plan import (
    ENV_RESOLVED,
    REPLICA_FAILURE,
    VALID,
    EnvKnowledge,
    Event,
    Inputs,
    Plan,
    plan,
)
from appliance_operator.kubeapi import ApiError, KubeApi
from appliance_operator.metrics import Metrics
from appliance_operator.observe import JobView, PodView, job_view, pod_view
from appliance_operator.pool.controller import PoolController, PoolSnapshot, pool_uid_of
from cerebras_appliance.contract import envfile, names
from cerebras_appliance.contract.api import KIND, Condition, ExecuteJobStatus, InvalidJobError
from cerebras_appliance.contract.names import API_VERSION, AWAITING_VALUES_ANNOTATION
from cerebras_appliance.contract.status import now_rfc3339

logger = logging.getLogger("appliance_operator")

JobKey = tuple[str, str]  # (namespace, name)

#: How long this process trusts its own record of a write the watch has not shown yet.
EXPECTATION_TTL = 30.0
#: Retry delays after a failed reconcile or an unresolved env (seconds; doubled, capped).
RETRY_BASE, RETRY_MAX = 0.5, 60.0
#: Pods of one job created in parallel batches of 1, 2, 4, ... (slow start: a template the
#: API server refuses costs one failed call, not `replicas` of them).
MAX_CREATE_BATCH = 16
EVENT_MESSAGE_LIMIT = 1024
#: A new job's client normally releases it within milliseconds: its first status (Pending,
#: AwaitingValues) is written only if it is still awaiting its values after this long, so
#: the usual submit costs the API server no write and the release no wait behind one.
AWAITING_STATUS_DELAY = 1.0


@dataclass(frozen=True)
class StatusWrite:
    """Our last status write, until the watch shows it."""

    #: the job versions the cache may still show that are older than this write: the one it
    #: was planned on and those our earlier writes in a row produced
    older: frozenset[str]
    status: ExecuteJobStatus
    version: str  # the job version the write produced


@dataclass(slots=True)  # one per job the operator has seen: no __dict__ per record
class JobMemory:
    uid: str
    secret_ready: bool = False
    env_hash: str | None = None  # the keyed hash of <job>-env (its annotation)
    env_condition: Condition | None = None
    replica_condition: Condition | None = None  # ReplicaFailure, once a create went wrong
    created: dict[str, tuple[PodView, float]] = field(default_factory=dict)
    deleted: dict[str, float] = field(default_factory=dict)  # pod uid -> when
    released: dict[str, float] = field(default_factory=dict)  # pod uid -> finalizer removed
    confirmed: dict[str, float] = field(default_factory=dict)  # pod uid -> claim delivered
    written: StatusWrite | None = None
    last_write: datetime | None = None
    retries: int = 0
    last_warning: str = ""
    invalid: str = ""  # the parse error last reported for this job
    pool_condition: Condition | None = None  # PoolClaim, once a claim was decided
    env_observed: bool = False  # the time-to-env histogram has this job
    awaiting_since: float | None = None  # when this process first saw it awaiting values
    #: The <job>-env Secret this reconcile created (warm delivery needs no read-back); only
    #: for the reconcile that wrote it: no value stays in the operator's memory after it.
    fresh_secret: Mapping[str, Any] | None = None
    #: Workers the claim made while the job awaited its values left to start cold: decided
    #: once (PoolClaim, the cold count), started cold once the values are there.
    decided_cold: frozenset[tuple[int, int]] = frozenset()


def status_patch(status: ExecuteJobStatus) -> dict[str, Any]:
    """The whole status as a merge patch: absent optional fields are deleted (null)."""
    doc = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    for name, info in ExecuteJobStatus.model_fields.items():
        key = info.alias or name
        if key not in doc:
            doc[key] = None
    return doc


def namespace_terminating(error: ApiError) -> bool:
    """Creating anything in a namespace being deleted is refused; so is the job, soon."""
    return error.code == 403 and "being terminated" in error.message


def merge_observed(pods: Sequence[PodView], memory: JobMemory, now: float) -> list[PodView]:
    """The watched pods plus what this process did that the watch has not shown yet."""
    seen = {p.name for p in pods}
    for name, (_, since) in list(memory.created.items()):
        if name in seen or now - since > EXPECTATION_TTL:
            del memory.created[name]
    # Per pod uid, what this process wrote that the watch may not show yet (until the pod is
    # gone or the TTL has passed): deleted it, released its finalizer, delivered its claim.
    # A pod this process adopted may be written to before the watch shows it at all.
    present_uids = {p.uid for p in pods} | {v.uid for v, _ in memory.created.values()}
    for written in (memory.deleted, memory.released, memory.confirmed):
        for uid, since in list(written.items()):
            if uid not in present_uids or now - since > EXPECTATION_TTL:
                del written[uid]
    marked = memory.deleted.keys() | memory.released.keys() | memory.confirmed.keys()
    merged = [
        dataclasses.replace(
            p,
            terminating=p.terminating or p.uid in memory.deleted,
            released=p.uid in memory.released,
            confirmed=p.confirmed or p.uid in memory.confirmed,
        )
        if p.uid in marked
        else p
        for p in pods
    ]
    merged.extend(view for view, _ in memory.created.values())
    return merged


class Controller:
    """Reconciles jobs; thread-safe across jobs (one reconcile per job at a time)."""

    def __init__(
        self,
        api: KubeApi,
        metrics: Metrics,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        create_workers: int = MAX_CREATE_BATCH,
        pools: PoolController | None = None,
        background_events: bool = False,
    ) -> None:
        self.api = api
        self.pools = pools
        self.metrics = metrics
        self.clock = clock
        self._lock = threading.Lock()
        self._memory: dict[JobKey, JobMemory] = {}
        self._pool = ThreadPoolExecutor(max_workers=create_workers, thread_name_prefix="create")
        # With background_events (the operator's setting), Events are posted in order on a
        # thread of their own: a reconcile does not wait an API round trip per Event before the
        # job's next reconcile can start (a warm job's delivery waits on its claim reconcile).
        self._events = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="events")
            if background_events
            else None
        )
        # Events name the reporting operator: its pod (downward API, set by the chart), else
        # the host name (a pod's host name is its name, except with hostNetwork).
        self._instance = os.environ.get("POD_NAME") or socket.gethostname()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._events is not None:
            # Best effort like every Event: the one being posted finishes, queued ones go.
            self._events.shutdown(wait=False, cancel_futures=True)

    # -- memory --------------------------------------------------------------------------

    def _memory_for(self, key: JobKey, uid: str) -> JobMemory:
        with self._lock:
            memory = self._memory.get(key)
            if memory is None or memory.uid != uid:
                if memory is not None:
                    self.metrics.jobs.forget(memory.uid)
                memory = JobMemory(uid=uid)
                self._memory[key] = memory
            return memory

    def forget(self, key: JobKey) -> None:
        with self._lock:
            memory = self._memory.pop(key, None)
        if memory is not None:
            self.metrics.jobs.forget(memory.uid)

    # -- reconcile -----------------------------------------------------------------------

    def reconcile(
        self,
        key: JobKey,
        body: Mapping[str, Any] | None,
        pods: Sequence[PodView],
        pool: PoolSnapshot | None = None,
    ) -> float | None:
        """Reconcile one job from its cached body and pods; returns when to look again
        (seconds), or None. Raises ApiError when the API failed (the caller retries)."""
        started = time.perf_counter()
        try:
            if body is None:
                # Deleted: its pods and Secret go by ownerReference, once the pods are free
                # of the tracking finalizer.
                self.forget(key)
                for pod in pods:
                    if pod.tracked:
                        self._release(key[0], pod, None)
                return None
            try:
                job = job_view(body)
            except InvalidJobError as exc:
                self._report_invalid(key, body, str(exc))
                return None
            memory = self._memory_for(key, job.uid)
            try:
                return self._reconcile(job, pods, memory, pool)
            except ApiError:
                memory.retries += 1
                raise
            finally:
                memory.fresh_secret = None
        finally:
            self.metrics.reconcile_seconds.observe(time.perf_counter() - started)

    def retry_delay(self, key: JobKey) -> float:
        with self._lock:
            memory = self._memory.get(key)
        retries = memory.retries if memory is not None else 1
        return float(min(RETRY_BASE * 2 ** max(retries - 1, 0), RETRY_MAX))

    def _inputs(self, job: JobView, pods: Sequence[PodView], memory: JobMemory) -> Inputs:
        observed = merge_observed(pods, memory, time.monotonic())
        pending = self._pending(job, memory)
        if pending is None:
            # The cache shows our last write, or a later version, which holds it: every
            # status write is preconditioned on the version it was planned on.
            memory.written = None
        return Inputs(
            job=job,
            pods=observed,
            env=EnvKnowledge(
                secret_ready=memory.secret_ready,
                condition=memory.env_condition,
                env_hash=memory.env_hash,
            ),
            now=self.clock(),
            last_status_write=memory.last_write,
            previous=pending.status if pending is not None else None,
            replica_failure=memory.replica_condition,
            pool_condition=memory.pool_condition,
        )

    @staticmethod
    def _pending(job: JobView, memory: JobMemory) -> StatusWrite | None:
        """Our last status write while the cached job is older than it, else None."""
        written = memory.written
        return written if written is not None and job.resource_version in written.older else None

    def _reconcile(  # noqa: PLR0912, PLR0915
        self,
        job: JobView,
        pods: Sequence[PodView],
        memory: JobMemory,
        pool: PoolSnapshot | None = None,
    ) -> float | None:
        steps = plan(self._inputs(job, pods, memory))
        problem = False
        if steps.ensure_secret:
            outcome = self._ensure_secret(job, memory)
            problem = outcome is not True
            steps = plan(self._inputs(job, pods, memory))
            if outcome is not True:
                steps = dataclasses.replace(steps, ensure_secret=False, create=())
        claimed: list[str] = []
        warm = ""
        # Idle pool pods are adopted as soon as the job exists, while its client still writes
        # the values (they get the snapshot once <job>-env exists), not for a job whose env
        # cannot be resolved (it could wait forever).
        claiming = memory.secret_ready or _awaiting_values(job)
        if self.pools is not None and job.job.spec.pool and steps.needed and claiming:
            began = time.perf_counter()
            undecided = [w for w in steps.needed if (w.index, w.attempt) not in memory.decided_cold]
            rest, claimed = self._claim(job, undecided, memory, pool) if undecided else ((), [])
            cold = {(w.index, w.attempt) for w in rest} | memory.decided_cold
            if memory.secret_ready:
                steps = dataclasses.replace(
                    steps, create=tuple(w for w in steps.needed if (w.index, w.attempt) in cold)
                )
                memory.decided_cold = frozenset()
            else:
                memory.decided_cold = frozenset(cold)
            if claimed:
                warm = f"claimed {len(claimed)} in {(time.perf_counter() - began) * 1e3:.0f} ms"
        if self.pools is not None and job.job.spec.pool and memory.secret_ready:
            began = time.perf_counter()
            delivered, trouble, first = self._deliver(job, pods, memory, pool)
            problem = trouble or problem
            if delivered:
                spent = (time.perf_counter() - began) * 1e3
                warm += (
                    f"{', ' if warm else ''}delivered {delivered} in {spent:.0f} ms "
                    f"(first answer after {first * 1e3:.0f} ms)"
                )
        created, create_failed = self._create_pods(job, steps, memory)
        created = [*claimed, *created]
        problem = problem or create_failed
        failing = memory.replica_condition
        if created and not create_failed and failing is not None and failing.status == "True":
            memory.replica_condition = Condition(
                type=REPLICA_FAILURE, status="False", reason="PodsCreated", message=""
            )
        self._delete_pods(job, steps.delete, memory)
        steps = self._defer_awaiting_status(job, steps, memory)
        done: list[str] = []
        if created:
            done.append(f"created {len(created)} pod(s)" + (f" ({warm})" if warm else ""))
        elif warm:
            done.append(warm)
        if steps.delete:
            done.append(f"deleted {len(steps.delete)} pod(s)")
        if steps.status is not None and not self._write_status(job, steps.status, memory):
            return None  # the job is gone
        # Only now (the counts are stored): the counted and disrupted pods are released.
        for pod in steps.release:
            self._release(job.namespace, pod, memory)
        if steps.release:
            done.append(f"released {len(steps.release)} pod(s)")
        if steps.status is not None:
            done.append(
                f"status {steps.status.phase} "
                f"({steps.status.ready_replicas}/{steps.status.replicas} ready)"
            )
            for event in steps.events:
                self._post_event(job, event)
        if created:
            self._post_event(
                job, Event("Normal", "CreatedWorkers", f"created worker pods: {_names(created)}")
            )
        if steps.delete_job:
            self._delete_job(job)
            done.append("deleted the job (ttlSecondsAfterFinished)")
        if done:
            logger.info("[%s/%s] %s", job.namespace, job.name, "; ".join(done))
        self.metrics.jobs.set(job.uid, steps.phase)
        self._observe_env_applied(job, pods, steps, memory)
        if problem:
            memory.retries += 1
            retry = float(min(RETRY_BASE * 2 ** (memory.retries - 1), RETRY_MAX))
            return min(retry, steps.requeue_after or retry)
        memory.retries = 0
        return steps.requeue_after

    @staticmethod
    def _defer_awaiting_status(job: JobView, steps: Plan, memory: JobMemory) -> Plan:
        """No first status write while a new job's client is still writing its values (at
        most :data:`AWAITING_STATUS_DELAY`); written then if it still waits."""
        if not _awaiting_values(job) or job.status is not None or steps.status is None:
            return steps
        now = time.monotonic()
        if memory.awaiting_since is None:
            memory.awaiting_since = now
        left = AWAITING_STATUS_DELAY - (now - memory.awaiting_since)
        if left <= 0:
            return steps
        due = left if steps.requeue_after is None else min(left, steps.requeue_after)
        return dataclasses.replace(steps, status=None, events=(), requeue_after=due)

    # -- warm pools ----------------------------------------------------------------------

    def _claim(
        self,
        job: JobView,
        needed: Sequence[desired.WorkerId],
        memory: JobMemory,
        pool: PoolSnapshot | None,
    ) -> tuple[tuple[desired.WorkerId, ...], list[str]]:
        """Adopt idle pool pods for the workers needed; (those left to start cold, the
        adopted pods' names)."""
        assert self.pools is not None
        choice, adopted = self.pools.claim(job, needed, pool, run=self._pool.map)
        # PoolClaim says how the job's workers started: a replacement claimed all warm later
        # does not hide that the job started partly cold (or was refused warm workers).
        earlier, latest = memory.pool_condition, choice.condition
        worse = latest is not None and latest.reason != "Claimed"
        if earlier is None or earlier.reason == "Claimed" or worse:
            memory.pool_condition = latest
        now = time.monotonic()
        for view in adopted:
            memory.created[view.name] = (view, now)
        taken = {(v.index, v.attempt) for v in adopted}
        rest = tuple(w for w in needed if (w.index, w.attempt) not in taken)
        return rest, [v.name for v in adopted]

    def _deliver(
        self, job: JobView, pods: Sequence[PodView], memory: JobMemory, pool: PoolSnapshot | None
    ) -> tuple[int, bool, float]:
        """Send the snapshot to the job's adopted workers not confirmed yet (in parallel);
        a worker it cannot reach, or that does not answer this claim, is deleted, and the
        pool is claimed from no more until it answers a probe (``ClaimsDelivered=False``), so
        the job replaces it with a cold worker. (How many were delivered to, whether there
        was a problem, seconds until the first answer.)"""
        assert self.pools is not None
        observed = merge_observed(pods, memory, time.monotonic())
        todo = [
            p
            for p in observed
            if p.owner_uid == job.uid and p.warm and not p.confirmed and p.active and p.ip
        ]
        if not todo:
            return 0, False, 0.0
        prepared = self.pools.prepare_delivery(
            job, pool_uid_of(pool), memory.env_hash or "", memory.fresh_secret
        )
        if isinstance(prepared, str):
            logger.warning("[%s/%s] cannot deliver claims: %s", job.namespace, job.name, prepared)
            return 0, True, 0.0
        context, text, env_hash = prepared
        pools = self.pools
        pool_uid = pool_uid_of(pool)
        began = time.perf_counter()

        def deliver(pod: PodView) -> tuple[str, float]:
            issue = pools.deliver_one(job, pod, context, text, env_hash, pool_uid)
            return issue, time.perf_counter() - began

        answers = list(self._pool.map(deliver, todo))
        problems = [issue for issue, _ in answers]
        first = min(seconds for _, seconds in answers)
        now = time.monotonic()
        failed = False
        for pod, issue in zip(todo, problems, strict=True):
            if not issue:
                memory.created[pod.name] = (dataclasses.replace(pod, confirmed=True), now)
                memory.confirmed[pod.uid] = now  # until the watch shows the annotation
                continue
            failed = True
            self._warn(job, memory, "ClaimNotDelivered", f"worker pod {pod.name}: {issue}")
            self._delete_pods(job, [pod], memory)
        return sum(1 for issue in problems if not issue), failed, first

    def _observe_env_applied(
        self, job: JobView, pods: Sequence[PodView], steps: Plan, memory: JobMemory
    ) -> None:
        """Job created -> every worker confirmed the env, once per job, warm or cold."""
        status = steps.status
        if memory.env_observed or status is None or status.replicas == 0:
            return
        if status.ready_replicas < status.replicas:
            return
        memory.env_observed = True
        before = job.status
        if before is not None and before.ready_replicas >= before.replicas > 0:
            return  # already all ready before this process saw it (a restart)
        observed = merge_observed(pods, memory, time.monotonic())
        mine = [p for p in observed if p.owner_uid == job.uid and p.active]
        start = "warm" if mine and all(p.warm for p in mine) else "cold"
        seconds = (self.clock() - job.created).total_seconds()
        self.metrics.env_applied_seconds.labels(start).observe(max(seconds, 0.0))

    # -- actions -------------------------------------------------------------------------

    def _warn(self, job: JobView, memory: JobMemory, reason: str, message: str) -> None:
        """A Warning event, once per distinct problem (retries do not repeat it)."""
        logger.warning("[%s/%s] %s: %s", job.namespace, job.name, reason, message)
        if memory.last_warning != f"{reason}:{message}":
            memory.last_warning = f"{reason}:{message}"
            self._post_event(job, Event("Warning", reason, message))

    def _ensure_secret(self, job: JobView, memory: JobMemory) -> bool | None:  # noqa: PLR0912
        """Write ``<job>-env`` (resolving secretKeyRefs); True when it is in place."""
        name = desired.env_secret_name(job.name)
        awaiting = job.job.metadata.annotations.get(AWAITING_VALUES_ANNOTATION)
        if awaiting is not None:
            # The client has created the job but not yet written (or not yet released) the
            # Secret of its values: read nothing, start nothing, until it removes the mark.
            memory.env_condition = Condition(
                type=ENV_RESOLVED,
                status="False",
                reason="AwaitingValues",
                message=(
                    f"waiting for the client to write Secret {awaiting} and remove the "
                    f"annotation {AWAITING_VALUES_ANNOTATION}; if the client was interrupted, "
                    "delete this job (its Secret goes with it) and submit again"
                ),
            )
            return False
        resolved = job.status.condition(ENV_RESOLVED) if job.status is not None else None
        recorded = job.status.env_hash if job.status is not None else None
        if resolved is not None and resolved.status == "True" and recorded:
            # Written before (by us, or by the operator before a restart): the snapshot is
            # the one in <job>-env, even if a Secret it referenced is gone since; trusted
            # only with the hash our status recorded (docs/security.md, "<job>-env").
            existing = self.api.read_secret(job.namespace, name)
            if existing is not None:
                found = desired.trusted_env_snapshot(existing, job.uid, env_hash=recorded)
                if isinstance(found, str):
                    return self._untrusted_secret(job, memory, name, found)
                memory.secret_ready = True
                memory.env_hash = found.env_hash
                memory.env_condition = resolved
                return True

        def read(secret: str) -> Mapping[str, str] | None:
            found = self.api.read_secret(job.namespace, secret)
            return None if found is None else dict(found.get("data") or {})

        try:
            pairs = desired.resolve_env(job.job.spec.env, read)
        except desired.EnvResolutionError as exc:
            return self._env_problem(job, memory, exc.reason, str(exc))
        env_key, sealed = envfile.seal(pairs)
        body = desired.env_secret(job.job, job.uid, pairs, env_key, sealed)
        env_hash: str | None = sealed
        size = desired.secret_size(body)
        try:
            if size > desired.MAX_SECRET_BYTES:
                return self._secret_refused(job, memory, name, None, size)
            self.api.create_secret(job.namespace, body)
        except ApiError as exc:
            if namespace_terminating(exc):
                return None  # the job goes with its namespace
            if exc.code in (400, 403, 413, 422):  # refused as it is: say why, retry slowly
                return self._secret_refused(job, memory, name, exc.code, size)
            if exc.code != 409:
                # The API's message could quote what was sent: report the code only.
                raise ApiError(exc.code, exc.reason, f"creating Secret {name} failed") from None
            existing = self.api.read_secret(job.namespace, name)
            if existing is None:
                return None  # gone meanwhile: create it next time
            meta = existing.get("metadata") or {}
            labels = meta.get("labels") or {}
            if job.uid in _owner_uids(existing):
                # Ours from before a restart, or made by someone else to inject variables:
                # used only when it holds exactly the snapshot just resolved.
                found = desired.trusted_env_snapshot(existing, job.uid, env=pairs)
                if isinstance(found, str):
                    return self._untrusted_secret(job, memory, name, found)
                env_hash = found.env_hash
            else:
                ours = (
                    labels.get(names.MANAGED_BY_LABEL) == names.MANAGED_BY
                    and labels.get(names.JOB_NAME_LABEL) == job.name
                )
                if ours and _owner_uids(existing):
                    # Left by an earlier job of the same name: the garbage collector deletes
                    # it (its owner is gone). Wait for that; the operator may not delete
                    # Secrets (docs/security.md).
                    memory.env_condition = Condition(
                        type=ENV_RESOLVED,
                        status="False",
                        reason="WaitingForOldSecret",
                        message=(
                            f"Secret {name} of an earlier job of the same name is being "
                            "garbage-collected; the job starts once it is gone"
                        ),
                    )
                    return None
                return self._env_problem(
                    job,
                    memory,
                    "SecretNameTaken",
                    f"Secret {name} already exists and does not belong to this job; delete or "
                    "rename it (the operator writes the job's env snapshot there)",
                )
        else:
            memory.fresh_secret = body
        memory.secret_ready = True
        memory.env_hash = env_hash
        memory.env_condition = Condition(
            type=ENV_RESOLVED,
            status="True",
            reason="SnapshotWritten",
            message=f"{len(pairs)} variable(s) written to Secret {name} ({env_hash})",
        )
        return True

    def _env_problem(self, job: JobView, memory: JobMemory, reason: str, message: str) -> bool:
        """``EnvResolved=False`` with this reason and a Warning once: the job waits (False)."""
        memory.env_condition = Condition(
            type=ENV_RESOLVED, status="False", reason=reason, message=message
        )
        self._warn(job, memory, reason, message)
        return False

    def _secret_refused(
        self, job: JobView, memory: JobMemory, name: str, code: int | None, size: int
    ) -> bool:
        """``<job>-env`` refused by the API server (or over its size limit): a condition and
        a Warning naming the cause, instead of a silent retry."""
        return self._env_problem(job, memory, *desired.env_secret_refused(name, code, size))

    def _untrusted_secret(self, job: JobView, memory: JobMemory, name: str, why: str) -> bool:
        """An existing ``<job>-env`` the operator did not write (or cannot prove it did): the
        job waits, its workers never mount it, and the user is told (no value is named)."""
        return self._env_problem(
            job,
            memory,
            "UntrustedSecret",
            f"Secret {name} is owned by this job but is not the snapshot the operator wrote "
            f"({why}); someone who may create Secrets in this namespace made it. Delete it: "
            "the operator then writes the job's snapshot there and the job starts",
        )

    def _create_pods(self, job: JobView, steps: Plan, memory: JobMemory) -> tuple[list[str], bool]:
        """Create the planned pods in slow-start batches; (names created, whether one failed)."""
        todo = list(steps.create)
        created: list[str] = []
        batch = 1
        while todo:
            now, todo = todo[:batch], todo[batch:]
            bodies = [desired.worker_pod(job.job, job.uid, w, memory.env_hash or "") for w in now]
            results = list(self._pool.map(lambda b: self._create_pod(job.namespace, b), bodies))
            failures = [r for r in results if isinstance(r, ApiError)]
            for body, result in zip(bodies, results, strict=True):
                if isinstance(result, dict) and not result:
                    taken = self._name_taken(job, str(body["metadata"]["name"]))
                    if taken:
                        self._replica_failure(job, memory, "PodNameTaken", taken)
                        return created, True
                if isinstance(result, dict):
                    view = pod_view(result)
                    if view is not None:
                        memory.created[view.name] = (view, time.monotonic())
                        created.append(view.name)
            if failures:
                first = failures[0]
                if namespace_terminating(first):
                    return created, True  # the job goes with its namespace
                if first.code in (400, 403, 404, 422):  # the request is wrong: tell the user
                    self._replica_failure(
                        job, memory, "FailedCreate", f"creating worker pods: {first}"
                    )
                    return created, True
                raise first
            batch = min(batch * 2, MAX_CREATE_BATCH)
        return created, False

    def _create_pod(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any] | ApiError:
        try:
            return self.api.create_pod(namespace, body)
        except ApiError as exc:
            if exc.code == 409:
                return {}  # a pod of that name exists: _name_taken says whose
            return exc

    def _name_taken(self, job: JobView, name: str) -> str:
        """Why an existing pod named like a worker (create answered 409) is in the way, or ""
        when it is this job's own worker that the watch has not shown yet."""
        pod = self.api.read_pod(job.namespace, name)
        if pod is None:
            return ""  # gone meanwhile: the next reconcile creates it
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        if desired.controller_uid(pod) != job.uid:
            return (
                f"pod {name} already exists and does not belong to this job; delete or rename "
                "it (the operator needs that name for a worker)"
            )
        if labels.get(names.MANAGED_BY_LABEL) != names.MANAGED_BY:
            # Invisible to the operator's watch, so its outcome cannot be tracked: release its
            # finalizer now, or deleting it (or its namespace) would hang.
            uid = str(meta.get("uid") or "")
            if names.TRACKING_FINALIZER in (meta.get("finalizers") or ()):
                self._release(job.namespace, _unseen(name, uid, job.name), None)
            return (
                f"worker pod {name} lost its label {names.MANAGED_SELECTOR}, so the operator "
                "cannot see it; restore the label or delete the pod"
            )
        return ""

    def _replica_failure(self, job: JobView, memory: JobMemory, reason: str, message: str) -> None:
        memory.replica_condition = Condition(
            type=REPLICA_FAILURE, status="True", reason=reason, message=message
        )
        self._warn(job, memory, reason, message)  # the retry's status write carries it

    def _delete_pods(self, job: JobView, pods: Iterable[PodView], memory: JobMemory) -> None:
        for pod in pods:
            try:
                self.api.delete_pod(job.namespace, pod.name, pod.uid)
            except ApiError as exc:
                if exc.code not in (404, 409):  # gone, or replaced by a newer pod
                    raise
            memory.deleted[pod.uid] = time.monotonic()

    def _write_status(self, job: JobView, status: ExecuteJobStatus, memory: JobMemory) -> bool:
        """Write the status, preconditioned on the job version it was planned on (a stale
        cache gets 409 and is retried, never writes counts or conditions backwards)."""
        # On the version our last write produced while the watch has not shown it, else on
        # the cached one.
        pending = self._pending(job, memory)
        version = pending.version if pending is not None else job.resource_version
        try:
            answer = self.api.patch_job_status(
                job.namespace, job.name, status_patch(status), resource_version=version
            )
        except ApiError as exc:
            if exc.code == 404:
                return False
            raise  # 409: the cache was stale; the retry plans on the newer version
        new_version = str((answer.get("metadata") or {}).get("resourceVersion") or "")
        # Writes in a row before the watch shows the first: the cache may next show any of
        # the versions they produced, all older than this one.
        older = (pending.older if pending is not None else frozenset()) | {version}
        memory.written = StatusWrite(older, status, new_version)
        memory.last_write = self.clock()
        return True

    def _release(self, namespace: str, pod: PodView, memory: JobMemory | None) -> None:
        """Remove the tracking finalizer: the pod's outcome is counted (or never will be)."""
        try:
            self.api.remove_finalizer(namespace, pod.name, pod.uid, names.TRACKING_FINALIZER)
        except ApiError as exc:
            if exc.code == 403:
                # Retrying cannot help until the grant is back: say what happened and what to
                # do, and go on with the rest of the reconcile (the next one tries again).
                logger.error(
                    "[%s] %s: the operator may not patch pod %s any more (403), so its "
                    "finalizer %s stays and the pod cannot go. In namespace scope this is "
                    "its Role or RoleBinding deleted first by the namespace's deletion: "
                    "Kubernetes before 1.33 deletes in no set order (turn on the "
                    "OrderedNamespaceDeletion feature gate, or delete the ExecuteJobs before "
                    "their namespace; docs/install.md). Remove it by hand: kubectl patch pod "
                    "%s -n %s --type=json "
                    '-p \'[{"op":"remove","path":"/metadata/finalizers"}]\'',
                    namespace,
                    pod.job_name,
                    pod.name,
                    names.TRACKING_FINALIZER,
                    pod.name,
                    namespace,
                )
                return
            if exc.code not in (404, 409, 422):  # gone, or a newer pod of that name
                raise
        if memory is not None:
            memory.released[pod.uid] = time.monotonic()

    def _report_invalid(self, key: JobKey, body: Mapping[str, Any], message: str) -> None:
        """A job the models cannot parse (a newer CRD, a hand edit): one Warning Event and a
        ``Valid=False`` condition, instead of silence."""
        meta = body.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        memory = self._memory_for(key, uid)
        logger.error("[%s/%s] cannot reconcile: %s", key[0], key[1], message)
        if memory.invalid == message:
            return
        text = (
            f"the operator cannot read this ExecuteJob: {message}. Fix the field (or upgrade "
            "the operator if the CRD is newer than it)"
        )[:EVENT_MESSAGE_LIMIT]
        stamp = now_rfc3339(self.clock())
        conditions = [
            c
            for c in ((body.get("status") or {}).get("conditions") or [])
            if isinstance(c, dict) and c.get("type") != VALID
        ]
        conditions.append(
            {
                "type": VALID,
                "status": "False",
                "reason": "InvalidSpec",
                "message": text,
                "lastTransitionTime": stamp,
                "observedGeneration": meta.get("generation"),
            }
        )
        try:
            self.api.patch_job_status(key[0], key[1], {"conditions": conditions})
        except ApiError as exc:
            if exc.code != 404:
                raise
        self._post_event_on(key[0], key[1], uid, Event("Warning", "InvalidSpec", text))
        memory.invalid = message

    def _delete_job(self, job: JobView) -> None:
        try:
            self.api.delete_job(job.namespace, job.name, job.uid)
        except ApiError as exc:
            if exc.code not in (404, 409):
                raise

    def _post_event(self, job: JobView, event: Event) -> None:
        """A core/v1 Event on the job. Best effort: a failure is logged, not retried."""
        self._post_event_on(job.namespace, job.name, job.uid, event)

    def _post_event_on(self, namespace: str, name: str, uid: str, event: Event) -> None:
        """A core/v1 Event on the ExecuteJob ``namespace/name`` (``uid``): also for one the
        models cannot parse, which has no ``JobView``."""
        stamp = now_rfc3339(self.clock())
        message = event.message
        if len(message) > EVENT_MESSAGE_LIMIT:
            message = message[: EVENT_MESSAGE_LIMIT - 3] + "..."
        body = {
            "metadata": {"generateName": f"{name}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": name,
                "namespace": namespace,
                "uid": uid,
            },
            "type": event.type,
            "reason": event.reason,
            "message": message,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
            "source": {"component": names.MANAGED_BY},
            "reportingComponent": names.MANAGED_BY,
            "reportingInstance": self._instance,
        }
        if self._events is None:
            self._send_event(namespace, name, event.reason, body)
        else:
            self._events.submit(self._send_event, namespace, name, event.reason, body)

    def _send_event(self, namespace: str, name: str, reason: str, body: dict[str, Any]) -> None:
        try:
            self.api.create_event(namespace, body)
        except ApiError as exc:
            if namespace_terminating(exc):
                return
            logger.warning("[%s/%s] could not post event %s: %s", namespace, name, reason, exc)


def _awaiting_values(job: JobView) -> bool:
    """The client has created the job and is still writing the Secret of its values."""
    return AWAITING_VALUES_ANNOTATION in job.job.metadata.annotations


def _unseen(name: str, uid: str, job_name: str) -> PodView:
    """A minimal view of a pod the watch does not show (enough to release it)."""
    return PodView(
        name=name,
        uid=uid,
        job_name=job_name,
        owner_uid=None,
        index=0,
        attempt=0,
        phase="Pending",
        tracked=True,
    )


def _owner_uids(obj: Mapping[str, Any]) -> set[str]:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return {str(ref.get("uid")) for ref in refs}


def _names(names: Sequence[str]) -> str:
    return ", ".join(names) if len(names) <= 4 else f"{names[0]} ... {names[-1]} ({len(names)})"
