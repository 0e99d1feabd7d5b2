"""The claim port's NetworkPolicy (operator/appliance_operator/poolnetwork.py): its body, where
the operator learns who it is, and the create / read back / replace steps.

On kind, with the policy enforced: tests/e2e/test_network_policy_e2e.py.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from support.fake_kube import FakeKubeApi

from appliance_operator.kubeapi import ApiError
from appliance_operator.pool import network as poolnetwork
from appliance_operator.pool.network import (
    EXTRA_FROM_VAR,
    NAMESPACE_VAR,
    POD_LABELS_VAR,
    PolicyConfigError,
    PolicyKeeper,
    PolicySource,
    claim_policy,
    is_current,
    source_from_env,
)
from cerebras_appliance.contract import names

OPERATOR_LABELS = "app.kubernetes.io/name=appliance-operator,app.kubernetes.io/instance=ops"
#: The resource of the calls PolicyKeeper makes, as KubeApi records them.
NP = "networkpolicies"
ENV = {NAMESPACE_VAR: "ops-system", POD_LABELS_VAR: OPERATOR_LABELS}


def source() -> PolicySource:
    got = source_from_env(ENV)
    assert got is not None
    return got


def test_the_policy_admits_only_the_operator_to_the_pools_idle_pods() -> None:
    body = claim_policy("warm", "ml", "uid-1", source())
    assert body["apiVersion"] == "networking.k8s.io/v1" and body["kind"] == "NetworkPolicy"
    meta = body["metadata"]
    assert meta["name"] == "warm-claim" and meta["namespace"] == "ml"
    # Owned by the pool: deleted with it.
    (owner,) = meta["ownerReferences"]
    assert owner["kind"] == "WorkerPool" and owner["name"] == "warm"
    assert owner["uid"] == "uid-1" and owner["controller"] is True
    spec = body["spec"]
    # Only this pool's pods, until their claim is delivered: idle ones, and claimed ones
    # the operator has yet to deliver to (claim and delivery are two steps).
    assert spec["podSelector"] == {
        "matchLabels": {
            "app.kubernetes.io/managed-by": "appliance-operator",
            "appliance.dev/pool-name": "warm",
        },
        "matchExpressions": [{"key": "appliance.dev/claim-delivered", "operator": "DoesNotExist"}],
    }
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 7443}]
    # One peer: pods with both labels AND in the operator's namespace (one peer with both
    # selectors; two peers would admit either).
    assert rule["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops-system"}},
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/instance": "ops",
                    "app.kubernetes.io/name": "appliance-operator",
                }
            },
        }
    ]


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector's meaning (matchLabels, and the DoesNotExist expressions used here)."""
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "DoesNotExist", expr
        if expr["key"] in labels:
            return False
    return selector["matchLabels"].items() <= labels.items()


def test_the_policy_lets_go_of_a_pod_once_its_claim_is_delivered() -> None:
    """Idle, then claimed (the claim patch's labels), then delivered (the confirm patch's):
    selected, selected, not selected. Built from the patches the operator sends."""
    from appliance_operator import desired
    from cerebras_appliance.contract.api import parse_job, parse_pool

    pool = parse_pool(
        {
            "apiVersion": "appliance.dev/v1alpha1",
            "kind": "WorkerPool",
            "metadata": {"name": "warm", "namespace": "ml"},
            "spec": {"image": "img", "replicas": 1, "template": {"labels": {"team": "a"}}},
        }
    )
    selector = claim_policy("warm", "ml", "uid-1", source())["spec"]["podSelector"]
    labels = dict(desired.pool_pod(pool, "uid-1", "x")["metadata"]["labels"])
    assert _selects(selector, labels), labels
    job = parse_job(
        {
            "apiVersion": "appliance.dev/v1alpha1",
            "kind": "ExecuteJob",
            "metadata": {"name": "j", "namespace": "ml"},
            "spec": {"image": "img", "entrypoint": "x.py", "pool": "warm"},
        }
    )
    claim = desired.claim_patch(job, "job-uid", desired.WorkerId(0, 0), "1")
    labels.update(claim["metadata"]["labels"])
    assert _selects(selector, labels), labels  # the operator still reaches it to deliver
    labels.update(desired.confirm_patch("hmac-sha256:00", "job-uid")["metadata"]["labels"])
    assert not _selects(selector, labels), labels  # the job's pod: left to the job
    other = dict(desired.pool_pod(pool, "uid-1", "y")["metadata"]["labels"])
    other[names.POOL_NAME_LABEL] = "other"
    assert not _selects(selector, other)


def test_extra_peers_are_added_after_the_operator() -> None:
    extra = [{"ipBlock": {"cidr": "10.1.0.0/16"}}]
    src = source_from_env({**ENV, EXTRA_FROM_VAR: json.dumps(extra)})
    assert src is not None
    (rule,) = claim_policy("warm", "ml", "u", src)["spec"]["ingress"]
    assert rule["from"][1:] == extra


def test_no_environment_no_policy() -> None:
    assert source_from_env({}) is None
    assert source_from_env({NAMESPACE_VAR: " ", POD_LABELS_VAR: ""}) is None


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({NAMESPACE_VAR: "ops"}, POD_LABELS_VAR),
        ({POD_LABELS_VAR: OPERATOR_LABELS}, NAMESPACE_VAR),
        ({**ENV, POD_LABELS_VAR: "app=x,broken"}, POD_LABELS_VAR),
        ({**ENV, POD_LABELS_VAR: "=x"}, POD_LABELS_VAR),
        ({**ENV, EXTRA_FROM_VAR: "{not json"}, EXTRA_FROM_VAR),
        ({**ENV, EXTRA_FROM_VAR: '{"ipBlock": {}}'}, EXTRA_FROM_VAR),
        ({**ENV, EXTRA_FROM_VAR: "[{}]"}, EXTRA_FROM_VAR),
    ],
)
def test_a_wrong_environment_names_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(PolicyConfigError, match=names):
        source_from_env(env)


def test_is_current_wants_the_same_spec_and_this_pools_ownership() -> None:
    wanted = claim_policy("warm", "ml", "uid-1", source())
    assert is_current(copy.deepcopy(wanted), wanted)
    older_pool = claim_policy("warm", "ml", "uid-0", source())
    assert not is_current(older_pool, wanted)
    opened = copy.deepcopy(wanted)
    opened["spec"]["ingress"] = [{}]  # admits everyone
    assert not is_current(opened, wanted)


def test_keeper_creates_once_per_pool_uid() -> None:
    api = FakeKubeApi()
    k = PolicyKeeper(api, source())
    k.ensure("ml", "warm", "uid-1")
    k.ensure("ml", "warm", "uid-1")
    assert api.calls == [("create", NP)]
    assert (
        api.network_policies["warm-claim"]["spec"]
        == (claim_policy("warm", "ml", "uid-1", source())["spec"])
    )


def test_keeper_replaces_a_policy_it_did_not_make_for_this_pool() -> None:
    api = FakeKubeApi()
    # Pre-created under the pool's name, admitting everyone (or left by an older pool).
    foreign = claim_policy("warm", "ml", "uid-0", source())
    foreign["spec"]["ingress"] = [{}]
    api.add(NP, foreign)
    k = PolicyKeeper(api, source())
    k.ensure("ml", "warm", "uid-1")
    assert api.calls == [("create", NP), ("get", NP), ("update", NP)]
    stored = api.network_policies["warm-claim"]
    assert is_current(stored, claim_policy("warm", "ml", "uid-1", source()))
    # Its own policy found again (a restarted operator): read back, nothing replaced.
    api.calls.clear()
    PolicyKeeper(api, source()).ensure("ml", "warm", "uid-1")
    assert api.calls == [("create", NP), ("get", NP)]


def test_keeper_retries_after_an_error_and_after_the_pool_is_forgotten() -> None:
    api = FakeKubeApi()
    api.fail("create", NP, ApiError(403, "Forbidden", "no networkpolicies"))
    k = PolicyKeeper(api, source())
    k.ensure("ml", "warm", "uid-1")  # logged, not raised: the pool still works (TLS)
    api.heal("create", NP)
    k.ensure("ml", "warm", "uid-1")
    assert api.calls == [("create", NP), ("create", NP)] and "warm-claim" in api.network_policies
    k.forget("ml", "warm")
    del api.network_policies["warm-claim"]  # gone with the pool
    k.ensure("ml", "warm", "uid-2")
    assert api.network_policies["warm-claim"]["metadata"]["ownerReferences"][0]["uid"] == "uid-2"


def test_keeper_without_a_source_makes_nothing() -> None:
    api = FakeKubeApi()
    PolicyKeeper(api, None).ensure("ml", "warm", "uid-1")
    assert api.calls == []


def test_the_pool_controller_keeps_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The PoolController reads the operator's environment (the chart's) at start."""
    from appliance_operator.metrics import Metrics
    from appliance_operator.pool.controller import PoolController

    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    controller = PoolController(FakeKubeApi(), Metrics())
    assert controller.network.source == source()
    monkeypatch.setenv(POD_LABELS_VAR, "broken")
    with pytest.raises(PolicyConfigError, match=POD_LABELS_VAR):
        PoolController(FakeKubeApi(), Metrics())
    assert poolnetwork.policy_name("warm") == "warm-claim"
