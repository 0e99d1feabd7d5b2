from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from cerebras_appliance.environment import appliance_environ


@pytest.fixture(autouse=True)
def clean_environ() -> Iterator[None]:
    """Each test starts with nothing tracked and gets the process environment back after."""
    saved = dict(os.environ)
    tracked = appliance_environ.tracked_names()
    appliance_environ.set_tracked_names([])
    try:
        yield
    finally:
        appliance_environ.set_tracked_names(tracked)
        os.environ.clear()
        os.environ.update(saved)
