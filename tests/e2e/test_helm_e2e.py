"""The chart on a real node: the operator runs as the chart's Deployment (the restricted
security context with a read-only root filesystem, the liveness probe on kopf's endpoint, the
chart's namespace-scoped RBAC) and runs examples/executejob.yaml to the end.

It does not use the package's host ``operator`` fixture: the chart's operator watches only
the test's namespace (the host operator excludes it, see ``CHART_TEST_NAMESPACES`` in
conftest.py), and the job's Events must name the chart's pod as their reporting instance.

The local node has no kube-proxy, so pods cannot reach the API server through the
`kubernetes` Service: the chart's `hostNetwork` value and `extraEnv` KUBERNETES_SERVICE_HOST/
PORT point the operator's in-cluster config at the API server on the node's loopback, as a
user of such a bare cluster would do.
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from appliance_operator.testing import free_port

if TYPE_CHECKING:
    from conftest import NodeCluster, WaitUntil

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "appliance-operator"
JOB_TIMEOUT_S = 180
# kopf's cluster-wide "scanning" reads, refused on purpose in namespace scope (it falls back
# to the namespaces it was given; see tests/integration/test_helm.py).
KOPF_SCANNING_READS = (
    "/api/v1/namespaces -> APIForbiddenError",
    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions -> APIForbiddenError",
    "Not enough permissions",
)


def _json(cluster: NodeCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl(*args, "-o", "json").stdout)


API_UNREACHABLE = ("Network is unreachable", "Cannot connect to host", "Connection refused")


def test_chart_runs_the_operator_and_a_job(
    cluster: NodeCluster, namespace: str, wait_until: WaitUntil
) -> None:
    repository, tag = cluster.operator_image.rsplit(":", 1)
    release = f"ao-e2e-{uuid.uuid4().hex[:6]}"
    health_port, metrics_port = free_port(), free_port()
    cluster.helm(
        "install", release, str(CHART), "--namespace", namespace,
        "--set", "rbac.scope=namespace",
        "--set", "rbac.aggregateToDefaultRoles=false",
        "--set", f"image.repository={repository}",
        "--set", f"image.tag={tag}",
        "--set", "image.pullPolicy=Never",  # imported into the node's containerd
        "--set", "hostNetwork=true",
        "--set", f"healthPort={health_port}",
        "--set", f"metrics.port={metrics_port}",
        "--set", "extraEnv[0].name=KUBERNETES_SERVICE_HOST",
        "--set-string", f"extraEnv[0].value={cluster.apiserver_host}",
        "--set", "extraEnv[1].name=KUBERNETES_SERVICE_PORT",
        "--set-string", f"extraEnv[1].value={cluster.apiserver_port}",
    )  # fmt: skip
    try:
        selector = f"app.kubernetes.io/instance={release}"

        def running_pod() -> dict[str, Any] | None:
            items = _json(cluster, "get", "pods", "-n", namespace, "-l", selector)["items"]
            ready = [
                p
                for p in items
                if any(c.get("ready") for c in p["status"].get("containerStatuses", []))
            ]
            return ready[0] if ready else None

        pod = wait_until(running_pod, timeout=120, what="the operator pod to be Ready")
        pod_name = pod["metadata"]["name"]

        def operator_log() -> str:
            return str(cluster.kubectl("logs", "-n", namespace, pod_name, timeout=60).stdout)

        def skip_if_unreachable() -> None:
            log = operator_log()
            if any(m in log for m in API_UNREACHABLE):
                pytest.skip(
                    "pods on this node cannot reach the API server (no route to the "
                    f"`kubernetes` Service): the operator cannot run in a pod here. Log:\n{log}"
                )

        def connected() -> bool:
            skip_if_unreachable()
            return "Initial authentication has finished" in operator_log()

        wait_until(connected, timeout=60, what="the operator pod to reach the API server")

        # The example job, with the worker image the node has.
        text = (REPO_ROOT / "examples" / "executejob.yaml").read_text()
        docs = [d for d in yaml.safe_load_all(text) if d]
        job = next(d for d in docs if d["kind"] == "ExecuteJob")
        job["spec"]["image"] = cluster.worker_image
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(docs))
        name = job["metadata"]["name"]

        def phase() -> str | None:
            skip_if_unreachable()
            status = _json(cluster, "get", "ej", name, "-n", namespace).get("status") or {}
            p = status.get("phase")
            if p == "Failed":
                pytest.fail(f"the job failed: {json.dumps(status, indent=2)}")
            return p if p == "Succeeded" else None

        wait_until(phase, timeout=JOB_TIMEOUT_S, what=f"ExecuteJob {name} to succeed")
        logs = cluster.kubectl(
            "logs", "-n", namespace, "-l", f"appliance.dev/job-name={name}", "--tail=-1",
            "--prefix", timeout=60,
        ).stdout  # fmt: skip
        assert logs.count("DATA_ROOT=/mnt/data") >= 2, logs
        assert logs.count("SHARD_COUNT=2") >= 2, logs
        assert "NOT_SENT is absent" in logs, logs
        # It was this operator (the chart's pod) that ran the job: its Events name the pod.
        events = _json(cluster, "get", "events", "-n", namespace,
                       "--field-selector", f"involvedObject.name={name}")["items"]  # fmt: skip
        instances = {e.get("reportingInstance") for e in events}
        assert pod_name in instances, f"the job's Events come from {instances}, not {pod_name}"

        # kopf's liveness endpoint (what the chart's probe asks) answers on the node.
        with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=10) as r:
            assert r.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            assert b"appliance_operator_reconcile_seconds" in r.read()
        pod = _json(cluster, "get", "pod", pod_name, "-n", namespace)
        (state,) = pod["status"]["containerStatuses"]
        assert state["ready"] and state["restartCount"] == 0, state
        events = _json(cluster, "get", "events", "-n", namespace,
                       "--field-selector", f"involvedObject.name={pod_name}")["items"]  # fmt: skip
        assert not [e for e in events if e["reason"] in ("Unhealthy", "BackOff", "Failed")], events
        log = operator_log()
        refused = [
            line
            for line in log.splitlines()
            if ("403" in line or "orbidden" in line)
            and not any(read in line for read in KOPF_SCANNING_READS)
        ]
        assert not refused, "\n".join(refused)
    finally:
        cluster.helm("uninstall", release, "--namespace", namespace, check=False)
