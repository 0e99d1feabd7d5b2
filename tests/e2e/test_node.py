"""The real node runs pods from the locally built worker image (no registry, no Docker)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kubernetes import client

if TYPE_CHECKING:
    from conftest import NodeCluster, WaitUntil

SCRIPT = """
import os, shutil, sys
import cerebras_appliance, pydantic, kubernetes
print("worker-image-ok", os.getuid(), sys.version_info[:2], shutil.which("cat"), flush=True)
import time
time.sleep(600)
"""


def _pod(name: str, image: str, command: list[str]) -> dict[str, Any]:
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
        },
    }


def test_node_is_ready_and_real(cluster: NodeCluster) -> None:
    core = client.CoreV1Api(cluster.api_client)
    node = core.read_node(cluster.node_name)
    ready = {c.type: c.status for c in node.status.conditions}
    assert ready["Ready"] == "True"
    assert node.status.node_info.container_runtime_version.startswith("containerd://")
    assert node.status.node_info.kubelet_version == cluster.versions["KUBE_VERSION"]
    assert "kwok.x-k8s.io/node" not in (node.metadata.annotations or {})
    # The apiserver reaches this kubelet over loopback only.
    assert {a.type: a.address for a in node.status.addresses}["InternalIP"] == "127.0.0.1"


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
    assert pod.spec.node_name == cluster.node_name
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
