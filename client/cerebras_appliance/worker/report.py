"""What the worker tells the outside: its exit codes, its lines on stderr, and its marker
files (ready: "env applied"; idle: a pool's worker waiting for a claim)."""

from __future__ import annotations

import sys
from pathlib import Path

EXIT_USAGE = 2
EXIT_CONFIG = 78  # EX_CONFIG from sysexits.h
PREFIX = "appliance worker:"


def log(message: str) -> None:
    """One line on stderr, which is the worker's log."""
    print(f"{PREFIX} {message}", file=sys.stderr, flush=True)


def write_ready_marker(path: str, env_hash: str) -> None:
    """Write ``env_hash`` to ``path`` atomically: a probe never reads half a marker."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(f"{env_hash}\n", encoding="utf-8")
    partial.replace(target)  # atomic: a probe never reads half a marker
