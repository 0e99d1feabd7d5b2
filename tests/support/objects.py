"""ExecuteJob bodies as the API server returns them, for the operator's unit tests.

One builder instead of one per test module: a job ``demo`` in namespace ``ml`` with the
metadata the server fills in (uid, resourceVersion, generation, creationTimestamp).
"""

from __future__ import annotations

from typing import Any

from cerebras_appliance.contract.names import API_VERSION

JOB_UID = "uid-job-1"
CREATED = "2026-03-01T12:00:00Z"


def job_body(
    *,
    status: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """The job ``ml/demo``: 2 replicas of ``loader.py`` in ``img`` unless ``spec`` says
    otherwise (its keys are the spec's, camelCase as on the wire)."""
    metadata: dict[str, Any] = {
        "name": "demo",
        "namespace": "ml",
        "uid": JOB_UID,
        "resourceVersion": "10",
        "generation": 1,
        "creationTimestamp": CREATED,
    }
    if annotations is not None:
        metadata["annotations"] = annotations
    body: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "ExecuteJob",
        "metadata": metadata,
        "spec": {"replicas": 2, "image": "img", "entrypoint": "loader.py", **spec},
    }
    if status is not None:
        body["status"] = status
    return body
