"""The worker as a process: PID 1 in a pod (a minimal init, like tini) and its stop signals.

SIGTERM raises ``SystemExit(143)`` in the user's code and SIGINT ``KeyboardInterrupt``, as in
any Python program; :func:`stop_signal` says which one asked the worker to stop, so it exits
128 + N whatever the user code returned after it (``entrypoint``'s docstring).
"""

from __future__ import annotations

import contextlib
import os
import signal
from types import FrameType

#: What the init forwards to the worker's process group (the rest keep their default action).
FORWARDED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
)


class _Stop:
    """The signal that asked the worker to stop (0: none), set by our handlers; one worker
    per process, so a class attribute."""

    signum = 0


def stop_signal() -> int:
    """The signal that asked the worker to stop, 0 if none did."""
    return _Stop.signum


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _Stop.signum = signum
    raise SystemExit(128 + signum)


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    _Stop.signum = signum
    signal.default_int_handler(signum, frame)  # KeyboardInterrupt, as in any program


def install_stop_handlers() -> None:
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, _on_sigint)


def run_as_init() -> int | None:
    """Fork; in the child return None (it goes on as the worker), in the parent act as PID 1
    until the child exits and return the exit code to exit with."""
    waited = {*FORWARDED_SIGNALS, signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    child = os.fork()
    if child == 0:
        os.setpgid(0, 0)  # its own group: the init signals the group, never itself
        signal.pthread_sigmask(signal.SIG_UNBLOCK, waited)
        return None
    with contextlib.suppress(OSError):
        os.setpgid(child, child)  # also here: no signal may reach the group before it exists
    while True:
        info = signal.sigwaitinfo(waited)
        if info.si_signo != signal.SIGCHLD:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child, info.si_signo)
            continue
        while True:  # reap every child that exited: the worker, and orphans reparented to us
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return 1  # no child at all: cannot happen while the worker runs
            if pid == 0:
                break
            if pid == child:
                code = os.waitstatus_to_exitcode(wait_status)
                return code if code >= 0 else 128 - code
