"""The Helm chart (charts/appliance-operator) and the examples, without a cluster.

Needs the pinned helm that ``hack/offline/cluster-build/build.sh`` builds (once, cached). When
it is not built, the helm tests are skipped with the command to run, except under ``CI=true``,
where the build runs (or the tests fail).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "appliance-operator"
EXAMPLES = REPO_ROOT / "examples"
BUILD_SH = REPO_ROOT / "hack" / "offline" / "cluster-build" / "build.sh"
# Rendering for the Kubernetes version the local cluster runs
# (hack/offline/cluster-build/versions.env): without it, a helm built from source assumes v1.20
# and refuses the chart's kubeVersion.
KUBE_VERSION = "1.33.13"
RELEASE = "ao"
RELEASE_NS = "appliance-system"

# Pod Security Standard "restricted" (v1.33): volume types a pod may use.
RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


# --- helm ---------------------------------------------------------------------------------


def _bindir() -> Path:
    out = subprocess.run(
        ["bash", str(BUILD_SH), "--print-bindir"], capture_output=True, text=True, check=True
    )
    return Path(out.stdout.strip())


@pytest.fixture(scope="session")
def helm_bin() -> Path:
    helm = _bindir() / "helm"
    built = subprocess.run(["bash", str(BUILD_SH), "--check"], check=False).returncode == 0
    if not built:
        if os.environ.get("CI", "").lower() != "true":
            pytest.skip(
                "the pinned helm is not built: run `bash hack/offline/cluster-build/build.sh` "
                "(once; cached outside the repository)"
            )
        subprocess.run(["bash", str(BUILD_SH)], check=True, timeout=3600)
    assert os.access(helm, os.X_OK), f"{helm} is missing after hack/offline/cluster-build/build.sh"
    return helm


class Helm:
    def __init__(self, binary: Path, home: Path) -> None:
        self.binary = binary
        # Keep helm's cache/config/data out of $HOME, and away from any cluster.
        self.env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
            "KUBECONFIG": str(home / "no-kubeconfig"),
        }

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.binary), *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
            check=False,
        )
        if check and proc.returncode != 0:
            pytest.fail(
                f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}"
            )
        return proc

    def _template(self, *args: str, check: bool) -> subprocess.CompletedProcess[str]:
        return self.run(
            *("template", RELEASE, str(CHART), "--namespace", RELEASE_NS),
            *("--kube-version", KUBE_VERSION),
            *args,
            check=check,
        )

    def template(self, *args: str, include_crds: bool = False) -> list[dict[str, Any]]:
        extra = ["--include-crds"] if include_crds else []
        proc = self._template(*extra, *args, check=True)
        return [d for d in yaml.safe_load_all(proc.stdout) if d]

    def template_error(self, *args: str) -> str:
        proc = self._template(*args, check=False)
        assert proc.returncode != 0, f"helm template {' '.join(args)} should have failed"
        return proc.stderr


@pytest.fixture(scope="session")
def helm(helm_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(helm_bin, tmp_path_factory.mktemp("helm-home"))


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def rules_by_resource(rules: list[dict[str, Any]]) -> dict[str, set[str]]:
    """{"group/resource": verbs}, merged over the rules."""
    out: dict[str, set[str]] = {}
    for rule in rules:
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                out.setdefault(f"{group}/{resource}", set()).update(rule["verbs"])
    return out


# --- the CRD --------------------------------------------------------------------------------


CRD_FILES = ["executejobs.yaml", "workerpools.yaml"]


@pytest.mark.parametrize("name", CRD_FILES)
def test_crd_copy_is_identical_to_crds_dir(name: str) -> None:
    source = REPO_ROOT / "crds" / name
    copy = CHART / "crds" / name
    assert source.exists(), f"crds/{name} is missing (make crds)"
    assert copy.read_bytes() == source.read_bytes(), (
        f"charts/appliance-operator/crds/{name} differs from crds/{name}: "
        "run `make chart-crds` (cp crds/*.yaml charts/appliance-operator/crds/)"
    )
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == CRD_FILES


def test_crds_are_rendered_with_include_crds(helm: Helm) -> None:
    docs = helm.template(include_crds=True)
    crds = {d["metadata"]["name"]: d for d in by_kind(docs, "CustomResourceDefinition")}
    assert sorted(crds) == ["executejobs.appliance.dev", "workerpools.appliance.dev"]
    for name in CRD_FILES:
        crd = yaml.safe_load((REPO_ROOT / "crds" / name).read_text())
        assert crds[crd["metadata"]["name"]] == crd


# --- lint -----------------------------------------------------------------------------------

LINT_CASES = {
    "defaults": [],
    "namespace-scope": ["--set", "rbac.scope=namespace"],
    "namespace-scope-list": ["--set", "rbac.scope=namespace", "--set", "watchNamespaces={a,b}"],
    "no-metrics-no-rbac": ["--set", "metrics.enabled=false", "--set", "rbac.create=false"],
}


@pytest.mark.parametrize("args", LINT_CASES.values(), ids=LINT_CASES.keys())
def test_helm_lint_strict(helm: Helm, args: list[str]) -> None:
    proc = helm.run(
        "lint",
        "--strict",
        "--kube-version",
        KUBE_VERSION,
        "--namespace",
        RELEASE_NS,
        str(CHART),
        *args,
    )
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "appliance-operator"
    assert chart["appVersion"] == "0.1.0"
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert f'version = "{chart["appVersion"]}"' in pyproject, "appVersion != the package version"


# --- rendering ------------------------------------------------------------------------------


def test_default_render(helm: Helm) -> None:
    docs = helm.template()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == [
        "ClusterRole",  # the operator's
        "ClusterRole",  # aggregated into edit/admin
        "ClusterRole",  # aggregated into view
        "ClusterRoleBinding",
        "Deployment",
        "Service",
        "ServiceAccount",
    ]
    assert not by_kind(docs, "CustomResourceDefinition"), "the CRD belongs in crds/ only"
    for doc in docs:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "appliance-operator"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "appliance-operator-0.1.0"
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == RELEASE_NS

    deploy = one(docs, "Deployment")
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["strategy"] == {"type": "Recreate"}
    pod = deploy["spec"]["template"]["spec"]
    sa = one(docs, "ServiceAccount")["metadata"]["name"]
    assert pod["serviceAccountName"] == sa
    binding = one(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": RELEASE_NS}]

    c = container(docs)
    assert c["image"] == "appliance-operator/operator:0.1.0"
    assert "--all-namespaces" in c["args"]
    assert not [a for a in c["args"] if a.startswith("--namespace")]
    # The liveness probe hits kopf's liveness endpoint, on the port the operator serves it.
    liveness = next(a for a in c["args"] if a.startswith("--liveness="))
    probe = c["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert liveness == f"--liveness=http://0.0.0.0:{ports[probe['port']]}{probe['path']}"
    assert f"--metrics-port={ports['metrics']}" in c["args"]

    service = one(docs, "Service")
    assert service["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"


ARGS_CASES = {
    "defaults": [],
    "namespaces": ["--set", "rbac.scope=namespace", "--set", "watchNamespaces={a,b}"],
    "tuned": [
        "--set", "logLevel=debug",
        "--set", "metrics.enabled=false",
        "--set", "reconcileWorkers=2",
        "--set", "resyncSeconds=5",
    ],
}  # fmt: skip


@pytest.mark.parametrize("args", ARGS_CASES.values(), ids=ARGS_CASES.keys())
def test_operator_accepts_the_rendered_command_line(helm: Helm, args: list[str]) -> None:
    """The Deployment's args parse with the operator's own parser, to the values given."""
    from appliance_operator.__main__ import parse_args

    docs = helm.template(*args)
    c = container(docs)
    parsed = parse_args(c["args"])
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    overrides = dict(a.split("=", 1) for a in args if a != "--set")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert parsed.liveness == f"http://0.0.0.0:{ports['health']}/healthz"
    if overrides.get("metrics.enabled") == "false":
        assert parsed.metrics_port == 0
    else:
        assert parsed.metrics_port == ports["metrics"] == values["metrics"]["port"]
    assert parsed.workers == int(overrides.get("reconcileWorkers", values["reconcileWorkers"]))
    assert parsed.resync_seconds == float(overrides.get("resyncSeconds", values["resyncSeconds"]))
    assert parsed.verbose == (overrides.get("logLevel") == "debug")
    if "watchNamespaces" in overrides:
        assert parsed.namespace == ["a", "b"] and not parsed.all_namespaces
    else:
        assert parsed.all_namespaces and parsed.namespace == []


def test_namespace_scope_defaults_to_release_namespace(helm: Helm) -> None:
    docs = helm.template("--set", "rbac.scope=namespace")
    roles = by_kind(docs, "Role")
    assert [r["metadata"]["namespace"] for r in roles] == [RELEASE_NS]
    assert not by_kind(docs, "ClusterRoleBinding")
    c = container(docs)
    assert f"--namespace={RELEASE_NS}" in c["args"]
    assert "--all-namespaces" not in c["args"]


def test_namespace_scope_with_watch_namespaces(helm: Helm) -> None:
    docs = helm.template(
        "--set", "rbac.scope=namespace", "--set", "watchNamespaces={team-a,team-b}"
    )
    roles = {r["metadata"]["namespace"]: r for r in by_kind(docs, "Role")}
    bindings = {b["metadata"]["namespace"]: b for b in by_kind(docs, "RoleBinding")}
    assert set(roles) == set(bindings) == {"team-a", "team-b"}
    sa = one(docs, "ServiceAccount")["metadata"]["name"]
    for ns, binding in bindings.items():
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": roles[ns]["metadata"]["name"],
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": sa, "namespace": RELEASE_NS}
        ]
    # No cluster-wide grant for the operator (the aggregated roles are for users, and carry
    # no binding).
    assert not by_kind(docs, "ClusterRoleBinding")
    assert all(
        "aggregate-to" in " ".join(r["metadata"]["labels"]) for r in by_kind(docs, "ClusterRole")
    )
    args = container(docs)["args"]
    assert [a for a in args if a.startswith("--namespace")] == [
        "--namespace=team-a",
        "--namespace=team-b",
    ]


def test_watch_namespaces_need_namespace_scope(helm: Helm) -> None:
    err = helm.template_error("--set", "watchNamespaces={team-a}")
    assert "watchNamespaces is only used with rbac.scope=namespace" in err


def test_overrides(helm: Helm) -> None:
    docs = helm.template(
        "--set", "image.repository=example/op",
        "--set", "image.tag=dev",
        "--set", "image.pullPolicy=Never",
        "--set", "metrics.enabled=false",
        "--set", "serviceAccount.create=false",
        "--set", "serviceAccount.name=my-sa",
        "--set", "logLevel=debug",
        "--set", "reconcileWorkers=3",
        "--set", "resyncSeconds=30",
        "--set", "nodeSelector.disk=ssd",
        "--set", "podAnnotations.team=ml",
        "--set", "imagePullSecrets[0].name=regcred",
        "--set", "fullnameOverride=ops",
    )  # fmt: skip
    assert not by_kind(docs, "Service")
    assert not by_kind(docs, "ServiceAccount")
    deploy = one(docs, "Deployment")
    assert deploy["metadata"]["name"] == "ops"
    pod = deploy["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "my-sa"
    assert pod["nodeSelector"] == {"disk": "ssd"}
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert deploy["spec"]["template"]["metadata"]["annotations"] == {"team": "ml"}
    c = container(docs)
    assert c["image"] == "example/op:dev"
    assert c["imagePullPolicy"] == "Never"
    assert "--verbose" in c["args"]
    assert "--workers=3" in c["args"]
    assert "--resync-seconds=30" in c["args"]
    assert "--metrics-port=0" in c["args"]  # the operator's own default would serve metrics
    assert [p["name"] for p in c["ports"]] == ["health"]
    assert one(docs, "ClusterRoleBinding")["subjects"][0]["name"] == "my-sa"


def test_rbac_create_false_renders_no_rbac(helm: Helm) -> None:
    docs = helm.template("--set", "rbac.create=false")
    assert not [d for d in docs if d["apiVersion"].startswith("rbac.authorization.k8s.io")]


def test_aggregated_roles_can_be_disabled(helm: Helm) -> None:
    docs = helm.template("--set", "rbac.aggregateToDefaultRoles=false")
    assert len(by_kind(docs, "ClusterRole")) == 1


def test_service_account_name_required_without_create(helm: Helm) -> None:
    err = helm.template_error("--set", "serviceAccount.create=false")
    assert "serviceAccount.name is required" in err


# --- security -------------------------------------------------------------------------------


def test_security_context_is_restricted(helm: Helm) -> None:
    """The operator pod meets the "restricted" Pod Security Standard, field by field.

    (tests/integration/test_helm.py also has the real PodSecurity admission check it.)
    """
    pod = one(helm.template(), "Deployment")["spec"]["template"]["spec"]
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["runAsUser"] != 0
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    for key in ("hostNetwork", "hostPID", "hostIPC", "hostUsers"):
        assert key not in pod


def test_no_service_link_variables(helm: Helm) -> None:
    """Kubernetes' Docker-link variables of the metrics Service (<SERVICE>_PORT=tcp://...) of a
    release named appliance-operator would collide with the operator's APPLIANCE_OPERATOR_*
    settings: the chart turns them off."""
    pod = one(helm.template(), "Deployment")["spec"]["template"]["spec"]
    assert pod["enableServiceLinks"] is False
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["runAsNonRoot"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc.get("privileged", False) is False
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not [p for p in c.get("ports", []) if "hostPort" in p]
        # The read-only root filesystem needs a writable /tmp.
        assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    for volume in pod["volumes"]:
        types = set(volume) - {"name"}
        assert types <= RESTRICTED_VOLUME_TYPES, volume


def test_rbac_is_least_privilege(helm: Helm) -> None:
    docs = helm.template()
    operator_role = next(
        r
        for r in by_kind(docs, "ClusterRole")
        if r["metadata"]["name"] == f"{RELEASE}-appliance-operator"
    )
    rules = operator_role["rules"]
    for rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
        assert "*" not in rule["apiGroups"], rule
        assert "resourceNames" not in rule or rule["resourceNames"], rule
    granted = rules_by_resource(rules)
    assert granted == {
        "appliance.dev/executejobs": {"get", "list", "watch", "delete"},
        "appliance.dev/executejobs/status": {"get", "patch"},
        "appliance.dev/executejobs/finalizers": {"update"},
        "/pods": {"get", "list", "watch", "create", "patch", "delete"},
        "/secrets": {"get", "create"},
        "/events": {"create"},
        "appliance.dev/workerpools": {"list", "watch"},
        "appliance.dev/workerpools/status": {"patch"},
        "appliance.dev/workerpools/finalizers": {"update"},
        "networking.k8s.io/networkpolicies": {"get", "create", "update"},
        "apiextensions.k8s.io/customresourcedefinitions": {"list", "watch"},
    }
    # Never list/watch secrets: that would hand every Secret of the cluster to the operator.
    assert not granted["/secrets"] & {"list", "watch", "deletecollection", "delete"}
    # The namespace-scoped Role holds the same namespaced rules, and no cluster-scoped ones.
    ns_docs = helm.template("--set", "rbac.scope=namespace")
    ns_granted = rules_by_resource(one(ns_docs, "Role")["rules"])
    del granted["apiextensions.k8s.io/customresourcedefinitions"]
    assert ns_granted == granted


OPERATOR_SRC = REPO_ROOT / "operator" / "appliance_operator"
# kopf decorators that make kopf write to the object (finalizers, progress annotations).
KOPF_WRITING_HANDLERS = re.compile(
    r"@kopf\.(on\.(create|update|delete|resume|field)|timer|daemon)\((?P<args>[^)]*)\)"
)
KOPF_WATCHING_HANDLERS = re.compile(r"@kopf\.(index|on\.event)\((?P<args>[^)]*)\)")
# Reads granted on top of what the code calls: they expose nothing `list` does not already.
CONVENIENCE_READS = {
    ("get", "appliance.dev/executejobs"),
    ("get", "appliance.dev/executejobs/status"),
    ("get", "/pods"),
}


def _resource_key(resource: str) -> str:
    """ "pods" -> "/pods", "executejobs/status" -> "appliance.dev/executejobs/status"."""
    if resource.startswith(("executejobs", "workerpools")):
        return f"appliance.dev/{resource}"
    if resource == "networkpolicies":
        return f"networking.k8s.io/{resource}"
    return f"/{resource}"


def _kopf_resource(args: str) -> str:
    parts = [a.strip().strip("\"'") for a in args.split(",") if "=" not in a]
    if parts and parts[0] == "GROUP":
        return f"appliance.dev/{'workerpools' if parts[-1] == 'POOL_PLURAL' else 'executejobs'}"
    return _resource_key(parts[-1])


def operator_api_needs() -> set[tuple[str, str]]:
    """(verb, group/resource) of every call the operator's code makes, kopf's included."""
    needs: set[tuple[str, str]] = set()
    kubeapi = (OPERATOR_SRC / "kubeapi.py").read_text()
    for verb, resource in re.findall(r'_call\(\s*"(\w+)",\s*"([\w/]+)"', kubeapi):
        needs.add((verb, _resource_key(resource)))
    for path in OPERATOR_SRC.rglob("*.py"):
        text = path.read_text()
        for m in KOPF_WATCHING_HANDLERS.finditer(text):
            resource = _kopf_resource(m.group("args"))
            needs |= {("list", resource), ("watch", resource)}
        for m in KOPF_WRITING_HANDLERS.finditer(text):
            needs.add(("patch", _kopf_resource(m.group("args"))))
    needs.add(("create", "/events"))  # kopf posts its warnings as Events
    if '"blockOwnerDeletion": True' in (OPERATOR_SRC / "desired.py").read_text():
        # OwnerReferencesPermissionEnforcement: setting it needs update on the owner's
        # finalizers.
        needs.add(("update", "appliance.dev/executejobs/finalizers"))
        needs.add(("update", "appliance.dev/workerpools/finalizers"))  # pool_owner_reference
    return needs


def test_rbac_matches_what_the_operator_calls(helm: Helm) -> None:
    """Both ways: every API call in operator/ is granted, and nothing else is (but reads)."""
    if not (OPERATOR_SRC / "kubeapi.py").exists():
        pytest.skip("operator/appliance_operator/kubeapi.py is not written yet")
    needs = operator_api_needs()
    assert ("create", "/pods") in needs, "the parser of kubeapi.py found nothing"
    role = one(helm.template("--set", "rbac.scope=namespace"), "Role")
    granted = {(v, r) for r, verbs in rules_by_resource(role["rules"]).items() for v in verbs}
    missing = needs - granted
    assert not missing, f"the operator calls these, the chart does not grant them: {missing}"
    extra = granted - needs - CONVENIENCE_READS
    assert not extra, f"granted but never called by the operator (remove them): {extra}"


def test_aggregated_roles(helm: Helm) -> None:
    docs = helm.template()
    roles = {r["metadata"]["name"]: r for r in by_kind(docs, "ClusterRole")}
    edit = roles[f"{RELEASE}-appliance-operator-edit"]
    view = roles[f"{RELEASE}-appliance-operator-view"]
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    edit_rules = rules_by_resource(edit["rules"])
    assert {"create", "delete", "patch"} <= edit_rules["appliance.dev/executejobs"]
    # Users never write the status: only the operator does.
    assert edit_rules["appliance.dev/executejobs/status"] == {"get"}
    assert set().union(*rules_by_resource(view["rules"]).values()) == {"get", "list", "watch"}


# --- values schema --------------------------------------------------------------------------

BAD_VALUES = {
    "scope": (["--set", "rbac.scope=bogus"], "rbac.scope"),
    "unknown-top-level-key": (["--set", "replicaCount=2"], "replicaCount"),
    "pull-policy": (["--set", "image.pullPolicy=Sometimes"], "image.pullPolicy"),
    "port": (["--set", "metrics.port=0"], "metrics.port"),
    "log-level": (["--set", "logLevel=loud"], "logLevel"),
    "env-value-not-string": (
        ["--set", "extraEnv[0].name=A", "--set", "extraEnv[0].value=1"],
        "extraEnv.0.value",
    ),
    "namespace-name": (
        ["--set", "rbac.scope=namespace", "--set", "watchNamespaces={Not_A_Namespace}"],
        "watchNamespaces",
    ),
}


@pytest.mark.parametrize(("args", "field"), BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_values_schema_rejects(helm: Helm, args: list[str], field: str) -> None:
    err = helm.template_error(*args)
    assert "values don't meet the specifications of the schema" in err, err
    assert field.rsplit(".", maxsplit=1)[-1] in err, err


def test_values_schema_is_draft7_and_closed() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    # Every value has a schema entry (the closed schema would refuse the chart's own default
    # otherwise; this names the missing key).
    assert set(values) <= set(schema["properties"])


# --- examples -------------------------------------------------------------------------------


def _example_docs(name: str) -> Iterator[dict[str, Any]]:
    yield from (d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d)


@pytest.mark.parametrize("name", ["executejob.yaml", "executejob-secret.yaml"])
def test_examples_are_valid_jobs(name: str) -> None:
    from cerebras_appliance.contract.api import parse_job

    docs = list(_example_docs(name))
    jobs = [d for d in docs if d["kind"] == "ExecuteJob"]
    assert len(jobs) == 1
    job = parse_job(jobs[0])  # the client's models = what the CRD enforces
    assert job.spec.replicas == 2
    # The script the job runs ships in the same file (a ConfigMap mounted into the workers),
    # so the example runs on any worker image; it is examples/show_env.py, verbatim.
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    mounts = {m["name"]: m for m in job.spec.template.volume_mounts}
    for volume in job.spec.template.volumes:
        cm = configmaps[volume["configMap"]["name"]]
        assert cm["data"]["show_env.py"] == (EXAMPLES / "show_env.py").read_text()
        assert job.spec.entrypoint == f"{mounts[volume['name']]['mountPath']}/show_env.py"
    assert job.spec.template.volumes, "the example mounts its script"
    # No namespace in the files: `kubectl apply -n NS -f` decides.
    assert all("namespace" not in d["metadata"] for d in docs)


#: The client's Kubernetes backend (every module of it).
CLIENT_KUBE = REPO_ROOT / "client" / "cerebras_appliance" / "backends" / "kubernetes"
# Every call of the Kubernetes backend reports a refusal through _api_error(what, exc, VERB,
# RESOURCE, namespace), or deletes the job it created (_abandon).
_CLIENT_CALL = re.compile(
    r'_api_error\(\s*(?:f?"[^"]*"|\w+),\s*exc,\s*"(?P<verb>\w+)",\s*(?P<resource>_EJ|"[\w/]+")'
)


def client_api_needs() -> set[tuple[str, str]]:
    """(verb, group/resource) of every call the Python client's Kubernetes backend makes."""
    text = "\n".join(p.read_text() for p in sorted(CLIENT_KUBE.rglob("*.py")))
    needs = set()
    for m in _CLIENT_CALL.finditer(text):
        resource = m.group("resource")
        key = "appliance.dev/executejobs" if resource == "_EJ" else f"/{resource.strip(chr(34))}"
        needs.add((m.group("verb"), key))
    assert "def _abandon" in text and "delete_namespaced_custom_object" in text
    needs.add(("delete", "appliance.dev/executejobs"))
    return needs


def test_user_role_example_grants_exactly_what_the_client_calls() -> None:
    """examples/user-rbac.yaml: every call of the client is granted, nothing else is, and no
    Secret can be read."""
    docs = list(_example_docs("user-rbac.yaml"))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"ServiceAccount", "Role", "RoleBinding"}
    assert all("namespace" not in d["metadata"] for d in docs)  # `kubectl apply -n NS`
    binding = kinds["RoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "appliance-user"
    }  # fmt: skip
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "appliance-user"}]
    assert kinds["Role"]["metadata"]["name"] == kinds["ServiceAccount"]["metadata"]["name"]
    granted = {
        (v, r) for r, verbs in rules_by_resource(kinds["Role"]["rules"]).items() for v in verbs
    }
    needs = client_api_needs()
    assert ("create", "/secrets") in needs and ("get", "/pods/log") in needs, needs
    assert granted == needs, (granted - needs, needs - granted)
    assert not {v for v, r in granted if r == "/secrets"} - {"create"}
    # The Role the client's messages name.
    from cerebras_appliance.backends.kubernetes import USER_ROLE

    assert kinds["Role"]["metadata"]["name"] == USER_ROLE


def test_secret_example_references_its_secret() -> None:
    docs = list(_example_docs("executejob-secret.yaml"))
    secret = next(d for d in docs if d["kind"] == "Secret")
    job = next(d for d in docs if d["kind"] == "ExecuteJob")
    refs = [e["valueFrom"]["secretKeyRef"] for e in job["spec"]["env"] if "valueFrom" in e]
    assert refs, "the example uses a secretKeyRef"
    for ref in refs:
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret.get("stringData", {}) | secret.get("data", {})


def test_submit_example_prints_a_valid_job() -> None:
    import sys

    from cerebras_appliance.contract.api import parse_job

    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "submit_example.py"), "--print-manifest", "-n", "ml"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "APPLIANCE_WORKER_IMAGE"},
    )
    job = parse_job(json.loads(proc.stdout))
    assert job.metadata.namespace == "ml"
    assert job.spec.replicas == 2
    assert job.spec.entrypoint == "/opt/examples/show_env.py"
    assert [e.name for e in job.spec.env] == ["DATA_ROOT", "SHARD_COUNT", "API_TOKEN"]
    assert "LOCAL_ONLY" not in proc.stdout.split('"env"')[1]  # set through os.environ only


def _operator_env(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize("scope", ["cluster", "namespace"])
def test_network_policy_admits_only_the_operator_to_idle_pool_workers(
    helm: Helm, scope: str
) -> None:
    """The operator makes the claim port's NetworkPolicy in each pool's namespace (any
    namespace in cluster scope: defect 6 of issue 21): the chart tells it its namespace and
    the labels of its pods, and grants it networkpolicies wherever it watches."""
    from appliance_operator.pool import network as poolnetwork

    docs = helm.template("--set", f"rbac.scope={scope}")
    assert not by_kind(docs, "NetworkPolicy"), "made by the operator where each pool is"
    env = _operator_env(docs)
    assert env[poolnetwork.NAMESPACE_VAR] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert poolnetwork.EXTRA_FROM_VAR not in env
    source = poolnetwork.source_from_env(
        {**{k: v for k, v in env.items() if isinstance(v, str)}, poolnetwork.NAMESPACE_VAR: "x"}
    )
    assert source is not None
    policy = poolnetwork.claim_policy("warm", "ml", "uid", source)
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    # The labels the policy admits select the operator's pods (and nothing narrower).
    deploy = one(docs, "Deployment")
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert peer["podSelector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]
    assert peer["podSelector"]["matchLabels"].items() <= pod_labels.items()
    role = (
        next(
            r
            for r in by_kind(docs, "ClusterRole")
            if r["metadata"]["name"] == f"{RELEASE}-appliance-operator"
        )
        if scope == "cluster"
        else one(docs, "Role")
    )
    granted = rules_by_resource(role["rules"])
    assert granted["networking.k8s.io/networkpolicies"] == {"get", "create", "update"}

    extra = [{"ipBlock": {"cidr": "10.1.0.0/16"}}]
    with_extra = helm.template(
        "--set-json", f"workerPools.networkPolicy.extraFrom={json.dumps(extra)}"
    )
    assert json.loads(_operator_env(with_extra)[poolnetwork.EXTRA_FROM_VAR]) == extra

    off = helm.template(
        "--set", f"rbac.scope={scope}", "--set", "workerPools.networkPolicy.enabled=false"
    )
    assert poolnetwork.NAMESPACE_VAR not in _operator_env(off)
    assert poolnetwork.POD_LABELS_VAR not in _operator_env(off)
    for r in [*by_kind(off, "ClusterRole"), *by_kind(off, "Role")]:
        assert "networking.k8s.io/networkpolicies" not in rules_by_resource(r["rules"])
