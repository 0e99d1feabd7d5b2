"""Issue 11, part 2: env values readable only by those who should read them.

* the client sends every value in a Secret the job owns, in an order no interruption can
  turn into an ownerless Secret, and no raw ApiException escapes;
* the published env hash is keyed (HMAC, per-snapshot key kept with the values);
* the operator starts nothing while the client is still writing the values;
* local job directories of a caller killed with SIGKILL are removed by the next start.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client
from support.fake_kube import FakeKubeApi

from appliance_operator.job import controller
from appliance_operator.job.controller import Controller
from appliance_operator.metrics import Metrics
from cerebras_appliance.backends.kubernetes import KubernetesError, KubernetesJob
from cerebras_appliance.backends.local import job as local
from cerebras_appliance.backends.local import state
from cerebras_appliance.contract import envfile, names
from cerebras_appliance.contract.api import CodeBundle
from cerebras_appliance.contract.names import AWAITING_VALUES_ANNOTATION
from cerebras_appliance.jobs import build_job, secret_key_for

SNAPSHOT = [("DATA_ROOT", "/mnt/data"), ("SHORT", "7"), ("API_TOKEN", "t0ps3cret")]


# -- the keyed hash ----------------------------------------------------------------------------


def test_hash_is_keyed_and_reveals_nothing_without_the_key() -> None:
    key, published = envfile.seal(SNAPSHOT)
    assert published.startswith("hmac-sha256:") and len(published) == len("hmac-sha256:") + 64
    assert envfile.snapshot_hash(SNAPSHOT, key) == published  # deterministic under its key
    other_key, again = envfile.seal(SNAPSHOT)
    assert other_key != key and again != published  # a new key per snapshot
    # Any order, name or value change changes it.
    assert envfile.snapshot_hash(list(reversed(SNAPSHOT)), key) != published
    assert envfile.snapshot_hash([*SNAPSHOT[:1], ("SHORT", "8"), SNAPSHOT[2]], key) != published
    # A guess of a short value cannot be tested against it: the old, unkeyed scheme could.
    for guess in map(str, range(100)):
        candidate = [*SNAPSHOT[:1], ("SHORT", guess), SNAPSHOT[2]]
        unkeyed = hashlib.sha256(json.dumps(candidate, separators=(",", ":")).encode()).hexdigest()
        assert unkeyed not in published


def test_env_file_carries_its_key_and_verifies() -> None:
    key, published = envfile.seal(SNAPSHOT)
    snapshot = envfile.parse(envfile.dumps(SNAPSHOT, published, key), "env.json")
    assert snapshot.env_key == key and envfile.verify(snapshot)
    tampered = snapshot._replace(env=(("DATA_ROOT", "/elsewhere"), *snapshot.env[1:]))
    assert not envfile.verify(tampered)
    # A file of an older version (no key) still parses; it just cannot be verified.
    old = envfile.parse(envfile.dumps(SNAPSHOT, "sha256:x"), "env.json")
    assert old.env_key == "" and not envfile.verify(old)


def test_secret_keys_are_one_to_one() -> None:
    names = ["API_TOKEN", "A:", "A_x3a_", "a.b", "x_x", "_x", "é", "A_", "_"]
    keys = [secret_key_for(n) for n in names]
    assert len(set(keys)) == len(names), keys
    assert secret_key_for("API_TOKEN") == "API_TOKEN"
    assert all(all(c.isalnum() or c in "-._" for c in k) for k in keys)


# -- the operator waits for the client; hashes come from the Secret --------------------------


def client_job(awaiting: bool, uid: str = "uid-1") -> tuple[dict[str, Any], str]:
    job = build_job("loader.py", 2, SNAPSHOT, name="demo", namespace="ml")
    manifest = job.to_manifest()
    secret = manifest["metadata"]["annotations"][AWAITING_VALUES_ANNOTATION]
    if not awaiting:
        del manifest["metadata"]["annotations"]
    manifest["metadata"].update(
        uid=uid, resourceVersion="10", generation=1, creationTimestamp="2026-03-01T12:00:00Z"
    )
    return manifest, secret


def values_secret(name: str) -> dict[str, Any]:
    data = {secret_key_for(n): base64.b64encode(v.encode()).decode() for n, v in SNAPSHOT}
    return {"metadata": {"name": name, "ownerReferences": [{"uid": "uid-1"}]}, "data": data}


def test_operator_reads_nothing_and_starts_nothing_while_awaiting_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = FakeKubeApi()
    ctl = Controller(api, Metrics())
    body, secret = client_job(awaiting=True)
    again = ctl.reconcile(("ml", "demo"), body, [])
    # A fresh job's first status waits a moment for the release (usually milliseconds away).
    assert api.statuses == [] and again is not None
    assert 0 < again <= controller.AWAITING_STATUS_DELAY
    monkeypatch.setattr(controller, "AWAITING_STATUS_DELAY", 0.0)  # still waiting after it
    ctl.reconcile(("ml", "demo"), body, [])
    assert api.calls == [("patch", "executejobs/status")], "no Secret read, nothing created"
    assert api.pods == {}
    (cond,) = [c for c in api.statuses[-1]["conditions"] if c["type"] == "EnvResolved"]
    assert cond["status"] == "False" and cond["reason"] == "AwaitingValues"
    assert secret in cond["message"] and "delete this job" in cond["message"]
    # Released, with the Secret complete: resolved, written, pods annotated with its hash.
    api.secrets[secret] = values_secret(secret)
    released = json.loads(json.dumps(body))
    del released["metadata"]["annotations"]  # the client's release
    released["metadata"]["resourceVersion"] = "11"
    ctl.reconcile(("ml", "demo"), released, [])
    env = api.secrets["demo-env"]
    published = env["metadata"]["annotations"][names.ENV_HASH_ANNOTATION]
    content = envfile.parse(base64.b64decode(env["data"]["env.json"]).decode(), "env.json")
    assert content.env == tuple(SNAPSHOT) and envfile.verify(content)
    assert content.env_hash == published
    assert sorted(api.pods) == ["demo-worker-0", "demo-worker-1"]
    for pod in api.pods.values():
        assert pod["metadata"]["annotations"][names.ENV_HASH_ANNOTATION] == published
    assert api.statuses[-1]["envHash"] == published
    for status in api.statuses:
        for _, value in SNAPSHOT:
            assert f'"{value}"' not in json.dumps(status)


def test_a_restarted_operator_publishes_the_hash_of_the_secret_it_finds() -> None:
    api = FakeKubeApi()
    body, secret = client_job(awaiting=False)
    api.secrets[secret] = values_secret(secret)
    Controller(api, Metrics()).reconcile(("ml", "demo"), body, [])
    first = api.secrets["demo-env"]["metadata"]["annotations"][names.ENV_HASH_ANNOTATION]
    api.pods.clear()  # a new operator process, pods to create again; the Secret exists (409)
    body["metadata"]["resourceVersion"] = str(api.job_versions["demo"])  # as its watch shows
    Controller(api, Metrics()).reconcile(("ml", "demo"), body, [])
    assert {p["metadata"]["annotations"][names.ENV_HASH_ANNOTATION] for p in api.pods.values()} == {
        first
    }


# -- the client: order, ownership, errors ------------------------------------------------------


class Recorder:
    """Stands in for the two API classes the client calls; records each call in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.kwargs: list[dict[str, Any]] = []
        self.fail: dict[str, BaseException] = {}
        self.deleted: list[Any] = []
        for cls, method, tag in [
            (client.CustomObjectsApi, "create_namespaced_custom_object", "create-job"),
            (client.CustomObjectsApi, "patch_namespaced_custom_object", "release"),
            (client.CustomObjectsApi, "delete_namespaced_custom_object", "delete-job"),
            (client.CoreV1Api, "create_namespaced_secret", "create-secret"),
        ]:
            monkeypatch.setattr(cls, method, self._method(tag))

    def _method(self, tag: str) -> Any:
        def call(_self: Any, *args: Any, **kwargs: Any) -> Any:
            self.calls.append((tag, copy.deepcopy(args)))  # as sent, not as changed later
            self.kwargs.append(kwargs)
            if tag in self.fail:
                raise self.fail[tag]
            if tag == "create-job":
                body = json.loads(json.dumps(args[4]))
                body["metadata"]["uid"] = "uid-123"
                return _Response(body)
            return _Response({})

        return call

    def tags(self) -> list[str]:
        return [tag for tag, _ in self.calls]


class _Response:
    """What the client uses of urllib3's response to a ``_preload_content=False`` call."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.data = json.dumps(body).encode()

    def drain_conn(self) -> None:
        """No connection to give back."""

    def release_conn(self) -> None:
        """No connection to give back."""


def submit(**kw: Any) -> KubernetesJob:
    job = build_job("loader.py", 2, SNAPSHOT, name="demo", namespace="ml")
    return KubernetesJob.create(job, SNAPSHOT, api_client=client.ApiClient(), **kw)


def test_job_first_then_its_owned_secret_then_the_release(monkeypatch: pytest.MonkeyPatch) -> None:
    api = Recorder(monkeypatch)
    submit()
    assert api.tags() == ["create-job", "create-secret", "release"]
    job = api.calls[0][1][4]
    secret_name = job["metadata"]["annotations"][AWAITING_VALUES_ANNOTATION]
    for _, value in SNAPSHOT:
        assert f'"{value}"' not in json.dumps(job), "no value in the ExecuteJob"
    secret: client.V1Secret = api.calls[1][1][1]
    assert secret.metadata.name == secret_name and secret.immutable is True
    (owner,) = secret.metadata.owner_references  # owned from its very creation
    assert (owner.kind, owner.name, owner.uid) == ("ExecuteJob", "demo", "uid-123")
    assert {k: base64.b64decode(v).decode() for k, v in secret.data.items()} == dict(SNAPSHOT)
    patch = api.calls[2][1][5]
    assert patch == {"metadata": {"annotations": {AWAITING_VALUES_ANNOTATION: None}}}


@pytest.mark.parametrize("step", ["create-secret", "release"])
@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (client.ApiException(status=403, reason="Forbidden"), KubernetesError),
        (urllib3.exceptions.MaxRetryError(None, "/", "refused"), KubernetesError),
        (KeyboardInterrupt(), KeyboardInterrupt),
    ],
)
def test_a_failure_after_the_job_exists_deletes_the_job(
    monkeypatch: pytest.MonkeyPatch, step: str, error: BaseException, expected: type
) -> None:
    api = Recorder(monkeypatch)
    api.fail[step] = error
    with pytest.raises(expected) as caught:
        submit()
    assert api.tags()[-1] == "delete-job", api.tags()
    options: client.V1DeleteOptions = api.kwargs[-1]["body"]
    assert options.preconditions.uid == "uid-123"  # only the job this call created
    assert options.propagation_policy == "Background"
    if expected is KubernetesError:
        text = str(caught.value)
        assert "demo" in text and "The job was deleted" in text
        if isinstance(error, client.ApiException):
            assert "edit" in text  # the fix: the role that grants it
        assert not isinstance(caught.value.__cause__, client.ApiException)


def test_a_refused_job_creates_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    api = Recorder(monkeypatch)
    api.fail["create-job"] = client.ApiException(status=403, reason="Forbidden")
    with pytest.raises(KubernetesError, match="create executejobs") as caught:
        submit()
    assert api.tags() == ["create-job"]
    assert "edit" in str(caught.value)
    api.fail["create-job"] = urllib3.exceptions.MaxRetryError(None, "/", "refused")
    with pytest.raises(KubernetesError, match="could not be reached"):
        submit()


def test_when_even_the_clean_up_fails_the_error_says_what_to_delete(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = Recorder(monkeypatch)
    api.fail["create-secret"] = client.ApiException(status=500, reason="Internal")
    api.fail["delete-job"] = urllib3.exceptions.MaxRetryError(None, "/", "refused")
    with pytest.raises(KubernetesError) as caught:
        submit()
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert "kubectl delete executejob -n ml demo" in notes


# -- the client: a job's code (issue 23) -------------------------------------------------------

CODE_SENTINEL = b"code-sentinel-5e1f0a"


def two_chunk_bundle() -> Any:
    """A bundle of 2 chunks: random bytes do not compress (600 KiB > one 512 KiB chunk)."""
    from cerebras_appliance.contract import bundle

    noise = os.urandom(600 * 1024)
    made = bundle.pack(
        None, files={"noise.bin": noise, "user.py": b"print('%s')\n" % CODE_SENTINEL}
    )
    assert len(bundle.split(made.data)) == 2
    return made


def test_code_goes_to_owned_immutable_secrets_in_order_before_the_release(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cerebras_appliance.contract import bundle

    code = two_chunk_bundle()
    api = Recorder(monkeypatch)
    submit(code=code)
    assert api.tags() == [
        "create-job",
        "create-secret",
        "create-secret",
        "create-secret",
        "release",
    ]
    job = api.calls[0][1][4]
    assert job["spec"]["code"] == {"sha256": code.sha256, "chunks": 2, "size": len(code.data)}
    assert CODE_SENTINEL.decode() not in json.dumps(job)
    values_secret: client.V1Secret = api.calls[1][1][1]
    assert values_secret.metadata.name == job["metadata"]["annotations"][AWAITING_VALUES_ANNOTATION]
    chunks = []
    for index, (_, args) in enumerate(api.calls[2:4]):
        secret: client.V1Secret = args[1]
        assert secret.metadata.name == f"demo-code-{index}"
        assert secret.immutable is True and secret.type == "Opaque"
        assert secret.metadata.labels == values_secret.metadata.labels
        (owner,) = secret.metadata.owner_references  # owned from its very creation
        assert (owner.kind, owner.name, owner.uid) == ("ExecuteJob", "demo", "uid-123")
        assert list(secret.data) == [f"chunk-{index:03d}"]
        chunks.append(base64.b64decode(secret.data[f"chunk-{index:03d}"]))
    assert bundle.join(chunks) == code.data
    assert bundle.digest(bundle.join(chunks)) == job["spec"]["code"]["sha256"]


def test_a_job_with_code_and_no_values_waits_for_its_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a values Secret the job is annotated all the same: its workers never start
    before all of its code is written."""
    code = two_chunk_bundle()
    api = Recorder(monkeypatch)
    job = build_job("loader.py", 1, [], name="demo", namespace="ml")
    KubernetesJob.create(job, [], api_client=client.ApiClient(), code=code)
    assert api.tags() == ["create-job", "create-secret", "create-secret", "release"]
    created = api.calls[0][1][4]
    assert created["metadata"]["annotations"][AWAITING_VALUES_ANNOTATION] == "demo-code-0"
    assert [args[1].metadata.name for _, args in api.calls[1:3]] == ["demo-code-0", "demo-code-1"]


@pytest.mark.parametrize(
    "error",
    [
        client.ApiException(status=403, reason="Forbidden"),
        client.ApiException(status=409, reason="Conflict"),
        KeyboardInterrupt(),
    ],
)
def test_a_code_secret_that_fails_deletes_the_job(
    monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    api = Recorder(monkeypatch)
    original = api._method("create-secret")
    count = {"n": 0}

    def second_chunk_fails(_self: Any, *args: Any, **kwargs: Any) -> Any:
        count["n"] += 1
        if count["n"] == 3:  # the values, the first chunk, then this one
            api.calls.append(("create-secret", copy.deepcopy(args)))
            raise error
        return original(_self, *args, **kwargs)

    monkeypatch.setattr(client.CoreV1Api, "create_namespaced_secret", second_chunk_fails)
    with pytest.raises((KubernetesError, KeyboardInterrupt)) as caught:
        submit(code=two_chunk_bundle())
    assert api.tags()[-1] == "delete-job" and "release" not in api.tags()
    if isinstance(caught.value, KubernetesError):
        text = str(caught.value)
        assert "demo-code-1" in text and "The job was deleted" in text
        assert CODE_SENTINEL.decode() not in text


def test_a_job_describing_another_bundle_creates_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    code = two_chunk_bundle()
    api = Recorder(monkeypatch)
    job = build_job("loader.py", 1, SNAPSHOT, name="demo", namespace="ml")
    job.spec.code = CodeBundle(sha256="sha256:" + "0" * 64, chunks=2, size=len(code.data))
    with pytest.raises(ValueError, match=r"spec\.code does not describe"):
        KubernetesJob.create(job, SNAPSHOT, api_client=client.ApiClient(), code=code)
    assert api.tags() == []


# -- the local backend's job directories -------------------------------------------------------


@pytest.fixture
def shm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    base = tmp_path / "shm"
    base.mkdir()
    monkeypatch.setattr(state, "MEMORY_DIRS", (str(base),))
    return base


def test_job_directories_are_private_and_memory_backed_first(shm: Path) -> None:
    root = state.state_root()
    assert root == shm / f"appliance-{os.getuid()}"
    assert root is not None and root.stat().st_mode & 0o777 == 0o700


def test_memory_backed_location_is_the_default() -> None:
    assert state.MEMORY_DIRS == ("/dev/shm",)
    root = state.state_root()
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        assert root is not None and root.parent == Path("/dev/shm")


def test_a_planted_symlink_or_open_directory_is_not_used(shm: Path, tmp_path: Path) -> None:
    (shm / f"appliance-{os.getuid()}").symlink_to(tmp_path)
    assert state.state_root() != shm / f"appliance-{os.getuid()}"
    (shm / f"appliance-{os.getuid()}").unlink()
    (shm / f"appliance-{os.getuid()}").mkdir(mode=0o755)
    (shm / f"appliance-{os.getuid()}").chmod(0o755)
    assert state.state_root() != shm / f"appliance-{os.getuid()}"


def test_stale_directories_are_swept_live_ones_kept(shm: Path) -> None:
    root = state.state_root()
    assert root is not None
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    cases = {
        "dead-owner": f"{dead.pid} {state.process_start_time(os.getpid())}",
        "reused-pid": f"{os.getpid()} 1",  # our pid, but another process's start time
        "garbled": "not a pid",
        "garbled-fresh": "",  # as another process's half-written file would read
        "live": f"{os.getpid()} {state.process_start_time(os.getpid())}",
    }
    for name, owner in cases.items():
        (root / name).mkdir()
        (root / name / "env.json").write_text("{}")
        (root / name / state.OWNER_FILE).write_text(owner)
    (root / "being-created").mkdir()  # no owner file yet, fresh
    (root / "abandoned").mkdir()
    old = time.time() - 3600
    for name in ("abandoned", "garbled"):
        os.utime(root / name, (old, old))
    removed = {p.name for p in state.sweep_stale(root)}
    assert removed == {"dead-owner", "reused-pid", "garbled", "abandoned"}
    assert sorted(p.name for p in root.iterdir()) == ["being-created", "garbled-fresh", "live"]


def test_env_file_of_a_sigkilled_caller_is_removed_by_the_next_start(
    shm: Path, tmp_path: Path
) -> None:
    script = tmp_path / "caller.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, signal
            from cerebras_appliance.backends.local import state
            state.MEMORY_DIRS = ({str(shm)!r},)
            import cerebras_appliance as app
            from cerebras_appliance.environment import appliance_environ
            appliance_environ["API_TOKEN"] = "t0ps3cret"
            job = app.submit({str(tmp_path / "noop.py")!r})
            job.wait(timeout=60)
            print(job.env_file, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)  # no atexit, no clean-up
            """
        )
    )
    (tmp_path / "noop.py").write_text("pass\n")
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    env_file = Path(proc.stdout.strip())
    assert env_file.is_relative_to(shm) and "t0ps3cret" in env_file.read_text()
    job = local.LocalJob(build_job("noop.py", 1, [], name="next"), [], workdir=tmp_path)
    try:
        assert not env_file.parent.exists(), "the dead caller's job directory was swept"
        assert job.directory.parent == env_file.parent.parent
    finally:
        job.delete()
    assert not job.directory.exists()


def test_the_operator_cache_keeps_the_awaiting_annotation_only() -> None:
    import kopf

    from appliance_operator.handlers import execute_jobs

    body, secret = client_job(awaiting=True)
    body["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] = "{}"
    ((_, record),) = execute_jobs(kopf.Body(body), namespace="ml", name="demo").items()
    assert record["metadata"]["annotations"] == {AWAITING_VALUES_ANNOTATION: secret}
    released, _ = client_job(awaiting=False)
    ((_, record),) = execute_jobs(kopf.Body(released), namespace="ml", name="demo").items()
    assert "annotations" not in record["metadata"]
