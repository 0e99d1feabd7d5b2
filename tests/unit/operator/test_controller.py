"""Controller.reconcile against a fake API: the calls made, idempotence, and no value leaks."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from support import objects
from support.fake_kube import FakeKubeApi

from appliance_operator.expectations import EXPECTATION_TTL
from appliance_operator.job.controller import Controller, status_patch
from appliance_operator.job.plan import Event
from appliance_operator.kubeapi import ApiError
from appliance_operator.metrics import Metrics
from appliance_operator.observe import PodView, job_view, pod_view
from cerebras_appliance.contract import envfile, names
from cerebras_appliance.contract.api import ExecuteJobStatus

UID = objects.JOB_UID
KEY = ("ml", "demo")
INLINE = "inline-sentinel-93c1"
SECRET_VALUE = "secret-sentinel-5be0"
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def job_body(env: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    if env is None:
        env = [
            {"name": "DATA_ROOT", "value": INLINE},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "t"}}},
        ]
    return objects.job_body(env=env, **spec)


def user_secret(api: FakeKubeApi) -> None:
    api.secrets["creds"] = {
        "metadata": {"name": "creds", "uid": "s-creds"},
        "data": {"t": base64.b64encode(SECRET_VALUE.encode()).decode()},
    }


@pytest.fixture
def api() -> FakeKubeApi:
    fake = FakeKubeApi()
    user_secret(fake)
    return fake


def controller(api: FakeKubeApi) -> Controller:
    return Controller(api, Metrics(), clock=lambda: NOW)


def views(api: FakeKubeApi, phase: str = "Running", ready: bool = True) -> list[PodView]:
    return pods_in(api, dict.fromkeys(api.pods, phase), ready=ready)


def pods_in(api: FakeKubeApi, phases: dict[str, str], ready: bool = False) -> list[PodView]:
    """The pods as the API server has them now (finalizers included), in these phases."""
    out = []
    for name, phase in phases.items():
        body = json.loads(json.dumps(api.pods[name]))
        body["status"] = {
            "phase": phase,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        }
        view = pod_view(body)
        assert view is not None
        out.append(view)
    return out


def test_first_reconcile_makes_secret_pods_status_once(api: FakeKubeApi) -> None:
    ctl = controller(api)
    ctl.reconcile(KEY, job_body(), [])
    assert api.calls == [
        ("get", "secrets"),  # creds, for the secretKeyRef
        ("create", "secrets"),
        ("create", "pods"),  # slow start: 1, then 2 at once
        ("create", "pods"),
        ("patch", "executejobs/status"),
        ("create", "events"),
    ]
    assert sorted(api.pods) == ["demo-worker-0", "demo-worker-1"]
    content = base64.b64decode(api.secrets["demo-env"]["data"][names.SNAPSHOT_KEY]).decode()
    snapshot = envfile.parse(content, "env.json")
    assert snapshot.env == (("DATA_ROOT", INLINE), ("TOKEN", SECRET_VALUE))
    (status,) = api.statuses
    assert status["phase"] == "Pending" and status["replicas"] == 2
    env_cond = next(c for c in status["conditions"] if c["type"] == "EnvResolved")
    assert env_cond["status"] == "True"
    assert api.events[0]["reason"] == "CreatedWorkers"


class SlowEvents(FakeKubeApi):
    """Posting an Event blocks until the test lets it through (an API server under load)."""

    def __init__(self) -> None:
        super().__init__()
        self.let_through = threading.Event()
        self.posted = threading.Condition()

    def create_event(self, namespace: str, body: Mapping[str, Any]) -> None:
        assert self.let_through.wait(timeout=30), "the test never let the Event through"
        with self.posted:
            super().create_event(namespace, body)
            self.posted.notify_all()


def test_background_events_do_not_hold_up_the_reconcile() -> None:
    """The operator's setting: a reconcile returns while its Events are still being posted
    (the job's next reconcile can start), and they arrive afterwards, in order."""
    api = SlowEvents()
    user_secret(api)
    ctl = Controller(api, Metrics(), clock=lambda: NOW, background_events=True)
    try:
        ctl.reconcile(KEY, job_body(), [])  # returns although no Event can be posted yet
        assert ("patch", "executejobs/status") in api.calls
        assert api.events == []
        ctl.post_event(job_view(job_body()), Event("Warning", "Second", "after the first"))
        api.let_through.set()
        with api.posted:
            assert api.posted.wait_for(lambda: len(api.events) == 2, timeout=30), api.events
        assert [e["reason"] for e in api.events] == ["CreatedWorkers", "Second"]
    finally:
        ctl.close()


def test_reconcile_on_a_stale_cache_repeats_nothing(api: FakeKubeApi) -> None:
    """Until the watch shows our pods and status, a reconcile must not redo the work."""
    ctl = controller(api)
    ctl.reconcile(KEY, job_body(), [])
    api.calls.clear()
    for _ in range(3):
        ctl.reconcile(KEY, job_body(), [])  # same resourceVersion, no pods seen yet
    assert api.calls == []


def test_status_writes_in_a_row_survive_a_watch_that_shows_the_first(api: FakeKubeApi) -> None:
    """Two workers succeed in two reconciles before the watch shows the job again; it then
    shows the version of the first count only. The second worker, counted and released, is
    not run again and its count is not written backwards (seen on kind: two succeeded pool
    workers were started again)."""
    ctl = controller(api)
    ctl.reconcile(KEY, job_body(), [])  # pods created, status written: version 11
    first, second = "demo-worker-0", "demo-worker-1"
    stale = job_body()  # the watch still shows version 10
    ctl.reconcile(KEY, stale, pods_in(api, {first: "Succeeded", second: "Running"}))
    assert api.released == [first]
    ctl.reconcile(KEY, stale, pods_in(api, {first: "Succeeded", second: "Succeeded"}))
    assert api.released == [first, second]
    assert api.statuses[-1]["succeeded"] == 2 and api.job_versions["demo"] == 13
    # The watch now shows version 12: the status with only the first count.
    shown = job_body()
    shown["metadata"]["resourceVersion"] = "12"
    shown["status"] = {k: v for k, v in api.statuses[-2].items() if v is not None}
    assert shown["status"]["succeeded"] == 1
    writes = len(api.statuses)
    ctl.reconcile(KEY, shown, pods_in(api, {first: "Succeeded", second: "Succeeded"}))
    assert sorted(api.pods) == [first, second]  # no second run of a succeeded worker
    assert all(s["succeeded"] == 2 for s in api.statuses[writes:])
    # Once the watch shows the last write, the cache is the truth again.
    shown["metadata"]["resourceVersion"] = str(api.job_versions["demo"])
    shown["status"] = {k: v for k, v in api.statuses[-1].items() if v is not None}
    ctl.reconcile(KEY, shown, pods_in(api, {first: "Succeeded", second: "Succeeded"}))
    assert sorted(api.pods) == [first, second]
    assert api.statuses[-1]["phase"] == "Succeeded"


def test_a_watch_lagging_past_the_operators_memory_does_not_count_a_failure_twice(
    api: FakeKubeApi,
) -> None:
    """A counted pod's uid leaves ``countedPods`` only once the watch shows it without the
    finalizer: the operator's record of having removed it expires (EXPECTATION_TTL), and a
    watch lagging longer still shows the pod ended and tracked."""
    clock = [0.0]  # the operator's monotonic clock (its expectations expire on it)
    ctl = Controller(api, Metrics(), clock=lambda: NOW, monotonic=lambda: clock[0])
    ctl.reconcile(KEY, job_body(backoffLimit=5), [])
    failed, running = "demo-worker-0", "demo-worker-1"
    lagging = pods_in(api, {failed: "Failed", running: "Running"})  # the finalizer still on

    def seen() -> dict[str, Any]:  # the job as the watch shows it after our last write
        body = job_body(backoffLimit=5)
        body["metadata"]["resourceVersion"] = str(api.job_versions["demo"])
        body["status"] = {k: v for k, v in api.statuses[-1].items() if v is not None}
        return body

    ctl.reconcile(KEY, seen(), lagging)  # counted, then its finalizer removed
    assert api.statuses[-1]["failed"] == 1 and api.released == [failed]
    for _ in range(2):
        ctl.reconcile(KEY, seen(), [p for p in lagging if p.name == failed])
        assert failed in {p.name for p in lagging}
    counted_during_lag = api.statuses[-1]["countedPods"]
    clock[0] += EXPECTATION_TTL + 1  # the memory has expired; the watch still lags
    ctl.reconcile(KEY, seen(), lagging)
    assert api.statuses[-1]["failed"] == 1, "the same failed pod was counted twice"
    assert [e["reason"] for e in api.events].count("WorkerFailed") == 1
    assert counted_during_lag == [lagging[0].uid]  # kept while the watch shows it tracked
    # The watch catches up: the pod is shown without the finalizer, its uid is dropped.
    ctl.reconcile(KEY, seen(), pods_in(api, {failed: "Failed"}))
    assert api.statuses[-1]["countedPods"] == [] and api.statuses[-1]["failed"] == 1


def test_a_refused_finalizer_removal_says_why_and_what_to_do(
    api: FakeKubeApi, caplog: pytest.LogCaptureFixture
) -> None:
    """Namespace scope before Kubernetes 1.33: deleting the namespace may remove the
    operator's Role before its pods (403 on every finalizer removal). Retrying cannot help:
    the log names the cause and the fix, and the rest of the reconcile goes on."""
    ctl = controller(api)
    ctl.reconcile(KEY, job_body(), [])

    def forbidden(namespace: str, name: str, uid: str, finalizer: str) -> None:
        raise ApiError(403, "Forbidden", f'pods "{name}" is forbidden')

    api.remove_finalizer = forbidden  # type: ignore[method-assign]
    ctl.reconcile(KEY, None, views(api))  # the job is gone: its pods are released
    records = [r.getMessage() for r in caplog.records if "may not patch pod" in r.getMessage()]
    assert len(records) == 2  # one per pod, and no exception
    assert all("OrderedNamespaceDeletion" in r for r in records)
    assert "kubectl patch pod demo-worker-0 -n ml" in records[0]


def test_a_status_planned_on_a_version_someone_else_replaced_is_refused(api: FakeKubeApi) -> None:
    """Every status write is preconditioned on the version planned on: after another write
    (a second operator, a person), a plan made on the older cache is refused, not written."""
    ctl = controller(api)
    ctl.reconcile(KEY, job_body(), [])
    seen = job_body()
    seen["metadata"]["resourceVersion"] = "11"
    seen["status"] = {k: v for k, v in api.statuses[-1].items() if v is not None}
    api.job_versions["demo"] = 12  # written by someone else meanwhile
    writes = len(api.statuses)
    with pytest.raises(ApiError) as refused:
        ctl.reconcile(KEY, seen, views(api))  # would write Running (2/2 ready)
    assert refused.value.code == 409 and len(api.statuses) == writes


def test_running_then_no_more_writes(api: FakeKubeApi) -> None:
    ctl = controller(api)
    ctl.reconcile(KEY, job_body(), [])
    api.calls.clear()
    seen = job_body()
    seen["metadata"]["resourceVersion"] = "11"
    seen["status"] = api.statuses[-1]
    ctl.reconcile(KEY, seen, views(api))
    assert api.calls == [("patch", "executejobs/status"), ("create", "events")]
    assert api.statuses[-1]["phase"] == "Running" and api.statuses[-1]["readyReplicas"] == 2
    assert api.events[-1]["reason"] == "Running"
    api.calls.clear()
    seen["metadata"]["resourceVersion"] = "12"
    seen["status"] = {k: v for k, v in api.statuses[-1].items() if v is not None}
    ctl.reconcile(KEY, seen, views(api))
    assert api.calls == []


def test_restarted_operator_makes_no_duplicates(api: FakeKubeApi) -> None:
    """A new Controller (empty memory) that sees the pods does not create any; one that does
    not see them yet gets 409s for the pods and for its status, planned on the older job
    version (the retry plans on a fresher cache)."""
    controller(api).reconcile(KEY, job_body(), [])
    api.calls.clear()
    fresh = controller(api)
    with pytest.raises(ApiError) as stale:
        fresh.reconcile(KEY, job_body(), [])  # the watch has not delivered the pods yet
    assert stale.value.code == 409
    assert ("create", "pods") in api.calls
    assert sorted(api.pods) == ["demo-worker-0", "demo-worker-1"]  # still two


def test_values_leak_nowhere_but_the_env_secret(api: FakeKubeApi) -> None:
    ctl = controller(api)
    ctl.reconcile(KEY, job_body(), [])
    seen = job_body()
    seen["metadata"]["resourceVersion"] = "11"
    ctl.reconcile(KEY, seen, views(api, phase="Failed"))
    outside = json.dumps([api.pods, api.statuses, api.events])
    assert INLINE not in outside and SECRET_VALUE not in outside
    assert api.statuses[-1]["phase"] == "Failed"


def test_missing_user_secret_is_reported_once_and_retried_with_backoff() -> None:
    api = FakeKubeApi()  # no "creds"
    ctl = controller(api)
    delays = [ctl.reconcile(KEY, job_body(), []) for _ in range(3)]
    assert api.pods == {} and "demo-env" not in api.secrets
    warnings = [e for e in api.events if e["type"] == "Warning"]
    assert len(warnings) == 1  # not repeated on every retry
    assert warnings[0]["reason"] == "SecretNotFound"
    assert "spec.env[1] (TOKEN)" in warnings[0]["message"] and "'creds'" in warnings[0]["message"]
    cond = next(c for c in api.statuses[0]["conditions"] if c["type"] == "EnvResolved")
    assert cond["status"] == "False" and cond["reason"] == "SecretNotFound"
    assert api.statuses[0]["phase"] == "Pending"
    assert len(api.statuses) == 1  # the condition is written once
    assert all(d is not None for d in delays)
    assert delays[0] < delays[1] < delays[2]  # type: ignore[operator]
    user_secret(api)  # the user creates it: the next retry starts the job
    ctl.reconcile(KEY, job_body(), [])
    assert sorted(api.pods) == ["demo-worker-0", "demo-worker-1"]


def test_stale_env_secret_of_an_earlier_job_is_left_to_the_garbage_collector(
    api: FakeKubeApi,
) -> None:
    api.secrets["demo-env"] = {
        "metadata": {
            "name": "demo-env",
            "uid": "s-old",
            "labels": {
                "app.kubernetes.io/managed-by": "appliance-operator",
                "appliance.dev/job-name": "demo",
            },
            "ownerReferences": [{"uid": "uid-of-a-deleted-job"}],
        }
    }
    ctl = controller(api)
    delay = ctl.reconcile(KEY, job_body(), [])
    assert ("delete", "secrets") not in api.calls and api.pods == {}  # no delete grant
    assert delay is not None and delay <= 1
    cond = next(c for c in api.statuses[-1]["conditions"] if c["type"] == "EnvResolved")
    assert cond["reason"] == "WaitingForOldSecret"
    del api.secrets["demo-env"]  # the garbage collector's work
    ctl.reconcile(KEY, job_body(), [])
    assert api.secrets["demo-env"]["metadata"]["ownerReferences"][0]["uid"] == UID
    assert len(api.pods) == 2


def test_someone_elses_secret_with_our_name_is_a_condition(api: FakeKubeApi) -> None:
    api.secrets["demo-env"] = {"metadata": {"name": "demo-env", "uid": "s-user"}}
    controller(api).reconcile(KEY, job_body(), [])
    assert api.pods == {} and "demo-env" in api.secrets
    cond = next(c for c in api.statuses[0]["conditions"] if c["type"] == "EnvResolved")
    assert cond["reason"] == "SecretNameTaken" and "delete or rename it" in cond["message"]


def forged_env_secret(env: list[tuple[str, str]]) -> dict[str, Any]:
    """What anyone allowed to create Secrets in the namespace can make before the operator
    writes ``<job>-env``: owned by the job (its uid is public), immutable, a self-consistent
    env file (their own key, so its HMAC verifies) with the variables they chose."""
    key, env_hash = envfile.seal(env)
    content = envfile.dumps(env, env_hash, key)
    return {
        "metadata": {
            "name": "demo-env",
            "uid": "s-forged",
            "labels": {
                "app.kubernetes.io/managed-by": "appliance-operator",
                "appliance.dev/job-name": "demo",
            },
            "annotations": {"appliance.dev/env-hash": env_hash},
            "ownerReferences": [{"uid": UID, "controller": True}],
        },
        "immutable": True,
        "data": {names.SNAPSHOT_KEY: base64.b64encode(content.encode()).decode()},
    }


INJECTED = [("DATA_ROOT", INLINE), ("TOKEN", SECRET_VALUE), ("LD_PRELOAD", "/tmp/evil.so")]


def test_a_pre_created_env_secret_owned_by_the_job_is_not_trusted(api: FakeKubeApi) -> None:
    """Another user of the namespace pre-creates ``<job>-env`` to inject variables: the
    create's 409 no longer means "ours from before a restart"."""
    api.secrets["demo-env"] = forged_env_secret(INJECTED)
    delay = controller(api).reconcile(KEY, job_body(), [])
    assert api.pods == {}  # no worker mounts it
    cond = next(c for c in api.statuses[0]["conditions"] if c["type"] == "EnvResolved")
    assert cond["status"] == "False" and cond["reason"] == "UntrustedSecret"
    assert "Delete it" in cond["message"] and "/tmp/evil.so" not in json.dumps(api.statuses)
    (warning,) = [e for e in api.events if e["type"] == "Warning"]
    assert warning["reason"] == "UntrustedSecret" and "/tmp/evil.so" not in warning["message"]
    assert delay is not None  # retried: once the Secret is deleted, the job starts
    del api.secrets["demo-env"]
    api.job_versions["demo"] = 10  # a new process planning on the cached body (version "10")
    controller(api).reconcile(KEY, job_body(), [])
    snapshot = envfile.parse(
        base64.b64decode(api.secrets["demo-env"]["data"][names.SNAPSHOT_KEY]).decode(), "env"
    )
    assert dict(snapshot.env) == {"DATA_ROOT": INLINE, "TOKEN": SECRET_VALUE}
    assert len(api.pods) == 2


def test_a_mutable_or_malformed_env_secret_is_not_trusted(api: FakeKubeApi) -> None:
    mutable = forged_env_secret([("DATA_ROOT", INLINE), ("TOKEN", SECRET_VALUE)])
    mutable["immutable"] = False  # the right values now, any values after an update
    api.secrets["demo-env"] = mutable
    controller(api).reconcile(KEY, job_body(), [])
    assert api.pods == {}
    cond = next(c for c in api.statuses[0]["conditions"] if c["type"] == "EnvResolved")
    assert cond["reason"] == "UntrustedSecret" and "not immutable" in cond["message"]


def test_our_env_secret_from_before_a_restart_is_used(api: FakeKubeApi) -> None:
    """The operator wrote ``<job>-env`` and stopped before its status said so: the Secret
    holds exactly the snapshot spec.env resolves to, so it is used (with its own hash)."""
    controller(api).reconcile(KEY, job_body(), [])
    written = api.secrets["demo-env"]
    api.pods.clear()
    api.statuses.clear()
    api.job_versions["demo"] = 10
    controller(api).reconcile(KEY, job_body(), [])  # a new process: 409, then checked
    assert api.secrets["demo-env"] is written and len(api.pods) == 2
    cond = next(c for c in api.statuses[0]["conditions"] if c["type"] == "EnvResolved")
    assert cond["status"] == "True"
    recorded = written["metadata"]["annotations"]["appliance.dev/env-hash"]
    assert api.statuses[0]["envHash"] == recorded


def restarted_body(env_hash: str) -> dict[str, Any]:
    """The job as a restarted operator finds it: its status records the snapshot's hash."""
    body = job_body()
    body["status"] = {
        "phase": "Running",
        "envHash": env_hash,
        "conditions": [
            {
                "type": "EnvResolved",
                "status": "True",
                "reason": "SnapshotWritten",
                "message": "2 variable(s) written",
                "lastTransitionTime": "2026-03-01T12:00:00Z",
            }
        ],
    }
    return body


def test_after_a_restart_only_the_recorded_snapshot_is_trusted(api: FakeKubeApi) -> None:
    forged = forged_env_secret(INJECTED)
    recorded = envfile.seal([("DATA_ROOT", INLINE), ("TOKEN", SECRET_VALUE)])[1]
    api.secrets["demo-env"] = forged  # replaced: a hash the status does not record
    controller(api).reconcile(KEY, restarted_body(recorded), [])
    assert api.pods == {}
    cond = next(c for c in api.statuses[0]["conditions"] if c["type"] == "EnvResolved")
    assert cond["reason"] == "UntrustedSecret" and "recorded" in cond["message"]
    api.statuses.clear()
    api.job_versions["demo"] = 10
    genuine = forged["metadata"]["annotations"]["appliance.dev/env-hash"]
    controller(api).reconcile(KEY, restarted_body(genuine), [])  # the hash it recorded
    assert len(api.pods) == 2 and ("create", "secrets") not in api.calls


def test_a_snapshot_over_the_secret_size_limit_is_a_condition_not_a_silent_retry() -> None:
    api = FakeKubeApi()
    big = "x" * (700 * 1024)  # two of these resolve to more than a Secret may hold
    for name in ("a", "b"):
        api.secrets[name] = {
            "metadata": {"name": name, "uid": f"s-{name}"},
            "data": {"v": base64.b64encode(big.encode()).decode()},
        }
    env = [
        {"name": f"BIG_{n.upper()}", "valueFrom": {"secretKeyRef": {"name": n, "key": "v"}}}
        for n in ("a", "b")
    ]
    ctl = controller(api)
    delay = ctl.reconcile(KEY, job_body(env=env), [])
    assert ("create", "secrets") not in api.calls and api.pods == {}
    cond = next(c for c in api.statuses[0]["conditions"] if c["type"] == "EnvResolved")
    assert cond["status"] == "False" and cond["reason"] == "SnapshotTooLarge"
    assert "1048576 bytes" in cond["message"] and "fewer or smaller" in cond["message"]
    (warning,) = [e for e in api.events if e["type"] == "Warning"]
    assert warning["reason"] == "SnapshotTooLarge" and big[:64] not in json.dumps(api.events)
    assert delay is not None


@pytest.mark.parametrize(
    ("code", "reason"), [(403, "SecretForbidden"), (422, "SecretRefused"), (413, "SecretRefused")]
)
def test_an_env_secret_the_api_server_refuses_is_a_condition(
    api: FakeKubeApi, code: int, reason: str
) -> None:
    api.fail("create", "secrets", ApiError(code, "Refused", f"secret data {INLINE} refused"))
    delay = controller(api).reconcile(KEY, job_body(), [])  # no exception: a status
    assert api.pods == {}
    cond = next(c for c in api.statuses[0]["conditions"] if c["type"] == "EnvResolved")
    assert cond["status"] == "False" and cond["reason"] == reason and str(code) in cond["message"]
    assert INLINE not in json.dumps(api.statuses) + json.dumps(api.events)
    assert delay is not None and delay > 0


def test_refused_pod_is_reported_and_not_retried_for_every_replica(api: FakeKubeApi) -> None:
    refused = ApiError(422, "Invalid", 'Pod "demo-worker-0" is invalid: spec.volumes')
    api.fail("create", "pods", refused)
    ctl = controller(api)
    delay = ctl.reconcile(KEY, job_body(replicas=50), [])
    assert api.calls.count(("create", "pods")) == 1  # slow start stopped at the first batch
    (warning,) = [e for e in api.events if e["type"] == "Warning"]
    assert warning["reason"] == "FailedCreate" and "spec.volumes" in warning["message"]
    assert delay is not None and delay > 0


def test_namespace_being_deleted_is_not_an_error(api: FakeKubeApi) -> None:
    terminating = ApiError(
        403,
        "Forbidden",
        "unable to create new content in namespace ml because it is being terminated",
    )
    api.fail("create", "secrets", terminating)
    ctl = controller(api)
    assert ctl.reconcile(KEY, job_body(), []) is not None  # looked at again; the job will go
    api.heal("create", "secrets")
    api.fail("create", "pods", terminating)
    assert ctl.reconcile(KEY, job_body(), []) is not None
    assert not [e for e in api.events if e["type"] == "Warning"]
    # Any other refusal of the Secret is an error (and says nothing of what was sent).
    api.fail("create", "secrets", ApiError(422, "Invalid", "data[env.json]: some detail"))
    fresh = controller(api)
    with pytest.raises(ApiError) as err:
        fresh.reconcile(("ml", "other"), job_body(), [])
    assert "some detail" not in str(err.value)


def test_server_errors_propagate_for_a_retry(api: FakeKubeApi) -> None:
    api.fail("create", "pods", ApiError(503, "ServiceUnavailable", "try later"))
    ctl = controller(api)
    with pytest.raises(ApiError):
        ctl.reconcile(KEY, job_body(), [])
    assert ctl.retry_delay(KEY) > 0


def test_deleted_job_is_forgotten(api: FakeKubeApi) -> None:
    ctl = controller(api)
    ctl.reconcile(KEY, job_body(), [])
    assert ctl.metrics.jobs.counts()["Pending"] == 1
    assert ctl.reconcile(KEY, None, []) is None
    assert ctl.metrics.jobs.counts()["Pending"] == 0


def test_status_patch_deletes_absent_optional_fields() -> None:
    doc = status_patch(ExecuteJobStatus(phase="Pending", replicas=2))
    assert doc["phase"] == "Pending" and doc["replicas"] == 2
    assert doc["startTime"] is None and doc["completionTime"] is None
    assert "start_time" not in doc


def test_an_api_server_that_never_answers_is_an_api_error_not_a_hang(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A request on a connection the server accepted but never answers (half-open, a
    restarting API server) is given up after the read timeout, as an ApiError."""
    import socket
    import time

    from kubernetes import client

    from appliance_operator import kubeapi

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()  # accepted by the kernel, never read nor answered
        config = client.Configuration()
        config.host = f"http://127.0.0.1:{server.getsockname()[1]}"
        monkeypatch.setattr(kubeapi, "REQUEST_TIMEOUT", (1.0, 0.5))
        api = kubeapi.KubeApi(client.ApiClient(config), Metrics())
        started = time.monotonic()
        with pytest.raises(ApiError) as caught:
            api.read_pod("ml", "demo-worker-0")
        assert caught.value.code == 0  # no answer: the controller backs off and retries
        assert time.monotonic() - started < 10  # urllib3 retries a read timeout a few times
