"""The chart, installed with its defaults, on kind: the operator runs as the chart's Deployment
(the restricted security context with a read-only root filesystem, the liveness probe on kopf's
endpoint) from the image `kind load` put on the nodes, reaches the API server through the
`kubernetes` Service like any in-cluster client, and runs examples/executejob.yaml, applied
with kubectl as it is, to the end.

Two values differ from the defaults, because the package's host ``operator`` fixture runs at
the same time: ``rbac.scope=namespace`` (the chart's operator watches only the test's namespace;
the host operator excludes it, see ``CHART_TEST_NAMESPACES`` in conftest.py) and
``rbac.aggregateToDefaultRoles=false`` (no cluster-wide objects shared between releases).
The job's Events must name the chart's pod as their reporting instance.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

if TYPE_CHECKING:
    from support.cluster import WaitUntil
    from support.kind import NodeCluster

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


def test_chart_runs_the_operator_and_a_job(
    cluster: NodeCluster, namespace: str, wait_until: WaitUntil
) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    # The images the cluster has are the chart's and the example's defaults.
    default_image = f"{values['image']['repository']}:{chart['appVersion']}"
    assert cluster.operator_image == default_image, (cluster.operator_image, default_image)
    # The release name of the README and `make kind-up` (its objects are named after it: the
    # metrics Service appliance-operator-metrics once crashed the operator, see the chart).
    release = "appliance-operator"
    cluster.helm(
        "install", release, str(CHART), "--namespace", namespace,
        "--set", "rbac.scope=namespace",
        "--set", "rbac.aggregateToDefaultRoles=false",
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
        assert not pod["spec"].get("hostNetwork"), "the chart's default is the pod network"

        def operator_log() -> str:
            return str(cluster.kubectl("logs", "-n", namespace, pod_name, timeout=60).stdout)

        # In-cluster config: KUBERNETES_SERVICE_HOST is the `kubernetes` Service's ClusterIP.
        wait_until(
            lambda: "Initial authentication has finished" in operator_log(),
            timeout=60,
            what="the operator pod to reach the API server through the kubernetes Service",
        )

        # The example job, as it is: its image is the one `kind load` put on the nodes.
        example = REPO_ROOT / "examples" / "executejob.yaml"
        docs = [d for d in yaml.safe_load_all(example.read_text()) if d]
        job = next(d for d in docs if d["kind"] == "ExecuteJob")
        assert job["spec"]["image"] == cluster.worker_image, (job["spec"]["image"], cluster)
        cluster.kubectl("apply", "-n", namespace, "-f", str(example))
        name = job["metadata"]["name"]

        def phase() -> str | None:
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

        # kopf's liveness endpoint (what the chart's probe asks) and the metrics Service, through
        # the API server's proxy (API server -> pod network -> the operator pod).
        pods = f"/api/v1/namespaces/{namespace}/pods"
        cluster.kubectl("get", "--raw", f"{pods}/{pod_name}:{values['healthPort']}/proxy/healthz")
        service = f"{release}-metrics:{values['metrics']['port']}"
        metrics = cluster.kubectl(
            "get", "--raw", f"/api/v1/namespaces/{namespace}/services/{service}/proxy/metrics"
        ).stdout
        assert "appliance_operator_reconcile_seconds" in metrics
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
