"""The operator's state stays bounded and its secrets stay off disk (issue 21, defect 14)."""

from __future__ import annotations

import gc
import json
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kopf
import pytest
from kubernetes import client

from appliance_operator import handlers, kubeapi
from appliance_operator.metrics import Metrics
from appliance_operator.pool import tls as pooltls
from appliance_operator.pool.controller import PoolController
from appliance_operator.runtime.cache import Caches, JobRecord, Record
from appliance_operator.runtime.resync import prune_tombstones
from cerebras_appliance.contract import names


def test_the_operators_claim_key_never_touches_a_disk(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The claim channel's private key was written to a file under /tmp (a disk-backed
    emptyDir in the chart) to be loaded; now it is loaded from an anonymous memory file."""

    def no_files(*args: object, **kwargs: object) -> None:
        raise AssertionError("a temporary file was created for the claim key")

    monkeypatch.setattr(tempfile, "mkstemp", no_files)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    creds = pooltls.new_pool_credentials("pool")
    client = pooltls.client_context(creds.operator)
    # The context works: a TLS 1.3 handshake with the pool's worker certificate.
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_verify_locations(cadata=creds.worker.ca_pem.decode("ascii"))
    pooltls.load_cert_chain_from_memory(server, creds.worker.cert_pem + creds.worker.key_pem)
    listener = socket.create_server(("127.0.0.1", 0))
    peer: list[str] = []

    def accept() -> None:
        conn, _ = listener.accept()
        with server.wrap_socket(conn, server_side=True) as tls:
            subject = dict(item[0] for item in tls.getpeercert()["subject"])
            peer.append(str(subject["commonName"]))
            tls.recv(1)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    with (
        socket.create_connection(listener.getsockname(), timeout=10) as raw,
        client.wrap_socket(raw) as tls,
    ):
        assert tls.version() == "TLSv1.3"
        tls.sendall(b"x")
    thread.join(timeout=10)
    listener.close()
    assert peer == ["appliance-operator"]
    assert list(tmp_path.iterdir()) == []


def _samples(metrics: Metrics, name: str) -> list[dict[str, str]]:
    return [
        sample.labels
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == name
    ]


def test_a_deleted_pool_leaves_nothing_in_the_operators_memory() -> None:
    """Per-pool state (TLS context, credentials, expectations, delivery trouble) and the
    pool's claim counters were kept for every pool there ever was."""
    metrics = Metrics()
    pools = PoolController(api=None, metrics=metrics)  # type: ignore[arg-type]
    for n in range(50):
        key, uid = ("ml", f"pool-{n}"), f"uid-{n}"
        pools.track(key, uid)  # what each reconcile of a live pool records
        # State kept under the pool's uid (its TLS context, credentials, expectations and
        # delivery trouble are one record, PoolMemory): here, a failed delivery.
        pools.delivery_failed(uid, f"pool-{n}-abcde", "problem")
        metrics.pool_claims.labels("ml", f"pool-{n}", "claimed").inc()
        metrics.pool_claims.labels("ml", f"pool-{n}", "cold").inc(2)
    assert pools.remembered() == {f"uid-{n}" for n in range(50)}
    pools.track(("ml", "pool-0"), "uid-0-recreated")  # deleted and recreated at once
    assert "uid-0" not in pools.remembered()
    assert pools.undeliverable("uid-0", None) == ""  # its trouble went with it
    for n in range(50):
        assert pools.reconcile(("ml", f"pool-{n}"), None, []) is None  # deleted
    assert not pools.remembered()
    assert _samples(metrics, "appliance_operator_pool_claims_total") == []


@dataclass
class _View:
    uid: str


def test_tombstones_are_forgotten_once_no_index_holds_them() -> None:
    def body(uid: str) -> dict[str, Any]:
        return {"metadata": {"uid": uid}}

    def job(uid: str) -> JobRecord:  # the job index holds records, as kopf's does
        return JobRecord(body(uid))

    rt = Caches(
        jobs={("ml", "a"): [job("job-ghost")], ("ml", "b"): [job("job-live")]},
        pools={("ml", "p"): [Record(body("pool-live"))]},
        pods={("ml", "a"): [_View("pod-ghost")]},
        pool_pods={("ml", "p"): [_View("pool-pod-ghost")]},
        tombstones={"job-ghost", "pod-ghost", "pool-pod-ghost", "gone-1", "gone-2"},
    )
    prune_tombstones(rt)
    assert rt.tombstones == {"job-ghost", "pod-ghost", "pool-pod-ghost"}
    rt.jobs = {("ml", "b"): [job("job-live")]}  # the ghost job's DELETED finally came
    rt.pods = {}
    prune_tombstones(rt)
    assert rt.tombstones == {"pool-pod-ghost"}


def test_the_drift_check_lists_in_pages() -> None:
    """The drift check listed a namespace's worker pods in one answer: with 8,000 pods
    (bench/bench_operator.py --jobs 1000) the parsed answer lifted the operator's RSS from
    184 to 356 MiB for a few seconds every 5 minutes. Now it asks for pages of LIST_PAGE."""
    uids = [f"uid-{n}" for n in range(2 * kubeapi.LIST_PAGE + 7)]
    asked: list[dict[str, Any]] = []

    def list_namespaced_pod(namespace: str, **kw: Any) -> SimpleNamespace:
        asked.append(kw)
        start = int(kw.get("_continue") or 0)
        end = len(uids) if kw.get("limit") is None else start + int(kw["limit"])
        page = {
            "items": [{"metadata": {"uid": uid}} for uid in uids[start:end]],
            "metadata": {"continue": str(end) if end < len(uids) else ""},
        }
        return SimpleNamespace(data=json.dumps(page).encode())

    api = kubeapi.KubeApi(client.ApiClient(client.Configuration()), Metrics())
    api.core = SimpleNamespace(list_namespaced_pod=list_namespaced_pod)  # type: ignore[assignment]
    assert api.list_uids("ml", "pods") == set(uids)
    assert [kw.get("limit") for kw in asked] == [kubeapi.LIST_PAGE] * 3
    assert all(kw["label_selector"] == names.MANAGED_SELECTOR for kw in asked)


def _bench_job(n: int) -> dict[str, Any]:
    """An ExecuteJob as bench/bench_operator.py makes them (20 inline variables, a kwok
    template) and the API server returns it, with a status."""
    return {
        "apiVersion": "appliance.dev/v1alpha1",
        "kind": "ExecuteJob",
        "metadata": {
            "name": f"tp-{n}",
            "namespace": "bench",
            "uid": f"0c9e1f4e-54a1-4b8e-9a4e-{n:012d}",
            "resourceVersion": str(1000 + n),
            "generation": 1,
            "creationTimestamp": "2026-12-07T19:01:02Z",
            "managedFields": [{"manager": "python", "fieldsV1": {"f:spec": {}}}],
        },
        "spec": {
            "replicas": 8,
            "image": "appliance-operator/worker:bench",
            "entrypoint": "my_pkg.loader:main",
            "env": [{"name": f"VAR_{i}", "value": f"value-{i}"} for i in range(20)],
            "template": {
                "nodeSelector": {"type": "kwok"},
                "tolerations": [
                    {"key": "kwok.x-k8s.io/node", "operator": "Equal", "value": "fake"}
                ],
            },
        },
        "status": {"phase": "Running", "replicas": 8, "readyReplicas": 8, "envHash": "h" * 43},
    }


def _retained_per_object(make: Any, count: int = 200) -> float:
    """Bytes of Python memory each object ``make(n)`` returns keeps alive (tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [make(n) for n in range(count)]
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(kept) == count
    return (after - before) / count


def test_the_job_cache_keeps_a_compact_record_of_each_job() -> None:
    """Defect 14, measured at 1,000 jobs: the cache held each job's spec and status as nested
    dicts (~15 KiB a job). Now compact JSON text: the same content, a fifth of the memory."""

    def record(n: int) -> Any:
        body = kopf.Body(_bench_job(n))
        return handlers.execute_jobs(body, namespace="bench", name=f"tp-{n}")[("bench", f"tp-{n}")]

    assert _retained_per_object(record) < 4096
    job = _bench_job(7)
    kept = record(7)
    del job["metadata"]["managedFields"]
    assert kept.body() == job and kept.body() is not kept.body()
    assert kept["spec"] == job["spec"] and kept.uid == job["metadata"]["uid"]


def test_a_worker_pods_cached_view_is_small() -> None:
    """8,000 views at 1,000 jobs x 8: slots (no __dict__ per view) and the job's name and uid
    shared by its pods' views, not one copy per pod."""
    from appliance_operator.observe import pod_view

    def pod(n: int) -> dict[str, Any]:
        return json.loads(  # a fresh body per pod, as each watch event is
            json.dumps(
                {
                    "metadata": {
                        "name": f"tp-1-worker-{n}",
                        "uid": f"5b0f3c2a-7d7e-4c3e-8f4e-{n:012d}",
                        "labels": {
                            names.MANAGED_BY_LABEL: names.MANAGED_BY,
                            names.JOB_NAME_LABEL: "tp-1",
                            names.WORKER_INDEX_LABEL: str(n % 8),
                        },
                        "ownerReferences": [
                            {"uid": "0c9e1f4e-54a1-4b8e-9a4e-000000000001", "controller": True}
                        ],
                        "finalizers": [names.TRACKING_FINALIZER],
                    },
                    "status": {"phase": "Running", "podIP": "10.244.3.17"},
                }
            )
        )

    view = pod_view(pod(0))
    assert view is not None and not hasattr(view, "__dict__")
    assert _retained_per_object(lambda n: pod_view(pod(n))) < 600


def test_the_operator_loads_cryptography_only_to_make_a_pools_certificates() -> None:
    """``cryptography`` is ~10 MiB of the operator's resident memory (measured): an operator
    serving no pool never imports it; making a pool's credentials does."""
    code = (
        "import sys, appliance_operator.__main__, appliance_operator.handlers\n"
        "assert 'cryptography' not in sys.modules, 'imported at start'\n"
        "from appliance_operator.pool import tls as pooltls\n"
        "pooltls.new_pool_credentials('p')\n"
        "assert 'cryptography' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_indexes_run_on_the_event_loop() -> None:
    """kopf ran each (plain ``def``) index function in a thread of its executor: a hop per
    watch event, during which the event's whole body waits in kopf's per-object queue. The
    indexes are now ``async`` wrappers (same ids, so the same kwargs) of the pure functions."""
    import inspect

    indexers = {h.id: h.fn for h in kopf.get_default_registry()._indexing.get_all_handlers()}
    assert set(indexers) >= {"worker_pods", "execute_jobs", "pool_pods", "worker_pools"}
    assert all(inspect.iscoroutinefunction(fn) for fn in indexers.values()), indexers


def test_kopfs_essence_of_each_event_is_built_without_copying_the_whole_body(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kopf builds a diff-base essence of every watched object on every watch event, from a
    deep copy of the whole body (managedFields and status included, then dropped). The
    operator's storage gives it only what the essence keeps: the same essence, less copied."""
    import copy

    settings = kopf.OperatorSettings()
    handlers.configure_settings(settings)
    body = kopf.Body(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "tp-1-worker-0",
                "labels": {names.JOB_NAME_LABEL: "tp-1"},
                "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": "{}",
                    "appliance.dev/env-hash": "h",
                },
                "ownerReferences": [{"kind": "ExecuteJob", "uid": "u", "controller": True}],
                "managedFields": [{"manager": "kwok", "fieldsV1": {"f:status": {}}}],
            },
            "spec": {"containers": [{"name": "worker", "image": "i"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
        }
    )
    kopfs = kopf.AnnotationsDiffBaseStorage(
        prefix="appliance.dev", key="last-handled-configuration"
    )
    expected = kopfs.build(body=body)
    copied: list[Any] = []
    real = copy.deepcopy

    def recording(value: Any, *args: Any) -> Any:
        copied.append(value)
        return real(value, *args)

    monkeypatch.setattr(copy, "deepcopy", recording)
    assert settings.persistence.diffbase_storage.build(body=body) == expected
    whole = [c for c in copied if "status" in str(c) or "managedFields" in str(c)]
    assert copied and not whole, whole
