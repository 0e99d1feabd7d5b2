"""Fixtures for the integration tests: a real local Kubernetes control plane (hack/cluster).

The session-scoped ``cluster`` fixture runs ``hack/cluster/up.sh`` with kwok fake nodes. When a
cluster is already up (``make cluster-up``) it is reused and left running; a cluster the fixture
started itself is stopped with ``hack/cluster/down.sh`` at the end of the session.

Fake (kwok) nodes carry the label ``type=kwok`` and the taint
``kwok.x-k8s.io/node=fake:NoSchedule``: a pod meant to run there needs ``cluster.kwok_pod_spec``
(nodeSelector + toleration) merged into its spec.

When the cluster binaries are not built and cannot be (no Go toolchain), the tests are skipped,
except under ``CI=true``, where that is an error.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from appliance_operator.testing import OperatorProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPTS = REPO_ROOT / "hack" / "cluster"
# The control plane's binaries and their pinned versions, built from source (nothing is pulled).
CLUSTER_BUILD = REPO_ROOT / "hack" / "offline" / "cluster-build"
STATE_DIR = Path(os.environ.get("APPLIANCE_OPERATOR_CLUSTER_DIR") or REPO_ROOT / ".cluster")
KUBECONFIG = STATE_DIR / "kubeconfig"
UP_TIMEOUT_S = 3600  # a cold build of the binaries takes many minutes
KWOK_NODES = 2
HELM_DIRS = ("CACHE", "CONFIG", "DATA")

# Merge into a pod spec to run the pod on a kwok fake node.
KWOK_POD_SPEC: dict[str, Any] = {
    "nodeSelector": {"type": "kwok"},
    "tolerations": [
        {"key": "kwok.x-k8s.io/node", "operator": "Equal", "value": "fake", "effect": "NoSchedule"}
    ],
}

T = TypeVar("T")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: needs the local Kubernetes control plane (hack/cluster)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.integration)


#: Lines of an operator's log a failed test's report shows (its tmp dir may be gone by then).
REPORT_LOG_LINES = 150


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed test that ran an operator reports where the operator's threads were (a stack
    dump, if it still runs) and the end of its log (also when it has exited)."""
    report = yield
    if report.when == "call" and report.failed:
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, OperatorProcess):
                value.dump_stacks()  # nothing to do for one that is not running
                tail = "\n".join(value.log().splitlines()[-REPORT_LOG_LINES:])
                report.sections.append((f"operator log ({value.log_path.name}, end)", tail))
    return report


def versions() -> dict[str, str]:
    """The pinned versions of hack/offline/cluster-build/versions.env."""
    out = {}
    for line in (CLUSTER_BUILD / "versions.env").read_text().splitlines():
        m = re.match(r"^([A-Z_]+)=(\S*)", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def wait_until(
    probe: Callable[[], T | None], *, timeout: float = 60, interval: float = 0.2, what: str = ""
) -> T:
    """Poll ``probe`` until it returns something truthy, and return that.

    Fails the test after ``timeout`` seconds. Exceptions raised by the probe count as "not yet".
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
        except Exception as exc:  # a probe may fail while the cluster catches up
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or probe}; last: {last!r}")
        time.sleep(interval)


class CommandError(subprocess.CalledProcessError):
    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout: {self.stdout}\nstderr: {self.stderr}"


WaitUntil = Callable[..., Any]


@dataclass
class Cluster:
    kubeconfig: str
    bindir: str
    started_here: bool
    api_client: Any = field(repr=False)  # kubernetes.client.ApiClient
    helm_home: str = ""
    # hack/offline/cluster-build/versions.env
    versions: dict[str, str] = field(default_factory=versions)
    kwok_pod_spec: dict[str, Any] = field(default_factory=lambda: dict(KWOK_POD_SPEC))
    _api_resources: list[str] = field(default_factory=list, repr=False)

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run our pinned kubectl against this cluster; output is captured as text."""
        return self._run("kubectl", args, check=check, input=input, timeout=timeout)

    def helm(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run our pinned helm against this cluster (its cache/config dirs in a temp dir)."""
        return self._run("helm", args, check=check, input=input, timeout=timeout)

    def apply_crds(self) -> None:
        """Install (or update) both CRDs and wait until they are served: the operator watches
        both."""
        for crd in ("executejobs", "workerpools"):
            self.kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "crds" / f"{crd}.yaml"))
            self.kubectl(
                "wait", "--for=condition=Established", f"crd/{crd}.appliance.dev",
                "--timeout=60s", timeout=90,
            )  # fmt: skip

    def can_i(
        self, user: str, verb: str, resource: str, namespace: str | None, *extra: str
    ) -> bool:
        """``kubectl auth can-i VERB RESOURCE --as USER [-n NS | -A] [--subresource=S]``, asked
        as a SubjectAccessReview (no kubectl process per question). ``resource`` is kubectl's
        ``plural[.group]``; the identity's groups are those impersonation gives it: a service
        account's two groups, and ``system:authenticated``."""
        from kubernetes import client

        if "." not in resource:  # as kubectl does: the group from discovery, core first
            names = self._resource_names()
            resource = next((n for n in names if n == resource), None) or next(
                (n for n in names if n.startswith(f"{resource}.")), resource
            )
        plural, _, group = resource.partition(".")
        prefix = "--subresource="
        subresource = next((e.removeprefix(prefix) for e in extra if e.startswith(prefix)), "")
        groups = ["system:authenticated"]
        if user.startswith("system:serviceaccount:"):
            groups += ["system:serviceaccounts", f"system:serviceaccounts:{user.split(':')[2]}"]
        review = client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=user,
                groups=groups,
                resource_attributes=client.V1ResourceAttributes(
                    verb=verb,
                    resource=plural,
                    group=group,
                    subresource=subresource or None,
                    namespace=namespace or "",
                ),
            )
        )
        answer = client.AuthorizationV1Api(self.api_client).create_subject_access_review(review)
        return bool(answer.status.allowed)

    def finish_pod(self, namespace: str, pod: str, exit_code: int) -> None:
        """Make a (kwok) worker pod Succeeded (exit 0) or Failed (any other code), as the
        kubelet would report it."""
        from kubernetes import client

        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        terminated = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "startedAt": now,
            "finishedAt": now,
        }
        status = {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [
                {
                    "name": "worker",
                    "image": "appliance-operator/worker:test",
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {"terminated": terminated},
                }
            ],
        }
        client.CoreV1Api(self.api_client).patch_namespaced_pod_status(
            pod, namespace, {"status": status}
        )

    def _resource_names(self) -> list[str]:
        """``kubectl api-resources -o name`` (``plural[.group]``), asked once."""
        if not self._api_resources:
            self._api_resources = self.kubectl("api-resources", "-o", "name").stdout.split()
        return self._api_resources

    def _run(
        self, tool: str, args: tuple[str, ...], *, check: bool, input: str | None, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        cmd = [os.path.join(self.bindir, tool), "--kubeconfig", self.kubeconfig, *args]
        env = {**os.environ, **{f"HELM_{d}_HOME": f"{self.helm_home}/{d}" for d in HELM_DIRS}}
        proc = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False, env=env
        )
        if check and proc.returncode != 0:
            raise CommandError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"integration cluster unavailable under CI=true: {reason}", pytrace=False)
    pytest.skip(f"integration cluster unavailable: {reason}")


def _script(script: Path, *args: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["bash", str(script), *args],
        env={**os.environ, **env},
        timeout=UP_TIMEOUT_S,
        check=False,
    )


def _already_up(bindir: str) -> bool:
    kubectl = os.path.join(bindir, "kubectl")
    if not (KUBECONFIG.exists() and os.access(kubectl, os.X_OK)):
        return False
    proc = subprocess.run(
        [kubectl, "--kubeconfig", str(KUBECONFIG), "get", "--raw", "/readyz"],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    return proc.returncode == 0 and proc.stdout.strip() == "ok"


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    for tool in ("bash", "openssl", "curl", "python3", "setsid", "flock"):
        if shutil.which(tool) is None:
            _unavailable(f"`{tool}` is not on PATH")
    bindir = subprocess.run(
        ["bash", str(CLUSTER_BUILD / "build.sh"), "--print-bindir"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    built = _script(CLUSTER_BUILD / "build.sh", "--check").returncode == 0
    if not built and _script(CLUSTER_BUILD / "build.sh", "--find-go").returncode != 0:
        _unavailable(
            "the cluster binaries are not built and no Go toolchain was found to build them"
        )

    was_up = _already_up(bindir)
    # up.sh is idempotent: on a healthy cluster it only adds the kwok nodes if missing.
    up = _script(CLUSTER_SCRIPTS / "up.sh", NODES="kwok", KWOK_NODES=str(KWOK_NODES))
    if up.returncode != 0:
        pytest.fail(f"hack/cluster/up.sh failed (exit {up.returncode}); see its output above")

    from kubernetes import config as k8s_config

    api_client = k8s_config.new_client_from_config(config_file=str(KUBECONFIG))
    try:
        yield Cluster(
            kubeconfig=str(KUBECONFIG),
            bindir=bindir,
            started_here=not was_up,
            api_client=api_client,
            helm_home=str(tmp_path_factory.mktemp("helm")),
        )
    finally:
        api_client.close()
        if not was_up:
            _script(CLUSTER_SCRIPTS / "down.sh")


@pytest.fixture(name="wait_until")
def wait_until_fixture() -> WaitUntil:
    """``wait_until(probe, timeout=60, interval=0.2, what="...")``: poll until probe is truthy."""
    return wait_until


def _dns_label(text: str, max_len: int) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:max_len].rstrip("-")


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test (with its default ServiceAccount), deleted afterwards."""
    from kubernetes import client

    core = client.CoreV1Api(cluster.api_client)
    name = f"it-{_dns_label(request.node.name, 40)}-{uuid.uuid4().hex[:6]}"
    core.create_namespace(
        client.V1Namespace(
            metadata=client.V1ObjectMeta(name=name, labels={"appliance.dev/test": "integration"})
        )
    )
    # Pods are refused until the ServiceAccount controller has made "default".
    wait_until(
        lambda: core.read_namespaced_service_account("default", name),
        timeout=30,
        what=f"ServiceAccount {name}/default",
    )
    try:
        yield name
    finally:
        core.delete_namespace(name, propagation_policy="Background")
