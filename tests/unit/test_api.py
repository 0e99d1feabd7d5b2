"""The ExecuteJob models: manifests, env hashes and the validation the CRD mirrors."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from cerebras_appliance.api import (
    EnvVar,
    ExecuteJob,
    InvalidJobError,
    env_from_snapshot,
    env_hash,
    parse_job,
)
from cerebras_appliance.jobs import build_job

VALID: dict[str, Any] = {
    "apiVersion": "appliance.dev/v1alpha1",
    "kind": "ExecuteJob",
    "metadata": {"name": "demo", "namespace": "ml"},
    "spec": {
        "replicas": 2,
        "image": "registry.example/loader:1",
        "entrypoint": "my_pkg.loader:main",
        "args": ["--shard-count", "2"],
        "env": [
            {"name": "DATA_ROOT", "value": "/mnt/data"},
            {
                "name": "API_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": "demo-secrets", "key": "token"}},
            },
        ],
        "backoffLimit": 1,
        "activeDeadlineSeconds": 600,
        "ttlSecondsAfterFinished": 60,
        "suspend": False,
    },
}


def test_design_example_round_trips_through_to_manifest() -> None:
    job = parse_job(VALID)
    manifest = job.to_manifest()
    assert manifest == VALID
    assert parse_job(manifest) == job


def test_defaults_are_filled_and_manifest_is_minimal() -> None:
    job = parse_job(
        {
            "metadata": {"name": "x"},
            "spec": {"image": "i", "entrypoint": "loader.py"},
        }
    )
    assert job.spec.replicas == 1 and job.spec.backoff_limit == 0 and not job.spec.suspend
    manifest = job.to_manifest()
    assert manifest["apiVersion"] == "appliance.dev/v1alpha1" and manifest["kind"] == "ExecuteJob"
    assert "activeDeadlineSeconds" not in manifest["spec"]
    assert "template" not in manifest["spec"]


def mutate(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(VALID)
    target = doc
    parts = path.split(".")
    for part in parts[:-1]:
        target = target[int(part)] if part.isdigit() else target[part]
    last = parts[-1]
    if value is KeyError:
        del target[last]
    elif last.isdigit():
        target[int(last)] = value
    else:
        target[last] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("spec.replicas", 0, "spec.replicas: Input should be greater than or equal to 1"),
        ("spec.replicas", 100000, "spec.replicas: Input should be less than or equal to 1000"),
        ("spec.image", KeyError, "spec.image: Field required"),
        ("spec.image", "", "spec.image: String should have at least 1 character"),
        ("spec.entrypoint", KeyError, "spec.entrypoint: Field required"),
        ("spec.entrypoint", "main", "spec.entrypoint: 'main' is neither"),
        ("spec.env.0", {"name": "A"}, "spec.env[0]: variable 'A' must set exactly one"),
        (
            "spec.env.0",
            {"name": "A", "value": "1", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            "spec.env[0]: variable 'A' must set exactly one",
        ),
        ("spec.env.0", {"name": "A=B", "value": "1"}, "spec.env[0].name: String should match"),
        ("spec.env.0", {"name": "", "value": "1"}, "spec.env[0].name: String should have at least"),
        ("spec.env.1", {"name": "DATA_ROOT", "value": "2"}, "spec.env: duplicate variable name"),
        ("spec.backoffLimit", -1, "spec.backoffLimit: Input should be greater than or equal to 0"),
        ("spec.activeDeadlineSeconds", 0, "spec.activeDeadlineSeconds: Input should be greater"),
        ("spec.unknownField", 1, "spec.unknownField: Extra inputs are not permitted"),
        ("metadata.name", "Not_A_Name", "metadata.name: 'Not_A_Name' is not a valid job name"),
        (
            "spec.env.1",
            {"name": "T", "valueFrom": {"secretKeyRef": {"name": "Bad Name", "key": "k"}}},
            "spec.env[1].valueFrom.secretKeyRef.name: String should match",
        ),
    ],
)
def test_invalid_jobs_name_the_field(path: str, value: Any, message: str) -> None:
    with pytest.raises(InvalidJobError) as caught:
        parse_job(mutate(path, value))
    assert any(line.startswith(message) for line in caught.value.errors), caught.value.errors


def test_env_hash_is_stable_and_sensitive_to_names_values_and_order() -> None:
    a = [EnvVar(name="A", value="1"), EnvVar(name="B", value="2")]
    same = [EnvVar(name="A", value="1"), EnvVar(name="B", value="2")]
    assert env_hash(a) == env_hash(same)
    assert env_hash(a) != env_hash(list(reversed(a)))
    assert env_hash(a) != env_hash([EnvVar(name="A", value="1"), EnvVar(name="B", value="3")])
    assert env_hash([]) != env_hash(a)
    # pinned: the hash is part of the API (workers confirm it); changing it is a breaking change
    assert env_hash([EnvVar(name="foo", value="1")]) == (
        "sha256:" + __import__("hashlib").sha256(b'[{"name":"foo","value":"1"}]').hexdigest()
    )


def test_snapshot_keeps_order_and_sensitive_values_stay_out_of_the_manifest() -> None:
    job = build_job(
        "loader.py",
        2,
        [("Z", "1"), ("API_TOKEN", "s3cret"), ("A", "2")],
        name="j1",
        sensitive=["API_TOKEN"],
    )
    env = job.to_manifest()["spec"]["env"]
    assert [item["name"] for item in env] == ["Z", "API_TOKEN", "A"]
    assert env[1] == {
        "name": "API_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "j1-sensitive", "key": "API_TOKEN"}},
    }
    assert "s3cret" not in repr(job.to_manifest())


def test_env_from_snapshot_plain() -> None:
    assert env_from_snapshot([("A", "1")]) == [EnvVar(name="A", value="1")]


def test_generated_names_are_valid_and_distinct() -> None:
    a = build_job("loader.py", 1, [])
    b = build_job("loader.py", 1, [])
    assert a.metadata.name != b.metadata.name
    assert isinstance(ExecuteJob.model_validate(a.to_manifest()), ExecuteJob)
