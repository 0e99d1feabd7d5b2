"""One ExecuteJob in the API: where it lives and the plain requests on it (read, patch,
delete), shared by the create protocol, the status feed, the log readers and the handle.

Responses are read with ``_preload_content=False`` and parsed here (:func:`raw`): the
library's own deserialisation of a custom object costs more than the request.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client

from cerebras_appliance.backends.kubernetes.errors import _EJ, _api_error, is_missing_object
from cerebras_appliance.contract.api import PLURAL, ExecuteJobStatus
from cerebras_appliance.contract.names import GROUP, VERSION

#: Seconds before a single API request (not a watch or a followed log) is given up.
REQUEST_TIMEOUT_S = 30


def raw(response: Any) -> dict[str, Any]:
    """The JSON of a response made with ``_preload_content=False`` (read whole, which gives
    its connection back to the pool)."""
    data = response.data
    result: dict[str, Any] = json.loads(data) if data else {}
    return result


def drained(response: Any) -> None:
    """A response whose body is not needed: read it anyway, or its connection stays taken
    and the next request opens (and TLS-handshakes) a new one."""
    response.drain_conn()
    response.release_conn()


def status_of(obj: Mapping[str, Any]) -> ExecuteJobStatus:
    """The status of an ExecuteJob object as read (phase Pending before the operator wrote
    one)."""
    return ExecuteJobStatus.model_validate(obj.get("status") or {})


@dataclass(frozen=True)
class JobRef:
    """The ExecuteJob ``namespace/name`` and the API clients that reach it (one per handle)."""

    name: str
    namespace: str
    api_client: client.ApiClient
    core: client.CoreV1Api = field(init=False, repr=False, compare=False)
    custom: client.CustomObjectsApi = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "core", client.CoreV1Api(self.api_client))
        object.__setattr__(self, "custom", client.CustomObjectsApi(self.api_client))

    @property
    def label(self) -> str:
        """How messages name the job."""
        return f"{self.namespace}/{self.name}"

    def get(self) -> dict[str, Any] | None:
        """The object as stored (None: this job does not exist)."""
        try:
            return raw(
                self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, self.name, _preload_content=False
                )
            )
        except client.ApiException as exc:
            if is_missing_object(exc):
                return None  # this job does not exist (the API does: see _api_error)
            raise _api_error(
                f"reading ExecuteJob {self.namespace}/{self.name}", exc, "get", _EJ, self.namespace
            ) from None

    def patch(self, patch: dict[str, Any]) -> dict[str, Any]:
        """Merge ``patch`` into the object; the object after it. Raises the library's
        exceptions: each caller says what its patch was for."""
        return raw(
            self.custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                self.name,
                patch,
                _preload_content=False,
            )
        )

    def delete(self, options: client.V1DeleteOptions) -> None:
        """DELETE this ExecuteJob (raises the library's exceptions)."""
        drained(
            self.custom.delete_namespaced_custom_object(
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                self.name,
                body=options,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT_S,
            )
        )
