"""Where submit() takes its backend, namespace and worker image from, and the errors it gives
when the Kubernetes backend cannot work (issue 14).

The refusals are the API server's own responses, byte for byte where it matters: a 403 is the
``Status`` JSON RBAC writes; a request for a resource whose CRD is not installed gets the plain
text ``404 page not found`` (checked against kube-apiserver v1.33 on the kind cluster); a
missing namespace is a ``Status`` with ``details.kind: namespaces``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

import cerebras_appliance as app
from cerebras_appliance import settings
from cerebras_appliance.backends.kubernetes import (
    ForbiddenError,
    KubernetesError,
    KubernetesJob,
    NoCredentialsError,
    NotInstalledError,
)
from cerebras_appliance.backends.kubernetes import config as kube
from cerebras_appliance.contract.api import ExecuteJobStatus, InvalidJobError
from cerebras_appliance.environment import ApplianceEnviron
from cerebras_appliance.handle import base as handle
from cerebras_appliance.jobs import build_job
from cerebras_appliance.settings import (
    BackendFallbackWarning,
    ConfigurationError,
    Setting,
    backend_setting,
    decide_auto,
    image_setting,
    namespace_setting,
)


@pytest.fixture(autouse=True)
def no_config_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No configuration from the machine running the tests: no variables, no pod, no
    kubeconfig context."""
    for name in [*settings.CONFIG_VARS, "KUBERNETES_SERVICE_HOST"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(settings, "SERVICE_ACCOUNT_DIR", tmp_path / "no-service-account")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    yield


def pod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, namespace: str = "team-a") -> Path:
    """Make this look like a pod with a service account (token and namespace files)."""
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text("token")
    (sa / "namespace").write_text(namespace)
    monkeypatch.setattr(settings, "SERVICE_ACCOUNT_DIR", sa)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    return sa


# -- precedence ------------------------------------------------------------------------------


def test_backend_argument_then_variable_then_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    assert backend_setting(None) == Setting("auto", "the default")
    monkeypatch.setenv("APPLIANCE_BACKEND", "kubernetes")
    assert backend_setting(None) == Setting("kubernetes", "$APPLIANCE_BACKEND")
    assert backend_setting("local") == Setting("local", "the backend argument")
    monkeypatch.setenv("APPLIANCE_BACKEND", " ")  # empty counts as unset
    assert backend_setting(None).value == "auto"


def test_a_bad_backend_names_where_it_came_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_BACKEND", "kubernets")
    with pytest.raises(ConfigurationError, match=r"'kubernets' from \$APPLIANCE_BACKEND is not"):
        backend_setting(None)
    with pytest.raises(ValueError, match="'moon' from the backend argument"):
        app.submit("x.py", backend="moon")  # type: ignore[arg-type]


def test_namespace_argument_variable_pod_kubeconfig_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from_kubeconfig = lambda: "from-context"  # noqa: E731
    assert namespace_setting(None) == Setting("default", "the default")
    assert namespace_setting(None, kubeconfig_namespace=from_kubeconfig).value == "from-context"
    pod(tmp_path, monkeypatch, "pods-own")
    assert namespace_setting(None, kubeconfig_namespace=from_kubeconfig) == Setting(
        "pods-own", "the pod's own namespace"
    )
    monkeypatch.setenv("APPLIANCE_NAMESPACE", "from-env")
    assert namespace_setting(None).value == "from-env"
    assert namespace_setting("from-arg").value == "from-arg"


def test_kubeconfig_context_namespace(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [
                    {"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "ctx-ns"}}
                ],
                "current-context": "x",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    assert kube.namespace_setting() == Setting("ctx-ns", "the kubeconfig context's namespace")
    assert kube.default_namespace() == "ctx-ns"


def test_image_argument_then_variable_then_default_read_at_call_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert image_setting(None).value == settings.DEFAULT_WORKER_IMAGE
    assert build_job("x.py", 1, []).spec.image == settings.DEFAULT_WORKER_IMAGE
    monkeypatch.setenv("APPLIANCE_WORKER_IMAGE", "reg/worker:2")  # after import
    assert build_job("x.py", 1, []).spec.image == "reg/worker:2"
    assert build_job("x.py", 1, [], image="reg/worker:3").spec.image == "reg/worker:3"


def test_auto_outside_a_pod_is_local_and_asks_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")  # but no token mounted
    asked: list[str] = []

    def may_create(ns: str) -> tuple[bool, str]:
        asked.append(ns)
        return True, ""

    chosen = decide_auto(lambda: Setting("ns", "x"), may_create)
    assert chosen.value == "local"
    assert "not in a pod" in chosen.source
    assert asked == []


def test_auto_in_a_pod_asks_and_follows_the_answer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pod(tmp_path, monkeypatch)
    ns = Setting("team-a", "the pod's own namespace")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an allowed pod warns of nothing
        assert decide_auto(lambda: ns, lambda n: (n == "team-a", "")).value == "kubernetes"
    with pytest.warns(BackendFallbackWarning, match="runs the workers locally, in this pod: nope"):
        chosen = decide_auto(lambda: ns, lambda n: (False, "nope"))
    assert chosen.value == "local"


# -- submit() wiring ------------------------------------------------------------------------


class CreatedError(Exception):
    """Stands in for the cluster: KubernetesJob.create was reached with this job."""


@pytest.fixture
def created(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    jobs: list[Any] = []

    def create(cls: Any, job: Any, snapshot: Any, **kw: Any) -> Any:
        jobs.append((job, snapshot, kw))
        raise CreatedError

    monkeypatch.setattr(KubernetesJob, "create", classmethod(create))
    return jobs


def test_submit_takes_backend_namespace_image_from_the_pod(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, created: list[Any]
) -> None:
    pod(tmp_path, monkeypatch, "team-a")
    monkeypatch.setenv("APPLIANCE_WORKER_IMAGE", "reg/worker:9")
    api = client.ApiClient()
    monkeypatch.setattr(kube, "shared_api_client", lambda: api)
    asked: list[str] = []
    monkeypatch.setattr(
        kube, "may_create_executejobs", lambda ns, c: (asked.append(ns), (c is api, ""))[1]
    )
    env = ApplianceEnviron()
    env["DATA_ROOT"] = "/d"
    with pytest.raises(CreatedError):
        app.submit("x.py", environ=env)
    job, snapshot, kw = created[0]
    assert asked == ["team-a"]
    assert job.metadata.namespace == "team-a"
    assert job.spec.image == "reg/worker:9"
    assert "api_client" not in kw  # the job uses the process's client, the review's
    assert snapshot == [("DATA_ROOT", "/d")]


def test_configuration_variables_are_read_never_sent(
    monkeypatch: pytest.MonkeyPatch, created: list[Any]
) -> None:
    env = ApplianceEnviron()
    env["APPLIANCE_BACKEND"] = "kubernetes"  # through appliance_environ: tracked, and read
    env["APPLIANCE_NAMESPACE"] = "ml"
    env["APPLIANCE_WORKER_IMAGE"] = "reg/worker:1"
    env["DATA_ROOT"] = "/d"
    assert env.is_tracked("APPLIANCE_BACKEND")
    with pytest.raises(CreatedError):
        app.submit("x.py", environ=env)
    job, snapshot, _ = created[0]
    assert (job.metadata.namespace, job.spec.image) == ("ml", "reg/worker:1")
    assert [e.name for e in job.spec.env] == ["DATA_ROOT"]
    assert snapshot == [("DATA_ROOT", "/d")]


def test_other_appliance_names_tracked_are_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    env = ApplianceEnviron()
    env["APPLIANCE_ENV_FILE"] = "/x"  # the worker's plumbing: not the user's to send
    with pytest.raises(InvalidJobError, match="APPLIANCE_ENV_FILE") as caught:
        app.submit("x.py", backend="local", environ=env)
    assert "APPLIANCE_" in str(caught.value)


def test_submit_errors_carry_the_chosen_backend_and_namespace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("APPLIANCE_BACKEND", "kubernetes")
    monkeypatch.setenv("APPLIANCE_NAMESPACE", "ml")
    with pytest.raises(NoCredentialsError) as caught:
        app.submit("x.py", environ=ApplianceEnviron())
    assert caught.value.__notes__ == [
        "backend 'kubernetes' from $APPLIANCE_BACKEND; namespace 'ml' ($APPLIANCE_NAMESPACE)"
    ]


# -- the errors -----------------------------------------------------------------------------


def test_no_credentials_says_what_was_tried(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(NoCredentialsError) as caught:
        kube.new_api_client()
    text = str(caught.value)
    assert "not in a pod ($KUBERNETES_SERVICE_HOST is unset)" in text
    assert f"$KUBECONFIG={tmp_path / 'no-kubeconfig'}" in text
    assert "backend='local' (or APPLIANCE_BACKEND=local)" in text

    monkeypatch.delenv("KUBECONFIG")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")  # a pod without a token
    with pytest.raises(NoCredentialsError) as caught:
        kube.new_api_client()
    text = str(caught.value)
    assert "in a pod, but no service account token is mounted" in text
    assert "automountServiceAccountToken: false" in text
    assert "~/.kube/config ($KUBECONFIG is unset)" in text


def forbidden(verb: str, resource: str, group: str = "appliance.dev") -> client.ApiException:
    """RBAC's refusal, as kube-apiserver writes it."""
    subject = 'User "system:serviceaccount:ml:appliance-user"'
    in_group = f' in API group "{group}"' if group else ""
    full = f"{resource}.{group}" if group else resource
    exc = client.ApiException(status=403, reason="Forbidden")
    exc.body = json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": f"{full} is forbidden: {subject} cannot {verb} resource "
            f'"{resource}"{in_group} in the namespace "ml"',
            "reason": "Forbidden",
            "details": {"group": group, "kind": resource},
            "code": 403,
        }
    )
    return exc


def crd_missing() -> client.ApiException:
    exc = client.ApiException(status=404, reason="Not Found")
    exc.body = "404 page not found\n"
    return exc


def namespace_missing() -> client.ApiException:
    exc = client.ApiException(status=404, reason="Not Found")
    exc.body = json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": 'namespaces "ml" not found',
            "reason": "NotFound",
            "details": {"name": "ml", "kind": "namespaces"},
            "code": 404,
        }
    )
    return exc


def refuse(monkeypatch: pytest.MonkeyPatch, cls: type, method: str, exc: Exception) -> None:
    def call(_self: Any, *args: Any, **kwargs: Any) -> Any:
        raise exc

    monkeypatch.setattr(cls, method, call)


def new_job() -> KubernetesJob:
    job = build_job("x.py", 1, [("DATA_ROOT", "/d")], name="demo", namespace="ml")
    return KubernetesJob.create(job, [("DATA_ROOT", "/d")], api_client=client.ApiClient())


def test_forbidden_names_the_verb_resource_and_role(monkeypatch: pytest.MonkeyPatch) -> None:
    refuse(
        monkeypatch,
        client.CustomObjectsApi,
        "create_namespaced_custom_object",
        forbidden("create", "executejobs"),
    )
    with pytest.raises(ForbiddenError) as caught:
        new_job()
    error = caught.value
    assert (error.verb, error.resource, error.namespace) == (
        "create",
        "executejobs.appliance.dev",
        "ml",
    )
    text = str(error)
    assert text.startswith("creating ExecuteJob ml/demo: executejobs.appliance.dev is forbidden")
    assert "The client needs 'create executejobs.appliance.dev'" in text
    assert "in namespace 'ml'" in text
    assert "the Role 'appliance-user' of examples/user-rbac.yaml" in text


def test_forbidden_secret_create_deletes_the_job_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    created = {"metadata": {"uid": "u1"}}

    class Response:
        """What the client uses of urllib3's response to a ``_preload_content=False`` call."""

        data = json.dumps(created).encode()

        def drain_conn(self) -> None:
            """No connection to give back."""

        def release_conn(self) -> None:
            """No connection to give back."""

    monkeypatch.setattr(
        client.CustomObjectsApi, "create_namespaced_custom_object", lambda *a, **k: Response()
    )
    deleted: list[str] = []
    monkeypatch.setattr(
        client.CustomObjectsApi,
        "delete_namespaced_custom_object",
        lambda _s, *a, **k: (deleted.append(a[4]), Response())[1],
    )
    refusal = forbidden("create", "secrets", "")
    refuse(monkeypatch, client.CoreV1Api, "create_namespaced_secret", refusal)
    with pytest.raises(ForbiddenError) as caught:
        new_job()
    assert (caught.value.verb, caught.value.resource) == ("create", "secrets")
    assert "The client needs 'create secrets'" in str(caught.value)
    assert str(caught.value).endswith("The job was deleted")
    assert deleted == ["demo"]


@pytest.mark.parametrize(
    ("method", "cls", "call", "verb", "resource"),
    [
        ("get", client.CustomObjectsApi, "get_namespaced_custom_object", "get",
         "executejobs.appliance.dev"),
        ("delete", client.CustomObjectsApi, "delete_namespaced_custom_object", "delete",
         "executejobs.appliance.dev"),
        ("suspend", client.CustomObjectsApi, "patch_namespaced_custom_object", "patch",
         "executejobs.appliance.dev"),
        ("pods", client.CoreV1Api, "list_namespaced_pod", "list", "pods"),
        ("log", client.CoreV1Api, "read_namespaced_pod_log", "get", "pods/log"),
    ],
)  # fmt: skip
def test_forbidden_reads_name_their_verb_and_resource(
    monkeypatch: pytest.MonkeyPatch, method: str, cls: type, call: str, verb: str, resource: str
) -> None:
    name = resource.split(".", maxsplit=1)[0]
    group = "appliance.dev" if "." in resource else ""
    refuse(monkeypatch, cls, call, forbidden(verb, name, group))
    job = KubernetesJob("demo", "ml", {}, client.ApiClient())
    actions = {
        "get": job.status,
        "delete": job.delete,
        "suspend": job.suspend,
        "pods": job.logs,
        "log": lambda: job._read_log("demo-worker-0", None),
    }
    with pytest.raises(ForbiddenError) as caught:
        actions[method]()
    assert (caught.value.verb, caught.value.resource) == (verb, resource)
    assert f"The client needs '{verb} {resource}'" in str(caught.value)


class Patched:
    """Stands in for the API server's ExecuteJob: records each patch, answers with the object
    as the operator last wrote its status."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, status: dict[str, Any]) -> None:
        self.patches: list[tuple[Any, ...]] = []
        self.status = status
        self.generation: int | None = None  # the object's after the patch (None: unset)
        monkeypatch.setattr(
            client.CustomObjectsApi,
            "patch_namespaced_custom_object",
            lambda _api, *args, **kwargs: self.call(*args, **kwargs),
        )

    def call(self, *args: Any, **kwargs: Any) -> Any:
        self.patches.append(args)
        metadata: dict[str, Any] = {"name": args[4]}
        if self.generation is not None:
            metadata["generation"] = self.generation
        body = {"metadata": metadata, "spec": args[5]["spec"], "status": self.status}

        class Response:
            data = json.dumps(body).encode()

        return Response()


def test_suspend_resume_and_scale_patch_the_executejobs_spec_on_kubernetes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = Patched(monkeypatch, {"phase": "Running", "replicas": 2, "observedGeneration": 3})
    job = KubernetesJob("demo", "ml", {"spec": {"replicas": 2}}, client.ApiClient())
    assert job.suspend().phase == "Running"  # the operator acts afterwards
    job.resume()
    status = job.scale(4)
    assert [(a[:5], a[5]) for a in api.patches] == [
        (("appliance.dev", "v1alpha1", "ml", "executejobs", "demo"), {"spec": {"suspend": True}}),
        (("appliance.dev", "v1alpha1", "ml", "executejobs", "demo"), {"spec": {"suspend": False}}),
        (("appliance.dev", "v1alpha1", "ml", "executejobs", "demo"), {"spec": {"replicas": 4}}),
    ]
    assert status.replicas == 2 and status.observed_generation == 3
    assert job.manifest["spec"] == {"replicas": 4, "suspend": False}


def test_a_spec_change_returns_once_the_operator_observed_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = Patched(monkeypatch, {"phase": "Suspended", "observedGeneration": 3})
    api.generation = 4
    job = KubernetesJob("demo", "ml", {}, client.ApiClient())
    written = iter(
        [
            ExecuteJobStatus(phase="Suspended", observed_generation=3),  # not yet
            ExecuteJobStatus(phase="Pending", observed_generation=4),  # the operator's answer
        ]
    )
    seen: list[float] = []

    @contextlib.contextmanager
    def observer() -> Iterator[Any]:
        def observe(seconds: float) -> ExecuteJobStatus:
            seen.append(seconds)
            return next(written)

        yield observe

    monkeypatch.setattr(job, "_observer", observer)
    status = job.resume()
    assert (status.phase, status.observed_generation) == ("Pending", 4)
    assert len(seen) == 2


def test_scaling_beyond_the_crds_bounds_is_an_invalid_job_naming_the_field(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exc = client.ApiException(status=422, reason="Unprocessable Entity")
    exc.body = json.dumps(
        {
            "kind": "Status",
            "message": 'ExecuteJob.appliance.dev "demo" is invalid: spec.replicas: Invalid '
            "value: 0: spec.replicas in body should be greater than or equal to 1",
            "reason": "Invalid",
            "code": 422,
        }
    )
    refuse(monkeypatch, client.CustomObjectsApi, "patch_namespaced_custom_object", exc)
    job = KubernetesJob("demo", "ml", {}, client.ApiClient())
    with pytest.raises(InvalidJobError, match=r"spec\.replicas in body should be greater than"):
        job.scale(0)


def test_suspending_a_job_that_does_not_exist_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    exc = client.ApiException(status=404, reason="Not Found")
    exc.body = json.dumps(
        {
            "kind": "Status",
            "message": 'executejobs.appliance.dev "demo" not found',
            "reason": "NotFound",
            "details": {"name": "demo", "group": "appliance.dev", "kind": "executejobs"},
            "code": 404,
        }
    )
    refuse(monkeypatch, client.CustomObjectsApi, "patch_namespaced_custom_object", exc)
    job = KubernetesJob("demo", "ml", {}, client.ApiClient())
    with pytest.raises(KubernetesError, match="ExecuteJob ml/demo does not exist"):
        job.suspend()


def test_both_backends_implement_the_whole_backend_interface() -> None:
    from cerebras_appliance.backends.local.job import LocalJob
    from cerebras_appliance.handle import JobBackend

    declared = JobBackend.__abstractmethods__
    assert {"status", "suspend", "resume", "scale", "delete", "_follow_attempt"} <= declared
    assert not KubernetesJob.__abstractmethods__
    assert not LocalJob.__abstractmethods__


def test_crd_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    refuse(monkeypatch, client.CustomObjectsApi, "create_namespaced_custom_object", crd_missing())
    with pytest.raises(NotInstalledError) as caught:
        new_job()
    text = str(caught.value)
    assert "this cluster has no ExecuteJob API (appliance.dev/v1alpha1" in text
    assert "the API server answered: 404 Not Found" in text
    assert "CustomResourceDefinition executejobs.appliance.dev is not installed" in text
    assert "charts/appliance-operator" in text
    # Reattaching says the same (not "no such job").
    refuse(monkeypatch, client.CustomObjectsApi, "get_namespaced_custom_object", crd_missing())
    monkeypatch.setattr(kube, "shared_api_client", client.ApiClient)
    with pytest.raises(NotInstalledError):
        app.get_job("demo", "ml", backend="kubernetes")


def test_missing_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    refuse(
        monkeypatch, client.CustomObjectsApi, "create_namespaced_custom_object", namespace_missing()
    )
    with pytest.raises(KubernetesError, match="namespace 'ml' does not exist") as caught:
        new_job()
    assert not isinstance(caught.value, NotInstalledError)
    assert "APPLIANCE_NAMESPACE" in str(caught.value)


def test_a_deleted_job_is_still_not_found(monkeypatch: pytest.MonkeyPatch) -> None:
    exc = client.ApiException(status=404, reason="Not Found")
    exc.body = json.dumps(
        {
            "kind": "Status",
            "message": 'executejobs.appliance.dev "demo" not found',
            "reason": "NotFound",
            "details": {"name": "demo", "group": "appliance.dev", "kind": "executejobs"},
            "code": 404,
        }
    )
    refuse(monkeypatch, client.CustomObjectsApi, "get_namespaced_custom_object", exc)
    monkeypatch.setattr(kube, "shared_api_client", client.ApiClient)
    with pytest.raises(app.JobNotFoundError, match="ExecuteJob ml/demo does not exist"):
        app.get_job("demo", "ml", backend="kubernetes")


def test_access_review_denied_names_the_role(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[Any] = []

    def review(_self: Any, body: Any, **kw: Any) -> Any:
        sent.append(body)
        return client.V1SelfSubjectAccessReview(
            spec=body.spec, status=client.V1SubjectAccessReviewStatus(allowed=False)
        )

    monkeypatch.setattr(client.AuthorizationV1Api, "create_self_subject_access_review", review)
    allowed, why = kube.may_create_executejobs("ml", client.ApiClient())
    attrs = sent[0].spec.resource_attributes
    assert (attrs.verb, attrs.group, attrs.resource, attrs.namespace) == (
        "create", "appliance.dev", "executejobs", "ml"
    )  # fmt: skip
    assert not allowed
    assert "may not create executejobs.appliance.dev in namespace 'ml'" in why
    assert "appliance-user" in why


# -- the operator not running --------------------------------------------------------------


def silent_job(monkeypatch: pytest.MonkeyPatch, status: ExecuteJobStatus) -> KubernetesJob:
    job = KubernetesJob("demo", "ml", {}, client.ApiClient())

    class Observer:
        def __enter__(self) -> Any:
            def observe(seconds: float) -> ExecuteJobStatus:
                import time

                time.sleep(min(seconds, 0.05))  # a watch that brings nothing new
                return status

            return observe

        def __exit__(self, *exc: object) -> None:
            pass

    monkeypatch.setattr(job, "_observer", Observer)
    monkeypatch.setattr(handle, "NO_STATUS_NOTICE_S", 0.2)
    return job


def test_no_status_from_the_operator_is_said_not_waited_on_silently(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = silent_job(monkeypatch, ExecuteJobStatus())  # nothing written: observedGeneration unset
    out = io.StringIO()
    with pytest.raises(app.JobTimeoutError) as caught:
        job.wait(timeout=0.5, progress=out)
    notice = [line for line in out.getvalue().splitlines() if "still waiting" in line]
    assert len(notice) == 1, out.getvalue()
    assert "the operator has written no status for job ml/demo" in notice[0]
    assert "does not watch namespace 'ml'" in notice[0]
    assert "the operator has written no status" in str(caught.value)


def test_a_status_written_brings_no_operator_notice(monkeypatch: pytest.MonkeyPatch) -> None:
    job = silent_job(monkeypatch, ExecuteJobStatus(observed_generation=1))
    out = io.StringIO()
    with pytest.raises(app.JobTimeoutError) as caught:
        job.wait(timeout=0.5, progress=out)
    assert "operator" not in out.getvalue()
    assert "operator" not in str(caught.value)


def test_a_local_submit_outside_a_pod_imports_no_kubernetes(tmp_path: Path) -> None:
    """The default backend decides "auto" without the kubernetes package outside a pod."""
    import subprocess
    import sys

    script = tmp_path / "w.py"
    script.write_text("print('hi')\n")
    code = (
        "import sys, cerebras_appliance as app\n"
        f"job = app.submit({str(script)!r})\n"
        "print(type(job).__name__, job.wait(timeout=60, progress=False).phase)\n"
        "job.delete()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'kubernetes'))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["LocalJob Succeeded", "[]"], proc.stdout


def test_one_api_client_per_process_until_the_kubeconfig_changes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config_file = tmp_path / "config"
    config_file.write_text("v1")
    monkeypatch.setenv("KUBECONFIG", str(config_file))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(kube, "_shared_clients", {})
    made: list[Any] = []
    monkeypatch.setattr(kube, "new_api_client", lambda: made.append(object()) or made[-1])
    first = kube.shared_api_client()
    assert kube.shared_api_client() is first and len(made) == 1  # connections reused
    os.utime(config_file, (1, 1))  # the kubeconfig changed (a new context, a new token)
    assert kube.shared_api_client() is not first and len(made) == 2
