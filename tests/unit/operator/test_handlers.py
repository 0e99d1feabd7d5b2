"""The kopf wiring: settings, configuration, command line, the memo (no cluster)."""

from __future__ import annotations

import logging
from typing import Any

import kopf
import pytest

from appliance_operator.__main__ import parse_args
from appliance_operator.handlers import configure_settings
from appliance_operator.runtime.cache import execute_jobs, worker_pods
from appliance_operator.runtime.config import Config
from appliance_operator.scope import namespace_scope


def resource(group: str, version: str, plural: str) -> kopf.Resource:
    return kopf.Resource(
        group=group,
        version=version,
        plural=plural,
        kind=plural.title(),
        singular=plural[:-1],
        namespaced=True,
        verbs=["list", "watch"],
    )


def test_settings() -> None:
    settings = kopf.OperatorSettings()
    configure_settings(settings)
    assert settings.peering.standalone is True
    assert settings.posting.level == logging.WARNING
    pods = resource("", "v1", "pods")
    jobs = resource("appliance.dev", "v1alpha1", "executejobs")
    # Only the operator's pods are watched (server-side); jobs are not filtered.
    assert list(settings.watching.label_selectors.collect(pods)) == [
        "app.kubernetes.io/managed-by=appliance-operator"
    ]
    assert list(settings.watching.label_selectors.collect(jobs)) == []
    assert settings.watching.server_timeout is not None
    assert settings.watching.client_timeout is not None
    assert settings.watching.client_timeout > settings.watching.server_timeout


def worker_pod() -> dict[str, Any]:
    """Worker 0 of job ``demo``, as the API server returns it (the fields the index reads)."""
    return {
        "metadata": {
            "name": "demo-worker-0",
            "uid": "u",
            "labels": {
                "app.kubernetes.io/managed-by": "appliance-operator",
                "appliance.dev/job-name": "demo",
                "appliance.dev/worker-index": "0",
            },
        },
        "status": {"phase": "Running"},
    }


def test_indexers_reduce_objects_to_what_the_loop_needs() -> None:
    pod = worker_pod()
    (key, view), *_ = worker_pods(kopf.Body(pod), namespace="ml").items()
    assert key == ("ml", "demo") and view.name == "demo-worker-0" and view.attempt == 0
    job = {
        "apiVersion": "appliance.dev/v1alpha1",
        "kind": "ExecuteJob",
        "metadata": {"name": "demo", "namespace": "ml", "managedFields": [{"big": "x"}]},
        "spec": {"image": "i", "entrypoint": "a.py"},
    }
    record = execute_jobs(kopf.Body(job), namespace="ml", name="demo")[("ml", "demo")]
    assert "managedFields" not in record["metadata"]
    assert record["spec"] == job["spec"] and record["spec"] is not job["spec"]


def test_objects_of_namespaces_not_served_are_dropped() -> None:
    """Watched cluster-wide for a glob or exclusion: other namespaces' objects are not indexed
    (the event handlers ask the runtime's same ``serves`` before enqueueing)."""
    scope = namespace_scope(["!kube-*"])
    pod = worker_pod()
    job = {"metadata": {"name": "demo"}, "spec": {"image": "i", "entrypoint": "a.py"}}
    assert worker_pods(kopf.Body(pod), namespace="kube-system", scope=scope) == {}
    assert execute_jobs(kopf.Body(job), namespace="kube-system", name="demo", scope=scope) == {}
    assert list(worker_pods(kopf.Body(pod), namespace="ml", scope=scope)) == [("ml", "demo")]
    assert list(execute_jobs(kopf.Body(job), namespace="ml", name="demo", scope=scope)) == [
        ("ml", "demo")
    ]


def test_config_from_environment() -> None:
    config = Config.from_env(
        {"APPLIANCE_OPERATOR_WORKERS": "3", "APPLIANCE_OPERATOR_METRICS_PORT": "0"}
    )
    assert config.workers == 3 and config.metrics_port == 0
    assert config.resync_seconds == Config().resync_seconds


def test_command_line() -> None:
    args = parse_args(["-n", "ml", "--namespace", "ml-dev", "--metrics-port", "9100"])
    assert args.namespace == ["ml", "ml-dev"] and not args.all_namespaces
    assert args.metrics_port == 9100
    assert parse_args([]).namespace == []  # default: every namespace
    assert parse_args(["-n", "!kube-*"]).scope.clusterwide  # kopf gets no glob (scope.py)
    with pytest.raises(SystemExit):
        parse_args(["-n", "ml,,x"])
    with pytest.raises(SystemExit):
        parse_args(["-n", "ml", "--all-namespaces"])
    with pytest.raises(SystemExit):
        parse_args(["--workers", "0"])


def test_config_from_env_ignores_service_link_variables() -> None:
    injected = {"APPLIANCE_OPERATOR_METRICS_PORT": "tcp://10.0.0.7:8081"}
    assert Config.from_env(injected).metrics_port == Config().metrics_port
    assert Config.from_env({"APPLIANCE_OPERATOR_WORKERS": "3"}).workers == 3
