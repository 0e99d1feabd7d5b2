"""The claim a warm worker accepts: one message, the same on every backend.

A warm worker (``python -m cerebras_appliance.worker --warm``) is started before any job
exists. A claim turns it into one job's worker: it names the worker it is meant for, the
user's entrypoint and arguments, the ``APPLIANCE_*`` plumbing variables the cold path gets
from its pod spec or its parent, and the env snapshot, either as the env file's content
(Kubernetes: the worker writes it to its private state directory) or as the path of a file
the claimer already wrote (local backend). The worker then runs exactly the cold path.

Kept free of heavy imports (json only): it is on the warm worker's claim path.
"""

from __future__ import annotations

import json
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
#: Upper bound of a claim's size (a snapshot holds at most 1000 variables; values are text).
MAX_CLAIM_BYTES = 4 * 1024 * 1024


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


def dumps(claim: Claim) -> bytes:
    return json.dumps(
        {
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
        },
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode("utf-8")


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
    )
