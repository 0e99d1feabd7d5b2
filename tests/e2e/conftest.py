"""Fixtures for the end-to-end tests: a kind cluster, the one users run, with real pods.

The package-scoped ``cluster`` fixture runs ``hack/kind/up.sh --name appliance-e2e --workers 2
--images``: Docker (the user's, or the project's own dockerd, ``hack/offline/dockerd.sh``), kind,
a control plane and two worker nodes (kube-proxy, CoreDNS, a pod network), and the worker and
operator images built from ``images/*.Dockerfile`` and loaded with ``kind load``. Where no
registry is reachable the node image is assembled locally (``hack/offline/node-image.sh``, cached).
A healthy cluster of that name is reused as it is (a fast development loop: ``make kind-e2e-up``
keeps one running); a cluster the fixture created is deleted when the e2e tests are done, with
the project's dockerd if the fixture started it.

``operator`` runs ``python -m appliance_operator`` on this host against the cluster's
kubeconfig (the CRD applied first), for the whole package.

It shares with the integration tests (tests/support): the ``Cluster`` handle (``kubectl``,
``helm``) that ``KindCluster`` extends, ``wait_until``, ``namespace`` and the hook that adds an
operator's log to a failed test's report. ``KindCluster``, ``Loader`` and ``Jobs`` are in
tests/support/kind.py.

Needs Docker, or root to start the project's own dockerd; otherwise the tests are skipped,
except under ``CI=true``, where that is an error.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cluster import binaries_available, cluster_bindir, unavailable
from support.fixtures import namespace as namespace
from support.fixtures import pytest_runtest_makereport as pytest_runtest_makereport
from support.fixtures import wait_until_fixture as wait_until_fixture
from support.kind import (
    KIND_CLUSTER,
    KIND_SCRIPTS,
    KIND_STATE,
    KIND_WORKERS,
    UP_TIMEOUT_S,
    Jobs,
    KindCluster,
    Loader,
    Operator,
    docker_env,
    own_dockerd_runs,
    parse_env,
)

HERE = Path(__file__).resolve().parent
LOADER_FILE = HERE / "appliance_e2e_loader.py"
OPERATOR_START_TIMEOUT_S = 60
#: kube-controller-manager's --node-monitor-grace-period on the clusters the fixture creates
#: (Kubernetes' default is 50s): a node whose kubelet stopped is NotReady this much sooner.
NODE_MONITOR_GRACE_PERIOD = "20s"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="package")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KindCluster]:
    for tool in ("bash", "docker", "tar", "flock"):
        if shutil.which(tool) is None:
            unavailable(f"`{tool}` is not on PATH")
    docker_answers, _ = docker_env()
    if not docker_answers and os.geteuid() != 0:
        unavailable("no Docker daemon answers, and starting the project's own needs root")
    if not binaries_available():
        unavailable("the cluster binaries are not built and no Go toolchain was found")
    bindir = cluster_bindir()

    own_docker_was_up = own_dockerd_runs()
    up = subprocess.run(
        [
            "bash", str(KIND_SCRIPTS / "up.sh"), "--name", KIND_CLUSTER,
            "--workers", str(KIND_WORKERS), "--images",
            # Not the user's ~/.kube/config: the tests' own copy.
            "--kubeconfig", str(KIND_STATE / f"{KIND_CLUSTER}.kubeconfig"),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={"KIND_NODE_MONITOR_GRACE_PERIOD": NODE_MONITOR_GRACE_PERIOD, **os.environ},
        timeout=UP_TIMEOUT_S,
        check=False,
    )  # fmt: skip
    if up.returncode != 0:
        pytest.fail(f"hack/kind/up.sh failed (exit {up.returncode}); see its output")
    env = parse_env(up.stdout)
    created = env.get("CREATED") == "1"

    from kubernetes import config as k8s_config

    api_client = k8s_config.new_client_from_config(config_file=env["KUBECONFIG"])
    try:
        yield KindCluster(
            kubeconfig=env["KUBECONFIG"],
            bindir=bindir,
            started_here=created,
            api_client=api_client,
            helm_home=str(tmp_path_factory.mktemp("helm")),
            name=KIND_CLUSTER,
            docker_host=env.get("DOCKER_HOST", ""),
            node_names=[n for n in env.get("NODES", "").split(",") if n],
            worker_image=env["WORKER_IMAGE"],
            operator_image=env["OPERATOR_IMAGE"],
            user_image=env["USER_IMAGE"],
        )
    finally:
        api_client.close()
        if created:
            down = ["bash", str(KIND_SCRIPTS / "down.sh"), "--name", KIND_CLUSTER]
            if own_docker_was_up:
                down.append("--keep-docker")
            subprocess.run(down, timeout=600, check=False)


#: Namespaces of tests/e2e/test_helm_e2e.py and test_pool_e2e.py, whose operator runs in a pod
#: (the namespace fixture names them after the test).
CHART_TEST_NAMESPACES = "it-test-chart-*"
POOL_TEST_NAMESPACES = "it-test-pool-*"


@pytest.fixture(scope="package")
def operator(cluster: KindCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    """``python -m appliance_operator`` on this host, watching every namespace but those of
    the chart test (whose operator runs in a pod and must be the only one there)."""
    if importlib.util.find_spec("appliance_operator.__main__") is None:
        pytest.fail("appliance_operator is not importable (make venv installs it)")
    cluster.apply_crds()
    op = Operator(
        cluster.kubeconfig,
        tmp_path_factory.mktemp("operator") / "operator.log",
        [
            "--namespace",
            f"!{CHART_TEST_NAMESPACES},!{POOL_TEST_NAMESPACES}",
            "--metrics-port",
            "0",
        ],
    )
    try:
        op.start(timeout=OPERATOR_START_TIMEOUT_S)
        yield op
    finally:
        op.stop()


@pytest.fixture
def loader(cluster: KindCluster, namespace: str) -> Loader:
    from kubernetes import client

    client.CoreV1Api(cluster.api_client).create_namespaced_config_map(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "e2e-loader"},
            "data": {LOADER_FILE.name: LOADER_FILE.read_text()},
        },
    )
    return Loader(
        template={
            "volumes": [{"name": "e2e-loader", "configMap": {"name": "e2e-loader"}}],
            "volumeMounts": [{"name": "e2e-loader", "mountPath": "/e2e", "readOnly": True}],
        }
    )


@pytest.fixture
def jobs(cluster: KindCluster, namespace: str, operator: Operator) -> Jobs:
    return Jobs(cluster, namespace, operator)
