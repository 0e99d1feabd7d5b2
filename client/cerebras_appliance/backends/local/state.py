"""Where local workers keep their state, and what they start from.

Job (and pool) directories hold the env file, readiness markers and logs. They live in a
per-user 0700 directory on a memory-backed file system when there is one (``/dev/shm``), else
in the temp directory: :func:`state_root`. Each records its owner (pid and process start
time); a directory whose owner is gone (a caller killed with SIGKILL never runs its clean-up)
is removed by the next local job or pool started by that user, so its values do not stay
behind. Local workers start from :func:`base_environment`, never from the caller's
environment, so a variable set only through ``os.environ`` is invisible to them, exactly as
on a cluster.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

#: The only variables a local worker inherits from the caller (when the caller has them):
#: what a process needs to run at all. Everything else reaches it through the snapshot.
BASE_ENV_KEYS: tuple[str, ...] = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TMPDIR",
    "SYSTEMROOT",
)


#: Memory-backed file systems tried first for job directories (values never reach a disk).
MEMORY_DIRS: tuple[str, ...] = ("/dev/shm",)


OWNER_FILE = "owner"


#: A job directory without an owner file is being created: left alone this long.
_UNOWNED_GRACE_SECONDS = 60.0


def process_start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot ("" when unknown): with the pid,
    it names one process, even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else ""


def _alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process now: not ours, but do not guess
    return not start or process_start_time(pid) in ("", start)


def _private_dir(path: Path) -> bool:
    """``path`` is a real directory of ours that nobody else may enter (creating it)."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    try:
        st = path.lstat()
    except OSError:
        return False
    return (
        not path.is_symlink()
        and path.is_dir()
        and st.st_uid == os.getuid()
        and st.st_mode & 0o077 == 0
    )


def state_root() -> Path | None:
    """The per-user directory of local job directories: ``appliance-<uid>`` in the first of
    :data:`MEMORY_DIRS` that is usable, else in the temp directory. None when neither is safe
    (then each job gets a private temp directory, and nothing is swept)."""
    bases = [Path(d) for d in MEMORY_DIRS if os.path.isdir(d) and os.access(d, os.W_OK | os.X_OK)]
    bases.append(Path(tempfile.gettempdir()))
    for base in bases:
        root = base / f"appliance-{os.getuid()}"
        try:
            if _private_dir(root):
                return root
        except OSError:
            continue
    return None


def sweep_stale(root: Path, *, now: float | None = None) -> list[Path]:
    """Remove the job directories in ``root`` whose owner process is gone; return them."""
    removed: list[Path] = []
    now = time.time() if now is None else now
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False):
            continue
        path = Path(entry.path)
        try:
            pid_text, _, start = (path / OWNER_FILE).read_text().partition(" ")
            stale = not _alive(int(pid_text), start.strip())
        except (OSError, ValueError):
            # No owner file yet (another process is creating the job), or an unreadable or
            # garbled one: stale only once it is older than the grace period.
            try:
                age = now - entry.stat(follow_symlinks=False).st_mtime
            except OSError:
                continue
            stale = age > _UNOWNED_GRACE_SECONDS
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def private_dir_for(name: str) -> Path:
    """A new private directory for one job (or pool), owned by this process (stale ones
    swept)."""
    root = state_root()
    if root is None:
        return Path(tempfile.mkdtemp(prefix=f"appliance-{name}-"))
    sweep_stale(root)
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))
    # Written whole or not at all: a sweep in another process never reads half an owner.
    partial = path / f".{OWNER_FILE}.partial"
    partial.write_text(f"{os.getpid()} {process_start_time(os.getpid())}\n")
    os.replace(partial, path / OWNER_FILE)
    return path


def base_environment(source: Mapping[str, str]) -> dict[str, str]:
    """The minimal environment a local worker starts from."""
    env = {key: source[key] for key in BASE_ENV_KEYS if key in source}
    env.setdefault("PATH", os.defpath)
    env["PYTHONUNBUFFERED"] = "1"  # logs appear as they are written
    return env
