"""The kind cluster of the e2e tests (hack/kind), as the tests see it, and what runs on it.

``KindCluster`` is the handle the e2e ``cluster`` fixture yields: the integration ``Cluster``
plus the nodes, the images and Docker. The Docker helpers are the steps of that fixture
(tests/e2e/conftest.py). ``Loader`` and ``Jobs`` are the e2e loader in a ConfigMap and the
ExecuteJobs of one test's namespace. They live here, not in the conftest, so that the e2e
conftest and the tests' type annotations import them like any module.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from appliance_operator.testing import OperatorProcess
from cerebras_appliance.contract.names import GROUP, VERSION
from support.cluster import REPO_ROOT, Cluster, CommandError, WaitUntil, wait_until

KIND_SCRIPTS = REPO_ROOT / "hack" / "kind"
# The project's own dockerd, where no Docker answers (hack/README.md).
OFFLINE_SCRIPTS = REPO_ROOT / "hack" / "offline"
KIND_STATE = Path(os.environ.get("APPLIANCE_KIND_STATE") or REPO_ROOT / ".kind")
KIND_CLUSTER = os.environ.get("APPLIANCE_E2E_KIND_CLUSTER", "appliance-e2e")
KIND_WORKERS = int(os.environ.get("APPLIANCE_E2E_KIND_WORKERS", "2"))
UP_TIMEOUT_S = 3600  # cold: Go builds, debootstrap, the node image, docker builds
NODE_READY_TIMEOUT_S = 180

#: The e2e suite's name for the operator process handle (``appliance_operator.testing``).
Operator = OperatorProcess


@dataclass
class KindCluster(Cluster):
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
      (``NODE_MONITOR_GRACE_PERIOD`` in tests/e2e/conftest.py, 20 s) and its pods are evicted
      per their tolerations.
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


def parse_env(text: str) -> dict[str, str]:
    """The ``NAME=value`` lines of a hack script's output (how hack/kind/up.sh and
    hack/offline/dockerd.sh report what they made)."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Z_]+)=(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def docker_env() -> tuple[bool, str]:
    """(whether a Docker daemon answers, the DOCKER_HOST of hack/offline/dockerd.sh's choice)."""
    proc = subprocess.run(
        ["bash", str(OFFLINE_SCRIPTS / "dockerd.sh"), "env"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.returncode == 0, parse_env(proc.stdout).get("DOCKER_HOST", "")


def own_dockerd_runs() -> bool:
    """Whether the project's own dockerd runs (then tearing down a cluster keeps it)."""
    status = ["bash", str(OFFLINE_SCRIPTS / "dockerd.sh"), "status"]
    return subprocess.run(status, timeout=60, check=False).returncode == 0


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


def executejob(
    name: str, image: str, loader: Loader, args: list[str], **spec: Any
) -> dict[str, Any]:
    """An ExecuteJob running the e2e loader: its ``PYTHONPATH`` tracked (``env`` replaces
    that), its ConfigMap mounted, images never pulled; ``template`` adds to the pod template."""
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
        from cerebras_appliance.contract.api import PLURAL

        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)

    def start(self, name: str, loader: Loader, image: str, args: list[str], **spec: Any) -> None:
        """Create ``executejob(name, image, loader, args, **spec)``."""
        self.create(executejob(name, image, loader, args, **spec))

    def get(self, name: str) -> dict[str, Any]:
        from cerebras_appliance.contract.api import PLURAL

        self.operator.check_alive()
        obj = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        return cast("dict[str, Any]", obj)

    def patch(self, name: str, spec: dict[str, Any]) -> None:
        from cerebras_appliance.contract.api import PLURAL

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


#: The old name of the cluster handle (tests import it for type annotations).
NodeCluster = KindCluster


# -- the chart's operator in one test namespace ------------------------------------------------

CHART = REPO_ROOT / "charts" / "appliance-operator"
#: The release of :func:`chart_operator` (a namespace holds one).
CHART_RELEASE = "appliance-operator"


def chart_operator_pod(cluster: KindCluster, namespace: str) -> str | None:
    """The name of the chart operator's Ready pod in ``namespace``, or None."""
    items = json.loads(
        cluster.kubectl(
            "get", "pods", "-n", namespace,
            "-l", f"app.kubernetes.io/instance={CHART_RELEASE}", "-o", "json",
        ).stdout
    )["items"]  # fmt: skip
    for pod in items:
        if pod["metadata"].get("deletionTimestamp"):
            continue
        if any(c.get("ready") for c in pod["status"].get("containerStatuses", [])):
            return str(pod["metadata"]["name"])
    return None


def print_diagnostics(cluster: KindCluster, namespace: str) -> None:
    """What a failure needs to be understood: the pods, the Events and the chart operator's
    log (none of them holds a value: the tests assert the sentinels absent from all three)."""
    for args in (
        ("get", "pods", "-n", namespace, "-o", "wide", "--show-labels"),
        ("get", "events", "-n", namespace, "--sort-by=.lastTimestamp"),
        ("logs", "-n", namespace, "-l", f"app.kubernetes.io/instance={CHART_RELEASE}",
         "--tail=400"),
    ):  # fmt: skip
        proc = cluster.kubectl(*args, check=False, timeout=30)
        print(f"$ kubectl {' '.join(args)}\n{proc.stdout}{proc.stderr}")


@contextlib.contextmanager
def chart_operator(cluster: KindCluster, namespace: str, wait: WaitUntil) -> Iterator[str]:
    """The chart's operator installed in ``namespace`` with namespace-scoped RBAC (it reaches
    the pool pods' IPs, which the host operator cannot); yields its Ready pod's name. On a
    failure the namespace's pods, Events and the operator's log are printed (pytest shows them
    with the failure); uninstalled at the end. Use a namespace the host operator leaves alone
    (``it-test-pool-*``)."""
    cluster.apply_crds()
    repository, _, tag = cluster.operator_image.rpartition(":")
    cluster.helm(
        "install", CHART_RELEASE, str(CHART), "--namespace", namespace,
        "--set", "rbac.scope=namespace",
        "--set", "rbac.aggregateToDefaultRoles=false",
        "--set", f"image.repository={repository}",
        "--set", f"image.tag={tag}",
        "--set", "image.pullPolicy=Never",
    )  # fmt: skip
    try:
        pod = str(
            wait(
                lambda: chart_operator_pod(cluster, namespace),
                timeout=180,
                what="the operator pod to be Ready",
            )
        )
        yield pod
    except BaseException:
        print_diagnostics(cluster, namespace)
        raise
    finally:
        cluster.helm("uninstall", CHART_RELEASE, "--namespace", namespace, check=False)
