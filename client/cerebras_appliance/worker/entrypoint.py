"""The input-worker entrypoint: ``python -m cerebras_appliance.worker ENTRYPOINT [ARGS...]``.

1. Read the env snapshot from the file named by ``APPLIANCE_ENV_FILE``.
2. If the snapshot holds start-up variables (``PYTHONPATH``, ``LD_PRELOAD``, thread counts,
   ``MALLOC_*``... see :mod:`cerebras_appliance.contract.envfile`) that the running interpreter did
   not start with, re-execute once with them set, so they take effect.
3. Patch :data:`os.environ` (so ``os.getenv``, C ``getenv`` and child processes see the values).
4. Write the snapshot's hash to the file named by ``APPLIANCE_READY_FILE`` (if set): the
   readiness marker, meaning "env applied".
5. Run the user's code:

   * ``package.module:function`` — import the module and call ``function(*ARGS)``; a returned
     int is the exit code (like console scripts). ``sys.argv`` is ``[ENTRYPOINT, *ARGS]`` too.
   * ``path/to/script.py`` — run it as ``__main__`` with ``sys.argv == [path, *ARGS]`` and
     the script's folder first on ``sys.path``, as ``python path/to/script.py`` would.

Exit codes: the user code's own (0 on success, 1 with the traceback on stderr when it
raises); 2 for a usage error; 78 when the env snapshot file is missing or malformed (the user
code does not run); 128 + N when the worker was stopped by signal N (143 for SIGTERM, 130 for
SIGINT), whatever the user code returned after it.

Warm mode: ``python -m cerebras_appliance.worker --warm``. The worker of a pool, started
before any job exists: it imports the modules named in ``APPLIANCE_WARM_IMPORTS``
(comma-separated), writes the file named by ``APPLIANCE_IDLE_FILE`` (idle and ready to be
claimed), and waits for exactly one claim (:mod:`cerebras_appliance.contract.claim`) on its channel:
the pipe ``APPLIANCE_CLAIM_FD`` (local backend: only the pool's owner holds its other end) or
a mutually authenticated TLS listener (Kubernetes, :mod:`cerebras_appliance.contract.channel`). The
channel is closed once a claim arrives (a second or replayed claim finds nothing to talk to);
the claim's plumbing variables are set, its snapshot written to a private file, and from there
the worker runs steps 1-5 above unchanged. ``APPLIANCE_WARM_STARTUP_VARS`` (comma-separated)
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

import contextlib
import importlib
import os
import runpy
import signal
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType

from cerebras_appliance.contract import claim as claims
from cerebras_appliance.contract import envfile, names
from cerebras_appliance.contract.entrypoints import entrypoint_problem, is_script_entrypoint
from cerebras_appliance.contract.names import (
    CLAIM_FD_VAR,
    IDLE_FILE_VAR,
    POOL_WORKER_VAR,
    REEXEC_MARKER,
    STATE_DIR_VAR,
    WARM_FLAG,
    WARM_IMPORTS_VAR,
    WARM_STARTUP_VARS_VAR,
)

EXIT_USAGE = 2
EXIT_CONFIG = 78  # EX_CONFIG from sysexits.h
#: Warm-mode plumbing removed before the user's code runs.
WARM_VARS = (
    WARM_IMPORTS_VAR,
    WARM_STARTUP_VARS_VAR,
    IDLE_FILE_VAR,
    CLAIM_FD_VAR,
    STATE_DIR_VAR,
    POOL_WORKER_VAR,
    names.CLAIM_TLS_DIR_VAR,
    names.CLAIM_PORT_VAR,
    names.CLAIM_HOST_VAR,
)
PREFIX = "appliance worker:"


def _log(message: str) -> None:
    print(f"{PREFIX} {message}", file=sys.stderr, flush=True)


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
#: Set by our handlers: the signal that asked the worker to stop (0: none).
_stop_signal = 0


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    global _stop_signal  # noqa: PLW0603 - one worker per process
    _stop_signal = signum
    raise SystemExit(128 + signum)


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    global _stop_signal  # noqa: PLW0603
    _stop_signal = signum
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


def write_ready_marker(path: str, env_hash: str) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(f"{env_hash}\n", encoding="utf-8")
    partial.replace(target)  # atomic: a probe never reads half a marker


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


def run_user_code(entrypoint: str, args: list[str]) -> int:
    """Run the entrypoint; return its exit code (tracebacks go to stderr)."""
    try:
        if is_script_entrypoint(entrypoint):
            script = Path(entrypoint)
            sys.argv = [entrypoint, *args]
            sys.path[0:1] = [str(script.resolve().parent)]
            runpy.run_path(entrypoint, run_name="__main__")
            return 0
        module_name, _, attr_path = entrypoint.partition(":")
        sys.argv = [entrypoint, *args]
        target: object = importlib.import_module(module_name)
        for attr in attr_path.split("."):
            target = getattr(target, attr)
        if not callable(target):
            _log(f"{entrypoint!r} is not callable")
            return EXIT_USAGE
        return _exit_code(target(*args))
    except SystemExit as exc:
        return _exit_code(exc.code)
    except BaseException:
        if not _stop_signal:
            traceback.print_exc()
            sys.stderr.flush()
        return 1


def _stopped_code(code: int) -> int:
    """A worker asked to stop exits 128 + signal: it did not finish its work."""
    if _stop_signal:
        _log(f"stopped by {signal.Signals(_stop_signal).name}")
        return 128 + _stop_signal
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


def _names(variable: str) -> list[str]:
    return [n.strip() for n in os.environ.get(variable, "").split(",") if n.strip()]


def _read_claim_fd(fd: int) -> bytes:
    """The claim written to the pipe: everything up to its end (the claimer closes it)."""
    chunks: list[bytes] = []
    size = 0
    with contextlib.suppress(OSError):
        while size <= claims.MAX_CLAIM_BYTES:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    with contextlib.suppress(OSError):
        os.close(fd)
    return b"".join(chunks)


def _warm(argv: list[str]) -> int:  # noqa: PLR0912
    """Warm mode: preload, become idle, accept one claim, then run the cold path."""
    if argv:
        _log(f"{WARM_FLAG} takes no other arguments (the claim names the entrypoint)")
        return EXIT_USAGE
    # What the claim path imports later (snapshot file, HMAC check): loaded while idle.
    for module in ("base64", "hashlib", "hmac", "tempfile", "json"):
        importlib.import_module(module)
    for module in _names(WARM_IMPORTS_VAR):
        try:
            importlib.import_module(module)
        except Exception as exc:  # any import failure makes the pool unusable
            _log(f"{WARM_IMPORTS_VAR}: cannot import {module!r}: {type(exc).__name__}: {exc}")
            return EXIT_CONFIG
    idle = os.environ.get(IDLE_FILE_VAR, "")
    me = os.environ.get(POOL_WORKER_VAR, "")
    fd_text = os.environ.get(CLAIM_FD_VAR, "")
    reply: Callable[[Mapping[str, object]], None] | None
    if fd_text:
        if idle:
            write_ready_marker(idle, "idle")
        data = _read_claim_fd(int(fd_text))
        reply = None
    else:
        from cerebras_appliance.contract import channel

        try:
            server = channel.ClaimServer.from_environ(os.environ)
        except channel.ChannelError as exc:
            _log(f"{exc}")
            return EXIT_CONFIG
        if idle:
            write_ready_marker(idle, "idle")
        try:
            data, reply = server.accept_one()
        except OSError as exc:
            _log(f"{exc}")
            return EXIT_CONFIG
    if idle:
        with contextlib.suppress(OSError):
            os.unlink(idle)
    if not data:
        _log("the claim channel closed without a claim; exiting")
        return 0
    try:
        claim = claims.parse(data, expected_worker=me)
        env_hash = _take_claim(claim)
    except (claims.ClaimError, envfile.EnvFileError, OSError) as exc:
        _log(f"claim refused: {exc}")
        if reply is not None:
            reply({"accepted": False, "reason": str(exc)})
        return EXIT_CONFIG
    if reply is not None:
        # The answer names the job and repeats the claim's nonce: it confirms this claim only.
        reply({"accepted": True, "envHash": env_hash, "job": claim.job, "nonce": claim.nonce})
    extra = frozenset(_names(WARM_STARTUP_VARS_VAR))
    for name in WARM_VARS:
        os.environ.pop(name, None)
    return _main([claim.entrypoint, *claim.args], extra_startup=extra)


def _take_claim(claim: claims.Claim) -> str:
    """Set the claim's plumbing, write its snapshot; return the snapshot's (checked) hash."""
    if claim.log_file:
        fd = os.open(claim.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    if claim.cwd:
        os.chdir(claim.cwd)
        if sys.path and sys.path[0] != claim.cwd:
            sys.path[0] = claim.cwd  # as `python -m` started there would have it
    for name, value in claim.plumbing:
        os.environ[name] = value
    if claim.snapshot:
        snapshot = envfile.parse(claim.snapshot, "in the claim")
        import tempfile

        directory = os.environ.get(STATE_DIR_VAR) or None
        fd, path = tempfile.mkstemp(prefix="env-", suffix=".json", dir=directory)  # 0600
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(claim.snapshot)
        os.environ[names.ENV_FILE_VAR] = path
    else:
        snapshot = envfile.read(os.environ[names.ENV_FILE_VAR])
    if not envfile.verify(snapshot):
        raise claims.ClaimError("the snapshot's envHash is not its values' HMAC under its key")
    return snapshot.env_hash


def _main(argv: list[str], extra_startup: frozenset[str] = frozenset()) -> int:
    entrypoint, args = argv[0], argv[1:]
    problem = entrypoint_problem(entrypoint)
    if problem:
        _log(f"entrypoint {problem}")
        return EXIT_USAGE

    path = os.environ.get(names.ENV_FILE_VAR)
    if not path:
        _log(f"{names.ENV_FILE_VAR} is not set: it must name the env snapshot file")
        return EXIT_CONFIG
    try:
        snapshot = envfile.read(path)
    except envfile.EnvFileError as exc:
        _log(f"{exc}; not running {entrypoint!r}")
        return EXIT_CONFIG

    pending = needs_reexec(snapshot.env, os.environ, extra_startup)
    if pending and os.environ.get(REEXEC_MARKER) != snapshot.env_hash:
        _log(f"re-executing once so start-up variables take effect: {', '.join(pending)}")
        apply(snapshot.env)
        os.environ[REEXEC_MARKER] = snapshot.env_hash
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, "-m", "cerebras_appliance.worker", *argv])
    os.environ.pop(REEXEC_MARKER, None)

    apply(snapshot.env)
    ready = os.environ.get(names.READY_FILE_VAR)
    if ready:
        write_ready_marker(ready, snapshot.env_hash)
    _log(f"applied {len(snapshot.env)} variables ({snapshot.env_hash}); running {entrypoint}")
    return run_user_code(entrypoint, args)
