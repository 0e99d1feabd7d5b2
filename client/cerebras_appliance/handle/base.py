"""The job handle every backend returns: wait with progress, logs (followed too), the outcome
as an exception, stopping (context manager, Ctrl-C), and async variants of the same code.

A backend implements a few primitives (:class:`JobHandle`'s ``_``-methods: observe the status,
list the worker attempts, read or follow one attempt's log, delete); everything a user calls
is written here once, so the local and the Kubernetes backend behave the same.

**The Ctrl-C rule.** A ``KeyboardInterrupt`` (Ctrl-C; a notebook's *Interrupt kernel*) during
``wait()`` or log streaming, with the default ``on_interrupt="delete"``, deletes the job (its
workers are stopped), says so on stderr and re-raises. A second Ctrl-C during that clean-up is
ignored (it takes seconds at most). ``on_interrupt="keep"`` leaves the job running and prints
how to follow it again or delete it; ``"ask"`` asks once on a terminal (anything but "n"
deletes; without a terminal it deletes). A job that had already finished is left as it is
(nothing is running; its logs stay). A Ctrl-C while the body of a ``for`` loop over a follow
stream runs is raised in that body, where the stream's generator is not running: the job keeps
running (``with job:`` deletes it however the block is left). Cancelling
``wait_async``/``stream_logs_async`` (``task.cancel()``, ``asyncio.wait_for``) only stops
waiting: the job keeps running and a line on stderr says so; ``async with job:`` deletes it on
the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import re
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Literal, NamedTuple, Self, overload

from cerebras_appliance.contract.api import ExecuteJobStatus
from cerebras_appliance.handle.progress import counts, failure_message, make_display, problem

if TYPE_CHECKING:
    from types import TracebackType

OnInterrupt = Literal["delete", "keep", "ask"]
Until = Literal["finished", "ready"]

#: How long one step of a wait blocks at most (the display's elapsed time moves on).
WAIT_TICK_S = 0.5
#: A wait says so (once) when the job still has no status this long after it began: on
#: Kubernetes, the operator is not running or does not watch the namespace.
NO_STATUS_NOTICE_S = 30.0

_FAILED_WORKER = re.compile(r"worker (\S+) failed \(exit code (-?\d+)")


# -- errors ----------------------------------------------------------------------------------


class JobError(RuntimeError):
    """A job did not end as the caller waited for it to; ``status`` is its last status."""

    def __init__(self, message: str, status: ExecuteJobStatus | None = None) -> None:
        super().__init__(message)
        self.status = status


class JobFailedError(JobError):
    """The job failed. ``reason`` (``BackoffLimitExceeded``, ``DeadlineExceeded``) and
    ``message`` are its ``Failed`` condition's; ``worker`` and ``exit_code`` name the worker
    attempt whose failure ended it, when the message does."""

    def __init__(self, job: str, status: ExecuteJobStatus) -> None:
        cond = status.condition("Failed")
        self.job = job
        self.reason = cond.reason if cond else ""
        self.message = cond.message if cond else ""
        found = _FAILED_WORKER.search(self.message)
        self.worker: str | None = found.group(1) if found else None
        self.exit_code: int | None = int(found.group(2)) if found else None
        super().__init__(f"job {job} failed: {failure_message(status) or 'Failed'}", status)


class JobSuspendedError(JobError):
    """The job is suspended (``spec.suspend``): it will not finish until resumed."""


class JobDeletedError(JobError):
    """The job was deleted while the caller waited for it."""


class JobNotFoundError(JobError, LookupError):
    """``get_job``: no such job."""


class JobTimeoutError(TimeoutError):
    """The wait's ``timeout`` passed. The message names the phase and what the wait still
    waited for; ``status`` is the last status seen."""

    def __init__(self, message: str, status: ExecuteJobStatus, until: Until) -> None:
        super().__init__(message)
        self.status = status
        self.until = until


# -- log lines -------------------------------------------------------------------------------


class LogLine(NamedTuple):
    """One line of one worker attempt's log (without its newline)."""

    worker: int  # the worker index
    attempt: int  # 0 for ``<job>-worker-<i>``, a for ``<job>-worker-<i>-<a>``
    pod: str  # the attempt's name (a pod's name on Kubernetes)
    text: str

    def __str__(self) -> str:
        return f"[{self.pod}] {self.text}"


@dataclass(frozen=True, order=True)
class AttemptRef:
    """A worker attempt a backend knows of."""

    index: int
    attempt: int
    name: str


class _End:
    pass


_END = _End()


def split_lines(buffer: str, data: str) -> tuple[list[str], str]:
    """Complete lines of ``buffer + data`` and the incomplete rest."""
    text = buffer + data
    *lines, rest = text.split("\n")
    return [line.removesuffix("\r") for line in lines], rest


class _LogStream:
    """Follows every attempt of a job (or of one worker) until the job has finished and each
    attempt's log has ended; lines of all attempts go to one queue, in arrival order.

    A driver thread refreshes the job (on the local backend this also runs its reconcile, so
    failed workers are replaced while nobody calls ``wait()``), finds new attempts and starts
    a follower thread for each; consumers take from the queue with a timeout, so neither a
    Ctrl-C nor an asyncio cancellation waits on a blocked read.
    """

    def __init__(self, job: JobHandle, worker: int | None) -> None:
        self._job, self._worker = job, worker
        self._queue: queue.Queue[LogLine | BaseException | _End] = queue.Queue()
        self.stop = threading.Event()
        self.finished = threading.Event()  # the job has finished: attempts that never
        # started will not (followers of those give up)
        self._driver = threading.Thread(target=self._drive, name=f"logs-{job.name}", daemon=True)
        self._driver.start()

    def _drive(self) -> None:
        followers: dict[str, threading.Thread] = {}
        try:
            while not self.stop.is_set():
                status = self._job._refresh()
                for ref in sorted(self._job._attempts()):
                    if ref.name in followers or (self._worker not in (None, ref.index)):
                        continue
                    thread = threading.Thread(
                        target=self._follow, args=(ref,), name=f"log-{ref.name}", daemon=True
                    )
                    followers[ref.name] = thread
                    thread.start()
                if status.finished:
                    self.finished.set()
                    if not any(t.is_alive() for t in followers.values()):
                        # Attempts seen only now were started before the end: one more look.
                        if all(r.name in followers for r in self._mine()):
                            break
                        continue
                self.stop.wait(self._job._poll_interval)
            for thread in followers.values():
                thread.join()
        except BaseException as exc:
            self._queue.put(exc)
        finally:
            self._queue.put(_END)

    def _mine(self) -> list[AttemptRef]:
        return [r for r in self._job._attempts() if self._worker in (None, r.index)]

    def _follow(self, ref: AttemptRef) -> None:
        try:
            for text in self._job._follow_attempt(ref, self.stop, self.finished):
                self._queue.put(LogLine(ref.index, ref.attempt, ref.name, text))
        except Exception as exc:
            if not self.stop.is_set():
                self._queue.put(exc)

    def get(self, timeout: float) -> LogLine | _End | None:
        """The next line, ``_END`` when done, None when nothing came within ``timeout``."""
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    def close(self) -> None:
        """Stop following (the backend ends blocked reads) and let the threads end."""
        if self.stop.is_set():
            return
        self.stop.set()
        self._job._stop_following()
        if self._driver is not threading.current_thread():
            self._driver.join(timeout=10)


# -- Ctrl-C ----------------------------------------------------------------------------------


def _notice(stream: IO[str] | None, text: str) -> None:
    with contextlib.suppress(Exception):
        print(text, file=stream or sys.stderr, flush=True)


@contextlib.contextmanager
def _sigint_deferred(stream: IO[str] | None, text: str) -> Iterator[None]:
    """Ignore further Ctrl-C (saying so) while the clean-up runs; main thread only."""
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return

    def again(signum: int, frame: object) -> None:
        _notice(stream, text)

    previous = signal.signal(signal.SIGINT, again)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _ask(stream: IO[str] | None, question: str) -> OnInterrupt:
    if not (sys.stdin is not None and sys.stdin.isatty()):
        return "delete"
    _notice(stream, question)
    try:
        answer = input()
    except (EOFError, KeyboardInterrupt):
        return "delete"
    return "keep" if answer.strip().lower() in ("n", "no") else "delete"


# -- the handle ------------------------------------------------------------------------------


class JobHandle:
    """A handle on an execute job; what ``submit()`` and ``get_job()`` return.

    Backends set ``name`` and ``manifest`` and implement the ``_``-primitives below.
    """

    name: str
    manifest: dict[str, Any]
    #: seconds between two looks at the job while streaming logs
    _poll_interval: float = 1.0
    _keep: bool = False
    _last_status: ExecuteJobStatus | None = None

    # -- backend primitives --------------------------------------------------------------

    def status(self) -> ExecuteJobStatus:
        raise NotImplementedError

    def delete(self) -> None:
        raise NotImplementedError

    @property
    def label(self) -> str:
        """How messages name the job (``namespace/name`` on Kubernetes)."""
        return self.name

    def _observer(self) -> contextlib.AbstractContextManager[Callable[[float], ExecuteJobStatus]]:
        """For the duration of a wait: a function that blocks up to the given seconds for
        news and returns the newest status; raises JobDeletedError once the job is gone."""
        raise NotImplementedError

    def _refresh(self) -> ExecuteJobStatus:
        """The status now (JobDeletedError when the job is gone)."""
        raise NotImplementedError

    def _attempts(self) -> list[AttemptRef]:
        """Every worker attempt that exists (finished ones too)."""
        raise NotImplementedError

    def _read_log(self, name: str, tail: int | None) -> str:
        raise NotImplementedError

    def _follow_attempt(
        self, ref: AttemptRef, stop: threading.Event, finished: threading.Event
    ) -> Iterator[str]:
        """The attempt's lines as they are written, until its log ends (it exited, or it was
        removed before it started), or ``stop`` is set."""
        raise NotImplementedError

    def _stop_following(self) -> None:
        """End the reads of followed logs that block (called when a stream is closed)."""

    def _after_interrupt_delete(self) -> str:
        """What the Ctrl-C notice adds after "job deleted"."""
        return ""

    def _reattach_hint(self) -> str:
        return ""

    def _no_status_hint(self, status: ExecuteJobStatus) -> str:
        """Why ``status`` may be one nobody wrote (``""``: it was written). The local backend
        computes its status itself, so only the Kubernetes one says anything."""
        return ""

    # -- waiting ---------------------------------------------------------------------------

    def wait(
        self,
        timeout: float | None = None,
        *,
        until: Until = "finished",
        progress: bool | IO[str] = True,
        raise_on_failure: bool = False,
        on_interrupt: OnInterrupt = "delete",
    ) -> ExecuteJobStatus:
        """Block until the job finishes (``until="ready"``: until every worker applied the env,
        or it finished); return its status.

        ``progress``: ``True`` shows progress on stderr (a bar on a terminal or in Jupyter,
        plain lines otherwise), a stream shows it there, ``False`` nothing.
        ``raise_on_failure``: a failed job raises :class:`JobFailedError` instead of returning.
        Raises :class:`JobTimeoutError` (a ``TimeoutError``) naming the phase and what it still
        waited for when ``timeout`` seconds pass first; :class:`JobSuspendedError` and
        :class:`JobDeletedError` when the job is suspended or deleted meanwhile. Ctrl-C:
        see ``on_interrupt`` and the module's rule (by default the job is deleted).
        """
        return self._wait(timeout, until, progress, raise_on_failure, on_interrupt, None)

    def result(
        self, timeout: float | None = None, *, progress: bool | IO[str] = True
    ) -> ExecuteJobStatus:
        """``wait(timeout, raise_on_failure=True)``: the final status of a job that succeeded."""
        return self.wait(timeout, progress=progress, raise_on_failure=True)

    async def wait_async(
        self,
        timeout: float | None = None,
        *,
        until: Until = "finished",
        progress: bool | IO[str] = True,
        raise_on_failure: bool = False,
        on_interrupt: OnInterrupt = "delete",
    ) -> ExecuteJobStatus:
        """:meth:`wait` without blocking the event loop (the same code, in a thread)."""
        cancel = threading.Event()
        try:
            return await asyncio.to_thread(
                self._wait, timeout, until, progress, raise_on_failure, on_interrupt, cancel
            )
        except asyncio.CancelledError:
            cancel.set()
            self._cancelled_notice()
            raise
        except KeyboardInterrupt:
            cancel.set()
            self._interrupted(on_interrupt, None)
            raise

    def _cancelled_notice(self) -> None:
        status = self._last_status
        if status is None or not status.finished:
            hint = self._reattach_hint()
            _notice(None, f"{self.label}: stopped waiting (cancelled); the job keeps running"
                    + (f" ({hint})" if hint else ""))  # fmt: skip

    def _wait(
        self,
        timeout: float | None,
        until: Until,
        progress: bool | IO[str],
        raise_on_failure: bool,
        on_interrupt: OnInterrupt,
        cancel: threading.Event | None,
    ) -> ExecuteJobStatus:
        display = make_display(self.label, progress)
        status: ExecuteJobStatus | None = None
        began = time.monotonic()
        deadline = None if timeout is None else began + timeout
        silent_noted = False
        try:
            with self._observer() as observe:
                status = observe(0)
                while True:
                    self._last_status = status
                    display.update(status)
                    if not silent_noted and time.monotonic() - began >= NO_STATUS_NOTICE_S:
                        silent_noted = True
                        hint = self._no_status_hint(status)
                        if hint:
                            display.notice(f"still waiting after {NO_STATUS_NOTICE_S:.0f}s: {hint}")
                    if status.finished or (until == "ready" and _all_ready(status)):
                        break
                    if status.phase == "Suspended":
                        raise JobSuspendedError(
                            f"job {self.label} is suspended: it will not finish", status
                        )
                    if cancel is not None and cancel.is_set():
                        break
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise self._timeout_error(timeout, until, status)
                    step = WAIT_TICK_S if remaining is None else min(WAIT_TICK_S, remaining)
                    status = observe(step)
        except KeyboardInterrupt:
            display.close(None)
            self._interrupted(on_interrupt, display.stream)
            raise
        except BaseException:
            display.close(None)
            raise
        display.close(status)
        if raise_on_failure and status.phase == "Failed":
            raise JobFailedError(self.label, status)
        return status

    def _timeout_error(
        self, timeout: float | None, until: Until, status: ExecuteJobStatus
    ) -> JobTimeoutError:
        n = status.replicas
        if until == "ready":
            head = f"job {self.label}: its workers were not all ready within {timeout}s"
            what = f"{n - status.ready_replicas} of {n} workers to apply the env"
        else:
            head = f"job {self.label} did not finish within {timeout}s"
            what = f"{n - status.succeeded} of {n} workers to succeed"
        text = f"{head}: phase {status.phase}, waiting for {what} ({counts(status)})"
        found = problem(status)
        if found is not None:
            text += f"; {found[0]}: {found[1]}"
        hint = self._no_status_hint(status)
        if hint:
            text += f"; {hint}"
        return JobTimeoutError(text, status, until)

    # -- logs ------------------------------------------------------------------------------

    @overload
    def logs(self, *, tail: int | None = None) -> dict[str, str]: ...

    @overload
    def logs(self, worker: int, *, tail: int | None = None, attempt: int | None = None) -> str: ...

    @overload
    def logs(
        self,
        worker: int | None = None,
        *,
        follow: Literal[True],
        on_interrupt: OnInterrupt = "delete",
    ) -> Iterator[str]: ...

    def logs(
        self,
        worker: int | None = None,
        *,
        tail: int | None = None,
        attempt: int | None = None,
        follow: bool = False,
        on_interrupt: OnInterrupt = "delete",
    ) -> dict[str, str] | str | Iterator[str]:
        """The workers' logs (combined stdout and stderr).

        * ``logs()``: every attempt's log so far, keyed by attempt name
          (``<job>-worker-<i>``, then ``<job>-worker-<i>-<a>`` for a replacement);
        * ``logs(worker=i)``: worker ``i``'s latest attempt (``attempt=a``: that one),
          ``""`` before it started; ``tail=n``: only the last ``n`` lines (also for all);
        * ``logs(follow=True)``: an iterator of lines ``"[<attempt>] text"`` as the workers
          write them, across replaced attempts, until the job has finished and every log has
          ended (:meth:`stream_logs` gives them as :class:`LogLine`).
        """
        if follow:
            return (str(line) for line in self.stream_logs(worker, on_interrupt=on_interrupt))
        if worker is None:
            return {ref.name: self._read_log(ref.name, tail) for ref in self._sorted_attempts()}
        mine = [r for r in self._sorted_attempts() if r.index == worker]
        if attempt is not None:
            mine = [r for r in mine if r.attempt == attempt]
            if not mine:
                raise LookupError(f"job {self.label} has no attempt {attempt} of worker {worker}")
        if not mine:
            return ""
        return self._read_log(mine[-1].name, tail)

    def _sorted_attempts(self) -> list[AttemptRef]:
        return sorted(self._attempts())

    def stream_logs(
        self, worker: int | None = None, *, on_interrupt: OnInterrupt = "delete"
    ) -> Iterator[LogLine]:
        """:class:`LogLine` values as workers write them (all workers, or worker ``worker``),
        including the lines of attempts that replace failed ones, until the job has finished
        and every attempt's log has ended. Ctrl-C: as for :meth:`wait`. Raises
        :class:`JobDeletedError` when the job is deleted meanwhile."""
        stream = _LogStream(self, worker)
        try:
            while True:
                item = stream.get(WAIT_TICK_S)
                if item is None:
                    continue
                if isinstance(item, _End):
                    return
                yield item
        except KeyboardInterrupt:
            stream.close()
            self._interrupted(on_interrupt, None)
            raise
        finally:
            stream.close()

    async def stream_logs_async(self, worker: int | None = None) -> AsyncIterator[LogLine]:
        """:meth:`stream_logs` for ``async for`` (the same stream; reads in a thread)."""
        stream = _LogStream(self, worker)
        try:
            while True:
                item = await asyncio.to_thread(stream.get, WAIT_TICK_S)
                if item is None:
                    continue
                if isinstance(item, _End):
                    return
                yield item
        except asyncio.CancelledError:
            stream.close()
            self._cancelled_notice()
            raise
        finally:
            stream.close()

    # -- stopping --------------------------------------------------------------------------

    def keep(self, keep: bool = True) -> Self:
        """Leave the job when a ``with`` block (or Ctrl-C with ``on_interrupt="ask"`` answered
        "n") ends; ``keep(False)`` undoes it. Returns the handle:
        ``with submit(...).keep() as job:``."""
        self._keep = keep
        return self

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Delete the job (its workers are stopped), unless :meth:`keep` was called."""
        if not self._keep:
            self.delete()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._keep:
            await asyncio.to_thread(self.delete)

    def _interrupted(self, rule: OnInterrupt, stream: IO[str] | None) -> None:
        """Apply the Ctrl-C rule (the module's docstring)."""
        try:
            status: ExecuteJobStatus | None = self._refresh()
        except Exception:
            status = self._last_status
        if status is not None and status.finished:
            _notice(stream, f"{self.label}: interrupted; the job had already finished "
                    f"({status.phase}): nothing was running")  # fmt: skip
            return
        if rule == "ask":
            rule = _ask(stream, f"{self.label}: interrupted. Stop the job and its workers? [Y/n]")
        if rule == "keep":
            self._keep = True
            hint = self._reattach_hint()
            _notice(stream, f"{self.label}: interrupted; the job keeps running"
                    + (f" ({hint})" if hint else ""))  # fmt: skip
            return
        with _sigint_deferred(stream, f"{self.label}: still stopping the workers, one moment"):
            self.delete()
        _notice(stream, f"{self.label}: interrupted: job deleted, its workers stopped"
                + self._after_interrupt_delete()
                + " (on_interrupt='keep' leaves a job running)")  # fmt: skip


def _all_ready(status: ExecuteJobStatus) -> bool:
    cond = status.condition("WorkersReady")
    return cond is not None and cond.status == "True"
