"""End to end: the operator (on this host) runs ExecuteJobs as real pods on the real node.

The user code is tests/e2e/appliance_e2e_loader.py, mounted from a ConfigMap at /e2e and
importable only through the job's tracked ``PYTHONPATH`` (see the loader's docstring).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kubernetes import client

if TYPE_CHECKING:
    from support.cluster import WaitUntil
    from support.kind import Jobs, Loader, NodeCluster

SECRET_VALUE = "s3cr3t-token-e2e"
JOB_TIMEOUT_S = 180


def _ready(pod: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def test_env_reaches_every_worker_and_its_children(
    cluster: NodeCluster,
    namespace: str,
    jobs: Jobs,
    loader: Loader,
    wait_until: WaitUntil,
) -> None:
    jobs.core.create_namespaced_secret(
        namespace,
        {"metadata": {"name": "e2e-secrets"}, "stringData": {"token": SECRET_VALUE}},
    )
    tracked = {"DATA_ROOT": "/mnt/data", "API_TOKEN": SECRET_VALUE, "PYTHONPATH": loader.path}
    jobs.start(
        "env-e2e",
        loader,
        cluster.worker_image,
        ["DATA_ROOT", "API_TOKEN", "PYTHONPATH", "NOT_TRACKED", "--wait-release"],
        replicas=2,
        env=[
            {"name": "DATA_ROOT", "value": "/mnt/data"},
            {
                "name": "API_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": "e2e-secrets", "key": "token"}},
            },
            {"name": "PYTHONPATH", "value": loader.path},
        ],
    )

    # Both workers Running and Ready; Ready means the entrypoint applied the env (the probe
    # reads the marker the worker writes after patching os.environ, before the user code).
    def all_ready() -> list[client.V1Pod] | None:
        pods = jobs.pods("env-e2e")
        for pod in pods:
            assert pod.status.phase not in ("Failed", "Succeeded"), pod.status
        if len(pods) == 2 and all(_ready(p) for p in pods):
            return pods
        return None

    pods = wait_until(all_ready, timeout=JOB_TIMEOUT_S, what="2 worker pods Ready")
    for pod in pods:
        assert pod.spec.node_name in cluster.node_names
        probe = pod.spec.containers[0].startup_probe
        assert probe.var_exec.command[0] == "cat"
        # No value in the pod spec: only the operator's plumbing variables.
        assert SECRET_VALUE not in str(pod.spec)
        assert "/mnt/data" not in str(pod.spec)
    job = wait_until(
        lambda: (j := jobs.get("env-e2e")).get("status", {}).get("readyReplicas") == 2 and j,
        timeout=60,
        what="status.readyReplicas == 2",
    )
    assert job["status"]["phase"] == "Running"
    env_hash = job["status"]["envHash"]

    # Let the workers finish (exec goes apiserver -> kubelet -> containerd, all on loopback).
    for pod in pods:
        cluster.kubectl(
            "-n", namespace, "exec", pod.metadata.name, "--", "touch", "/tmp/e2e-release"
        )
    wait_until(
        lambda: jobs.phase("env-e2e") == "Succeeded",
        timeout=JOB_TIMEOUT_S,
        what="the job Succeeded",
    )

    for pod in pods:
        log = cluster.pod_logs(namespace, pod.metadata.name)
        seen = loader.parse(log)
        for name, value in tracked.items():
            assert seen.get(f"env {name}") == value, log
        assert seen.get("env NOT_TRACKED") == "<unset>", log
        assert seen.get("child DATA_ROOT") == "/mnt/data", log  # a child process sees it too
        # The marker (what readiness checks) existed when user code started, with this env.
        assert seen.get("ready-marker") == env_hash, log
        assert "E2E released" in log and "E2E done" in log
        assert "re-executing once so start-up variables take effect: PYTHONPATH" in log
        names = set(seen.get("names", "").split(","))
        assert set(tracked) <= names, log
        assert loader.untracked(names, set(tracked)) == set(), log


def test_worker_exit_code_fails_the_job(
    cluster: NodeCluster,
    namespace: str,
    jobs: Jobs,
    loader: Loader,
    wait_until: WaitUntil,
) -> None:
    jobs.start(
        "exit3-e2e",
        loader,
        cluster.worker_image,
        ["DATA_ROOT", "--exit=3"],
        replicas=2,
        env=[
            {"name": "DATA_ROOT", "value": "/mnt/x"},
            {"name": "PYTHONPATH", "value": loader.path},
        ],
    )
    job = wait_until(
        lambda: (j := jobs.get("exit3-e2e")).get("status", {}).get("phase") == "Failed" and j,
        timeout=JOB_TIMEOUT_S,
        what="the job Failed",
    )
    messages = [c.get("message", "") for c in job["status"].get("conditions", [])]
    assert any("exit code 3" in m for m in messages), job["status"]
    # The worker did run the user code (exit 3 is the user's, not a config error).
    failed = [p for p in jobs.pods("exit3-e2e") if p.status.phase == "Failed"]
    assert failed
    assert "E2E done" in cluster.pod_logs(namespace, failed[0].metadata.name)
