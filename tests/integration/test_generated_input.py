"""Generated input against the real API server, with the operator running (issue 21).

About 1,000 ExecuteJobs and WorkerPools, generated from the CRDs' own schemas and mutated
(tests/data/generated_input.py: boundary and huge numbers, numbers as text, NUL, odd unicode,
over-long and reserved names, the operator's own label keys, unknown fields, lists past their
limits), always the same ones (a fixed hypothesis seed). Each is:

1. judged by the client (``parse_job`` / ``parse_pool``, the pydantic models) and by the API
   server (a server-side dry-run create, ``fieldValidation=Strict`` as ``kubectl apply``
   sends it): the two must agree, both ways, and every refusal must name a field;
2. for a subset of the accepted ones (:data:`REAL_JOBS` jobs, :data:`REAL_POOLS` pools, with
   unique names and at most :data:`MAX_REAL_REPLICAS` replicas so the run stays small),
   created for real with the operator running: each gets a status for its generation, the
   operator's log shows no crash (no traceback), and no job or pool ever has more live pods
   than it asks for, watched over several of the operator's resyncs; deleting them all then
   releases every pod's tracking finalizer.

The counts and the time are printed at the end of the run (and written to
``.kind/generated-input.txt``).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import generated_input as gen  # tests/data, on pytest's pythonpath
import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from appliance_operator import desired
from appliance_operator.testing import OperatorProcess
from cerebras_appliance.contract import names
from cerebras_appliance.contract.api import InvalidJobError, parse_job, parse_pool

if TYPE_CHECKING:
    from support.cluster import Cluster, WaitUntil

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
REPORT = REPO / ".kind" / "generated-input.txt"
#: How many of each kind are generated (duplicates are dropped: 1,025 remain, at least 1,000
#: is asserted).
JOBS, POOLS = 720, 340
MIN_OBJECTS = 1000
REAL_JOBS, REAL_POOLS = 100, 40
MAX_REAL_REPLICAS = 2
RESYNC_SECONDS = 2
#: Watch the pod counts this long after everything settled: several resyncs of every object.
WATCH_SECONDS = 3 * RESYNC_SECONDS + 1
PARSERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "ExecuteJob": parse_job,
    "WorkerPool": parse_pool,
}
#: What the operator writes when a reconcile raised (handlers.py): never expected here.
CRASH_MARKS = ("Traceback", "reconcile crashed", "pool reconcile failed")


@dataclass
class Judged:
    obj: dict[str, Any]
    client_errors: list[str] | None  # None: accepted
    server_error: str | None = None  # None: accepted
    server_fields: set[str] = field(default_factory=set)

    @property
    def kind(self) -> str:
        return str(self.obj["kind"])

    @property
    def client_ok(self) -> bool:
        return self.client_errors is None

    @property
    def server_ok(self) -> bool:
        return self.server_error is None

    def describe(self) -> str:
        return (
            f"{json.dumps(self.obj, ensure_ascii=True)[:1500]}\n"
            f"  client: {self.client_errors or 'accepted'}\n"
            f"  API server: {self.server_error or 'accepted'}"
        )


def judge_client(obj: dict[str, Any]) -> list[str] | None:
    try:
        PARSERS[obj["kind"]](obj)
    except InvalidJobError as exc:
        return exc.errors
    return None


def create(
    custom: client.CustomObjectsApi, namespace: str, obj: dict[str, Any], *, dry_run: bool
) -> str | None:
    """None when the API server accepts ``obj``, else its refusal's message (422/400)."""
    plural = gen.KINDS[obj["kind"]]
    extra = {"dry_run": "All"} if dry_run else {}
    try:
        custom.create_namespaced_custom_object(
            gen.GROUP,
            gen.VERSION,
            namespace,
            plural,
            {**obj, "metadata": {**obj["metadata"], "namespace": namespace}},
            field_validation="Strict",
            **extra,
        )
    except ApiException as exc:
        if exc.status not in (400, 422):
            raise
        try:
            return str(json.loads(exc.body)["message"])
        except (TypeError, ValueError, KeyError):
            return str(exc.body)
    return None


class Operator(OperatorProcess):
    def __init__(self, kubeconfig: str, log_path: Path, namespace: str) -> None:
        super().__init__(
            kubeconfig,
            log_path,
            [
                "--namespace",
                namespace,
                "--metrics-port",
                "0",
                "--resync-seconds",
                str(RESYNC_SECONDS),
            ],
        )


@pytest.fixture
def operator(cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[Operator]:
    cluster.apply_crds()
    op = Operator(cluster.kubeconfig, tmp_path / "operator.log", namespace)
    op.start()
    try:
        yield op
    finally:
        op.stop()


def _real(judged: list[Judged], kind: str, count: int, prefix: str) -> list[dict[str, Any]]:
    """The first ``count`` accepted objects of ``kind``, renamed ``<prefix>-<i>`` (distinct,
    valid) with at most MAX_REAL_REPLICAS replicas."""
    out = []
    for item in (j for j in judged if j.kind == kind and j.client_ok and j.server_ok):
        obj = json.loads(json.dumps(item.obj))
        obj["metadata"] = {"name": f"{prefix}-{len(out)}"}
        replicas = obj["spec"].get("replicas", 1)
        obj["spec"]["replicas"] = min(int(replicas), MAX_REAL_REPLICAS)
        out.append(obj)
        if len(out) == count:
            break
    return out


def _settled(obj: dict[str, Any] | None) -> bool:
    if obj is None:
        return False
    status = obj.get("status") or {}
    return bool(status.get("observedGeneration") == obj["metadata"]["generation"])


def _live(pod: Any) -> bool:
    return pod.metadata.deletion_timestamp is None and pod.status.phase not in (
        "Succeeded",
        "Failed",
    )


def _too_many_pods(
    core: client.CoreV1Api, namespace: str, jobs: dict[str, int], pools: dict[str, int]
) -> list[str]:
    """Jobs with more live workers than replicas; pools with more idle pods than replicas."""
    by_job: Counter[str] = Counter()
    by_pool: Counter[str] = Counter()
    for pod in core.list_namespaced_pod(namespace).items:
        labels = pod.metadata.labels or {}
        if not _live(pod):
            continue
        if names.JOB_NAME_LABEL in labels:
            by_job[labels[names.JOB_NAME_LABEL]] += 1
        elif labels.get(names.POOL_STATE_LABEL) == desired.IDLE:
            by_pool[labels.get(names.POOL_NAME_LABEL, "")] += 1
    problems = [
        f"job {n}: {c} live pods > {jobs.get(n, 0)}"
        for n, c in by_job.items()
        if c > jobs.get(n, 0)
    ]
    problems += [
        f"pool {n}: {c} idle pods > {pools.get(n, 0)}"
        for n, c in by_pool.items()
        if c > pools.get(n, 0)
    ]
    return problems


def test_generated_objects_are_refused_naming_a_field_or_settle_without_a_crash(
    cluster: Cluster, namespace: str, operator: Operator, wait_until: WaitUntil
) -> None:
    t0, cpu0 = time.monotonic(), time.process_time()
    objects = gen.generate("ExecuteJob", JOBS) + gen.generate("WorkerPool", POOLS)
    generated_s = time.monotonic() - t0
    assert len(objects) >= MIN_OBJECTS
    custom = client.CustomObjectsApi(cluster.api_client)
    core = client.CoreV1Api(cluster.api_client)

    # 1. The client and the API server judge every object (dry-run: nothing is stored).
    judged = [Judged(obj, judge_client(obj)) for obj in objects]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda j: create(custom, namespace, j.obj, dry_run=True), judged))
    for item, answer in zip(judged, answers, strict=True):
        item.server_error = answer
        item.server_fields = gen.fields_named(answer or "")
    judged_s = time.monotonic() - t0 - generated_s

    disagree = [j for j in judged if j.client_ok != j.server_ok]
    assert not disagree, f"{len(disagree)} object(s) judged differently:\n" + "\n".join(
        j.describe() for j in disagree[:5]
    )
    unnamed = [j for j in judged if not j.server_ok and not j.server_fields]
    assert not unnamed, "refusals naming no field:\n" + "\n".join(j.describe() for j in unnamed[:5])
    vague = [
        j
        for j in judged
        if j.client_errors and not all(e.startswith(("spec", "metadata")) for e in j.client_errors)
    ]
    assert not vague, "client errors naming no field:\n" + "\n".join(
        j.describe() for j in vague[:5]
    )

    # 2. A real subset, with the operator running.
    pools = _real(judged, "WorkerPool", REAL_POOLS, "gen-pool")
    jobs = _real(judged, "ExecuteJob", REAL_JOBS, "gen-job")
    for index, job in enumerate(jobs):
        if "pool" in job["spec"]:  # claim from a real (if never warm: all Pending) pool
            job["spec"]["pool"] = pools[index % len(pools)]["metadata"]["name"]
    real = pools + jobs
    with ThreadPoolExecutor(max_workers=8) as pool:
        refused = [
            (obj, error)
            for obj, error in zip(
                real,
                pool.map(lambda o: create(custom, namespace, o, dry_run=False), real),
                strict=True,
            )
            if error is not None
        ]
    assert not refused, refused[:3]
    replicas = {
        kind: {o["metadata"]["name"]: int(o["spec"]["replicas"]) for o in real if o["kind"] == kind}
        for kind in gen.KINDS
    }
    ttl = {o["metadata"]["name"] for o in jobs if "ttlSecondsAfterFinished" in o["spec"]}

    def unsettled() -> list[str]:
        left = []
        for kind, plural in gen.KINDS.items():
            stored = {
                o["metadata"]["name"]: o
                for o in custom.list_namespaced_custom_object(
                    gen.GROUP, gen.VERSION, namespace, plural
                )["items"]
            }
            for name in replicas[kind]:
                if name not in stored and name in ttl:
                    continue  # finished and deleted by its ttlSecondsAfterFinished
                if not _settled(stored.get(name)):
                    left.append(f"{kind} {name}")
        # Counted on every poll; kept, since wait_until reads a raising probe as "not yet".
        runaway.extend(
            _too_many_pods(core, namespace, replicas["ExecuteJob"], replicas["WorkerPool"])
        )
        return left

    runaway: list[str] = []
    wait_until(
        lambda: runaway or not unsettled(), timeout=120, interval=1, what="every status written"
    )
    assert not runaway, runaway[:10]
    operator.check_alive()
    settled_s = time.monotonic() - t0 - generated_s - judged_s
    # Nothing may run away after that: several resyncs of every object, counted each time.
    watch_until = time.monotonic() + WATCH_SECONDS
    rounds = 0
    while time.monotonic() < watch_until:
        assert not unsettled(), "an object lost its status"
        assert not runaway, runaway[:10]
        rounds += 1
    operator.check_alive()
    log = operator.log()
    crashes = [line for line in log.splitlines() if any(m in line for m in CRASH_MARKS)]
    assert not crashes, "\n".join(crashes[:20]) + "\n" + log[-4000:]

    pods = [p for p in core.list_namespaced_pod(namespace).items if _live(p)]
    pool_pods = sum(1 for p in pods if names.POOL_NAME_LABEL in (p.metadata.labels or {}))
    assert pods, "no pod was created: nothing was checked for a runaway"

    # 3. Deleting them all releases every pod (the tracking finalizer is removed).
    for plural in gen.KINDS.values():
        custom.delete_collection_namespaced_custom_object(gen.GROUP, gen.VERSION, namespace, plural)

    def tracked() -> list[str]:
        return [
            p.metadata.name
            for p in core.list_namespaced_pod(namespace).items
            if names.TRACKING_FINALIZER in (p.metadata.finalizers or [])
        ]

    wait_until(lambda: not tracked(), timeout=90, interval=1, what="finalizers released")
    total_s, cpu_s = time.monotonic() - t0, time.process_time() - cpu0

    by_kind = Counter(j.kind for j in judged)
    refused_n = Counter(j.kind for j in judged if not j.server_ok)
    fields = Counter(sorted(j.server_fields)[0].split("[")[0] for j in judged if j.server_fields)
    lines = [
        f"generated input (issue 21): {len(judged)} objects tried "
        f"({by_kind['ExecuteJob']} ExecuteJobs, {by_kind['WorkerPool']} WorkerPools)",
        f"  refused at admission: {sum(refused_n.values())} "
        f"({refused_n['ExecuteJob']} jobs, {refused_n['WorkerPool']} pools), each naming a "
        "field; the client refused exactly the same ones",
        f"  accepted: {len(judged) - sum(refused_n.values())}; created with the operator "
        f"running: {len(real)} ({len(jobs)} jobs, {len(pools)} pools), all settled, no crash, "
        f"never more pods than asked ({rounds} counts over {WATCH_SECONDS}s; {len(pods)} live "
        f"pods at the end, {pool_pods} of them pools)",
        f"  time: {total_s:.1f}s (generate {generated_s:.1f}s, judge {judged_s:.1f}s, "
        f"settle {settled_s:.1f}s; the test process's CPU: {cpu_s:.1f}s)",
        f"  most refused fields: {fields.most_common(8)}",
    ]
    text = "\n".join(lines)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(text + "\n")
    print(text)
