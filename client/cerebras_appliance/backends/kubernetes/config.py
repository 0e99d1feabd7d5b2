"""Reaching the cluster: credentials (the pod's service account, else a kubeconfig), the
namespace by the documented order, and whether the caller may create ExecuteJobs there."""

from __future__ import annotations

import os
import threading

from kubernetes import client, config

from cerebras_appliance import settings
from cerebras_appliance.backends.kubernetes.errors import (
    _ROLE_HINT,
    CONNECTION_ERRORS,
    NoCredentialsError,
    message_of,
    unreachable,
)
from cerebras_appliance.backends.kubernetes.objects import REQUEST_TIMEOUT_S
from cerebras_appliance.contract.api import PLURAL
from cerebras_appliance.contract.names import GROUP


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
            review, _request_timeout=REQUEST_TIMEOUT_S
        )
    except client.ApiException as exc:
        return False, f"asking whether it may create executejobs failed: {message_of(exc)}"
    except CONNECTION_ERRORS as exc:
        return False, unreachable(exc)
    if result.status is not None and result.status.allowed:
        return True, ""
    return False, (
        f"its service account may not create executejobs.{GROUP} in namespace {namespace!r} "
        f"(SelfSubjectAccessReview); {_ROLE_HINT}"
    )
