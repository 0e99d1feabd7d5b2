"""Differential: random operation sequences on appliance_environ and on a reference.

The reference is a second ``os._Environ`` over its own dict, with os.environ's codecs: the
very code of ``os.environ``. Every operation runs on both; results (or exception types) must
be identical, and after every step the environments must be identical (os.environ's storage,
in order, the reference's, and the C level's ``getenv``). A model of the tracked set checks
``tracked()`` and ``is_tracked``.

Both objects call the real ``putenv``/``unsetenv`` with the same arguments, so the C-level
environment follows both. Each example starts from a small environment of its own (the real
one is saved and restored around it), so ``popitem`` and ``clear`` are exercised for real.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Iterable
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from cerebras_appliance.environment import appliance_environ

NAMES = [f"HYP_{c}" for c in "ABCDEF"]
GOOD_KEYS = st.sampled_from(NAMES)
BAD_KEYS = st.sampled_from(["", "A=B", "=A", "N\x00", "\ud800", 1, None, b"HYP_A", ("t",)])
KEYS = GOOD_KEYS | BAD_KEYS
GOOD_VALUES = st.text(
    alphabet=st.characters(exclude_characters="\x00", codec="utf-8")
    | st.sampled_from(["\udc80", "\udce9", "\udcff"]),  # bytes kept by surrogateescape
    max_size=6,
)
BAD_VALUES = st.sampled_from(["v\x00", "\ud800", 1, None, b"v"])
VALUES = GOOD_VALUES | BAD_VALUES
PAIRS = st.lists(st.tuples(KEYS, VALUES), max_size=4)
MISSING = object()

_libc = ctypes.CDLL(None)
_libc.getenv.restype = ctypes.c_char_p


def outcome(operation: Callable[[Any], Any], env: Any) -> tuple[str, Any]:
    """``("ok", result)`` or ``("raised", exception type)``; views become lists."""
    try:
        result = operation(env)
    except Exception as exc:
        return "raised", type(exc)
    if isinstance(result, Iterable) and not isinstance(result, str | bytes | dict | tuple):
        result = list(result)
    if result is env:
        result = "self"
    return "ok", result


def accepted(key: object, value: object) -> bool:
    """Whether os.environ[key] = value succeeds (the model's copy of os.environ's checks)."""
    if not isinstance(key, str) or not isinstance(value, str):
        return False
    try:
        os.environ.encodekey(key)
        os.environ.encodevalue(value)
    except ValueError:  # UnicodeEncodeError
        return False
    return key != "" and "=" not in key and "\x00" not in key + value


def valid_key(key: object) -> bool:
    """Whether os.environ's encodekey takes the key (reads and deletes get past it)."""
    try:
        os.environ.encodekey(key)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


class DifferentialMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.saved_environ = dict(os.environ)
        self.saved_tracked = appliance_environ.tracked_names()
        os.environ.clear()
        appliance_environ.set_tracked_names([])
        self.subject = appliance_environ
        self.reference: os._Environ[str] = os._Environ(  # type: ignore[call-arg]
            {},
            os.environ.encodekey,
            os.environ.decodekey,
            os.environ.encodevalue,
            os.environ.decodevalue,
        )
        self.model: dict[str, None] = {}  # tracked names, in the order first set

    def teardown(self) -> None:
        os.environ.clear()
        os.environ.update(self.saved_environ)
        appliance_environ.set_tracked_names(self.saved_tracked)

    @initialize(start=st.dictionaries(GOOD_KEYS, GOOD_VALUES, max_size=4))
    def start(self, start: dict[str, str]) -> None:
        for key, value in start.items():  # untracked, as if inherited from the shell
            os.environ[key] = value
            self.reference[key] = value

    # -- running one operation on both sides --------------------------------------------------

    def both(self, operation: Callable[[Any], Any]) -> tuple[str, Any]:
        got = outcome(operation, self.subject)
        expected = outcome(operation, self.reference)
        assert got == expected
        return got

    def track_sets(self, pairs: Iterable[tuple[object, object]]) -> None:
        """Model: a sequence of sets tracks each name up to the first one refused."""
        for key, value in pairs:
            if not accepted(key, value):
                return
            self.model.setdefault(key, None)  # type: ignore[arg-type]

    # -- writes -------------------------------------------------------------------------------

    @rule(key=KEYS, value=VALUES)
    def setitem(self, key: Any, value: Any) -> None:
        self.both(lambda env: env.__setitem__(key, value))
        self.track_sets([(key, value)])

    @rule(pairs=PAIRS)
    def update_iterable(self, pairs: list[tuple[Any, Any]]) -> None:
        self.both(lambda env: env.update(pairs))
        self.track_sets(pairs)

    @rule(items=st.dictionaries(GOOD_KEYS | BAD_KEYS, VALUES, max_size=4))
    def update_mapping(self, items: dict[Any, Any]) -> None:
        self.both(lambda env: env.update(items))
        self.track_sets(items.items())

    @rule(
        items=st.dictionaries(GOOD_KEYS, GOOD_VALUES, max_size=2),
        kwargs=st.dictionaries(st.sampled_from(["HYP_E", "HYP_F", "A=B"]), VALUES, max_size=2),
    )
    def update_with_keywords(self, items: dict[str, str], kwargs: dict[str, Any]) -> None:
        self.both(lambda env: env.update(items, **kwargs))
        self.track_sets([*items.items(), *kwargs.items()])

    @rule(items=st.dictionaries(KEYS, VALUES, max_size=3) | PAIRS)
    def ior(self, items: Any) -> None:
        def ior(env: Any) -> Any:
            env |= items
            return env

        self.both(ior)
        self.track_sets(items.items() if isinstance(items, dict) else items)

    @rule(key=KEYS, value=VALUES)
    def setdefault(self, key: Any, value: Any) -> None:
        was_set = valid_key(key) and key in self.reference
        kind, _ = self.both(lambda env: env.setdefault(key, value))
        if was_set:
            assert kind == "ok"
            self.model.setdefault(key, None)  # tracked although it was already set
        else:
            self.track_sets([(key, value)])

    # -- removals -----------------------------------------------------------------------------

    def untrack(self, key: object) -> None:
        if valid_key(key):
            self.model.pop(key, None)  # type: ignore[arg-type]

    @rule(key=KEYS)
    def delitem(self, key: Any) -> None:
        self.both(lambda env: env.__delitem__(key))
        self.untrack(key)

    @rule(key=KEYS, default=st.just(MISSING) | st.none() | GOOD_VALUES)
    def pop(self, key: Any, default: Any) -> None:
        if default is MISSING:
            self.both(lambda env: env.pop(key))
        else:
            self.both(lambda env: env.pop(key, default))
        self.untrack(key)

    @rule()
    def popitem(self) -> None:
        kind, result = self.both(lambda env: env.popitem())
        if kind == "ok":
            self.model.pop(result[0], None)

    @rule()
    def clear(self) -> None:
        self.both(lambda env: env.clear())
        self.model.clear()

    # -- plain os.environ (and putenv) on the side: visible, never tracked ----------------------

    @rule(key=GOOD_KEYS, value=GOOD_VALUES)
    def os_environ_set(self, key: str, value: str) -> None:
        os.environ[key] = value
        self.reference[key] = value

    @rule(key=GOOD_KEYS)
    def os_environ_pop(self, key: str) -> None:
        assert os.environ.pop(key, None) == self.reference.pop(key, None)

    # -- reads --------------------------------------------------------------------------------

    @rule(key=KEYS, default=st.none() | GOOD_VALUES)
    def reads(self, key: Any, default: Any) -> None:
        self.both(lambda env: env[key])
        self.both(lambda env: env.get(key))
        self.both(lambda env: env.get(key, default))
        self.both(lambda env: key in env)
        self.both(lambda env: key in env.keys())  # noqa: SIM118 - the view is tested
        self.both(lambda env: (key, default) in env.items())
        self.both(lambda env: default in env.values())

    @rule(other=st.dictionaries(KEYS, VALUES, max_size=3) | st.lists(st.tuples(KEYS, VALUES)))
    def operators(self, other: Any) -> None:
        self.both(lambda env: env | other)
        self.both(lambda env: other | env)
        self.both(lambda env: env == other)
        self.both(lambda env: env != other)
        self.both(lambda env: env == self.reference)

    @invariant()
    def identical_environments(self) -> None:
        subject, reference = self.subject, self.reference
        data = os.environ._data  # type: ignore[attr-defined]
        assert list(data.items()) == list(reference._data.items())  # type: ignore[attr-defined]
        assert subject._data is data  # type: ignore[attr-defined]
        assert list(subject) == list(reference) == list(os.environ)
        assert list(subject.keys()) == list(reference.keys())
        assert list(subject.items()) == list(reference.items())
        assert list(subject.values()) == list(reference.values())
        assert len(subject) == len(reference) == len(list(subject))
        assert subject.copy() == reference.copy() and type(subject.copy()) is dict
        assert dict(subject) == {**subject} == dict(reference)
        assert repr(subject) == repr(reference) == repr(os.environ)
        assert subject == reference and subject == os.environ
        for name in NAMES:
            raw = data.get(os.environ.encodekey(name))
            assert _libc.getenv(os.fsencode(name)) == raw

    @invariant()
    def tracking_follows_the_model(self) -> None:
        expected = [(k, self.reference[k]) for k in self.model if k in self.reference]
        tracked = self.subject.tracked()
        assert type(tracked) is dict and list(tracked.items()) == expected
        assert self.subject.tracked_names() == list(self.model)
        for name in NAMES:
            assert self.subject.is_tracked(name) == (name in self.model)


TestDifferential = DifferentialMachine.TestCase
TestDifferential.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
