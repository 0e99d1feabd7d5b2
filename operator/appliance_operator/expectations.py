"""What this process wrote that its watch does not show yet: one mechanism for both controllers.

The operator observes the cluster through watch caches, which lag behind its own writes by a
few milliseconds. A reconcile that runs in that window would repeat a write (create a pod
again, count a pool's idle pod that a job has just claimed). Each controller therefore keeps
an :class:`Expectations` per kind of write: the key of what it wrote and when, until the watch
shows the write or :data:`EXPECTATION_TTL` has passed. It is only an optimisation: after a
restart it is empty, and deterministic names plus create-if-absent and preconditioned
patches make a repeated decision harmless.

Not thread-safe: the job controller keeps one per job (one reconcile per job at a time), the
pool controller uses its under its own lock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

#: How long this process trusts its own record of a write the watch has not shown yet.
EXPECTATION_TTL = 30.0

K = TypeVar("K")
V = TypeVar("V")


class Expectations(Generic[K, V]):
    """Writes by key (a pod's name or uid), each with a value and the monotonic time of the
    write; an entry goes once it is met (the watch shows it) or older than ``ttl``."""

    __slots__ = ("_entries", "ttl")

    def __init__(self, ttl: float = EXPECTATION_TTL) -> None:
        self.ttl = ttl
        self._entries: dict[K, tuple[V, float]] = {}

    def expect(self, key: K, value: V, now: float) -> None:
        """Remember a write made at ``now`` (a later write of the same key replaces it)."""
        self._entries[key] = (value, now)

    def prune(self, now: float, met: Callable[[K], bool] = lambda _key: False) -> None:
        """Forget the entries the watch shows (``met``) and those older than the TTL."""
        for key, (_, since) in list(self._entries.items()):
            if met(key) or now - since > self.ttl:
                del self._entries[key]

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        return entry[0] if entry is not None else None

    def since(self, key: K) -> float | None:
        """When ``key`` was written (monotonic seconds), or None when it is not expected."""
        entry = self._entries.get(key)
        return entry[1] if entry is not None else None

    def values(self) -> list[V]:
        return [value for value, _ in self._entries.values()]

    def discard(self, key: K) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)
