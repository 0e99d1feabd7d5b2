"""The few Kubernetes API calls the reconcile loop makes, counted (blocking; run in threads).

Bodies are plain dicts and answers are parsed JSON (``_preload_content=False``): the
operator never builds the client's model objects. Every call is counted in
``appliance_operator_api_requests_total`` and every failure in ``..._api_errors_total``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from typing import Any

import pydantic
import urllib3
from kubernetes import client

from appliance_operator.metrics import Metrics
from cerebras_appliance.contract.api import PLURAL, POOL_PLURAL
from cerebras_appliance.contract.apistatus import parse_api_status
from cerebras_appliance.contract.names import GROUP, MANAGED_SELECTOR, VERSION


class ApiError(Exception):
    """A failed API call: ``code`` is the HTTP status (0 when there was no answer)."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        self.code = code
        self.reason = reason
        self.message = message
        super().__init__(f"{code} {reason}: {message}")


def namespace_terminating(error: ApiError) -> bool:
    """Creating anything in a namespace being deleted is refused; so is the job, soon."""
    return error.code == 403 and "being terminated" in error.message


def _api_error(exc: client.ApiException) -> ApiError:
    status = parse_api_status(exc.status, exc.reason, exc.body)
    return ApiError(status.code, status.reason, status.message)


def _refused_by_the_client(exc: pydantic.ValidationError) -> ApiError:
    """The Kubernetes client (37+) validates a request's body against its own models before
    sending it: a template field it does not know (a typo in ``affinity``) or types otherwise
    (``cpu: 2`` where it wants text) raises pydantic's error, not an ApiException. That is a
    request the user must fix, as a 422 is (it was a crash on every reconcile: issue 21,
    found by tests/integration/test_generated_input.py). Field paths and problems only: never
    the input (a Secret's body holds values)."""
    problems = []
    for item in exc.errors(include_input=False, include_url=False):
        path = ""
        for part in item["loc"][1:]:  # loc[0]: the argument (the body)
            path += f"[{part}]" if isinstance(part, int) else ("." if path else "") + str(part)
        problems.append(f"{path or 'body'}: {item['msg']}")
    message = "refused before it was sent (by the Kubernetes client's models): " + "; ".join(
        problems[:5]
    )
    return ApiError(422, "Invalid", message)


def _delete_options(uid: str, propagation: str | None) -> client.V1DeleteOptions:
    """Delete exactly this object (a newer one with the same name is left alone)."""
    return client.V1DeleteOptions(
        preconditions=client.V1Preconditions(uid=uid), propagation_policy=propagation
    )


#: (connect, read) seconds before one request is given up: without it a request to an API
#: server that stopped answering (a half-open connection) blocks its thread forever, and the
#: operator's shutdown with it. A timeout is an ApiError: backoff and retry.
REQUEST_TIMEOUT = (10.0, 60.0)
#: Objects per page of a list (``list_uids``): bounds the memory one answer takes.
LIST_PAGE = 500


class KubeApi:
    def __init__(self, api_client: client.ApiClient, metrics: Metrics) -> None:
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.networking = client.NetworkingV1Api(api_client)
        self.metrics = metrics

    def _call(
        self,
        verb: str,
        resource: str,
        fn: Callable[..., Any],
        *args: Any,
        absent_ok: bool = False,
    ) -> Any:
        """One API call, counted; its answer as JSON. ``absent_ok``: None when the object
        does not exist (404) rather than an error (still counted as one)."""
        self.metrics.api_requests.labels(verb, resource).inc()
        try:
            response = fn(*args, _preload_content=False, _request_timeout=REQUEST_TIMEOUT)
        except client.ApiException as exc:
            error = _api_error(exc)
            self.metrics.api_errors.labels(verb, resource, str(error.code)).inc()
            if absent_ok and error.code == 404:
                return None
            raise error from None
        except pydantic.ValidationError as exc:
            error = _refused_by_the_client(exc)
            self.metrics.api_errors.labels(verb, resource, str(error.code)).inc()
            raise error from None
        except (OSError, urllib3.exceptions.HTTPError) as exc:
            # No answer: connection refused or reset, timeouts, MaxRetryError, ProtocolError
            # (urllib3's errors are not all OSErrors). The controller backs off and retries.
            self.metrics.api_errors.labels(verb, resource, "0").inc()
            raise ApiError(0, type(exc).__name__, str(exc)) from None
        data = response.data
        return json.loads(data) if data else {}

    # -- pods --------------------------------------------------------------------------

    def create_pod(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            "create", "pods", self.core.create_namespaced_pod, namespace, body
        )
        return result

    def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The pod, or None when it does not exist. (Each call names its verb and resource
        literally: tests/unit/test_chart.py reads them to check the chart's RBAC.)"""
        result: dict[str, Any] | None = self._call(
            "get", "pods", self.core.read_namespaced_pod, name, namespace, absent_ok=True
        )
        return result

    def remove_finalizer(self, namespace: str, name: str, uid: str, finalizer: str) -> None:
        """Remove one finalizer from the pod with this uid (strategic merge: idempotent,
        other finalizers untouched)."""
        body = {"metadata": {"uid": uid, "$deleteFromPrimitiveList/finalizers": [finalizer]}}
        self._call(
            "patch",
            "pods",
            lambda **kw: self.core.patch_namespaced_pod(
                name,
                namespace,
                body,
                _content_type="application/strategic-merge-patch+json",
                **kw,
            ),
        )

    def patch_pod(self, namespace: str, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """JSON merge patch of a pod (a claim: with ``metadata.resourceVersion`` as
        precondition, 409 when the pod changed since it was observed)."""
        result: dict[str, Any] = self._call(
            "patch",
            "pods",
            lambda **kw: self.core.patch_namespaced_pod(
                name,
                namespace,
                dict(body),
                _content_type="application/merge-patch+json",
                **kw,
            ),
        )
        return result

    def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        """Delete the pod with this uid (not a newer pod with the same name)."""
        options = _delete_options(uid, "Background")
        self._call(
            "delete",
            "pods",
            lambda **kw: self.core.delete_namespaced_pod(name, namespace, body=options, **kw),
        )

    # -- secrets: get and create only (docs/security.md); never list, watch or delete --

    def create_secret(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            "create", "secrets", self.core.create_namespaced_secret, namespace, body
        )
        return result

    def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Secret, or None when it does not exist."""
        result: dict[str, Any] | None = self._call(
            "get", "secrets", self.core.read_namespaced_secret, name, namespace, absent_ok=True
        )
        return result

    # -- network policies: the claim port's, one per pool (pool/network.py) -------------

    def create_network_policy(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            "create",
            "networkpolicies",
            self.networking.create_namespaced_network_policy,
            namespace,
            body,
        )
        return result

    def read_network_policy(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The NetworkPolicy, or None when it does not exist."""
        result: dict[str, Any] | None = self._call(
            "get",
            "networkpolicies",
            self.networking.read_namespaced_network_policy,
            name,
            namespace,
            absent_ok=True,
        )
        return result

    def replace_network_policy(
        self, namespace: str, name: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """PUT (``metadata.resourceVersion`` in ``body``: 409 when it changed meanwhile)."""
        result: dict[str, Any] = self._call(
            "update",
            "networkpolicies",
            self.networking.replace_namespaced_network_policy,
            name,
            namespace,
            body,
        )
        return result

    # -- jobs --------------------------------------------------------------------------

    def patch_job_status(
        self,
        namespace: str,
        name: str,
        status: Mapping[str, Any],
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        """JSON merge patch of the status subresource; returns the updated job. With
        ``resource_version`` the patch applies only to that version (409 otherwise)."""
        body: dict[str, Any] = {"status": dict(status)}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        result: dict[str, Any] = self._call(
            "patch",
            "executejobs/status",
            self.custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            body,
        )
        return result

    def patch_pool_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        """JSON merge patch of a WorkerPool's status subresource."""
        result: dict[str, Any] = self._call(
            "patch",
            "workerpools/status",
            self.custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            POOL_PLURAL,
            name,
            {"status": dict(status)},
        )
        return result

    def delete_job(self, namespace: str, name: str, uid: str) -> None:
        """Delete the job with this uid; what it owns goes with it (background cascade)."""
        options = _delete_options(uid, "Background")
        self._call(
            "delete",
            "executejobs",
            lambda **kw: self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, body=options, **kw
            ),
        )

    # -- drift ---------------------------------------------------------------------------

    def list_uids(self, namespace: str, resource: str) -> set[str]:
        """uids of the worker pods (``resource="pods"``) or ExecuteJobs that exist now in
        ``namespace``: metadata only (PartialObjectMetadataList), never values or specs."""
        headers = {"Accept": "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"}
        if resource == "pods":

            def fn(**kw: Any) -> Any:
                return self.core.list_namespaced_pod(
                    namespace, label_selector=MANAGED_SELECTOR, _headers=headers, **kw
                )
        else:

            def fn(**kw: Any) -> Any:
                return self.custom.list_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, _headers=headers, **kw
                )

        # In pages: a namespace's 8,000 pods in one answer (their managedFields included) are
        # tens of MB of JSON and, parsed, a spike of ~170 MiB in the operator's RSS (measured
        # with bench/bench_operator.py --jobs 1000); a page of LIST_PAGE is a few MiB.
        uids: set[str] = set()
        token = ""
        while True:
            page = {"limit": LIST_PAGE, **({"_continue": token} if token else {})}
            data = self._call("list", resource, functools.partial(fn, **page))
            uids.update(
                str((item.get("metadata") or {}).get("uid")) for item in data.get("items") or []
            )
            token = str((data.get("metadata") or {}).get("continue") or "")
            if not token:
                return uids

    # -- events ------------------------------------------------------------------------

    def create_event(self, namespace: str, body: Mapping[str, Any]) -> None:
        self._call("create", "events", self.core.create_namespaced_event, namespace, body)
