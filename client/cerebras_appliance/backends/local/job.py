"""The local backend: a job's input workers as subprocesses of this machine.

Each worker runs the very entrypoint a pod runs (``python -m cerebras_appliance.worker``) with
the same env snapshot file. Workers start from a minimal base environment (see
:data:`.state.BASE_ENV_KEYS`), never from the caller's, so a variable set only through
``os.environ`` is invisible to them, exactly as on a cluster.

Job directories (the env file, readiness markers, logs) are private directories of
:mod:`.state`, swept when their owner is gone.

A job may carry the user's code (issue 23): a :class:`~cerebras_appliance.contract.bundle.Bundle`
packed when the job was submitted, written once into the job's directory as
``code/chunk-000`` (0600) and named to every worker, cold or claimed, by
``APPLIANCE_CODE_DIR`` and ``APPLIANCE_CODE_SHA256``. Each worker unpacks its own copy and runs
from it (:mod:`cerebras_appliance.worker.code`), never from the directory the code came from,
so editing that directory after ``submit()`` changes nothing for the job.
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
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from cerebras_appliance.backends.local.state import base_environment, private_dir_for
from cerebras_appliance.contract import bundle as bundles
from cerebras_appliance.contract import claim as claims
from cerebras_appliance.contract import envfile, names
from cerebras_appliance.contract.api import ExecuteJob, ExecuteJobStatus, worker_name
from cerebras_appliance.contract.lifecycle import Attempt, decide
from cerebras_appliance.contract.names import WORKER_VARS
from cerebras_appliance.handle import AttemptRef, JobDeletedError, JobHandle, split_lines

if TYPE_CHECKING:
    from cerebras_appliance.backends.local.pool import ProcessPool, WarmProcess


_TERMINATE_GRACE_SECONDS = 5.0
_POLL_SECONDS = 0.02
_FOLLOW_POLL_SECONDS = 0.05


@dataclass
class _Process:
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


@dataclass(frozen=True)
class ProcessView:
    """One worker attempt's process as :attr:`LocalJob.processes` shows it (read-only)."""

    index: int
    attempt: int
    name: str
    #: None until the attempt's process started
    proc: subprocess.Popen[bytes] | None
    #: as last observed (by ``status()``, ``wait()``...); None while it runs
    exit_code: int | None
    #: claimed from a warm pool (its process started before the job)
    warm: bool


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
        pool: ProcessPool | None = None,
        code: bundles.Bundle | None = None,
    ) -> None:
        """``code``: the user's code, packed at submit (the job's ``spec.entrypoint`` is the
        one to run with it: a path in its working directory, or a ``module:function``)."""
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
        self.code_sha256: str | None = code.sha256 if code is not None else None
        self._code_plumbing = self._write_code(code) if code is not None else {}
        self._workers: list[_Process] = []
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

    @property
    def processes(self) -> tuple[ProcessView, ...]:
        """Every worker attempt's process (replaced ones too), in start order, as last
        observed; read-only."""
        with self._lock:
            return tuple(
                ProcessView(w.index, w.attempt, w.name, w.proc, w.exit_code, w.warm)
                for w in self._workers
            )

    @property
    def env_file(self) -> Path:
        """The job's env snapshot file (private, 0600): what each worker reads; removed by
        :meth:`delete`."""
        return self._env_file

    @property
    def directory(self) -> Path:
        """The job's private directory (the env file, readiness markers, logs); removed by
        :meth:`delete`."""
        return self._dir

    def _write_code(self, code: bundles.Bundle) -> dict[str, str]:
        """Write the bundle into the job's directory (one chunk: no Secret limit here); the
        variables that name it to a worker."""
        directory = self._dir / "code"
        directory.mkdir(mode=0o700)
        fd = os.open(
            directory / f"{names.CODE_CHUNK_PREFIX}000",
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
        )
        with os.fdopen(fd, "wb") as out:
            out.write(code.data)
        return {names.CODE_DIR_VAR: str(directory), names.CODE_SHA256_VAR: code.sha256}

    def wait_for_a_worker(self, timeout: float) -> None:
        """Block up to ``timeout`` seconds, returning early when a running worker exits: a
        poll between two looks at :meth:`status` that does not spin (``wait()`` uses it)."""
        with self._lock:
            procs = [w.proc for w in self._workers if w.proc is not None and w.exit_code is None]
        if not procs:
            time.sleep(timeout)  # nothing to wait on: poll interval, not synchronisation
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            procs[0].wait(timeout=timeout)

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
                self.wait_for_a_worker(min(_POLL_SECONDS, remaining))

        yield observe

    def _attempts(self) -> list[AttemptRef]:
        with self._lock:
            return [AttemptRef(w.index, w.attempt, w.name) for w in self._workers]

    def _worker(self, name: str) -> _Process:
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
                    lines, rest = split_lines(rest, decoder.decode(data))
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

    def _start(self, index: int, attempt: int, warm: WarmProcess | None = None) -> None:
        name = worker_name(self.name, index, attempt)
        worker = _Process(
            index=index,
            attempt=attempt,
            name=name,
            ready_file=self._dir / f"{name}.ready",
            log_file=self._dir / f"{name}.log",
            warm=warm is not None,
        )
        plumbing = {
            names.ENV_FILE_VAR: str(self._env_file),
            names.READY_FILE_VAR: str(worker.ready_file),
            **dict(zip(WORKER_VARS, (self.name, name, str(index)), strict=True)),
            **self._code_plumbing,
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
    def _stop(worker: _Process) -> None:
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

    def _stop_and_wait(self, workers: Sequence[_Process]) -> None:
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
    def _close_log(worker: _Process) -> None:
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


def live_jobs() -> list[LocalJob]:
    """Every job this process submitted and has not deleted (they are stopped at exit)."""
    return list(_live_jobs)


def find_local_job(name: str) -> LocalJob | None:
    """The job of that name this process submitted and has not deleted."""
    return next((job for job in list(_live_jobs) if job.name == name), None)


@atexit.register
def _cleanup() -> None:
    """Jobs not deleted by their owner are stopped (and their env files removed) at exit."""
    for job in list(_live_jobs):
        job.delete()
