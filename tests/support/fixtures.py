"""The fixtures and the report hook the integration and the e2e suites both offer, written once.

Each conftest imports them by name: pytest finds a conftest's fixtures and hooks among its
attributes, and ``pytest_plugins`` is honoured only in the root conftest (which would offer them
to the unit tests too). ``namespace`` asks for ``cluster``, which each conftest defines its own
way: the local control plane (session) or the kind cluster (package).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from appliance_operator.testing import OperatorProcess
from support.cluster import Cluster, WaitUntil, dns_label, wait_until

#: Lines of an operator's log a failed test's report shows (its tmp dir may be gone by then).
REPORT_LOG_LINES = 150


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed test that ran an operator reports where the operator's threads were (a stack
    dump, if it still runs) and the end of its log (also when it has exited)."""
    report = yield
    if report.when == "call" and report.failed:
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, OperatorProcess):
                value.dump_stacks()  # nothing to do for one that is not running
                tail = "\n".join(value.log().splitlines()[-REPORT_LOG_LINES:])
                report.sections.append((f"operator log ({value.log_path.name}, end)", tail))
    return report


@pytest.fixture(name="wait_until")
def wait_until_fixture() -> WaitUntil:
    """``wait_until(probe, timeout=60, interval=0.2, what="...")``: poll until probe is truthy."""
    return wait_until


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test (with its default ServiceAccount), deleted afterwards."""
    from kubernetes import client

    core = client.CoreV1Api(cluster.api_client)
    name = f"it-{dns_label(request.node.name, 40)}-{uuid.uuid4().hex[:6]}"
    core.create_namespace(
        client.V1Namespace(
            metadata=client.V1ObjectMeta(name=name, labels={"appliance.dev/test": "integration"})
        )
    )
    # Pods are refused until the ServiceAccount controller has made "default".
    wait_until(
        lambda: core.read_namespaced_service_account("default", name),
        timeout=30,
        what=f"ServiceAccount {name}/default",
    )
    try:
        yield name
    finally:
        core.delete_namespace(name, propagation_policy="Background")
