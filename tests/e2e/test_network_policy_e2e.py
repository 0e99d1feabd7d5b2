"""The claim port's NetworkPolicy, enforced on kind (issue 21: defect 6 and "NetworkPolicy
enforced on the e2e cluster").

The e2e cluster's pod network (hack/offline/node-cni.sh) enforces no NetworkPolicy; the node image
runs kube-router's firewall beside it (hack/offline/node-image.sh, DaemonSet
``kube-system/kube-router-firewall``: iptables and ipset). The operator runs as the chart's
Deployment and makes the policy ``<pool>-claim`` in each pool's namespace
(operator/appliance_operator/pool/network.py). In order:

1. the policy is there, owned by the pool, in the release namespace and in a user namespace;
2. controls: a pod with the operator's labels in the operator's namespace opens a TCP
   connection to the idle workers' claim port in both namespaces, and the pods that are not
   the operator reach the network (the operator's health port);
3. pods that are not the operator, in the release namespace and in the user namespace, cannot
   even open a TCP connection to an idle worker's claim port (nor across namespaces);
4. a namespace with a default-deny ingress policy still gets warm workers: its job is claimed
   warm (``PoolClaim`` ``Claimed``), runs with its env and succeeds (the policy keeps admitting
   the operator to a claimed pod until its claim is delivered: with a policy of idle pods
   only, the delivery raced kube-router letting go of the just-claimed pod, and 2 of 4 runs
   fell back to cold workers);
5. deleting a pool deletes its policy (owner reference).

The namespaces are ``it-test-pool-*``: the package's host operator leaves them alone.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

if TYPE_CHECKING:
    from support.cluster import WaitUntil
    from support.kind import KindCluster, Loader

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "appliance-operator"
LOADER_FILE = Path(__file__).resolve().parent / "appliance_e2e_loader.py"
RELEASE = "appliance-operator-np"  # contains the chart's name: the full name is the release's
OPERATOR_LABELS = {
    "app.kubernetes.io/name": "appliance-operator",
    "app.kubernetes.io/instance": RELEASE,
}
POOL = "np"
CLAIM_PORT = 7443
HEALTH_PORT = 8080
ENFORCER = "kube-router-firewall"
INLINE_SENTINEL = "e2e-np-inline-70d2"
#: Seconds one connection attempt may take (a dropped SYN is a timeout).
CONNECT_TIMEOUT_S = 3
PROBE = (
    "import socket, sys\n"
    "try:\n"
    f"    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout={CONNECT_TIMEOUT_S})"
    ".close()\n"
    "    print('OPEN')\n"
    "except OSError as exc:\n"
    "    print('BLOCKED', type(exc).__name__, exc)\n"
)


def _json(cluster: KindCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl(*args, "-o", "json").stdout)


def _apply(cluster: KindCluster, namespace: str, doc: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))


def _make_namespace(cluster: KindCluster, prefix: str, wait_until: WaitUntil) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    wait_until(
        lambda: cluster.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
        timeout=30,
        what=f"ServiceAccount {name}/default",
    )
    return name


def _pool(image: str, replicas: int, template: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "appliance.dev/v1alpha1",
        "kind": "WorkerPool",
        "metadata": {"name": POOL},
        "spec": {
            "image": image,
            "replicas": replicas,
            "template": {**template, "imagePullPolicy": "Never"},
        },
    }


def _idle_workers(cluster: KindCluster, namespace: str) -> list[dict[str, Any]]:
    items = _json(
        cluster,
        "get",
        "pods",
        "-n",
        namespace,
        "-l",
        f"appliance.dev/pool-name={POOL},appliance.dev/pool-state=idle",
    )["items"]
    return [
        p
        for p in items
        if p["status"].get("podIP")
        and not p["metadata"].get("deletionTimestamp")
        and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p["status"].get("conditions", [])
        )
    ]


def _client_pod(
    cluster: KindCluster, namespace: str, name: str, image: str, labels: dict[str, str]
) -> None:
    _apply(
        cluster,
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"appliance.dev/test": "np-client", **labels}},
            "spec": {
                "terminationGracePeriodSeconds": 0,
                "automountServiceAccountToken": False,
                "containers": [
                    {
                        "name": "client",
                        "image": image,
                        "imagePullPolicy": "Never",
                        "command": ["sleep", "3600"],
                    }
                ],
            },
        },
    )


def _probe(cluster: KindCluster, namespace: str, pod: str, ip: str, port: int) -> str:
    """One TCP connection attempt from ``pod`` to ``ip:port``: ``OPEN`` or ``BLOCKED ...``."""
    out = cluster.kubectl(
        "exec", "-n", namespace, pod, "--", "python3", "-c", PROBE, ip, str(port), timeout=60
    ).stdout.strip()
    assert out.startswith(("OPEN", "BLOCKED")), out
    return str(out)


def _print_diagnostics(cluster: KindCluster, namespaces: list[str]) -> None:
    for ns in namespaces:
        for args in (
            ("get", "pods,networkpolicies,wp,ej", "-n", ns, "-o", "wide", "--show-labels"),
            ("get", "events", "-n", ns, "--sort-by=.lastTimestamp"),
        ):
            proc = cluster.kubectl(*args, check=False, timeout=30)
            print(f"$ kubectl {' '.join(args)}\n{proc.stdout}{proc.stderr}")
    for args in (
        ("logs", "-n", namespaces[0], "-l", f"app.kubernetes.io/instance={RELEASE}", "--tail=300"),
        ("logs", "-n", "kube-system", f"ds/{ENFORCER}", "--tail=100"),
    ):
        proc = cluster.kubectl(*args, check=False, timeout=30)
        print(f"$ kubectl {' '.join(args)}\n{proc.stdout}{proc.stderr}")


def test_pool_claim_port_admits_only_the_operator(
    cluster: KindCluster, namespace: str, loader: Loader, wait_until: WaitUntil
) -> None:
    found = cluster.kubectl(
        "get", "daemonset", ENFORCER, "-n", "kube-system", "-o", "json", check=False
    )
    if found.returncode != 0:
        pytest.fail(
            f"the kind cluster has no NetworkPolicy enforcer (DaemonSet kube-system/{ENFORCER}, "
            "made by hack/offline/node-image.sh's node image): nothing here would be enforced"
        )

    def enforcer_ready() -> bool:
        # On every node (a node restarted by an earlier test restarts its pod too).
        status = _json(cluster, "get", "daemonset", ENFORCER, "-n", "kube-system")["status"]
        want = status.get("desiredNumberScheduled")
        return bool(want) and status.get("numberReady") == want

    wait_until(enforcer_ready, timeout=180, what=f"{ENFORCER} ready on every node")
    release_ns = namespace  # it-test-pool-*: the host operator leaves it to the chart's
    user_ns = _make_namespace(cluster, "it-test-pool-np-user", wait_until)
    deny_ns = _make_namespace(cluster, "it-test-pool-np-deny", wait_until)
    namespaces = [release_ns, user_ns, deny_ns]
    try:
        _run(cluster, release_ns, user_ns, deny_ns, loader, wait_until)
    except BaseException:
        _print_diagnostics(cluster, namespaces)  # shown with the failure
        raise
    finally:
        cluster.helm("uninstall", RELEASE, "--namespace", release_ns, check=False)
        for ns in (user_ns, deny_ns):
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def _run(
    cluster: KindCluster,
    release_ns: str,
    user_ns: str,
    deny_ns: str,
    loader: Loader,
    wait_until: WaitUntil,
) -> None:
    image = cluster.worker_image
    cluster.apply_crds()
    repository, _, tag = cluster.operator_image.rpartition(":")
    cluster.helm(
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        release_ns,
        "--set",
        "rbac.scope=namespace",
        "--set",
        f"watchNamespaces={{{release_ns},{user_ns},{deny_ns}}}",
        "--set",
        "rbac.aggregateToDefaultRoles=false",
        "--set",
        f"image.repository={repository}",
        "--set",
        f"image.tag={tag}",
        "--set",
        "image.pullPolicy=Never",
    )
    cluster.kubectl(
        "rollout",
        "status",
        f"deployment/{RELEASE}",
        "-n",
        release_ns,
        "--timeout=180s",
        timeout=200,
    )
    operator_pod = next(
        p
        for p in _json(
            cluster,
            "get",
            "pods",
            "-n",
            release_ns,
            "-l",
            ",".join(f"{k}={v}" for k, v in OPERATOR_LABELS.items()),
        )["items"]
        if p["metadata"].get("ownerReferences") and p["status"].get("podIP")
    )
    operator_ip = operator_pod["status"]["podIP"]

    # The pools, and the clients (started meanwhile).
    for ns in (release_ns, user_ns):
        _apply(cluster, ns, _pool(image, 1, {}))
    _client_pod(cluster, release_ns, "operator-lookalike", image, OPERATOR_LABELS)
    _client_pod(cluster, release_ns, "intruder", image, {})
    _client_pod(cluster, user_ns, "intruder", image, {})
    workers = {
        ns: wait_until(
            lambda ns=ns: _idle_workers(cluster, ns), timeout=240, what=f"an idle worker in {ns}"
        )[0]
        for ns in (release_ns, user_ns)
    }
    worker_ip = {ns: str(w["status"]["podIP"]) for ns, w in workers.items()}
    for ns in (release_ns, user_ns):
        cluster.kubectl(
            "wait",
            "--for=condition=Ready",
            "pod",
            "-l",
            "appliance.dev/test=np-client",
            "-n",
            ns,
            "--timeout=120s",
            timeout=150,
        )

    # 1. the operator's policy where each pool is, owned by the pool.
    for ns in (release_ns, user_ns):
        pool_uid = _json(cluster, "get", "wp", POOL, "-n", ns)["metadata"]["uid"]
        policy = wait_until(
            lambda ns=ns: _json(cluster, "get", "networkpolicy", f"{POOL}-claim", "-n", ns),
            timeout=60,
            what=f"NetworkPolicy {ns}/{POOL}-claim",
        )
        owners = policy["metadata"]["ownerReferences"]
        assert [(o["kind"], o["uid"]) for o in owners] == [("WorkerPool", pool_uid)], owners
        (rule,) = policy["spec"]["ingress"]
        assert rule["ports"] == [{"protocol": "TCP", "port": CLAIM_PORT}], rule
    # Only the operator's own policies (no chart-rendered one, no other).
    assert {
        p["metadata"]["name"]
        for p in _json(cluster, "get", "networkpolicy", "-n", release_ns)["items"]
    } == {f"{POOL}-claim"}

    # 2. controls: an allowed source opens the claim port in both namespaces; the intruders
    #    reach the network (the operator's health port, which no policy selects).
    for ns in (release_ns, user_ns):
        wait_until(
            lambda ns=ns: (
                _probe(cluster, release_ns, "operator-lookalike", worker_ip[ns], CLAIM_PORT)
                == "OPEN"
            ),
            timeout=60,
            what=f"the operator's labels to open {ns}'s idle worker's claim port",
        )
        wait_until(
            lambda ns=ns: _probe(cluster, ns, "intruder", operator_ip, HEALTH_PORT) == "OPEN",
            timeout=60,
            what=f"the intruder in {ns} to reach the operator's health port",
        )

    # 3. pods that are not the operator: not even a TCP connection, each several times.
    for client_ns, target_ns in [
        (release_ns, release_ns),
        (user_ns, user_ns),
        (user_ns, release_ns),
        (release_ns, user_ns),
    ]:
        # The policies are older than the probes; an enforcer just restarted on a node (an
        # earlier test's) may still be writing its rules: the first probe may wait for it.
        wait_until(
            lambda c=client_ns, t=target_ns: _probe(
                cluster, c, "intruder", worker_ip[t], CLAIM_PORT
            ).startswith("BLOCKED"),
            timeout=30,
            what=f"a pod in {client_ns} to be refused by {target_ns}'s idle worker's claim port",
        )
        for _ in range(3):
            out = _probe(cluster, client_ns, "intruder", worker_ip[target_ns], CLAIM_PORT)
            assert out.startswith("BLOCKED"), (
                f"a pod in {client_ns} opened a connection to the claim port of an idle "
                f"worker in {target_ns}: {out}"
            )
    for ns, worker in workers.items():  # untouched: still idle, still Running
        again = _json(cluster, "get", "pod", worker["metadata"]["name"], "-n", ns)
        assert again["metadata"]["labels"]["appliance.dev/pool-state"] == "idle"
        assert again["status"]["phase"] == "Running"

    # 4. default-deny ingress in a namespace: its pool's workers are still claimed warm.
    _apply(
        cluster,
        deny_ns,
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "default-deny-ingress"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
        },
    )
    _apply(
        cluster,
        deny_ns,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "e2e-loader"},
            "data": {LOADER_FILE.name: LOADER_FILE.read_text()},
        },
    )
    template = {**loader.template, "imagePullPolicy": "Never"}
    _apply(cluster, deny_ns, _pool(image, 2, template))
    wait_until(
        lambda: len(_idle_workers(cluster, deny_ns)) >= 2,
        timeout=240,
        what=f"2 idle workers in {deny_ns}",
    )
    # The default deny is enforced (a control): the intruder's pod-to-pod traffic to this
    # namespace's idle worker is dropped, as to any of its pods.
    deny_worker_ip = str(_idle_workers(cluster, deny_ns)[0]["status"]["podIP"])
    assert _probe(cluster, user_ns, "intruder", deny_worker_ip, CLAIM_PORT).startswith("BLOCKED")
    _apply(
        cluster,
        deny_ns,
        {
            "apiVersion": "appliance.dev/v1alpha1",
            "kind": "ExecuteJob",
            "metadata": {"name": "behind-deny"},
            "spec": {
                "replicas": 2,
                "image": image,
                "pool": POOL,
                "entrypoint": loader.entrypoint,
                "args": ["INLINE"],
                "template": template,
                "env": [
                    {"name": "PYTHONPATH", "value": loader.path},
                    {"name": "INLINE", "value": INLINE_SENTINEL},
                ],
            },
        },
    )

    def done() -> dict[str, Any] | None:
        status = _json(cluster, "get", "ej", "behind-deny", "-n", deny_ns).get("status") or {}
        if status.get("phase") == "Failed":
            pytest.fail(f"job behind-deny failed: {json.dumps(status, indent=2)}")
        return status if status.get("phase") == "Succeeded" else None

    status = wait_until(done, timeout=240, what="job behind-deny to succeed")
    claim = next(c for c in status["conditions"] if c["type"] == "PoolClaim")
    assert claim["reason"] == "Claimed", claim  # warm: every worker from the pool
    pods = _json(cluster, "get", "pods", "-n", deny_ns, "-l", "appliance.dev/job-name=behind-deny")[
        "items"
    ]
    assert len(pods) == 2
    for pod in pods:
        assert pod["metadata"]["labels"].get("appliance.dev/pool-name") == POOL, pod["metadata"]
        seen = loader.parse(cluster.pod_logs(deny_ns, pod["metadata"]["name"]))
        assert seen.get("env INLINE") == INLINE_SENTINEL, seen
        # Delivered: the claim port's policy has let go of it (the job's pod, not the pool's).
        assert pod["metadata"]["labels"].get("appliance.dev/claim-delivered") == "true"

    # 5. the policy goes with its pool.
    cluster.kubectl("delete", "wp", POOL, "-n", user_ns, "--wait=false")
    wait_until(
        lambda: (
            cluster.kubectl(
                "get", "networkpolicy", f"{POOL}-claim", "-n", user_ns, check=False
            ).returncode
            != 0
        ),
        timeout=120,
        what="the deleted pool's NetworkPolicy to be garbage-collected",
    )
