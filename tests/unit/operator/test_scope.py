"""--namespace: which namespaces the operator serves, and what kopf is asked to watch."""

from __future__ import annotations

import pytest

from appliance_operator.scope import NamespaceScope, ScopeError, namespace_scope


def test_no_pattern_is_every_namespace_cluster_wide() -> None:
    scope = namespace_scope([])
    assert scope.clusterwide and scope.kopf_namespaces == []
    assert scope.serves("anything") and scope.serves(None)


def test_plain_names_go_to_kopf_as_they_are() -> None:
    scope = namespace_scope(["ml", "ml-dev"])
    assert not scope.clusterwide and scope.kopf_namespaces == ["ml", "ml-dev"]
    assert scope.serves("ml") and scope.serves("ml-dev") and not scope.serves("ml-prod")


@pytest.mark.parametrize(
    ("patterns", "served", "not_served"),
    [
        (["!kube-*"], ["default", "ml"], ["kube-system", "kube-public"]),
        (
            ["!it-test-chart-*,!it-test-pool-*"],
            ["it-test-x-1"],
            ["it-test-chart-1", "it-test-pool-2"],
        ),
        (["ml-*"], ["ml-a", "ml-b"], ["ml", "default"]),
        (["ml-*", "!ml-secret"], ["ml-a"], ["ml-secret", "other"]),
        (["team-?"], ["team-a"], ["team-ab"]),
    ],
)
def test_globs_and_exclusions_watch_cluster_wide_and_filter(
    patterns: list[str], served: list[str], not_served: list[str]
) -> None:
    scope = namespace_scope(patterns)
    # kopf would follow namespaces with per-namespace watches (scope.py): never given these.
    assert scope.clusterwide and scope.kopf_namespaces == []
    assert all(scope.serves(ns) for ns in served), served
    assert not any(scope.serves(ns) for ns in not_served), not_served


def test_spaces_around_entries_are_ignored() -> None:
    assert namespace_scope([" ml , !ml-x "]) == NamespaceScope(include=("ml",), exclude=("ml-x",))


@pytest.mark.parametrize(("value", "says"), [("ml,", "an empty entry"), ("!", "'!' must be")])
def test_an_unusable_value_is_refused_naming_it(value: str, says: str) -> None:
    with pytest.raises(ScopeError, match=says) as caught:
        namespace_scope([value])
    assert repr(value) in str(caught.value)
