"""appliance_operator.kubeapi: what the Kubernetes client refuses before sending is an ApiError."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes import client

from appliance_operator import desired, kubeapi
from appliance_operator.metrics import Metrics
from cerebras_appliance.contract.api import parse_job
from cerebras_appliance.contract.apistatus import parse_api_status

SECRET_LOOKING = "s3cr3t-value-never-in-a-message"


def _api() -> kubeapi.KubeApi:
    # Nothing listens there: a request that got past the client's own checks fails with
    # ApiError(0); the ones below never get that far.
    config = client.Configuration(host="http://127.0.0.1:9")
    return kubeapi.KubeApi(client.ApiClient(config), Metrics())


def _pod(template: dict[str, Any]) -> dict[str, Any]:
    job = parse_job(
        {
            "metadata": {"name": "demo", "namespace": "ml"},
            "spec": {"image": "img", "entrypoint": "loader.py", "template": template},
        }
    )
    return desired.worker_pod(job, "uid-1", desired.WorkerId(0), "hash")


@pytest.mark.parametrize(
    ("template", "field"),
    [
        # What a user writes in YAML: an unquoted CPU count (the API server takes it; the
        # client's models want text), and a typo in a free-form field the CRD keeps as is.
        ({"resources": {"limits": {"cpu": 2}}}, "spec.containers[0].resources.limits.cpu"),
        ({"affinity": {"nodeAfinity": {}}}, "spec.affinity.nodeAfinity"),
        (
            {"securityContext": {"runAsUser": SECRET_LOOKING}},
            "spec.containers[0].securityContext.runAsUser",
        ),
    ],
)
def test_a_body_the_client_refuses_is_a_422_naming_the_field_without_the_value(
    template: dict[str, Any], field: str
) -> None:
    """Issue 21 (found by tests/integration/test_generated_input.py): the kubernetes client
    (37+) validates a body before sending it and raised pydantic's ValidationError, which
    crashed every reconcile of the job (or the pool) with a traceback and no condition. Now
    it is a 422 like the API server's: the job gets a FailedCreate condition naming it."""
    with pytest.raises(kubeapi.ApiError) as refused:
        _api().create_pod("ml", _pod(template))
    assert refused.value.code == 422
    assert field in refused.value.message, refused.value.message
    assert SECRET_LOOKING not in str(refused.value)


def _refused(exc: client.ApiException) -> kubeapi.ApiError:
    """The ApiError of a create the API server answers with ``exc``."""

    def create_namespaced_secret(*args: Any, **kw: Any) -> None:
        raise exc

    api = _api()
    api.core = SimpleNamespace(create_namespaced_secret=create_namespaced_secret)  # type: ignore[assignment]
    with pytest.raises(kubeapi.ApiError) as error:
        api.create_secret("ml", {"metadata": {"name": "x"}})
    return error.value


def test_a_refusal_is_read_from_the_api_servers_status_else_from_the_http_answer() -> None:
    """One reading of the API server's ``Status`` body (contract.apistatus) for both sides:
    its reason and message when it sent one; the HTTP reason and no message otherwise (a
    proxy's error page is not JSON)."""
    status = (
        '{"kind": "Status", "reason": "AlreadyExists", "message": "secrets \\"x\\" exists",'
        ' "details": {"name": "x", "kind": "secrets"}}'
    )
    conflict = client.ApiException(status=409, reason="Conflict")
    conflict.body = status
    error = _refused(conflict)
    assert (error.code, error.reason, error.message) == (409, "AlreadyExists", 'secrets "x" exists')
    page = client.ApiException(status=502, reason="Bad Gateway")
    page.body = b"<html>bad gateway</html>"
    error = _refused(page)
    assert (error.code, error.reason, error.message) == (502, "Bad Gateway", "")
    parsed = parse_api_status(404, "Not Found", status.encode())
    assert parsed.details == {"name": "x", "kind": "secrets"}
    assert parse_api_status(None, None, "[1, 2]") == parse_api_status(0, "", None)
