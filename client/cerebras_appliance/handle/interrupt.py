"""The Ctrl-C prompt and notices of :class:`~cerebras_appliance.handle.JobHandle` (the rule
itself is in :mod:`cerebras_appliance.handle.base`'s docstring): a line on stderr, further
Ctrl-C deferred while the clean-up runs, and the question ``on_interrupt="ask"`` asks."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import IO, Literal

#: What a Ctrl-C during a wait or a log stream does to the job.
OnInterrupt = Literal["delete", "keep", "ask"]


def notice(stream: IO[str] | None, text: str) -> None:
    """Say ``text`` on ``stream`` (stderr by default); a closed stream says nothing."""
    with contextlib.suppress(Exception):
        print(text, file=stream or sys.stderr, flush=True)


@contextlib.contextmanager
def sigint_deferred(stream: IO[str] | None, text: str) -> Iterator[None]:
    """Ignore further Ctrl-C (saying so) while the clean-up runs; main thread only."""
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return

    def again(signum: int, frame: object) -> None:
        notice(stream, text)

    previous = signal.signal(signal.SIGINT, again)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def ask(stream: IO[str] | None, question: str) -> OnInterrupt:
    """``on_interrupt="ask"``: anything but "n" deletes; without a terminal it deletes."""
    if not (sys.stdin is not None and sys.stdin.isatty()):
        return "delete"
    notice(stream, question)
    try:
        answer = input()
    except (EOFError, KeyboardInterrupt):
        return "delete"
    return "keep" if answer.strip().lower() in ("n", "no") else "delete"
