"""The ML user's client on real pods: ``logs(follow=True)`` yields lines while the job runs and
follows a failed worker's replacement attempt (``backoffLimit: 1``); Ctrl-C (SIGINT to a
client process) during ``wait()`` leaves no worker pod running; ``get_job`` reattaches from a
second process.

The worker code is a small script shipped in a ConfigMap: each attempt prints
``E2E start <attempt>`` and waits for ``/tmp/e2e-release``, which the test creates with
``kubectl exec`` once it has seen that line through the stream (so the line provably arrived
before the attempt, let alone the job, ended). Attempt 0 of worker 0 then exits 3; every other
attempt exits 0.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from kubernetes import client
from user_client import UserClient

if TYPE_CHECKING:
    from support.cluster import WaitUntil
    from support.kind import NodeCluster, Operator

FLAKY = """
import os, sys, time
name = os.environ["APPLIANCE_WORKER_NAME"]
print(f"E2E start {name}", flush=True)
while not os.path.exists("/tmp/e2e-release"):
    time.sleep(0.1)
if name == os.environ["APPLIANCE_JOB_NAME"] + "-worker-0":
    print(f"E2E failing {name}", flush=True)
    sys.exit(3)
print(f"E2E done {name}", flush=True)
"""
HOLD = """
import time
print("E2E holding", flush=True)
while True:
    time.sleep(1)
"""
MOUNT = "/e2e-follow"


def ship(cluster: NodeCluster, namespace: str) -> dict[str, Any]:
    """The scripts in a ConfigMap; the spec.template that mounts them."""
    client.CoreV1Api(cluster.api_client).create_namespaced_config_map(
        namespace,
        {
            "metadata": {"name": "e2e-follow"},
            "data": {"flaky.py": FLAKY, "hold.py": HOLD},
        },
    )
    return {
        "volumes": [{"name": "scripts", "configMap": {"name": "e2e-follow"}}],
        "volumeMounts": [{"name": "scripts", "mountPath": MOUNT, "readOnly": True}],
        "imagePullPolicy": "Never",
    }


def release(cluster: NodeCluster, namespace: str, pod: str) -> None:
    cluster.kubectl("-n", namespace, "exec", pod, "-c", "worker", "--", "touch", "/tmp/e2e-release")


def test_follow_streams_while_running_and_follows_the_replacement(
    cluster: NodeCluster,
    namespace: str,
    operator: Operator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import cerebras_appliance as app

    monkeypatch.setenv("KUBECONFIG", cluster.kubeconfig)
    template = ship(cluster, namespace)
    name = f"follow-{uuid.uuid4().hex[:5]}"
    with app.submit(
        f"{MOUNT}/flaky.py",
        replicas=2,
        name=name,
        backend="kubernetes",
        namespace=namespace,
        image=cluster.worker_image,
        template=template,
        backoff_limit=1,
    ) as job:
        seen: list[app.LogLine] = []
        phases_at_start: dict[str, str] = {}
        for line in job.stream_logs():
            seen.append(line)
            if line.text.startswith("E2E start "):
                phases_at_start[line.pod] = job.status().phase
                release(cluster, namespace, line.pod)
        operator.check_alive()
        final = job.wait(timeout=60, progress=False)
        assert final.phase == "Succeeded" and final.failed == 1, final
        texts: dict[str, list[str]] = {}
        for line in seen:
            if line.text.startswith("E2E "):
                texts.setdefault(line.pod, []).append(line.text)
        w0, w1, w01 = f"{name}-worker-0", f"{name}-worker-1", f"{name}-worker-0-1"
        assert texts == {
            w0: [f"E2E start {w0}", f"E2E failing {w0}"],
            w1: [f"E2E start {w1}", f"E2E done {w1}"],
            w01: [f"E2E start {w01}", f"E2E done {w01}"],
        }
        # Each start line came through the stream before the job ended: the attempt was
        # still waiting for the release the test sent only after reading it. (Pending or
        # Running: the job's status may not yet count a worker that has started printing.)
        assert set(phases_at_start) == {w0, w1, w01}, phases_at_start
        assert set(phases_at_start.values()) <= {"Pending", "Running"}, phases_at_start
        replacement = next(x for x in seen if x.pod == w01)
        assert (replacement.worker, replacement.attempt) == (0, 1)
        assert job.logs(worker=0, tail=1) == f"E2E done {w01}\n"
        assert job.logs(worker=0, attempt=0, tail=1) == f"E2E failing {w0}\n"


CLIENT = """
import json, signal, sys
import cerebras_appliance as app
# Ctrl-C as on a terminal, even when the tests run where SIGINT is ignored (a background job).
signal.signal(signal.SIGINT, signal.default_int_handler)
cfg = json.loads(sys.argv[1])
job = app.submit(cfg["entrypoint"], replicas=2, name=cfg["name"], backend="kubernetes",
                 namespace=cfg["namespace"], image=cfg["image"], template=cfg["template"])
job.wait(timeout=300)
"""

REATTACH = """
import json, sys
import cerebras_appliance as app
job = app.get_job(sys.argv[1], namespace=sys.argv[2])
status = job.wait(timeout=60, until="ready", progress=False)
lines = [x for x in job.logs().values() if "E2E holding" in x]
print(json.dumps({"phase": status.phase, "ready": status.ready_replicas, "holding": len(lines)}))
"""


def test_ctrl_c_in_wait_leaves_no_worker_running_and_get_job_reattaches(
    cluster: NodeCluster, namespace: str, operator: Operator, wait_until: WaitUntil
) -> None:
    template = ship(cluster, namespace)
    name = f"sigint-{uuid.uuid4().hex[:5]}"
    cfg = {
        "name": name,
        "namespace": namespace,
        "image": cluster.worker_image,
        "template": template,
        "entrypoint": f"{MOUNT}/hold.py",
    }
    env = {"PATH": os.environ.get("PATH", ""), "KUBECONFIG": cluster.kubeconfig}
    user = UserClient(CLIENT, [json.dumps(cfg)], env)
    user.wait_for(f"{namespace}/{name}: Running: 2/2 ready", timeout=180)

    # A second process reattaches to the running job by name.
    second = subprocess.run(
        [sys.executable, "-c", REATTACH, name, namespace],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout) == {"phase": "Running", "ready": 2, "holding": 2}

    code, err = user.interrupt()
    assert code in (-signal.SIGINT, 130), err
    assert f"{namespace}/{name}: interrupted: job deleted, its workers stopped" in err

    core = client.CoreV1Api(cluster.api_client)

    def no_worker_running() -> bool:
        pods = core.list_namespaced_pod(
            namespace, label_selector=f"appliance.dev/job-name={name}"
        ).items
        return not [p for p in pods if p.status.phase in ("Pending", "Running")]

    wait_until(no_worker_running, timeout=90, what="no worker pod running")
    operator.check_alive()
