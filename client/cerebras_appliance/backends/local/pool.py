"""A local warm pool's processes: workers started before any job, claimed one per job worker.

Users hold a :class:`cerebras_appliance.pool.LocalPool` (this class and ``submit``).

Each pool worker is ``python -m cerebras_appliance.worker --warm`` started from the same
minimal base environment as a cold local worker, with the pool's modules imported. A job
claims idle workers (those that have written their idle file) for as many of its workers as
it can and starts the rest cold: a job never waits for the pool. A claim goes over the
worker's own pipe, whose other end only this process holds, and carries the job's env file,
readiness marker, log file and working directory; the worker then runs the cold path
unchanged. A claimed worker belongs to that job for good (one job per worker, never
returned), and the pool starts a replacement in the background.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Self

from cerebras_appliance.backends.local.state import base_environment, private_dir_for
from cerebras_appliance.contract import claim as claims
from cerebras_appliance.contract import names

if TYPE_CHECKING:
    pass


#: The refill waits for the claimed workers' readiness markers at most this long.
REFILL_DELAY_MAX_SECONDS = 5.0


@dataclass
class WarmProcess:
    """One warm process: its pipe (write end, ours only) and idle file."""

    name: str
    proc: subprocess.Popen[bytes]
    claim_fd: int
    idle_file: Path
    #: The job's readiness marker, once claimed (the refill waits for it).
    ready_file: str = ""

    def started_its_job(self) -> bool:
        """Claimed and past applying the env (or gone): it no longer needs the CPU first."""
        if self.proc.poll() is not None:
            return True
        return bool(self.ready_file) and os.path.exists(self.ready_file)

    @property
    def idle(self) -> bool:
        return self.proc.poll() is None and self.idle_file.exists()

    def send(self, claim: claims.Claim) -> None:
        """Write the claim and close the pipe: the worker reads to its end, once."""
        self.ready_file = dict(claim.plumbing).get(names.READY_FILE_VAR, "")
        data = claims.dumps(claim)
        try:
            view = memoryview(data)
            while view:
                written = os.write(self.claim_fd, view)
                view = view[written:]
        finally:
            os.close(self.claim_fd)
            self.claim_fd = -1


@dataclass
class PoolCounts:
    idle: int = 0
    starting: int = 0
    claimed: int = 0
    cold_fallbacks: int = 0


@dataclass(eq=False)
class ProcessPool:
    """Keep ``size`` warm workers; ``imports``: modules each imports while warming;
    ``startup_variables``: variables those modules read at import (a job setting one of them
    re-executes its worker, as for PYTHONPATH)."""

    size: int
    imports: Sequence[str] = ()
    startup_variables: Collection[str] = ()
    python: str = sys.executable
    caller_environ: Mapping[str, str] | None = None
    _workers: list[WarmProcess] = field(default_factory=list, init=False, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)
    _closed: bool = field(default=False, init=False, repr=False)
    _serial: int = field(default=0, init=False, repr=False)
    _claimed: int = field(default=0, init=False, repr=False)
    _cold: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 0:
            raise ValueError(f"size: {self.size!r} must be a whole number >= 0")
        bad = [m for m in self.imports if not all(p.isidentifier() for p in m.split("."))]
        if bad:
            raise ValueError(f"imports: {bad!r} are not module names (write e.g. 'numpy')")
        self._dir = private_dir_for("pool")
        self._base_env = base_environment(
            os.environ if self.caller_environ is None else self.caller_environ
        )
        _live_pools.add(self)
        self.refill()

    # -- public -------------------------------------------------------------------------

    @property
    def processes(self) -> tuple[subprocess.Popen[bytes], ...]:
        """The processes of the pool's workers not claimed yet (idle or starting), read-only:
        a claimed one belongs to its job (``LocalJob.processes``)."""
        with self._lock:
            return tuple(w.proc for w in self._workers)

    @property
    def directory(self) -> Path:
        """The pool's private directory (its workers' idle files and logs); removed by
        :meth:`close`."""
        return self._dir

    def counts(self) -> PoolCounts:
        with self._lock:
            self._forget_dead()
            idle = sum(1 for w in self._workers if w.idle)
            return PoolCounts(
                idle=idle,
                starting=len(self._workers) - idle,
                claimed=self._claimed,
                cold_fallbacks=self._cold,
            )

    def wait_idle(self, count: int | None = None, timeout: float = 60.0) -> bool:
        """Block until ``count`` (default: ``size``) workers are idle; False on timeout."""
        want = self.size if count is None else count
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.counts().idle >= want:
                return True
            time.sleep(0.005)  # poll interval of the idle files, not synchronisation
        return False

    def close(self) -> None:
        """Stop the idle workers (claimed ones belong to their jobs) and remove the pool's files."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workers, self._workers = self._workers, []
        for w in workers:
            with contextlib.suppress(OSError):
                os.close(w.claim_fd)  # EOF: an idle worker exits on its own
            with contextlib.suppress(ProcessLookupError):
                os.killpg(w.proc.pid, signal.SIGTERM)
        for w in workers:
            try:
                w.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(w.proc.pid, signal.SIGKILL)
                w.proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)
        _live_pools.discard(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- used by LocalJob ---------------------------------------------------------------

    def take(self, count: int) -> list[WarmProcess]:
        """Up to ``count`` idle workers, removed from the pool for good; refill starts."""
        with self._lock:
            if self._closed:
                return []
            self._forget_dead()
            taken = [w for w in self._workers if w.idle][:count]
            for w in taken:
                self._workers.remove(w)
            self._claimed += len(taken)
            self._cold += count - len(taken)
        if taken:
            threading.Thread(
                target=self._refill_after, args=(taken,), name="appliance-pool-refill", daemon=True
            ).start()
        return taken

    def _refill_after(self, taken: Sequence[WarmProcess]) -> None:
        """Refill once the claimed workers have applied their env (at most 5 s later): new
        interpreters starting would otherwise share the CPU with the job's first moments."""
        deadline = time.monotonic() + REFILL_DELAY_MAX_SECONDS
        while time.monotonic() < deadline and not all(w.started_its_job() for w in taken):
            time.sleep(0.002)  # poll interval of the readiness markers
        self.refill()

    def refill(self) -> None:
        """Start workers until ``size`` are idle or starting."""
        with self._lock:
            while not self._closed and len(self._workers) < self.size:
                self._workers.append(self._start())

    # -- internals ----------------------------------------------------------------------

    def _forget_dead(self) -> None:
        for w in [w for w in self._workers if w.proc.poll() is not None]:
            self._workers.remove(w)
            with contextlib.suppress(OSError):
                os.close(w.claim_fd)

    def _start(self) -> WarmProcess:
        self._serial += 1
        name = f"pool-{os.getpid()}-{self._serial}"
        idle_file = self._dir / f"{name}.idle"
        read_end, write_end = os.pipe()
        os.set_inheritable(write_end, False)
        env = dict(self._base_env)
        env.update(
            {
                names.WARM_IMPORTS_VAR: ",".join(self.imports),
                names.WARM_STARTUP_VARS_VAR: ",".join(self.startup_variables),
                names.IDLE_FILE_VAR: str(idle_file),
                names.CLAIM_FD_VAR: str(read_end),
                names.POOL_WORKER_VAR: name,
            }
        )
        with (self._dir / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [self.python, "-m", "cerebras_appliance.worker", names.WARM_FLAG],
                env=env,
                cwd=self._dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(read_end,),
                start_new_session=True,
            )
        os.close(read_end)
        return WarmProcess(name=name, proc=proc, claim_fd=write_end, idle_file=idle_file)


#: Every pool not closed yet, held strongly (like the jobs of ``job.live_jobs()``): closed at exit.
_live_pools: set[ProcessPool] = set()


@atexit.register
def _cleanup() -> None:
    for pool in list(_live_pools):
        pool.close()
