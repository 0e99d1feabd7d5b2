"""The Kubernetes backend: create an ExecuteJob for the operator and follow it.

Credentials come from ``$KUBECONFIG`` (or ``~/.kube/config``), or the pod's service account
when running in a cluster. No value enters the ExecuteJob: every value goes to a Secret
``<job>-values-<random>`` owned by the job from its creation (deleted with the job); the job
holds names and ``secretKeyRef``s only. See :meth:`KubernetesJob.create` for the order.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, config, watch

from cerebras_appliance.api import (
    API_VERSION,
    AWAITING_VALUES_ANNOTATION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    ExecuteJob,
    ExecuteJobStatus,
    InvalidJobError,
)

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


#: What the client library raises when the API server cannot be reached (no ApiException).
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (urllib3.exceptions.HTTPError, OSError)


def _refusal(exc: client.ApiException, grant: str) -> str:
    """The API server's reason, with the fix for the usual ones."""
    text = _message(exc)
    if exc.status == 403:
        return (
            f"{text} (the client needs '{grant}' in the namespace: bind the user or the "
            "pod's service account to the 'edit' role there)"
        )
    if exc.status == 401:
        return f"{text} (the credentials were refused: check $KUBECONFIG or the token)"
    return text


def _unreachable(exc: BaseException) -> str:
    return f"the API server could not be reached ({exc.__class__.__name__}: {exc})"


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
        """Create the job and the Secret of its values; return its handle.

        The order is what makes an interruption harmless (``docs/security.md``):

        1. the job, carrying :data:`AWAITING_VALUES_ANNOTATION`: the operator resolves
           nothing and starts no worker while it is there;
        2. the values Secret, with an ownerReference to the job's uid *in the create
           request*: it never exists without an owner, and holds every key or none;
        3. the release: the annotation is removed, and the operator starts the workers.

        An error or an exception (Ctrl-C included) after step 1 deletes the job, and with it
        (garbage collection) the Secret. A SIGKILL after step 1 leaves a job that waits,
        saying so in its ``EnvResolved`` condition; the Secret, if written, is the job's and
        goes with it. ``sensitive`` is accepted for compatibility and changes nothing.

        Raises InvalidJobError when the API server refuses the job (the message names the
        field), KubernetesError for anything else (e.g. a job of that name exists), naming
        the object and the fix.
        """
        del sensitive  # every value goes to the Secret
        name = job.metadata.name
        if not name:
            raise InvalidJobError(["metadata.name: a Kubernetes job needs a name"])
        namespace = job.metadata.namespace or default_namespace()
        job = job.model_copy(
            update={"metadata": job.metadata.model_copy(update={"namespace": namespace})}
        )
        handle = cls(name, namespace, job.to_manifest(), api_client)
        secret = job.metadata.annotations.get(AWAITING_VALUES_ANNOTATION)
        created = handle._create_job()
        if secret is None:
            return handle  # built with inline values: nothing to write
        uid = str(created["metadata"]["uid"])
        try:
            handle._write_values(job, secret, snapshot, uid)
            handle._release(secret)
        except BaseException as exc:
            handle._abandon(uid, exc)
            raise
        return handle

    def _create_job(self) -> dict[str, Any]:
        what = f"creating ExecuteJob {self.namespace}/{self.name}"
        try:
            return _raw(
                self._custom.create_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, self.manifest, _preload_content=False
                )
            )
        except client.ApiException as exc:
            if exc.status == 409:
                raise KubernetesError(
                    f"ExecuteJob {self.namespace}/{self.name} already exists; choose another "
                    "name (or delete it first)"
                ) from None
            if exc.status == 422:
                raise InvalidJobError([_message(exc)]) from None
            raise KubernetesError(f"{what}: {_refusal(exc, 'create executejobs')}") from None
        except _CONNECTION_ERRORS as exc:
            raise KubernetesError(f"{what}: {_unreachable(exc)}") from None

    def _write_values(
        self, job: ExecuteJob, secret: str, snapshot: Sequence[tuple[str, str]], job_uid: str
    ) -> None:
        """Create the values Secret (immutable, owned by the job from its first instant)."""
        values = dict(snapshot)
        data: dict[str, bytes | str] = {}
        for item in job.spec.env:
            ref = item.value_from.secret_key_ref if item.value_from is not None else None
            if ref is not None and ref.name == secret:
                data[ref.key] = base64.b64encode(values[item.name].encode("utf-8")).decode()
        owner = client.V1OwnerReference(
            api_version=API_VERSION,
            kind=KIND,
            name=self.name,
            uid=job_uid,
            block_owner_deletion=False,
        )
        body = client.V1Secret(
            metadata=client.V1ObjectMeta(
                name=secret,
                namespace=self.namespace,
                labels={MANAGED_BY_LABEL: CLIENT, JOB_NAME_LABEL: self.name},
                owner_references=[owner],
            ),
            type="Opaque",
            immutable=True,
            data=data,
        )
        what = f"creating Secret {self.namespace}/{secret} (the values of job {self.name})"
        try:
            self._core.create_namespaced_secret(self.namespace, body, _preload_content=False)
        except client.ApiException as exc:
            if exc.status == 409:
                raise KubernetesError(
                    f"{what}: a Secret of that name exists already (the name is random: someone "
                    "else made it); submit again. The job was deleted"
                ) from None
            raise KubernetesError(
                f"{what}: {_refusal(exc, 'create secrets')}. The job was deleted"
            ) from None
        except _CONNECTION_ERRORS as exc:
            raise KubernetesError(f"{what}: {_unreachable(exc)}. The job was deleted") from None

    def _release(self, secret: str) -> None:
        """Remove the annotation: the operator may now resolve the values and start workers."""
        what = f"releasing ExecuteJob {self.namespace}/{self.name} (values in Secret {secret})"
        patch = {"metadata": {"annotations": {AWAITING_VALUES_ANNOTATION: None}}}
        try:
            self._custom.patch_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, self.name, patch, _preload_content=False
            )
        except client.ApiException as exc:
            raise KubernetesError(
                f"{what}: {_refusal(exc, 'patch executejobs')}. The job was deleted"
            ) from None
        except _CONNECTION_ERRORS as exc:
            raise KubernetesError(f"{what}: {_unreachable(exc)}. The job was deleted") from None
        self.manifest["metadata"].get("annotations", {}).pop(AWAITING_VALUES_ANNOTATION, None)

    def _abandon(self, job_uid: str, cause: BaseException) -> None:
        """Delete the job created by a ``create`` that failed (its Secret goes with it). Best
        effort: if even that fails, the error says how to delete it by hand."""
        try:
            self._custom.delete_namespaced_custom_object(
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                self.name,
                body=client.V1DeleteOptions(
                    propagation_policy="Background",
                    preconditions=client.V1Preconditions(uid=job_uid),
                ),
                _preload_content=False,
            )
        except client.ApiException as exc:
            if exc.status not in (404, 409):  # 404: gone; 409: a newer job of that name
                self._note_leftover(cause, f"{exc.status} {exc.reason}")
        except _CONNECTION_ERRORS as exc:
            self._note_leftover(cause, exc.__class__.__name__)

    def _note_leftover(self, cause: BaseException, why: str) -> None:
        cause.add_note(
            f"deleting the unfinished ExecuteJob {self.namespace}/{self.name} failed too "
            f"({why}); it waits for its values and starts nothing: "
            f"kubectl delete executejob -n {self.namespace} {self.name}"
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
