"""Warm pools on kind: real kubelets, real warm worker pods, the operator in a pod (the chart).

The operator runs as the chart's Deployment here, not on the host: it sends each claim to the
pod's IP, which only the cluster's network reaches (and the pool's NetworkPolicy
``<pool>-claim``, made by the operator, admits only the operator's pods to the claim port).
The namespace (``it-test-pool-*``) is one the package's host operator leaves alone
(conftest.py, ``OPERATOR_EXCLUDED_NAMESPACES``).

One pool of 8 idle workers, then, in order (each step asserts what issue 12 asks):

1. an 8-worker job claims 8 warm workers; each sees its inline and ``secretKeyRef`` variables
   (its child process too), never an untracked one, and ``PYTHONPATH`` from the snapshot took
   effect (the loader module is importable only through it: the warm worker re-executed);
2. a second job gets fresh workers (other pods) and none of the first job's variables;
3. a job larger than the pool (10) gets 8 warm and 2 cold workers and succeeds;
4. the operator pod killed right after a job was created: after its restart no pod is claimed
   twice and the job has all its workers, and succeeds;
5. a pod that is not the operator cannot claim an idle worker (TLS refuses it; the
   NetworkPolicy may drop it first) and the worker stays idle;
6. the sentinel values appear in no pod spec, annotation, Event or log of the operator.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from support.kind import CHART_RELEASE, chart_operator, chart_operator_pod

if TYPE_CHECKING:
    from support.cluster import WaitUntil
    from support.kind import KindCluster, Loader

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
POOL = "warm"
POOL_SIZE = 8
INLINE_SENTINEL = "e2e-pool-inline-4c1f"
SECRET_SENTINEL = "e2e-pool-secret-9a7d"
JOB_TIMEOUT_S = 240


def _json(cluster: KindCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl(*args, "-o", "json").stdout)


def _apply(cluster: KindCluster, namespace: str, doc: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))


def _pool_status(cluster: KindCluster, namespace: str) -> dict[str, Any]:
    return dict(_json(cluster, "get", "wp", POOL, "-n", namespace).get("status") or {})


def _job(
    name: str,
    replicas: int,
    image: str,
    loader: Loader,
    env: list[dict[str, Any]],
    names: list[str],
) -> dict[str, Any]:
    return {
        "apiVersion": "appliance.dev/v1alpha1",
        "kind": "ExecuteJob",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "image": image,
            "entrypoint": loader.entrypoint,
            "args": names,
            "pool": POOL,
            "template": loader.template,
            "env": [{"name": "PYTHONPATH", "value": loader.path}, *env],
        },
    }


def _wait_succeeded(
    cluster: KindCluster, namespace: str, name: str, wait_until: WaitUntil
) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        status = _json(cluster, "get", "ej", name, "-n", namespace).get("status") or {}
        if status.get("phase") == "Failed":
            pytest.fail(f"job {name} failed: {json.dumps(status, indent=2)}")
        return status if status.get("phase") == "Succeeded" else None

    return dict(wait_until(done, timeout=JOB_TIMEOUT_S, what=f"job {name} to succeed"))


def _job_pods(cluster: KindCluster, namespace: str, name: str) -> list[dict[str, Any]]:
    return list(
        _json(cluster, "get", "pods", "-n", namespace, "-l", f"appliance.dev/job-name={name}")[
            "items"
        ]
    )


def _logs(cluster: KindCluster, namespace: str, pod: str) -> str:
    return cluster.pod_logs(namespace, pod)


def test_pool_warm_claims_cold_remainder_restart_and_security(
    cluster: KindCluster, namespace: str, loader: Loader, wait_until: WaitUntil
) -> None:
    ns = namespace  # it-test-pool-*: the host operator leaves it to the chart's
    with chart_operator(cluster, ns, wait_until) as operator_pod:
        _run(cluster, ns, loader, wait_until, operator_pod)


def _run(
    cluster: KindCluster, ns: str, loader: Loader, wait_until: WaitUntil, operator_pod: str
) -> None:
    image = cluster.worker_image
    _apply(cluster, ns, {
        "apiVersion": "appliance.dev/v1alpha1", "kind": "WorkerPool",
        "metadata": {"name": POOL},
        "spec": {"image": image, "replicas": POOL_SIZE, "imports": ["json", "subprocess"],
                 "template": {**loader.template, "imagePullPolicy": "Never"}},
    })  # fmt: skip
    loader.template = {**loader.template, "imagePullPolicy": "Never"}

    def full() -> bool:
        return int(_pool_status(cluster, ns).get("idle", 0)) >= POOL_SIZE

    wait_until(full, timeout=240, what=f"{POOL_SIZE} idle warm workers")
    idle_before = {
        p["metadata"]["name"]
        for p in _json(cluster, "get", "pods", "-n", ns, "-l", "appliance.dev/pool-state=idle")[
            "items"
        ]
    }
    assert len(idle_before) == POOL_SIZE

    cluster.kubectl(
        "create", "secret", "generic", "creds", "-n", ns, f"--from-literal=token={SECRET_SENTINEL}"
    )
    tracked = ["INLINE", "TOKEN", "PYTHONPATH"]
    env = [
        {"name": "INLINE", "value": INLINE_SENTINEL},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
    ]

    # 1. an 8-worker job on the pool: 8 warm workers, every variable, PYTHONPATH effective.
    _apply(cluster, ns, _job("first", 8, image, loader, env, ["INLINE", "TOKEN"]))
    status = _wait_succeeded(cluster, ns, "first", wait_until)
    claim = next(c for c in status["conditions"] if c["type"] == "PoolClaim")
    assert claim["reason"] == "Claimed", claim
    first_pods = _job_pods(cluster, ns, "first")
    assert {p["metadata"]["name"] for p in first_pods} <= idle_before
    assert len(first_pods) == 8
    for pod in first_pods:
        name = pod["metadata"]["name"]
        seen = loader.parse(_logs(cluster, ns, name))
        assert seen.get("env INLINE") == INLINE_SENTINEL, (name, seen)
        assert seen.get("env TOKEN") == SECRET_SENTINEL, (name, seen)
        assert seen.get("child INLINE") == INLINE_SENTINEL, (name, seen)
        assert seen.get("ready-marker", "").startswith("hmac-sha256:"), (name, seen)
        names = set(seen.get("names", "").split(","))
        assert not loader.untracked(names, set(tracked)), (name, names)

    # 2. a second job: fresh workers, none of the first job's variables.
    _apply(cluster, ns, _job("second", 4, image, loader, [{"name": "SECOND", "value": "2"}],
                             ["SECOND", "INLINE", "TOKEN"]))  # fmt: skip
    _wait_succeeded(cluster, ns, "second", wait_until)
    second_pods = _job_pods(cluster, ns, "second")
    assert not {p["metadata"]["name"] for p in second_pods} & {
        p["metadata"]["name"] for p in first_pods
    }
    for pod in second_pods:
        seen = loader.parse(_logs(cluster, ns, pod["metadata"]["name"]))
        assert seen.get("env SECOND") == "2" and seen.get("env INLINE") == "<unset>", seen
        assert seen.get("env TOKEN") == "<unset>", seen

    # 3. larger than the pool: warm and cold workers, success.
    wait_until(full, timeout=240, what="the pool to refill")
    _apply(cluster, ns, _job("large", POOL_SIZE + 2, image, loader, env, ["INLINE"]))
    status = _wait_succeeded(cluster, ns, "large", wait_until)
    claim = next(c for c in status["conditions"] if c["type"] == "PoolClaim")
    assert claim["reason"] == "PartlyCold", claim
    large = _job_pods(cluster, ns, "large")
    warm = [p for p in large if "appliance.dev/pool-name" in p["metadata"]["labels"]]
    cold = [p for p in large if "appliance.dev/pool-name" not in p["metadata"]["labels"]]
    assert len(warm) == POOL_SIZE and len(cold) == 2, [p["metadata"]["name"] for p in large]

    # 4. the operator killed mid-claim.
    wait_until(full, timeout=240, what="the pool to refill")
    _apply(cluster, ns, _job("restart", 6, image, loader, env, ["INLINE"]))
    cluster.kubectl("delete", "pod", operator_pod, "-n", ns, "--grace-period=0", "--force")
    wait_until(lambda: chart_operator_pod(cluster, ns), timeout=180, what="the operator to restart")
    _wait_succeeded(cluster, ns, "restart", wait_until)
    pods = _job_pods(cluster, ns, "restart")
    indexes = [p["metadata"]["labels"]["appliance.dev/worker-index"] for p in pods]
    assert sorted(indexes) == [str(i) for i in range(6)], indexes  # each index once
    every = _json(cluster, "get", "pods", "-n", ns, "-l", "appliance.dev/pool-name")["items"]
    for pod in every:
        owners = [r for r in pod["metadata"].get("ownerReferences", []) if r.get("controller")]
        assert len(owners) == 1, pod["metadata"]["name"]

    # 5. a pod that is not the operator cannot claim an idle worker.
    wait_until(full, timeout=240, what="the pool to refill")
    target = next(
        p
        for p in _json(cluster, "get", "pods", "-n", ns, "-l", "appliance.dev/pool-state=idle")[
            "items"
        ]
        if p["status"].get("podIP")
    )
    probe = (
        "import socket, ssl, json, struct, sys\n"
        "ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname = False\n"
        "ctx.verify_mode = ssl.CERT_NONE\n"
        "claim = json.dumps({'kind': 'WorkerClaim', 'worker': sys.argv[2], 'entrypoint': 'x.py',"
        " 'plumbing': {'APPLIANCE_ENV_FILE': '/etc/hostname'}}).encode()\n"
        "try:\n"
        "    raw = socket.create_connection((sys.argv[1], 7443), timeout=5)\n"
        "    c = ctx.wrap_socket(raw); c.sendall(struct.pack('!I', len(claim)) + claim)\n"
        "    print('ANSWER', c.recv(100))\n"
        "except Exception as exc:\n"
        "    print('REFUSED', type(exc).__name__)\n"
    )
    cluster.kubectl(
        "run", "intruder", "-n", ns, "--image", image, "--image-pull-policy=Never",
        "--restart=Never", "--command", "--", "python3", "-c", probe,
        target["status"]["podIP"], target["metadata"]["name"],
    )  # fmt: skip

    def intruder_done() -> str | None:
        phase = _json(cluster, "get", "pod", "intruder", "-n", ns)["status"].get("phase")
        return _logs(cluster, ns, "intruder") if phase in ("Succeeded", "Failed") else None

    out = wait_until(intruder_done, timeout=120, what="the intruder pod to finish")
    assert "REFUSED" in out or "ANSWER b''" in out, out
    assert "accepted" not in out
    again = _json(cluster, "get", "pod", target["metadata"]["name"], "-n", ns)
    assert again["metadata"]["labels"]["appliance.dev/pool-state"] == "idle"
    assert again["status"]["phase"] == "Running"

    # 6. no sentinel in pod specs, annotations, Events or the operator's log.
    pods_yaml = cluster.kubectl("get", "pods", "-n", ns, "-o", "yaml").stdout
    events = cluster.kubectl("get", "events", "-n", ns, "-o", "yaml").stdout
    pools = cluster.kubectl("get", "wp", "-n", ns, "-o", "yaml").stdout
    operator_log = "".join(
        cluster.kubectl("logs", "-n", ns, p["metadata"]["name"], check=False).stdout
        for p in _json(cluster, "get", "pods", "-n", ns,
                       "-l", f"app.kubernetes.io/instance={CHART_RELEASE}")["items"]
    )  # fmt: skip
    secret_b64 = base64.b64encode(SECRET_SENTINEL.encode()).decode()
    for text in (pods_yaml, events, pools, operator_log):
        for sentinel in (SECRET_SENTINEL, secret_b64):
            assert sentinel not in text
    assert INLINE_SENTINEL not in pods_yaml and INLINE_SENTINEL not in operator_log
    assert INLINE_SENTINEL not in events


# -- claims that cannot be delivered; a claim is the job's only (issue 21, defects 1 and 4) ---

#: Claims every idle worker given as IP=NAME with the pool's operator certificate (mounted from
#: the operator's claim Secret: what anyone allowed to `get` Secrets there can do), for a job
#: "uid-rogue" of its own; the claimed workers then wait (signal.pause) running its code.
ROGUE = """
import socket, ssl, sys, time
from cerebras_appliance.contract import channel
from cerebras_appliance.contract import envfile
from cerebras_appliance.contract import claim as claims
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.load_verify_locations(cafile="/claim/ca.crt")
ctx.load_cert_chain("/claim/tls.crt", "/claim/tls.key")
pairs = [("ROGUE", "1")]
key, digest = envfile.seal(pairs)
for arg in sys.argv[1:]:
    ip, name = arg.split("=")
    claim = claims.Claim(worker=name, entrypoint="signal:pause", args=(), plumbing=(),
                         snapshot=envfile.dumps(pairs, digest, key), job="uid-rogue", nonce="n")
    deadline = time.monotonic() + 90  # a policy enforcer admits a new pod's IP a bit later
    while True:
        try:
            with socket.create_connection((ip, 7443), timeout=10) as raw:
                with ctx.wrap_socket(raw) as c:
                    channel.send_frame(c, claims.dumps(claim))
                    answer = channel.recv_frame(c, limit=65536).decode()
            print("CLAIMED", name, answer, flush=True)
            break
        except OSError as exc:
            if time.monotonic() > deadline:
                print("FAILED", name, type(exc).__name__, exc, flush=True)
                break
            time.sleep(0.5)  # retry interval while the network admits this pod
"""
SMALL_POOL = 2


def test_pool_claims_not_delivered_fall_back_cold_and_are_never_another_jobs(
    cluster: KindCluster, namespace: str, loader: Loader, wait_until: WaitUntil
) -> None:
    """Every idle worker of the pool is claimed first by someone else (a pod holding the
    operator's certificate: its claim channel no longer works for the operator). A job on
    the pool then adopts them: they are never confirmed (nor Ready) for it, the job's workers
    start cold and it succeeds, the pool says ClaimsDelivered=False naming the pod, no more
    pool pods are burnt than the job's workers, and once a refilled idle pod answers a probe
    the next job is claimed warm again."""
    with chart_operator(cluster, namespace, wait_until) as operator_pod:
        _run_undeliverable(cluster, namespace, loader, wait_until, operator_pod)


def _run_undeliverable(
    cluster: KindCluster, ns: str, loader: Loader, wait_until: WaitUntil, operator_pod: str
) -> None:
    image = cluster.worker_image
    loader.template = {**loader.template, "imagePullPolicy": "Never"}
    _apply(cluster, ns, {
        "apiVersion": "appliance.dev/v1alpha1", "kind": "WorkerPool",
        "metadata": {"name": POOL},
        "spec": {"image": image, "replicas": SMALL_POOL, "imports": ["json"],
                 "template": loader.template},
    })  # fmt: skip

    def idle_pods() -> list[dict[str, Any]]:
        items = _json(cluster, "get", "pods", "-n", ns, "-l", "appliance.dev/pool-state=idle")
        return [p for p in items["items"] if not p["metadata"].get("deletionTimestamp")]

    def full() -> list[dict[str, Any]] | None:
        # status.idle counts idle pods that are Ready and answered the operator's probe.
        if int(_pool_status(cluster, ns).get("idle", 0)) < SMALL_POOL:
            return None
        pods = [p for p in idle_pods() if p["status"].get("podIP")]
        return pods if len(pods) == SMALL_POOL else None

    targets = wait_until(full, timeout=240, what=f"{SMALL_POOL} idle warm workers")
    pool_uid = _json(cluster, "get", "wp", POOL, "-n", ns)["metadata"]["uid"]
    operator_labels = {
        k: v
        for k, v in _json(cluster, "get", "pod", operator_pod, "-n", ns)["metadata"][
            "labels"
        ].items()
        if k != "pod-template-hash"
    }
    rogue_args = [f"{p['status']['podIP']}={p['metadata']['name']}" for p in targets]
    stolen = {p["metadata"]["name"] for p in targets}
    _apply(cluster, ns, {
        "apiVersion": "v1", "kind": "Pod",
        # The operator's labels: a NetworkPolicy admitting "the operator's pods" admits it too.
        "metadata": {"name": "rogue", "labels": operator_labels},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "rogue", "image": image, "imagePullPolicy": "Never",
                "command": ["python3", "-c", ROGUE, *rogue_args],
                "volumeMounts": [{"name": "claim", "mountPath": "/claim", "readOnly": True}],
            }],
            "volumes": [{"name": "claim", "secret": {
                "secretName": f"{POOL}-claim-operator-{pool_uid}"}}],
        },
    })  # fmt: skip

    def rogue_done() -> str | None:
        phase = _json(cluster, "get", "pod", "rogue", "-n", ns)["status"].get("phase")
        return _logs(cluster, ns, "rogue") if phase in ("Succeeded", "Failed") else None

    out = wait_until(rogue_done, timeout=240, what="the rogue pod to claim the idle workers")
    assert out.count("CLAIMED") == SMALL_POOL, out
    assert all(p["metadata"]["name"] in stolen for p in idle_pods())  # still look idle

    cluster.kubectl(
        "create", "secret", "generic", "creds", "-n", ns, f"--from-literal=token={SECRET_SENTINEL}"
    )
    env: list[dict[str, Any]] = [
        {"name": "INLINE", "value": INLINE_SENTINEL},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
    ]
    _apply(cluster, ns, _job("victim", SMALL_POOL, image, loader, env, ["INLINE", "TOKEN"]))
    began = time.monotonic()
    pool_pods_seen: set[str] = set()
    victims_warm: set[str] = set()
    confirmed_for_victim: set[str] = set()
    undelivered: list[dict[str, Any]] = []

    def observe() -> None:
        for pod in _json(cluster, "get", "pods", "-n", ns, "-l", "appliance.dev/pool-name")[
            "items"
        ]:
            meta = pod["metadata"]
            pool_pods_seen.add(meta["name"])
            if meta["labels"].get("appliance.dev/job-name") == "victim":
                victims_warm.add(meta["name"])
                if "appliance.dev/claim-confirmed" in meta.get("annotations", {}):
                    confirmed_for_victim.add(meta["name"])
                    pytest.fail(f"{meta['name']}, claimed by the rogue, confirmed for victim")
        for c in _pool_status(cluster, ns).get("conditions", []):
            if c["type"] == "ClaimsDelivered" and c["status"] == "False":
                undelivered.append(c)

    def victim_done() -> dict[str, Any] | None:
        observe()
        status = _json(cluster, "get", "ej", "victim", "-n", ns).get("status") or {}
        if status.get("phase") == "Failed":
            pytest.fail(f"job victim failed: {json.dumps(status, indent=2)}")
        return status if status.get("phase") == "Succeeded" else None

    status = wait_until(victim_done, timeout=JOB_TIMEOUT_S, interval=0.5, what="victim to succeed")
    victim_s = time.monotonic() - began
    # (4) adopted by the job, never confirmed for it: it runs the rogue's claim, not the job's.
    assert victims_warm and victims_warm <= stolen, (victims_warm, stolen)
    assert not confirmed_for_victim, confirmed_for_victim
    for pod in _job_pods(cluster, ns, "victim"):
        annotations = pod["metadata"].get("annotations", {})
        if "appliance.dev/claim-confirmed" in annotations:  # any warm one left: its own job's
            assert (
                annotations.get("appliance.dev/claimed-for")
                == pod["metadata"]["ownerReferences"][0]["uid"]
            )
    # (1) the job ran cold, with its own values; the pool said why it was not claimed.
    claim = next(c for c in status["conditions"] if c["type"] == "PoolClaim")
    assert claim["status"] == "False" and claim["reason"] == "PoolClaimsNotDelivered", claim
    cold = [
        p
        for p in _job_pods(cluster, ns, "victim")
        if "appliance.dev/pool-name" not in p["metadata"]["labels"]
        and p["status"].get("phase") == "Succeeded"
    ]
    assert len(cold) == SMALL_POOL, [
        p["metadata"]["name"] for p in _job_pods(cluster, ns, "victim")
    ]
    for pod in cold:
        seen = loader.parse(_logs(cluster, ns, pod["metadata"]["name"]))
        assert seen.get("env INLINE") == INLINE_SENTINEL, seen
    observe()
    assert undelivered, "the pool never said ClaimsDelivered=False"
    assert any(name in c["message"] for c in undelivered for name in stolen), undelivered
    events = cluster.kubectl("get", "events", "-n", ns, "-o", "json").stdout
    assert "ClaimNotDelivered" in events
    # Bounded: the job's workers burnt the stolen pods, nothing more.
    assert len(victims_warm) <= SMALL_POOL

    # Recovery: the pool refills; a probe of a fresh idle pod lifts the block; the next job
    # is claimed warm and confirmed for itself.
    def delivered_again() -> bool:
        conditions = _pool_status(cluster, ns).get("conditions", [])
        return any(c["type"] == "ClaimsDelivered" and c["status"] == "True" for c in conditions)

    wait_until(delivered_again, timeout=240, what="ClaimsDelivered=True after a probe")
    recovered_s = time.monotonic() - began
    wait_until(full, timeout=240, what="the pool to refill")
    _apply(cluster, ns, _job("after", 1, image, loader, env, ["INLINE"]))
    status = _wait_succeeded(cluster, ns, "after", wait_until)
    claim = next(c for c in status["conditions"] if c["type"] == "PoolClaim")
    assert claim["reason"] == "Claimed", claim
    (after,) = _job_pods(cluster, ns, "after")
    annotations = after["metadata"]["annotations"]
    assert (
        annotations["appliance.dev/claimed-for"] == after["metadata"]["ownerReferences"][0]["uid"]
    )
    observe()
    # Initial pool + the refill of the two burnt pods + the refill after "after": no churn.
    assert len(pool_pods_seen) <= 2 * SMALL_POOL + 1 + 1, sorted(pool_pods_seen)
    print(
        f"undeliverable pool: victim succeeded cold after {victim_s:.1f} s, ClaimsDelivered=True "
        f"again {recovered_s:.1f} s after it was submitted; {len(victims_warm)} pool pod(s) "
        f"adopted by it, {len(pool_pods_seen)} pool pods in all"
    )
