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

It reuses the integration fixtures (``tests/integration/conftest.py``): the ``Cluster`` handle
(``kubectl``, ``helm``), ``wait_until`` and ``namespace``.

Needs Docker, or root to start the project's own dockerd; otherwise the tests are skipped,
except under ``CI=true``, where that is an error.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from appliance_operator.testing import OperatorProcess as Operator

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
KIND_SCRIPTS = REPO_ROOT / "hack" / "kind"
# The project's own dockerd, where no Docker answers (hack/README.md).
OFFLINE_SCRIPTS = REPO_ROOT / "hack" / "offline"
KIND_STATE = Path(os.environ.get("APPLIANCE_KIND_STATE") or REPO_ROOT / ".kind")
LOADER_FILE = HERE / "appliance_e2e_loader.py"
KIND_CLUSTER = os.environ.get("APPLIANCE_E2E_KIND_CLUSTER", "appliance-e2e")
KIND_WORKERS = int(os.environ.get("APPLIANCE_E2E_KIND_WORKERS", "2"))
UP_TIMEOUT_S = 3600  # cold: Go builds, debootstrap, the node image, docker builds
OPERATOR_START_TIMEOUT_S = 60
NODE_READY_TIMEOUT_S = 180
#: kube-controller-manager's --node-monitor-grace-period on the clusters the fixture creates
#: (Kubernetes' default is 50s): a node whose kubelet stopped is NotReady this much sooner.
NODE_MONITOR_GRACE_PERIOD = "20s"


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
wait_until = _it.wait_until
WaitUntil = _it.WaitUntil
CommandError = _it.CommandError
# Same fixtures as the integration tests; here `namespace` uses the e2e `cluster` below.
wait_until_fixture = _it.wait_until_fixture
namespace = _it.namespace
pytest_runtest_makereport = _it.pytest_runtest_makereport


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.e2e)


@dataclass
class KindCluster(_it.Cluster):  # type: ignore[name-defined,misc]
    """The integration ``Cluster`` handle (``kubeconfig``, ``bindir`` with the pinned kubectl
    and helm, ``api_client``, ``kubectl(*args, timeout=...)``, ``helm(...)``) on a kind cluster.

    - ``name``: the kind cluster's name; ``docker_host``: the Docker daemon its nodes run in
      (``""``: the default one)
    - ``node_names``: the worker nodes (those that run worker pods; the control plane is
      tainted). ``node_name`` is the first of them.
    - ``worker_image`` / ``operator_image`` / ``user_image`` (a user pod's: python3 and the
      client): built from ``images/*.Dockerfile``, loaded into every node (``kind load``):
      use ``imagePullPolicy: Never`` or ``IfNotPresent``.
    - ``pod_logs(namespace, pod)``: a pod's log.
    - ``stop_kubelet(node)`` / ``start_kubelet(node)``: ``systemctl stop|start kubelet`` in the
      node: its pods keep running, the node goes NotReady after the node monitor's grace period
      (``NODE_MONITOR_GRACE_PERIOD``, 20 s) and its pods are evicted per their tolerations.
      ``start_kubelet`` returns once the node is Ready again.
    - ``stop_node(node)`` / ``start_node(node)``: ``docker stop|start`` of the node's container:
      the machine is gone (its pods with it); ``start_node`` returns once it is Ready again.
    - ``docker(*args)``: run ``docker`` against that daemon.
    """

    name: str = ""
    docker_host: str = ""
    node_names: list[str] = field(default_factory=list)
    worker_image: str = ""
    operator_image: str = ""
    user_image: str = ""

    @property
    def node_name(self) -> str:
        return self.node_names[0]

    def pod_logs(self, namespace: str, pod: str) -> str:
        return str(self.kubectl("-n", namespace, "logs", pod, timeout=30).stdout)

    def docker(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        if self.docker_host:
            env["DOCKER_HOST"] = self.docker_host
        cmd = ["docker", *args]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False, env=env
        )
        if check and proc.returncode != 0:
            raise CommandError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def _wait_ready(self, node: str) -> None:
        self.kubectl(
            "wait", "--for=condition=Ready", f"node/{node}",
            f"--timeout={NODE_READY_TIMEOUT_S}s", timeout=NODE_READY_TIMEOUT_S + 30,
        )  # fmt: skip

    def stop_kubelet(self, node: str) -> None:
        self.docker("exec", node, "systemctl", "stop", "kubelet")

    def start_kubelet(self, node: str) -> None:
        self.docker("exec", node, "systemctl", "start", "kubelet")
        self._wait_ready(node)

    def stop_node(self, node: str) -> None:
        self.docker("stop", node, timeout=180)

    def start_node(self, node: str) -> None:
        self.docker("start", node)
        # The API server must first see the node's kubelet again: NotReady -> Ready.
        wait_until(
            lambda: (
                self.docker(
                    "exec", node, "systemctl", "is-active", "kubelet", check=False
                ).stdout.strip()
                == "active"
            ),
            timeout=NODE_READY_TIMEOUT_S,
            what=f"the kubelet of {node} to run again",
        )
        self._wait_ready(node)


def _parse_env(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Z_]+)=(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def _docker_env() -> tuple[bool, str]:
    """(whether a Docker daemon answers, the DOCKER_HOST of hack/offline/dockerd.sh's choice)."""
    proc = subprocess.run(
        ["bash", str(OFFLINE_SCRIPTS / "dockerd.sh"), "env"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.returncode == 0, _parse_env(proc.stdout).get("DOCKER_HOST", "")


def _own_dockerd_runs() -> bool:
    status = ["bash", str(OFFLINE_SCRIPTS / "dockerd.sh"), "status"]
    return subprocess.run(status, timeout=60, check=False).returncode == 0


@pytest.fixture(scope="package")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KindCluster]:
    for tool in ("bash", "docker", "tar", "flock"):
        if shutil.which(tool) is None:
            _it._unavailable(f"`{tool}` is not on PATH")
    docker_answers, _ = _docker_env()
    if not docker_answers and os.geteuid() != 0:
        _it._unavailable("no Docker daemon answers, and starting the project's own needs root")
    if (
        _it._script(_it.CLUSTER_BUILD / "build.sh", "--check").returncode != 0
        and _it._script(_it.CLUSTER_BUILD / "build.sh", "--find-go").returncode != 0
    ):
        _it._unavailable("the cluster binaries are not built and no Go toolchain was found")
    bindir = subprocess.run(
        ["bash", str(_it.CLUSTER_BUILD / "build.sh"), "--print-bindir"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()

    own_docker_was_up = _own_dockerd_runs()
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
    env = _parse_env(up.stdout)
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


def executejob(
    name: str, image: str, loader: Loader, args: list[str], **spec: Any
) -> dict[str, Any]:
    """An ExecuteJob running the e2e loader: its ``PYTHONPATH`` tracked (``env`` replaces
    that), its ConfigMap mounted, images never pulled; ``template`` adds to the pod template."""
    from cerebras_appliance.api import GROUP, VERSION

    template = {**loader.template, "imagePullPolicy": "Never", **spec.pop("template", {})}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ExecuteJob",
        "metadata": {"name": name},
        "spec": {
            "image": image,
            "entrypoint": loader.entrypoint,
            "args": args,
            "env": [{"name": "PYTHONPATH", "value": loader.path}],
            "template": template,
            **spec,
        },
    }


class Jobs:
    """The ExecuteJobs and worker pods of one test's namespace (every read checks that the
    operator is still alive)."""

    def __init__(self, cluster: KindCluster, namespace: str, operator: Operator) -> None:
        from kubernetes import client

        self.custom = client.CustomObjectsApi(cluster.api_client)
        self.core = client.CoreV1Api(cluster.api_client)
        self.namespace = namespace
        self.operator = operator

    def create(self, body: dict[str, Any]) -> None:
        from cerebras_appliance.api import GROUP, PLURAL, VERSION

        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)

    def start(self, name: str, loader: Loader, image: str, args: list[str], **spec: Any) -> None:
        """Create ``executejob(name, image, loader, args, **spec)``."""
        self.create(executejob(name, image, loader, args, **spec))

    def get(self, name: str) -> dict[str, Any]:
        from cerebras_appliance.api import GROUP, PLURAL, VERSION

        self.operator.check_alive()
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name
        )
        return obj

    def patch(self, name: str, spec: dict[str, Any]) -> None:
        from cerebras_appliance.api import GROUP, PLURAL, VERSION

        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, {"spec": spec}
        )

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.get(name).get("status") or {})

    def phase(self, name: str) -> str:
        return str(self.status(name).get("phase", ""))

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        for cond in self.status(name).get("conditions") or []:
            if cond["type"] == type_:
                return dict(cond)
        return {}

    def pods(self, name: str) -> list[Any]:
        """The job's pods (``kubernetes.client.V1Pod``), terminating ones included."""
        return list(
            self.core.list_namespaced_pod(
                self.namespace, label_selector=f"appliance.dev/job-name={name}"
            ).items
        )

    def running_ready(self, name: str) -> list[str]:
        return sorted(
            p.metadata.name
            for p in self.pods(name)
            if p.metadata.deletion_timestamp is None
            and p.status.phase == "Running"
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        )

    def wait_phase(
        self,
        wait_until: WaitUntil,
        name: str,
        phase: str,
        *,
        ready: int | None = None,
        timeout: float = 120,
    ) -> dict[str, Any]:
        def check() -> bool:
            st = self.status(name)
            return st.get("phase") == phase and (ready is None or st.get("readyReplicas") == ready)

        wait_until(check, timeout=timeout, what=f"job {name} {phase} (ready={ready})")
        return self.status(name)


@pytest.fixture
def jobs(cluster: KindCluster, namespace: str, operator: Operator) -> Jobs:
    return Jobs(cluster, namespace, operator)


#: The old name of the cluster handle (tests import it for type annotations).
NodeCluster = KindCluster
