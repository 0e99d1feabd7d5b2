"""The operator on a real kube-apiserver with kwok fake nodes: latency, throughput, memory and
API calls per job, each against a baseline measured in the same run.

(a) Latency: ExecuteJob created -> all its worker pods created and its status written, seen
    through a watch. Baseline: this script making the same API calls (create the job, the
    env Secret, the pods, one status patch) with the same client and the same bodies, seen
    through the same watch; once with the operator's slow-start parallel pod creation, once
    strictly sequential. Samples alternate operator/baseline; medians are compared.
(b) Throughput: JOBS jobs x REPLICAS workers created at once (8 client threads) until every
    job reports all workers ready; the operator's peak RSS (VmHWM) against its idle RSS
    measured in the same run, and against ``--rss-target`` (150 MiB). Baseline: the same
    creates done by this script, until all its pods are Ready.
(c) API calls per job, from the operator's own metrics (every call it makes is counted),
    against the target: 1 Secret + REPLICAS pods + at most 3 status writes.

Usage::

    python bench/bench_operator.py                 # 200 jobs x 8 workers
    python bench/bench_operator.py --quick         # 20 jobs x 8, fewer samples
    python bench/bench_operator.py --kubeconfig PATH   # an existing cluster (else hack/cluster)

Clean-up (``clean_up``): every pod is marked deleted (grace 0, one deletecollection per
namespace) and this script removes the finalizers itself (no operator runs any more), then
deletes the jobs and namespaces; each wait is bounded. With ``APPLIANCE_OPERATOR_CLUSTER_DIR``
the control plane is its own (state dir, free ports), apart from the integration tests'.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config, watch

from appliance_operator import desired
from appliance_operator.job.controller import MAX_CREATE_BATCH, status_patch
from appliance_operator.kubeapi import KubeApi
from appliance_operator.metrics import Metrics
from appliance_operator.observe import job_view
from appliance_operator.testing import OperatorProcess, free_port, http_get
from cerebras_appliance.contract import envfile
from cerebras_appliance.contract.api import PLURAL
from cerebras_appliance.contract.names import GROUP, VERSION
from cerebras_appliance.contract.status import Observation, compute_status

REPO = Path(__file__).resolve().parents[1]
KWOK_TEMPLATE = {
    "nodeSelector": {"type": "kwok"},
    "tolerations": [
        {"key": "kwok.x-k8s.io/node", "operator": "Equal", "value": "fake", "effect": "NoSchedule"}
    ],
}
BENCH_NODE_LABEL = "appliance.dev/bench"
PODS_PER_NODE = 1000


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# -- cluster -----------------------------------------------------------------------------------


def ensure_cluster(kubeconfig: str | None) -> str:
    if kubeconfig:
        return kubeconfig
    state = Path(os.environ.get("APPLIANCE_OPERATOR_CLUSTER_DIR") or REPO / ".cluster")
    log(f"starting (or reusing) the local cluster in {state}")
    subprocess.run(
        ["bash", str(REPO / "hack" / "cluster" / "up.sh")],
        env={**os.environ, "NODES": "kwok", "KWOK_NODES": os.environ.get("KWOK_NODES", "2")},
        check=True,
        stdout=sys.stderr,
    )
    return str(state / "kubeconfig")


def apply_crd(api: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(api)
    crd = yaml.safe_load((REPO / "crds" / "executejobs.yaml").read_text())
    name = crd["metadata"]["name"]
    try:
        current = ext.read_custom_resource_definition(name)
        crd["metadata"]["resourceVersion"] = current.metadata.resource_version
        ext.replace_custom_resource_definition(name, crd)
    except client.ApiException as exc:
        if exc.status != 404:
            raise
        ext.create_custom_resource_definition(crd)
    until(lambda: _established(ext, name), 60, "the CRD to be established")


def _established(ext: client.ApiextensionsV1Api, name: str) -> bool:
    conditions = ext.read_custom_resource_definition(name).status.conditions or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)


def until(probe: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@contextmanager
def bench_nodes(core: client.CoreV1Api, pods: int) -> Iterator[None]:
    """Extra kwok fake nodes with room for the benchmark's pods (removed afterwards)."""
    count = max(1, math.ceil(pods / PODS_PER_NODE))
    names = [f"bench-kwok-{uuid.uuid4().hex[:6]}-{i}" for i in range(count)]
    capacity = {"cpu": "1000", "memory": "4Ti", "pods": str(PODS_PER_NODE)}
    for name in names:
        core.create_node(
            {
                "metadata": {
                    "name": name,
                    "annotations": {"kwok.x-k8s.io/node": "fake"},
                    "labels": {"type": "kwok", BENCH_NODE_LABEL: "true"},
                },
                "spec": {
                    "taints": [
                        {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}
                    ]
                },
                "status": {"allocatable": capacity, "capacity": capacity},
            }
        )
    try:
        until(lambda: all(_node_ready(core, n) for n in names), 120, f"{count} kwok node(s) Ready")
        yield
    finally:
        for name in names:
            with suppress(client.ApiException):
                core.delete_node(name)


def _node_ready(core: client.CoreV1Api, name: str) -> bool:
    conditions = core.read_node(name).status.conditions or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


# -- observing ---------------------------------------------------------------------------------


class _Watcher:
    """One watch on a namespace's objects of one kind, each object seen by :meth:`_seen`
    (the list first, then every event) on a thread of its own; :meth:`stop` ends it."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._version = self._relist()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _list(self) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        """The list call the watch streams: the function, its arguments, stream options."""
        raise NotImplementedError

    def _listing(self) -> dict[str, Any]:
        """The objects as they are now, as a list answer (JSON)."""
        raise NotImplementedError

    def _seen(self, obj: dict[str, Any]) -> None:
        raise NotImplementedError

    def _relist(self) -> str:
        """The objects as they are now (each seen as an event); the list's resourceVersion."""
        listing = self._listing()
        for obj in listing["items"]:
            self._seen(obj)
        return str(listing["metadata"]["resourceVersion"])

    def _run(self) -> None:
        fn, args, options = self._list()
        while not self._stop.is_set():
            stream = watch.Watch()
            try:
                for event in stream.stream(
                    fn, *args, resource_version=self._version, timeout_seconds=30, **options
                ):
                    obj = event["object"]
                    self._version = obj["metadata"]["resourceVersion"]
                    self._seen(obj)
                    if self._stop.is_set():
                        break
            except client.ApiException as exc:
                if exc.status != 410:
                    raise
                # Our version left the API server's watch cache (thousands of status writes
                # meanwhile on a busy machine): watching from it again is 410 again, forever
                # (a run waited its 600 s for jobs long ready). List afresh instead.
                self._version = self._relist()
            finally:
                stream.stop()

    def stop(self) -> None:
        self._stop.set()


class JobWatcher(_Watcher):
    """One watch on a namespace's ExecuteJobs: when each job first had a status written, and
    when it first reported all workers ready."""

    def __init__(self, api: client.ApiClient, namespace: str, replicas: int) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.replicas = replicas
        self.status_at: dict[str, float] = {}
        self.ready_at: dict[str, float] = {}
        super().__init__(namespace)

    def _list(self) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        fn = self.custom.list_namespaced_custom_object
        return fn, (GROUP, VERSION, self.namespace, PLURAL), {}

    def _listing(self) -> dict[str, Any]:
        listing: dict[str, Any] = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL
        )
        return listing

    def _seen(self, obj: dict[str, Any]) -> None:
        now = time.perf_counter()
        name = obj["metadata"]["name"]
        status = obj.get("status") or {}
        with self._cond:
            if status.get("replicas") and name not in self.status_at:
                self.status_at[name] = now
            if (
                status.get("phase") == "Running"
                and status.get("readyReplicas") == self.replicas
                and name not in self.ready_at
            ):
                self.ready_at[name] = now
            self._cond.notify_all()

    def wait_status(self, name: str, timeout: float = 60) -> float:
        with self._cond:
            if not self._cond.wait_for(lambda: name in self.status_at, timeout):
                raise TimeoutError(f"no status written for {name} within {timeout}s")
            return self.status_at[name]

    def wait_ready(self, names: list[str], timeout: float) -> float:
        with self._cond:
            if not self._cond.wait_for(lambda: all(n in self.ready_at for n in names), timeout):
                missing = [n for n in names if n not in self.ready_at]
                raise TimeoutError(f"{len(missing)} job(s) not ready within {timeout}s")
            return max(self.ready_at[n] for n in names)


# -- the operator process ----------------------------------------------------------------------


class BenchOperator(OperatorProcess):
    """The operator under measurement, watching one namespace, metrics on its own port."""

    def __init__(self, kubeconfig: str, namespace: str, log_path: Path) -> None:
        self.port = free_port()
        super().__init__(
            kubeconfig,
            log_path,
            [
                *("--namespace", namespace),
                *("--metrics-port", str(self.port), "--metrics-address", "127.0.0.1"),
            ],
        )
        self.start()

    def metrics(self) -> dict[str, float]:
        text = http_get(f"http://127.0.0.1:{self.port}/metrics")[1]
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("appliance_operator_api_requests_total"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    def rss_mib(self, field: str = "VmHWM") -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no {field} in /proc/{self.proc.pid}/status")


def api_calls(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    calls = {}
    for key, value in after.items():
        delta = value - before.get(key, 0.0)
        if delta:
            labels = dict(part.split("=", 1) for part in key[key.index("{") + 1 : -1].split(","))
            name = f"{labels['verb'].strip(chr(34))} {labels['resource'].strip(chr(34))}"
            calls[name] = delta
    return calls


# -- the baseline: the same calls, made by this script -------------------------------------------


class Baseline:
    def __init__(self, api: client.ApiClient, namespace: str, parallel: bool) -> None:
        self.kube = KubeApi(api, Metrics())
        self.custom = client.CustomObjectsApi(api)
        self.namespace = namespace
        self.parallel = parallel
        self.pool = ThreadPoolExecutor(max_workers=MAX_CREATE_BATCH)

    def run(self, job: dict[str, Any]) -> None:
        created = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, job, _preload_content=False
        )
        view = job_view(json.loads(created.data))
        pairs = [(e.name, e.value or "") for e in view.job.spec.env]
        key, env_hash = envfile.seal(pairs)
        secret = desired.env_secret(view.job, view.uid, pairs, key, env_hash)
        self.kube.create_secret(self.namespace, secret)
        workers = [desired.WorkerId(i) for i in range(view.job.spec.replicas)]
        bodies = [desired.worker_pod(view.job, view.uid, w, env_hash) for w in workers]
        if self.parallel:  # the operator's slow start: batches of 1, 2, 4, ...
            batch = 1
            while bodies:
                now, bodies = bodies[:batch], bodies[batch:]
                list(self.pool.map(lambda b: self.kube.create_pod(self.namespace, b), now))
                batch = min(batch * 2, MAX_CREATE_BATCH)
        else:
            for body in bodies:
                self.kube.create_pod(self.namespace, body)
        status = compute_status(view.job.spec, Observation(workers=[]), None, env_hash=env_hash)
        self.kube.patch_job_status(self.namespace, view.name, status_patch(status))


def job_manifest(name: str, namespace: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ExecuteJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "image": "appliance-operator/worker:bench",
            "entrypoint": "my_pkg.loader:main",
            "env": [{"name": f"VAR_{i}", "value": f"value-{i}"} for i in range(20)],
            "template": KWOK_TEMPLATE,
        },
    }


def create_namespace(core: client.CoreV1Api, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name, "labels": {BENCH_NODE_LABEL: "true"}}})
    until(lambda: _has_sa(core, name), 30, f"ServiceAccount {name}/default")
    return name


def _has_sa(core: client.CoreV1Api, namespace: str) -> bool:
    try:
        core.read_namespaced_service_account("default", namespace)
    except client.ApiException:
        return False
    return True


class ReadyPods(_Watcher):
    """One watch on a namespace's pods: the names of those that are Ready. (Listing 8,000
    pods every 0.2 s to count them kept the API server and this script busy for minutes.)"""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.core = client.CoreV1Api(api)
        self.ready: set[str] = set()
        super().__init__(namespace)

    def _list(self) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        return self.core.list_namespaced_pod, (self.namespace,), {"deserialize": False}

    def _listing(self) -> dict[str, Any]:
        raw = self.core.list_namespaced_pod(self.namespace, _preload_content=False).data
        listing: dict[str, Any] = json.loads(raw)
        return listing

    def _seen(self, pod: dict[str, Any]) -> None:
        conditions = (pod.get("status") or {}).get("conditions") or []
        if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
            with self._cond:
                self.ready.add(pod["metadata"]["name"])
                self._cond.notify_all()

    def wait(self, count: int, timeout: float) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.ready) >= count, timeout):
                raise TimeoutError(f"{len(self.ready)} of {count} pods Ready after {timeout}s")


# -- the measurements ----------------------------------------------------------------------------


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def p90_ms(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] * 1000


def measure_latency(
    api: client.ApiClient, op_ns: str, base_ns: str, replicas: int, samples: int
) -> dict[str, list[float]]:
    custom = client.CustomObjectsApi(api)
    op_watch = JobWatcher(api, op_ns, replicas)
    base_watch = JobWatcher(api, base_ns, replicas)
    parallel, sequential = Baseline(api, base_ns, True), Baseline(api, base_ns, False)
    results: dict[str, list[float]] = {"operator": [], "script": [], "script-sequential": []}
    try:
        for i in range(samples + 1):  # the first round warms connections up; not counted
            name = f"lat-{i}"
            t0 = time.perf_counter()
            custom.create_namespaced_custom_object(
                GROUP, VERSION, op_ns, PLURAL, job_manifest(name, op_ns, replicas)
            )
            op = op_watch.wait_status(name) - t0
            for label, runner in (("script", parallel), ("script-sequential", sequential)):
                base_name = f"{name}-{label}"
                t0 = time.perf_counter()
                runner.run(job_manifest(base_name, base_ns, replicas))
                took = base_watch.wait_status(base_name) - t0
                if i:
                    results[label].append(took)
            if i:
                results["operator"].append(op)
    finally:
        op_watch.stop()
        base_watch.stop()
    pods = client.CoreV1Api(api).list_namespaced_pod(op_ns, _preload_content=False)
    if len(json.loads(pods.data)["items"]) != (samples + 1) * replicas:
        raise RuntimeError("the operator did not create exactly the expected pods")
    return results


def measure_throughput(
    api: client.ApiClient,
    operator: BenchOperator,
    op_ns: str,
    base_ns: str,
    jobs: int,
    replicas: int,
) -> dict[str, Any]:
    custom = client.CustomObjectsApi(api)
    names = [f"tp-{i}" for i in range(jobs)]
    watcher = JobWatcher(api, op_ns, replicas)
    before = operator.metrics()
    idle_rss = operator.rss_mib("VmRSS")
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(
            pool.map(
                lambda n: custom.create_namespaced_custom_object(
                    GROUP, VERSION, op_ns, PLURAL, job_manifest(n, op_ns, replicas)
                ),
                names,
            )
        )
    created = time.perf_counter() - t0
    try:
        done = watcher.wait_ready(names, timeout=600) - t0
    finally:
        watcher.stop()
    # Let the last status writes land before reading the counters.
    until(lambda: operator.metrics() == operator.metrics(), 30, "the operator to settle", 0.5)
    after = operator.metrics()
    peak = operator.rss_mib("VmHWM")
    settled_rss = operator.rss_mib("VmRSS")

    baseline = Baseline(api, base_ns, True)
    base_ready = ReadyPods(api, base_ns)
    t0 = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda n: baseline.run(job_manifest(n, base_ns, replicas)), names))
        base_ready.wait(jobs * replicas, 600)
    finally:
        base_ready.stop()
    base_done = time.perf_counter() - t0
    return {
        "created": created,
        "done": done,
        "baseline_done": base_done,
        "idle_rss": idle_rss,
        "peak_rss": peak,
        "settled_rss": settled_rss,
        "calls": api_calls(before, after),
    }


def report(
    latency: dict[str, list[float]],
    tp: dict[str, Any],
    jobs: int,
    replicas: int,
    rss_target: float,
) -> None:
    op, par, seq = latency["operator"], latency["script"], latency["script-sequential"]
    print(
        f"\n(a) ExecuteJob created -> {replicas} pods created + status written "
        f"({len(op)} samples each, median / p90)"
    )
    print(f"    operator                         {median_ms(op):7.1f} ms / {p90_ms(op):7.1f} ms")
    print(f"    script, same calls + batching    {median_ms(par):7.1f} ms / {p90_ms(par):7.1f} ms")
    print(f"    script, same calls, sequential   {median_ms(seq):7.1f} ms / {p90_ms(seq):7.1f} ms")
    print(
        f"    ratio operator / script (same batching)  {median_ms(op) / median_ms(par):5.2f}x"
        "   (target <= 1.5x)"
    )
    print(f"    ratio operator / script (sequential)     {median_ms(op) / median_ms(seq):5.2f}x")
    pods = jobs * replicas
    print(f"\n(b) {jobs} jobs x {replicas} workers on kwok nodes ({pods} pods)")
    print(f"    creating the {jobs} ExecuteJobs took {tp['created']:.1f} s (8 client threads)")
    print(
        f"    operator: all jobs Running, all workers ready after {tp['done']:.1f} s "
        f"= {jobs / tp['done']:.1f} jobs/s, {pods / tp['done']:.0f} pods/s"
    )
    print(
        f"    script, same creates: all pods Ready after {tp['baseline_done']:.1f} s "
        f"= {pods / tp['baseline_done']:.0f} pods/s"
    )
    print(f"    ratio operator / script time             {tp['done'] / tp['baseline_done']:5.2f}x")
    print(
        f"    operator RSS: {tp['idle_rss']:.0f} MiB idle (the baseline, same run), "
        f"peak {tp['peak_rss']:.0f} MiB ({tp['peak_rss'] / tp['idle_rss']:.2f}x idle), "
        f"{tp['settled_rss']:.0f} MiB once settled"
    )
    verdict = "met" if tp["peak_rss"] <= rss_target else "NOT met"
    print(
        f"    operator peak RSS: {tp['peak_rss']:.0f} MiB (target <= {rss_target:.0f} MiB): "
        f"{verdict}"
    )
    calls = tp["calls"]
    print(
        f"\n(c) API calls per job by the operator (target: 1 Secret + {replicas} pods "
        "+ <= 3 status writes)"
    )
    for name, count in sorted(calls.items()):
        print(f"    {name:28s} {count / jobs:6.2f}")
    writes = calls.get("create secrets", 0) + calls.get("create pods", 0)
    writes += calls.get("patch executejobs/status", 0)
    target = 1 + replicas + 3
    print(
        f"    secret + pods + status writes: {writes / jobs:.2f} per job "
        f"(target <= {target}; ratio {writes / jobs / target:.2f})"
    )
    print(f"    plus Events: {calls.get('create events', 0) / jobs:.2f} per job")


# -- clean-up ------------------------------------------------------------------------------------

#: Finalizer removals in flight at once during the clean-up (the API server, not the client,
#: is the limit: 16 keeps its 2 cores busy without queueing requests for long).
CLEANUP_THREADS = 16


def clean_up(api: client.ApiClient, namespaces: list[str]) -> None:
    """Delete the benchmark's namespaces and wait, bounded, until they are gone.

    Deleting a namespace with thousands of pods that carry the tracking finalizer takes the
    namespace controller and the garbage collector (about 10 pods/s at the controller
    manager's default 20 QPS) and hangs on every pod nobody releases: the baseline's pods have
    no operator, and the operator is stopped by now. So this script does it itself: every
    pod is marked deleted with grace 0 in one deletecollection per namespace, the finalizers
    are removed in parallel (each removal then deletes its pod at once), and only then are the
    jobs and namespaces deleted, each wait bounded by a timeout derived from the pod count.
    """
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    started = time.perf_counter()
    pods = 0
    with ThreadPoolExecutor(max_workers=CLEANUP_THREADS) as pool:
        for ns in namespaces:
            with suppress(client.ApiException):
                core.delete_collection_namespaced_pod(
                    ns, grace_period_seconds=0, _preload_content=False
                )
            names = [
                str(p["metadata"]["name"])
                for p in json.loads(core.list_namespaced_pod(ns, _preload_content=False).data)[
                    "items"
                ]
                if p["metadata"].get("finalizers")
            ]
            pods += len(names)
            list(pool.map(lambda name, ns=ns: _drop_finalizers(core, ns, name), names))
    for ns in namespaces:
        with suppress(client.ApiException):
            custom.delete_collection_namespaced_custom_object(
                GROUP, VERSION, ns, PLURAL, _preload_content=False
            )
        with suppress(client.ApiException):
            core.delete_namespace(ns)
    # Bounded: a minute for the namespace controller plus a generous 50 pods/s.
    timeout = 60 + pods / 50
    until(
        lambda: not [n for n in core.list_namespace().items if n.metadata.name in namespaces],
        timeout,
        f"bench namespaces to be deleted ({pods} pods released)",
        0.5,
    )
    log(f"clean-up: {pods} pods released, namespaces gone in {time.perf_counter() - started:.0f} s")


def _drop_finalizers(core: client.CoreV1Api, namespace: str, name: str) -> None:
    with suppress(client.ApiException):  # 404: gone already
        core.patch_namespaced_pod(
            name,
            namespace,
            {"metadata": {"finalizers": None}},
            _content_type="application/merge-patch+json",
            _preload_content=False,
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--kubeconfig", help="an existing cluster (default: hack/cluster)")
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--samples", type=int, default=20, help="latency samples per side")
    parser.add_argument("--quick", action="store_true", help="20 jobs, 8 samples")
    parser.add_argument("--keep", action="store_true", help="keep the namespaces afterwards")
    parser.add_argument(
        "--rss-target",
        type=float,
        default=150,
        help="the operator's peak RSS target in MiB, reported as met or not (default 150)",
    )
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.samples = min(args.jobs, 20), min(args.samples, 8)
    started = time.perf_counter()
    kubeconfig = ensure_cluster(args.kubeconfig)
    api = config.new_client_from_config(config_file=kubeconfig)
    core = client.CoreV1Api(api)
    apply_crd(api)
    total_pods = (args.jobs + args.samples + 1) * args.replicas * 2 + args.samples * args.replicas
    namespaces: list[str] = []
    with bench_nodes(core, total_pods):
        try:
            lat_op, lat_base = (
                create_namespace(core, "bench-lat-op"),
                create_namespace(core, "bench-lat-base"),
            )
            tp_op, tp_base = (
                create_namespace(core, "bench-tp-op"),
                create_namespace(core, "bench-tp-base"),
            )
            namespaces = [lat_op, lat_base, tp_op, tp_base]
            log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-operator-{tp_op}.log"
            log(f"operator log: {log_path}")
            # One operator for both phases would see the latency jobs during the throughput
            # run; each phase gets its own, watching only its namespace.
            op = BenchOperator(kubeconfig, lat_op, log_path.with_suffix(".latency.log"))
            try:
                log(f"(a) latency: {args.samples} samples")
                latency = measure_latency(api, lat_op, lat_base, args.replicas, args.samples)
            finally:
                op.stop()
            op = BenchOperator(kubeconfig, tp_op, log_path)
            try:
                log(f"(b) throughput: {args.jobs} jobs x {args.replicas} workers")
                tp = measure_throughput(api, op, tp_op, tp_base, args.jobs, args.replicas)
            finally:
                op.stop()
            report(latency, tp, args.jobs, args.replicas, args.rss_target)
        finally:
            if not args.keep and namespaces:
                clean_up(api, namespaces)
    print(f"\nwall time of the run, clean-up included: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
