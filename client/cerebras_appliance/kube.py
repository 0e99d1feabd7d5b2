"""The Kubernetes backend: create an ExecuteJob for the operator and follow it.

Credentials come from ``$KUBECONFIG`` (or ``~/.kube/config``), or the pod's service account
when running in a cluster. Values marked sensitive never enter the ExecuteJob: they go to a
Secret ``<job>-sensitive`` (written first, so the operator finds it), which the job then owns
(it is deleted with the job).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

from cerebras_appliance.api import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    ExecuteJob,
    ExecuteJobStatus,
    InvalidJobError,
)
from cerebras_appliance.jobs import secret_key_for, sensitive_secret_name

JOB_NAME_LABEL = "appliance.dev/job-name"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
#: The operator's label on the pods it makes.
OPERATOR = "appliance-operator"
#: The client's label on the Secret of sensitive values.
CLIENT = "cerebras-appliance"
_SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class KubernetesError(RuntimeError):
    """The API server refused or failed a request; the message says what and why."""


def new_api_client() -> client.ApiClient:
    """An API client from the in-cluster service account, else $KUBECONFIG."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        # The library reads $KUBECONFIG once, when imported: read it now.
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))  # type: ignore[no-untyped-call]
    api_client = client.ApiClient(client.Configuration.get_default_copy())
    api_client.user_agent = "cerebras-appliance-client"
    return api_client


def default_namespace() -> str:
    """The namespace of the current kubeconfig context, the pod's own, or "default"."""
    if _SERVICE_ACCOUNT_NAMESPACE.exists():
        return _SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    try:
        _, current = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=os.environ.get("KUBECONFIG")
        )
    except (config.ConfigException, OSError):
        return "default"
    namespace = (current or {}).get("context", {}).get("namespace")
    return str(namespace) if namespace else "default"


def _message(exc: client.ApiException) -> str:
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        body = {}
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return f"{exc.status} {exc.reason}"


def _raw(response: Any) -> dict[str, Any]:
    data = response.data
    result: dict[str, Any] = json.loads(data) if data else {}
    return result


class KubernetesJob:
    """Handle on an ExecuteJob in a cluster."""

    def __init__(
        self,
        name: str,
        namespace: str,
        manifest: dict[str, Any],
        api_client: client.ApiClient | None = None,
    ) -> None:
        self.name = name
        self.namespace = namespace
        self.manifest = manifest
        self._api = api_client if api_client is not None else new_api_client()
        self._core = client.CoreV1Api(self._api)
        self._custom = client.CustomObjectsApi(self._api)

    # -- creation ------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        job: ExecuteJob,
        snapshot: Sequence[tuple[str, str]],
        *,
        sensitive: Collection[str] = (),
        api_client: client.ApiClient | None = None,
    ) -> KubernetesJob:
        """Create the job (and the Secret of its sensitive values) and return its handle.

        Raises InvalidJobError when the API server refuses the job (the message names the
        field), KubernetesError for anything else (e.g. a job of that name exists).
        """
        name = job.metadata.name
        if not name:
            raise InvalidJobError(["metadata.name: a Kubernetes job needs a name"])
        namespace = job.metadata.namespace or default_namespace()
        job = job.model_copy(
            update={"metadata": job.metadata.model_copy(update={"namespace": namespace})}
        )
        handle = cls(name, namespace, job.to_manifest(), api_client)
        secret_uid = handle._write_sensitive(snapshot, sensitive) if sensitive else None
        try:
            created = _raw(
                handle._custom.create_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, handle.manifest, _preload_content=False
                )
            )
        except client.ApiException as exc:
            if secret_uid is not None:
                handle._delete_secret(secret_uid)
            if exc.status == 409:
                raise KubernetesError(
                    f"ExecuteJob {namespace}/{handle.name} already exists; choose another name "
                    "(or delete it first)"
                ) from None
            if exc.status == 422:
                raise InvalidJobError([_message(exc)]) from None
            raise KubernetesError(
                f"creating ExecuteJob {namespace}/{handle.name}: {_message(exc)}"
            ) from None
        if secret_uid is not None:
            handle._adopt_secret(str(created["metadata"]["uid"]))
        return handle

    def _write_sensitive(
        self, snapshot: Sequence[tuple[str, str]], sensitive: Collection[str]
    ) -> str:
        """Create ``<job>-sensitive`` (key: escaped variable name); return its uid."""
        values = dict(snapshot)
        name = sensitive_secret_name(self.name)
        data = {
            secret_key_for(var): base64.b64encode(values[var].encode("utf-8")).decode("ascii")
            for var in sensitive
        }

        def body(resource_version: str | None = None) -> client.V1Secret:
            return client.V1Secret(
                metadata=client.V1ObjectMeta(
                    name=name,
                    namespace=self.namespace,
                    labels={MANAGED_BY_LABEL: CLIENT, JOB_NAME_LABEL: self.name},
                    resource_version=resource_version,
                ),
                type="Opaque",
                data=data,
            )

        try:
            return str(
                _raw(
                    self._core.create_namespaced_secret(
                        self.namespace, body(), _preload_content=False
                    )
                )["metadata"]["uid"]
            )
        except client.ApiException as exc:
            if exc.status != 409:
                raise KubernetesError(
                    f"creating Secret {self.namespace}/{name}: {_message(exc)}"
                ) from None
        # It exists: left by a deleted job of the same name (garbage collection pending), or
        # someone else's. Replace only the former, and only if no such job exists now.
        existing = _raw(
            self._core.read_namespaced_secret(name, self.namespace, _preload_content=False)
        )
        labels = existing.get("metadata", {}).get("labels") or {}
        if labels.get(MANAGED_BY_LABEL) != CLIENT or self._exists():
            raise KubernetesError(
                f"Secret {self.namespace}/{name} already exists (it holds a job's sensitive "
                "values); choose another job name or delete that Secret"
            )
        version = str(existing["metadata"]["resourceVersion"])
        replaced = _raw(
            self._core.replace_namespaced_secret(
                name, self.namespace, body(version), _preload_content=False
            )
        )
        return str(replaced["metadata"]["uid"])

    def _adopt_secret(self, job_uid: str) -> None:
        """Make the job own its sensitive Secret (garbage-collected with the job)."""
        owner = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": self.name,
            "uid": job_uid,
            "blockOwnerDeletion": False,
        }
        self._core.patch_namespaced_secret(
            sensitive_secret_name(self.name),
            self.namespace,
            {"metadata": {"ownerReferences": [owner]}},
            _preload_content=False,
        )

    def _delete_secret(self, uid: str) -> None:
        with contextlib.suppress(client.ApiException):  # best effort: no job was created
            self._core.delete_namespaced_secret(
                sensitive_secret_name(self.name),
                self.namespace,
                body=client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid)),
                _preload_content=False,
            )

    def _exists(self) -> bool:
        return self._get() is not None

    def _get(self) -> dict[str, Any] | None:
        try:
            return _raw(
                self._custom.get_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, self.name, _preload_content=False
                )
            )
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise KubernetesError(
                f"reading ExecuteJob {self.namespace}/{self.name}: {_message(exc)}"
            ) from None

    # -- following -----------------------------------------------------------------------

    @staticmethod
    def _status_of(obj: Mapping[str, Any]) -> ExecuteJobStatus:
        return ExecuteJobStatus.model_validate(obj.get("status") or {})

    def status(self) -> ExecuteJobStatus:
        """The job's status as the operator last wrote it (phase Pending before that)."""
        obj = self._get()
        if obj is None:
            raise KubernetesError(f"ExecuteJob {self.namespace}/{self.name} does not exist")
        return self._status_of(obj)

    def wait(self, timeout: float | None = None) -> ExecuteJobStatus:
        """Block until the job finishes; return its final status (phase Succeeded/Failed).

        Watches the job (no polling). Raises TimeoutError when ``timeout`` seconds pass
        first, RuntimeError when the job is suspended or deleted meanwhile.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            listing = _raw(
                self._custom.list_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    self.namespace,
                    PLURAL,
                    field_selector=f"metadata.name={self.name}",
                    _preload_content=False,
                )
            )
            items = listing.get("items") or []
            if not items:
                raise RuntimeError(f"job {self.namespace}/{self.name} was deleted")
            status = self._check(self._status_of(items[0]))
            if status is not None:
                return status
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise self._timeout(timeout, self._status_of(items[0]))
            window = 60 if remaining is None else max(1, min(60, int(remaining + 0.999)))
            for obj in self._watch(listing["metadata"]["resourceVersion"], window):
                if obj is None:
                    raise RuntimeError(f"job {self.namespace}/{self.name} was deleted")
                status = self._check(self._status_of(obj))
                if status is not None:
                    return status
            if deadline is not None and time.monotonic() >= deadline:
                raise self._timeout(timeout, self.status())

    def _check(self, status: ExecuteJobStatus) -> ExecuteJobStatus | None:
        if status.finished:
            return status
        if status.phase == "Suspended":
            raise RuntimeError(f"job {self.namespace}/{self.name} is suspended: it will not finish")
        return None

    def _timeout(self, timeout: float | None, status: ExecuteJobStatus) -> TimeoutError:
        return TimeoutError(
            f"job {self.namespace}/{self.name} did not finish within {timeout}s "
            f"(phase {status.phase}, {status.succeeded}/{status.replicas} succeeded)"
        )

    def _watch(self, resource_version: str, seconds: int) -> Iterator[dict[str, Any] | None]:
        """The job's new versions for up to ``seconds`` (None: it was deleted)."""
        stream = watch.Watch()  # type: ignore[no-untyped-call]
        try:
            for event in stream.stream(  # type: ignore[no-untyped-call]
                self._custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                field_selector=f"metadata.name={self.name}",
                resource_version=resource_version,
                timeout_seconds=seconds,
                _request_timeout=seconds + 10,
            ):
                if event["type"] == "DELETED":
                    yield None
                    return
                if event["type"] in ("ADDED", "MODIFIED"):
                    yield event["object"]
        except client.ApiException as exc:
            if exc.status != 410:  # 410 Gone: our version is too old; list again
                raise KubernetesError(
                    f"watching ExecuteJob {self.namespace}/{self.name}: {_message(exc)}"
                ) from None
        finally:
            stream.stop()  # type: ignore[no-untyped-call]

    def logs(self) -> dict[str, str]:
        """Each worker pod's log so far, keyed by pod name ("" for a pod not started yet)."""
        pods = _raw(
            self._core.list_namespaced_pod(
                self.namespace,
                label_selector=f"{MANAGED_BY_LABEL}={OPERATOR},{JOB_NAME_LABEL}={self.name}",
                _preload_content=False,
            )
        )
        result: dict[str, str] = {}
        for pod in sorted(pods.get("items") or [], key=lambda p: str(p["metadata"]["name"])):
            name = str(pod["metadata"]["name"])
            try:
                response: Any = self._core.read_namespaced_pod_log(
                    name, self.namespace, container="worker", _preload_content=False
                )
                result[name] = response.data.decode("utf-8", errors="replace")
            except client.ApiException as exc:
                if exc.status not in (400, 404):  # 400: container not started yet
                    raise KubernetesError(
                        f"reading the log of pod {name}: {_message(exc)}"
                    ) from None
                result[name] = ""
        return result

    def delete(self) -> None:
        """Delete the job; its pods and Secrets go with it (ownerReferences)."""
        try:
            self._custom.delete_namespaced_custom_object(
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                self.name,
                body=client.V1DeleteOptions(propagation_policy="Background"),
                _preload_content=False,
            )
        except client.ApiException as exc:
            if exc.status != 404:
                raise KubernetesError(
                    f"deleting ExecuteJob {self.namespace}/{self.name}: {_message(exc)}"
                ) from None

    def __repr__(self) -> str:
        return f"<KubernetesJob {self.namespace}/{self.name}>"
