"""Fixtures for the integration tests: a real local Kubernetes control plane (hack/cluster).

The session-scoped ``cluster`` fixture runs ``hack/cluster/up.sh`` with kwok fake nodes. When a
cluster is already up (``make cluster-up``) it is reused and left running; a cluster the fixture
started itself is stopped with ``hack/cluster/down.sh`` at the end of the session.

Fake (kwok) nodes carry the label ``type=kwok`` and the taint
``kwok.x-k8s.io/node=fake:NoSchedule``: a pod meant to run there needs ``cluster.kwok_pod_spec``
(nodeSelector + toleration) merged into its spec.

When the cluster binaries are not built and cannot be (no Go toolchain), the tests are skipped,
except under ``CI=true``, where that is an error.

The ``Cluster`` handle and the helpers are in tests/support/cluster.py; ``wait_until``,
``namespace`` and the hook that adds an operator's log to a failed test's report are in
tests/support/fixtures.py (the e2e tests offer the same ones).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cluster import (
    CLUSTER_SCRIPTS,
    KUBECONFIG,
    KWOK_NODES,
    Cluster,
    already_up,
    binaries_available,
    cluster_bindir,
    run_script,
    unavailable,
)
from support.fixtures import namespace as namespace
from support.fixtures import pytest_runtest_makereport as pytest_runtest_makereport
from support.fixtures import wait_until_fixture as wait_until_fixture


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: needs the local Kubernetes control plane (hack/cluster)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    for tool in ("bash", "openssl", "curl", "python3", "setsid", "flock"):
        if shutil.which(tool) is None:
            unavailable(f"`{tool}` is not on PATH")
    bindir = cluster_bindir()
    if not binaries_available():
        unavailable(
            "the cluster binaries are not built and no Go toolchain was found to build them"
        )

    was_up = already_up(bindir)
    # up.sh is idempotent: on a healthy cluster it only adds the kwok nodes if missing.
    up = run_script(CLUSTER_SCRIPTS / "up.sh", NODES="kwok", KWOK_NODES=str(KWOK_NODES))
    if up.returncode != 0:
        pytest.fail(f"hack/cluster/up.sh failed (exit {up.returncode}); see its output above")

    from kubernetes import config as k8s_config

    api_client = k8s_config.new_client_from_config(config_file=str(KUBECONFIG))
    try:
        yield Cluster(
            kubeconfig=str(KUBECONFIG),
            bindir=bindir,
            started_here=not was_up,
            api_client=api_client,
            helm_home=str(tmp_path_factory.mktemp("helm")),
        )
    finally:
        api_client.close()
        if not was_up:
            run_script(CLUSTER_SCRIPTS / "down.sh")
