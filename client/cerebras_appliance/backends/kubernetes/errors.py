"""What the Kubernetes backend raises, and how a refused request becomes one of those.

Every request of the backend that the API server may refuse is translated at its call site by
``_api_error(what, exc, "verb", resource, namespace)``, the verb and resource written out
literally: ``tests/unit/test_chart.py`` reads those calls in this package's sources to check
that the example Role (``examples/user-rbac.yaml``) grants exactly what the client calls. The
underscore names are this package's own (its modules share them; nothing outside uses them).
"""

from __future__ import annotations

import urllib3
from kubernetes import client

from cerebras_appliance import settings
from cerebras_appliance.contract.api import PLURAL
from cerebras_appliance.contract.apistatus import ApiStatus, parse_api_status
from cerebras_appliance.contract.names import API_VERSION, GROUP

#: The example Role granting exactly what this client calls (``examples/user-rbac.yaml``).
USER_ROLE = "appliance-user"
_ROLE_HINT = (
    f"bind the pod's service account (or the user) to a Role that grants it: the Role "
    f"{USER_ROLE!r} of examples/user-rbac.yaml grants exactly what the client needs (submit, "
    "follow, logs, delete), and the namespace's 'edit' role includes it"
)
#: The resource of an ExecuteJob as an RBAC rule and the messages name it.
_EJ = f"{PLURAL}.{GROUP}"
#: What the client library raises when the API server cannot be reached (no ApiException).
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (urllib3.exceptions.HTTPError, OSError)


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


def refusal_of(exc: client.ApiException) -> ApiStatus:
    """The ``Status`` a refused request came with (read as the operator reads it)."""
    return parse_api_status(exc.status, exc.reason, exc.body)


def message_of(exc: client.ApiException) -> str:
    """The API server's own message for a refused request (else its status line)."""
    return refusal_of(exc).message or f"{exc.status} {exc.reason}"


def is_missing_object(exc: client.ApiException) -> bool:
    """A 404 naming one object: that object does not exist (the API does; see ``_api_error``)."""
    return exc.status == 404 and bool(refusal_of(exc).details.get("name"))


def unreachable(exc: BaseException) -> str:
    """The message for a request that never reached the API server."""
    return f"the API server could not be reached ({exc.__class__.__name__}: {exc})"


def _api_error(
    what: str, exc: client.ApiException, verb: str, resource: str, namespace: str
) -> KubernetesError:
    """The error for a refused request ``verb resource`` (``executejobs.appliance.dev``,
    ``secrets``, ``pods/log``...): forbidden (with the Role that grants it), refused
    credentials, the CRD or the namespace missing, or the API server's own message."""
    text = message_of(exc)
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
        details = refusal_of(exc).details
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


def with_suffix(error: KubernetesError, suffix: str) -> KubernetesError:
    """``error`` again, of the same class and with the same fields, its message extended."""
    extra: tuple[str, ...] = ()
    if isinstance(error, ForbiddenError):
        extra = (error.verb, error.resource, error.namespace)
    return type(error)(f"{error}{suffix}", *extra)
