"""Warm pools in the operator: the pure plan, and the controller claiming real warm workers.

The claim tests run a real warm worker process (``python -m cerebras_appliance.worker
--warm``) listening on loopback with the pool's real certificates, behind the fake API of
``support.fake_kube`` (a merge patch's ``metadata.resourceVersion`` is a precondition there,
as on the API server).
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from support.fake_kube import FakeKubeApi

from appliance_operator import desired
from appliance_operator.job.controller import Controller
from appliance_operator.kubeapi import ApiError
from appliance_operator.metrics import Metrics
from appliance_operator.observe import pod_view
from appliance_operator.pool import controller as poolcontroller
from appliance_operator.pool import tls as pooltls
from appliance_operator.pool.controller import PoolController, PoolSnapshot
from appliance_operator.pool.plan import (
    POOL_CLAIM,
    WARM_START_FAILED,
    PoolPodView,
    choose_claims,
    plan_pool,
    pool_pod_view,
    pool_spec_hash,
)
from cerebras_appliance.contract import channel, envfile, names
from cerebras_appliance.contract import claim as claims
from cerebras_appliance.contract.api import ExecuteJobSpec, parse_pool
from cerebras_appliance.contract.names import AWAITING_VALUES_ANNOTATION

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
SENTINEL = "pool-sentinel-61d2"
SECRET_SENTINEL = "pool-secret-sentinel-0b7e"


def pool_body(replicas: int = 2, image: str = "img", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "appliance.dev/v1alpha1",
        "kind": "WorkerPool",
        "metadata": {"name": "warm", "namespace": "ml", "uid": "uid-pool", "generation": 1},
        "spec": {"image": image, "replicas": replicas, **spec},
    }


def view(
    name: str,
    *,
    ready: bool = True,
    state: str = "idle",
    phase: str = "Running",
    created: str = "2026-03-01T11:00:00Z",
    ip: str = "10.0.0.1",
    spec_hash: str | None = None,
) -> PoolPodView:
    return PoolPodView(
        spec_hash=SPEC_HASH if spec_hash is None else spec_hash,
        name=name,
        uid=f"u-{name}",
        resource_version="1",
        pool="warm",
        state=state,
        phase=phase,
        ready=ready,
        ip=ip,
        created=created,
    )


#: The spec hash of ``pool_body()``'s pool (any replicas): its idle pods carry it.
SPEC_HASH = pool_spec_hash(parse_pool(pool_body()))


# -- the pure part ---------------------------------------------------------------------------


def test_plan_pool_starts_the_missing_idle_workers_and_counts_claimed_apart() -> None:
    pool = parse_pool(pool_body(replicas=3))
    steps = plan_pool(pool, [view("a"), view("b", state="claimed")], None, generation=1, now="t")
    assert steps.create == 2 and steps.delete == ()
    assert steps.status is not None
    assert (steps.status.idle, steps.status.starting, steps.status.claimed) == (1, 0, 1)
    assert steps.status.replicas == 1  # the scale subresource counts idle workers
    assert steps.status.selector.endswith("appliance.dev/pool-state=idle")
    ready = steps.status.conditions[0]
    assert (ready.type, ready.status, ready.reason) == ("Ready", "False", "Refilling")


def test_plan_pool_removes_the_surplus_not_warm_first_then_the_newest() -> None:
    pool = parse_pool(pool_body(replicas=1))
    pods = [
        view("old", created="2026-03-01T10:00:00Z"),
        view("new", created="2026-03-01T11:00:00Z"),
        view("cold", ready=False, created="2026-03-01T09:00:00Z"),
    ]
    steps = plan_pool(pool, pods, None, generation=1, now="t")
    assert [p.name for p in steps.delete] == ["cold", "new"] and steps.create == 0


def test_plan_pool_replaces_an_idle_worker_that_ended_and_says_why() -> None:
    pool = parse_pool(pool_body(replicas=1))
    dead = PoolPodView(
        name="dead",
        uid="u",
        resource_version="1",
        pool="warm",
        state="idle",
        phase="Failed",
        reason="Error (exit code 78)",
    )
    steps = plan_pool(pool, [dead], None, generation=1, now="t")
    assert steps.create == 1 and [p.name for p in steps.delete] == ["dead"]
    assert steps.status is not None
    failed = next(c for c in steps.status.conditions if c.type == WARM_START_FAILED)
    assert "dead: Error (exit code 78)" in failed.message and "spec.imports" in failed.message


def test_plan_pool_writes_nothing_when_nothing_changed() -> None:
    pool = parse_pool(pool_body(replicas=1))
    first = plan_pool(pool, [view("a")], None, generation=1, now="t1")
    assert first.status is not None
    again = plan_pool(pool, [view("a")], first.status, generation=1, now="t2")
    assert again.status is None


def spec(**changes: Any) -> ExecuteJobSpec:
    return ExecuteJobSpec.model_validate(
        {"image": "img", "entrypoint": "u.py", "replicas": 3, "pool": "warm", **changes}
    )


def test_choose_claims_unknown_pool_and_image_mismatch_are_conditions_all_cold() -> None:
    creates = [desired.WorkerId(0), desired.WorkerId(1)]
    missing = choose_claims(spec(), None, [view("a")], creates)
    assert missing.claims == () and missing.condition is not None
    assert missing.condition.reason == "PoolNotFound" and "spec.pool" in missing.condition.message
    other = choose_claims(spec(image="other"), parse_pool(pool_body()), [view("a")], creates)
    assert other.claims == () and other.condition is not None
    assert other.condition.reason == "PoolImageMismatch"
    assert "'other'" in other.condition.message and "'img'" in other.condition.message
    tpl = choose_claims(
        spec(template={"nodeSelector": {"a": "b"}}), parse_pool(pool_body()), [view("a")], creates
    )
    assert tpl.claims == () and tpl.condition is not None
    assert tpl.condition.reason == "PoolTemplateMismatch"


def test_choose_claims_takes_only_warm_reachable_idle_pods_oldest_first() -> None:
    pods = [
        view("b", created="2026-03-01T11:00:00Z"),
        view("a", created="2026-03-01T10:00:00Z"),
        view("cold", ready=False),
        view("taken", state="claimed"),
        view("noip", ip=""),
    ]
    creates = [desired.WorkerId(i) for i in range(3)]
    choice = choose_claims(spec(), parse_pool(pool_body()), pods, creates)
    assert [(w.index, p.name) for w, p in choice.claims] == [(0, "a"), (1, "b")]
    assert choice.condition is not None and choice.condition.reason == "PartlyCold"


def test_claim_patch_is_a_compare_and_swap_that_makes_the_job_the_only_owner() -> None:
    from cerebras_appliance.contract.api import parse_job

    job = parse_job(
        {
            "metadata": {"name": "demo", "namespace": "ml"},
            "spec": {"image": "img", "entrypoint": "u.py", "pool": "warm"},
        }
    )
    patch = desired.claim_patch(job, "uid-job", desired.WorkerId(3), "42")
    meta = patch["metadata"]
    assert meta["resourceVersion"] == "42"
    # Adopted before the snapshot exists: no hash yet, and any confirmation the pod carried
    # (not this job's) is removed.
    assert meta["annotations"] == {
        names.CLAIM_CONFIRMED_ANNOTATION: None,
        names.CLAIMED_FOR_ANNOTATION: None,
    }
    assert [r["uid"] for r in meta["ownerReferences"]] == ["uid-job"]
    assert meta["labels"][names.POOL_STATE_LABEL] == desired.CLAIMED
    assert meta["labels"][names.WORKER_INDEX_LABEL] == "3"
    assert meta["finalizers"] == [names.TRACKING_FINALIZER]


def test_pool_pod_holds_no_value_and_listens_only_with_the_pool_certificate() -> None:
    pool = parse_pool(pool_body(imports=["json"], startupVariables=["OMP_X"]))
    pod = desired.pool_pod(pool, "uid-pool", "abcde")
    container = pod["spec"]["containers"][0]
    assert container["command"][-1] == "--warm"
    # Probed until warm, then never again (an idle pool costs its node no exec per second).
    assert container["startupProbe"]["exec"]["command"][0] == "cat"
    assert "readinessProbe" not in container and "livenessProbe" not in container
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env[names.WARM_IMPORTS_VAR] == "json"
    assert env[names.WARM_STARTUP_VARS_VAR] == "OMP_X"
    assert all(name.startswith(("APPLIANCE_", "PYTHONUNBUFFERED")) for name in env)
    assert pod["spec"]["automountServiceAccountToken"] is False
    secret = next(v for v in pod["spec"]["volumes"] if v["name"] == desired.CLAIM_TLS_VOLUME)
    assert secret["secret"]["secretName"] == desired.worker_secret_name("warm", "uid-pool")
    assert pod["metadata"]["labels"][names.POOL_STATE_LABEL] == desired.IDLE
    view_ = pool_pod_view(
        {
            **pod,
            "status": {
                "phase": "Running",
                "podIP": "10.1.1.1",
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }
    )
    assert view_ is not None and view_.claimable


# -- the controller, with real warm workers --------------------------------------------------


def job_body(replicas: int = 2, name: str = "demo", uid: str = "uid-job") -> dict[str, Any]:
    return {
        "apiVersion": "appliance.dev/v1alpha1",
        "kind": "ExecuteJob",
        "metadata": {
            "name": name,
            "namespace": "ml",
            "uid": uid,
            "resourceVersion": "10",
            "generation": 1,
            "creationTimestamp": "2026-03-01T11:59:59Z",
        },
        "spec": {
            "replicas": replicas,
            "image": "img",
            "entrypoint": "user.py",
            "pool": "warm",
            "env": [
                {"name": "INLINE", "value": SENTINEL},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "t"}}},
            ],
        },
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """A fake API plus real warm worker processes standing in for the pool's pods."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.api = FakeKubeApi()
        self.api.secrets["creds"] = {
            "metadata": {"name": "creds"},
            "data": {"t": base64.b64encode(SECRET_SENTINEL.encode()).decode()},
        }
        self.port = free_port()  # every "pod" has its own loopback address, same port
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.metrics = Metrics()
        #: How far the pool controller's monotonic clock is ahead of the real one.
        self.skew = 0.0
        self.pools = PoolController(
            self.api,
            self.metrics,
            clock=lambda: NOW,
            claim_port=self.port,
            monotonic=lambda: time.monotonic() + self.skew,
        )
        (tmp / "user.py").write_text(
            "import os, subprocess, sys\n"
            "print('INLINE', os.environ.get('INLINE'), 'TOKEN', os.environ.get('TOKEN'))\n"
            "subprocess.run([sys.executable, '-c', "
            '\'import os; print("child", os.environ.get("TOKEN"))\'], check=True)\n'
        )
        self.pool = pool_body(replicas=0)
        self.spec_changes: dict[str, Any] = {}

    def reconcile_pool(self) -> None:
        self.pools.reconcile(("ml", "warm"), self.pool, self.pool_views())

    def start_idle(self, count: int, tls_of: pooltls.PoolCredentials | None = None) -> None:
        """Pods the pool controller created, each run by a real warm worker on 127.0.0.N
        (``tls_of``: with another CA's worker certificate, a channel that cannot work)."""
        self.pool = pool_body(replicas=count)
        self.pool["spec"].update(self.spec_changes)
        self.reconcile_pool()
        tls = self.tmp / ("tls" if tls_of is None else f"tls-{id(tls_of)}")
        tls.mkdir(exist_ok=True)
        data = (
            self.api.secrets[desired.worker_secret_name("warm", "uid-pool")]["data"]
            if tls_of is None
            else tls_of.worker.secret_data()
        )
        for key, value in data.items():
            (tls / key).write_bytes(base64.b64decode(value))
        for name, pod in sorted(self.api.pods.items()):
            if name in self.procs or names.POOL_NAME_LABEL not in pod["metadata"]["labels"]:
                continue
            ip = f"127.0.0.{len(self.procs) + 2}"  # one per process, also once its pod is gone
            state = self.tmp / name
            state.mkdir()
            env = {
                "PATH": os.environ["PATH"],
                names.CLAIM_TLS_DIR_VAR: str(tls),
                names.CLAIM_PORT_VAR: str(self.port),
                names.IDLE_FILE_VAR: str(state / "ready"),
                names.READY_FILE_VAR: str(state / "ready"),
                names.STATE_DIR_VAR: str(state),
                names.POOL_WORKER_VAR: name,
            }
            env[names.CLAIM_HOST_VAR] = ip  # its "pod IP"
            proc = subprocess.Popen(
                [sys.executable, "-m", "cerebras_appliance.worker", "--warm"],
                env=env,
                cwd=self.tmp,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            self.procs[name] = proc
            deadline = time.monotonic() + 60
            while not (state / "ready").exists():
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the warm worker never became idle"
                time.sleep(0.01)  # poll interval of the idle file
            pod["status"] = {
                "phase": "Running",
                "podIP": ip,
                "conditions": [{"type": "Ready", "status": "True"}],
            }
        # Ready: the pod event reconciles the pool, whose operator probes each new idle pod's
        # channel (claimable once it answered).
        self.reconcile_pool()

    def pool_views(self) -> list[PoolPodView]:
        return [v for p in self.api.pods.values() if (v := pool_pod_view(p)) is not None]

    def snapshot(self) -> PoolSnapshot:
        return PoolSnapshot(body=self.pool, pods=tuple(self.pool_views()))

    def job_pods(self, uid: str = "uid-job") -> list[Any]:
        out = []
        for pod in self.api.pods.values():
            v = pod_view(pod)
            if v is not None and v.owner_uid == uid:
                out.append(v)
        return out

    def controller(self, pools: type[PoolController] | None = None) -> Controller:
        """The job controller with this cluster's pool controller, or (another operator
        process) a new one of class ``pools`` with its own memory and metrics."""
        chosen = self.pools
        if pools is not None:
            chosen = pools(self.api, Metrics(), claim_port=self.port)
            # Starting, it reconciles the pool: its own probes of the idle pods' channels.
            chosen.reconcile(("ml", "warm"), self.pool, self.pool_views())
        metrics = self.metrics if pools is None else Metrics()
        return Controller(self.api, metrics, clock=lambda: NOW, pools=chosen)

    def output(self, name: str) -> tuple[int, str, str]:
        proc = self.procs[name]
        out, err = proc.communicate(timeout=60)
        return proc.returncode, out, err

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    yield c
    c.close()


def _claimed(c: Cluster) -> dict[str, dict[str, Any]]:
    return {
        n: p
        for n, p in c.api.pods.items()
        if p["metadata"]["labels"].get(names.POOL_STATE_LABEL) == desired.CLAIMED
    }


def test_a_job_larger_than_the_pool_gets_warm_and_cold_workers(cluster: Cluster) -> None:
    cluster.start_idle(2)
    ctl = cluster.controller()
    ctl.reconcile(("ml", "demo"), job_body(replicas=3), [], cluster.snapshot())
    claimed = _claimed(cluster)
    assert len(claimed) == 2
    cold = [n for n in cluster.api.pods if n.startswith("demo-worker-")]
    assert cold == ["demo-worker-2"]  # the remainder started cold at once
    for name, pod in claimed.items():
        meta = pod["metadata"]
        assert [r["uid"] for r in meta["ownerReferences"]] == ["uid-job"]
        assert meta["annotations"][names.CLAIM_CONFIRMED_ANNOTATION].startswith("hmac-sha256:")
        code, out, err = cluster.output(name)
        assert code == 0, err
        assert f"INLINE {SENTINEL} TOKEN {SECRET_SENTINEL}" in out
        assert f"child {SECRET_SENTINEL}" in out
        assert SENTINEL not in err and SECRET_SENTINEL not in err
    # Every request body but the env Secret's is free of values.
    for body in cluster.api.bodies:
        assert SENTINEL not in body and SECRET_SENTINEL not in body
    # The next reconcile records the claim on the job.
    ctl.reconcile(("ml", "demo"), job_body(replicas=3), cluster.job_pods(), cluster.snapshot())
    last = cluster.api.statuses[-1]
    condition = next(c for c in last["conditions"] if c["type"] == POOL_CLAIM)
    assert (
        condition["reason"] == "PartlyCold" and "2 worker(s) claimed warm" in condition["message"]
    )
    assert claims_counted(cluster.metrics, "claimed") == 2
    assert claims_counted(cluster.metrics, "cold") == 1


def test_idle_pods_are_adopted_while_the_client_writes_the_values_and_get_them_once_released(
    cluster: Cluster,
) -> None:
    cluster.start_idle(2)
    ctl = cluster.controller()
    awaiting = job_body(replicas=2)
    awaiting["metadata"]["annotations"] = {AWAITING_VALUES_ANNOTATION: "demo-values-x"}
    ctl.reconcile(("ml", "demo"), awaiting, [], cluster.snapshot())
    claimed = _claimed(cluster)
    assert len(claimed) == 2  # adopted at once: the claims overlap the client's writes
    assert "demo-env" not in cluster.api.secrets  # nothing resolved, nothing sent
    for name, pod in claimed.items():
        annotations = pod["metadata"].get("annotations", {})
        assert names.CLAIM_CONFIRMED_ANNOTATION not in annotations, "no confirmation yet"
        assert names.ENV_HASH_ANNOTATION not in annotations, "no hash yet"
        assert cluster.procs[name].poll() is None  # still waiting for its one claim
    assert cluster.api.statuses == []  # the first status waits for the release
    assert not [n for n in cluster.api.pods if n.startswith("demo-worker-")]
    # The pool refills after the delivery, not during it (and says when to look again).
    before = set(cluster.api.pods)
    hold = cluster.pools.reconcile(("ml", "warm"), cluster.pool, cluster.pool_views())
    assert set(cluster.api.pods) == before
    assert hold is not None and 0 < hold <= poolcontroller.REFILL_HOLD
    # Released: the snapshot is written, then delivered to the adopted pods; nothing cold.
    stale = cluster.job_pods()  # what a watch still shows for a moment: not confirmed
    ctl.reconcile(("ml", "demo"), job_body(replicas=2), stale, cluster.snapshot())
    requests = len(cluster.api.bodies)
    ctl.reconcile(("ml", "demo"), job_body(replicas=2), stale, cluster.snapshot())
    assert all(names.CLAIM_CONFIRMED_ANNOTATION not in b for b in cluster.api.bodies[requests:])
    published = cluster.api.secrets["demo-env"]["metadata"]["annotations"][
        names.ENV_HASH_ANNOTATION
    ]
    for name in claimed:
        annotations = cluster.api.pods[name]["metadata"]["annotations"]
        assert annotations[names.CLAIM_CONFIRMED_ANNOTATION] == published
        assert annotations[names.ENV_HASH_ANNOTATION] == published
        code, out, err = cluster.output(name)
        assert code == 0 and f"INLINE {SENTINEL} TOKEN {SECRET_SENTINEL}" in out, err
    assert not [n for n in cluster.api.pods if n.startswith("demo-worker-")]
    cluster.reconcile_pool()  # delivered: now the two claimed pods are replaced
    assert len(set(cluster.api.pods) - before) == 2


def test_a_claim_made_while_awaiting_the_values_is_decided_once_and_its_rest_starts_cold(
    cluster: Cluster,
) -> None:
    cluster.start_idle(2)
    ctl = cluster.controller()
    awaiting = job_body(replicas=3)
    awaiting["metadata"]["annotations"] = {AWAITING_VALUES_ANNOTATION: "demo-values-x"}
    ctl.reconcile(("ml", "demo"), awaiting, [], cluster.snapshot())
    assert len(_claimed(cluster)) == 2
    # The claim patches' events reconcile it again before the release: nothing claimed again.
    ctl.reconcile(("ml", "demo"), awaiting, cluster.job_pods(), cluster.snapshot())
    assert not [n for n in cluster.api.pods if n.startswith("demo-worker-")]
    ctl.reconcile(("ml", "demo"), job_body(replicas=3), cluster.job_pods(), cluster.snapshot())
    assert [n for n in cluster.api.pods if n.startswith("demo-worker-")] == ["demo-worker-2"]
    assert claims_counted(cluster.metrics, "cold") == 1  # counted once
    kept = ctl.pool_claim(("ml", "demo"))
    assert kept is not None and kept.reason == "PartlyCold", kept
    assert "2 worker(s) claimed warm" in kept.message and "1 started cold" in kept.message


def test_a_delivered_claim_is_not_sent_again_while_the_watch_catches_up(
    cluster: Cluster,
) -> None:
    """The watch may show claimed pods only after their delivery, and then first in a version
    without the confirmation: they are not delivered to again (a second connection to a worker
    that is running, or gone, could fail and have it deleted as unreachable)."""
    cluster.start_idle(2)
    ctl = cluster.controller()
    awaiting = job_body(replicas=2)
    awaiting["metadata"]["annotations"] = {AWAITING_VALUES_ANNOTATION: "demo-values-x"}
    ctl.reconcile(("ml", "demo"), awaiting, [], cluster.snapshot())
    unconfirmed = cluster.job_pods()  # adopted, not confirmed yet
    assert len(unconfirmed) == 2
    ctl.reconcile(("ml", "demo"), job_body(replicas=2), [], cluster.snapshot())  # delivered
    for name in _claimed(cluster):
        code, out, err = cluster.output(name)
        assert code == 0 and f"INLINE {SENTINEL}" in out, err
    requests = len(cluster.api.bodies)
    ctl.reconcile(("ml", "demo"), job_body(replicas=2), [], cluster.snapshot())  # still unseen
    ctl.reconcile(("ml", "demo"), job_body(replicas=2), unconfirmed, cluster.snapshot())
    later = cluster.api.bodies[requests:]
    assert all(names.CLAIM_CONFIRMED_ANNOTATION not in b for b in later), later
    assert cluster.api.deleted == []
    assert not [e for e in cluster.api.events if e["type"] == "Warning"], cluster.api.events
    assert claims_counted(cluster.metrics, "claimed") == 2


def test_a_pod_just_claimed_is_not_idle_to_the_pool_while_the_watch_still_says_so(
    cluster: Cluster,
) -> None:
    cluster.start_idle(2)
    stale = cluster.pool_views()  # both idle, as the pool's watch still shows them
    cluster.controller().reconcile(("ml", "demo"), job_body(replicas=1), [], cluster.snapshot())
    (claimed,) = _claimed(cluster)
    cluster.pools.reconcile(("ml", "warm"), cluster.pool, stale)
    status = cluster.api.pool_statuses[-1]
    assert (status["idle"], status["claimed"]) == (1, 1), status
    assert claimed not in cluster.api.deleted


def test_a_replacement_claimed_warm_does_not_hide_a_partly_cold_start(cluster: Cluster) -> None:
    cluster.start_idle(1)
    ctl = cluster.controller()
    ctl.reconcile(("ml", "demo"), job_body(replicas=2), [], cluster.snapshot())  # 1 warm, 1 cold
    ctl.reconcile(("ml", "demo"), job_body(replicas=2), cluster.job_pods(), cluster.snapshot())
    cluster.start_idle(1)  # refilled; then worker 0's pod is gone: it is claimed warm again
    pods = [p for p in cluster.job_pods() if p.index == 1]
    ctl.reconcile(("ml", "demo"), job_body(replicas=2), pods, cluster.snapshot())
    assert len(_claimed(cluster)) == 2  # the replacement was claimed warm
    kept = ctl.pool_claim(("ml", "demo"))  # what every status write carries
    assert kept is not None and kept.reason == "PartlyCold", kept


def test_a_second_job_gets_fresh_workers_and_none_of_the_first_jobs_values(
    cluster: Cluster,
) -> None:
    cluster.start_idle(1)
    cluster.controller().reconcile(("ml", "demo"), job_body(replicas=1), [], cluster.snapshot())
    (first,) = _claimed(cluster)
    cluster.start_idle(1)  # the pool refilled: a new pod, a new process
    second_body = job_body(replicas=1, name="other", uid="uid-other")
    second_body["spec"]["env"] = [{"name": "ONLY_SECOND", "value": "2"}]
    cluster.controller().reconcile(("ml", "other"), second_body, [], cluster.snapshot())
    (second,) = [n for n in _claimed(cluster) if n != first]
    code, out, err = cluster.output(second)
    assert code == 0, err
    assert "INLINE None TOKEN None" in out and SENTINEL not in out
    assert cluster.procs[first].pid != cluster.procs[second].pid


def test_two_operators_racing_claim_each_pod_once(cluster: Cluster) -> None:
    cluster.start_idle(1)
    stale = cluster.snapshot()  # both operators saw the same idle pod at the same version
    one = cluster.controller()
    two = cluster.controller(PoolController)
    one.reconcile(("ml", "demo"), job_body(replicas=1), [], stale)
    two.reconcile(("ml", "other"), job_body(replicas=1, name="other", uid="uid-other"), [], stale)
    (pod,) = _claimed(cluster).values()
    assert pod["metadata"]["ownerReferences"][0]["uid"] == "uid-job"
    assert "other-worker-0" in cluster.api.pods  # the loser went cold, it did not wait


class Killed(BaseException):
    """The operator process dying at this point."""


class DiesBeforeDelivery(PoolController):
    def deliver_one(self, *args: Any, **kwargs: Any) -> str:
        raise Killed


def test_operator_killed_between_adoption_and_delivery_delivers_after_restart(
    cluster: Cluster,
) -> None:
    cluster.start_idle(1)
    dying = cluster.controller(DiesBeforeDelivery)
    with pytest.raises(Killed):
        dying.reconcile(("ml", "demo"), job_body(replicas=1), [], cluster.snapshot())
    (name,) = _claimed(cluster)  # adopted, nothing sent
    assert names.CLAIM_CONFIRMED_ANNOTATION not in cluster.api.pods[name]["metadata"].get(
        "annotations", {}
    )
    assert cluster.procs[name].poll() is None  # still waiting for its one claim
    restarted = cluster.controller()  # empty memory, as after a restart
    restarted.reconcile(
        ("ml", "demo"), job_body(replicas=1), cluster.job_pods(), cluster.snapshot()
    )
    meta = cluster.api.pods[name]["metadata"]
    assert meta["annotations"][names.CLAIM_CONFIRMED_ANNOTATION].startswith("hmac-sha256:")
    code, out, err = cluster.output(name)
    assert code == 0 and f"TOKEN {SECRET_SENTINEL}" in out, err
    # No pod claimed twice, no cold duplicate: the job has exactly its one worker.
    assert len(_claimed(cluster)) == 1
    assert not [n for n in cluster.api.pods if n.startswith("demo-worker-")]


def test_unknown_pool_is_a_condition_and_every_worker_starts_cold(cluster: Cluster) -> None:
    ctl = cluster.controller()
    ctl.reconcile(("ml", "demo"), job_body(replicas=2), [], PoolSnapshot(body=None))
    assert sorted(cluster.api.pods) == ["demo-worker-0", "demo-worker-1"]
    ctl.reconcile(("ml", "demo"), job_body(replicas=2), cluster.job_pods(), PoolSnapshot(None))
    condition = next(
        c for s in cluster.api.statuses for c in s.get("conditions", []) if c["type"] == POOL_CLAIM
    )
    assert condition["status"] == "False" and condition["reason"] == "PoolNotFound"


# -- claims that cannot be delivered (issue 21, defect 1) -------------------------------------


def _warm_pods(c: Cluster, uid: str = "uid-job", *, gone_too: bool = False) -> list[str]:
    """The pool pods owned by the job ``uid`` (``gone_too``: also those deleted since)."""
    pods = {**c.api.removed_pods, **c.api.pods} if gone_too else c.api.pods
    return [
        n
        for n, p in pods.items()
        if names.POOL_NAME_LABEL in p["metadata"]["labels"]
        and [r["uid"] for r in p["metadata"].get("ownerReferences", [])] == [uid]
    ]


def claims_counted(metrics: Metrics, outcome: str) -> float | None:
    """``appliance_operator_pool_claims_total`` of pool ml/warm for ``outcome``, as scraped."""
    return metrics.registry.get_sample_value(
        "appliance_operator_pool_claims_total",
        {"namespace": "ml", "pool": "warm", "outcome": outcome},
    )


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), None)


def test_a_pool_whose_claims_cannot_be_delivered_falls_back_cold_and_says_so(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Idle workers that answered the operator's probe, then cannot take a claim (their worker
    died; or someone claimed them, below): the job's claimed workers are replaced cold, the
    pool says why (ClaimsDelivered=False naming the pod) and is claimed from no more, so no
    pool pod is burnt after the first failure. Idle pods whose channel never answers (here:
    another CA's certificate, as a CA mismatch, a sidecar or a NetworkPolicy would break it)
    are never claimed at all, and the pool says so. A probe answered by a newer idle pod
    lifts the block."""
    monkeypatch.setattr(poolcontroller, "CHECK_GRACE", 0.0)
    cluster.start_idle(2)
    for proc in cluster.procs.values():  # Ready and answered, then the workers die
        proc.kill()
        proc.communicate()
    ctl = cluster.controller()
    key = ("ml", "demo")
    ctl.reconcile(key, job_body(replicas=2), [], cluster.snapshot())
    burnt = set(_warm_pods(cluster))
    assert len(burnt) == 2 and set(cluster.api.deleted) == burnt  # tried, failed, deleted
    for name in burnt:
        annotations = cluster.api.pods[name]["metadata"].get("annotations", {})
        assert names.CLAIM_CONFIRMED_ANNOTATION not in annotations
    warnings = [e for e in cluster.api.events if e["reason"] == "ClaimNotDelivered"]
    assert warnings, cluster.api.events
    # The pool refills (with pods that cannot work either) and says why it is not claimed.
    cluster.start_idle(2, tls_of=pooltls.new_pool_credentials("elsewhere"))
    status = cluster.api.pool_statuses[-1]
    delivered = _condition(status, "ClaimsDelivered")
    assert delivered is not None and delivered["status"] == "False", status
    assert delivered["reason"] == "DeliveryFailed"
    assert any(name in delivered["message"] for name in burnt), delivered
    # The job's workers are replaced cold; reconciling again and again claims nothing more.
    for _ in range(5):
        ctl.reconcile(key, job_body(replicas=2), cluster.job_pods(), cluster.snapshot())
    cold = sorted(n for n in cluster.api.pods if n.startswith("demo-worker-"))
    assert len(cold) == 2, sorted(cluster.api.pods)
    # No pool pod claimed after the failure (the burnt ones went once released).
    assert set(_warm_pods(cluster, gone_too=True)) == burnt
    condition = next(
        c
        for s in reversed(cluster.api.statuses)
        for c in s.get("conditions", [])
        if c["type"] == POOL_CLAIM
    )
    assert condition["status"] == "False", condition
    # Another job is not claimed warm either (no pod burnt for it).
    other = job_body(replicas=1, name="other", uid="uid-other")
    ctl.reconcile(("ml", "other"), other, [], cluster.snapshot())
    assert _warm_pods(cluster, "uid-other") == [] and "other-worker-0" in cluster.api.pods
    # The cause is fixed (new idle pods with the pool's certificate): a probe (no claim)
    # answered by one of them lifts the block, and the next job is claimed warm again.
    for name in [n for n, p in cluster.api.pods.items() if n.startswith("warm-")]:
        if name not in burnt:
            cluster.api.pods[name]["status"]["phase"] = "Failed"  # the broken idle pods end
    cluster.reconcile_pool()
    monkeypatch.setattr(poolcontroller, "PROBE_BACKOFF", 0.0)
    cluster.skew += poolcontroller.PROBE_BACKOFF_MAX  # the next probe is due
    cluster.start_idle(1)
    cluster.reconcile_pool()
    delivered = _condition(cluster.api.pool_statuses[-1], "ClaimsDelivered")
    assert delivered is not None and delivered["status"] == "True", delivered
    third = job_body(replicas=1, name="third", uid="uid-third")
    ctl.reconcile(("ml", "third"), third, [], cluster.snapshot())
    (warm,) = _warm_pods(cluster, "uid-third")
    code, out, err = cluster.output(warm)
    assert code == 0 and f"INLINE {SENTINEL}" in out, err


# -- a claim is the job's only on an answer bound to it (defect 4) ----------------------------


def test_a_worker_claimed_by_someone_else_is_never_confirmed_for_the_job(
    cluster: Cluster,
) -> None:
    """Someone holding the operator's certificate claims an idle worker first (job A's
    values, A's code); the operator then adopts that pod for job B. B's delivery finds it not
    listening: that is not B's claim accepted. The pod is never confirmed (nor Ready) for B,
    it is deleted, and B's worker starts cold with B's values."""
    cluster.start_idle(1)
    (victim,) = list(cluster.api.pods)
    operator_secret = cluster.api.secrets[desired.operator_secret_name("warm", "uid-pool")]
    stolen = pooltls.client_context(pooltls.KeyPair.from_secret_data(operator_secret["data"]))
    pairs = [("INLINE", "from-job-a")]
    key, digest = envfile.seal(pairs)
    claim_a = claims.Claim(
        worker=victim,
        entrypoint="user.py",
        args=(),
        plumbing=(("APPLIANCE_JOB_NAME", "a"),),
        snapshot=envfile.dumps(pairs, digest, key),
        job="uid-a",
        nonce="n-a",
    )
    ip = cluster.api.pods[victim]["status"]["podIP"]
    pooltls.deliver(stolen, ip, claims.dumps(claim_a), port=cluster.port, job="uid-a", nonce="n-a")
    ctl = cluster.controller()
    ctl.reconcile(("ml", "demo"), job_body(replicas=1), [], cluster.snapshot())
    meta = cluster.api.pods[victim]["metadata"]
    assert [r["uid"] for r in meta["ownerReferences"]] == ["uid-job"]  # adopted...
    # ...never confirmed
    assert names.CLAIM_CONFIRMED_ANNOTATION not in meta.get("annotations", {})
    assert victim in cluster.api.deleted
    ctl.reconcile(("ml", "demo"), job_body(replicas=1), cluster.job_pods(), cluster.snapshot())
    assert [n for n in cluster.api.pods if n.startswith("demo-worker-0")]  # B's, cold
    _, out, _ = cluster.output(victim)
    assert "INLINE from-job-a" in out  # the victim pod ran A's code and values, not B's
    for status in cluster.api.statuses:
        assert status.get("readyReplicas", 0) == 0  # never Ready as B's worker


def test_a_claimed_pod_is_ready_only_when_its_worker_answered_for_its_owner() -> None:
    def pod(claimed_for: str) -> dict[str, Any]:
        return {
            "metadata": {
                "name": "warm-1",
                "uid": "p1",
                "labels": {
                    **desired.job_labels("demo"),
                    names.WORKER_INDEX_LABEL: "0",
                    names.POOL_NAME_LABEL: "warm",
                },
                "ownerReferences": [{"uid": "uid-job", "controller": True}],
                "annotations": {
                    names.CLAIM_CONFIRMED_ANNOTATION: "hmac-sha256:x",
                    names.CLAIMED_FOR_ANNOTATION: claimed_for,
                },
            },
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
        }

    mine, theirs = pod_view(pod("uid-job")), pod_view(pod("uid-other"))
    assert mine is not None and mine.ready and mine.confirmed
    assert theirs is not None and not theirs.ready and not theirs.confirmed
    assert (
        desired.confirm_patch("h", "uid-job")["metadata"]["annotations"][
            names.CLAIMED_FOR_ANNOTATION
        ]
        == "uid-job"
    )


# -- the claim Secrets, bound to the pool's uid (defect 2) ------------------------------------


def _ca(c: Cluster, name: str) -> bytes:
    return base64.b64decode(c.api.secrets[name]["data"][channel.CA_FILE])


def test_an_error_between_the_two_secret_creates_leaves_a_matching_pair(
    cluster: Cluster,
) -> None:
    worker_name = desired.worker_secret_name("warm", "uid-pool")
    operator_name = desired.operator_secret_name("warm", "uid-pool")
    timeout = ApiError(500, "InternalError", "etcdserver: request timed out")
    cluster.api.fail("create", "secrets", timeout, name=worker_name, times=1)
    cluster.pool = pool_body(replicas=1)
    with pytest.raises(ApiError):
        cluster.reconcile_pool()
    assert operator_name in cluster.api.secrets and worker_name not in cluster.api.secrets
    cluster.reconcile_pool()  # the retry finishes the pair from the operator's copy
    assert _ca(cluster, worker_name) == _ca(cluster, operator_name)
    cluster.start_idle(1)
    cluster.controller().reconcile(("ml", "demo"), job_body(replicas=1), [], cluster.snapshot())
    (warm,) = _warm_pods(cluster)
    code, out, err = cluster.output(warm)
    assert code == 0 and f"INLINE {SENTINEL}" in out, err


def test_claim_secrets_the_operator_did_not_make_for_this_pool_are_never_used(
    cluster: Cluster,
) -> None:
    """Someone with `create secrets` makes the pool's claim Secrets (their own CA, even
    owned by the pool): the operator uses neither, starts no idle pod, claims nothing, and
    the pool's condition names the Secret and the fix."""
    forged = pooltls.new_pool_credentials("warm")
    name = desired.operator_secret_name("warm", "uid-pool")
    cluster.api.secrets[name] = pooltls.claim_secret(
        name,
        "ml",
        {},
        {"uid": "uid-pool", "kind": "WorkerPool", "name": "warm"},  # not the controller
        "uid-pool",
        forged.fingerprint,
        pooltls.operator_secret_data(forged),
    )
    cluster.pool = pool_body(replicas=2)
    again = cluster.pools.reconcile(("ml", "warm"), cluster.pool, [])
    assert again is not None and again <= poolcontroller.SECRET_RECHECK  # no Secret watch
    assert not cluster.api.pods  # no idle pod mounts a CA someone else holds
    delivered = _condition(cluster.api.pool_statuses[-1], "ClaimsDelivered")
    assert delivered is not None and delivered["reason"] == "ClaimSecretsNotBound", delivered
    assert name in delivered["message"] and "delete" in delivered["message"]
    cluster.controller().reconcile(("ml", "demo"), job_body(replicas=1), [], cluster.snapshot())
    assert sorted(cluster.api.pods) == ["demo-worker-0"]  # cold
    # Deleted (by someone allowed to): the operator makes its own pair.
    del cluster.api.secrets[name]
    cluster.reconcile_pool()
    assert _ca(cluster, name) != forged.operator.ca_pem
    assert len([n for n in cluster.api.pods if n.startswith("warm-")]) == 2


def test_a_pool_made_again_under_the_same_name_never_uses_the_old_pools_secrets(
    cluster: Cluster,
) -> None:
    cluster.pool = pool_body(replicas=1)
    cluster.reconcile_pool()
    old_ca = _ca(cluster, desired.operator_secret_name("warm", "uid-pool"))
    again = pool_body(replicas=1)
    again["metadata"]["uid"] = "uid-pool-2"  # deleted and made again; the old Secrets linger
    cluster.pools.reconcile(("ml", "warm"), again, [])
    new_name = desired.worker_secret_name("warm", "uid-pool-2")
    assert _ca(cluster, new_name) != old_ca
    (pod,) = [
        p
        for p in cluster.api.pods.values()
        if p["metadata"]["ownerReferences"][0]["uid"] == "uid-pool-2"
    ]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes[desired.CLAIM_TLS_VOLUME]["secret"]["secretName"] == new_name


# -- idle pods follow the pool's spec (defect 3) ---------------------------------------------


def test_plan_pool_replaces_idle_pods_of_an_earlier_spec_and_never_claimed_ones() -> None:
    pool = parse_pool(pool_body(replicas=2, imports=["json"]))
    old = SPEC_HASH  # made before spec.imports was set
    new = pool_spec_hash(pool)
    assert new != old
    pods = [
        view("a", spec_hash=old),
        view("b", spec_hash=new),
        view("c", state="claimed", spec_hash=old),
    ]
    steps = plan_pool(pool, pods, None, generation=2, now="t")
    assert [p.name for p in steps.delete] == ["a"]
    assert steps.create == 1
    choice = choose_claims(
        spec(),
        parse_pool(pool_body(imports=["json"])),
        pods,
        [desired.WorkerId(0), desired.WorkerId(1)],
    )
    assert [p.name for _, p in choice.claims] == ["b"]  # never a pod of the earlier spec


def test_editing_a_pools_imports_replaces_its_idle_pods(cluster: Cluster) -> None:
    cluster.start_idle(2)
    before = set(cluster.api.pods)
    cluster.pool["spec"]["imports"] = ["json"]
    cluster.pool["metadata"]["generation"] = 2
    cluster.reconcile_pool()
    assert set(cluster.api.deleted) == before  # both idle pods were made without the import
    made = set(cluster.api.pods) - before
    assert len(made) == 2
    want = pool_spec_hash(parse_pool(cluster.pool))
    for name in made:
        annotations = cluster.api.pods[name]["metadata"]["annotations"]
        assert annotations[names.POOL_SPEC_HASH_ANNOTATION] == want
        env = {
            e["name"]: e.get("value")
            for e in cluster.api.pods[name]["spec"]["containers"][0]["env"]
        }
        assert env[names.WARM_IMPORTS_VAR] == "json"


def test_after_a_restart_a_blocked_pool_stays_blocked_until_a_probe_answers(
    cluster: Cluster,
) -> None:
    """The block is level-triggered: a restarted operator reads ClaimsDelivered=False from
    the pool's status, claims nothing, and probes an idle pod at once."""
    cluster.start_idle(1)
    cluster.pool["status"] = {
        "conditions": [
            {
                "type": "ClaimsDelivered",
                "status": "False",
                "reason": "DeliveryFailed",
                "message": "the claim to pod x was not delivered",
            }
        ]
    }
    # A new process whose first event is the job's (its pool reconcile has not run yet).
    pools = PoolController(cluster.api, Metrics(), claim_port=cluster.port)
    restarted = Controller(cluster.api, Metrics(), clock=lambda: NOW, pools=pools)
    pools.probe_new_pods(("ml", "warm"), cluster.pool, cluster.pool_views())  # they answer
    restarted.reconcile(("ml", "demo"), job_body(replicas=1), [], cluster.snapshot())
    assert _warm_pods(cluster) == [] and "demo-worker-0" in cluster.api.pods  # cold
    assert restarted.pools is not None
    restarted.pools.reconcile(("ml", "warm"), cluster.pool, cluster.pool_views())  # probes
    assert restarted.pools.undeliverable("uid-pool", cluster.pool) == ""
    restarted.reconcile(
        ("ml", "other"), job_body(replicas=1, name="other", uid="uid-other"), [], cluster.snapshot()
    )
    assert len(_warm_pods(cluster, "uid-other")) == 1


def test_idle_pods_whose_channel_does_not_answer_are_never_claimed(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pool whose channel cannot work from the start (another CA here; a NetworkPolicy
    without the operator, a sidecar): its idle pods are Ready but never answer the operator's
    probe, so none is claimed (no pod burnt, no job delayed), they are not counted as warm,
    and the pool says why."""
    monkeypatch.setattr(poolcontroller, "CHECK_GRACE", 0.0)
    cluster.start_idle(2, tls_of=pooltls.new_pool_credentials("elsewhere"))
    cluster.reconcile_pool()
    status = cluster.api.pool_statuses[-1]
    assert (status["idle"], status["starting"]) == (0, 2), status
    delivered = _condition(status, "ClaimsDelivered")
    assert delivered is not None and delivered["reason"] == "ChannelNotAnswering", status
    assert "has not answered the operator" in delivered["message"]
    cluster.controller().reconcile(("ml", "demo"), job_body(replicas=2), [], cluster.snapshot())
    assert _warm_pods(cluster) == [] and cluster.api.deleted == []
    assert sorted(n for n in cluster.api.pods if n.startswith("demo-")) == [
        "demo-worker-0",
        "demo-worker-1",
    ]


def test_idle_pods_the_api_server_refuses_are_a_condition_not_a_log_line(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pool whose pod the API server (or the client's own model check) refuses, e.g. a
    template field of the wrong type, got a warning in the operator's log on every reconcile
    and nothing in its status."""
    refused = ApiError(422, "Invalid", 'Pod "warm-" is invalid: spec.containers[0].resources')
    cluster.api.fail("create", "pods", refused)
    cluster.pool = pool_body(replicas=2)
    key = ("ml", "warm")
    soon = cluster.pools.reconcile(key, cluster.pool, cluster.pool_views())
    assert soon is not None and soon <= 1  # written by the next reconcile, not in 10 s
    cluster.pools.reconcile(key, cluster.pool, cluster.pool_views())
    failure = _condition(cluster.api.pool_statuses[-1], "ReplicaFailure")
    assert failure is not None and failure["status"] == "True"
    assert (
        failure["reason"] == "FailedCreate" and "spec.containers[0].resources" in failure["message"]
    )
    cluster.api.heal("create", "pods")  # the template was fixed
    cluster.pools.reconcile(key, cluster.pool, cluster.pool_views())
    cluster.pools.reconcile(key, cluster.pool, cluster.pool_views())
    assert _condition(cluster.api.pool_statuses[-1], "ReplicaFailure") is None


# -- a job's code over the claim channel (issue 23) --------------------------------------------

CODE_SENTINEL = b"pool-code-sentinel-3c9e"


def code_bundle(marker: bytes = CODE_SENTINEL) -> Any:
    """A 2-chunk bundle (random bytes do not compress) whose working_dir has a user.py that
    behaves as the cluster's, plus a marker line: the worker runs it from the bundle."""
    import tempfile

    from cerebras_appliance.contract import bundle

    script = (
        b"import os\n"
        b"print('FROM-BUNDLE %s', os.path.basename(os.getcwd()))\n"
        b"print('INLINE', os.environ.get('INLINE'), 'TOKEN', os.environ.get('TOKEN'))\n" % marker
    )
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "user.py").write_bytes(script)
        (Path(folder) / "noise.bin").write_bytes(os.urandom(600 * 1024))
        made = bundle.pack(Path(folder))
    assert len(bundle.split(made.data)) == 2
    return made


def write_code_secrets(c: Cluster, made: Any, uid: str = "uid-job", name: str = "demo") -> None:
    """What the client writes: <job>-code-<i>, owned by the job, key chunk-NNN."""
    from cerebras_appliance.contract import bundle

    for index, chunk in enumerate(bundle.split(made.data)):
        c.api.secrets[f"{name}-code-{index}"] = {
            "metadata": {
                "name": f"{name}-code-{index}",
                "ownerReferences": [{"kind": "ExecuteJob", "name": name, "uid": uid}],
            },
            "immutable": True,
            "data": {f"chunk-{index:03d}": base64.b64encode(chunk).decode()},
        }


def job_with_code(made: Any, replicas: int = 1) -> dict[str, Any]:
    body = job_body(replicas=replicas)
    body["spec"]["code"] = {"sha256": made.sha256, "chunks": 2, "size": len(made.data)}
    return body


def recorded_claims(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every claim the operator sends, as sent (then delivered as usual)."""
    sent: list[bytes] = []
    real = pooltls.deliver

    def deliver(context: Any, host: str, claim_bytes: bytes, **kwargs: Any) -> Any:
        sent.append(claim_bytes)
        return real(context, host, claim_bytes, **kwargs)

    monkeypatch.setattr(pooltls, "deliver", deliver)
    return sent


def test_a_claim_carries_the_jobs_checked_code_and_its_hash(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = code_bundle()
    write_code_secrets(cluster, made)
    sent = recorded_claims(monkeypatch)
    cluster.start_idle(1)
    ctl = cluster.controller()
    ctl.reconcile(("ml", "demo"), job_with_code(made), [], cluster.snapshot())
    (name,) = _claimed(cluster)
    (message,) = sent
    claim = claims.parse(message, expected_worker=name)
    assert claim.code == made.data  # the bytes, joined from both Secrets in order
    plumbing = dict(claim.plumbing)
    assert plumbing[names.CODE_SHA256_VAR] == made.sha256
    assert names.CODE_DIR_VAR not in plumbing  # the worker names the directory it writes
    annotations = cluster.api.pods[name]["metadata"]["annotations"]
    assert annotations[names.CLAIM_CONFIRMED_ANNOTATION].startswith("hmac-sha256:")
    returncode, out, err = cluster.output(name)
    assert returncode == 0, err
    # The worker wrote the bytes it received, unpacked them and ran the bundle's user.py in
    # the bundle's working_dir, with the job's env.
    assert f"FROM-BUNDLE {CODE_SENTINEL.decode()} working_dir" in out, (out, err)
    assert f"TOKEN {SECRET_SENTINEL}" in out
    # Nothing the operator wrote or logged to the API holds the code.
    for text in [
        *cluster.api.bodies,
        *map(str, cluster.api.events),
        *map(str, cluster.api.statuses),
    ]:
        assert CODE_SENTINEL.decode() not in text
        assert base64.b64encode(made.data[:300]).decode()[:40] not in text
    assert not [n for n in cluster.api.pods if n.startswith("demo-worker-")]  # all warm


def _break_code(c: Cluster, made: Any, how: str) -> str:
    """Spoil the job's code Secrets ``how``; the Secret the problem must name."""
    if how == "mismatch":  # another bundle of the same size: a substituted Secret
        other = code_bundle(b"pool-code-sentinel-0ther")
        write_code_secrets(c, other)
        return "demo-code-0"
    write_code_secrets(c, made)
    if how == "missing":
        del c.api.secrets["demo-code-1"]
        return "demo-code-1"
    if how == "not-owned":
        c.api.secrets["demo-code-1"]["metadata"]["ownerReferences"][0]["uid"] = "uid-earlier"
        return "demo-code-1"
    c.api.secrets["demo-code-1"]["data"] = {"wrong-key": "AAAA"}  # how == "no-chunk"
    return "demo-code-1"


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("mismatch", "CodeHashMismatch"),
        ("missing", "CodeSecretNotFound"),
        ("not-owned", "CodeSecretNotOwned"),
        ("no-chunk", "CodeSecretInvalid"),
    ],
)
def test_code_that_is_not_the_jobs_is_never_sent_and_the_workers_start_cold(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, how: str, reason: str
) -> None:
    made = code_bundle()
    secret = _break_code(cluster, made, how)
    sent = recorded_claims(monkeypatch)
    cluster.start_idle(2)
    ctl = cluster.controller()
    key = ("ml", "demo")
    ctl.reconcile(key, job_with_code(made), [], cluster.snapshot())
    assert sent == []  # no claim, so no byte of the code, left the operator
    burnt = _warm_pods(cluster, gone_too=True)
    assert len(burnt) == 1 and set(cluster.api.deleted) == set(burnt)  # replaced cold
    (warning,) = [e for e in cluster.api.events if e["reason"] == reason]
    assert secret in warning["message"] and "start cold" in warning["message"]
    for _ in range(3):  # replaced cold, and no other pool pod is claimed for it
        ctl.reconcile(key, job_with_code(made), cluster.job_pods(), cluster.snapshot())
    assert set(_warm_pods(cluster, gone_too=True)) == set(burnt)
    (cold,) = [n for n in cluster.api.pods if n.startswith("demo-worker-0")]
    volumes = cluster.api.pods[cold]["spec"]["volumes"]
    assert desired.CODE_VOLUME in {v["name"] for v in volumes}  # the cold worker's own check
    condition = next(
        c
        for s in reversed(cluster.api.statuses)
        for c in s.get("conditions", [])
        if c["type"] == POOL_CLAIM
    )
    assert condition["status"] == "False" and condition["reason"] == reason
    assert secret in condition["message"]
    for text in [
        *cluster.api.bodies,
        *map(str, cluster.api.events),
        *map(str, cluster.api.statuses),
    ]:
        assert "pool-code-sentinel" not in text and "noise.bin" not in text
    # Not the pool's fault: another job still claims its idle worker warm.
    other = job_body(replicas=1, name="other", uid="uid-other")
    ctl.reconcile(("ml", "other"), other, [], cluster.snapshot())
    assert len(_warm_pods(cluster, "uid-other")) == 1 and "other-worker-0" not in cluster.api.pods


def test_a_claim_round_trips_code_and_refuses_code_it_cannot_check() -> None:
    base = claims.Claim(
        worker="w",
        entrypoint="user.py",
        args=(),
        plumbing=((names.CODE_SHA256_VAR, "sha256:" + "0" * 64),),
        snapshot="{}",
        code=b"\x1f\x8b\x00bytes",
    )
    assert claims.parse(claims.dumps(base)).code == b"\x1f\x8b\x00bytes"
    plain = base._replace(plumbing=(), code=b"")
    assert b'"code"' not in claims.dumps(plain)  # a claim without code is as before
    assert claims.parse(claims.dumps(plain)).code == b""
    local = base._replace(
        plumbing=((names.CODE_DIR_VAR, "/d"), (names.CODE_SHA256_VAR, "sha256:x")), code=b""
    )
    assert claims.parse(claims.dumps(local)).code == b""  # chunk files the claimer wrote
    bad = [
        (base._replace(plumbing=()), "without APPLIANCE_CODE_SHA256"),
        (base._replace(plumbing=(*base.plumbing, (names.CODE_DIR_VAR, "/d"))), "names"),
        (base._replace(code=b""), "brings no code"),
        (local._replace(plumbing=((names.CODE_DIR_VAR, "/d"),)), "without"),
    ]
    for claim, message in bad:
        with pytest.raises(claims.ClaimError, match=message):
            claims.parse(claims.dumps(claim))
    data = claims.dumps(base).replace(b'"code":"', b'"code":"!!')
    with pytest.raises(claims.ClaimError, match="not base64"):
        claims.parse(data)


def test_the_largest_bundle_and_snapshot_fit_in_one_claim_and_one_frame() -> None:
    from cerebras_appliance.contract import bundle

    largest_code = 4 * -(-bundle.MAX_CHUNKS * bundle.SECRET_CHUNK_BYTES // 3)  # as base64
    snapshot = 2 * desired.MAX_SECRET_BYTES  # a 1 MiB env file, escaped again in JSON
    assert largest_code + snapshot + 64 * 1024 <= claims.MAX_CLAIM_BYTES
    claim = claims.Claim(
        worker="w",
        entrypoint="user.py",
        args=(),
        plumbing=((names.CODE_SHA256_VAR, "sha256:" + "0" * 64),),
        snapshot="x" * (2 * desired.MAX_SECRET_BYTES),
        code=b"\xff" * bundle.MAX_BUNDLE_BYTES,
    )
    data = claims.dumps(claim)
    assert len(data) <= claims.MAX_CLAIM_BYTES
    assert claims.parse(data).code == claim.code


def test_write_code_makes_a_private_directory_holding_one_chunk(tmp_path: Path) -> None:
    directory = claims.write_code(b"bundle-bytes", str(tmp_path))
    assert Path(directory).parent == tmp_path
    assert os.stat(directory).st_mode & 0o777 == 0o700
    chunk = Path(directory) / "chunk-000"
    assert chunk.read_bytes() == b"bundle-bytes"
    assert chunk.stat().st_mode & 0o777 == 0o600
    assert sorted(os.listdir(directory)) == ["chunk-000"]
    assert claims.write_code(b"x", str(tmp_path)) != directory  # a new one each time


def test_pool_pods_have_room_for_a_claimed_jobs_code_in_memory() -> None:
    pod = desired.pool_pod(parse_pool(pool_body()), "uid-pool", "abcde")
    state = next(v for v in pod["spec"]["volumes"] if v["name"] == desired.STATE_VOLUME)
    assert state["emptyDir"] == {"medium": "Memory", "sizeLimit": desired.CODE_STATE_SIZE}


def test_idle_pods_of_an_older_pod_layout_are_replaced_not_claimed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Idle pods made before pool pods had room for code (layout 1, whose hash was the
    spec's alone) are stale for this operator: replaced, never claimed with code they
    cannot hold."""
    from appliance_operator.pool import plan as poolplan

    pool = parse_pool(pool_body(replicas=1))
    monkeypatch.setattr(poolplan, "POOL_POD_LAYOUT", 1)
    older = pool_spec_hash(pool)
    monkeypatch.undo()
    assert older != SPEC_HASH == pool_spec_hash(pool)
    steps = plan_pool(pool, [view("old", spec_hash=older)], None, generation=1, now="t")
    assert [p.name for p in steps.delete] == ["old"] and steps.create == 1
    choice = choose_claims(spec(), pool, [view("old", spec_hash=older)], [desired.WorkerId(0)])
    assert choice.claims == ()
