"""The operator against a real kube-apiserver (hack/cluster, kwok fake nodes).

The operator runs as a subprocess (``python -m appliance_operator``), its log captured to a
file. kwok marks pods on its fake nodes Running and Ready; a worker's success or failure is
simulated by patching the pod's status (kwok only completes pods owned by a batch Job, so it
leaves ours alone).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import invalid_cases  # tests/data, on pytest's pythonpath
import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from appliance_operator.testing import OperatorProcess, free_port, http_get
from cerebras_appliance.contract import envfile, names

if TYPE_CHECKING:
    from support.cluster import Cluster, WaitUntil

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "appliance.dev", "v1alpha1", "executejobs"
MANAGED = "app.kubernetes.io/managed-by=appliance-operator"
#: Unschedulable on purpose: pods stay Pending on no node (nothing simulates them).
NOWHERE = {"nodeSelector": {"appliance.dev/test": "no-such-node"}}


CASES = invalid_cases.cases()


# -- the operator process --------------------------------------------------------------------


class Operator(OperatorProcess):
    """The operator under test: every namespace, verbose, metrics on its own port."""

    def __init__(self, kubeconfig: str, log_path: Path) -> None:
        self.metrics_port = free_port()
        super().__init__(
            kubeconfig,
            log_path,
            [
                "--all-namespaces",
                "--verbose",  # the strictest case for "no env value in the logs"
                "--metrics-port",
                str(self.metrics_port),
                "--metrics-address",
                "127.0.0.1",
                "--resync-seconds",
                "5",
            ],
        )

    def get(self, port: int, path: str) -> tuple[int, str]:
        return http_get(f"http://127.0.0.1:{port}{path}")

    def metrics(self) -> str:
        return self.get(self.metrics_port, "/metrics")[1]


@pytest.fixture(scope="module")
def crd(cluster: Cluster) -> None:
    cluster.apply_crds()


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, crd: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    op = Operator(cluster.kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log")
    op.start()
    try:
        yield op
    finally:
        op.stop()
        print(f"operator log: {op.log_path}")


# -- helpers ---------------------------------------------------------------------------------


def manifest(
    name: str,
    namespace: str,
    *,
    replicas: int = 2,
    env: list[dict[str, Any]] | None = None,
    template: dict[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ExecuteJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "image": "appliance-operator/worker:test",
            "entrypoint": "my_pkg.loader:main",
            "args": ["--shard", "x"],
            "env": env if env is not None else [{"name": "DATA_ROOT", "value": "/mnt/data"}],
            "template": template if template is not None else {},
            **spec,
        },
    }


class Kube:
    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.cluster = cluster
        self.ns = namespace
        self.core = client.CoreV1Api(cluster.api_client)
        self.custom = client.CustomObjectsApi(cluster.api_client)

    def apply(self, obj: dict[str, Any]) -> None:
        self.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(obj))

    def job(self, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.ns, PLURAL, name
            )
            return result
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def status(self, name: str) -> dict[str, Any]:
        job = self.job(name)
        assert job is not None, f"job {name} does not exist"
        result: dict[str, Any] = job.get("status") or {}
        return result

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        return next(c for c in self.status(name).get("conditions", []) if c["type"] == type_)

    def pods(self, job: str) -> list[Any]:
        selector = f"{MANAGED},appliance.dev/job-name={job}"
        return list(self.core.list_namespaced_pod(self.ns, label_selector=selector).items)

    def pod_names(self, job: str) -> set[str]:
        return {p.metadata.name for p in self.pods(job)}

    def live_pod_names(self, job: str) -> set[str]:
        return {p.metadata.name for p in self.pods(job) if p.metadata.deletion_timestamp is None}

    def finish(self, pod: str, exit_code: int) -> None:
        """Make a worker pod Succeeded (exit 0) or Failed (any other code)."""
        self.cluster.finish_pod(self.ns, pod, exit_code)

    def events(self, job: str) -> list[Any]:
        return [
            e
            for e in self.core.list_namespaced_event(self.ns).items
            if e.involved_object.name == job and e.involved_object.kind == "ExecuteJob"
        ]

    def secret(self, name: str) -> Any | None:
        try:
            return self.core.read_namespaced_secret(name, self.ns)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise


@pytest.fixture
def kube(cluster: Cluster, namespace: str) -> Kube:
    return Kube(cluster, namespace)


def kwok(cluster: Cluster) -> dict[str, Any]:
    return dict(cluster.kwok_pod_spec)


def phase_is(kube: Kube, name: str, phase: str) -> Any:
    return lambda: kube.status(name).get("phase") == phase


# -- admission -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_invalid_job_is_refused_at_admission_naming_the_field(
    cluster: Cluster, crd: None, namespace: str, case: Any
) -> None:
    doc = json.loads(json.dumps(case.manifest))
    doc["metadata"]["namespace"] = namespace
    proc = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc), check=False)
    assert proc.returncode != 0, f"{case.id} was accepted"
    assert case.field in proc.stderr, proc.stderr
    if case.message:
        assert case.message in proc.stderr, proc.stderr
    name = doc["metadata"]["name"]
    assert cluster.kubectl("get", "ej", name, "-n", namespace, check=False).returncode != 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("env", [{"name": "DATA_ROOT", "value": "/other"}]),
        ("env", []),
        ("image", "appliance-operator/worker:other"),
        ("entrypoint", "other.py"),
    ],
)
def test_snapshot_fields_are_immutable(
    cluster: Cluster, crd: None, kube: Kube, field: str, value: Any
) -> None:
    job = manifest("frozen", kube.ns, template=NOWHERE)
    kube.apply(job)
    job["spec"][field] = value
    proc = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(job), check=False)
    assert proc.returncode != 0
    assert f"spec.{field} is immutable" in proc.stderr, proc.stderr
    assert "create a new job" in proc.stderr
    # Other fields may change.
    job = manifest("frozen", kube.ns, template=NOWHERE, replicas=3)
    kube.apply(job)


def test_job_without_env_cannot_gain_one(cluster: Cluster, crd: None, kube: Kube) -> None:
    job = manifest("no-env", kube.ns, template=NOWHERE)
    del job["spec"]["env"]
    kube.apply(job)
    stored = kube.job("no-env")
    assert stored is not None and stored["spec"]["env"] == []  # defaulted
    job["spec"]["env"] = [{"name": "LATE", "value": "1"}]
    proc = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(job), check=False)
    assert proc.returncode != 0 and "spec.env is immutable" in proc.stderr


# -- the reconcile loop ----------------------------------------------------------------------


def test_pods_secret_and_status_of_a_running_job(
    cluster: Cluster, operator: Operator, kube: Kube, wait_until: WaitUntil
) -> None:
    kube.apply(manifest("run", kube.ns, replicas=3, template=kwok(cluster)))
    wait_until(phase_is(kube, "run", "Running"), timeout=60, what="job Running")
    wait_until(lambda: kube.status("run").get("readyReplicas") == 3, what="3 ready")
    job = kube.job("run")
    assert job is not None
    uid = job["metadata"]["uid"]
    status = kube.status("run")
    ready = kube.condition("run", "WorkersReady")
    assert ready["status"] == "True" and ready["reason"] == "EnvApplied"
    assert status["replicas"] == 3 and status["envHash"].startswith("hmac-sha256:")
    assert status["observedGeneration"] == 1 and status["startTime"]
    assert kube.condition("run", "EnvResolved")["status"] == "True"
    # kopf wrote nothing of its own to the job.
    assert not job["metadata"].get("finalizers")
    assert not [a for a in job["metadata"].get("annotations", {}) if "kopf" in a]

    pods = sorted(kube.pods("run"), key=lambda p: p.metadata.name)
    assert [p.metadata.name for p in pods] == ["run-worker-0", "run-worker-1", "run-worker-2"]
    for index, pod in enumerate(pods):
        meta, spec = pod.metadata, pod.spec
        assert meta.labels["appliance.dev/job-name"] == "run"
        assert meta.labels["appliance.dev/worker-index"] == str(index)
        assert meta.labels["app.kubernetes.io/managed-by"] == "appliance-operator"
        (owner,) = meta.owner_references
        assert (owner.kind, owner.name, owner.uid, owner.controller) == (
            "ExecuteJob",
            "run",
            uid,
            True,
        )
        assert meta.annotations["appliance.dev/env-hash"] == status["envHash"]
        assert spec.restart_policy == "Never"
        assert spec.automount_service_account_token is False
        assert spec.enable_service_links is False
        (container,) = spec.containers
        assert container.command[:4] == [
            "python3",
            "-m",
            "cerebras_appliance.worker",
            "my_pkg.loader:main",
        ]
        assert container.command[4:] == ["--shard", "x"]
        assert {e.name for e in container.env} >= {names.ENV_FILE_VAR, names.READY_FILE_VAR}
        assert "DATA_ROOT" not in {e.name for e in container.env}
        mount = next(m for m in container.volume_mounts if m.mount_path == "/var/run/appliance/env")
        assert mount.read_only
        volume = next(v for v in spec.volumes if v.name == mount.name)
        assert volume.secret.secret_name == "run-env"
        assert container.startup_probe._exec.command[0] == "cat"
        assert spec.node_selector == {"type": "kwok"}

    secret = kube.secret("run-env")
    assert secret is not None and secret.immutable
    assert secret.metadata.owner_references[0].uid == uid
    snapshot = envfile.parse(
        base64.b64decode(secret.data[names.SNAPSHOT_KEY]).decode(), "run-env/env.json"
    )
    assert snapshot.env == (("DATA_ROOT", "/mnt/data"),)
    assert snapshot.env_hash == status["envHash"] and envfile.verify(snapshot)

    table = cluster.kubectl("get", "ej", "run", "-n", kube.ns).stdout.split("\n")
    assert table[0].split() == ["NAME", "PHASE", "READY", "REPLICAS", "WORKERS", "AGE"]
    assert table[1].split()[:5] == ["run", "Running", "3", "3", "EnvApplied"]

    # All workers succeed: the job succeeds and says so in an Event.
    for pod in pods:
        kube.finish(pod.metadata.name, 0)
    wait_until(phase_is(kube, "run", "Succeeded"), what="job Succeeded")
    status = kube.status("run")
    assert status["succeeded"] == 3 and status["completionTime"] and status["readyReplicas"] == 0
    assert kube.condition("run", "Succeeded")["status"] == "True"
    reasons = wait_until(
        lambda: (
            {"CreatedWorkers", "Running", "Succeeded"} <= {e.reason for e in kube.events("run")}
            and {e.reason for e in kube.events("run")}
        ),
        what="events",
    )
    assert "Pending" not in reasons


def test_failed_worker_fails_the_job_and_releases_the_others(
    cluster: Cluster, operator: Operator, kube: Kube, wait_until: WaitUntil
) -> None:
    kube.apply(manifest("fail", kube.ns, replicas=3, template=kwok(cluster)))
    wait_until(lambda: kube.status("fail").get("readyReplicas") == 3, timeout=60, what="ready")
    kube.finish("fail-worker-1", 3)
    wait_until(phase_is(kube, "fail", "Failed"), what="job Failed")
    failed = kube.condition("fail", "Failed")
    assert failed["status"] == "True" and failed["reason"] == "BackoffLimitExceeded"
    assert "worker fail-worker-1 failed (exit code 3)" in failed["message"]
    assert kube.status("fail")["failed"] == 1
    # The running workers are released; the failed pod stays (for its logs).
    wait_until(lambda: kube.pod_names("fail") == {"fail-worker-1"}, what="others deleted")
    warning = wait_until(
        lambda: next((e for e in kube.events("fail") if e.reason == "Failed"), None), what="event"
    )
    assert warning.type == "Warning" and "exit code 3" in warning.message


def test_failed_worker_is_replaced_under_backoff_limit(
    cluster: Cluster, operator: Operator, kube: Kube, wait_until: WaitUntil
) -> None:
    kube.apply(manifest("retry", kube.ns, replicas=2, backoffLimit=1, template=kwok(cluster)))
    wait_until(lambda: kube.status("retry").get("readyReplicas") == 2, timeout=60, what="ready")
    kube.finish("retry-worker-0", 7)
    wait_until(lambda: "retry-worker-0-1" in kube.pod_names("retry"), what="replacement")
    # The replacement is created before the status write that counts the failure: wait for
    # that write, not for the readyReplicas the job already had.
    wait_until(
        lambda: (s := kube.status("retry")).get("readyReplicas") == 2 and s.get("failed") == 1,
        what="ready again, the failure counted",
    )
    status = kube.status("retry")
    assert status["phase"] == "Running" and status["failed"] == 1
    assert kube.pod_names("retry") == {"retry-worker-0", "retry-worker-0-1", "retry-worker-1"}
    kube.finish("retry-worker-0-1", 9)
    wait_until(phase_is(kube, "retry", "Failed"), what="job Failed")
    message = kube.condition("retry", "Failed")["message"]
    assert "retry-worker-0-1 failed (exit code 9)" in message
    assert "2 worker failure(s), backoffLimit is 1" in message
    assert "retry-worker-0-2" not in kube.pod_names("retry")


def test_suspend_and_resume(
    cluster: Cluster, operator: Operator, kube: Kube, wait_until: WaitUntil
) -> None:
    job = manifest("pause", kube.ns, replicas=2, template=kwok(cluster))
    kube.apply(job)
    wait_until(lambda: kube.status("pause").get("readyReplicas") == 2, timeout=60, what="ready")
    job["spec"]["suspend"] = True
    kube.apply(job)
    wait_until(phase_is(kube, "pause", "Suspended"), what="Suspended")
    wait_until(lambda: not kube.pod_names("pause"), what="pods deleted")
    assert kube.job("pause") is not None
    assert kube.condition("pause", "Suspended")["status"] == "True"
    job["spec"]["suspend"] = False
    kube.apply(job)
    wait_until(lambda: kube.status("pause").get("readyReplicas") == 2, what="resumed")
    assert kube.pod_names("pause") == {"pause-worker-0", "pause-worker-1"}
    reasons = [e.reason for e in kube.events("pause")]
    assert "Suspended" in reasons


def test_active_deadline_fails_the_job(
    cluster: Cluster, operator: Operator, kube: Kube, wait_until: WaitUntil
) -> None:
    kube.apply(manifest("late", kube.ns, activeDeadlineSeconds=3, template=kwok(cluster)))
    wait_until(phase_is(kube, "late", "Failed"), timeout=60, what="deadline")
    failed = kube.condition("late", "Failed")
    assert failed["reason"] == "DeadlineExceeded"
    assert "activeDeadlineSeconds=3" in failed["message"]
    job = kube.job("late")
    assert job is not None
    created = _epoch(job["metadata"]["creationTimestamp"])
    assert _epoch(failed["lastTransitionTime"]) - created >= 3  # not before the deadline
    assert "Running" in {e.reason for e in kube.events("late")}  # it did run first
    wait_until(lambda: not kube.live_pod_names("late"), what="pods released")


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_ttl_deletes_the_finished_job_and_what_it_owns(
    cluster: Cluster, operator: Operator, kube: Kube, wait_until: WaitUntil
) -> None:
    kube.apply(manifest("ttl", kube.ns, ttlSecondsAfterFinished=2, template=kwok(cluster)))
    wait_until(lambda: kube.status("ttl").get("readyReplicas") == 2, timeout=60, what="ready")
    for pod in kube.pod_names("ttl"):
        kube.finish(pod, 0)
    wait_until(phase_is(kube, "ttl", "Succeeded"), what="Succeeded")
    completed = _epoch(kube.status("ttl")["completionTime"])
    wait_until(lambda: kube.job("ttl") is None, timeout=30, what="job deleted by TTL")
    assert time.time() >= completed + 2 - 1  # not before the TTL (stamps have 1 s resolution)
    wait_until(lambda: not kube.pod_names("ttl"), timeout=60, what="pods collected")
    wait_until(lambda: kube.secret("ttl-env") is None, timeout=60, what="secret collected")


def test_deleting_a_job_cascades(
    cluster: Cluster, operator: Operator, kube: Kube, wait_until: WaitUntil
) -> None:
    kube.apply(manifest("gone", kube.ns, replicas=2, template=NOWHERE))
    wait_until(lambda: len(kube.pod_names("gone")) == 2, timeout=60, what="pods")
    assert kube.secret("gone-env") is not None
    cluster.kubectl("delete", "ej", "gone", "-n", kube.ns, "--wait=true", timeout=60)
    wait_until(lambda: not kube.pod_names("gone"), timeout=60, what="pods collected")
    wait_until(lambda: kube.secret("gone-env") is None, timeout=60, what="secret collected")


def test_missing_secret_keeps_the_job_pending_until_it_exists(
    cluster: Cluster, operator: Operator, kube: Kube, wait_until: WaitUntil
) -> None:
    env = [
        {"name": "PLAIN", "value": "1"},
        {"name": "API_TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
    ]
    kube.apply(manifest("needs", kube.ns, env=env, template=NOWHERE))
    cond = wait_until(
        lambda: next(
            (c for c in kube.status("needs").get("conditions", []) if c["type"] == "EnvResolved"),
            None,
        ),
        what="EnvResolved condition",
    )
    assert cond["status"] == "False" and cond["reason"] == "SecretNotFound"
    assert "spec.env[1] (API_TOKEN)" in cond["message"] and "'creds'" in cond["message"]
    assert kube.status("needs")["phase"] == "Pending"
    warning = wait_until(
        lambda: next((e for e in kube.events("needs") if e.reason == "SecretNotFound"), None),
        what="warning event",
    )
    assert warning.type == "Warning" and "creds" in warning.message
    assert not kube.pod_names("needs")
    kube.core.create_namespaced_secret(
        kube.ns, {"metadata": {"name": "creds"}, "stringData": {"token": "t0ken"}}
    )
    wait_until(lambda: len(kube.pod_names("needs")) == 2, timeout=60, what="pods after retry")
    wait_until(lambda: kube.condition("needs", "EnvResolved")["status"] == "True", what="resolved")


# -- restarts --------------------------------------------------------------------------------


def _pod_count(kube: Kube) -> int:
    """Pods in the test's namespace, cheaply (the API server counts; no selector allowed)."""
    listing = kube.core.list_namespaced_pod(kube.ns, limit=1)
    if not listing.items:
        return 0
    return 1 + (listing.metadata.remaining_item_count or 0)


def test_operator_killed_mid_reconcile_makes_no_duplicates(
    cluster: Cluster, operator: Operator, kube: Kube, wait_until: WaitUntil
) -> None:
    replicas = 400
    killed_at = None
    try:
        kube.apply(manifest("crash", kube.ns, replicas=replicas, template=NOWHERE))
        killed_at = wait_until(
            lambda: (n := _pod_count(kube)) > 0 and n,
            timeout=60,
            interval=0.005,
            what="first pods",
        )
        operator.kill(signal.SIGKILL)
        assert killed_at < replicas, "the operator finished before it could be killed"
        after_kill = _pod_count(kube)
    finally:
        operator.start()
    wait_until(
        lambda: kube.status("crash").get("replicas") == replicas and _pod_count(kube) == replicas,
        timeout=120,
        what="all pods after restart",
    )
    expected = {f"crash-worker-{i}" for i in range(replicas)}
    assert kube.pod_names("crash") == expected
    assert after_kill < replicas, f"killed after {killed_at}, {after_kill} pods then"
    # Reconciles after that (the 5 s resync) change nothing.
    job = kube.job("crash")
    assert job is not None
    before = _reconciles(operator)
    wait_until(lambda: _reconciles(operator) >= before + 3, timeout=30, what="resyncs")
    assert kube.pod_names("crash") == expected
    again = kube.job("crash")
    assert again is not None
    assert again["metadata"]["resourceVersion"] == job["metadata"]["resourceVersion"]


def _metric(operator: Operator, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    total = 0.0
    for line in operator.metrics().splitlines():
        if line.startswith(name) and not line.startswith("#"):
            head, _, value = line.rpartition(" ")
            got = head[len(name) :].strip("{}")
            if all(part in got for part in want.split(",") if part):
                total += float(value)
    return total


def _reconciles(operator: Operator) -> float:
    return _metric(operator, "appliance_operator_reconcile_seconds_count")


# -- secrecy ---------------------------------------------------------------------------------


def test_env_values_are_nowhere_but_in_the_job_and_its_secrets(
    cluster: Cluster, operator: Operator, kube: Kube, wait_until: WaitUntil
) -> None:
    inline = f"inline-sentinel-{uuid.uuid4().hex}"
    hidden = f"secret-sentinel-{uuid.uuid4().hex}"
    kube.core.create_namespaced_secret(
        kube.ns, {"metadata": {"name": "vault"}, "stringData": {"k": hidden}}
    )
    env = [
        {"name": "INLINE", "value": inline},
        {"name": "HIDDEN", "valueFrom": {"secretKeyRef": {"name": "vault", "key": "k"}}},
    ]
    kube.apply(manifest("quiet", kube.ns, env=env, replicas=2, template=kwok(cluster)))
    wait_until(lambda: kube.status("quiet").get("readyReplicas") == 2, timeout=60, what="ready")
    kube.finish("quiet-worker-0", 3)
    wait_until(phase_is(kube, "quiet", "Failed"), what="Failed")
    # The values did reach the env Secret (so the test can fail for the right reason).
    secret = kube.secret("quiet-env")
    assert secret is not None
    content = base64.b64decode(secret.data[names.SNAPSHOT_KEY]).decode()
    assert inline in content and hidden in content
    places = {
        "pods": cluster.kubectl("get", "pods", "-n", kube.ns, "-o", "yaml").stdout,
        "events": cluster.kubectl("get", "events", "-n", kube.ns, "-o", "yaml").stdout,
        "status": json.dumps(kube.status("quiet")),
        "printer columns": cluster.kubectl("get", "ej", "-n", kube.ns, "-o", "wide").stdout,
        "operator log": operator.log(),
    }
    for where, text in places.items():
        assert inline not in text, f"inline value found in {where}"
        assert hidden not in text, f"secret value found in {where}"
    assert "quiet" in places["operator log"]  # the log did cover this job


# -- a job's code (issue 23) -----------------------------------------------------------------


def _two_chunk_bundle(sentinel: str) -> Any:
    """A bundle of 2 chunks (600 KiB of random bytes do not compress) with a marked file."""
    from cerebras_appliance.contract import bundle

    files = {"noise.bin": os.urandom(600 * 1024), "loader.py": f"print({sentinel!r})\n".encode()}
    made = bundle.pack(None, files=files)
    assert len(bundle.split(made.data)) == 2
    return made


def test_a_job_with_code_gets_its_secrets_projected_into_its_pods(
    cluster: Cluster, operator: Operator, kube: Kube, wait_until: WaitUntil
) -> None:
    from cerebras_appliance.backends.kubernetes import KubernetesJob
    from cerebras_appliance.contract import bundle
    from cerebras_appliance.jobs import build_job

    sentinel = f"code-sentinel-{uuid.uuid4().hex}"
    made = _two_chunk_bundle(sentinel)
    snapshot = [("DATA_ROOT", "/mnt/data")]
    job = build_job("loader.py", 2, snapshot, name="coded", namespace=kube.ns,
                    template=kwok(cluster))  # fmt: skip
    KubernetesJob.create(job, snapshot, code=made, api_client=cluster.api_client)
    wait_until(lambda: kube.status("coded").get("readyReplicas") == 2, timeout=60, what="ready")
    stored = kube.job("coded")
    assert stored is not None
    uid = stored["metadata"]["uid"]
    assert stored["spec"]["code"] == {"sha256": made.sha256, "chunks": 2, "size": len(made.data)}
    assert "appliance.dev/awaiting-values" not in (stored["metadata"].get("annotations") or {})
    # Both code Secrets: owned by the job, immutable, one chunk each, the bundle in order.
    chunks = []
    for index in range(2):
        secret = kube.secret(f"coded-code-{index}")
        assert secret is not None and secret.immutable
        assert [r.uid for r in secret.metadata.owner_references] == [uid]
        assert list(secret.data) == [f"chunk-{index:03d}"]
        chunks.append(base64.b64decode(secret.data[f"chunk-{index:03d}"]))
    assert bundle.join(chunks) == made.data
    pods = sorted(kube.pods("coded"), key=lambda p: p.metadata.name)
    assert [p.metadata.name for p in pods] == ["coded-worker-0", "coded-worker-1"]
    for pod in pods:
        (container,) = pod.spec.containers
        env = {e.name: e.value for e in container.env}
        assert env[names.CODE_DIR_VAR] == names.CODE_DIR
        assert env[names.CODE_SHA256_VAR] == made.sha256
        mount = next(m for m in container.volume_mounts if m.mount_path == names.CODE_DIR)
        assert mount.read_only
        volume = next(v for v in pod.spec.volumes if v.name == mount.name)
        sources = [(s.secret.name, [(i.key, i.path) for i in s.secret.items])
                   for s in volume.projected.sources]  # fmt: skip
        assert sources == [
            ("coded-code-0", [("chunk-000", "chunk-000")]),
            ("coded-code-1", [("chunk-001", "chunk-001")]),
        ]
        state = next(v for v in pod.spec.volumes if v.name == "appliance-state")
        assert state.empty_dir.medium == "Memory" and state.empty_dir.size_limit == "128Mi"
    table = cluster.kubectl("get", "ej", "coded", "-n", kube.ns, "-o", "wide").stdout
    assert made.sha256 in table  # the Code column: the hash, never the content
    text = cluster.kubectl("get", "pods", "-n", kube.ns, "-o", "yaml").stdout
    assert sentinel not in text and base64.b64encode(chunks[1][:3000]).decode()[:64] not in text
    # Deleting the job takes its code with it.
    for pod in pods:
        kube.finish(pod.metadata.name, 0)
    wait_until(phase_is(kube, "coded", "Succeeded"), what="Succeeded")
    kube.custom.delete_namespaced_custom_object(GROUP, VERSION, kube.ns, PLURAL, "coded")
    wait_until(lambda: kube.secret("coded-code-1") is None, timeout=60, what="collected")


def test_code_cannot_be_changed_gained_or_lost(cluster: Cluster, crd: None, kube: Kube) -> None:
    code = {"sha256": "sha256:" + "1" * 64, "chunks": 1, "size": 100}
    with_code = manifest("frozen-code", kube.ns, template=NOWHERE, code=code)
    kube.apply(with_code)
    for changed in ({**code, "sha256": "sha256:" + "2" * 64}, None):
        attempt = manifest("frozen-code", kube.ns, template=NOWHERE, code=changed)
        if changed is None:
            del attempt["spec"]["code"]
        proc = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(attempt), check=False)
        assert proc.returncode != 0 and "spec.code is immutable" in proc.stderr, proc.stderr
    kube.apply(manifest("no-code", kube.ns, template=NOWHERE))
    gained = manifest("no-code", kube.ns, template=NOWHERE, code=code)
    proc = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(gained), check=False)
    assert proc.returncode != 0 and "spec.code is immutable" in proc.stderr, proc.stderr
    kube.apply(manifest("frozen-code", kube.ns, template=NOWHERE, code=code, replicas=3))


# -- the client's Kubernetes backend ---------------------------------------------------------


def test_submit_to_kubernetes_follow_and_delete(
    cluster: Cluster,
    operator: Operator,
    kube: Kube,
    wait_until: WaitUntil,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import cerebras_appliance as app
    from cerebras_appliance.environment import appliance_environ

    monkeypatch.setenv("KUBECONFIG", cluster.kubeconfig)
    token = f"token-{uuid.uuid4().hex}"
    saved = appliance_environ.tracked_names()
    appliance_environ["DATA_ROOT"] = "/mnt/data"
    appliance_environ["API_TOKEN"] = token
    try:
        job = app.submit(
            "loader.py",
            replicas=2,
            name="client",
            backend="kubernetes",
            namespace=kube.ns,
            sensitive=["API_TOKEN"],
            template=kwok(cluster),
        )
    finally:
        for name in ("DATA_ROOT", "API_TOKEN"):
            if name not in saved:
                del appliance_environ[name]
    stored = kube.job("client")
    assert stored is not None
    assert token not in json.dumps(stored)  # no value is in the job
    assert "/mnt/data" not in json.dumps(stored)
    refs = [e["valueFrom"]["secretKeyRef"] for e in stored["spec"]["env"]]
    (values_name,) = {r["name"] for r in refs}
    assert values_name.startswith("client-values-")
    assert [r["key"] for r in refs] == ["DATA_ROOT", "API_TOKEN"]
    assert "appliance.dev/awaiting-values" not in (stored["metadata"].get("annotations") or {})
    values = kube.secret(values_name)
    assert values is not None and values.immutable
    assert base64.b64decode(values.data["API_TOKEN"]).decode() == token
    assert values.metadata.owner_references[0].uid == stored["metadata"]["uid"]

    wait_until(lambda: job.status().ready_replicas == 2, timeout=60, what="ready")
    env_secret = kube.secret("client-env")
    assert env_secret is not None
    assert token in base64.b64decode(env_secret.data[names.SNAPSHOT_KEY]).decode()
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="did not finish within 1"):
        job.wait(timeout=1)
    assert time.monotonic() - started < 10
    logs = job.logs()
    assert set(logs) == {"client-worker-0", "client-worker-1"}
    for pod in ("client-worker-0", "client-worker-1"):
        kube.finish(pod, 0)
    final = job.wait(timeout=60)
    assert final.phase == "Succeeded" and final.succeeded == 2
    job.delete()
    wait_until(lambda: kube.job("client") is None, what="job deleted")
    wait_until(lambda: kube.secret(values_name) is None, timeout=60, what="collected")
    job.delete()  # twice is fine


def test_submit_refuses_to_clobber_and_reports_conflicts(
    cluster: Cluster,
    crd: None,
    kube: Kube,
    monkeypatch: pytest.MonkeyPatch,
    wait_until: WaitUntil,
) -> None:
    import cerebras_appliance as app
    from cerebras_appliance.backends.kubernetes import KubernetesError
    from cerebras_appliance.environment import ApplianceEnviron

    monkeypatch.setenv("KUBECONFIG", cluster.kubeconfig)
    environ = ApplianceEnviron()
    monkeypatch.setitem(os.environ, "API_TOKEN", "")  # removed again afterwards
    environ["API_TOKEN"] = "t1"

    def submit(name: str) -> Any:
        return app.submit(
            "loader.py",
            name=name,
            backend="kubernetes",
            namespace=kube.ns,
            template=NOWHERE,
            environ=environ,
        )

    def values_of(job: dict[str, Any]) -> str:
        return str(job["spec"]["env"][0]["valueFrom"]["secretKeyRef"]["name"])

    # A job of that name exists: refused, and its values Secret is not touched.
    first = submit("twice")
    stored = kube.job("twice")
    assert stored is not None
    with pytest.raises(KubernetesError, match="already exists"):
        submit("twice")
    secret = kube.secret(values_of(stored))
    assert secret is not None
    assert secret.metadata.owner_references[0].uid == stored["metadata"]["uid"]
    # Deleted and submitted again at once: a new Secret name, never the old one's.
    first.delete()
    wait_until(lambda: kube.job("twice") is None, what="job deleted")
    submit("twice")
    again = kube.job("twice")
    assert again is not None and values_of(again) != values_of(stored)
    fresh = kube.secret(values_of(again))
    assert fresh is not None and base64.b64decode(fresh.data["API_TOKEN"]).decode() == "t1"


# -- operations ------------------------------------------------------------------------------


def test_liveness_and_metrics(operator: Operator, kube: Kube, wait_until: WaitUntil) -> None:
    code, body = operator.get(operator.liveness_port, "/healthz")
    assert code == 200 and json.loads(body)["reconcile_workers"]["workers"] >= 1
    text = operator.metrics()
    for name in (
        "appliance_operator_jobs{",
        "appliance_operator_reconcile_seconds_bucket",
        "appliance_operator_api_requests_total",
    ):
        assert name in text
    assert "appliance_operator_api_errors" in text


# -- lifecycle: counting, restarts, drift, things in the way (issue 9) -----------------------

TRACKING = "appliance.dev/worker-tracking"


def _finalizers(kube: Kube, job: str) -> dict[str, list[str]]:
    return {p.metadata.name: list(p.metadata.finalizers or []) for p in kube.pods(job)}


def _force_delete(kube: Kube, pod: str) -> None:
    kube.core.delete_namespaced_pod(pod, kube.ns, grace_period_seconds=0)


def test_counts_survive_terminated_pods_being_deleted(
    cluster: Cluster, operator: Operator, kube: Kube, wait_until: WaitUntil
) -> None:
    kube.apply(manifest("gc", kube.ns, replicas=2, backoffLimit=1, template=kwok(cluster)))
    wait_until(lambda: kube.live_pod_names("gc") == {"gc-worker-0", "gc-worker-1"}, timeout=60)
    assert all(TRACKING in f for f in _finalizers(kube, "gc").values())
    kube.finish("gc-worker-0", 0)
    kube.finish("gc-worker-1", 3)
    wait_until(lambda: "gc-worker-1-1" in kube.live_pod_names("gc"), timeout=60)

    def counted() -> bool:
        fins = _finalizers(kube, "gc")
        done = not fins.get("gc-worker-0") and not fins.get("gc-worker-1")
        return done and not kube.status("gc").get("countedPods")

    wait_until(counted, timeout=60, what="both outcomes counted and the finalizers removed")
    st = kube.status("gc")
    assert (st["succeeded"], st["failed"], st["completedIndexes"]) == (1, 1, "0")
    # Pod GC, a node deletion or a person removes the finished pods.
    _force_delete(kube, "gc-worker-0")
    _force_delete(kube, "gc-worker-1")
    wait_until(lambda: kube.pod_names("gc") == {"gc-worker-1-1"}, timeout=60)
    before = _reconciles(operator)
    wait_until(lambda: _reconciles(operator) >= before + 2, timeout=60, what="reconciles")
    st = kube.status("gc")
    assert (st["succeeded"], st["failed"]) == (1, 1), "counts never go backwards"
    assert kube.pod_names("gc") == {"gc-worker-1-1"}, "the succeeded worker is not run again"
    kube.finish("gc-worker-1-1", 0)
    wait_until(phase_is(kube, "gc", "Succeeded"), timeout=60)
    st = kube.status("gc")
    assert (st["succeeded"], st["failed"], st["completedIndexes"]) == (2, 1, "0-1")


def test_restart_after_the_user_secret_was_deleted_replaces_from_the_env_secret(
    cluster: Cluster, operator: Operator, kube: Kube, wait_until: WaitUntil
) -> None:
    kube.core.create_namespaced_secret(
        kube.ns,
        {"metadata": {"name": "creds"}, "data": {"t": base64.b64encode(b"tok").decode()}},
    )
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "t"}}}]
    kube.apply(manifest("rs", kube.ns, replicas=1, env=env, template=kwok(cluster)))
    wait_until(phase_is(kube, "rs", "Running"), timeout=60)
    try:
        operator.stop()
        kube.core.delete_namespaced_secret("creds", kube.ns)
        _force_delete(kube, "rs-worker-0")  # held by the finalizer while the operator is down
    finally:
        operator.start()
    wait_until(lambda: kube.live_pod_names("rs") == {"rs-worker-0-1"}, timeout=60)
    wait_until(phase_is(kube, "rs", "Running"), timeout=60)
    assert kube.condition("rs", "EnvResolved")["status"] == "True"
    assert kube.status("rs")["failed"] == 0
    # The finalizer comes off in the pass after the one that created the replacement.
    wait_until(lambda: "rs-worker-0" not in kube.pod_names("rs"), timeout=30)


def test_a_foreign_pod_holding_a_worker_name_is_a_condition_and_one_event(
    cluster: Cluster, operator: Operator, kube: Kube, wait_until: WaitUntil
) -> None:
    kube.core.create_namespaced_pod(
        kube.ns,
        {
            "metadata": {"name": "fp-worker-0"},
            "spec": {**kwok(cluster), "containers": [{"name": "x", "image": "busybox"}]},
        },
    )
    kube.apply(manifest("fp", kube.ns, replicas=1, template=kwok(cluster)))

    def taken() -> bool:
        cond = next(
            (c for c in kube.status("fp").get("conditions", []) if c["type"] == "ReplicaFailure"),
            {},
        )
        return cond.get("status") == "True" and cond.get("reason") == "PodNameTaken"

    wait_until(taken, timeout=60, what="ReplicaFailure=True PodNameTaken")
    assert "fp-worker-0" in kube.condition("fp", "ReplicaFailure")["message"]
    before = _reconciles(operator)
    wait_until(lambda: _reconciles(operator) >= before + 3, timeout=60, what="retries")
    warnings = [e for e in kube.events("fp") if e.reason == "PodNameTaken"]
    assert len(warnings) == 1 and (warnings[0].count or 1) == 1, warnings
    _force_delete(kube, "fp-worker-0")
    wait_until(lambda: kube.live_pod_names("fp") == {"fp-worker-0"}, timeout=60)
    wait_until(lambda: kube.condition("fp", "ReplicaFailure")["status"] == "False", timeout=60)
    # A worker that lost its managed-by label is invisible to the operator: said so.
    kube.core.patch_namespaced_pod(
        "fp-worker-0", kube.ns, {"metadata": {"labels": {"app.kubernetes.io/managed-by": None}}}
    )

    def unlabelled() -> bool:
        cond = kube.condition("fp", "ReplicaFailure")
        return cond["status"] == "True" and "lost its label" in cond["message"]

    wait_until(unlabelled, timeout=60, what="ReplicaFailure names the unlabelled pod")


def test_a_job_the_models_cannot_read_gets_a_condition_and_a_warning(
    cluster: Cluster, operator: Operator, kube: Kube, wait_until: WaitUntil
) -> None:
    """A newer CRD than this operator knows: it allows more replicas than the models do."""
    crd_file = str(REPO / "crds" / "executejobs.yaml")
    patch = [
        {
            "op": "replace",
            "path": "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/replicas/"
            "maximum",
            "value": 5000,
        }
    ]
    cluster.kubectl(
        "patch", "crd", "executejobs.appliance.dev", "--type=json", "-p", json.dumps(patch)
    )
    try:
        body = manifest("future", kube.ns, replicas=2000, template=NOWHERE)
        wait_until(
            lambda: _try_create(kube, body), timeout=30, what="the job with 2000 replicas created"
        )

        def reported() -> bool:
            conds = kube.status("future").get("conditions", [])
            return any(c["type"] == "Valid" and c["status"] == "False" for c in conds)

        wait_until(reported, timeout=60, what="Valid=False")
        cond = kube.condition("future", "Valid")
        assert cond["reason"] == "InvalidSpec" and "spec.replicas" in cond["message"]
        before = _reconciles(operator)
        wait_until(lambda: _reconciles(operator) >= before + 2, timeout=60, what="resyncs")
        warnings = [e for e in kube.events("future") if e.reason == "InvalidSpec"]
        assert len(warnings) == 1, warnings
        assert kube.pods("future") == []
    finally:
        kube.custom.delete_namespaced_custom_object(GROUP, VERSION, kube.ns, PLURAL, "future")
        cluster.kubectl("replace", "-f", crd_file)


def _try_create(kube: Kube, body: dict[str, Any]) -> bool:
    """Refused until the patched schema is served."""
    try:
        kube.custom.create_namespaced_custom_object(GROUP, VERSION, kube.ns, PLURAL, body)
    except ApiException as exc:
        if exc.status == 409:
            return True
        if exc.status == 422 and "spec.replicas" in str(exc.body):
            return False
        raise
    return True


def _restart_apiserver(cluster: Cluster) -> None:
    """Stop the kube-apiserver, start it again with the same command line, and wait until it
    is ready (every client connection is cut meanwhile)."""
    state = Path(cluster.kubeconfig).parent
    pid_file = state / "pids" / "kube-apiserver.pid"
    pid = int(pid_file.read_text())
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    os.kill(pid, signal.SIGKILL)  # a crash: no graceful drain of the watches
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}/cmdline").exists() and Path(f"/proc/{pid}/cmdline").read_bytes():
        assert time.monotonic() < deadline, "kube-apiserver did not stop"
        time.sleep(0.1)  # poll for the process to exit (bounded)
    import subprocess

    log_path = state / "logs" / "kube-apiserver.log"
    for attempt in range(3):  # a start can fail while the old one's port is being released
        log = open(log_path, "ab")  # noqa: SIM115 - the child keeps it
        proc = subprocess.Popen(
            [a.decode() for a in argv],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        pid_file.write_text(str(proc.pid))
        if _wait_apiserver_ready(cluster, proc):
            return
        if attempt == 2:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise AssertionError(f"kube-apiserver exited on restart, 3 times:\n{tail}")
        time.sleep(2)  # a pause before the next start (bounded: 3 attempts)


def _wait_apiserver_ready(cluster: Cluster, proc: Any) -> bool:
    """True once /readyz answers; False when the process exited first."""
    import subprocess

    deadline = time.monotonic() + 120
    while True:
        ok = subprocess.run(
            [
                f"{cluster.bindir}/kubectl",
                "--kubeconfig",
                cluster.kubeconfig,
                "get",
                "--raw",
                "/readyz",
            ],
            capture_output=True,
            check=False,
            timeout=10,
        )
        if ok.returncode == 0:
            return True
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, "kube-apiserver not ready after restart"
        time.sleep(0.3)  # poll readiness (bounded)


def test_apiserver_restarted_under_load_loses_no_job_and_duplicates_no_pod(
    cluster: Cluster, operator: Operator, kube: Kube, wait_until: WaitUntil
) -> None:
    jobs = 200
    template = kwok(cluster)
    for i in range(jobs):
        kube.custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            kube.ns,
            PLURAL,
            manifest(f"load-{i}", kube.ns, replicas=2, template=template),
        )
    errors_before = _metric(operator, "appliance_operator_api_errors_total", code="0")
    starts = operator.starts
    assert operator.proc is not None
    pid = operator.proc.pid
    _restart_apiserver(cluster)

    expected = {f"load-{i}-worker-{w}" for i in range(jobs) for w in (0, 1)}

    def consistent() -> bool:
        """Every pod exists once, and every job reports what its pods do. (Whether kwok and
        the scheduler run the pods soon after the restart is theirs: the scheduler has been
        seen to take minutes to re-watch.)"""
        items = kube.custom.list_namespaced_custom_object(GROUP, VERSION, kube.ns, PLURAL)["items"]
        pods = kube.core.list_namespaced_pod(kube.ns).items
        names = [p.metadata.name for p in pods]
        assert len(names) == len(set(names)), "a duplicate pod"
        if set(names) != expected:
            raise AssertionError(f"{len(set(names))} of {len(expected)} pods")
        running = {p.metadata.name for p in pods if p.status.phase == "Running"}
        wrong = []
        for job in items:
            name = job["metadata"]["name"]
            want = "Running" if {f"{name}-worker-0", f"{name}-worker-1"} & running else "Pending"
            if (job.get("status") or {}).get("phase") != want:
                wrong.append(name)
        assert len(items) == jobs, f"{len(items)} jobs"
        if wrong:
            raise AssertionError(f"{len(wrong)} jobs do not report their pods yet: {wrong[:5]}")
        return True

    wait_until(consistent, timeout=300, interval=1, what="every job's pods, once, reported")
    assert operator.proc.pid == pid and operator.starts == starts, "recovered without a restart"
    operator.check_alive()
    errors = _metric(operator, "appliance_operator_api_errors_total", code="0") - errors_before
    print(f"apiserver restart under load: {errors:.0f} connection errors, all retried")
    for i in range(jobs):
        kube.custom.delete_namespaced_custom_object(GROUP, VERSION, kube.ns, PLURAL, f"load-{i}")


def test_a_forced_relist_forgets_what_vanished_meanwhile(
    cluster: Cluster, operator: Operator, kube: Kube, wait_until: WaitUntil
) -> None:
    """The watch is cut and re-listed (410 Gone) while a worker pod is deleted: kopf's index
    never gets its DELETED event. The operator must not keep believing in it."""
    kube.apply(manifest("relist", kube.ns, replicas=1, template=kwok(cluster)))
    wait_until(phase_is(kube, "relist", "Running"), timeout=60)
    (vanished,) = [p.metadata.uid for p in kube.pods("relist")]

    assert operator.proc is not None
    operator.proc.send_signal(signal.SIGSTOP)
    try:
        _restart_apiserver(cluster)
        # The operator's connections are dead; the pod goes while it cannot watch.
        kube.core.patch_namespaced_pod(
            "relist-worker-0", kube.ns, {"metadata": {"finalizers": None}}
        )
        _force_delete(kube, "relist-worker-0")
        wait_until(lambda: not kube.pod_names("relist"), timeout=30, what="pod gone")
    finally:
        operator.proc.send_signal(signal.SIGCONT)

    # Replaced: one new pod for worker 0. Its name is relist-worker-0 when the operator saw
    # the pod only vanish, relist-worker-0-1 when its resumed watch first showed the pod
    # terminating (a disruption: the next attempt).
    def replaced() -> bool:
        live = [p for p in kube.pods("relist") if p.metadata.deletion_timestamp is None]
        return (
            len(live) == 1
            and live[0].metadata.uid != vanished
            and (live[0].metadata.name in ("relist-worker-0", "relist-worker-0-1"))
        )

    wait_until(
        replaced,
        timeout=180,  # the drift check runs every 5 resync periods (25 s here)
        what="the vanished worker replaced",
    )
    wait_until(phase_is(kube, "relist", "Running"), timeout=60)
    assert kube.status("relist")["failed"] == 0
