"""The local backend: a job's input workers as subprocesses of this machine.

Each worker runs the very entrypoint a pod runs (``python -m cerebras_appliance.worker``) with
the same env snapshot file. Workers start from a minimal base environment (see
:data:`BASE_ENV_KEYS`), never from the caller's, so a variable set only through ``os.environ``
is invisible to them, exactly as on a cluster.

Job directories (the env file, readiness markers, logs) live in a per-user 0700 directory on
a memory-backed file system when there is one (``/dev/shm``), else in the temp directory:
:func:`state_root`. Each records its owner (pid and process start time); a directory whose
owner is gone (a caller killed with SIGKILL never runs its clean-up) is removed by the next
local job started by that user, so its values do not stay behind.
"""

from __future__ import annotations

import atexit
import codecs
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from cerebras_appliance import claim as claims
from cerebras_appliance import envfile
from cerebras_appliance.api import ExecuteJob, ExecuteJobStatus, worker_name
from cerebras_appliance.handle import AttemptRef, JobDeletedError, JobHandle, _split_lines
from cerebras_appliance.lifecycle import Attempt, decide

if TYPE_CHECKING:
    from cerebras_appliance.pool import LocalPool, PoolWorker

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
#: Set for every local worker (as the operator sets them for a pod).
WORKER_VARS = ("APPLIANCE_JOB_NAME", "APPLIANCE_WORKER_NAME", "APPLIANCE_WORKER_INDEX")

_TERMINATE_GRACE_SECONDS = 5.0
_POLL_SECONDS = 0.02
_FOLLOW_POLL_SECONDS = 0.05
#: Memory-backed file systems tried first for job directories (values never reach a disk).
MEMORY_DIRS: tuple[str, ...] = ("/dev/shm",)
OWNER_FILE = "owner"
#: A job directory without an owner file is being created: left alone this long.
_UNOWNED_GRACE_SECONDS = 60.0


def _start_time(pid: int) -> str:
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
    return not start or _start_time(pid) in ("", start)


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
    partial.write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
    os.replace(partial, path / OWNER_FILE)
    return path


def base_environment(source: Mapping[str, str]) -> dict[str, str]:
    """The minimal environment a local worker starts from."""
    env = {key: source[key] for key in BASE_ENV_KEYS if key in source}
    env.setdefault("PATH", os.defpath)
    env["PYTHONUNBUFFERED"] = "1"  # logs appear as they are written
    return env


@dataclass
class _Worker:
    """One attempt of one worker: a subprocess, its readiness marker and its log."""

    index: int
    attempt: int
    name: str
    ready_file: Path
    log_file: Path
    proc: subprocess.Popen[bytes] | None = None
    log_handle: TextIO | None = None
    exit_code: int | None = None
    stop_sent: float | None = None  # monotonic time of the SIGTERM we sent
    counted: bool = False
    #: Claimed from a warm pool (its process started before the job).
    warm: bool = False

    def observe(self) -> Attempt:
        """Poll the process; the attempt as :func:`lifecycle.decide` sees it."""
        if self.proc is not None and self.exit_code is None:
            code = self.proc.poll()
            if code is not None:
                self.exit_code = code if code >= 0 else 128 - code
                LocalJob._close_log(self)
        stopping = self.stop_sent is not None
        if self.exit_code is None:
            return Attempt(
                self.index,
                self.attempt,
                self.name,
                "Running",
                ready=self.ready_file.exists(),
                stopping=stopping,
                counted=self.counted,
            )
        return Attempt(
            self.index,
            self.attempt,
            self.name,
            "Succeeded" if self.exit_code == 0 else "Failed",
            exit_code=self.exit_code,
            reason="Completed" if self.exit_code == 0 else "Error",
            stopping=stopping,
            counted=self.counted,
        )


class LocalJob(JobHandle):
    """A handle on a job running on the local backend."""

    def __init__(
        self,
        job: ExecuteJob,
        env: Sequence[tuple[str, str]],
        *,
        workdir: str | os.PathLike[str] | None = None,
        python: str = sys.executable,
        caller_environ: Mapping[str, str] | None = None,
        pool: LocalPool | None = None,
    ) -> None:
        if job.metadata.name is None:
            raise ValueError("metadata.name: a local job needs a name")
        self.name: str = job.metadata.name
        self.job = job
        self.manifest: dict[str, Any] = job.to_manifest()
        self._env_key, self.env_hash = envfile.seal(env)
        self._python = python
        self._pool = pool
        self._workdir = os.fspath(workdir) if workdir is not None else os.getcwd()
        self._base_env = base_environment(os.environ if caller_environ is None else caller_environ)
        self._lock = threading.RLock()
        self._dir = private_dir_for(self.name)
        self._env_file = self._dir / "env.json"
        envfile.write(self._env_file, list(env), self.env_hash, self._env_key)
        self._workers: list[_Worker] = []
        self._status: ExecuteJobStatus | None = None
        self._deleted = False
        self._poll_interval = 0.05
        _live_jobs.add(self)
        self._reconcile()

    # -- public handle (wait, logs, streaming, Ctrl-C: cerebras_appliance.handle) -----------

    def status(self) -> ExecuteJobStatus:
        """Observe the workers now and return the job's status."""
        return self._reconcile()

    def suspend(self) -> ExecuteJobStatus:
        """``spec.suspend = true``: stop the workers (not a failure), keep the job."""
        return self._update(suspend=True)

    def resume(self) -> ExecuteJobStatus:
        """``spec.suspend = false``: start the workers that have not succeeded."""
        return self._update(suspend=False)

    def scale(self, replicas: int) -> ExecuteJobStatus:
        """Change ``spec.replicas``: workers beyond it stop, missing ones start."""
        return self._update(replicas=replicas)

    def delete(self) -> None:
        """Stop every worker and remove the job's files (the env snapshot and logs included)."""
        with self._lock:
            if self._deleted:
                return
            self._deleted = True
            self._stop_and_wait(self._workers)
            shutil.rmtree(self._dir, ignore_errors=True)
            _live_jobs.discard(self)

    def __repr__(self) -> str:
        phase = self._status.phase if self._status else "Pending"
        return f"<LocalJob {self.name} replicas={self.job.spec.replicas} phase={phase}>"

    # -- the handle's primitives ---------------------------------------------------------

    def _refresh(self) -> ExecuteJobStatus:
        status = self._reconcile()
        if self._deleted and not status.finished:
            raise JobDeletedError(f"job {self.name} was deleted", status)
        return status

    @contextlib.contextmanager
    def _observer(self) -> Iterator[Callable[[float], ExecuteJobStatus]]:
        def observe(seconds: float) -> ExecuteJobStatus:
            deadline = time.monotonic() + seconds
            while True:
                status = self._refresh()
                remaining = deadline - time.monotonic()
                if status.finished or remaining <= 0:
                    return status
                self._block_on_a_worker(min(_POLL_SECONDS, remaining))

        yield observe

    def _attempts(self) -> list[AttemptRef]:
        with self._lock:
            return [AttemptRef(w.index, w.attempt, w.name) for w in self._workers]

    def _worker(self, name: str) -> _Worker:
        with self._lock:
            return next(w for w in self._workers if w.name == name)

    def _read_log(self, name: str, tail: int | None) -> str:
        try:
            text = self._worker(name).log_file.read_text(encoding="utf-8", errors="replace")
        except (FileNotFoundError, StopIteration):
            return ""
        if tail is not None:
            lines = text.splitlines(keepends=True)
            text = "".join(lines[-tail:]) if tail > 0 else ""
        return text

    def _follow_attempt(
        self, ref: AttemptRef, stop: threading.Event, finished: threading.Event
    ) -> Iterator[str]:
        """Tail the attempt's log file until its process has exited and the file is read."""
        worker = self._worker(ref.name)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        rest = ""
        try:
            handle = worker.log_file.open("rb")
        except FileNotFoundError:
            return
        with handle:
            while not stop.is_set():
                # Whether it had exited *before* this read: then the read sees all it wrote.
                exited = worker.proc is None or worker.proc.poll() is not None
                data = handle.read(65536)
                if data:
                    lines, rest = _split_lines(rest, decoder.decode(data))
                    yield from lines
                    continue
                if exited:
                    break
                stop.wait(_FOLLOW_POLL_SECONDS)  # poll interval of a file tail
        rest += decoder.decode(b"", final=True)
        if rest and not stop.is_set():
            yield rest

    def _after_interrupt_delete(self) -> str:
        return ""

    def _reattach_hint(self) -> str:
        return (
            "local workers are stopped when this Python process exits; "
            "stop them now with job.delete()"
        )

    # -- reconcile: observe processes, then act on the shared decision -------------------

    def _update(self, **changes: Any) -> ExecuteJobStatus:
        with self._lock:
            spec = self.job.spec.model_validate(
                {**self.job.spec.model_dump(), **changes}
            )  # the same validation as a patched object
            self.job = self.job.model_copy(update={"spec": spec})
        return self._reconcile()

    def _reconcile(self) -> ExecuteJobStatus:
        with self._lock:
            if self._status is not None and (self._status.finished or self._deleted):
                return self._status
            decision = decide(
                self.job.spec,
                [w.observe() for w in self._workers],
                self._status,
                env_hash=self.env_hash,
                now=datetime.now(UTC),
                generation=1,
            )
            by_name = {w.name: w for w in self._workers}
            for attempt in decision.settled:
                by_name[attempt.name].counted = True
            self._status = decision.status
            if decision.status.finished:
                self._stop_and_wait(self._workers)  # a finished job releases its workers
                return decision.status
            for attempt in decision.stop:
                self._stop(by_name[attempt.name])
            creates = list(decision.create)
            warm = self._pool.take(len(creates)) if self._pool is not None and creates else []
            for position, (index, number) in enumerate(creates):
                self._start(index, number, warm[position] if position < len(warm) else None)
            self._escalate()
            return decision.status

    def _start(self, index: int, attempt: int, warm: PoolWorker | None = None) -> None:
        name = worker_name(self.name, index, attempt)
        worker = _Worker(
            index=index,
            attempt=attempt,
            name=name,
            ready_file=self._dir / f"{name}.ready",
            log_file=self._dir / f"{name}.log",
            warm=warm is not None,
        )
        plumbing = {
            envfile.ENV_FILE_VAR: str(self._env_file),
            envfile.READY_FILE_VAR: str(worker.ready_file),
            **dict(zip(WORKER_VARS, (self.name, name, str(index)), strict=True)),
        }
        spec = self.job.spec
        if warm is not None:
            # The same plumbing as a cold worker's environment, over the worker's own pipe.
            worker.log_file.touch(mode=0o600)
            warm.send(
                claims.Claim(
                    worker=warm.name,
                    entrypoint=spec.entrypoint,
                    args=tuple(spec.args),
                    plumbing=tuple(plumbing.items()),
                    log_file=str(worker.log_file),
                    cwd=self._workdir,
                )
            )
            worker.proc = warm.proc
            self._workers.append(worker)
            return
        env = dict(self._base_env)
        env.update(plumbing)
        worker.log_handle = worker.log_file.open("a", encoding="utf-8")
        worker.proc = subprocess.Popen(
            [self._python, "-m", "cerebras_appliance.worker", spec.entrypoint, *spec.args],
            env=env,
            cwd=self._workdir,
            stdin=subprocess.DEVNULL,
            stdout=worker.log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: a stop reaches its children too
        )
        self._workers.append(worker)

    @staticmethod
    def _stop(worker: _Worker) -> None:
        """SIGTERM to the worker's group, as the kubelet does to a deleted pod."""
        if worker.stop_sent is None and worker.proc is not None and worker.exit_code is None:
            worker.stop_sent = time.monotonic()
            _signal_group(worker.proc.pid, signal.SIGTERM)

    def _escalate(self) -> None:
        """SIGKILL for stopped workers still running after the grace period."""
        now = time.monotonic()
        for worker in self._workers:
            if (
                worker.stop_sent is not None
                and worker.exit_code is None
                and worker.proc is not None
                and now - worker.stop_sent >= _TERMINATE_GRACE_SECONDS
                and worker.proc.poll() is None
            ):
                _signal_group(worker.proc.pid, signal.SIGKILL)

    def _block_on_a_worker(self, seconds: float) -> None:
        """Wait (bounded) for any running worker to exit, so wait() does not spin."""
        with self._lock:
            procs = [w.proc for w in self._workers if w.proc is not None and w.exit_code is None]
        if not procs:
            time.sleep(seconds)  # nothing to wait on: poll interval, not synchronisation
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            procs[0].wait(timeout=seconds)

    def _stop_and_wait(self, workers: Sequence[_Worker]) -> None:
        running = [w for w in workers if w.proc is not None and w.exit_code is None]
        for worker in running:
            self._stop(worker)
        for worker in running:
            assert worker.proc is not None
            try:
                worker.proc.wait(timeout=_TERMINATE_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                _signal_group(worker.proc.pid, signal.SIGKILL)
                worker.proc.wait()
            worker.observe()

    @staticmethod
    def _close_log(worker: _Worker) -> None:
        if worker.log_handle is not None:
            worker.log_handle.close()
            worker.log_handle = None


def _signal_group(pid: int, signum: int) -> None:
    """Signal a worker and the processes it started (each worker leads its own group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signum)


#: Every job this process submitted and has not deleted, held strongly: a handle the caller
#: dropped (``app.submit(...)`` without keeping it) must still be stopped at exit, since its
#: workers are subprocesses that outlive a garbage-collected handle (a ``WeakSet`` lost them).
_live_jobs: set[LocalJob] = set()


def find_local_job(name: str) -> LocalJob | None:
    """The job of that name this process submitted and has not deleted."""
    return next((job for job in list(_live_jobs) if job.name == name), None)


@atexit.register
def _cleanup() -> None:
    """Jobs not deleted by their owner are stopped (and their env files removed) at exit."""
    for job in list(_live_jobs):
        job.delete()
