"""The ML user's client against a real kube-apiserver (kwok fake nodes run the "workers"):
progress naming a stuck worker, the timeout message, JobFailedError, get_job from a second
process, the context manager, Ctrl-C (SIGINT to a client process) during wait().

kwok pods have no logs; streamed logs on real pods are in tests/e2e/test_client_follow_e2e.py.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from user_client import UserClient

from appliance_operator.testing import OperatorProcess

if TYPE_CHECKING:
    from support.cluster import Cluster, WaitUntil

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "appliance.dev", "v1alpha1", "executejobs"
NOWHERE = {"nodeSelector": {"appliance.dev/test": "no-such-node"}}


@pytest.fixture(scope="module")
def operator(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    cluster.apply_crds()
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    op = OperatorProcess(cluster.kubeconfig, log, ["--all-namespaces", "--metrics-port", "0"])
    op.start()
    try:
        yield
    finally:
        op.stop()


@pytest.fixture
def kubeconfig(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("KUBECONFIG", cluster.kubeconfig)
    return cluster.kubeconfig


def submit(namespace: str, template: dict[str, Any], replicas: int = 2, **kw: Any) -> Any:
    import cerebras_appliance as app

    return app.submit(
        "loader.py",
        replicas=replicas,
        name=f"c-{uuid.uuid4().hex[:6]}",
        backend="kubernetes",
        namespace=namespace,
        template=template,
        **kw,
    )


def pods(cluster: Cluster, namespace: str, job: str) -> list[Any]:
    core = client.CoreV1Api(cluster.api_client)
    return list(
        core.list_namespaced_pod(namespace, label_selector=f"appliance.dev/job-name={job}").items
    )


def job_exists(cluster: Cluster, namespace: str, name: str) -> bool:
    try:
        client.CustomObjectsApi(cluster.api_client).get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name
        )
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def test_progress_and_timeout_name_an_unschedulable_worker(
    cluster: Cluster, operator: None, kubeconfig: str, namespace: str, wait_until: WaitUntil
) -> None:
    from cerebras_appliance import JobTimeoutError

    with submit(namespace, NOWHERE) as job:
        wait_until(
            lambda: job.status().condition("WorkersReady").reason == "Unschedulable",
            timeout=60,
            what="WorkersReady=Unschedulable",
        )
        out = io.StringIO()
        with pytest.raises(JobTimeoutError) as caught:
            job.wait(timeout=1.5, progress=out)
    text = str(caught.value)
    assert text.startswith(f"job {namespace}/{job.name} did not finish within 1.5s: phase Pending")
    assert "waiting for 2 of 2 workers to succeed" in text
    assert f"Unschedulable: worker {job.name}-worker-0 is not running" in text
    shown = out.getvalue()
    assert f"{namespace}/{job.name}: Pending: 0/2 ready (env applied)" in shown
    assert f"Unschedulable: worker {job.name}-worker-0 is not running" in shown
    assert not job_exists(cluster, namespace, job.name)  # the with block deleted it


def test_failure_raises_and_get_job_reattaches_from_a_second_process(
    cluster: Cluster, operator: None, kubeconfig: str, namespace: str
) -> None:
    import cerebras_appliance as app

    with submit(namespace, cluster.kwok_pod_spec) as job:
        ready = job.wait(timeout=60, until="ready", progress=False)
        assert ready.ready_replicas == 2
        program = (
            "import json, sys, cerebras_appliance as app\n"
            "job = app.get_job(sys.argv[1], namespace=sys.argv[2])\n"
            "st = job.wait(timeout=5, until='ready', progress=False)\n"
            "print(json.dumps({'name': job.name, 'phase': st.phase, 'ready': st.ready_replicas,"
            " 'spec': job.manifest['spec']['replicas']}))\n"
        )
        second = subprocess.run(
            [sys.executable, "-c", program, job.name, namespace],
            env={"PATH": os.environ["PATH"], "KUBECONFIG": kubeconfig},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert second.returncode == 0, second.stderr
        seen = json.loads(second.stdout)
        assert seen == {"name": job.name, "phase": "Running", "ready": 2, "spec": 2}

        cluster.finish_pod(namespace, f"{job.name}-worker-1", 3)
        with pytest.raises(app.JobFailedError) as caught:
            job.result(timeout=60, progress=False)
        assert caught.value.reason == "BackoffLimitExceeded"
        assert caught.value.worker == f"{job.name}-worker-1" and caught.value.exit_code == 3
    with pytest.raises(app.JobNotFoundError):
        app.get_job(job.name, namespace=namespace)  # the with block deleted it


CLIENT = """
import signal, sys, json
import cerebras_appliance as app
# Ctrl-C as on a terminal, even when the tests run where SIGINT is ignored (a background job).
signal.signal(signal.SIGINT, signal.default_int_handler)
cfg = json.loads(sys.argv[1])
job = app.submit("loader.py", replicas=2, name=cfg["name"], backend="kubernetes",
                 namespace=cfg["namespace"], template=cfg["template"])
job.wait(timeout=120)
"""


def test_ctrl_c_during_wait_deletes_the_job_and_its_pods(
    cluster: Cluster, operator: None, kubeconfig: str, namespace: str, wait_until: WaitUntil
) -> None:
    name = f"sig-{uuid.uuid4().hex[:6]}"
    cfg = {"name": name, "namespace": namespace, "template": cluster.kwok_pod_spec}
    user = UserClient(
        CLIENT, [json.dumps(cfg)], {"PATH": os.environ["PATH"], "KUBECONFIG": kubeconfig}
    )
    # Inside wait(), with both workers running: its progress line says so.
    user.wait_for(f"{namespace}/{name}: Running: 2/2 ready", timeout=90)
    running = [p.metadata.name for p in pods(cluster, namespace, name)]
    assert sorted(running) == [f"{name}-worker-0", f"{name}-worker-1"]
    code, err = user.interrupt()
    assert code in (-signal.SIGINT, 130), err
    assert f"{namespace}/{name}: interrupted: job deleted, its workers stopped" in err
    assert not job_exists(cluster, namespace, name)
    wait_until(lambda: not pods(cluster, namespace, name), timeout=60, what="worker pods gone")


def test_scale_suspend_and_resume_change_the_executejob_and_the_operator_follows(
    cluster: Cluster, operator: None, kubeconfig: str, namespace: str, wait_until: WaitUntil
) -> None:
    import cerebras_appliance as app

    with submit(namespace, cluster.kwok_pod_spec) as job:
        assert job.wait(timeout=60, until="ready", progress=False).ready_replicas == 2
        job.scale(3)
        assert job.manifest["spec"]["replicas"] == 3
        wait_until(
            lambda: job.status().ready_replicas == 3, timeout=60, what="3 ready after scale(3)"
        )
        assert len(pods(cluster, namespace, job.name)) == 3
        with pytest.raises(app.InvalidJobError, match=r"spec\.replicas"):
            job.scale(0)  # the CRD's minimum, checked by the API server
        job.suspend()
        wait_until(lambda: job.status().phase == "Suspended", timeout=60, what="Suspended")
        wait_until(
            lambda: not pods(cluster, namespace, job.name), timeout=60, what="worker pods gone"
        )
        with pytest.raises(app.JobSuspendedError):
            job.wait(timeout=30, progress=False)
        job.resume()
        resumed = job.wait(timeout=60, until="ready", progress=False)
        assert resumed.phase == "Running" and resumed.ready_replicas == 3
        assert resumed.failed == 0


def test_wait_on_a_job_that_already_finished_returns_without_waiting_out_the_watch(
    cluster: Cluster, namespace: str, kubeconfig: str
) -> None:
    """The first list answers the wait; the watch the feed was opening meanwhile must be
    stopped at once, not left to end its window (it used to cost 30 s per wait)."""
    import time

    import cerebras_appliance as app

    custom = client.CustomObjectsApi(cluster.api_client)
    cluster.apply_crds()
    name = f"done-{uuid.uuid4().hex[:6]}"
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ExecuteJob",
        "metadata": {"name": name},
        "spec": {"replicas": 1, "image": "img", "entrypoint": "loader.py"},
    }
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, name, {"status": {"phase": "Succeeded"}}
    )
    job = app.get_job(name, namespace, backend="kubernetes")
    for _ in range(3):
        began = time.monotonic()
        assert job.wait(timeout=60, progress=False).phase == "Succeeded"
        took = time.monotonic() - began
        assert took < 10, f"wait() on a finished job took {took:.1f}s"
