"""Expectations (one mechanism for both controllers) and the job memory's parts (pure)."""

from __future__ import annotations

from appliance_operator.expectations import EXPECTATION_TTL, Expectations
from appliance_operator.job.memory import (
    RETRY_BASE,
    RETRY_MAX,
    Retries,
    Warnings,
    Writes,
    backoff_delay,
)
from appliance_operator.observe import PodView


def view(name: str, uid: str) -> PodView:
    return PodView(
        name=name,
        uid=uid,
        job_name="demo",
        owner_uid="uid-job",
        index=0,
        attempt=0,
        phase="Running",
        tracked=True,
    )


def test_an_expectation_goes_once_met_or_after_the_ttl() -> None:
    seen: Expectations[str, int] = Expectations()
    seen.expect("a", 1, now=0.0)
    seen.expect("b", 2, now=10.0)
    seen.prune(now=5.0, met=lambda key: key == "a")
    assert "a" not in seen and seen.get("b") == 2 and seen.since("b") == 10.0
    seen.prune(now=10.0 + EXPECTATION_TTL)  # not older than the TTL yet
    assert list(seen) == ["b"]
    seen.prune(now=10.0 + EXPECTATION_TTL + 0.1)
    assert len(seen) == 0 and seen.get("b") is None and seen.since("b") is None


def test_the_watch_lagging_behind_our_writes_shows_them_merged() -> None:
    """A pod created but not watched yet is added; one deleted, released or delivered to
    is shown so until the watch shows it, or it is gone."""
    writes = Writes()
    created = view("demo-worker-1", "u1")
    writes.created.expect(created.name, created, now=0.0)
    writes.deleted.expect("u0", None, now=0.0)
    writes.released.expect("u0", None, now=0.0)
    merged = writes.merge([view("demo-worker-0", "u0")], now=1.0)
    assert [p.name for p in merged] == ["demo-worker-0", "demo-worker-1"]
    assert merged[0].terminating and merged[0].released
    # The watch shows the created pod, and the deleted one is gone: nothing is kept.
    assert writes.merge([view("demo-worker-1", "u1")], now=2.0) == [view("demo-worker-1", "u1")]
    assert len(writes.created) == len(writes.deleted) == len(writes.released) == 0


def test_the_retry_backoff_doubles_from_its_base_to_its_cap() -> None:
    assert backoff_delay(0) == backoff_delay(1) == RETRY_BASE
    assert backoff_delay(3) == RETRY_BASE * 4
    assert backoff_delay(100) == RETRY_MAX
    retries = Retries()
    assert [retries.failed() for _ in range(3)] == [RETRY_BASE, RETRY_BASE * 2, RETRY_BASE * 4]
    assert retries.delay() == RETRY_BASE * 4
    retries.reset()  # a reconcile went through
    assert retries.failed() == RETRY_BASE


def test_a_warning_is_posted_once_until_another_comes() -> None:
    warnings = Warnings()
    assert warnings.first("SecretNotFound", "x")
    assert not warnings.first("SecretNotFound", "x")
    assert warnings.first("SecretNotFound", "y")
    assert warnings.first("SecretNotFound", "x")
