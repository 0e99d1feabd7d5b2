"""The env snapshot file a worker reads: its format, and the start-up variables.

The same file is written by the local backend (a 0600 file in the job's directory) and by the
operator (a key of the job's own Secret, mounted read-only). The worker finds it through
``APPLIANCE_ENV_FILE``; it confirms it applied the env by writing the snapshot's hash to the
file named by ``APPLIANCE_READY_FILE``.

The hash is published (pod annotation, ``status.envHash``, the marker), so it must not let
anyone test guesses of a value: it is an HMAC-SHA256 of the resolved names and values under a
random 256-bit key made for that one snapshot and kept only in the file itself (``envKey``),
i.e. only where the values already are. Without the key the hash says nothing about the
values; with the file, anyone can check it (:func:`verify`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from cerebras_appliance.contract.names import (
    API_VERSION,
)

SNAPSHOT_KIND = "EnvSnapshot"

#: Variables read only when the interpreter or the dynamic loader starts, or when a native
#: runtime initialises. Setting them in a running process is too late, so the worker
#: re-executes itself once with them set. Exact names, then prefixes.
STARTUP_VARIABLES: frozenset[str] = frozenset(
    {"LD_PRELOAD", "LD_LIBRARY_PATH", "GLIBC_TUNABLES", "TZ"}
)
STARTUP_PREFIXES: tuple[str, ...] = (
    "PYTHON",  # PYTHONPATH, PYTHONHASHSEED, PYTHONWARNINGS, PYTHONUTF8, PYTHONMALLOC, ...
    "LD_",  # dynamic loader: LD_BIND_NOW, LD_DEBUG, ...
    "MALLOC_",  # glibc malloc tuning (MALLOC_ARENA_MAX, ...)
    "OMP_",  # OpenMP runtimes (OMP_NUM_THREADS, ...)
    "MKL_",  # Intel MKL (MKL_NUM_THREADS, ...)
    "OPENBLAS_",  # OpenBLAS (OPENBLAS_NUM_THREADS, ...)
)

_NAME = re.compile(r"^[^=\x00]+$")
#: Prefix of every snapshot hash this version writes.
HASH_PREFIX = "hmac-sha256:"
KEY_BYTES = 32


class EnvFileError(RuntimeError):
    """The env snapshot file is missing or malformed. The message names the file."""


class Snapshot(NamedTuple):
    """A resolved snapshot. (A NamedTuple: the worker imports this module, and dataclasses
    would add ~6 ms to every worker start.)"""

    env: tuple[tuple[str, str], ...]
    env_hash: str
    #: The snapshot's HMAC key ("" in a file of an older version, which had none).
    env_key: str = ""


def is_startup_variable(name: str) -> bool:
    return name in STARTUP_VARIABLES or name.startswith(STARTUP_PREFIXES)


def startup_variables(names: Iterable[str]) -> list[str]:
    return [name for name in names if is_startup_variable(name)]


def new_key() -> str:
    """A fresh random HMAC key for one snapshot (URL-safe base64 of 32 bytes)."""
    import base64  # lazy: none of this is on the worker's start path

    return base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def snapshot_hash(env: Sequence[tuple[str, str]], key: str) -> str:
    """``hmac-sha256:<hex>`` of the names, order and values under ``key``.

    Publishable: without ``key`` (stored only with the values) it cannot be used to test a
    guess of a value. The message is the canonical JSON list of ``[name, value]`` pairs.
    """
    import base64
    import hashlib
    import hmac

    message = json.dumps(
        [[name, value] for name, value in env], ensure_ascii=False, separators=(",", ":")
    ).encode("utf-8")
    digest = hmac.new(base64.urlsafe_b64decode(key), message, hashlib.sha256).hexdigest()
    return HASH_PREFIX + digest


def seal(env: Sequence[tuple[str, str]]) -> tuple[str, str]:
    """A new key and the hash of ``env`` under it: ``(key, hash)``."""
    key = new_key()
    return key, snapshot_hash(env, key)


def verify(snapshot: Snapshot) -> bool:
    """Whether the snapshot's hash is its values' HMAC under its own key."""
    import hmac

    if not snapshot.env_key:
        return False
    expected = snapshot_hash(snapshot.env, snapshot.env_key)
    return hmac.compare_digest(expected, snapshot.env_hash)


def dumps(env: Sequence[tuple[str, str]], env_hash: str, env_key: str = "") -> str:
    """Serialise a resolved snapshot (values and key included): the env file's content."""
    document: dict[str, object] = {
        "apiVersion": API_VERSION,
        "kind": SNAPSHOT_KIND,
        "envHash": env_hash,
    }
    if env_key:
        document["envKey"] = env_key
    document["env"] = [{"name": name, "value": value} for name, value in env]
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def write(path: Path, env: Sequence[tuple[str, str]], env_hash: str, env_key: str = "") -> None:
    """Write the file readable by its owner only (it holds values and the key)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(dumps(env, env_hash, env_key))


def parse(text: str, source: str) -> Snapshot:
    """Parse the env file's content; ``source`` names the file in every error."""

    def fail(problem: str) -> EnvFileError:
        return EnvFileError(f"env snapshot file {source}: {problem}")

    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise fail(f"not valid JSON ({exc})") from None
    if not isinstance(document, dict) or document.get("kind") != SNAPSHOT_KIND:
        raise fail(f"not an {SNAPSHOT_KIND} document (expected a JSON object with kind)")
    env_hash = document.get("envHash")
    if not isinstance(env_hash, str):
        raise fail("'envHash' is missing or not a string")
    env_key = document.get("envKey", "")
    if not isinstance(env_key, str):
        raise fail("'envKey' is not a string")
    items = document.get("env")
    if not isinstance(items, list):
        raise fail("'env' is missing or not a list")
    env: list[tuple[str, str]] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise fail(f"env[{index}] is not an object with 'name' and 'value'")
        name, value = item.get("name"), item.get("value")
        if not isinstance(name, str) or not _NAME.match(name):
            raise fail(f"env[{index}].name {name!r} is not a valid variable name")
        if not isinstance(value, str) or "\x00" in value:
            raise fail(f"env[{index}].value of {name!r} is missing, not a string or has NUL")
        env.append((name, value))
    return Snapshot(env=tuple(env), env_hash=env_hash, env_key=env_key)


def read(path: str | os.PathLike[str]) -> Snapshot:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EnvFileError(f"cannot read env snapshot file {os.fspath(path)}: {exc}") from None
    return parse(text, os.fspath(path))
