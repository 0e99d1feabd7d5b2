"""The local Kubernetes control plane of the integration tests (hack/cluster), as the tests see it.

``Cluster`` is the handle the ``cluster`` fixture yields (``kubectl``, ``helm``, ``can_i``,
``finish_pod``); the e2e suite's ``KindCluster`` extends it. The helpers below are the steps of
the fixture (tests/integration/conftest.py): whether the binaries are there, whether a control
plane already answers, running its scripts. They live here, not in the conftest, so that the e2e
conftest and the tests' type annotations import them like any module.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

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
            value = probe()
        except Exception as exc:  # a probe may fail while the cluster catches up
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or probe}; last: {last!r}")
        time.sleep(interval)


class CommandError(subprocess.CalledProcessError):
    """A failed kubectl, helm or docker run whose message carries its output (the base class's
    gives only the command and the exit code, which says nothing about why)."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout: {self.stdout}\nstderr: {self.stderr}"


#: The type of the ``wait_until`` fixture (``wait_until`` above), for the tests' annotations.
WaitUntil = Callable[..., Any]


@dataclass
class Cluster:
    """What the ``cluster`` fixture yields: the kubeconfig, the pinned kubectl and helm
    (``bindir``), a kubernetes ``api_client``, and the checks the tests share."""

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
        assert answer.status is not None, f"a SubjectAccessReview without a status: {answer}"
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


def unavailable(reason: str) -> None:
    """Skip the test for want of a cluster, except under ``CI=true``, where that fails it: CI
    must not pass by skipping."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"integration cluster unavailable under CI=true: {reason}", pytrace=False)
    pytest.skip(f"integration cluster unavailable: {reason}")


def run_script(script: Path, *args: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    """``bash script args`` with ``env`` added, its output left on the terminal (a cold build
    is long, and its progress is what the user waits on)."""
    return subprocess.run(
        ["bash", str(script), *args],
        env={**os.environ, **env},
        timeout=UP_TIMEOUT_S,
        check=False,
    )


def cluster_bindir() -> str:
    """Where hack/offline/cluster-build puts (or has put) the pinned binaries."""
    return subprocess.run(
        ["bash", str(CLUSTER_BUILD / "build.sh"), "--print-bindir"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def binaries_available() -> bool:
    """Whether the control plane's binaries are built, or a Go toolchain can build them."""
    return (
        run_script(CLUSTER_BUILD / "build.sh", "--check").returncode == 0
        or run_script(CLUSTER_BUILD / "build.sh", "--find-go").returncode == 0
    )


def already_up(bindir: str) -> bool:
    """Whether a control plane answers at ``KUBECONFIG`` (``make cluster-up`` keeps one)."""
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


def dns_label(text: str, max_len: int) -> str:
    """``text`` as a DNS label of at most ``max_len`` characters (a namespace name's part)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:max_len].rstrip("-")
