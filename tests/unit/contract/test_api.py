"""The ExecuteJob models: manifests, env hashes and the validation the CRD mirrors."""

from __future__ import annotations

import copy
import typing
from typing import Any

import generated_input  # tests/data, on pytest's pythonpath
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cerebras_appliance.contract import names
from cerebras_appliance.contract.api import (
    NUL_MESSAGE,
    EnvVar,
    ExecuteJob,
    InvalidJobError,
    WorkerPool,
    WorkerTemplate,
    env_from_snapshot,
    parse_job,
    parse_pool,
    reserved_key,
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


def test_both_kinds_carry_the_api_version_of_the_contract_names() -> None:
    """``api_version`` is a Literal (a type), ``names.API_VERSION`` the string everyone else
    uses: they must not drift apart."""
    assert typing.get_args(ExecuteJob.model_fields["api_version"].annotation) == (
        names.API_VERSION,
    )
    assert typing.get_args(WorkerPool.model_fields["api_version"].annotation) == (
        names.API_VERSION,
    )
    assert ExecuteJob.model_fields["api_version"].default == names.API_VERSION


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


def test_every_value_goes_by_reference_to_one_values_secret() -> None:
    job = build_job(
        "loader.py",
        2,
        [("Z", "1"), ("API_TOKEN", "s3cret"), ("A", "2")],
        name="j1",
        sensitive=["API_TOKEN"],
    )
    manifest = job.to_manifest()
    env = manifest["spec"]["env"]
    assert [item["name"] for item in env] == ["Z", "API_TOKEN", "A"]
    secret = manifest["metadata"]["annotations"]["appliance.dev/awaiting-values"]
    assert secret.startswith("j1-values-") and len(secret) == len("j1-values-") + 8
    assert [item["valueFrom"]["secretKeyRef"] for item in env] == [
        {"name": secret, "key": "Z"},
        {"name": secret, "key": "API_TOKEN"},
        {"name": secret, "key": "A"},
    ]
    assert all("value" not in item for item in env)
    for value in ("s3cret", "1", "2"):
        assert f"'{value}'" not in repr(manifest)
    # A new job of the same name gets a new Secret name: never a leftover's.
    again = build_job("loader.py", 1, [("Z", "1")], name="j1")
    assert again.metadata.annotations["appliance.dev/awaiting-values"] != secret


def test_inline_jobs_for_hand_written_manifests() -> None:
    job = build_job(
        "loader.py", 1, [("Z", "1"), ("API_TOKEN", "s3cret")], name="j2", inline=True,
        sensitive=["API_TOKEN"],
    )  # fmt: skip
    env = job.to_manifest()["spec"]["env"]
    assert env[0] == {"name": "Z", "value": "1"}
    assert env[1]["valueFrom"]["secretKeyRef"]["key"] == "API_TOKEN"
    plain = build_job("loader.py", 1, [("Z", "1")], name="j3", inline=True)
    assert "annotations" not in plain.to_manifest()["metadata"]  # nothing to wait for


def test_env_from_snapshot_plain() -> None:
    assert env_from_snapshot([("A", "1")]) == [EnvVar(name="A", value="1")]


def test_generated_names_are_valid_and_distinct() -> None:
    a = build_job("loader.py", 1, [])
    b = build_job("loader.py", 1, [])
    assert a.metadata.name != b.metadata.name
    assert isinstance(ExecuteJob.model_validate(a.to_manifest()), ExecuteJob)


# -- issue 21: the operator's own keys, NUL, and what the API server takes for a number -------

RESERVED = ["appliance.dev/job-name", "appliance.dev/pool-state", "app.kubernetes.io/managed-by"]


@pytest.mark.parametrize("key", RESERVED)
@pytest.mark.parametrize("part", ["labels", "annotations"])
def test_a_pool_template_may_not_use_the_operators_keys(part: str, key: str) -> None:
    """Defect 8: a pool whose template set appliance.dev/job-name had every idle pod look
    claimed, and created `replicas` new pods on every reconcile."""
    with pytest.raises(InvalidJobError) as refused:
        parse_pool(
            {"metadata": {"name": "p"}, "spec": {"image": "i", "template": {part: {key: "x"}}}}
        )
    line = next(e for e in refused.value.errors if e.startswith(f"spec.template.{part}"))
    assert key in line and "operator's own" in line and "use another key" in line


def test_template_keys_of_other_prefixes_are_kept() -> None:
    pool = parse_pool(
        {
            "metadata": {"name": "p"},
            "spec": {
                "image": "i",
                "template": {"labels": {"team": "a", "x.appliance.dev/y": "b"}},
            },
        }
    )
    assert pool.spec.template.labels == {"team": "a", "x.appliance.dev/y": "b"}


def test_every_key_the_operator_writes_on_pods_is_reserved() -> None:
    """So the models' refusal covers whatever the operator writes on pods and selects on."""
    from appliance_operator import desired
    from appliance_operator.pool import plan as poolplan
    from appliance_operator.pool import tls as pooltls

    keys = [
        value
        for module in (desired, poolplan, pooltls)
        for name, value in vars(module).items()
        if name.endswith(("_LABEL", "_ANNOTATION")) and isinstance(value, str)
    ]
    assert len(keys) >= 6
    for key in keys:
        assert reserved_key(key), key


def test_pods_never_carry_a_template_key_the_operator_owns() -> None:
    """Belt and braces for a template the models did not check (an older CRD, model_construct):
    the operator's keys on a pod are always its own values."""
    from appliance_operator import desired

    forged = {"appliance.dev/job-name": "victim", "app.kubernetes.io/managed-by": "me", "t": "1"}
    template = WorkerTemplate.model_construct(
        **{**dict(WorkerTemplate()), "labels": forged, "annotations": forged}
    )
    pool = parse_pool({"metadata": {"name": "p", "namespace": "ml"}, "spec": {"image": "i"}})
    pool.spec.__dict__["template"] = template
    pod = desired.pool_pod(pool, "uid-p", "abcde")
    labels, annotations = pod["metadata"]["labels"], pod["metadata"]["annotations"]
    assert names.JOB_NAME_LABEL not in labels and labels["t"] == "1"
    assert labels[names.MANAGED_BY_LABEL] == names.MANAGED_BY
    assert not [k for k in annotations if reserved_key(k)] and annotations["t"] == "1"
    job = parse_job(copy.deepcopy(VALID))
    job.spec.__dict__["template"] = template
    worker = desired.worker_pod(job, "uid-j", desired.WorkerId(0), "h")
    assert worker["metadata"]["labels"][names.JOB_NAME_LABEL] == "demo"
    assert worker["metadata"]["labels"]["t"] == "1"
    assert not [
        k
        for k in worker["metadata"]["annotations"]
        if reserved_key(k) and k != names.ENV_HASH_ANNOTATION
    ]


@pytest.mark.parametrize("value", ["\x00", "a\x00", "\x00b", "/mnt/\x00/data"])
def test_an_inline_value_with_nul_is_refused_naming_the_variable_and_the_fix(value: str) -> None:
    """Defect 13: every worker exited 78 on it and counted as a failure."""
    doc = copy.deepcopy(VALID)
    doc["spec"]["env"][0]["value"] = value
    with pytest.raises(InvalidJobError) as refused:
        parse_job(doc)
    assert [e for e in refused.value.errors if e.startswith("spec.env[0].value")] == [
        f"spec.env[0].value: {NUL_MESSAGE}"
    ]
    assert "remove it" in NUL_MESSAGE


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("replicas", "2"),
        ("replicas", True),
        ("backoffLimit", "1"),
        ("activeDeadlineSeconds", "600"),
        ("ttlSecondsAfterFinished", False),
        ("suspend", "true"),
        ("suspend", 1),
    ],
)
def test_numbers_and_booleans_are_json_typed_as_the_crd_takes_them(path: str, value: Any) -> None:
    """The API server refuses "2" for an integer and "true" for a boolean; pydantic's lax mode
    converted them, so the client accepted what admission refuses."""
    doc = copy.deepcopy(VALID)
    doc["spec"][path] = value
    with pytest.raises(InvalidJobError) as refused:
        parse_job(doc)
    assert any(e.startswith(f"spec.{path}") for e in refused.value.errors), refused.value.errors


def test_a_whole_float_is_an_integer_as_for_the_api_server() -> None:
    doc = copy.deepcopy(VALID)
    doc["spec"]["replicas"] = 3.0  # the API server's JSON decoder reads 3.0 as 3
    assert parse_job(doc).spec.replicas == 3
    pool = parse_pool({"metadata": {"name": "p"}, "spec": {"image": "i", "replicas": 2.0}})
    assert pool.spec.replicas == 2


@pytest.mark.parametrize("name", ["demo\n", "demo\n\n"])
def test_a_name_with_a_trailing_newline_is_refused(name: str) -> None:
    """Python's `$` matches before a final newline; the API server's does not."""
    doc = copy.deepcopy(VALID)
    doc["metadata"]["name"] = name
    with pytest.raises(InvalidJobError):
        parse_job(doc)
    with pytest.raises(InvalidJobError):
        parse_pool({"metadata": {"name": name}, "spec": {"image": "i"}})
    doc = copy.deepcopy(VALID)
    doc["spec"]["entrypoint"] = "my_pkg.loader:main\n"
    with pytest.raises(InvalidJobError, match=r"spec\.entrypoint"):
        parse_job(doc)


@settings(max_examples=150, derandomize=True, database=None, deadline=None)
@given(st.one_of(generated_input.objects("ExecuteJob"), generated_input.objects("WorkerPool")))
def test_generated_input_is_accepted_or_refused_naming_fields(obj: dict[str, Any]) -> None:
    """The client's half of tests/integration/test_generated_input.py, without a cluster:
    whatever the generator makes is accepted, or refused with InvalidJobError whose every
    line names a field (never another exception)."""
    parse = parse_job if obj["kind"] == "ExecuteJob" else parse_pool
    try:
        parse(obj)
    except InvalidJobError as exc:
        assert exc.errors
        assert all(line.startswith(("spec", "metadata")) for line in exc.errors), exc.errors


# -- spec.code (issue 23) --------------------------------------------------------------------

CODE = {"sha256": "sha256:" + "ab" * 32, "chunks": 2, "size": 524289}


def test_a_job_with_code_round_trips_its_hash_chunks_and_size_in_camel_case() -> None:
    manifest = copy.deepcopy(VALID)
    manifest["spec"]["code"] = dict(CODE)
    job = parse_job(manifest)
    assert job.spec.code is not None and job.spec.code.chunks == 2
    assert job.to_manifest()["spec"]["code"] == CODE
    assert "code" not in parse_job(VALID).to_manifest()["spec"]  # absent, not null


@pytest.mark.parametrize(
    ("code", "field"),
    [
        ({**CODE, "sha256": "sha256:" + "AB" * 32}, "spec.code.sha256"),
        ({**CODE, "sha256": "ab" * 32}, "spec.code.sha256"),
        ({**CODE, "sha256": CODE["sha256"] + "\n"}, "spec.code.sha256"),
        ({**CODE, "chunks": 0}, "spec.code.chunks"),
        ({**CODE, "chunks": 17, "size": 16 * 524288 + 1}, "spec.code.chunks"),
        ({**CODE, "chunks": 16, "size": 8 * 1024 * 1024 + 1}, "spec.code.size"),
        ({**CODE, "size": 0}, "spec.code.size"),
        ({**CODE, "chunks": True}, "spec.code.chunks"),
        ({**CODE, "chunks": 1}, "spec.code"),  # 524289 bytes take 2 chunks
        ({**CODE, "chunks": 3}, "spec.code"),
        ({**CODE, "data": "cHJpbnQoMSkK"}, "spec.code.data"),  # never the content
    ],
)
def test_bad_code_fields_are_refused_naming_them(code: dict[str, Any], field: str) -> None:
    manifest = copy.deepcopy(VALID)
    manifest["spec"]["code"] = code
    with pytest.raises(InvalidJobError) as refused:
        parse_job(manifest)
    assert any(line.startswith(field) for line in refused.value.errors), refused.value.errors


def test_code_secret_names_and_chunk_keys_sort_in_chunk_order() -> None:
    from cerebras_appliance.contract.api import code_chunk_key, code_secret_name

    assert code_secret_name("demo", 3) == "demo-code-3"
    keys = [code_chunk_key(i) for i in range(16)]
    assert keys[0] == f"{names.CODE_CHUNK_PREFIX}000" == "chunk-000"
    assert sorted(keys) == keys
