"""One in-memory stand-in for the operator's ``KubeApi``, for the operator's unit tests.

The reconcile loop reaches Kubernetes only through ``appliance_operator.kubeapi.KubeApi``,
so one fake of that class is enough for every test that drives the controllers without a
control plane (the integration suite runs the real class against a real API server).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import threading
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from appliance_operator.kubeapi import ApiError, KubeApi

#: The resourceVersion an ExecuteJob has before any write of the fake's: the one
#: ``support.objects.job_body()`` (and every job body of the unit tests) carries.
JOB_VERSION = 10
#: ``metadata.deletionTimestamp`` of a pod deleted while it has finalizers.
DELETED_AT = "2026-03-01T12:00:00Z"

#: The kinds the fake stores, by resource (their uids read ``<kind>-uid-<n>``).
_KINDS = {"pods": "pod", "secrets": "secret", "networkpolicies": "networkpolicy"}
_MODIFIED = "the object has been modified; please apply your changes to the latest version"


def _copy(obj: Any) -> Any:
    """What a request or an answer carries: a copy (JSON in, JSON out), never shared."""
    return copy.deepcopy(obj)


def _merge(target: dict[str, Any], patch: Mapping[str, Any]) -> None:
    """JSON merge patch (RFC 7386), in place: maps merge, null removes a key, anything else
    (lists included) replaces."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, Mapping):
            child = target.get(key)
            if not isinstance(child, dict):
                child = target[key] = {}
            _merge(child, value)
        else:
            target[key] = _copy(value)


class FakeKubeApi(KubeApi):
    """``KubeApi`` in memory, answering as the API server does for the calls the operator
    makes. A subclass, so mypy checks each method against the real one's signature; the real
    ``__init__`` (an API client, metrics) is not run: nothing here sends a request.

    What it models, per call of ``KubeApi`` (each names the real request it stands for):

    - **Recording**: every call appends ``(verb, resource)`` to ``calls``, exactly as the
      real method counts it in ``appliance_operator_api_requests_total`` (a refused call
      too); every object or patch sent, except a Secret's (whose values are its purpose),
      is appended to ``bodies`` as JSON, for tests that look for leaked values.
    - **Objects**: pods, Secrets and NetworkPolicies, by name, in one namespace (``ml``: a
      call naming another fails the test). A create fills in ``uid``, ``resourceVersion``
      and ``namespace``; answers and reads are copies, as a server's serialization is.
      ``add`` stores one made before the test (by someone else). Tests may also read and
      write the ``pods``/``secrets``/``network_policies`` dicts directly (the scenario).
    - **resourceVersion**: one counter for all stored objects (etcd's revision); it moves on
      each write that changes an object (a no-op patch changes nothing). ExecuteJobs are not
      stored: ``job_versions`` holds each job's version, ``JOB_VERSION`` until the fake
      writes its status, so a test can name the versions its watch shows.
    - **Errors** (``ApiError(code, reason, message)``, as ``kubeapi`` maps a Status):
      409 AlreadyExists on a create of an existing name; 404 NotFound for a missing object;
      409 Conflict when a ``metadata.resourceVersion`` in a patch or update, the
      ``resource_version`` of a status patch, or the uid of a delete's preconditions or of a
      patch's ``metadata.uid`` does not match the stored object ("Precondition failed": a
      uid mismatch is a 409 on a real server, not a 404; the operator reads both as "gone,
      or a newer object of that name").
    - **Patches**: ``patch_pod`` is a JSON merge patch; ``remove_finalizer`` is the strategic
      merge ``$deleteFromPrimitiveList``: idempotent, other finalizers untouched.
    - **Deletion**: a pod with finalizers gets a ``deletionTimestamp`` and stays until its
      last finalizer is removed (by ``remove_finalizer`` or a patch); one without goes at
      once, as an unscheduled pod does (to ``removed_pods``).
    - **Failures**: ``fail(verb, resource, error)`` answers matching calls with ``error``
      (one object's, a number of times, or until ``heal``), after recording them.

    What it does not model: other namespaces, label selectors and ``list_uids`` (raises
    NotImplementedError), watches, the ExecuteJob and WorkerPool objects themselves (a status
    patch answers ``metadata.resourceVersion`` and the status sent; ``delete_job`` is only
    recorded, and a job's status is not checked for existence: no 404), the kubelet (pod
    phases change only when a test writes them; no graceful deletion, where a pod on a node
    stays Terminating until its kubelet confirms), admission and validation (size limits,
    immutable Secrets, schemas, and the Kubernetes client's own model check that ``kubeapi``
    answers with 422), garbage collection of owned objects, Events' names, request timeouts.
    """

    def __init__(self, namespace: str = "ml") -> None:
        # KubeApi.__init__ is not called on purpose: there is no API client.
        self.namespace = namespace
        self.calls: list[tuple[str, str]] = []
        self.bodies: list[str] = []
        self.pods: dict[str, dict[str, Any]] = {}
        self.secrets: dict[str, dict[str, Any]] = {}
        self.network_policies: dict[str, dict[str, Any]] = {}
        self.job_versions: defaultdict[str, int] = defaultdict(lambda: JOB_VERSION)
        #: The ``status`` of every ExecuteJob status patch the fake applied, in order.
        self.statuses: list[dict[str, Any]] = []
        #: The ``status`` of every WorkerPool status patch, in order.
        self.pool_statuses: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        #: Names of the pods a delete was requested for (also when it was refused).
        self.deleted: list[str] = []
        #: Names of the pods whose finalizer removal the fake applied.
        self.released: list[str] = []
        #: The pods that are gone, in their last state (what a watch's DELETED event shows).
        self.removed_pods: dict[str, dict[str, Any]] = {}
        self._failures: list[_Failure] = []
        self._revision = itertools.count(100)
        self._uids = itertools.count(1)
        self._names = itertools.count(1)
        self._lock = threading.RLock()

    # -- the test's controls ---------------------------------------------------------------

    def fail(
        self,
        verb: str,
        resource: str,
        error: ApiError,
        *,
        name: str | None = None,
        times: int | None = None,
    ) -> None:
        """Answer the calls ``(verb, resource)`` with ``error`` instead of carrying them out:
        only those about object ``name`` if given, only the next ``times`` if given (else
        until :meth:`heal`)."""
        self._failures.append(_Failure(verb, resource, error, name, times))

    def heal(self, verb: str, resource: str) -> None:
        """Calls ``(verb, resource)`` are carried out again."""
        self._failures = [f for f in self._failures if (f.verb, f.resource) != (verb, resource)]

    def add(self, resource: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Store an object someone else made before the test's calls (not recorded): a uid
        unless it has one, a new resourceVersion. ``resource``: pods, secrets or
        networkpolicies."""
        with self._lock:
            stored: dict[str, Any] = _copy(dict(body))
            meta = stored.setdefault("metadata", {})
            meta.setdefault("uid", f"{_KINDS[resource]}-uid-{next(self._uids)}")
            meta["namespace"] = self.namespace
            meta["resourceVersion"] = self._next_revision()
            self._store(resource)[meta["name"]] = stored
            return stored

    # -- pods --------------------------------------------------------------------------------

    def create_pod(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST pods: ``generateName`` gets a suffix; the status is the server's (Pending)."""
        with self._lock:
            self._request("create", "pods", namespace, body)
            created: dict[str, Any] = _copy(dict(body))
            meta = created["metadata"]
            if "name" not in meta:
                meta["name"] = meta["generateName"] + f"{next(self._names):05d}"
            self._check_failure("create", "pods", meta["name"])
            created["status"] = {"phase": "Pending"}
            return self._create("pods", created)

    def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._read("pods", namespace, name)

    def remove_finalizer(self, namespace: str, name: str, uid: str, finalizer: str) -> None:
        """Strategic merge PATCH ``{"metadata": {"uid": uid, "$deleteFromPrimitiveList/
        finalizers": [finalizer]}}``: idempotent; the pod goes once a deleted pod's last
        finalizer is removed."""
        with self._lock:
            body = {"metadata": {"uid": uid, "$deleteFromPrimitiveList/finalizers": [finalizer]}}
            self._request("patch", "pods", namespace, body)
            self._check_failure("patch", "pods", name)
            pod = self._existing("pods", name)
            self._preconditions("pods", pod, uid=uid)
            meta = pod["metadata"]
            kept = [f for f in meta.get("finalizers") or [] if f != finalizer]
            if kept != (meta.get("finalizers") or []):
                meta["finalizers"] = kept
                self._written("pods", pod)
            self.released.append(name)

    def patch_pod(self, namespace: str, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """JSON merge PATCH of a pod; ``metadata.resourceVersion`` (and ``metadata.uid``) in
        the patch are preconditions."""
        with self._lock:
            self._request("patch", "pods", namespace, body)
            self._check_failure("patch", "pods", name)
            pod = self._existing("pods", name)
            meta = body.get("metadata") or {}
            self._preconditions(
                "pods", pod, uid=meta.get("uid"), resource_version=meta.get("resourceVersion")
            )
            before = _copy(pod)
            changes = {k: v for k, v in meta.items() if k not in ("uid", "resourceVersion")}
            _merge(pod, {**body, "metadata": changes})
            if pod != before:
                self._written("pods", pod)
            answer: dict[str, Any] = _copy(pod)
            return answer

    def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        """DELETE with preconditions ``{uid}``: with finalizers the pod is only marked
        (``deletionTimestamp``), else it is gone."""
        with self._lock:
            self._request("delete", "pods", namespace)
            self.deleted.append(name)
            self._check_failure("delete", "pods", name)
            pod = self._existing("pods", name)
            self._preconditions("pods", pod, uid=uid)
            meta = pod["metadata"]
            if not meta.get("finalizers"):
                self.removed_pods[name] = self.pods.pop(name)
            elif "deletionTimestamp" not in meta:
                meta["deletionTimestamp"] = DELETED_AT
                meta["resourceVersion"] = self._next_revision()

    # -- secrets -----------------------------------------------------------------------------

    def create_secret(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST secrets (its body is not added to ``bodies``: it holds values)."""
        with self._lock:
            self._request("create", "secrets", namespace)
            self._check_failure("create", "secrets", body["metadata"]["name"])
            return self._create("secrets", _copy(dict(body)))

    def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._read("secrets", namespace, name)

    # -- network policies --------------------------------------------------------------------

    def create_network_policy(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        with self._lock:
            self._request("create", "networkpolicies", namespace, body)
            self._check_failure("create", "networkpolicies", body["metadata"]["name"])
            return self._create("networkpolicies", _copy(dict(body)))

    def read_network_policy(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._read("networkpolicies", namespace, name)

    def replace_network_policy(
        self, namespace: str, name: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """PUT: the body replaces the object (its uid stays); its resourceVersion, when it
        has one, is a precondition."""
        with self._lock:
            self._request("update", "networkpolicies", namespace, body)
            self._check_failure("update", "networkpolicies", name)
            current = self._existing("networkpolicies", name)
            self._preconditions(
                "networkpolicies",
                current,
                resource_version=(body.get("metadata") or {}).get("resourceVersion"),
            )
            replaced: dict[str, Any] = _copy(dict(body))
            replaced["metadata"]["uid"] = current["metadata"]["uid"]
            replaced["metadata"]["namespace"] = self.namespace
            self.network_policies[name] = replaced
            return self._written("networkpolicies", replaced)

    # -- jobs and pools ----------------------------------------------------------------------

    def patch_job_status(
        self,
        namespace: str,
        name: str,
        status: Mapping[str, Any],
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        """Merge PATCH of executejobs/status: with ``resource_version`` it applies only to
        that version of the job (``job_versions[name]``), else 409; each write moves the
        job's version on by one."""
        with self._lock:
            body: dict[str, Any] = {"status": dict(status)}
            if resource_version:
                body["metadata"] = {"resourceVersion": resource_version}
            self._request("patch", "executejobs/status", namespace, body)
            self._check_failure("patch", "executejobs/status", name)
            if resource_version and resource_version != str(self.job_versions[name]):
                raise ApiError(409, "Conflict", f'executejobs "{name}": {_MODIFIED}')
            self.statuses.append(dict(status))
            self.job_versions[name] += 1
            version = str(self.job_versions[name])
            return {
                "metadata": {"name": name, "namespace": namespace, "resourceVersion": version},
                "status": _copy(dict(status)),
            }

    def patch_pool_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Merge PATCH of workerpools/status (no precondition: the real call sends none)."""
        with self._lock:
            self._request("patch", "workerpools/status", namespace, {"status": dict(status)})
            self._check_failure("patch", "workerpools/status", name)
            self.pool_statuses.append(dict(status))
            version = self._next_revision()
            return {
                "metadata": {"name": name, "namespace": namespace, "resourceVersion": version},
                "status": _copy(dict(status)),
            }

    def delete_job(self, namespace: str, name: str, uid: str) -> None:
        """DELETE of an ExecuteJob: recorded (the fake holds no jobs, nor garbage-collects)."""
        with self._lock:
            self._request("delete", "executejobs", namespace)
            self._check_failure("delete", "executejobs", name)

    def list_uids(self, namespace: str, resource: str) -> set[str]:
        """Not modelled (label selectors, pages): the tests of drift fake this call alone."""
        raise NotImplementedError("FakeKubeApi does not model list_uids")

    # -- events ------------------------------------------------------------------------------

    def create_event(self, namespace: str, body: Mapping[str, Any]) -> None:
        with self._lock:
            self._request("create", "events", namespace, body)
            self._check_failure("create", "events", None)
            self.events.append(_copy(dict(body)))

    # -- the server's bookkeeping ------------------------------------------------------------

    def _request(
        self, verb: str, resource: str, namespace: str, body: Mapping[str, Any] | None = None
    ) -> None:
        assert namespace == self.namespace, f"the fake holds namespace {self.namespace} only"
        self.calls.append((verb, resource))
        if body is not None:
            self.bodies.append(json.dumps(dict(body)))

    def _check_failure(self, verb: str, resource: str, name: str | None) -> None:
        for failure in self._failures:
            if (failure.verb, failure.resource) != (verb, resource):
                continue
            if failure.name is not None and failure.name != name:
                continue
            if failure.times is not None:
                failure.times -= 1
                if failure.times <= 0:
                    self._failures.remove(failure)
            raise failure.error

    def _read(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        """GET resource/name: None when it does not exist (the real call's ``absent_ok``)."""
        with self._lock:
            self._request("get", resource, namespace)
            self._check_failure("get", resource, name)
            found = self._store(resource).get(name)
            return None if found is None else _copy(found)

    def _store(self, resource: str) -> dict[str, dict[str, Any]]:
        stores = {
            "pods": self.pods,
            "secrets": self.secrets,
            "networkpolicies": self.network_policies,
        }
        return stores[resource]

    def _next_revision(self) -> str:
        return str(next(self._revision))

    def _create(self, resource: str, created: dict[str, Any]) -> dict[str, Any]:
        meta = created["metadata"]
        store = self._store(resource)
        if meta["name"] in store:
            raise ApiError(409, "AlreadyExists", f'{resource} "{meta["name"]}" already exists')
        meta["uid"] = f"{_KINDS[resource]}-uid-{next(self._uids)}"
        meta["namespace"] = self.namespace
        meta["resourceVersion"] = self._next_revision()
        store[meta["name"]] = created
        answer: dict[str, Any] = _copy(created)
        return answer

    def _existing(self, resource: str, name: str) -> dict[str, Any]:
        found = self._store(resource).get(name)
        if found is None:
            raise ApiError(404, "NotFound", f'{resource} "{name}" not found')
        return found

    def _preconditions(
        self,
        resource: str,
        current: Mapping[str, Any],
        *,
        uid: str | None = None,
        resource_version: str | None = None,
    ) -> None:
        meta = current["metadata"]
        name = meta["name"]
        if uid and uid != meta.get("uid"):
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {resource} "{name}": Precondition failed: '
                f"UID in precondition: {uid}, UID in object meta: {meta.get('uid')}",
            )
        if resource_version and resource_version != meta.get("resourceVersion"):
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {resource} "{name}": {_MODIFIED}',
            )

    def _written(self, resource: str, stored: dict[str, Any]) -> dict[str, Any]:
        """A write changed ``stored``: a new resourceVersion; a deleted pod whose last
        finalizer went is gone."""
        meta = stored["metadata"]
        meta["resourceVersion"] = self._next_revision()
        if resource == "pods" and "deletionTimestamp" in meta and not meta.get("finalizers"):
            self.removed_pods[meta["name"]] = self.pods.pop(meta["name"])
        answer: dict[str, Any] = _copy(stored)
        return answer


@dataclasses.dataclass
class _Failure:
    """One injected failure (:meth:`FakeKubeApi.fail`)."""

    verb: str
    resource: str
    error: ApiError
    name: str | None
    times: int | None
