"""Warm mode (``python -m cerebras_appliance.worker --warm``): preload, become idle, accept
exactly one claim, take it (its plumbing variables and its snapshot), and hand the cold path
what to run (``entrypoint``'s docstring describes the mode).

A claim may bring the job's code (issue 23): naming the chunk files the claimer wrote
(local backend), or as the bundle's bytes (Kubernetes), which :func:`take_claim` writes into
the state directory; the cold path unpacks it either way (:mod:`.code`).

The claim arrives on the pipe ``APPLIANCE_CLAIM_FD`` (local backend) or the TLS listener of
:mod:`cerebras_appliance.contract.channel` (Kubernetes), loaded only here: a cold worker never
pays for it.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import shutil
import sys
from collections.abc import Callable, Mapping
from typing import NamedTuple

from cerebras_appliance.contract import claim as claims
from cerebras_appliance.contract import envfile, names
from cerebras_appliance.contract.names import (
    CLAIM_FD_VAR,
    IDLE_FILE_VAR,
    POOL_WORKER_VAR,
    STATE_DIR_VAR,
    WARM_FLAG,
    WARM_IMPORTS_VAR,
    WARM_STARTUP_VARS_VAR,
)
from cerebras_appliance.worker.report import EXIT_CONFIG, EXIT_USAGE, log, write_ready_marker

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

Reply = Callable[[Mapping[str, object]], None]


class Claimed:
    """What a taken claim runs: ``argv`` (its entrypoint and arguments) by the cold path,
    with ``extra_startup`` counted as start-up variables (the pool's preloaded modules read
    them at import)."""

    def __init__(self, argv: list[str], extra_startup: frozenset[str]) -> None:
        self.argv = argv
        self.extra_startup = extra_startup


class _Received(NamedTuple):
    data: bytes
    reply: Reply | None  # None on the pipe: nobody to answer


def wait_for_claim(argv: list[str]) -> int | Claimed:
    """Preload, become idle and take one claim: what to run, or the exit code to exit with."""
    if argv:
        log(f"{WARM_FLAG} takes no other arguments (the claim names the entrypoint)")
        return EXIT_USAGE
    if not _preload():
        return EXIT_CONFIG
    received = _receive()
    if isinstance(received, int):
        return received
    data, reply = received
    if not data:
        log("the claim channel closed without a claim; exiting")
        return 0
    try:
        claim = claims.parse(data, expected_worker=os.environ.get(POOL_WORKER_VAR, ""))
        env_hash = take_claim(claim)
    except (claims.ClaimError, envfile.EnvFileError, OSError) as exc:
        log(f"claim refused: {exc}")
        if reply is not None:
            reply({"accepted": False, "reason": str(exc)})
        return EXIT_CONFIG
    if reply is not None:
        # The answer names the job and repeats the claim's nonce: it confirms this claim only.
        reply({"accepted": True, "envHash": env_hash, "job": claim.job, "nonce": claim.nonce})
    extra = frozenset(_names(WARM_STARTUP_VARS_VAR))
    # A claim with code keeps the state directory: its bundle is unpacked there, in memory
    # (worker.code), also after a re-execution. A cold worker with code has it too.
    keep = {STATE_DIR_VAR} if os.environ.get(names.CODE_DIR_VAR) else set()
    for name in WARM_VARS:
        if name not in keep:
            os.environ.pop(name, None)
    return Claimed([claim.entrypoint, *claim.args], extra)


def _names(variable: str) -> list[str]:
    return [n.strip() for n in os.environ.get(variable, "").split(",") if n.strip()]


def _preload() -> bool:
    """Import what the claim path needs and the pool's modules; False if one cannot be."""
    # What the claim path imports later (snapshot file, HMAC check): loaded while idle.
    for module in ("base64", "hashlib", "hmac", "tempfile", "json"):
        importlib.import_module(module)
    # What a job with code needs (the bundle reader, pip's runner; cloudpickle for a
    # function, when the image has it): idle time pays for it, not the job's start.
    importlib.import_module("cerebras_appliance.worker.code")
    with contextlib.suppress(ImportError):
        importlib.import_module("cloudpickle")
    for module in _names(WARM_IMPORTS_VAR):
        try:
            importlib.import_module(module)
        except Exception as exc:  # any import failure makes the pool unusable
            log(f"{WARM_IMPORTS_VAR}: cannot import {module!r}: {type(exc).__name__}: {exc}")
            return False
    return True


def _receive() -> _Received | int:
    """Say "idle" and wait for the claim's bytes on this worker's channel (an exit code when
    the channel cannot be opened or fails)."""
    idle = os.environ.get(IDLE_FILE_VAR, "")
    fd_text = os.environ.get(CLAIM_FD_VAR, "")
    if fd_text:
        if idle:
            write_ready_marker(idle, "idle")
        received = _Received(_read_claim_fd(int(fd_text)), None)
    else:
        from cerebras_appliance.contract import channel  # noqa: PLC0415 - Kubernetes only

        try:
            server = channel.ClaimServer.from_environ(os.environ)
        except channel.ChannelError as exc:
            log(f"{exc}")
            return EXIT_CONFIG
        if idle:
            write_ready_marker(idle, "idle")
        try:
            received = _Received(*server.accept_one())
        except OSError as exc:
            log(f"{exc}")
            return EXIT_CONFIG
    if idle:
        with contextlib.suppress(OSError):
            os.unlink(idle)
    return received


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


def take_claim(claim: claims.Claim) -> str:
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
        import tempfile  # noqa: PLC0415 - preloaded while idle, not by a cold worker

        directory = os.environ.get(STATE_DIR_VAR) or None
        fd, path = tempfile.mkstemp(prefix="env-", suffix=".json", dir=directory)  # 0600
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(claim.snapshot)
        os.environ[names.ENV_FILE_VAR] = path
    else:
        snapshot = envfile.read(os.environ[names.ENV_FILE_VAR])
    if not envfile.verify(snapshot):
        raise claims.ClaimError("the snapshot's envHash is not its values' HMAC under its key")
    if claim.code:
        # The bundle came in the claim (Kubernetes): one chunk file in a new private directory
        # of the state directory (memory in a pod), which the cold path then reads, checks
        # against APPLIANCE_CODE_SHA256 and unpacks (worker.code); removed at exit.
        import tempfile  # noqa: PLC0415 - preloaded while idle, not by a cold worker

        parent = os.environ.get(STATE_DIR_VAR) or tempfile.gettempdir()
        directory = claims.write_code(claim.code, parent)
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        os.environ[names.CODE_DIR_VAR] = directory
    return snapshot.env_hash
