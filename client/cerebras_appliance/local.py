"""The local backend: a job's input workers as subprocesses of this machine.

Each worker runs the very entrypoint a pod runs (``python -m cerebras_appliance.worker``) with
the same env snapshot file. Workers start from a minimal base environment (see
:data:`BASE_ENV_KEYS`), never from the caller's, so a variable set only through ``os.environ``
is invisible to them, exactly as on a cluster.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from cerebras_appliance import envfile
from cerebras_appliance.api import ExecuteJob, ExecuteJobStatus, worker_name
from cerebras_appliance.status import Observation, WorkerState, compute_status

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


def base_environment(source: Mapping[str, str]) -> dict[str, str]:
    """The minimal environment a local worker starts from."""
    env = {key: source[key] for key in BASE_ENV_KEYS if key in source}
    env.setdefault("PATH", os.defpath)
    env["PYTHONUNBUFFERED"] = "1"  # logs appear as they are written
    return env


@dataclass
class _Slot:
    index: int
    name: str
    ready_file: Path
    log_file: Path
    proc: subprocess.Popen[bytes] | None = None
    log_handle: TextIO | None = None
    state: WorkerState | None = None


class LocalJob:
    """A handle on a job running on the local backend."""

    def __init__(
        self,
        job: ExecuteJob,
        env: Sequence[tuple[str, str]],
        *,
        workdir: str | os.PathLike[str] | None = None,
        python: str = sys.executable,
        caller_environ: Mapping[str, str] | None = None,
    ) -> None:
        if job.metadata.name is None:
            raise ValueError("metadata.name: a local job needs a name")
        self.name: str = job.metadata.name
        self.job = job
        self.manifest: dict[str, Any] = job.to_manifest()
        self.env_hash = job.env_hash
        self._python = python
        self._workdir = os.fspath(workdir) if workdir is not None else os.getcwd()
        self._base_env = base_environment(os.environ if caller_environ is None else caller_environ)
        self._lock = threading.RLock()
        self._dir = Path(tempfile.mkdtemp(prefix=f"appliance-{self.name}-"))
        self._env_file = self._dir / "env.json"
        envfile.write(self._env_file, list(env), self.env_hash)
        self._slots = [
            _Slot(
                index=i,
                name=worker_name(self.name, i),
                ready_file=self._dir / f"worker-{i}.ready",
                log_file=self._dir / f"worker-{i}.log",
            )
            for i in range(job.spec.replicas)
        ]
        self._failures: list[WorkerState] = []
        self._started = time.monotonic()
        self._status: ExecuteJobStatus | None = None
        self._deleted = False
        _live_jobs.add(self)
        self._reconcile()

    # -- public handle -------------------------------------------------------------------

    def status(self) -> ExecuteJobStatus:
        """Observe the workers now and return the job's status."""
        return self._reconcile()

    def wait(self, timeout: float | None = None) -> ExecuteJobStatus:
        """Block until the job finishes; return its final status (phase Succeeded/Failed).

        Raises TimeoutError when ``timeout`` seconds pass first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self._reconcile()
            if status.finished or self._deleted:
                return status
            if status.phase == "Suspended":
                raise RuntimeError(f"job {self.name} is suspended: it will not finish")
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"job {self.name} did not finish within {timeout}s "
                    f"(phase {status.phase}, {status.succeeded}/{status.replicas} succeeded)"
                )
            self._block_on_a_worker(_POLL_SECONDS)

    def logs(self) -> dict[str, str]:
        """Each worker's combined stdout and stderr so far, keyed by worker name."""
        with self._lock:
            result = {}
            for slot in self._slots:
                try:
                    result[slot.name] = slot.log_file.read_text(encoding="utf-8", errors="replace")
                except FileNotFoundError:
                    result[slot.name] = ""
            return result

    def delete(self) -> None:
        """Stop every worker and remove the job's files (the env snapshot included)."""
        with self._lock:
            if self._deleted:
                return
            self._deleted = True
            self._stop_all()
            shutil.rmtree(self._dir, ignore_errors=True)
            _live_jobs.discard(self)

    def __enter__(self) -> LocalJob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()

    def __repr__(self) -> str:
        phase = self._status.phase if self._status else "Pending"
        return f"<LocalJob {self.name} replicas={len(self._slots)} phase={phase}>"

    # -- reconcile: observe processes, replace failed ones, compute status ---------------

    def _reconcile(self) -> ExecuteJobStatus:
        with self._lock:
            if self._status is not None and (self._status.finished or self._deleted):
                return self._status
            spec = self.job.spec
            for slot in self._slots:
                self._observe(slot)
            deadline_exceeded = (
                spec.active_deadline_seconds is not None
                and time.monotonic() - self._started >= spec.active_deadline_seconds
            )
            may_replace = len(self._failures) <= spec.backoff_limit
            if not spec.suspend and not deadline_exceeded and may_replace:
                for slot in self._slots:
                    if slot.proc is None and (slot.state is None or slot.state.phase == "Failed"):
                        self._start(slot)
            if spec.suspend:
                self._stop_all()
            observation = Observation(
                workers=[s.state for s in self._slots if s.state is not None],
                failures=list(self._failures),
                deadline_exceeded=deadline_exceeded,
                generation=1,
            )
            status = compute_status(spec, observation, self._status, env_hash=self.env_hash)
            self._status = status
            if status.finished:
                self._stop_all()  # a finished job releases its workers
            return status

    def _observe(self, slot: _Slot) -> None:
        if slot.proc is None:
            return
        code = slot.proc.poll()
        if code is None:
            slot.state = WorkerState(slot.name, "Running", ready=slot.ready_file.exists())
            return
        self._close_log(slot)
        slot.proc = None
        if code == 0:
            slot.state = WorkerState(slot.name, "Succeeded", exit_code=0)
        else:
            failed = WorkerState(
                slot.name,
                "Failed",
                exit_code=code if code > 0 else 128 - code,
                reason="Error" if code > 0 else f"Signal{-code}",
            )
            slot.state = failed
            self._failures.append(failed)

    def _start(self, slot: _Slot) -> None:
        slot.ready_file.unlink(missing_ok=True)
        env = dict(self._base_env)
        env[envfile.ENV_FILE_VAR] = str(self._env_file)
        env[envfile.READY_FILE_VAR] = str(slot.ready_file)
        env.update(zip(WORKER_VARS, (self.name, slot.name, str(slot.index)), strict=True))
        spec = self.job.spec
        slot.log_handle = slot.log_file.open("a", encoding="utf-8")
        slot.proc = subprocess.Popen(
            [self._python, "-m", "cerebras_appliance.worker", spec.entrypoint, *spec.args],
            env=env,
            cwd=self._workdir,
            stdin=subprocess.DEVNULL,
            stdout=slot.log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        slot.state = WorkerState(slot.name, "Running", ready=False)

    def _block_on_a_worker(self, seconds: float) -> None:
        """Wait (bounded) for any running worker to exit, so wait() does not spin."""
        with self._lock:
            procs = [s.proc for s in self._slots if s.proc is not None]
        if not procs:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            procs[0].wait(timeout=seconds)

    def _stop_all(self) -> None:
        running = [s for s in self._slots if s.proc is not None]
        for slot in running:
            assert slot.proc is not None
            if slot.proc.poll() is None:
                _signal_group(slot.proc.pid, signal.SIGTERM)
        for slot in running:
            assert slot.proc is not None
            try:
                slot.proc.wait(timeout=_TERMINATE_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                _signal_group(slot.proc.pid, signal.SIGKILL)
                slot.proc.wait()
            slot.proc = None
            self._close_log(slot)
            if slot.state is not None and slot.state.phase == "Running":
                slot.state = WorkerState(slot.name, "Pending")

    @staticmethod
    def _close_log(slot: _Slot) -> None:
        if slot.log_handle is not None:
            slot.log_handle.close()
            slot.log_handle = None


def _signal_group(pid: int, signum: int) -> None:
    """Signal a worker and the processes it started (each worker leads its own group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signum)


_live_jobs: weakref.WeakSet[LocalJob] = weakref.WeakSet()


@atexit.register
def _cleanup() -> None:
    """Jobs not deleted by their owner are stopped (and their env files removed) at exit."""
    for job in list(_live_jobs):
        job.delete()
