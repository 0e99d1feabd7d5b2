"""The kind cluster the e2e tests run on is the one users run: real nodes (containerd + runc),
the worker image that `kind load` put there, cluster DNS, Service VIPs through kube-proxy, and a
pod network that spans the nodes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kubernetes import client

if TYPE_CHECKING:
    from support.cluster import WaitUntil
    from support.kind import NodeCluster

SCRIPT = """
import os, shutil, sys
import cerebras_appliance, pydantic, kubernetes
print("worker-image-ok", os.getuid(), sys.version_info[:2], shutil.which("cat"), flush=True)
import time
time.sleep(600)
"""

# Resolves the API server's Service name through cluster DNS and opens a TCP connection to it
# (kube-proxy's VIP), then to a pod on another node (the pod network across nodes).
NETWORK_SCRIPT = """
import socket, sys
name = "kubernetes.default.svc.cluster.local"
ip = socket.gethostbyname(name)
print("resolved", name, ip, flush=True)
socket.create_connection((ip, 443), timeout=10).close()
print("service-connect-ok", flush=True)
peer = sys.argv[1]
socket.create_connection((peer, 8000), timeout=10).close()
print("peer-connect-ok", peer, flush=True)
"""
SERVER_SCRIPT = "import http.server; http.server.test(port=8000, bind='0.0.0.0')"


def _pod(name: str, image: str, command: list[str], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": False,
            "containers": [
                {"name": "main", "image": image, "imagePullPolicy": "Never", "command": command}
            ],
            **spec,
        },
    }


def test_nodes_are_ready_and_real(cluster: NodeCluster) -> None:
    core = client.CoreV1Api(cluster.api_client)
    assert len(cluster.node_names) >= 1
    server = client.VersionApi(cluster.api_client).get_code().git_version
    nodes = {n.metadata.name: n for n in core.list_node().items}
    assert set(cluster.node_names) < set(nodes), "the control plane is a node too"
    for node in nodes.values():
        ready = {c.type: c.status for c in node.status.conditions}
        assert ready["Ready"] == "True", node.metadata.name
        assert node.status.node_info.container_runtime_version.startswith("containerd://")
        assert node.status.node_info.kubelet_version == server
    for name in cluster.node_names:  # workers take pods: no taint keeps them off
        assert not nodes[name].spec.taints, nodes[name].spec.taints


def test_worker_image_pod_runs_and_logs(
    cluster: NodeCluster, namespace: str, wait_until: WaitUntil
) -> None:
    core = client.CoreV1Api(cluster.api_client)
    core.create_namespaced_pod(
        namespace, _pod("worker-image", cluster.worker_image, ["python3", "-c", SCRIPT])
    )

    def running() -> bool:
        pod = core.read_namespaced_pod("worker-image", namespace)
        if pod.status.phase in ("Failed", "Succeeded"):
            raise AssertionError(f"pod ended: {pod.status}")
        waiting = [
            s.state.waiting
            for s in pod.status.container_statuses or []
            if s.state and s.state.waiting and s.state.waiting.reason != "ContainerCreating"
        ]
        assert not waiting, f"container waiting: {waiting}"  # ErrImageNeverPull, CrashLoop...
        return bool(pod.status.phase == "Running")

    wait_until(running, timeout=120, what="the worker-image pod Running")
    pod = core.read_namespaced_pod("worker-image", namespace)
    assert pod.spec.node_name in cluster.node_names
    logs = wait_until(
        lambda: (
            (out := cluster.pod_logs(namespace, "worker-image"))
            and "worker-image-ok" in out
            and out
        ),
        timeout=60,
        what="the pod's log line",
    )
    # Non-root (uid 65532), Debian's python 3.11, coreutils cat for the readiness probe.
    assert "worker-image-ok 65532 (3, 11) /usr/bin/cat" in logs


def test_failing_container_reports_exit_code(
    cluster: NodeCluster, namespace: str, wait_until: WaitUntil
) -> None:
    core = client.CoreV1Api(cluster.api_client)
    core.create_namespaced_pod(
        namespace,
        _pod(
            "exit-3", cluster.worker_image, ["python3", "-c", "print('bye'); raise SystemExit(3)"]
        ),
    )

    def terminated() -> Any:
        pod = core.read_namespaced_pod("exit-3", namespace)
        statuses = pod.status.container_statuses or []
        return pod.status.phase == "Failed" and statuses and statuses[0].state.terminated

    state = wait_until(terminated, timeout=120, what="the exit-3 pod Failed")
    assert state.exit_code == 3
    assert cluster.pod_logs(namespace, "exit-3").strip() == "bye"


def test_worker_resolves_cluster_dns_and_reaches_services_and_other_nodes(
    cluster: NodeCluster, namespace: str, wait_until: WaitUntil
) -> None:
    core = client.CoreV1Api(cluster.api_client)
    first, last = cluster.node_names[0], cluster.node_names[-1]
    core.create_namespaced_pod(
        namespace,
        _pod(
            "server", cluster.worker_image, ["python3", "-c", SERVER_SCRIPT],
            nodeName=first, restartPolicy="Always",
        ),
    )  # fmt: skip

    def server_ip() -> str | None:
        pod = core.read_namespaced_pod("server", namespace)
        return str(pod.status.pod_ip) if pod.status.phase == "Running" else None

    peer = wait_until(server_ip, timeout=120, what="the server pod Running")
    # The client on another node when there is one (a single-worker cluster: the same node).
    core.create_namespaced_pod(
        namespace,
        _pod(
            "client", cluster.worker_image, ["python3", "-c", NETWORK_SCRIPT, peer],
            nodeName=last,
        ),
    )  # fmt: skip

    def finished() -> Any:
        pod = core.read_namespaced_pod("client", namespace)
        return pod.status.phase in ("Succeeded", "Failed") and pod

    pod = wait_until(finished, timeout=120, what="the client pod to finish")
    log = cluster.pod_logs(namespace, "client")
    assert pod.status.phase == "Succeeded", log
    service_ip = core.read_namespaced_service("kubernetes", "default").spec.cluster_ip
    assert f"resolved kubernetes.default.svc.cluster.local {service_ip}" in log
    assert "service-connect-ok" in log
    assert f"peer-connect-ok {peer}" in log
