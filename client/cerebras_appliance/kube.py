"""The Kubernetes backend: create an ExecuteJob for the operator and follow it."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from cerebras_appliance.api import ExecuteJob, ExecuteJobStatus


class KubernetesJob:
    """Handle on an ExecuteJob in a cluster."""

    name: str
    manifest: dict[str, Any]

    @classmethod
    def create(
        cls,
        job: ExecuteJob,
        snapshot: Sequence[tuple[str, str]],
        *,
        sensitive: Collection[str] = (),
    ) -> KubernetesJob:
        raise NotImplementedError(
            "backend='kubernetes' is not available yet; use job.to_manifest() with kubectl"
        )

    def status(self) -> ExecuteJobStatus:
        raise NotImplementedError

    def wait(self, timeout: float | None = None) -> ExecuteJobStatus:
        raise NotImplementedError

    def logs(self) -> dict[str, str]:
        raise NotImplementedError

    def delete(self) -> None:
        raise NotImplementedError
