"""The claim port's NetworkPolicy, one per WorkerPool in its namespace, made by the operator.

Idle pool workers listen on :data:`appliance_operator.desired.CLAIM_PORT` for the one claim
the operator sends them. The TLS of the claim channel refuses any other client; this policy
keeps other pods from even opening a connection (where the network plugin enforces
NetworkPolicy). Pools live in any namespace the operator watches (all of them in cluster
scope), so the operator itself makes the policy where each pool is, when it first reconciles
the pool:

* ``<pool>-claim``, owned by the pool (it goes with it), labelled as the pool's pods;
* selecting the pool's pods until their claim is delivered: idle ones, and claimed ones the
  operator has not delivered to yet (claim and delivery are two steps: a policy of idle pods
  only would let go of a pod between them, and a default-deny policy of the namespace would
  then refuse the delivery). The confirmation labels the pod
  ``appliance.dev/claim-delivered``, and the policy lets go of it: the job's own traffic is
  the job's business. Until then the pod runs no job code, so it needs no other ingress;
* admitting TCP to the claim port only from the operator's pods (their labels, in the
  operator's namespace), plus the chart's ``workerPools.networkPolicy.extraFrom`` peers.

Where the operator runs is read from its environment (the chart sets it; the downward API gives
the namespace): :func:`source_from_env`. Without it (an operator run outside a cluster, or the
chart's ``workerPools.networkPolicy.enabled=false``) no policy is made.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from appliance_operator.desired import pool_labels
from appliance_operator.kubeapi import ApiError, KubeApi
from cerebras_appliance.contract.api import POOL_KIND
from cerebras_appliance.contract.names import (
    API_VERSION,
    CLAIM_DELIVERED_LABEL,
    CLAIM_PORT,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    POOL_NAME_LABEL,
)

logger = logging.getLogger("appliance_operator")

#: The operator pod's namespace (the chart: the downward API's ``metadata.namespace``).
NAMESPACE_VAR = "APPLIANCE_OPERATOR_NAMESPACE"
#: Labels that select the operator's pods, ``key=value,key=value`` (the chart: its selector labels).
POD_LABELS_VAR = "APPLIANCE_OPERATOR_POD_LABELS"
#: More allowed peers, a JSON list of NetworkPolicyPeer objects (the chart's ``extraFrom``).
EXTRA_FROM_VAR = "APPLIANCE_CLAIM_POLICY_EXTRA_FROM"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


class PolicyConfigError(ValueError):
    """The operator's environment describes the policy's source wrongly (names the variable)."""


@dataclass(frozen=True)
class PolicySource:
    """Who may connect to idle workers' claim port: the operator's pods."""

    namespace: str
    pod_labels: tuple[tuple[str, str], ...]
    extra_from: str = "[]"  # JSON: a list of NetworkPolicyPeer objects

    def peers(self) -> list[dict[str, Any]]:
        operator = {
            "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: self.namespace}},
            "podSelector": {"matchLabels": dict(self.pod_labels)},
        }
        extra: list[dict[str, Any]] = json.loads(self.extra_from)
        return [operator, *extra]


def source_from_env(environ: Mapping[str, str]) -> PolicySource | None:
    """The policy's source from the operator's environment; None when neither variable is set
    (no policy is made). Raises :class:`PolicyConfigError` naming the variable to fix."""
    namespace = environ.get(NAMESPACE_VAR, "").strip()
    labels_text = environ.get(POD_LABELS_VAR, "").strip()
    if not namespace and not labels_text:
        return None
    if not namespace:
        raise PolicyConfigError(
            f"{POD_LABELS_VAR} is set but {NAMESPACE_VAR} is not: set it to the operator "
            "pod's namespace (the downward API's metadata.namespace), or unset both"
        )
    if not labels_text:
        raise PolicyConfigError(
            f"{NAMESPACE_VAR} is set but {POD_LABELS_VAR} is not: set it to labels that "
            "select the operator's pods (key=value,key=value), or unset both"
        )
    labels: dict[str, str] = {}
    for item in labels_text.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or not key.strip() or not value.strip():
            raise PolicyConfigError(
                f"{POD_LABELS_VAR} must be key=value pairs separated by commas "
                f"(got the item {item.strip()!r})"
            )
        labels[key.strip()] = value.strip()
    extra_text = environ.get(EXTRA_FROM_VAR, "").strip() or "[]"
    try:
        extra = json.loads(extra_text)
    except ValueError as exc:
        raise PolicyConfigError(f"{EXTRA_FROM_VAR} is not JSON: {exc}") from None
    if not isinstance(extra, list) or not all(isinstance(p, dict) and p for p in extra):
        raise PolicyConfigError(
            f"{EXTRA_FROM_VAR} must be a JSON list of NetworkPolicyPeer objects "
            '(e.g. [{"ipBlock": {"cidr": "10.0.0.0/8"}}])'
        )
    return PolicySource(
        namespace=namespace,
        pod_labels=tuple(sorted(labels.items())),
        extra_from=json.dumps(extra, sort_keys=True),
    )


def policy_name(pool_name: str) -> str:
    return f"{pool_name}-claim"


def claim_policy(
    pool_name: str, namespace: str, pool_uid: str, source: PolicySource, port: int = CLAIM_PORT
) -> dict[str, Any]:
    """The NetworkPolicy admitting only ``source`` to a pool's undelivered pods, on ``port``."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": policy_name(pool_name),
            "namespace": namespace,
            "labels": pool_labels(pool_name),
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": POOL_KIND,
                    "name": pool_name,
                    "uid": pool_uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "podSelector": {
                "matchLabels": {MANAGED_BY_LABEL: MANAGED_BY, POOL_NAME_LABEL: pool_name},
                "matchExpressions": [{"key": CLAIM_DELIVERED_LABEL, "operator": "DoesNotExist"}],
            },
            "policyTypes": ["Ingress"],
            "ingress": [{"from": source.peers(), "ports": [{"protocol": "TCP", "port": port}]}],
        },
    }


def is_current(existing: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Whether the policy found under the name is the wanted one: same spec, owned by this
    pool (a policy of an earlier pool of the same name, or someone else's, is replaced)."""
    meta = existing.get("metadata") or {}
    uid = wanted["metadata"]["ownerReferences"][0]["uid"]
    owned = any(
        r.get("uid") == uid and r.get("controller") for r in meta.get("ownerReferences") or []
    )
    return owned and existing.get("spec") == wanted["spec"]


class PolicyKeeper:
    """Makes each pool's policy once per pool uid and operator process (its reconcile)."""

    def __init__(self, api: KubeApi, source: PolicySource | None, port: int = CLAIM_PORT):
        self.api = api
        self.source = source
        self.port = port
        self._done: dict[tuple[str, str], str] = {}  # (namespace, pool) -> pool uid

    def ensure(self, namespace: str, pool_name: str, uid: str) -> None:
        if self.source is None or not uid or self._done.get((namespace, pool_name)) == uid:
            return
        wanted = claim_policy(pool_name, namespace, uid, self.source, self.port)
        name = policy_name(pool_name)
        try:
            try:
                self.api.create_network_policy(namespace, wanted)
            except ApiError as exc:
                if exc.code != 409:
                    raise
                existing = self.api.read_network_policy(namespace, name)
                if existing is None:
                    return  # deleted meanwhile: the next reconcile creates it
                if not is_current(existing, wanted):
                    version = (existing.get("metadata") or {}).get("resourceVersion")
                    meta = {**wanted["metadata"], "resourceVersion": version}
                    body = {**wanted, "metadata": meta}
                    self.api.replace_network_policy(namespace, name, body)
        except ApiError as exc:
            logger.warning(
                "[%s/%s] the claim port's NetworkPolicy %s could not be made (%s); "
                "idle workers are protected by the claim channel's TLS only until it is",
                namespace,
                pool_name,
                name,
                exc,
            )
            return
        self._done[(namespace, pool_name)] = uid

    def forget(self, namespace: str, pool_name: str) -> None:
        """The pool is gone (its policy goes with it, by its owner reference)."""
        self._done.pop((namespace, pool_name), None)


def source_from_os() -> PolicySource | None:
    """:func:`source_from_env` of this process's environment."""
    return source_from_env(os.environ)
