"""desired.py: the env Secret and the worker pods of a job, and env resolution (pure)."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

import pytest

from appliance_operator import desired
from appliance_operator.desired import EnvResolutionError, WorkerId, resolve_env
from cerebras_appliance.contract import envfile, names
from cerebras_appliance.contract.api import ExecuteJob, parse_job

UID = "0b9a8c1e-0000-4000-8000-000000000001"
HASH = "hmac-sha256:0000000000000000000000000000000000000000000000000000000000000000"
SENTINEL = "sentinel-value-7f3a9c"
SECRET_SENTINEL = "secret-sentinel-41d2e8"


def make_job(**spec: Any) -> ExecuteJob:
    base: dict[str, Any] = {
        "replicas": 2,
        "image": "registry.example/loader:1",
        "entrypoint": "my_pkg.loader:main",
        "args": ["--shards", "2"],
        "env": [
            {"name": "DATA_ROOT", "value": SENTINEL},
            {"name": "API_TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "tok"}}},
        ],
    }
    base.update(spec)
    return parse_job({"metadata": {"name": "demo", "namespace": "ml"}, "spec": base})


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_names() -> None:
    assert desired.pod_name("demo", 3) == "demo-worker-3"
    assert desired.pod_name("demo", 3, 2) == "demo-worker-3-2"
    assert desired.env_secret_name("demo") == "demo-env"


def test_worker_pod_shape() -> None:
    job = make_job()
    pod = desired.worker_pod(job, UID, WorkerId(1), HASH)
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["name"] == "demo-worker-1" and meta["namespace"] == "ml"
    assert meta["labels"] == {
        "app.kubernetes.io/managed-by": "appliance-operator",
        "appliance.dev/job-name": "demo",
        "appliance.dev/worker-index": "1",
        "appliance.dev/attempt": "0",
    }
    assert meta["annotations"] == {"appliance.dev/env-hash": HASH}
    (owner,) = meta["ownerReferences"]
    assert owner == {
        "apiVersion": "appliance.dev/v1alpha1",
        "kind": "ExecuteJob",
        "name": "demo",
        "uid": UID,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    (container,) = spec["containers"]
    assert container["command"] == [
        "python3",
        "-m",
        "cerebras_appliance.worker",
        "my_pkg.loader:main",
        "--shards",
        "2",
    ]
    assert container["imagePullPolicy"] == "IfNotPresent"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env[names.ENV_FILE_VAR] == "/var/run/appliance/env/env.json"
    assert env[names.READY_FILE_VAR] == "/var/run/appliance/state/ready"
    assert env["APPLIANCE_WORKER_NAME"] == "demo-worker-1"
    assert container["startupProbe"]["exec"]["command"] == ["cat", env[names.READY_FILE_VAR]]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/var/run/appliance/env"]["readOnly"] is True
    assert "/var/run/appliance/state" in mounts
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts["/var/run/appliance/env"]["name"]]["secret"]["secretName"] == "demo-env"
    assert "emptyDir" in volumes[mounts["/var/run/appliance/state"]["name"]]
    for absent in ("nodeSelector", "tolerations", "affinity", "serviceAccountName"):
        assert absent not in spec


def test_replacement_pod_name_and_attempt_label() -> None:
    pod = desired.worker_pod(make_job(), UID, WorkerId(0, 2), HASH)
    assert pod["metadata"]["name"] == "demo-worker-0-2"
    assert pod["metadata"]["labels"]["appliance.dev/attempt"] == "2"
    assert pod["metadata"]["labels"]["appliance.dev/worker-index"] == "0"


def test_env_values_never_appear_in_a_pod() -> None:
    pod = desired.worker_pod(make_job(), UID, WorkerId(0), HASH)
    text = json.dumps(pod)
    assert SENTINEL not in text
    assert "DATA_ROOT" not in text and "API_TOKEN" not in text  # not even the names
    names = [e["name"] for e in pod["spec"]["containers"][0]["env"]]
    assert all(n.startswith("APPLIANCE_") or n == "PYTHONUNBUFFERED" for n in names)


def test_template_overrides_are_merged() -> None:
    template = {
        # The operator's own keys are refused in a template (issue 21, defect 8); that a forged
        # one never reaches a pod is tests/unit/contract/test_api.py's.
        "labels": {"team": "ml"},
        "annotations": {"note": "x"},
        "resources": {"limits": {"cpu": "2"}},
        "nodeSelector": {"type": "kwok"},
        "tolerations": [{"key": "k", "operator": "Exists"}],
        "affinity": {"nodeAffinity": {}},
        "volumes": [{"name": "data", "emptyDir": {}}],
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        "serviceAccountName": "loader",
        "securityContext": {"runAsNonRoot": True},
        "podSecurityContext": {"fsGroup": 1000},
        "priorityClassName": "high",
        "imagePullPolicy": "Always",
        "imagePullSecrets": [{"name": "pull"}],
    }
    pod = desired.worker_pod(make_job(template=template), UID, WorkerId(0), HASH)
    meta, spec = pod["metadata"], pod["spec"]
    (container,) = spec["containers"]
    assert meta["labels"]["team"] == "ml"
    assert meta["labels"]["appliance.dev/job-name"] == "demo"
    assert meta["annotations"]["note"] == "x"
    assert container["resources"] == {"limits": {"cpu": "2"}}
    assert container["securityContext"] == {"runAsNonRoot": True}
    assert container["imagePullPolicy"] == "Always"
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    assert len(container["volumeMounts"]) == 3
    assert spec["nodeSelector"] == {"type": "kwok"}
    assert spec["tolerations"] == [{"key": "k", "operator": "Exists"}]
    assert spec["affinity"] == {"nodeAffinity": {}}
    assert {"name": "data", "emptyDir": {}} in spec["volumes"]
    assert spec["serviceAccountName"] == "loader"
    assert spec["automountServiceAccountToken"] is False  # still no token
    assert spec["securityContext"] == {"fsGroup": 1000}
    assert spec["priorityClassName"] == "high"
    assert spec["imagePullSecrets"] == [{"name": "pull"}]


def test_env_secret_holds_the_resolved_snapshot() -> None:
    job = make_job()
    pairs = [("DATA_ROOT", SENTINEL), ("API_TOKEN", SECRET_SENTINEL)]
    key, env_hash = envfile.seal(pairs)
    secret = desired.env_secret(job, UID, pairs, key, env_hash)
    assert secret["metadata"]["name"] == "demo-env"
    assert secret["metadata"]["labels"]["appliance.dev/job-name"] == "demo"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == UID
    assert secret["immutable"] is True
    content = base64.b64decode(secret["data"][names.SNAPSHOT_KEY]).decode()
    snapshot = envfile.parse(content, "env.json")
    assert snapshot.env == tuple(pairs)
    assert (
        snapshot.env_hash == env_hash == secret["metadata"]["annotations"]["appliance.dev/env-hash"]
    )
    assert snapshot.env_key == key and envfile.verify(snapshot)


class Reader:
    def __init__(self, secrets: Mapping[str, Mapping[str, str] | None]) -> None:
        self.secrets = secrets
        self.reads: list[str] = []

    def __call__(self, name: str) -> Mapping[str, str] | None:
        self.reads.append(name)
        return self.secrets.get(name)


def test_resolve_env_reads_each_secret_once() -> None:
    env = make_job(
        env=[
            {"name": "A", "value": "1"},
            {"name": "B", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "b"}}},
            {"name": "C", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "c"}}},
        ]
    ).spec.env
    reader = Reader({"creds": {"b": b64("bee"), "c": b64("sea=é")}})
    assert resolve_env(env, reader) == [("A", "1"), ("B", "bee"), ("C", "sea=é")]
    assert reader.reads == ["creds"]


def test_missing_secret_names_variable_and_secret_not_value() -> None:
    env = make_job().spec.env
    with pytest.raises(EnvResolutionError) as err:
        resolve_env(env, Reader({}))
    assert err.value.reason == "SecretNotFound"
    message = str(err.value)
    assert "spec.env[1] (API_TOKEN)" in message and "'creds'" in message
    assert "create it" in message
    assert SENTINEL not in message


def test_missing_key_and_bad_value() -> None:
    env = make_job().spec.env
    with pytest.raises(EnvResolutionError) as err:
        resolve_env(env, Reader({"creds": {"other": b64("x")}}))
    assert err.value.reason == "SecretKeyNotFound"
    assert "no key 'tok'" in str(err.value)
    with pytest.raises(EnvResolutionError) as err:
        resolve_env(env, Reader({"creds": {"tok": base64.b64encode(b"\xff\xfe").decode()}}))
    assert err.value.reason == "SecretValueInvalid"
    with pytest.raises(EnvResolutionError):
        resolve_env(env, Reader({"creds": {"tok": b64("a\x00b")}}))


def test_worker_container_is_hardened_by_default() -> None:
    (container,) = desired.worker_pod(make_job(), UID, WorkerId(0), HASH)["spec"]["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container["securityContext"]["capabilities"]["drop"].append("X")  # a copy, not the default
    (again,) = desired.worker_pod(make_job(), UID, WorkerId(1), HASH)["spec"]["containers"]
    assert again["securityContext"]["capabilities"] == {"drop": ["ALL"]}


# -- a job's code (issue 23) -----------------------------------------------------------------

CODE_HASH = "sha256:" + "c0de" * 16


def test_a_job_with_code_mounts_its_secrets_projected_read_only_and_names_them() -> None:
    job = make_job(code={"sha256": CODE_HASH, "chunks": 3, "size": 2 * 524288 + 1})
    pod = desired.worker_pod(job, UID, WorkerId(0), HASH)
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env[names.CODE_DIR_VAR] == names.CODE_DIR == "/var/run/appliance/code"
    assert env[names.CODE_SHA256_VAR] == CODE_HASH
    assert env[names.STATE_DIR_VAR] == names.STATE_DIR  # where the worker unpacks it
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[names.CODE_DIR] == {
        "name": desired.CODE_VOLUME,
        "mountPath": names.CODE_DIR,
        "readOnly": True,
    }
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    projected = volumes[desired.CODE_VOLUME]["projected"]
    assert projected["defaultMode"] == 0o444
    assert projected["sources"] == [
        {
            "secret": {
                "name": f"demo-code-{i}",
                "items": [{"key": f"chunk-00{i}", "path": f"chunk-00{i}"}],
            }
        }
        for i in range(3)
    ]
    assert all("optional" not in s["secret"] for s in projected["sources"])  # a missing one shows
    # The unpacked code goes to the memory-backed state volume, sized for the largest bundle.
    state = volumes[mounts[names.STATE_DIR]["name"]]["emptyDir"]
    assert (
        state
        == {"medium": "Memory", "sizeLimit": desired.CODE_STATE_SIZE}
        == {
            "medium": "Memory",
            "sizeLimit": "128Mi",
        }
    )


def test_a_job_without_code_has_no_code_volume_and_a_small_state_volume() -> None:
    pod = desired.worker_pod(make_job(), UID, WorkerId(0), HASH)
    (container,) = pod["spec"]["containers"]
    assert not {names.CODE_DIR_VAR, names.CODE_SHA256_VAR, names.STATE_DIR_VAR} & {
        e["name"] for e in container["env"]
    }
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert desired.CODE_VOLUME not in volumes
    assert volumes[desired.STATE_VOLUME]["emptyDir"]["sizeLimit"] == "1Mi"


def test_no_byte_of_the_code_is_in_a_pod_only_its_hash_and_secret_names() -> None:
    from cerebras_appliance.contract import bundle

    sentinel = b"code-sentinel-9a7c3d"
    made = bundle.pack(None, files={"user.py": b"print('%s')\n" % sentinel * 50})
    spec = {"sha256": made.sha256, "chunks": 1, "size": len(made.data)}
    pod = desired.worker_pod(make_job(code=spec), UID, WorkerId(0), HASH)
    text = json.dumps(pod)
    assert made.sha256 in text
    assert sentinel.decode() not in text
    assert base64.b64encode(made.data).decode()[:40] not in text
    assert made.data[:64].hex() not in text


def test_a_template_volume_still_comes_after_the_code_volume() -> None:
    job = make_job(
        code={"sha256": CODE_HASH, "chunks": 1, "size": 10},
        template={"volumes": [{"name": "data", "emptyDir": {}}]},
    )
    pod = desired.worker_pod(job, UID, WorkerId(0), HASH)
    assert [v["name"] for v in pod["spec"]["volumes"]] == [
        desired.ENV_VOLUME,
        desired.STATE_VOLUME,
        desired.CODE_VOLUME,
        "data",
    ]
