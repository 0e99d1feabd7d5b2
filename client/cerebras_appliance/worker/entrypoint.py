"""The input-worker entrypoint: ``python -m cerebras_appliance.worker ENTRYPOINT [ARGS...]``.

1. Read the env snapshot from the file named by ``APPLIANCE_ENV_FILE``.
2. If the snapshot holds start-up variables (``PYTHONPATH``, ``LD_PRELOAD``, thread counts,
   ``MALLOC_*``... see :mod:`cerebras_appliance.contract.envfile`) that the running interpreter did
   not start with, re-execute once with them set, so they take effect.
3. Patch :data:`os.environ` (so ``os.getenv``, C ``getenv`` and child processes see the values).
4. With ``APPLIANCE_CODE_DIR`` set (the job ships the user's code, issue 23), unpack it,
   enter its working directory, put it first on ``sys.path`` and install its requirements
   (:mod:`.code`; a failure exits 78 and nothing runs). A cold worker without code never
   loads it (a pool's warm worker does while idle).
5. Write the snapshot's hash to the file named by ``APPLIANCE_READY_FILE`` (if set): the
   readiness marker, meaning "env applied" (and the code in place).
6. Run the user's code:

   * ``package.module:function`` — import the module and call ``function(*ARGS)``; a returned
     int is the exit code (like console scripts). ``sys.argv`` is ``[ENTRYPOINT, *ARGS]`` too.
   * ``path/to/script.py`` — run it as ``__main__`` with ``sys.argv == [path, *ARGS]`` and
     the script's folder first on ``sys.path``, as ``python path/to/script.py`` would
     (with the job's code, a relative path is inside its working directory, and the
     script's folder goes before the code's entries).

Exit codes: the user code's own (0 on success, 1 with the traceback on stderr when it
raises); 2 for a usage error; 78 when the env snapshot file is missing or malformed, or the
job's code cannot be put in place or loaded (the user code does not run); 128 + N when the
worker was stopped by signal N (143 for SIGTERM, 130 for SIGINT), whatever the user code
returned after it.

Warm mode: ``python -m cerebras_appliance.worker --warm``. The worker of a pool, started
before any job exists: it imports the modules named in ``APPLIANCE_WARM_IMPORTS``
(comma-separated), writes the file named by ``APPLIANCE_IDLE_FILE`` (idle and ready to be
claimed), and waits for exactly one claim (:mod:`cerebras_appliance.contract.claim`) on its channel:
the pipe ``APPLIANCE_CLAIM_FD`` (local backend: only the pool's owner holds its other end) or
a mutually authenticated TLS listener (Kubernetes, :mod:`cerebras_appliance.contract.channel`). The
channel is closed once a claim arrives (a second or replayed claim finds nothing to talk to);
the claim's plumbing variables are set, its snapshot written to a private file, and from there
the worker runs steps 1-6 above unchanged. ``APPLIANCE_WARM_STARTUP_VARS`` (comma-separated)
names variables the preloaded modules read at import: a snapshot that sets one of them to a
new value re-executes like a start-up variable. A warm worker serves one job and exits.

Stopping. SIGTERM raises ``SystemExit(143)`` in the user's code (``finally`` blocks, context
managers and ``atexit`` run) and SIGINT raises ``KeyboardInterrupt``, as in any Python
program; a handler the user code installs replaces ours and decides for itself (it should
exit non-zero when it stops early: exit 0 means the worker's work is done). When the worker is
a container's PID 1 (a pod), it first forks: the parent stays as a minimal init (like tini)
that forwards these signals to the worker's process group, so the user's child processes get
them too, reaps every orphaned zombie, and exits with the worker's exit code.
"""

from __future__ import annotations

import importlib
import os
import runpy
import signal
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path

from cerebras_appliance.contract import envfile, names
from cerebras_appliance.contract.entrypoints import entrypoint_problem, is_script_entrypoint
from cerebras_appliance.contract.names import REEXEC_MARKER, WARM_FLAG
from cerebras_appliance.worker.init import install_stop_handlers, run_as_init, stop_signal
from cerebras_appliance.worker.report import EXIT_CONFIG, EXIT_USAGE, log, write_ready_marker

__all__ = [
    "EXIT_CONFIG",
    "EXIT_USAGE",
    "apply",
    "main",
    "needs_reexec",
    "run_user_code",
    "write_ready_marker",
]


def needs_reexec(
    env: tuple[tuple[str, str], ...],
    current: Mapping[str, str],
    extra: frozenset[str] = frozenset(),
) -> list[str]:
    """Start-up variables of the snapshot whose value the running process does not have
    (``extra``: more names that count as start-up variables, a warm pool's)."""
    return [
        name
        for name, value in env
        if (envfile.is_startup_variable(name) or name in extra) and current.get(name) != value
    ]


def apply(env: tuple[tuple[str, str], ...]) -> None:
    for name, value in env:
        os.environ[name] = value


def _exit_code(result: object) -> int:
    """Map a function's return value or SystemExit code to an exit code (like sys.exit)."""
    if result is None:
        return 0
    if isinstance(result, bool):
        return int(result)
    if isinstance(result, int):
        return result & 0xFF if result >= 0 else 1
    print(result, file=sys.stderr, flush=True)
    return 1


def run_user_code(entrypoint: str, args: list[str], *, keep_sys_path: bool = False) -> int:
    """Run the entrypoint; return its exit code (tracebacks go to stderr).

    ``keep_sys_path``: the job's code put its directories first on ``sys.path``
    (:mod:`.code`): a script's directory goes before them instead of replacing the first."""
    try:
        if is_script_entrypoint(entrypoint):
            script = Path(entrypoint)
            sys.argv = [entrypoint, *args]
            directory = str(script.resolve().parent)
            if not keep_sys_path:
                sys.path[0:1] = [directory]
            elif sys.path[:1] != [directory]:
                sys.path.insert(0, directory)
            runpy.run_path(entrypoint, run_name="__main__")
            return 0
        module_name, _, attr_path = entrypoint.partition(":")
        sys.argv = [entrypoint, *args]
        target: object = importlib.import_module(module_name)
        for attr in attr_path.split("."):
            target = getattr(target, attr)
        if not callable(target):
            log(f"{entrypoint!r} is not callable")
            return EXIT_USAGE
        return _exit_code(target(*args))
    except SystemExit as exc:
        return _exit_code(exc.code)
    except BaseException:
        if not stop_signal():
            traceback.print_exc()
            sys.stderr.flush()
        return 1


def _stopped_code(code: int) -> int:
    """A worker asked to stop exits 128 + signal: it did not finish its work."""
    signum = stop_signal()
    if signum:
        log(f"stopped by {signal.Signals(signum).name}")
        return 128 + signum
    return code


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__, file=sys.stderr)
        return EXIT_USAGE
    if os.getpid() == 1:
        code = run_as_init()
        if code is not None:
            return code
    install_stop_handlers()
    try:
        if argv[0] == WARM_FLAG:
            return _stopped_code(_warm(argv[1:]))
        return _stopped_code(_main(argv))
    except SystemExit as exc:  # a stop signal before the user's code started
        return _stopped_code(_exit_code(exc.code))
    except KeyboardInterrupt:
        return _stopped_code(1)


def _warm(argv: list[str]) -> int:
    """Warm mode (:mod:`.warm`): wait for one claim, then run it by the cold path."""
    from cerebras_appliance.worker import warm  # a pool's worker only

    claimed = warm.wait_for_claim(argv)
    if isinstance(claimed, int):
        return claimed
    return _main(claimed.argv, extra_startup=claimed.extra_startup)


def _main(argv: list[str], extra_startup: frozenset[str] = frozenset()) -> int:
    entrypoint, args = argv[0], argv[1:]
    problem = entrypoint_problem(entrypoint)
    if problem:
        log(f"entrypoint {problem}")
        return EXIT_USAGE

    path = os.environ.get(names.ENV_FILE_VAR)
    if not path:
        log(f"{names.ENV_FILE_VAR} is not set: it must name the env snapshot file")
        return EXIT_CONFIG
    try:
        snapshot = envfile.read(path)
    except envfile.EnvFileError as exc:
        log(f"{exc}; not running {entrypoint!r}")
        return EXIT_CONFIG

    pending = needs_reexec(snapshot.env, os.environ, extra_startup)
    if pending and os.environ.get(REEXEC_MARKER) != snapshot.env_hash:
        log(f"re-executing once so start-up variables take effect: {', '.join(pending)}")
        apply(snapshot.env)
        os.environ[REEXEC_MARKER] = snapshot.env_hash
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, "-m", "cerebras_appliance.worker", *argv])
    os.environ.pop(REEXEC_MARKER, None)

    apply(snapshot.env)
    has_code = bool(os.environ.get(names.CODE_DIR_VAR))
    if has_code:
        # Only a job with code loads the bundle reader (its start is a headline figure).
        from cerebras_appliance.worker import code

        prepared = code.prepare()
        if isinstance(prepared, int):
            return prepared
    ready = os.environ.get(names.READY_FILE_VAR)
    if ready:
        write_ready_marker(ready, snapshot.env_hash)
    log(f"applied {len(snapshot.env)} variables ({snapshot.env_hash}); running {entrypoint}")
    return run_user_code(entrypoint, args, keep_sys_path=has_code)
