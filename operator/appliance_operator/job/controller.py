"""One reconcile of one ExecuteJob: plan (pure) then act (blocking API calls, in a thread).

The operator's watch caches (kopf indexes) are what it observes. They lag behind its own
writes by a few milliseconds, so :class:`~appliance_operator.job.memory.JobMemory` remembers,
per job, what this process just did (pods created or deleted, the status written:
:mod:`appliance_operator.expectations`) until the watch shows it; a reconcile running in that
window does not repeat the work. The memory is only an optimisation: after a restart it is
empty, the caches are complete (kopf lists everything before any handler runs) and
deterministic names plus create-if-absent make any repeated decision harmless.

A reconcile is a fixed sequence of steps, each deciding in a pure function and executing
here: the env Secret (:func:`appliance_operator.job.env.decide_env`), the plan
(:func:`appliance_operator.job.plan.plan`, once), the warm claim and its delivery (for a job
with ``spec.pool``), then the plan's writes (pods, status, finalizers, Events).
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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from appliance_operator import desired
from appliance_operator.job import env as envdecision
from appliance_operator.job.env import EnvFacts
from appliance_operator.job.memory import JobMemory, StatusWrite, backoff_delay
from appliance_operator.job.plan import (
    REPLICA_FAILURE,
    VALID,
    EnvKnowledge,
    Event,
    Inputs,
    Plan,
    needs_env,
    plan,
)
from appliance_operator.kubeapi import ApiError, KubeApi, namespace_terminating
from appliance_operator.metrics import Metrics
from appliance_operator.observe import JobView, PodView, job_view, pod_view
from appliance_operator.pool.controller import (
    CodeProblem,
    PoolController,
    PoolSnapshot,
    pool_uid_of,
)
from appliance_operator.pool.plan import POOL_CLAIM
from cerebras_appliance.contract import envfile, names
from cerebras_appliance.contract.api import KIND, Condition, ExecuteJobStatus, InvalidJobError
from cerebras_appliance.contract.names import API_VERSION, AWAITING_VALUES_ANNOTATION
from cerebras_appliance.contract.status import now_rfc3339

__all__ = [
    "AWAITING_STATUS_DELAY",
    "MAX_CREATE_BATCH",
    "Controller",
    "JobKey",
    "namespace_terminating",
    "status_patch",
]

logger = logging.getLogger("appliance_operator")

JobKey = tuple[str, str]  # (namespace, name)

#: Pods of one job created in parallel batches of 1, 2, 4, ... (slow start: a template the
#: API server refuses costs one failed call, not `replicas` of them).
MAX_CREATE_BATCH = 16
EVENT_MESSAGE_LIMIT = 1024
#: A new job's client normally releases it within milliseconds: its first status (Pending,
#: AwaitingValues) is written only if it is still awaiting its values after this long, so
#: the usual submit costs the API server no write and the release no wait behind one.
AWAITING_STATUS_DELAY = 1.0


def status_patch(status: ExecuteJobStatus) -> dict[str, Any]:
    """The whole status as a merge patch: absent optional fields are deleted (null)."""
    doc = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    for name, info in ExecuteJobStatus.model_fields.items():
        key = info.alias or name
        if key not in doc:
            doc[key] = None
    return doc


@dataclass
class WarmOutcome:
    """What the warm step did: the plan with the workers left to start cold, the workers
    it claimed, whether a delivery failed, and what to log."""

    steps: Plan
    claimed: list[str] = dataclasses.field(default_factory=list)
    problem: bool = False
    summary: str = ""


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
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.pools = pools
        self.metrics = metrics
        self.clock = clock
        #: The clock of this process's expectations and delays (injected by tests to let
        #: an expectation expire).
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._memory: dict[JobKey, JobMemory] = {}
        # Runs a job's pod creates, claim patches and deliveries in parallel.
        self._executor = ThreadPoolExecutor(max_workers=create_workers, thread_name_prefix="create")
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
        self._executor.shutdown(wait=False, cancel_futures=True)
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

    def pool_claim(self, key: JobKey) -> Condition | None:
        """The ``PoolClaim`` condition this process keeps for the job (what each of its
        status writes carries), or None. Read-only: for tests and debugging."""
        with self._lock:
            memory = self._memory.get(key)
        return memory.pool.condition if memory is not None else None

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
                memory.retries.failed()
                raise
            finally:
                memory.env.fresh_secret = None
        finally:
            self.metrics.reconcile_seconds.observe(time.perf_counter() - started)

    def retry_delay(self, key: JobKey) -> float:
        with self._lock:
            memory = self._memory.get(key)
        return memory.retries.delay() if memory is not None else backoff_delay(1)

    def _inputs(self, job: JobView, pods: Sequence[PodView], memory: JobMemory) -> Inputs:
        writes = memory.writes
        observed = writes.merge(pods, self.monotonic())
        pending = writes.pending(job.resource_version)
        if pending is None:
            # The cache shows our last write, or a later version, which holds it: every
            # status write is preconditioned on the version it was planned on.
            writes.status = None
        return Inputs(
            job=job,
            pods=observed,
            env=_env_knowledge(memory),
            now=self.clock(),
            last_status_write=writes.last_status_write,
            previous=pending.status if pending is not None else None,
            replica_failure=memory.replica_failure,
            pool_condition=memory.pool.condition,
        )

    def _reconcile(
        self,
        job: JobView,
        pods: Sequence[PodView],
        memory: JobMemory,
        pool: PoolSnapshot | None = None,
    ) -> float | None:
        # The env Secret first, when the job's workers need it and it is not known to be
        # there: the plan (once) then sees the outcome.
        inputs = self._inputs(job, pods, memory)
        env_problem = False
        if needs_env(inputs):
            env_problem = not self._ensure_secret(job, memory)
            inputs = dataclasses.replace(inputs, env=_env_knowledge(memory))
        steps = plan(inputs)
        warm = self._warm_step(job, pods, steps, memory, pool)
        steps = warm.steps
        created, create_failed = self._create_pods(job, steps, memory)
        created = [*warm.claimed, *created]
        problem = env_problem or warm.problem or create_failed
        failing = memory.replica_failure
        if created and not create_failed and failing is not None and failing.status == "True":
            memory.replica_failure = Condition(
                type=REPLICA_FAILURE, status="False", reason="PodsCreated", message=""
            )
        self._delete_pods(job, steps.delete, memory)
        steps = self._defer_awaiting_status(job, steps, memory)
        done = self._execute(job, steps, memory, created, warm.summary)
        if done is None:
            return None  # the job is gone
        if done:
            logger.info("[%s/%s] %s", job.namespace, job.name, "; ".join(done))
        self.metrics.jobs.set(job.uid, steps.phase)
        self._observe_env_applied(job, pods, steps, memory)
        if problem:
            retry = memory.retries.failed()
            return min(retry, steps.requeue_after or retry)
        memory.retries.reset()
        return steps.requeue_after

    def _execute(
        self, job: JobView, steps: Plan, memory: JobMemory, created: list[str], warm: str
    ) -> list[str] | None:
        """The plan's writes after the pods': the status, then (only once the counts are
        stored) the finalizers, the Events, the job's deletion. What was done, for the log;
        None when the job is gone."""
        done: list[str] = []
        if created:
            done.append(f"created {len(created)} pod(s)" + (f" ({warm})" if warm else ""))
        elif warm:
            done.append(warm)
        if steps.delete:
            done.append(f"deleted {len(steps.delete)} pod(s)")
        if steps.status is not None and not self._write_status(job, steps.status, memory):
            return None
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
                self.post_event(job, event)
        if created:
            self.post_event(
                job, Event("Normal", "CreatedWorkers", f"created worker pods: {_names(created)}")
            )
        if steps.delete_job:
            self._delete_job(job)
            done.append("deleted the job (ttlSecondsAfterFinished)")
        return done

    def _defer_awaiting_status(self, job: JobView, steps: Plan, memory: JobMemory) -> Plan:
        """No first status write while a new job's client is still writing its values (at
        most :data:`AWAITING_STATUS_DELAY`); written then if it still waits."""
        if not _awaiting_values(job) or job.status is not None or steps.status is None:
            return steps
        now = self.monotonic()
        if memory.env.awaiting_since is None:
            memory.env.awaiting_since = now
        left = AWAITING_STATUS_DELAY - (now - memory.env.awaiting_since)
        if left <= 0:
            return steps
        due = left if steps.requeue_after is None else min(left, steps.requeue_after)
        return dataclasses.replace(steps, status=None, events=(), requeue_after=due)

    # -- the env Secret ------------------------------------------------------------------

    def _ensure_secret(self, job: JobView, memory: JobMemory) -> bool:
        """Make the calls :func:`~appliance_operator.job.env.decide_env` asks for, then
        record its outcome; True when ``<job>-env`` is in place."""
        facts = EnvFacts(job)
        while True:
            step = envdecision.decide_env(facts)
            if isinstance(step, envdecision.ReadRecorded):
                read = self.api.read_secret(job.namespace, step.name)
                facts = dataclasses.replace(facts, recorded=envdecision.Read(read))
            elif isinstance(step, envdecision.Resolve):
                facts = dataclasses.replace(facts, resolved=self._resolve(job))
            elif isinstance(step, envdecision.Create):
                facts = dataclasses.replace(facts, created=self._create_secret(job, step.body))
            elif isinstance(step, envdecision.ReadExisting):
                read = self.api.read_secret(job.namespace, step.name)
                facts = dataclasses.replace(facts, existing=envdecision.Read(read))
            else:
                return self._record_env(job, memory, step)

    def _resolve(self, job: JobView) -> envdecision.Resolved:
        def read(secret: str) -> Mapping[str, str] | None:
            found = self.api.read_secret(job.namespace, secret)
            return None if found is None else dict(found.get("data") or {})

        try:
            pairs = desired.resolve_env(job.job.spec.env, read)
        except desired.EnvResolutionError as exc:
            return envdecision.Resolved(exc)
        return envdecision.Resolved(pairs, envfile.new_key())

    def _create_secret(self, job: JobView, body: Mapping[str, Any]) -> envdecision.Created:
        try:
            self.api.create_secret(job.namespace, body)
        except ApiError as exc:
            return envdecision.Created(exc)
        return envdecision.Created()

    def _record_env(self, job: JobView, memory: JobMemory, outcome: envdecision.EnvOutcome) -> bool:
        """Keep the env decision's outcome in the job's memory (a Warning once for a
        problem); True when the workers may start."""
        env = memory.env
        if isinstance(outcome, envdecision.EnvRetry):
            raise outcome.error
        if isinstance(outcome, envdecision.EnvReady):
            env.secret_ready = True
            env.env_hash = outcome.env_hash
            env.condition = outcome.condition
            env.fresh_secret = outcome.fresh
            return True
        if isinstance(outcome, envdecision.EnvFail):
            env.condition = outcome.condition
            self._warn(job, memory, outcome.reason, outcome.message)
            return False
        if outcome.condition is not None:
            env.condition = outcome.condition
        return False

    # -- warm pools ----------------------------------------------------------------------

    def _warm_step(
        self,
        job: JobView,
        pods: Sequence[PodView],
        steps: Plan,
        memory: JobMemory,
        pool: PoolSnapshot | None,
    ) -> WarmOutcome:
        """For a job with ``spec.pool``: claim idle pool pods for the workers the plan
        needs (the rest start cold), and deliver the snapshot to the adopted ones once
        ``<job>-env`` exists. Idle pool pods are adopted as soon as the job exists, while its
        client still writes the values (they get the snapshot once ``<job>-env`` exists),
        not for a job whose env cannot be resolved (it could wait forever)."""
        outcome = WarmOutcome(steps)
        if self.pools is None or not job.job.spec.pool:
            return outcome
        claiming = (memory.env.secret_ready or _awaiting_values(job)) and not (
            memory.pool.code_problem  # its code cannot be sent: every worker starts cold
        )
        if steps.needed and claiming:
            began = time.perf_counter()
            outcome.steps, outcome.claimed = self._claim_step(job, steps, memory, pool)
            if outcome.claimed:
                spent = (time.perf_counter() - began) * 1e3
                outcome.summary = f"claimed {len(outcome.claimed)} in {spent:.0f} ms"
        if memory.env.secret_ready:
            began = time.perf_counter()
            delivered, trouble, first = self._deliver(job, pods, memory, pool)
            outcome.problem = trouble
            if delivered:
                spent = (time.perf_counter() - began) * 1e3
                outcome.summary += (
                    f"{', ' if outcome.summary else ''}delivered {delivered} in {spent:.0f} ms "
                    f"(first answer after {first * 1e3:.0f} ms)"
                )
        return outcome

    def _claim_step(
        self, job: JobView, steps: Plan, memory: JobMemory, pool: PoolSnapshot | None
    ) -> tuple[Plan, list[str]]:
        """Claim for the needed workers not decided yet; (the plan creating only those left
        cold once the values are there, the adopted pods' names). A claim made while the job
        awaits its values is decided once: its cold rest is remembered until they are."""
        decided = memory.pool.decided_cold
        undecided = [w for w in steps.needed if (w.index, w.attempt) not in decided]
        rest, claimed = self._claim(job, undecided, memory, pool) if undecided else ((), [])
        cold = {(w.index, w.attempt) for w in rest} | decided
        if memory.env.secret_ready:
            steps = dataclasses.replace(
                steps, create=tuple(w for w in steps.needed if (w.index, w.attempt) in cold)
            )
            memory.pool.decided_cold = frozenset()
        else:
            memory.pool.decided_cold = frozenset(cold)
        return steps, claimed

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
        choice, adopted = self.pools.claim(job, needed, pool, run=self._executor.map)
        # PoolClaim says how the job's workers started: a replacement claimed all warm later
        # does not hide that the job started partly cold (or was refused warm workers).
        earlier, latest = memory.pool.condition, choice.condition
        worse = latest is not None and latest.reason != "Claimed"
        if earlier is None or earlier.reason == "Claimed" or worse:
            memory.pool.condition = latest
        now = self.monotonic()
        for view in adopted:
            memory.writes.created.expect(view.name, view, now)
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
        observed = memory.writes.merge(pods, self.monotonic())
        todo = [
            p
            for p in observed
            if p.owner_uid == job.uid and p.warm and not p.confirmed and p.active and p.ip
        ]
        if not todo:
            return 0, False, 0.0
        if memory.pool.code_problem:  # adopted before the problem was seen: replaced cold
            self._delete_pods(job, todo, memory)
            return 0, True, 0.0
        prepared = self.pools.prepare_delivery(
            job, pool_uid_of(pool), memory.env.env_hash or "", memory.env.fresh_secret
        )
        if isinstance(prepared, CodeProblem):
            self._code_not_delivered(job, todo, memory, prepared)
            return 0, True, 0.0
        if isinstance(prepared, str):
            logger.warning("[%s/%s] cannot deliver claims: %s", job.namespace, job.name, prepared)
            return 0, True, 0.0
        pools = self.pools
        pool_uid = pool_uid_of(pool)
        began = time.perf_counter()

        def deliver(pod: PodView) -> tuple[str, float]:
            issue = pools.deliver_one(job, pod, prepared, pool_uid)
            return issue, time.perf_counter() - began

        answers = list(self._executor.map(deliver, todo))
        problems = [issue for issue, _ in answers]
        first = min(seconds for _, seconds in answers)
        now = self.monotonic()
        failed = False
        for pod, issue in zip(todo, problems, strict=True):
            if not issue:
                memory.writes.created.expect(
                    pod.name, dataclasses.replace(pod, confirmed=True), now
                )
                memory.writes.confirmed.expect(pod.uid, None, now)  # until the watch shows it
                continue
            failed = True
            self._warn(job, memory, "ClaimNotDelivered", f"worker pod {pod.name}: {issue}")
            self._delete_pods(job, [pod], memory)
        return sum(1 for issue in problems if not issue), failed, first

    def _code_not_delivered(
        self, job: JobView, todo: Sequence[PodView], memory: JobMemory, problem: CodeProblem
    ) -> None:
        """The job's code cannot be sent (a Secret missing, unreadable, not the job's, or not
        the bundle ``spec.code`` names): nothing is sent, the adopted workers are deleted and
        the job claims no more, so the plan replaces them cold, as after a failed delivery.
        Not the pool's fault: the pool stays claimable for other jobs. ``PoolClaim=False``
        and a Warning say why, naming the Secret (never a byte of the code). A cold worker
        mounts the same Secrets: a missing one shows on its pod, a wrong one is refused by
        the worker's own hash check before anything is unpacked."""
        message = f"{problem.message}; the workers start cold"
        memory.pool.code_problem = True
        memory.pool.condition = Condition(
            type=POOL_CLAIM, status="False", reason=problem.reason, message=message
        )
        self._warn(job, memory, problem.reason, message)
        self._delete_pods(job, todo, memory)

    def _observe_env_applied(
        self, job: JobView, pods: Sequence[PodView], steps: Plan, memory: JobMemory
    ) -> None:
        """Job created -> every worker confirmed the env, once per job, warm or cold."""
        status = steps.status
        if memory.env.observed or status is None or status.replicas == 0:
            return
        if status.ready_replicas < status.replicas:
            return
        memory.env.observed = True
        before = job.status
        if before is not None and before.ready_replicas >= before.replicas > 0:
            return  # already all ready before this process saw it (a restart)
        observed = memory.writes.merge(pods, self.monotonic())
        mine = [p for p in observed if p.owner_uid == job.uid and p.active]
        start = "warm" if mine and all(p.warm for p in mine) else "cold"
        seconds = (self.clock() - job.created).total_seconds()
        self.metrics.env_applied_seconds.labels(start).observe(max(seconds, 0.0))

    # -- actions -------------------------------------------------------------------------

    def _warn(self, job: JobView, memory: JobMemory, reason: str, message: str) -> None:
        """A Warning event, once per distinct problem (retries do not repeat it)."""
        logger.warning("[%s/%s] %s: %s", job.namespace, job.name, reason, message)
        if memory.warnings.first(reason, message):
            self.post_event(job, Event("Warning", reason, message))

    def _create_pods(self, job: JobView, steps: Plan, memory: JobMemory) -> tuple[list[str], bool]:
        """Create the planned pods in slow-start batches; (names created, whether one failed)."""
        todo = list(steps.create)
        created: list[str] = []
        batch = 1
        while todo:
            now, todo = todo[:batch], todo[batch:]
            bodies = [
                desired.worker_pod(job.job, job.uid, w, memory.env.env_hash or "") for w in now
            ]
            results = list(self._executor.map(lambda b: self._create_pod(job.namespace, b), bodies))
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
                        memory.writes.created.expect(view.name, view, self.monotonic())
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
        memory.replica_failure = Condition(
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
            memory.writes.deleted.expect(pod.uid, None, self.monotonic())

    def _write_status(self, job: JobView, status: ExecuteJobStatus, memory: JobMemory) -> bool:
        """Write the status, preconditioned on the job version it was planned on (a stale
        cache gets 409 and is retried, never writes counts or conditions backwards)."""
        # On the version our last write produced while the watch has not shown it, else on
        # the cached one.
        pending = memory.writes.pending(job.resource_version)
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
        memory.writes.status = StatusWrite(older, status, new_version)
        memory.writes.last_status_write = self.clock()
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
            memory.writes.released.expect(pod.uid, None, self.monotonic())

    def _report_invalid(self, key: JobKey, body: Mapping[str, Any], message: str) -> None:
        """A job the models cannot parse (a newer CRD, a hand edit): one Warning Event and a
        ``Valid=False`` condition, instead of silence."""
        meta = body.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        memory = self._memory_for(key, uid)
        logger.error("[%s/%s] cannot reconcile: %s", key[0], key[1], message)
        if memory.warnings.invalid == message:
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
        memory.warnings.invalid = message

    def _delete_job(self, job: JobView) -> None:
        try:
            self.api.delete_job(job.namespace, job.name, job.uid)
        except ApiError as exc:
            if exc.code not in (404, 409):
                raise

    def post_event(self, job: JobView, event: Event) -> None:
        """A core/v1 Event on the job. Best effort: a failure is logged, not retried; with
        ``background_events``, posted on the events thread in order."""
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


def _env_knowledge(memory: JobMemory) -> EnvKnowledge:
    env = memory.env
    return EnvKnowledge(
        secret_ready=env.secret_ready, condition=env.condition, env_hash=env.env_hash
    )


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


def _names(names: Sequence[str]) -> str:
    return ", ".join(names) if len(names) <= 4 else f"{names[0]} ... {names[-1]} ({len(names)})"
