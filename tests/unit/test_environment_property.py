"""Long random operation sequences: appliance_environ never diverges from a simple model.

The model is a plain dict for the process environment plus an insertion-ordered set of
tracked names; every operation is applied to both, and every observable is compared.
"""

from __future__ import annotations

import os

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from cerebras_appliance.environment import ApplianceEnviron

KEYS = st.sampled_from([f"HYP_{c}" for c in "ABCDEFG"])
VALUES = st.text(
    alphabet=st.characters(exclude_characters="\x00", codec="utf-8"),
    max_size=8,
)
MISSING = object()


class EnvironMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        for key in [k for k in os.environ if k.startswith("HYP_")]:
            del os.environ[key]
        self.subject = ApplianceEnviron()
        self.env: dict[str, str] = {}
        self.tracked: dict[str, None] = {}

    def _model_view(self) -> list[tuple[str, str]]:
        return [(k, self.env[k]) for k in self.tracked if k in self.env]

    @rule(key=KEYS, value=VALUES)
    def set_tracked(self, key: str, value: str) -> None:
        self.subject[key] = value
        self.env[key] = value
        self.tracked[key] = None

    @rule(key=KEYS, value=VALUES)
    def set_untracked(self, key: str, value: str) -> None:
        os.environ[key] = value
        self.env[key] = value

    @rule(key=KEYS)
    def delete_tracked(self, key: str) -> None:
        raised = False
        try:
            del self.subject[key]
        except KeyError:
            raised = True
        assert raised == (key not in self.env)
        self.env.pop(key, None)
        self.tracked.pop(key, None)

    @rule(key=KEYS)
    def delete_untracked(self, key: str) -> None:
        if key in self.env:
            del os.environ[key]
            del self.env[key]

    @rule(key=KEYS, default=st.none() | VALUES)
    def pop(self, key: str, default: str | None) -> None:
        got = self.subject.pop(key, default)
        if key in self.env:
            expected = self.env.pop(key)
            self.tracked.pop(key, None)  # deleting untracks
        else:
            expected = default  # nothing deleted: a tracked name stays tracked
        assert got == expected

    @rule()
    def popitem(self) -> None:
        view = self._model_view()
        try:
            got: object = self.subject.popitem()
        except KeyError:
            got = MISSING
        if not view:
            assert got is MISSING
            self.tracked.clear()
            return
        assert got == view[0]
        for key in list(self.tracked):
            if key == view[0][0]:
                break
            del self.tracked[key]  # skipped: tracked but deleted elsewhere
        del self.tracked[view[0][0]]
        del self.env[view[0][0]]

    @rule()
    def clear(self) -> None:
        self.subject.clear()
        for key in self.tracked:
            self.env.pop(key, None)
        self.tracked.clear()

    @rule(key=KEYS, value=VALUES)
    def setdefault(self, key: str, value: str) -> None:
        got = self.subject.setdefault(key, value)
        if key not in self.env:
            self.env[key] = value
            self.tracked[key] = None
        assert got == self.env[key]

    @rule(items=st.dictionaries(KEYS, VALUES, max_size=3))
    def update(self, items: dict[str, str]) -> None:
        self.subject.update(items)
        for key, value in items.items():
            self.env[key] = value
            self.tracked[key] = None

    @invariant()
    def observables_agree(self) -> None:
        view = self._model_view()
        assert self.subject.snapshot() == view
        assert list(self.subject) == [k for k, _ in view]
        assert list(self.subject.items()) == view
        assert len(self.subject) == len(view)
        assert self.subject.copy() == dict(view)
        for key in (f"HYP_{c}" for c in "ABCDEFG"):
            assert self.subject.get(key) == self.env.get(key)
            assert os.environ.get(key) == self.env.get(key)
            assert (key in self.subject) == (key in self.env)

    def teardown(self) -> None:
        for key in [k for k in os.environ if k.startswith("HYP_")]:
            del os.environ[key]


TestEnvironMachine = EnvironMachine.TestCase
TestEnvironMachine.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
