"""The worker lifecycle on a real kubelet: suspend, scale, delete, failures, stopping, node loss.

Each case asserts the job's phase, counters and conditions, as a platform engineer would see
them with ``kubectl get ej``. The user code is tests/e2e/appliance_e2e_loader.py with
``--hold`` (a ``sleep 600`` child; its ``finally`` prints ``E2E cleanup``).
"""

from __future__ import annotations

import select
import subprocess
import threading
import time
from typing import TYPE_CHECKING

import pytest
from kubernetes import watch

if TYPE_CHECKING:
    from support.cluster import WaitUntil
    from support.kind import Jobs, Loader, NodeCluster

TIMEOUT_S = 120
#: The pods' grace period is Kubernetes' default, 30 s; a worker that handles SIGTERM is gone
#: in well under that.
PROMPT_STOP_S = 10
ATTACH_TIMEOUT_S = 60


class LogFollower:
    """``kubectl logs -f`` of one pod in the background: what it printed up to its end.
    Returns once the stream is attached (its first line read): a pod deleted right after
    still has its whole log followed."""

    def __init__(self, cluster: NodeCluster, namespace: str, pod: str) -> None:
        self.proc = subprocess.Popen(
            [
                f"{cluster.bindir}/kubectl",
                "--kubeconfig",
                cluster.kubeconfig,
                "-n",
                namespace,
                "logs",
                "-f",
                pod,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], ATTACH_TIMEOUT_S)
        assert ready, f"kubectl logs -f {pod}: no line within {ATTACH_TIMEOUT_S}s"
        self.first = self.proc.stdout.readline()

    def output(self, timeout: float = 60) -> str:
        out, _ = self.proc.communicate(timeout=timeout)
        return self.first + out


class EndWatcher:
    """Watches one pod until it is deleted: its last state (exit code) and when it went."""

    def __init__(self, jobs: Jobs, pod: str) -> None:
        self.exit_code: int | None = None
        self.gone_at: float | None = None
        self._jobs, self._pod = jobs, pod
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._started.wait(10)

    def _run(self) -> None:
        w = watch.Watch()
        self._started.set()
        for event in w.stream(
            self._jobs.core.list_namespaced_pod,
            self._jobs.namespace,
            field_selector=f"metadata.name={self._pod}",
            timeout_seconds=TIMEOUT_S,
        ):
            pod = event["object"]
            for cs in pod.status.container_statuses or []:
                if cs.state and cs.state.terminated:
                    self.exit_code = cs.state.terminated.exit_code
            if event["type"] == "DELETED":
                self.gone_at = time.monotonic()
                w.stop()

    def join(self) -> None:
        self._thread.join(TIMEOUT_S)


def test_suspend_then_resume_is_not_a_failure(
    cluster: NodeCluster, jobs: Jobs, loader: Loader, wait_until: WaitUntil
) -> None:
    jobs.start("susp", loader, cluster.worker_image, ["--hold"], replicas=2)
    jobs.wait_phase(wait_until, "susp", "Running", ready=2)
    started = time.monotonic()
    jobs.patch("susp", {"suspend": True})
    st = jobs.wait_phase(wait_until, "susp", "Suspended")
    wait_until(lambda: not jobs.pods("susp"), timeout=TIMEOUT_S, what="suspended pods gone")
    stopped_in = time.monotonic() - started
    st = jobs.status("susp")
    assert st["failed"] == 0 and st.get("readyReplicas", 0) == 0
    assert jobs.condition("susp", "Suspended")["status"] == "True"
    assert jobs.condition("susp", "Failed")["status"] == "False"
    print(f"suspend: pods gone after {stopped_in:.2f}s")
    assert stopped_in < PROMPT_STOP_S, f"suspend took {stopped_in:.1f}s to remove the pods"

    jobs.patch("susp", {"suspend": False})
    st = jobs.wait_phase(wait_until, "susp", "Running", ready=2)
    assert st["failed"] == 0
    assert jobs.condition("susp", "Suspended")["status"] == "False"
    assert len(jobs.running_ready("susp")) == 2


def test_scale_down_and_up(
    cluster: NodeCluster, jobs: Jobs, loader: Loader, wait_until: WaitUntil
) -> None:
    jobs.start("scale", loader, cluster.worker_image, ["--hold"], replicas=3)
    jobs.wait_phase(wait_until, "scale", "Running", ready=3)
    jobs.patch("scale", {"replicas": 2})
    st = jobs.wait_phase(wait_until, "scale", "Running", ready=2)
    wait_until(lambda: len(jobs.pods("scale")) == 2, timeout=TIMEOUT_S, what="worker 2 removed")
    assert st["failed"] == 0 and st["replicas"] == 2
    assert jobs.running_ready("scale") == ["scale-worker-0", "scale-worker-1"]
    jobs.patch("scale", {"replicas": 3})
    st = jobs.wait_phase(wait_until, "scale", "Running", ready=3)
    assert st["failed"] == 0
    assert jobs.condition("scale", "WorkersReady")["reason"] == "EnvApplied"


def test_deleted_worker_pod_is_replaced_not_failed(
    cluster: NodeCluster, jobs: Jobs, loader: Loader, wait_until: WaitUntil, namespace: str
) -> None:
    jobs.start("del", loader, cluster.worker_image, ["--hold"], replicas=2)
    jobs.wait_phase(wait_until, "del", "Running", ready=2)
    logs = LogFollower(cluster, namespace, "del-worker-0")
    wait_until(lambda: "del-worker-0" in jobs.running_ready("del"), timeout=10, what="ready")
    end = EndWatcher(jobs, "del-worker-0")
    started = time.monotonic()
    cluster.kubectl("-n", namespace, "delete", "pod", "del-worker-0", "--wait=false")
    wait_until(
        lambda: jobs.running_ready("del") == ["del-worker-0-1", "del-worker-1"],
        timeout=TIMEOUT_S,
        what="the replacement running and ready",
    )
    st = jobs.wait_phase(wait_until, "del", "Running", ready=2)
    end.join()
    assert end.gone_at is not None, "the deleted pod never went away"
    gone_in = end.gone_at - started
    print(f"deleted worker pod gone after {gone_in:.2f}s, exit code {end.exit_code}")
    assert gone_in < PROMPT_STOP_S, f"the deleted pod took {gone_in:.1f}s to go"
    assert end.exit_code == 143, f"worker exit code {end.exit_code}, want 143 (SIGTERM)"
    assert "E2E cleanup" in logs.output(), "the user code's clean-up did not run"
    assert st["failed"] == 0
    assert jobs.running_ready("del") == ["del-worker-0-1", "del-worker-1"]


def test_failure_is_retried_within_backoff_limit_then_fails_the_job(
    cluster: NodeCluster, jobs: Jobs, loader: Loader, wait_until: WaitUntil
) -> None:
    jobs.start(
        "flaky",
        loader,
        cluster.worker_image,
        ["--hold", "--fail-index=1"],
        replicas=2,
        backoffLimit=1,
    )
    st = jobs.wait_phase(wait_until, "flaky", "Failed")
    assert st["failed"] == 2, st
    failed = jobs.condition("flaky", "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    assert "flaky-worker-1-1 failed (exit code 3)" in failed["message"]
    assert "2 worker failure(s), backoffLimit is 1" in failed["message"]
    names = {p.metadata.name for p in jobs.pods("flaky")}
    assert {"flaky-worker-1", "flaky-worker-1-1"} <= names, "both failed attempts kept for logs"
    assert "flaky-worker-1-2" not in names, "replaced once only"
    # The finished job released its running worker, promptly and with 143.
    wait_until(
        lambda: (
            not any(
                p.metadata.name == "flaky-worker-0" and p.status.phase == "Running"
                for p in jobs.pods("flaky")
            )
        ),
        timeout=PROMPT_STOP_S,
        what="the finished job's running worker stopped",
    )
    assert jobs.condition("flaky", "EnvResolved")["status"] == "True", "conditions are kept"


def test_finished_job_stops_running_workers_with_143_and_their_cleanup(
    cluster: NodeCluster, jobs: Jobs, loader: Loader, wait_until: WaitUntil, namespace: str
) -> None:
    jobs.start("stop", loader, cluster.worker_image, ["--hold"], replicas=2)
    jobs.wait_phase(wait_until, "stop", "Running", ready=2)
    logs = LogFollower(cluster, namespace, "stop-worker-0")
    end = EndWatcher(jobs, "stop-worker-0")
    started = time.monotonic()
    jobs.patch("stop", {"activeDeadlineSeconds": 1})  # the deadline has passed: Failed now
    st = jobs.wait_phase(wait_until, "stop", "Failed")
    assert jobs.condition("stop", "Failed")["reason"] == "DeadlineExceeded"
    assert st["failed"] == 0
    end.join()
    assert end.gone_at is not None
    gone_in = end.gone_at - started
    print(f"finished job's running worker gone after {gone_in:.2f}s, exit {end.exit_code}")
    assert gone_in < PROMPT_STOP_S, f"took {gone_in:.1f}s (grace period 30 s)"
    assert end.exit_code == 143
    assert "E2E cleanup" in logs.output()


def test_wrong_image_is_a_condition_naming_the_pod_and_reason(
    jobs: Jobs, loader: Loader, wait_until: WaitUntil, cluster: NodeCluster, namespace: str
) -> None:
    jobs.start("noimg", loader, "example.invalid/no-such-image:1", ["--hold"], replicas=1)

    def stuck() -> bool:
        cond = jobs.condition("noimg", "WorkersReady")
        return cond.get("reason") in ("ErrImageNeverPull", "ImagePullBackOff", "ErrImagePull")

    wait_until(stuck, timeout=TIMEOUT_S, what="WorkersReady names the image problem")
    cond = jobs.condition("noimg", "WorkersReady")
    assert "noimg-worker-0" in cond["message"]
    assert jobs.status("noimg")["phase"] == "Pending"
    table = cluster.kubectl("-n", namespace, "get", "ej", "noimg").stdout
    assert cond["reason"] in table, table


def test_lost_node_replaces_its_worker(
    cluster: NodeCluster, jobs: Jobs, loader: Loader, wait_until: WaitUntil
) -> None:
    """The kubelet of the node running worker 0 stops. Documented outcome (docs/operator.md):
    the job stays Running with readyReplicas lowered (WorkersReady False) while the node is
    NotReady; when Kubernetes evicts the pod (its not-ready/unreachable toleration, 5 s here)
    the worker is replaced on another node; nothing counts as a failure."""
    if not hasattr(cluster, "stop_kubelet") or len(getattr(cluster, "node_names", [])) < 2:
        pytest.skip("needs a cluster with two nodes whose kubelet can be stopped (kind)")
    tolerations = [
        {"key": k, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}
        for k in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
    ] + [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]
    jobs.start(
        "lost",
        loader,
        cluster.worker_image,
        ["--hold"],
        replicas=1,
        template={"tolerations": tolerations},
    )
    jobs.wait_phase(wait_until, "lost", "Running", ready=1)
    (pod,) = [p for p in jobs.pods("lost") if p.metadata.name == "lost-worker-0"]
    node = pod.spec.node_name
    if node not in cluster.node_names:
        pytest.skip(f"worker landed on {node}, whose kubelet the fixture cannot stop")
    cluster.stop_kubelet(node)
    try:
        started = time.monotonic()
        jobs.wait_phase(wait_until, "lost", "Running", ready=0)
        not_ready_after = time.monotonic() - started

        def replaced() -> bool:
            return any(
                p.metadata.name != "lost-worker-0" and p.spec.node_name != node
                for p in jobs.pods("lost")
                if p.metadata.deletion_timestamp is None
            )

        wait_until(replaced, timeout=TIMEOUT_S, what="a replacement on another node")
        st = jobs.wait_phase(wait_until, "lost", "Running", ready=1)
        replaced_after = time.monotonic() - started
        assert st["failed"] == 0
        print(f"node lost: not ready after {not_ready_after:.0f}s, replaced {replaced_after:.0f}s")
    finally:
        cluster.start_kubelet(node)
