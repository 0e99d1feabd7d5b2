"""The Kubernetes backend: a job is an ExecuteJob and its env Secret, run by the operator.

Credentials come from ``$KUBECONFIG`` (or ``~/.kube/config``), or the pod's service account
when running in a cluster. No value enters the ExecuteJob: every value goes to a Secret
``<job>-values-<random>`` owned by the job from its creation (deleted with the job); the job
holds names and ``secretKeyRef``s only (:mod:`.create` gives the order).

This package is the public import path of the backend's names; its modules, by concern:
:mod:`.config` (credentials, namespace, access review), :mod:`.errors` (what it raises),
:mod:`.objects` (the requests on one ExecuteJob), :mod:`.create` (the create protocol),
:mod:`.watch` (the status feed), :mod:`.logs` (the pods' logs), :mod:`.job` (the handle).
"""

from cerebras_appliance.backends.kubernetes.config import (
    default_namespace,
    kubeconfig_namespace,
    may_create_executejobs,
    namespace_setting,
    new_api_client,
    shared_api_client,
)
from cerebras_appliance.backends.kubernetes.create import CLIENT
from cerebras_appliance.backends.kubernetes.errors import (
    USER_ROLE,
    ForbiddenError,
    KubernetesError,
    NoCredentialsError,
    NotInstalledError,
)
from cerebras_appliance.backends.kubernetes.job import KubernetesJob

__all__ = [
    "CLIENT",
    "USER_ROLE",
    "ForbiddenError",
    "KubernetesError",
    "KubernetesJob",
    "NoCredentialsError",
    "NotInstalledError",
    "default_namespace",
    "kubeconfig_namespace",
    "may_create_executejobs",
    "namespace_setting",
    "new_api_client",
    "shared_api_client",
]
