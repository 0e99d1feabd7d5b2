"""Where ``submit()`` takes its backend, namespace and worker image from, at each call.

Order of precedence, for each of the three (first that is set wins):

* backend: ``backend=``, then ``$APPLIANCE_BACKEND``, then ``"auto"``: Kubernetes in a pod
  whose service account may create ExecuteJobs, local everywhere else;
* namespace: ``namespace=``, then ``$APPLIANCE_NAMESPACE``, then the pod's own (its service
  account's namespace file), then the kubeconfig context's, then ``default``;
* worker image: ``image=``, then ``$APPLIANCE_WORKER_IMAGE``, then :data:`DEFAULT_WORKER_IMAGE`.

An empty variable counts as unset. The variables are read when ``submit()`` is called, never
at import, so a notebook cell that sets one takes effect for the next job.

These are the client's own **configuration** variables: ``submit()`` reads them and never
sends them (:data:`CONFIG_VARS` are left out of the snapshot even when they were set through
``appliance_environ``), since ``APPLIANCE_*`` names are reserved for the workers' plumbing
and refused in ``spec.env``.

This module imports nothing heavy (no pydantic, no kubernetes): the Kubernetes-specific
parts (the kubeconfig's namespace, the access review of ``"auto"``) are passed in.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "BACKEND_VAR",
    "CONFIG_VARS",
    "DEFAULT_WORKER_IMAGE",
    "NAMESPACE_VAR",
    "WORKER_IMAGE_VAR",
    "BackendFallbackWarning",
    "ConfigurationError",
    "Setting",
]

BACKEND_VAR = "APPLIANCE_BACKEND"
NAMESPACE_VAR = "APPLIANCE_NAMESPACE"
WORKER_IMAGE_VAR = "APPLIANCE_WORKER_IMAGE"
#: Read by ``submit()``, never sent to workers.
CONFIG_VARS = frozenset({BACKEND_VAR, NAMESPACE_VAR, WORKER_IMAGE_VAR})

#: The worker image when neither ``image=`` nor ``$APPLIANCE_WORKER_IMAGE`` names one.
DEFAULT_WORKER_IMAGE = "appliance-operator/worker:0.1.0"
#: Where the kubelet mounts a pod's service account (token, namespace, CA).
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")

BackendName = Literal["auto", "local", "kubernetes"]
BACKENDS: tuple[BackendName, ...] = ("auto", "local", "kubernetes")


class ConfigurationError(ValueError):
    """A configuration value (argument or environment variable) is not one the client knows."""


class BackendFallbackWarning(UserWarning):
    """``backend="auto"`` ran in a pod but chose the local backend; the message says why."""


@dataclass(frozen=True)
class Setting:
    """A resolved setting and where it came from (for messages): ``value``, ``source``."""

    value: str
    source: str

    def __str__(self) -> str:
        return f"{self.value!r} ({self.source})"


def _env(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name, "").strip()
    return value or None


def backend_setting(backend: str | None, environ: Mapping[str, str] | None = None) -> Setting:
    """The backend asked for, before ``"auto"`` is decided: the argument, else
    ``$APPLIANCE_BACKEND``, else ``"auto"``. Raises :class:`ConfigurationError` for a value
    that is not ``auto``, ``local`` or ``kubernetes``, naming where it came from."""
    env = os.environ if environ is None else environ
    if backend is not None:
        found = Setting(backend, "the backend argument")
    elif (value := _env(env, BACKEND_VAR)) is not None:
        found = Setting(value, f"${BACKEND_VAR}")
    else:
        found = Setting("auto", "the default")
    if found.value not in BACKENDS:
        raise ConfigurationError(
            f"backend {found.value!r} from {found.source} is not one of "
            f"{', '.join(repr(b) for b in BACKENDS)}"
        )
    return found


def pod_namespace(sa_dir: Path | None = None) -> str | None:
    """The namespace of the pod this runs in (its service account's), or None."""
    try:
        return ((sa_dir or SERVICE_ACCOUNT_DIR) / "namespace").read_text().strip() or None
    except OSError:
        return None


def in_pod(environ: Mapping[str, str] | None = None, sa_dir: Path | None = None) -> bool:
    """Whether this runs in a pod with a service account token: what the in-cluster
    configuration needs (``$KUBERNETES_SERVICE_HOST`` and the mounted token)."""
    env = os.environ if environ is None else environ
    token = (sa_dir or SERVICE_ACCOUNT_DIR) / "token"
    return bool(env.get("KUBERNETES_SERVICE_HOST")) and token.is_file()


def namespace_setting(
    namespace: str | None,
    environ: Mapping[str, str] | None = None,
    *,
    sa_dir: Path | None = None,
    kubeconfig_namespace: Callable[[], str | None] = lambda: None,
) -> Setting:
    """The namespace: the argument, ``$APPLIANCE_NAMESPACE``, the pod's own, the kubeconfig
    context's (``kubeconfig_namespace()``), ``"default"``."""
    env = os.environ if environ is None else environ
    if namespace:
        return Setting(namespace, "the namespace argument")
    if (value := _env(env, NAMESPACE_VAR)) is not None:
        return Setting(value, f"${NAMESPACE_VAR}")
    if (value := pod_namespace(sa_dir)) is not None:
        return Setting(value, "the pod's own namespace")
    if (value := kubeconfig_namespace()) is not None:
        return Setting(value, "the kubeconfig context's namespace")
    return Setting("default", "the default")


def image_setting(image: str | None, environ: Mapping[str, str] | None = None) -> Setting:
    """The worker image: the argument, ``$APPLIANCE_WORKER_IMAGE``, the built-in default."""
    env = os.environ if environ is None else environ
    if image:
        return Setting(image, "the image argument")
    if (value := _env(env, WORKER_IMAGE_VAR)) is not None:
        return Setting(value, f"${WORKER_IMAGE_VAR}")
    return Setting(DEFAULT_WORKER_IMAGE, "the default")


def decide_auto(
    namespace: Callable[[], Setting],
    may_create: Callable[[str], tuple[bool, str]],
    environ: Mapping[str, str] | None = None,
    *,
    sa_dir: Path | None = None,
) -> Setting:
    """``"auto"``: ``"kubernetes"`` in a pod whose service account may create ExecuteJobs in
    the namespace (``may_create(namespace) -> (allowed, why not)``, a SelfSubjectAccessReview),
    ``"local"`` elsewhere. Outside a pod nothing is asked (a kubeconfig on a laptop does not
    switch the backend). In a pod without that right it warns
    (:class:`BackendFallbackWarning`) naming why, and runs locally."""
    if not in_pod(environ, sa_dir):
        return Setting("local", "backend 'auto': not in a pod with a service account token")
    ns = namespace()
    allowed, why = may_create(ns.value)
    if allowed:
        return Setting(
            "kubernetes",
            f"backend 'auto': in a pod whose service account may create executejobs in "
            f"namespace {ns.value!r}",
        )
    warnings.warn(
        f"backend 'auto' runs the workers locally, in this pod: {why}. Set "
        f"{BACKEND_VAR}=kubernetes (or pass backend='kubernetes') to get the error instead",
        BackendFallbackWarning,
        stacklevel=3,
    )
    return Setting("local", f"backend 'auto': {why}")
