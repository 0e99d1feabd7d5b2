"""The operator's state stays bounded and its secrets stay off disk (issue 21, defect 14)."""

from __future__ import annotations

import socket
import ssl
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from appliance_operator import handlers, pooltls
from appliance_operator.metrics import Metrics
from appliance_operator.poolcontroller import PoolController


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
        pools._forget(key, uid)  # what each reconcile of a live pool records
        pools._contexts[uid] = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        pools._creds_ready.add(uid)
        pools._created[uid] = {f"pool-{n}-abcde": 0.0}
        pools._secret_problem[uid] = "problem"
        metrics.pool_claims.labels("ml", f"pool-{n}", "claimed").inc()
        metrics.pool_claims.labels("ml", f"pool-{n}", "cold").inc(2)
    pools._forget(("ml", "pool-0"), "uid-0-recreated")  # deleted and recreated at once
    assert "uid-0" not in pools._contexts and "uid-0" not in pools._creds_ready
    for n in range(50):
        assert pools.reconcile(("ml", f"pool-{n}"), None, []) is None  # deleted
    assert not pools._contexts and not pools._creds_ready and not pools._created
    assert not pools._secret_problem and not pools._uids
    assert _samples(metrics, "appliance_operator_pool_claims_total") == []


@dataclass
class _View:
    uid: str


def test_tombstones_are_forgotten_once_no_index_holds_them() -> None:
    def body(uid: str) -> dict[str, Any]:
        return {"metadata": {"uid": uid}}

    rt = SimpleNamespace(
        jobs={("ml", "a"): [body("job-ghost")], ("ml", "b"): [body("job-live")]},
        pool_bodies={("ml", "p"): [body("pool-live")]},
        pods={("ml", "a"): [_View("pod-ghost")]},
        pool_pods={("ml", "p"): [_View("pool-pod-ghost")]},
        tombstones={"job-ghost", "pod-ghost", "pool-pod-ghost", "gone-1", "gone-2"},
    )
    handlers.prune_tombstones(rt)  # type: ignore[arg-type]
    assert rt.tombstones == {"job-ghost", "pod-ghost", "pool-pod-ghost"}
    rt.jobs = {("ml", "b"): [body("job-live")]}  # the ghost job's DELETED finally came
    rt.pods = {}
    handlers.prune_tombstones(rt)  # type: ignore[arg-type]
    assert rt.tombstones == {"pool-pod-ghost"}
