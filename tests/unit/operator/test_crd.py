"""crds/executejobs.yaml: generated from the models, structural, and refusing what they refuse."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import invalid_cases  # tests/data, on pytest's pythonpath
import pytest
import yaml

from appliance_operator import crdgen
from cerebras_appliance.contract import api, bundle
from cerebras_appliance.contract.api import InvalidJobError, parse_job

REPO = Path(__file__).resolve().parents[3]


CASES = invalid_cases.cases()


def _nodes(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield path, node
        for key, child in node.get("properties", {}).items():
            yield from _nodes(child, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            yield from _nodes(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            yield from _nodes(node["additionalProperties"], f"{path}{{}}")


def _schema() -> dict[str, Any]:
    crd = yaml.safe_load((REPO / "crds" / "executejobs.yaml").read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_checked_in_crd_matches_the_models() -> None:
    """Fails when api.py (or the hand-kept parts) changed without `make crds`."""
    current = (REPO / "crds" / "executejobs.yaml").read_text()
    assert current == crdgen.render(), "crds/executejobs.yaml is stale: run `make crds`"
    assert crdgen.main(["--check"]) == 0


def test_check_mode_reports_a_stale_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "executejobs.yaml"
    stale.write_text("# old\n")
    assert crdgen.main(["--check", "--output", str(stale)]) == 1
    assert "make crds" in capsys.readouterr().err


def test_schema_is_structural() -> None:
    for path, node in _nodes(_schema()):
        for banned in ("$ref", "$defs", "anyOf", "oneOf", "title", "nullable"):
            assert banned not in node, f"{path or '<root>'} has {banned}"
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        if node.get("type") == "object" and "properties" in node:
            assert "additionalProperties" not in node, path


def test_free_form_template_objects_keep_unknown_fields() -> None:
    template = _schema()["properties"]["spec"]["properties"]["template"]["properties"]
    for name in ("resources", "affinity", "securityContext", "podSecurityContext"):
        assert template[name]["x-kubernetes-preserve-unknown-fields"] is True, name
    for name in ("tolerations", "volumes", "volumeMounts", "imagePullSecrets"):
        assert template[name]["items"]["x-kubernetes-preserve-unknown-fields"] is True, name
    assert template["nodeSelector"]["additionalProperties"] == {"type": "string"}


def test_descriptions_are_kept_and_optional_fields_are_not_null() -> None:
    spec = _schema()["properties"]["spec"]
    assert "input workers" in spec["properties"]["replicas"]["description"]
    deadline = spec["properties"]["activeDeadlineSeconds"]
    assert deadline == {
        "description": deadline["description"],
        "minimum": 1,
        "maximum": api.MAX_DURATION_SECONDS,
        "type": "integer",
    }
    assert spec["properties"]["replicas"]["default"] == 1
    assert spec["required"] == ["image", "entrypoint"]


def test_hand_kept_rules_are_in_place() -> None:
    spec = _schema()["properties"]["spec"]["properties"]
    env = spec["env"]
    assert env["x-kubernetes-list-type"] == "map"
    assert env["x-kubernetes-list-map-keys"] == ["name"]
    assert env["maxItems"] == api.MAX_ENV_VARS
    for field in ("env", "image", "entrypoint"):
        rules = spec[field]["x-kubernetes-validations"]
        assert {"rule": "self == oldSelf", "message": f"spec.{field} {crdgen._IMMUTABLE}"} in rules
    item_rules = env["items"]["x-kubernetes-validations"]
    assert item_rules[0]["rule"] == "has(self.value) != has(self.valueFrom)"
    # The CEL entrypoint check uses the models' own pattern (no second copy to drift).
    assert (
        api.ENTRYPOINT_MODULE_PATTERN in spec["entrypoint"]["x-kubernetes-validations"][1]["rule"]
    )
    status = _schema()["properties"]["status"]["properties"]
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]
    assert status["phase"]["enum"] == ["Pending", "Running", "Succeeded", "Failed", "Suspended"]


def test_crd_names_and_printer_columns() -> None:
    crd = crdgen.crd()
    assert crd["metadata"]["name"] == "executejobs.appliance.dev"
    assert crd["spec"]["names"]["shortNames"] == ["ej"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase"
    assert columns["Ready"] == ".status.readyReplicas"
    assert columns["Replicas"] == ".spec.replicas"
    assert columns["Age"] == ".metadata.creationTimestamp"
    assert not [p for p in columns.values() if re.search(r"env|value", p, re.I)]


def test_base_of_the_invalid_cases_is_valid() -> None:
    """So each case is refused for its own edit, not for something in the base."""
    parse_job(invalid_cases.base())


def test_there_are_at_least_15_invalid_cases() -> None:
    assert len(CASES) >= 15
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_client_refuses_what_admission_refuses(case: Any) -> None:
    with pytest.raises(InvalidJobError) as refused:
        parse_job(case.manifest)
    assert any(line.startswith(case.field) for line in refused.value.errors), (
        f"no error names {case.field}: {refused.value.errors}"
    )


# -- WorkerPool ------------------------------------------------------------------------------


def _pool_crd() -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load((REPO / "crds" / "workerpools.yaml").read_text())
    return crd


def test_checked_in_pool_crd_matches_the_models() -> None:
    current = (REPO / "crds" / "workerpools.yaml").read_text()
    assert current == crdgen.render(api.POOL_KIND), "crds/workerpools.yaml is stale: make crds"


def test_pool_crd_names_scale_subresource_and_columns() -> None:
    crd = _pool_crd()
    assert crd["metadata"]["name"] == "workerpools.appliance.dev"
    assert crd["spec"]["names"]["shortNames"] == ["wp"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Idle"] == ".status.idle" and columns["Claimed"] == ".status.claimed"
    assert not [p for p in columns.values() if re.search(r"env|value", p, re.I)]
    schema = version["schema"]["openAPIV3Schema"]
    for path, node in _nodes(schema):
        for banned in ("$ref", "$defs", "anyOf", "title", "nullable"):
            assert banned not in node, f"{path or '<root>'} has {banned}"
    spec = schema["properties"]["spec"]["properties"]
    assert spec["replicas"]["minimum"] == 0 and spec["replicas"]["default"] == 1
    assert "idle workers" in spec["replicas"]["x-kubernetes-validations"][0]["message"]
    assert "module name" in spec["imports"]["items"]["x-kubernetes-validations"][0]["message"]


def test_job_spec_pool_is_an_immutable_name() -> None:
    pool = _schema()["properties"]["spec"]["properties"]["pool"]
    assert pool["pattern"] == api.JOB_NAME_PATTERN
    assert {"rule": "self == oldSelf", "message": f"spec.pool {crdgen._IMMUTABLE}"} in pool[
        "x-kubernetes-validations"
    ]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"image": "i", "replicas": -1}, "spec.replicas"),
        ({"image": "i", "imports": ["not a module"]}, "spec.imports[0]"),
        ({"image": ""}, "spec.image"),
        ({"image": "i", "startupVariables": ["A=B"]}, "spec.startupVariables[0]"),
        ({"image": "i", "size": 3}, "spec.size"),
    ],
)
def test_client_refuses_bad_pools_naming_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidJobError) as refused:
        api.parse_pool({"metadata": {"name": "p"}, "spec": spec})
    assert "invalid WorkerPool" in str(refused.value)
    assert any(line.startswith(field) for line in refused.value.errors), refused.value.errors


@pytest.mark.parametrize("crd", ["executejobs", "workerpools"])
def test_both_crds_refuse_the_operators_keys_in_templates(crd: str) -> None:
    """Issue 21, defect 8: the rule the API server runs (the cases in
    tests/data/invalid_executejobs.yaml and tests/integration/test_generated_input.py send
    objects to it)."""
    doc = yaml.safe_load((REPO / "crds" / f"{crd}.yaml").read_text())
    template = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"
    ]["template"]["properties"]
    for part in ("labels", "annotations"):
        (rule,) = template[part]["x-kubernetes-validations"]
        assert f"!k.startsWith('{api.RESERVED_KEY_PREFIX}')" in rule["rule"]
        for key in api.RESERVED_KEYS:
            assert f"k != '{key}'" in rule["rule"]
        assert f"spec.template.{part}" in rule["message"]


def test_inline_values_refuse_nul_by_pattern_and_durations_are_bounded() -> None:
    spec = _schema()["properties"]["spec"]["properties"]
    assert spec["env"]["items"]["properties"]["value"]["pattern"] == api.NO_NUL_PATTERN
    for name in ("activeDeadlineSeconds", "ttlSecondsAfterFinished"):
        assert spec[name]["maximum"] == api.MAX_DURATION_SECONDS == 2**31 - 1


def test_spec_code_is_immutable_consistent_and_never_gained_or_lost() -> None:
    """Issue 23: the rules the API server runs on spec.code (the invalid cases send bad ones
    to it; tests/integration/test_operator.py checks the transitions)."""
    schema = _schema()["properties"]["spec"]
    code = schema["properties"]["code"]
    assert code["properties"]["sha256"]["pattern"] == api.CODE_SHA256_PATTERN
    assert code["properties"]["chunks"]["maximum"] == bundle.MAX_CHUNKS == 16
    assert code["properties"]["size"]["maximum"] == 8 * 1024 * 1024
    assert set(code["properties"]) == {"sha256", "chunks", "size"}  # no field for content
    rules = {r["rule"]: r["message"] for r in code["x-kubernetes-validations"]}
    assert rules["self == oldSelf"] == f"spec.code {crdgen._IMMUTABLE}"
    assert "self.chunks == (self.size + 524287) / 524288" in rules
    spec_rules = {r["rule"]: r["message"] for r in schema["x-kubernetes-validations"]}
    assert spec_rules["has(self.code) == has(oldSelf.code)"] == f"spec.code {crdgen._IMMUTABLE}"


def test_the_code_column_shows_the_bundles_hash_only() -> None:
    version = crdgen.crd()["spec"]["versions"][0]
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert columns["Code"]["jsonPath"] == ".spec.code.sha256"
    assert columns["Code"]["priority"] == 1  # with -o wide
