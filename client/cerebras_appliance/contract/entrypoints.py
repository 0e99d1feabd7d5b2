"""Entrypoint strings: ``package.module:function`` or a script path.

Kept free of heavy imports: the worker checks its entrypoint with it before anything else.
"""

from __future__ import annotations

import re

_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
ENTRYPOINT_MODULE_PATTERN = rf"^{_DOTTED}:{_DOTTED}$"


def is_script_entrypoint(entrypoint: str) -> bool:
    """A script path (runs as ``__main__``) rather than ``module:function``."""
    return entrypoint.endswith(".py") or "/" in entrypoint


def entrypoint_problem(value: str) -> str | None:
    """Why ``value`` is not a valid entrypoint, or None when it is."""
    if is_script_entrypoint(value) or re.fullmatch(ENTRYPOINT_MODULE_PATTERN, value):
        return None
    return (
        f"{value!r} is neither 'package.module:function' nor a script path ending in .py; "
        "write e.g. 'my_pkg.loader:main' or 'loader.py'"
    )
