"""``appliance_environ``: :data:`os.environ`, plus a record of what was set through it.

:data:`appliance_environ` *is* the process environment: it shares the storage and the codecs
of :data:`os.environ`, and every operation that ``os.environ`` has (reads, iteration, ``len``,
views, ``copy``, ``==``, ``|``, ``|=``, ``update``, ``setdefault``, ``pop``, ``popitem``,
``clear``, ``repr``, its ``TypeError``/``ValueError``/``OSError`` checks, use as ``env=`` of
:mod:`subprocess`) gives the same result and leaves the same environment as on ``os.environ``.

On top of that it *tracks* the names set through it. Tracking decides only what is **sent**:
:meth:`ApplianceEnviron.tracked` (what ``submit()`` snapshots) returns the tracked variables
that are set now, in the order first set. Variables set through plain ``os.environ`` are
visible here but not tracked, so they are never sent.

Tracking rules:

* ``[k] = v``, ``update`` (mapping, iterable of pairs, keywords) and ``|=`` track each name
  they set (a failing item stops them where ``os.environ`` stops, and is not tracked).
* ``setdefault(k, v)`` tracks ``k`` whether or not it was already set (the caller asked for
  ``k`` to reach the workers); as on ``os.environ`` it writes only when ``k`` is absent.
* Removing a name through this object (``del``, ``pop``, ``popitem``, ``clear``) untracks it,
  even when the variable was already absent. ``clear()`` and ``popitem()`` act on the whole
  environment, exactly as ``os.environ``'s do; ``clear()`` leaves nothing tracked.
* A tracked variable deleted through ``os.environ`` stays tracked: it is not sent while it is
  absent, and is sent again once set again (by either object).

Processes: after :func:`os.fork` the child has the parent's tracked set and a fresh lock
(:func:`os.register_at_fork`; a fork waits for a compound operation in progress in another
thread, so the child never sees half of one). A new interpreter (``multiprocessing`` *spawn*
and *forkserver* children, any ``exec``'d Python) inherits the environment, tracked variables
included as ordinary variables, but starts with nothing tracked: tracking is state of one
interpreter, and carrying it across ``exec`` would need a variable of its own in everyone's
environment.

Thread safety: sets take no lock (see ``docs/design.md``): a set writes the variable *then*
tracks it, and every removal untracks *then* unsets, under a lock that also serialises the
compound operations. No interleaving leaves a variable set through this object untracked.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["ApplianceEnviron", "appliance_environ"]

_MISSING: Any = object()

# os._Environ's own methods, called directly: the checks, the putenv/unsetenv calls and the
# exceptions are os.environ's, by construction.
_environ_setitem = os._Environ.__setitem__
_environ_delitem = os._Environ.__delitem__

#: Every instance (by id: a Mapping is unhashable), so that the fork handlers reach the locks.
_instances: weakref.WeakValueDictionary[int, ApplianceEnviron] = weakref.WeakValueDictionary()


class ApplianceEnviron(os._Environ[str]):
    """:data:`os.environ`, sharing its storage, that tracks the names set through it."""

    def __init__(self, environ: os._Environ[str] | None = None) -> None:
        base = os.environ if environ is None else environ
        super().__init__(
            base._data,  # type: ignore[attr-defined]
            base.encodekey,
            base.decodekey,
            base.encodevalue,
            base.decodevalue,
        )
        # Insertion-ordered set of tracked names (dict keys keep insertion order).
        self._tracked: dict[str, None] = {}
        # Serialises removals and the compound operations; sets run without it.
        self._lock = threading.RLock()
        _instances[id(self)] = self

    # -- writes -----------------------------------------------------------------------------

    def __setitem__(self, key: str, value: str) -> None:
        # os.environ's code: TypeError/ValueError/OSError before anything changes, and then
        # nothing is tracked either. Set *then* track (see the module docstring).
        _environ_setitem(self, key, value)
        self._tracked[key] = None

    def __delitem__(self, key: str) -> None:
        self.encodekey(key)  # os.environ's TypeError for a bad key, before anything changes
        with self._lock:
            self._tracked.pop(key, None)  # untrack *then* unset
            _environ_delitem(self, key)

    def pop(self, key: str, default: Any = _MISSING) -> Any:
        with self._lock:
            try:
                value = self[key]
            except KeyError:
                self._tracked.pop(key, None)
                if default is _MISSING:
                    raise
                return default
            del self[key]
            return value

    def popitem(self) -> tuple[str, str]:
        """Remove and return the first variable of the environment, as ``os.environ`` does."""
        with self._lock:
            return super().popitem()

    def clear(self) -> None:
        """Remove every variable, as ``os.environ.clear()`` does; nothing stays tracked."""
        with self._lock:
            for key in list(self._tracked):
                self._tracked.pop(key, None)  # untrack *then* unset, as every removal
                # KeyError: deleted through os.environ earlier, only the name was left
                with contextlib.suppress(KeyError):
                    _environ_delitem(self, key)
            super().clear()  # os.environ's: popitem() until empty

    def setdefault(self, key: str, value: str) -> str:
        """As ``os.environ.setdefault``; ``key`` is tracked whether or not it was set."""
        with self._lock:
            if key not in self:  # os.environ's TypeError for a bad key
                self[key] = value
            else:
                self._tracked[key] = None
            return self[key]

    # -- what is sent -----------------------------------------------------------------------

    def tracked(self) -> dict[str, str]:
        """A new dict of the tracked variables that are set now, in the order first set."""
        data = self._data  # type: ignore[attr-defined]
        encode = self.encodekey
        decode = self.decodevalue
        with self._lock:
            result = {}
            for key in list(self._tracked):  # list(dict) is atomic; sets run unlocked
                raw = data.get(encode(key))
                if raw is not None:
                    result[key] = decode(raw)
            return result

    def is_tracked(self, key: str) -> bool:
        """Whether ``key`` is tracked: sent whenever it is set."""
        return key in self._tracked

    def tracked_names(self) -> list[str]:
        """Every tracked name, set or not (a name deleted through os.environ stays tracked)."""
        with self._lock:
            return list(self._tracked)

    def set_tracked_names(self, names: Iterable[str]) -> None:
        """Track exactly ``names``, in that order, set or not; no value changes. What
        :meth:`tracked_names` returned restores the tracked set (a test's fixture saves and
        restores it around each test)."""
        with self._lock:
            self._tracked.clear()
            self._tracked.update(dict.fromkeys(names))

    def snapshot(self) -> list[tuple[str, str]]:
        """``list(tracked().items())``: the ``(name, value)`` pairs ``build_job`` takes."""
        return list(self.tracked().items())

    def __reduce__(self) -> str:
        # os.environ cannot be pickled at all; the singleton pickles by reference (e.g. as an
        # argument to a multiprocessing child, which gets its own appliance_environ).
        if self is not appliance_environ:
            raise TypeError("only the appliance_environ singleton can be pickled")
        return "appliance_environ"


#: The locks _before_fork acquired, released again in the parent after the fork.
_held: list[threading.RLock] = []


def _before_fork() -> None:
    # A compound operation running in another thread finishes before the fork, so the
    # child's tracked set is never half of one.
    for instance in list(_instances.values()):
        lock = instance._lock
        lock.acquire()
        _held.append(lock)


def _after_fork_in_parent() -> None:
    while _held:
        _held.pop().release()


def _after_fork_in_child() -> None:
    # The child's copies of the locks are held (by this thread, in _before_fork): replace them.
    _held.clear()
    for instance in list(_instances.values()):
        instance._lock = threading.RLock()


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)

#: The process-wide instance. ``cerebras_appliance.environ`` is the same object.
appliance_environ = ApplianceEnviron()
