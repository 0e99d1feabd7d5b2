"""Fixtures for the end-to-end tests: a real node (kubelet + containerd + runc) that runs pods.

The package-scoped ``cluster`` fixture runs ``NODE=1 hack/cluster/up.sh``: the control plane of
the integration tests plus ``hack/node/up.sh`` (images built with ``images/build.sh``, cached,
and imported into the node's containerd). What it started, it stops when the e2e tests are done
(before other test packages run): the whole cluster if it was not up, else only the node if
the node was not up. It reuses the integration fixtures (``tests/integration/conftest.py``):
the ``Cluster`` handle, ``wait_until`` and ``namespace``.

``operator`` runs ``python -m appliance_operator`` on this host against the cluster's
kubeconfig (the CRD applied first), for the whole package.

Needs root (``hack/node/up.sh`` installs the Debian packages it needs, see
``hack/node/install-deps.sh``); otherwise the tests are skipped, except under ``CI=true``, where
that is an error.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from appliance_operator.testing import OperatorProcess as Operator

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
NODE_SCRIPTS = REPO_ROOT / "hack" / "node"
LOADER_FILE = HERE / "appliance_e2e_loader.py"
UP_TIMEOUT_S = 3600  # cold: Go builds of the cluster binaries and a debootstrap
OPERATOR_START_TIMEOUT_S = 60


def _load_integration_conftest() -> ModuleType:
    """tests/integration/conftest.py as a plain module (its fixtures and helpers are reused)."""
    path = REPO_ROOT / "tests" / "integration" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_appliance_integration_fixtures", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


_it = _load_integration_conftest()
STATE_DIR: Path = _it.STATE_DIR
NODE_DIR = STATE_DIR / "node"
wait_until = _it.wait_until
WaitUntil = _it.WaitUntil
# Same fixtures as the integration tests; here `namespace` uses the e2e `cluster` below.
wait_until_fixture = _it.wait_until_fixture
namespace = _it.namespace


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.e2e)


@dataclass
class NodeCluster(_it.Cluster):  # type: ignore[name-defined,misc]
    """The integration ``Cluster`` plus the real node and the images it has."""

    node_name: str = ""
    worker_image: str = ""
    operator_image: str = ""
    node_started_here: bool = False
    #: Where a pod with ``hostNetwork: true`` reaches the API server (the ``kubernetes``
    #: Service's 10.0.0.1 is not routed here: no kube-proxy, isolated pod network). An
    #: in-cluster client needs KUBERNETES_SERVICE_HOST/PORT set to these (docs/node.md).
    apiserver_host: str = "127.0.0.1"
    apiserver_port: int = 0

    def pod_logs(self, namespace: str, pod: str) -> str:
        return str(self.kubectl("-n", namespace, "logs", pod, timeout=30).stdout)


def _read_env(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out


def _node_up(bindir: str) -> bool:
    """True when a node started by hack/node/up.sh is running and Ready."""
    env_file = NODE_DIR / "env"
    if not (env_file.exists() and _it.KUBECONFIG.exists()):
        return False
    name = _read_env(env_file).get("NODE_NAME", "")
    proc = subprocess.run(
        [
            os.path.join(bindir, "kubectl"),
            "--kubeconfig",
            str(_it.KUBECONFIG),
            "get",
            "node",
            name,
            "-o",
            "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
        ],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    return proc.returncode == 0 and proc.stdout.strip() == "True"


@pytest.fixture(scope="package")
def cluster() -> Iterator[NodeCluster]:
    if os.geteuid() != 0:
        _it._unavailable("the e2e node needs root (containerd, runc, mounts)")
    for tool in ("bash", "openssl", "curl", "setsid", "flock", "unshare"):
        if shutil.which(tool) is None:
            _it._unavailable(f"`{tool}` is not on PATH")
    bindir = subprocess.run(
        ["bash", str(_it.CLUSTER_SCRIPTS / "build.sh"), "--print-bindir"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if (
        _it._script("build.sh", "--check").returncode != 0
        and _it._script("build.sh", "--find-go").returncode != 0
    ):
        _it._unavailable("the cluster binaries are not built and no Go toolchain was found")

    cluster_was_up = _it._already_up(bindir)
    node_was_up = cluster_was_up and _node_up(bindir)
    up = _it._script("up.sh", NODE="1")
    if up.returncode != 0:
        pytest.fail(f"NODE=1 hack/cluster/up.sh failed (exit {up.returncode}); see its output")
    env = _read_env(NODE_DIR / "env")

    from kubernetes import config as k8s_config

    api_client = k8s_config.new_client_from_config(config_file=str(_it.KUBECONFIG))
    try:
        yield NodeCluster(
            kubeconfig=str(_it.KUBECONFIG),
            bindir=bindir,
            started_here=not cluster_was_up,
            api_client=api_client,
            node_name=env["NODE_NAME"],
            worker_image=env["WORKER_IMAGE"],
            operator_image=env["OPERATOR_IMAGE"],
            node_started_here=not node_was_up,
            apiserver_port=int(_read_env(STATE_DIR / "env")["APISERVER_PORT"]),
        )
    finally:
        api_client.close()
        if not cluster_was_up:
            _it._script("down.sh")
        elif not node_was_up:
            subprocess.run(["bash", str(NODE_SCRIPTS / "down.sh")], timeout=300, check=False)


def apply_crds(cluster: NodeCluster) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "crds" / "executejobs.yaml"))
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "crd/executejobs.appliance.dev",
        "--timeout=60s",
        timeout=90,
    )


#: Namespaces of tests/e2e/test_helm_e2e.py (the namespace fixture names them after the test).
CHART_TEST_NAMESPACES = "it-test-chart-*"


@pytest.fixture(scope="package")
def operator(cluster: NodeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    """``python -m appliance_operator`` on this host, watching every namespace but those of
    the chart test (whose operator runs in a pod and must be the only one there)."""
    if importlib.util.find_spec("appliance_operator.__main__") is None:
        pytest.fail("appliance_operator is not importable (make venv installs it)")
    apply_crds(cluster)
    op = Operator(
        cluster.kubeconfig,
        tmp_path_factory.mktemp("operator") / "operator.log",
        ["--namespace", f"!{CHART_TEST_NAMESPACES}", "--metrics-port", "0"],
    )
    try:
        op.start(timeout=OPERATOR_START_TIMEOUT_S)
        yield op
    finally:
        op.stop()


#: What a worker sees besides the tracked variables: the image's (PATH, LANG, HOME,
#: PYTHONUNBUFFERED), the kubelet's (HOSTNAME, KUBERNETES_*) and the operator's (APPLIANCE_*).
WORKER_BASELINE_NAMES = {"PATH", "HOME", "HOSTNAME", "LANG", "PYTHONUNBUFFERED", "TERM"}
WORKER_BASELINE_PREFIXES = ("APPLIANCE_", "KUBERNETES_")


@dataclass
class Loader:
    """tests/e2e/appliance_e2e_loader.py in a ConfigMap of the test's namespace."""

    #: spec.template parts that mount it at ``path``
    template: dict[str, Any]
    #: the directory to put on PYTHONPATH (through the job's tracked env)
    path: str = "/e2e"
    entrypoint: str = "appliance_e2e_loader:main"

    @staticmethod
    def parse(log: str) -> dict[str, str]:
        """The loader's lines of a worker log: ``E2E env NAME=v`` -> {"env NAME": v},
        ``E2E child NAME=v`` -> {"child NAME": v}, ``E2E key=v`` -> {"key": v}."""
        out = {}
        for line in log.splitlines():
            m = re.match(r"^E2E (\S+ )?([^=\s]+)=(.*)$", line)
            if m:
                out[(m.group(1) or "") + m.group(2)] = m.group(3)
        return out

    @staticmethod
    def untracked(names: set[str], tracked: set[str]) -> set[str]:
        """Names a worker saw that are neither tracked nor the image's, kubelet's or operator's
        own plumbing: each one is a leak."""
        return {
            n
            for n in names - tracked - WORKER_BASELINE_NAMES
            if not n.startswith(WORKER_BASELINE_PREFIXES)
        }


@pytest.fixture
def loader(cluster: NodeCluster, namespace: str) -> Loader:
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
