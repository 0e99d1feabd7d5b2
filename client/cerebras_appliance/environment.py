"""``appliance_environ``: a drop-in replacement for :data:`os.environ` that remembers what it set.

Every variable set through :data:`appliance_environ` is written to the process environment
(exactly as ``os.environ[k] = v`` would) *and* tracked. When an execute job is created, the
tracked variables that are currently set are snapshotted and sent to the job's input workers.
Variables set through plain :data:`os.environ` are visible here but are not tracked, so they
are never sent.

Reads (``[]``, ``get``, ``in``) go to the process environment, as in the original system.
Iteration, ``len``, ``keys``/``items``/``values``, ``copy`` and ``repr`` cover the tracked
variables that are currently set.

Implementation note: the class derives from :class:`os._Environ` and shares its storage with
:data:`os.environ`, so a read costs exactly what a read of ``os.environ`` costs (the
benchmark in ``bench/bench_environ.py`` checks it) and every check ``os.environ`` makes on
names and values (``TypeError`` for non-``str``, ``ValueError`` for ``=`` or NUL) is made here
by the very same code. An empty name is a ``ValueError`` too (``os.environ`` lets it surface
as ``OSError`` from ``putenv``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import ItemsView, Iterator, KeysView, ValuesView
from typing import Any

__all__ = ["ApplianceEnviron", "appliance_environ"]


class ApplianceEnviron(os._Environ[str]):
    """A view of :data:`os.environ` that tracks the variables set through it."""

    def __init__(self, environ: os._Environ[str] | None = None) -> None:
        base = os.environ if environ is None else environ
        # Share the storage and the codecs of os.environ: both objects see the same variables.
        super().__init__(
            base._data,  # type: ignore[attr-defined]
            base.encodekey,
            base.decodekey,
            base.encodevalue,
            base.decodevalue,
        )
        # Insertion-ordered set of tracked names (dict keys keep insertion order).
        self._tracked: dict[str, None] = {}
        # Serialises the compound operations (pop, popitem, clear, setdefault, delete).
        self._lock = threading.RLock()

    # -- writes: change os.environ, then the tracked set -----------------------------------

    def __setitem__(self, key: str, value: str) -> None:
        if key == "":
            # os.environ lets putenv() fail with OSError(EINVAL) here; a ValueError says what.
            raise ValueError("illegal environment variable name: the name is empty")
        # Raises TypeError/ValueError before anything changes; then nothing is tracked.
        os._Environ.__setitem__(self, key, value)
        # No lock here (a lock would cost more than the write itself): setting the variable
        # *before* tracking it, while deletes untrack *before* unsetting (under the lock), means
        # no interleaving of threads can leave a set variable untracked.
        self._tracked[key] = None

    def __delitem__(self, key: str) -> None:
        with self._lock:
            self._tracked.pop(key, None)
            os._Environ.__delitem__(self, key)

    _MISSING: Any = object()

    def pop(self, key: str, default: Any = _MISSING) -> Any:
        # Read-then-delete under the lock, so a concurrent delete cannot slip in between.
        with self._lock:
            if default is self._MISSING:
                return super().pop(key)
            return super().pop(key, default)

    def setdefault(self, key: str, value: str) -> str:
        with self._lock:
            return super().setdefault(key, value)

    def clear(self) -> None:
        """Remove the tracked variables from the process environment (and only those)."""
        with self._lock:
            for key in list(self._tracked):
                self._tracked.pop(key, None)
                if self.encodekey(key) in self._data:  # type: ignore[attr-defined]
                    os._Environ.__delitem__(self, key)

    def popitem(self) -> tuple[str, str]:
        with self._lock:
            for key in list(self._tracked):
                try:
                    value = self[key]
                except KeyError:
                    # Deleted through os.environ meanwhile: nothing to pop, forget it.
                    self._tracked.pop(key, None)
                    continue
                del self[key]
                return key, value
            raise KeyError("popitem(): no tracked variable is set")

    # -- tracked view: iteration, len, copy, repr ------------------------------------------

    def snapshot(self) -> list[tuple[str, str]]:
        """The tracked variables that are set now, as ``(name, value)`` in the order first set."""
        data = self._data  # type: ignore[attr-defined]
        encode = self.encodekey
        decode = self.decodevalue
        with self._lock:
            items = []
            for key in list(self._tracked):  # list(dict) is atomic; sets run unlocked
                raw = data.get(encode(key))
                if raw is not None:
                    items.append((key, decode(raw)))
            return items

    def tracked_names(self) -> list[str]:
        """Every tracked name, set or not (a tracked name deleted through os.environ stays)."""
        with self._lock:
            return list(self._tracked)

    def is_tracked(self, key: str) -> bool:
        return key in self._tracked

    def __iter__(self) -> Iterator[str]:
        return iter([key for key, _ in self.snapshot()])

    def __len__(self) -> int:
        return len(self.snapshot())

    def keys(self) -> KeysView[str]:
        return KeysView(self)

    def items(self) -> ItemsView[str, str]:
        return _ItemsView(self)

    def values(self) -> ValuesView[str]:
        return _ValuesView(self)

    def copy(self) -> dict[str, str]:
        return dict(self.snapshot())

    def __repr__(self) -> str:
        formatted = ", ".join(f"{k!r}: {v!r}" for k, v in self.snapshot())
        return f"appliance_environ({{{formatted}}})"

    def __reduce__(self) -> str:
        # Pickling (e.g. into a multiprocessing child) refers to the module-level singleton.
        return "appliance_environ"


class _ItemsView(ItemsView[str, str]):
    """Items of the tracked variables, read atomically (safe against concurrent deletes)."""

    _mapping: ApplianceEnviron

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._mapping.snapshot())


class _ValuesView(ValuesView[str]):
    _mapping: ApplianceEnviron

    def __iter__(self) -> Iterator[str]:
        return iter([value for _, value in self._mapping.snapshot()])


#: The process-wide instance. ``cerebras_appliance.environ`` is the same object.
appliance_environ = ApplianceEnviron()
