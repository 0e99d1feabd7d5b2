"""The Kubernetes backend: create an ExecuteJob for the operator and follow it.

Credentials come from ``$KUBECONFIG`` (or ``~/.kube/config``), or the pod's service account
when running in a cluster. No value enters the ExecuteJob: every value goes to a Secret
``<job>-values-<random>`` owned by the job from its creation (deleted with the job); the job
holds names and ``secretKeyRef``s only. See :meth:`KubernetesJob.create` for the order.
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import json
import os
import queue
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any

import urllib3
from kubernetes import client, config, watch

from cerebras_appliance import settings
from cerebras_appliance.contract.api import (
    KIND,
    PLURAL,
    ExecuteJob,
    ExecuteJobStatus,
    InvalidJobError,
)
from cerebras_appliance.contract.names import (
    API_VERSION,
    ATTEMPT_LABEL,
    AWAITING_VALUES_ANNOTATION,
    CONTAINER_NAME,
    GROUP,
    JOB_NAME_LABEL,
    MANAGED_BY_LABEL,
    MANAGED_SELECTOR,
    VERSION,
    WORKER_INDEX_LABEL,
)
from cerebras_appliance.handle import (
    AttemptRef,
    JobDeletedError,
    JobHandle,
    JobNotFoundError,
    split_lines,
)

#: The client's label on the Secret of sensitive values.
CLIENT = "cerebras-appliance"
#: Seconds before a single API request (not a watch or a followed log) is given up.
_REQUEST_TIMEOUT_S = 30
#: A wait's watch is renewed this often (seconds).
_WATCH_WINDOW_S = 60
#: Between two tries to follow a pod's log that has not started, or whose connection dropped.
_LOG_RETRY_S = 0.5
#: A followed log that says nothing this long is reconnected (lines are never repeated, by
#: their timestamps). Short: on a loaded kind node a follow opened as the container started
#: was seen to deliver nothing for minutes; a reconnect gets the lines at once.
_LOG_READ_TIMEOUT_S = 20


#: The example Role granting exactly what this client calls (``examples/user-rbac.yaml``).
USER_ROLE = "appliance-user"
_ROLE_HINT = (
    f"bind the pod's service account (or the user) to a Role that grants it: the Role "
    f"{USER_ROLE!r} of examples/user-rbac.yaml grants exactly what the client needs (submit, "
    "follow, logs, delete), and the namespace's 'edit' role includes it"
)


class KubernetesError(RuntimeError):
    """The API server refused or failed a request; the message says what and why."""


class NoCredentialsError(KubernetesError):
    """No way to reach the cluster was found; the message lists what was tried."""


class ForbiddenError(KubernetesError):
    """RBAC refused a request: ``verb`` on ``resource`` (``executejobs.appliance.dev``,
    ``secrets``, ``pods/log``...) in ``namespace``; the message names the Role that grants it."""

    def __init__(self, message: str, verb: str, resource: str, namespace: str) -> None:
        super().__init__(message)
        self.verb, self.resource, self.namespace = verb, resource, namespace


class NotInstalledError(KubernetesError):
    """The cluster has no ExecuteJob API: the CRD ``executejobs.appliance.dev`` is missing."""


def new_api_client() -> client.ApiClient:
    """An API client from the in-cluster service account, else $KUBECONFIG (or
    ``~/.kube/config``). :class:`NoCredentialsError` says what was tried when neither works."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        # The library reads $KUBECONFIG once, when imported: read it now.
        kubeconfig = os.environ.get("KUBECONFIG") or None
        try:
            config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        except (config.ConfigException, OSError) as exc:
            raise NoCredentialsError(_no_credentials(kubeconfig, exc)) from None
    api_client = client.ApiClient(client.Configuration.get_default_copy())
    api_client.user_agent = "cerebras-appliance-client"
    return api_client


_shared_clients: dict[tuple[object, ...], client.ApiClient] = {}
_shared_lock = threading.Lock()


def shared_api_client() -> client.ApiClient:
    """The process's API client for the current credentials (:func:`new_api_client`), made
    once: its connections stay open between calls, so a ``submit()`` (three requests) pays one
    TLS handshake per process instead of three per job. In a pod, the service account's token
    is re-read by the library as it rotates; a kubeconfig that changed (its path or its
    modification time) gets a new client."""
    kubeconfig = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    try:
        stamp: float | None = os.stat(kubeconfig).st_mtime
    except OSError:
        stamp = None
    key = (os.environ.get("KUBERNETES_SERVICE_HOST"), kubeconfig, stamp)
    with _shared_lock:
        api = _shared_clients.get(key)
        if api is None:
            api = _shared_clients[key] = new_api_client()
    return api


def _no_credentials(kubeconfig: str | None, exc: BaseException) -> str:
    token = settings.SERVICE_ACCOUNT_DIR / "token"
    if not os.environ.get("KUBERNETES_SERVICE_HOST"):
        pod = "not in a pod ($KUBERNETES_SERVICE_HOST is unset)"
    elif not token.is_file():
        pod = (
            f"in a pod, but no service account token is mounted at {token} "
            "(automountServiceAccountToken: false?)"
        )
    else:
        pod = f"the pod's service account token at {token} could not be used"
    where = f"$KUBECONFIG={kubeconfig}" if kubeconfig else "~/.kube/config ($KUBECONFIG is unset)"
    return (
        f"no Kubernetes credentials for the kubernetes backend: tried the in-cluster service "
        f"account ({pod}) and a kubeconfig, {where} ({exc}). Run in a pod with a service "
        "account, or set $KUBECONFIG; backend='local' (or "
        f"{settings.BACKEND_VAR}=local) runs the workers on this machine instead"
    )


def kubeconfig_namespace() -> str | None:
    """The namespace of the current kubeconfig context, if there is one."""
    try:
        _, current = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=os.environ.get("KUBECONFIG") or None
        )
    except (config.ConfigException, OSError):
        return None
    namespace = (current or {}).get("context", {}).get("namespace")
    return str(namespace) if namespace else None


def namespace_setting(namespace: str | None = None) -> settings.Setting:
    """The namespace by the documented order (``settings.namespace_setting``)."""
    return settings.namespace_setting(namespace, kubeconfig_namespace=kubeconfig_namespace)


def default_namespace() -> str:
    """$APPLIANCE_NAMESPACE, the pod's own, the kubeconfig context's, or "default"."""
    return namespace_setting().value


def may_create_executejobs(namespace: str, api_client: client.ApiClient) -> tuple[bool, str]:
    """(whether the caller may create ExecuteJobs in ``namespace``, why not): one
    SelfSubjectAccessReview, which every authenticated identity may make."""
    review = client.V1SelfSubjectAccessReview(
        spec=client.V1SelfSubjectAccessReviewSpec(
            resource_attributes=client.V1ResourceAttributes(
                group=GROUP, resource=PLURAL, verb="create", namespace=namespace
            )
        )
    )
    try:
        result = client.AuthorizationV1Api(api_client).create_self_subject_access_review(
            review, _request_timeout=_REQUEST_TIMEOUT_S
        )
    except client.ApiException as exc:
        return False, f"asking whether it may create executejobs failed: {_message(exc)}"
    except _CONNECTION_ERRORS as exc:
        return False, _unreachable(exc)
    if result.status is not None and result.status.allowed:
        return True, ""
    return False, (
        f"its service account may not create executejobs.{GROUP} in namespace {namespace!r} "
        f"(SelfSubjectAccessReview); {_ROLE_HINT}"
    )


def _message(exc: client.ApiException) -> str:
    body = _body(exc)
    if body.get("message"):
        return str(body["message"])
    return f"{exc.status} {exc.reason}"


def _body(exc: client.ApiException) -> dict[str, Any]:
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


#: What the client library raises when the API server cannot be reached (no ApiException).
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (urllib3.exceptions.HTTPError, OSError)


def _api_error(
    what: str, exc: client.ApiException, verb: str, resource: str, namespace: str
) -> KubernetesError:
    """The error for a refused request ``verb resource`` (``executejobs.appliance.dev``,
    ``secrets``, ``pods/log``...): forbidden (with the Role that grants it), refused
    credentials, the CRD or the namespace missing, or the API server's own message."""
    text = _message(exc)
    if exc.status == 403:
        return ForbiddenError(
            f"{what}: {text}. The client needs '{verb} {resource}' (verb {verb!r}, resource "
            f"{resource!r}) in namespace {namespace!r}: {_ROLE_HINT}",
            verb,
            resource,
            namespace,
        )
    if exc.status == 401:
        return KubernetesError(
            f"{what}: {text} (the credentials were refused: check $KUBECONFIG or the token)"
        )
    if exc.status == 404 and resource.startswith(PLURAL):
        details = _body(exc).get("details") or {}
        if details.get("kind") == "namespaces":
            return KubernetesError(
                f"{what}: namespace {namespace!r} does not exist: pass namespace= or set "
                f"${settings.NAMESPACE_VAR}"
            )
        if not details.get("name"):  # not one object missing: the whole resource
            return NotInstalledError(
                f"{what}: this cluster has no ExecuteJob API ({API_VERSION}, resource "
                f"{PLURAL}; the API server answered: {text}): the CustomResourceDefinition "
                f"{PLURAL}.{GROUP} is not installed. The platform team installs it with the "
                "operator's Helm chart (charts/appliance-operator) or crds/executejobs.yaml"
            )
    return KubernetesError(f"{what}: {text}")


def _unreachable(exc: BaseException) -> str:
    return f"the API server could not be reached ({exc.__class__.__name__}: {exc})"


_EJ = f"{PLURAL}.{GROUP}"


def _extra(error: KubernetesError) -> tuple[str, ...]:
    """The constructor arguments after the message, to rebuild ``error`` with a longer one."""
    if isinstance(error, ForbiddenError):
        return (error.verb, error.resource, error.namespace)
    return ()


def _raw(response: Any) -> dict[str, Any]:
    """The JSON of a response made with ``_preload_content=False`` (read whole, which gives
    its connection back to the pool)."""
    data = response.data
    result: dict[str, Any] = json.loads(data) if data else {}
    return result


def _drained(response: Any) -> None:
    """A response whose body is not needed: read it anyway, or its connection stays taken
    and the next request opens (and TLS-handshakes) a new one."""
    response.drain_conn()
    response.release_conn()


class KubernetesJob(JobHandle):
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
        self._api = api_client if api_client is not None else shared_api_client()
        self._core = client.CoreV1Api(self._api)
        self._custom = client.CustomObjectsApi(self._api)
        self._streams: set[Any] = set()  # log responses being followed (closed by delete)

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
            raise _api_error(what, exc, "create", _EJ, self.namespace) from None
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
            _drained(
                self._core.create_namespaced_secret(self.namespace, body, _preload_content=False)
            )
        except client.ApiException as exc:
            if exc.status == 409:
                raise KubernetesError(
                    f"{what}: a Secret of that name exists already (the name is random: someone "
                    "else made it); submit again. The job was deleted"
                ) from None
            error = _api_error(what, exc, "create", "secrets", self.namespace)
            raise type(error)(f"{error}. The job was deleted", *_extra(error)) from None
        except _CONNECTION_ERRORS as exc:
            raise KubernetesError(f"{what}: {_unreachable(exc)}. The job was deleted") from None

    def _release(self, secret: str) -> None:
        """Remove the annotation: the operator may now resolve the values and start workers."""
        what = f"releasing ExecuteJob {self.namespace}/{self.name} (values in Secret {secret})"
        patch = {"metadata": {"annotations": {AWAITING_VALUES_ANNOTATION: None}}}
        try:
            _drained(
                self._custom.patch_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, self.name, patch, _preload_content=False
                )
            )
        except client.ApiException as exc:
            error = _api_error(what, exc, "patch", _EJ, self.namespace)
            raise type(error)(f"{error}. The job was deleted", *_extra(error)) from None
        except _CONNECTION_ERRORS as exc:
            raise KubernetesError(f"{what}: {_unreachable(exc)}. The job was deleted") from None
        self.manifest["metadata"].get("annotations", {}).pop(AWAITING_VALUES_ANNOTATION, None)

    def _abandon(self, job_uid: str, cause: BaseException) -> None:
        """Delete the job created by a ``create`` that failed (its Secret goes with it). Best
        effort: if even that fails, the error says how to delete it by hand."""
        try:
            self._delete_request(
                client.V1DeleteOptions(
                    propagation_policy="Background",
                    preconditions=client.V1Preconditions(uid=job_uid),
                )
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
            if exc.status == 404 and (_body(exc).get("details") or {}).get("name"):
                return None  # this job does not exist (the API does: see _api_error)
            raise _api_error(
                f"reading ExecuteJob {self.namespace}/{self.name}", exc, "get", _EJ, self.namespace
            ) from None

    # -- reattaching --------------------------------------------------------------------

    @classmethod
    def get(
        cls, name: str, namespace: str | None = None, api_client: client.ApiClient | None = None
    ) -> KubernetesJob:
        """A handle on the existing ExecuteJob ``namespace/name`` (JobNotFoundError if none)."""
        handle = cls(name, namespace or default_namespace(), {}, api_client)
        obj = handle._get()
        if obj is None:
            raise JobNotFoundError(f"ExecuteJob {handle.namespace}/{name} does not exist")
        manifest = {k: v for k, v in obj.items() if k != "status"}
        metadata = manifest.get("metadata") or {}
        manifest["metadata"] = {
            k: v for k, v in metadata.items() if k in ("name", "namespace", "labels")
        }
        handle.manifest = manifest
        handle._last_status = cls._status_of(obj)
        return handle

    # -- following -----------------------------------------------------------------------

    @property
    def label(self) -> str:
        return f"{self.namespace}/{self.name}"

    @staticmethod
    def _status_of(obj: Mapping[str, Any]) -> ExecuteJobStatus:
        return ExecuteJobStatus.model_validate(obj.get("status") or {})

    def status(self) -> ExecuteJobStatus:
        """The job's status as the operator last wrote it (phase Pending before that)."""
        obj = self._get()
        if obj is None:
            raise KubernetesError(f"ExecuteJob {self.namespace}/{self.name} does not exist")
        return self._status_of(obj)

    def _refresh(self) -> ExecuteJobStatus:
        obj = self._get()
        if obj is None:
            raise JobDeletedError(f"job {self.label} was deleted", self._last_status)
        self._last_status = self._status_of(obj)
        return self._last_status

    @contextlib.contextmanager
    def _observer(self) -> Iterator[Callable[[float], ExecuteJobStatus]]:
        """Watches the job (no polling) in a thread for the duration of a wait."""
        feed = _StatusFeed(self)
        try:
            yield feed.next
        finally:
            feed.close()

    def _list_once(self) -> tuple[ExecuteJobStatus | None, str]:
        try:
            listing = _raw(
                self._custom.list_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    self.namespace,
                    PLURAL,
                    field_selector=f"metadata.name={self.name}",
                    _preload_content=False,
                    _request_timeout=_REQUEST_TIMEOUT_S,
                )
            )
        except client.ApiException as exc:
            if exc.status is not None and exc.status >= 500:
                raise  # retried by the feed
            raise _api_error(
                f"listing ExecuteJob {self.namespace}/{self.name}", exc, "list", _EJ, self.namespace
            ) from None
        items = listing.get("items") or []
        status = self._status_of(items[0]) if items else None
        return status, str(listing["metadata"]["resourceVersion"])

    def _watch(
        self,
        resource_version: str,
        seconds: int,
        stop: threading.Event | None = None,
        started: Callable[[Any], None] | None = None,
    ) -> Iterator[dict[str, Any] | None]:
        """The job's new versions for up to ``seconds`` (None: it was deleted). ``started``
        gets the ``Watch``, whose ``stop()`` ends it from another thread."""
        stream = watch.Watch()  # type: ignore[no-untyped-call]
        if started is not None:
            started(stream)
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
                if stop is not None and stop.is_set():
                    return
                if event["type"] == "DELETED":
                    yield None
                    return
                if event["type"] in ("ADDED", "MODIFIED"):
                    yield event["object"]
        except client.ApiException as exc:
            if exc.status != 410:  # 410 Gone: our version is too old; list again
                raise _api_error(
                    f"watching ExecuteJob {self.namespace}/{self.name}",
                    exc,
                    "watch",
                    _EJ,
                    self.namespace,
                ) from None
        finally:
            stream.stop()  # type: ignore[no-untyped-call]

    def _pods(self) -> list[dict[str, Any]]:
        try:
            pods = _raw(
                self._core.list_namespaced_pod(
                    self.namespace,
                    label_selector=f"{MANAGED_SELECTOR},{JOB_NAME_LABEL}={self.name}",
                    _preload_content=False,
                    _request_timeout=_REQUEST_TIMEOUT_S,
                )
            )
        except client.ApiException as exc:
            raise _api_error(
                f"listing the pods of job {self.label}", exc, "list", "pods", self.namespace
            ) from None
        return list(pods.get("items") or [])

    def _attempts(self) -> list[AttemptRef]:
        refs = []
        for pod in self._pods():
            meta = pod["metadata"]
            labels = meta.get("labels") or {}
            try:
                index = int(labels[WORKER_INDEX_LABEL])
                attempt = int(labels.get(ATTEMPT_LABEL, "0"))
            except (KeyError, ValueError):
                continue
            refs.append(AttemptRef(index, attempt, str(meta["name"])))
        return refs

    def _read_log(self, name: str, tail: int | None) -> str:
        try:
            response: Any = self._core.read_namespaced_pod_log(
                name,
                self.namespace,
                container=CONTAINER_NAME,
                tail_lines=tail,
                _preload_content=False,
                _request_timeout=_REQUEST_TIMEOUT_S,
            )
        except client.ApiException as exc:
            if exc.status not in (400, 404):  # 400: container not started yet
                raise _api_error(
                    f"reading the log of pod {name}", exc, "get", "pods/log", self.namespace
                ) from None
            return ""
        text: str = response.data.decode("utf-8", errors="replace")
        return text

    def _pod_state(self, name: str) -> str:
        """The pod as a log follower needs it: ``gone``, ``ended`` (it, or its container,
        terminated) or ``live``."""
        try:
            pod = _raw(
                self._core.read_namespaced_pod(
                    name,
                    self.namespace,
                    _preload_content=False,
                    _request_timeout=_REQUEST_TIMEOUT_S,
                )
            )
        except client.ApiException as exc:
            if exc.status == 404:
                return "gone"
            if exc.status == 403:
                raise _api_error(
                    f"reading pod {name}", exc, "get", "pods", self.namespace
                ) from None
            raise
        status = pod.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            return "ended"
        for container in status.get("containerStatuses") or []:
            if container.get("name") == CONTAINER_NAME and "terminated" in (
                container.get("state") or {}
            ):
                return "ended"
        return "live"

    def _follow_attempt(  # noqa: PLR0912
        self, ref: AttemptRef, stop: threading.Event, finished: threading.Event
    ) -> Iterator[str]:
        """``kubectl logs -f`` of one pod: waits for its container to start; reconnects after
        a dropped connection without repeating lines (by the kubelet's timestamps)."""
        last: tuple[str, int] | None = None  # (seconds part, nanoseconds) of the last line
        while not stop.is_set():
            try:
                response: Any = self._core.read_namespaced_pod_log(
                    ref.name,
                    self.namespace,
                    container=CONTAINER_NAME,
                    follow=True,
                    timestamps=True,
                    _preload_content=False,
                    _request_timeout=(_REQUEST_TIMEOUT_S, _LOG_READ_TIMEOUT_S),
                )
            except client.ApiException as exc:
                if exc.status == 404:
                    return  # the pod is gone
                if exc.status != 400:
                    raise _api_error(
                        f"following the log of pod {ref.name}",
                        exc,
                        "get",
                        "pods/log",
                        self.namespace,
                    ) from None
                # 400: the container has not started (ContainerCreating, image pull...)
                if finished.is_set() and self._pod_state(ref.name) != "live":
                    return
                stop.wait(_LOG_RETRY_S)
                continue
            except Exception:  # the connection failed: try again
                stop.wait(_LOG_RETRY_S)
                continue
            with _registered(self._streams, response):
                rest = ""
                decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
                try:
                    for chunk in response.stream(amt=None, decode_content=False):
                        lines, rest = split_lines(rest, decoder.decode(chunk))
                        for line in lines:
                            stamp, _, text = line.partition(" ")
                            key = _stamp_key(stamp)
                            if last is not None and key is not None and key <= last:
                                continue  # seen before the reconnect
                            last = key or last
                            yield text
                except Exception:
                    if stop.is_set():
                        return
                    stop.wait(_LOG_RETRY_S)
                    continue  # dropped mid-way: reconnect, skip what was seen
                finally:
                    response.release_conn()
                if rest:
                    yield rest.partition(" ")[2]
            if stop.is_set() or self._pod_state(ref.name) != "live":
                return

    def _stop_following(self) -> None:
        for response in list(self._streams):  # followed logs end now
            with contextlib.suppress(Exception):
                response.shutdown()

    def _no_status_hint(self, status: ExecuteJobStatus) -> str:
        if status.observed_generation is not None:
            return ""
        return (
            f"the operator has written no status for job {self.label}: it is not running, or "
            f"it does not watch namespace {self.namespace!r} (kubectl get pods -A -l "
            "app.kubernetes.io/name=appliance-operator; installed with rbac.scope=namespace, "
            "the namespace must be in watchNamespaces)"
        )

    def _after_interrupt_delete(self) -> str:
        return (
            f" (its pods are being removed: kubectl get pods -n {self.namespace} "
            f"-l {JOB_NAME_LABEL}={self.name})"
        )

    def _reattach_hint(self) -> str:
        return (
            f"follow it again with cerebras_appliance.get_job({self.name!r}, "
            f"namespace={self.namespace!r}); stop it with job.delete()"
        )

    def _delete_request(self, options: client.V1DeleteOptions) -> None:
        """DELETE this ExecuteJob (raises the library's exceptions)."""
        _drained(
            self._custom.delete_namespaced_custom_object(
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                self.name,
                body=options,
                _preload_content=False,
                _request_timeout=_REQUEST_TIMEOUT_S,
            )
        )

    def delete(self) -> None:
        """Delete the job; its pods and Secrets go with it (ownerReferences)."""
        self._stop_following()
        try:
            self._delete_request(client.V1DeleteOptions(propagation_policy="Background"))
        except client.ApiException as exc:
            if exc.status != 404:
                raise _api_error(
                    f"deleting ExecuteJob {self.namespace}/{self.name}",
                    exc,
                    "delete",
                    _EJ,
                    self.namespace,
                ) from None

    def __repr__(self) -> str:
        return f"<KubernetesJob {self.namespace}/{self.name}>"


def _stamp_key(stamp: str) -> tuple[str, int] | None:
    """An RFC 3339 timestamp with nanoseconds (the kubelet's) as a comparable key."""
    if not stamp.endswith("Z") or "T" not in stamp:
        return None
    whole, _, fraction = stamp[:-1].partition(".")
    digits = (fraction + "000000000")[:9]
    return (whole, int(digits)) if digits.isdigit() else None


@contextlib.contextmanager
def _registered(streams: set[Any], response: Any) -> Iterator[None]:
    streams.add(response)
    try:
        yield
    finally:
        streams.discard(response)


class _StatusFeed:
    """The job's status, as a watch delivers it, for one wait: a thread lists and watches the
    job and queues each version; ``next(seconds)`` returns the newest one, blocking up to
    ``seconds`` when nothing new came. Connection errors are retried (the wait goes on)."""

    def __init__(self, job: KubernetesJob) -> None:
        self._job = job
        self._queue: queue.Queue[ExecuteJobStatus | BaseException | None] = queue.Queue()
        self._stop = threading.Event()
        self._latest: ExecuteJobStatus | None = None
        self._watching: Any = None
        self._thread = threading.Thread(target=self._run, name=f"watch-{job.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                status, version = self._job._list_once()
                if status is None:
                    self._queue.put(None)
                    return
                self._queue.put(status)
                for obj in self._job._watch(version, _WATCH_WINDOW_S, self._stop, self._started):
                    if obj is None:
                        self._queue.put(None)
                        return
                    self._queue.put(self._job._status_of(obj))
                failures = 0
            except (KubernetesError, client.ApiException) as exc:
                code = getattr(exc, "status", None)
                if isinstance(exc, KubernetesError) or (code is not None and code < 500):
                    self._queue.put(exc)
                    return
                failures += 1
            except Exception:  # a dropped connection: list and watch again
                failures += 1
            if failures:
                self._stop.wait(min(30.0, 0.5 * 2 ** min(failures, 6)))

    def next(self, seconds: float) -> ExecuteJobStatus:
        # The first status: as long as a request may take (the feed retries meanwhile).
        wait_for = seconds if self._latest is not None else _REQUEST_TIMEOUT_S + 5
        items: list[ExecuteJobStatus | BaseException | None] = []
        with contextlib.suppress(queue.Empty):
            items.append(
                self._queue.get(timeout=wait_for) if wait_for > 0 else self._queue.get_nowait()
            )
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        for item in items:
            if item is None:
                raise JobDeletedError(f"job {self._job.label} was deleted", self._latest)
            if isinstance(item, BaseException):
                raise item
            self._latest = item
        if self._latest is None:
            raise KubernetesError(
                f"reading ExecuteJob {self._job.label}: no answer within {wait_for}s"
            )
        self._job._last_status = self._latest
        return self._latest

    def _started(self, stream: Any) -> None:
        self._watching = stream
        if self._stop.is_set():
            stream.stop()

    def close(self) -> None:
        """Stop the watch now (its socket is shut down) and let the thread end: a thread
        blocked in a TLS read at interpreter exit can abort the process."""
        self._stop.set()
        if self._watching is not None:
            with contextlib.suppress(Exception):
                self._watching.stop()
        self._thread.join(timeout=_REQUEST_TIMEOUT_S)
