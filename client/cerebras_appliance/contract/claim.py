"""The claim a warm worker accepts: one message, the same on every backend.

A warm worker (``python -m cerebras_appliance.worker --warm``) is started before any job
exists. A claim turns it into one job's worker: it names the worker it is meant for, the
user's entrypoint and arguments, the ``APPLIANCE_*`` plumbing variables the cold path gets
from its pod spec or its parent, and the env snapshot, either as the env file's content
(Kubernetes: the worker writes it to its private state directory) or as the path of a file
the claimer already wrote (local backend). The worker then runs exactly the cold path.

A job's code (issue 23) travels the same two ways: as the bundle's bytes in the claim
(``code``, base64 in the JSON; Kubernetes: the operator read the job's ``<job>-code-<i>``
Secrets and checked their hash), with ``APPLIANCE_CODE_SHA256`` in the plumbing, which the
worker writes with :func:`write_code` into a new private directory it then names in
``APPLIANCE_CODE_DIR``; or as ``APPLIANCE_CODE_DIR`` and ``APPLIANCE_CODE_SHA256`` in the
plumbing, naming chunk files the claimer wrote (local backend). Either way the cold path
checks the hash before it unpacks anything.

Kept free of heavy imports (json, base64 and os only): it is on the warm worker's claim path.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from typing import NamedTuple

from cerebras_appliance.contract import names

CLAIM_KIND = "WorkerClaim"
#: The plumbing variables a claim may set (nothing else: the snapshot carries the job's own).
PLUMBING_VARS: frozenset[str] = frozenset(
    {
        names.ENV_FILE_VAR,
        names.READY_FILE_VAR,
        *names.WORKER_VARS,
        names.CODE_DIR_VAR,
        names.CODE_SHA256_VAR,
    }
)
#: Upper bound of a claim's size: 16 MiB. A snapshot is at most a 1 MiB Secret's env file,
#: at most 2 MiB once escaped again as a JSON string, which the 4 MiB of the limit before
#: code covered with room; a code bundle is at most 8 MiB (``bundle.MAX_BUNDLE_BYTES``, 16
#: chunks of 512 KiB), 11,184,812 bytes as base64: 4 MiB + 10.7 MiB, rounded up. The worker
#: reads one frame of at most this much (``channel.recv_frame``) and parses it in memory.
MAX_CLAIM_BYTES = 16 * 1024 * 1024


class ClaimError(ValueError):
    """A claim the worker refuses; the message says why (never a value)."""


class Claim(NamedTuple):
    worker: str
    entrypoint: str
    args: tuple[str, ...]
    plumbing: tuple[tuple[str, str], ...]
    #: The env file's content (written by the worker), or "" when ``APPLIANCE_ENV_FILE`` in
    #: ``plumbing`` names a file the claimer wrote.
    snapshot: str = ""
    #: Local backend: the file the worker's output goes to, and its working directory.
    log_file: str = ""
    cwd: str = ""
    #: Kubernetes: the uid of the job the claim is for, and a random value the operator
    #: made for this one delivery; the worker's answer repeats both, so an answer confirms
    #: only this claim of this job (never one someone else made).
    job: str = ""
    nonce: str = ""
    #: Kubernetes: the job's code bundle (``contract.bundle``), whose hash is
    #: ``APPLIANCE_CODE_SHA256`` in ``plumbing``; b"" without code, or when
    #: ``APPLIANCE_CODE_DIR`` in ``plumbing`` names chunk files the claimer wrote.
    code: bytes = b""


def dumps(claim: Claim) -> bytes:
    document: dict[str, object] = {
        "kind": CLAIM_KIND,
        "worker": claim.worker,
        "entrypoint": claim.entrypoint,
        "args": list(claim.args),
        "plumbing": dict(claim.plumbing),
        "snapshot": claim.snapshot,
        "logFile": claim.log_file,
        "cwd": claim.cwd,
        "job": claim.job,
        "nonce": claim.nonce,
    }
    if claim.code:
        document["code"] = base64.b64encode(claim.code).decode("ascii")
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _text(document: dict[str, object], key: str) -> str:
    value = document.get(key, "")
    if not isinstance(value, str) or "\x00" in value:
        raise ClaimError(f"claim field {key!r} is not a string")
    return value


def parse(data: bytes, *, expected_worker: str = "") -> Claim:
    """Validate a claim. ``expected_worker``: the receiving worker's own name; a claim for
    another worker is refused (a claim cannot be redirected to a worker it was not made for)."""
    if len(data) > MAX_CLAIM_BYTES:
        raise ClaimError(f"claim larger than {MAX_CLAIM_BYTES} bytes")
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ClaimError("claim is not a UTF-8 JSON document") from None
    if not isinstance(document, dict) or document.get("kind") != CLAIM_KIND:
        raise ClaimError(f"not a {CLAIM_KIND} document")
    worker = _text(document, "worker")
    if expected_worker and worker != expected_worker:
        raise ClaimError(f"claim is for worker {worker!r}, this is {expected_worker!r}")
    entrypoint = _text(document, "entrypoint")
    if not entrypoint:
        raise ClaimError("claim has no entrypoint")
    args = document.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ClaimError("claim field 'args' is not a list of strings")
    plumbing = document.get("plumbing", {})
    if not isinstance(plumbing, dict) or not all(
        isinstance(v, str) and "\x00" not in v for v in plumbing.values()
    ):
        raise ClaimError("claim field 'plumbing' is not an object of strings")
    unknown = sorted(set(plumbing) - PLUMBING_VARS)
    if unknown:
        raise ClaimError(f"claim sets variables it may not set: {', '.join(unknown)}")
    snapshot = _text(document, "snapshot")
    if not snapshot and not plumbing.get(names.ENV_FILE_VAR):
        raise ClaimError("claim has neither a snapshot nor APPLIANCE_ENV_FILE")
    code = _code(document, plumbing)
    return Claim(
        worker=worker,
        entrypoint=entrypoint,
        args=tuple(args),
        plumbing=tuple(sorted(plumbing.items())),
        snapshot=snapshot,
        log_file=_text(document, "logFile"),
        cwd=_text(document, "cwd"),
        job=_text(document, "job"),
        nonce=_text(document, "nonce"),
        code=code,
    )


def _code(document: dict[str, object], plumbing: dict[str, str]) -> bytes:
    """The claim's code bundle (b"" without), checked against its plumbing: bytes need the
    hash to check them by and no directory (the worker makes its own); a hash needs bytes or
    a directory of chunk files; a directory needs a hash."""
    text = _text(document, "code")
    try:
        code = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ClaimError("claim field 'code' is not base64") from None
    has_hash = bool(plumbing.get(names.CODE_SHA256_VAR))
    has_dir = bool(plumbing.get(names.CODE_DIR_VAR))
    if code and not has_hash:
        raise ClaimError(f"claim brings code without {names.CODE_SHA256_VAR} to check it by")
    if code and has_dir:
        raise ClaimError(f"claim brings code and names {names.CODE_DIR_VAR} too")
    if has_hash and not code and not has_dir:
        raise ClaimError(f"claim sets {names.CODE_SHA256_VAR} but brings no code")
    if has_dir and not has_hash:
        raise ClaimError(f"claim sets {names.CODE_DIR_VAR} without {names.CODE_SHA256_VAR}")
    return code


def write_code(code: bytes, parent: str) -> str:
    """Write a claim's code bundle as the one chunk file ``chunk-000`` (mode 0600) of a new
    directory (mode 0700, a random name) in ``parent`` (the worker's private state directory,
    memory-backed in a pod); return the directory, for ``APPLIANCE_CODE_DIR``. Creates, never
    opens, an existing name (no link followed, nothing overwritten)."""
    directory = os.path.join(parent, f"code-{os.urandom(8).hex()}")
    os.mkdir(directory, 0o700)
    path = os.path.join(directory, f"{names.CODE_CHUNK_PREFIX}000")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(code)
    return directory
