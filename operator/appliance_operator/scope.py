"""Which namespaces the operator serves, and how kopf is asked to watch them.

``--namespace`` takes names and globs (``ml-*``), and exclusions (``!kube-*``), repeated or
comma-separated. A namespace is served when it matches an inclusion (or there is none) and
no exclusion.

Only plain names go to kopf as namespaces (one watch per name and resource). Any glob or
exclusion makes the operator watch cluster-wide and drop other namespaces' objects itself
(:meth:`NamespaceScope.serves`, in every handler). Handing globs to kopf would make it follow
namespaces as they come and go, with watches per namespace; and kopf 1.45 then stops
handling events altogether once a namespace is deleted before its new watches have listed
it (the readiness marks of those watches are never cleared: every object waits for them).
Seen on kind: a namespace being deleted as the operator started left it handling nothing.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

GLOB_CHARS = frozenset("*?[")


class ScopeError(ValueError):
    """A ``--namespace`` value that selects nothing sensible (the message names it)."""


@dataclass(frozen=True)
class NamespaceScope:
    include: tuple[str, ...] = ()  # names or globs; empty: every namespace
    exclude: tuple[str, ...] = ()  # globs

    @property
    def clusterwide(self) -> bool:
        """Watch the whole cluster (no pattern, or a glob or exclusion among them)."""
        return not self.include or bool(self.exclude) or any(map(_is_glob, self.include))

    @property
    def kopf_namespaces(self) -> list[str]:
        """What kopf is given: the plain names, or nothing when watching cluster-wide."""
        return [] if self.clusterwide else list(self.include)

    def serves(self, namespace: str | None) -> bool:
        name = namespace or ""
        if self.include and not any(fnmatch.fnmatchcase(name, p) for p in self.include):
            return False
        return not any(fnmatch.fnmatchcase(name, p) for p in self.exclude)


def namespace_scope(patterns: Sequence[str]) -> NamespaceScope:
    """Parse ``--namespace`` values (each may hold several, comma-separated)."""
    include: list[str] = []
    exclude: list[str] = []
    for value in patterns:
        parts = [p.strip() for p in value.split(",")]
        if not all(parts):
            raise ScopeError(f"--namespace {value!r}: an empty entry; write NAME, GLOB or !GLOB")
        for part in parts:
            negated = part.startswith("!")
            glob = part[1:].strip() if negated else part
            if not glob:
                raise ScopeError(f"--namespace {value!r}: '!' must be followed by a name or glob")
            (exclude if negated else include).append(glob)
    return NamespaceScope(include=tuple(include), exclude=tuple(exclude))


def _is_glob(pattern: str) -> bool:
    return bool(GLOB_CHARS & set(pattern))
