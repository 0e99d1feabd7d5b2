"""docs/security.md against a real kube-apiserver (hack/cluster, kwok fake nodes).

* the operator's ServiceAccount passes ``kubectl auth can-i`` for exactly the grants the
  document lists, in both install scopes;
* a user bound to ``view`` reads no value the Python client sent;
* the client killed with SIGKILL at random points of ``submit()`` leaves no Secret without an
  owner, and no worker pod exists for a job whose values are not complete.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from kubernetes import client

from appliance_operator.testing import OperatorProcess
from cerebras_appliance.contract.names import AWAITING_VALUES_ANNOTATION

if TYPE_CHECKING:
    from support.cluster import Cluster, WaitUntil

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SECURITY_DOC = REPO / "docs" / "security.md"
GROUP, VERSION, PLURAL = "appliance.dev", "v1alpha1", "executejobs"
VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
#: Checked too, and must be refused entirely: what an operator must never touch.
NEVER = (
    "configmaps",
    "serviceaccounts",
    "pods/exec",
    "pods/attach",
    "pods/log",
    "rolebindings.rbac.authorization.k8s.io",
    "deployments.apps",
)
CLUSTER_ONLY = "customresourcedefinitions.apiextensions.k8s.io"
CHART = REPO / "charts" / "appliance-operator"
EJ = "executejobs.appliance.dev"
#: What every authenticated identity may do (system:basic-user): self reviews.
BASIC_RESOURCES = {
    "selfsubjectreviews.authentication.k8s.io",
    "selfsubjectaccessreviews.authorization.k8s.io",
    "selfsubjectrulesreviews.authorization.k8s.io",
}


@dataclass
class Release:
    name: str
    namespace: str

    @property
    def sa_user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}-appliance-operator"


def helm_install(cluster: Cluster, prefix: str, namespace: str, *args: str) -> Release:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"  # cluster-scoped objects carry it: unique
    cluster.helm("install", name, str(CHART), "--namespace", namespace, *args)
    return Release(name, namespace)


def helm_uninstall(cluster: Cluster, release: Release) -> None:
    cluster.helm("uninstall", release.name, "--namespace", release.namespace, check=False)


def can_i_list(cluster: Cluster, user: str, namespace: str) -> set[str]:
    """The resources `kubectl auth can-i --list` grants ``user`` (non-resource URLs left out)."""
    out = cluster.kubectl("auth", "can-i", "--list", "--as", user, "--namespace", namespace)
    return {
        cells[0]
        for line in out.stdout.splitlines()[1:]
        if (cells := line.split()) and not cells[0].startswith("[")
    }


NOWHERE = {"nodeSelector": {"appliance.dev/test": "no-such-node"}}


def documented_grants() -> dict[str, set[str]]:
    """{resource[/subresource]: verbs} from the table between the grants markers."""
    text = SECURITY_DOC.read_text()
    table = text[text.index("<!-- grants") : text.index("<!-- /grants -->")]
    grants: dict[str, set[str]] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].startswith("`"):
            grants[cells[0].strip("`")] = {v.strip() for v in cells[1].split(",")}
    assert grants, "no grants table found in docs/security.md"
    return grants


def _split(resource: str) -> tuple[str, tuple[str, ...]]:
    """``executejobs.appliance.dev/status`` -> (``executejobs.appliance.dev``,
    ``--subresource=status``): kubectl reads ``a/b`` as the object ``b`` of type ``a``."""
    base, _, sub = resource.partition("/")
    return base, (f"--subresource={sub}",) if sub else ()


def assert_exactly_documented(
    cluster: Cluster, user: str, namespace: str, *, cluster_scope: bool
) -> None:
    grants = documented_grants()
    if not cluster_scope:
        del grants[CLUSTER_ONLY]
    wrong = []
    for resource in [*grants, *NEVER, "secrets", "pods"]:
        base, extra = _split(resource)
        for verb in VERBS:
            expected = verb in grants.get(resource, set())
            ns = None if resource == CLUSTER_ONLY else namespace
            if cluster.can_i(user, verb, base, ns, *extra) != expected:
                wrong.append(f"{verb} {resource}: expected {'yes' if expected else 'no'}")
    assert not wrong, "\n".join(wrong)
    # Nothing beyond the table (and the defaults every identity has).
    resources = can_i_list(cluster, user, namespace)
    listed = {r.split("/")[0] for r in grants}
    extra_rows = {r for r in resources if r.split("/")[0] not in listed} - BASIC_RESOURCES
    assert not extra_rows, f"granted but not in docs/security.md: {extra_rows}"


def view_user(cluster: Cluster, namespace: str, wait_until: WaitUntil) -> str:
    """A user bound to the ``view`` ClusterRole in ``namespace`` (once it aggregates
    ExecuteJobs): who may read jobs, pods and Events, but no Secret."""
    viewer = f"viewer-{uuid.uuid4().hex[:6]}"
    client.RbacAuthorizationV1Api(cluster.api_client).create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": viewer},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "view"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                          "name": viewer}],
        },
    )  # fmt: skip
    wait_until(
        lambda: cluster.can_i(viewer, "list", EJ, namespace), what="view aggregates ExecuteJobs"
    )
    return viewer


def viewer_reads(
    cluster: Cluster, namespace: str, viewer: str, job: str, *more: tuple[str, ...]
) -> list[str]:
    """What ``viewer`` reads of the namespace: the jobs (with managed fields), the pods, the
    Events, the printer columns, ``describe`` of ``job``, and ``more``; each non-empty."""
    seen = []
    for args in [
        ("get", "executejobs.appliance.dev", "-o", "json", "--show-managed-fields"),
        ("get", "pods", "-o", "json", "--show-managed-fields"),
        ("get", "events", "-o", "json"),
        ("get", "executejobs.appliance.dev", "-o", "wide"),
        ("describe", "executejobs.appliance.dev", job),
        *more,
    ]:
        out = cluster.kubectl(*args, "-n", namespace, "--as", viewer).stdout
        assert out.strip(), args
        seen.append(out)
    return seen


def test_operator_can_do_exactly_what_this_document_lists(cluster: Cluster, namespace: str) -> None:
    for scope in ("cluster", "namespace"):
        rel = helm_install(cluster, f"sec{scope[0]}", namespace, "--set", f"rbac.scope={scope}")
        try:
            assert_exactly_documented(
                cluster, rel.sa_user, namespace, cluster_scope=scope == "cluster"
            )
            if scope == "namespace":  # nothing outside the watched namespace
                assert not cluster.can_i(rel.sa_user, "get", "secrets", "default")
                assert not cluster.can_i(rel.sa_user, "create", "pods", "default")
        finally:
            helm_uninstall(cluster, rel)


# -- the view role -----------------------------------------------------------------------------


@pytest.fixture
def chart_roles(cluster: Cluster, namespace: str) -> Iterator[Release]:
    """The chart in namespace scope: its aggregated user roles (view reads ExecuteJobs)."""
    rel = helm_install(cluster, "secv", namespace, "--set", "rbac.scope=namespace")
    try:
        yield rel
    finally:
        helm_uninstall(cluster, rel)


@pytest.fixture
def operator(cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    """The operator, watching only this test's namespace."""
    cluster.apply_crds()  # (when this test runs first or alone)
    op = OperatorProcess(
        cluster.kubeconfig,
        tmp_path / "operator.log",
        ["--namespace", namespace, "--metrics-port", "0", "--verbose"],
    )
    op.start()
    try:
        yield op
    finally:
        op.stop()
        print(f"operator log: {op.log_path}")


def test_a_view_user_reads_no_value_the_client_sent(
    cluster: Cluster,
    namespace: str,
    chart_roles: Release,
    operator: OperatorProcess,
    wait_until: WaitUntil,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import cerebras_appliance as app
    from cerebras_appliance.environment import ApplianceEnviron

    monkeypatch.setenv("KUBECONFIG", cluster.kubeconfig)
    token = f"tok-{uuid.uuid4().hex}"
    values = {"API_TOKEN": token, "SHORT_PIN": "7", "DATA_ROOT": f"/mnt/{uuid.uuid4().hex}"}
    for name in values:
        monkeypatch.setitem(os.environ, name, "")  # restored afterwards
    environ = ApplianceEnviron()
    for name, value in values.items():
        environ[name] = value
    job = app.submit(
        "loader.py",
        replicas=2,
        name="secret-job",
        backend="kubernetes",
        namespace=namespace,
        template=cluster.kwok_pod_spec,
        environ=environ,
    )
    core = client.CoreV1Api(cluster.api_client)
    wait_until(lambda: job.status().ready_replicas == 2, timeout=60, what="both workers ready")

    viewer = view_user(cluster, namespace, wait_until)

    seen = viewer_reads(cluster, namespace, viewer, "secret-job")
    text = "\n".join(seen)
    for name, value in values.items():
        assert name in text  # names are visible (they are not values) ...
        if len(value) > 1:
            assert value not in text, f"{name}'s value is readable by view"
    assert not re.search(r'"value":\s*"7"', text), "SHORT_PIN's value is readable by view"
    # ... and the values Secret, the env Secret and every other Secret are not.
    for secret in ["secret-job-env", *_client_secrets(core, namespace)]:
        proc = cluster.kubectl("get", "secret", secret, "-n", namespace, "--as", viewer,
                               check=False)  # fmt: skip
        assert proc.returncode != 0 and "forbidden" in proc.stderr, secret
    assert not cluster.can_i(viewer, "list", "secrets", namespace)
    # The published hash is keyed: it matches no unkeyed hash of the values.
    stored = json.loads(seen[0])["items"][0]
    published = stored["status"]["envHash"]
    assert published.startswith("hmac-sha256:")
    assert AWAITING_VALUES_ANNOTATION not in (stored["metadata"].get("annotations") or {})
    pods = [
        p
        for p in json.loads(seen[1])["items"]
        if "appliance.dev/job-name" in p["metadata"].get("labels", {})
    ]
    assert len(pods) == 2
    assert {p["metadata"]["annotations"]["appliance.dev/env-hash"] for p in pods} == {published}
    job.delete()
    wait_until(lambda: not _pods(core, namespace), timeout=60, what="the operator to free pods")


def test_a_view_user_reads_no_byte_of_a_jobs_code(
    cluster: Cluster,
    namespace: str,
    chart_roles: Release,
    operator: OperatorProcess,
    wait_until: WaitUntil,
) -> None:
    """Issue 23: the code is in the job's Secrets only; its hash is public, its bytes (and the
    names of the files in it) are nowhere view can read: not the job (managed fields
    included), the pods, Events, the printer columns, and not the operator's log."""
    import base64

    from cerebras_appliance.backends.kubernetes import KubernetesJob
    from cerebras_appliance.contract import bundle
    from cerebras_appliance.jobs import build_job

    sentinel = f"code-sentinel-{uuid.uuid4().hex}"
    file_name = f"secret_module_{uuid.uuid4().hex[:8]}.py"
    files = {"noise.bin": os.urandom(600 * 1024), file_name: f"TOKEN = {sentinel!r}\n".encode()}
    made = bundle.pack(None, files=files)
    chunks = bundle.split(made.data)
    assert len(chunks) == 2
    snapshot = [("DATA_ROOT", "/mnt/data")]
    job = build_job("loader.py", 2, snapshot, name="code-job", namespace=namespace,
                    template=cluster.kwok_pod_spec)  # fmt: skip
    handle = KubernetesJob.create(job, snapshot, code=made, api_client=cluster.api_client)
    core = client.CoreV1Api(cluster.api_client)
    wait_until(lambda: handle.status().ready_replicas == 2, timeout=60, what="workers ready")

    viewer = view_user(cluster, namespace, wait_until)
    seen = viewer_reads(cluster, namespace, viewer, "code-job", ("describe", "pods"))
    text = "\n".join([*seen, operator.log()])
    assert made.sha256 in text  # the hash is public (the job, its pods, the Code column)
    fragments = [sentinel, file_name, "noise.bin"]
    for chunk in chunks:  # any run of the chunks' bytes, as base64 or hex, at a few offsets
        for offset in (0, 1, 2, 4096, len(chunk) // 2):
            piece = chunk[offset : offset + 48]
            fragments += [base64.b64encode(piece).decode()[4:44], piece.hex()[:64]]
    for fragment in fragments:
        assert fragment not in text, f"a piece of the code is readable by view: {fragment[:12]}"
    for secret in ["code-job-code-0", "code-job-code-1"]:
        found = core.read_namespaced_secret(secret, namespace)
        assert found.metadata.labels["appliance.dev/job-name"] == "code-job"
        proc = cluster.kubectl("get", "secret", secret, "-n", namespace, "--as", viewer,
                               check=False)  # fmt: skip
        assert proc.returncode != 0 and "forbidden" in proc.stderr, secret
    handle.delete()
    wait_until(lambda: not _pods(core, namespace), timeout=60, what="the operator to free pods")


def _pods(core: client.CoreV1Api, namespace: str) -> list[Any]:
    return list(core.list_namespaced_pod(namespace, label_selector="appliance.dev/job-name").items)


def _client_secrets(core: client.CoreV1Api, namespace: str) -> list[str]:
    return [
        s.metadata.name
        for s in core.list_namespaced_secret(
            namespace, label_selector="app.kubernetes.io/managed-by=cerebras-appliance"
        ).items
    ]


# -- SIGKILL at random points of submit() ------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys, time
    import cerebras_appliance as app
    from cerebras_appliance.environment import ApplianceEnviron
    # imports done before the go signal
    from cerebras_appliance.backends import kubernetes as kube
    from cerebras_appliance.backends.kubernetes import create as steps
    environ = ApplianceEnviron()
    for i in range(20):
        environ[f"VAR_{{i}}"] = f"value-{{i}}"
    # Warm up (models, TLS, the client's lazy imports), so the kill points fall in the calls.
    app.build_job("loader.py", 1, list(environ.tracked().items()))
    kube.KubernetesJob("warm", sys.argv[1], {{}}).ref.custom.list_namespaced_custom_object(
        "appliance.dev", "v1alpha1", sys.argv[1], "executejobs", limit=1)
    # Each step of create() says when it begins, so the parent can aim a kill at it.
    def marked(step, original):
        def call(*args, **kwargs):
            print(f"{{step}} {{time.perf_counter() - started:.4f}}", flush=True)
            return original(*args, **kwargs)
        return call
    for step, function in {STEPS!r}.items():
        setattr(steps, function, marked(step, getattr(steps, function)))
    print("ready", flush=True)
    name = sys.stdin.readline().strip()
    started = time.perf_counter()
    print("submit 0", flush=True)
    app.submit("loader.py", replicas=2, name=name, backend="kubernetes",
               namespace=sys.argv[1], template={template!r}, environ=environ)
    print(f"done {{time.perf_counter() - started:.4f}}", flush=True)
    """
)
# The steps of KubernetesJob.create, in order, by the create module's function that begins each.
STEPS = {"job": "create_job", "values": "write_values", "release": "release"}
ORDER = ("submit", *STEPS, "done")


def _spawn(namespace: str, kubeconfig: str, script: Path) -> subprocess.Popen[str]:
    """A child client, starting (its imports and warm-up take most of its time)."""
    return subprocess.Popen(
        [sys.executable, str(script), namespace],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "KUBECONFIG": kubeconfig},
    )


def _ready(proc: subprocess.Popen[str]) -> subprocess.Popen[str]:
    """Wait until the child has warmed up and waits for its job's name."""
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def _go(proc: subprocess.Popen[str], name: str) -> None:
    """Tell a ready child to submit its job, named ``name``."""
    assert proc.stdin is not None
    proc.stdin.write(f"{name}\n")
    proc.stdin.flush()


def _reap(proc: subprocess.Popen[str]) -> None:
    """Wait for a child that ended or was killed, and close its pipes."""
    proc.wait(timeout=30)
    assert proc.stdout is not None and proc.stdin is not None
    proc.stdout.close()
    proc.stdin.close()


def _markers(proc: subprocess.Popen[str], until: str) -> dict[str, float]:
    """Read the child's step markers up to ``until`` (or its end): {step: seconds since go}."""
    assert proc.stdout is not None
    seen: dict[str, float] = {}
    while until not in seen and "done" not in seen:
        line = proc.stdout.readline()
        if not line:
            break
        step, elapsed = line.split()
        seen[step] = float(elapsed)
    return seen


def test_sigkill_during_submit_leaves_no_ownerless_secret(
    cluster: Cluster,
    namespace: str,
    operator: OperatorProcess,
    tmp_path: Path,
    wait_until: WaitUntil,
) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(template=NOWHERE, STEPS=STEPS))
    # How long each step of one submit() takes here. The next child starts while one submits
    # (and is killed): runs do not wait for imports, and the calibration runs beside one too.
    proc = _ready(_spawn(namespace, cluster.kubeconfig, script))
    upcoming = _spawn(namespace, cluster.kubeconfig, script)
    _go(proc, "calibrate")
    times = _markers(proc, "done")
    _reap(proc)
    assert list(times) == list(ORDER), times
    aims = ORDER[:-1]  # every step but the end
    took = {step: times[ORDER[i + 1]] - times[step] for i, step in enumerate(aims)}
    duration = times["done"]
    runs = int(os.environ.get("APPLIANCE_SIGKILL_RUNS", "40"))
    rng = random.Random(int(os.environ.get("APPLIANCE_SIGKILL_SEED", str(time.time_ns()))))
    for i in range(runs):
        proc = _ready(upcoming)
        if i + 1 < runs:
            upcoming = _spawn(namespace, cluster.kubeconfig, script)
        _go(proc, f"k{i}")
        # Aim at one step, taking turns: once the child says it begins, the kill point itself
        # (not a synchronisation) is anywhere in [0, 1.3 x that step's calibrated time].
        step = aims[i % len(aims)]
        _markers(proc, step)
        time.sleep(rng.uniform(0, took[step] * 1.3))
        proc.send_signal(signal.SIGKILL)
        _reap(proc)

    custom = client.CustomObjectsApi(cluster.api_client)
    core = client.CoreV1Api(cluster.api_client)
    jobs = {
        j["metadata"]["name"]: j
        for j in custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    }
    uids = {j["metadata"]["uid"] for j in jobs.values()}
    secrets = core.list_namespaced_secret(
        namespace, label_selector="app.kubernetes.io/managed-by=cerebras-appliance"
    ).items
    # The invariant: every Secret the client made has an owner, and it is a job that exists.
    for secret in secrets:
        owners = secret.metadata.owner_references or []
        assert owners, f"Secret {secret.metadata.name} has no owner"
        assert {o.uid for o in owners} <= uids, f"{secret.metadata.name}: owner not a job"
    by_name = {s.metadata.name: s for s in secrets}
    outcome: Counter[str] = Counter()
    for i in range(runs):
        job = jobs.get(f"k{i}")
        if job is None:
            outcome["killed before the job"] += 1
            continue
        awaiting = (job["metadata"].get("annotations") or {}).get(AWAITING_VALUES_ANNOTATION)
        refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in job["spec"]["env"]}
        assert len(refs) == 1 and all("value" not in e for e in job["spec"]["env"])
        (values_name,) = refs
        secret = by_name.get(values_name)
        if secret is not None:  # complete whenever it exists
            assert len(secret.data) == 20
        if awaiting is None:
            assert secret is not None, f"k{i} released without its values"
            outcome["released"] += 1
        else:
            outcome["awaiting, Secret written" if secret else "awaiting, no Secret"] += 1

    def pods_only_for_released_jobs() -> bool:
        pods = core.list_namespaced_pod(namespace, label_selector="appliance.dev/job-name").items
        for pod in pods:
            job = jobs[pod.metadata.labels["appliance.dev/job-name"]]
            annotations = job["metadata"].get("annotations") or {}
            assert AWAITING_VALUES_ANNOTATION not in annotations, pod.metadata.name
        released = [n for n, j in jobs.items() if n != "calibrate" and _released(j)]
        return {p.metadata.labels["appliance.dev/job-name"] for p in pods} >= set(released)

    wait_until(pods_only_for_released_jobs, timeout=60, what="workers of every released job")
    print(f"{runs} kills over {duration * 1000:.0f} ms submits: {dict(outcome)}")
    assert len(outcome) >= 3, f"the kill points did not cover the steps: {dict(outcome)}"

    # Deleting the jobs takes their Secrets (garbage collection): nothing is left behind.
    for name in jobs:
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    wait_until(
        lambda: not _client_secrets(core, namespace), timeout=90, what="the Secrets collected"
    )
    wait_until(lambda: not _pods(core, namespace), timeout=90, what="the operator to free pods")


def _released(job: dict[str, Any]) -> bool:
    return AWAITING_VALUES_ANNOTATION not in (job["metadata"].get("annotations") or {})
