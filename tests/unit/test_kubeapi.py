"""appliance_operator.kubeapi: what the Kubernetes client refuses before sending is an ApiError."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from appliance_operator import desired, kubeapi
from appliance_operator.metrics import Metrics
from cerebras_appliance.contract.api import parse_job

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
