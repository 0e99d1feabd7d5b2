"""The job handle every backend returns: wait with progress, logs (followed too), the outcome
as an exception, stopping (context manager, Ctrl-C), and async variants of the same code.

A backend implements the interface :class:`~.backend.JobBackend` declares (status, suspend,
resume, scale, delete; observe the status, list the worker attempts, read or follow one
attempt's log); everything else a user calls is written here once, so the local and the
Kubernetes backend behave the same. The errors are in :mod:`.errors`, log streaming in
:mod:`.logs`, the Ctrl-C prompt in :mod:`.interrupt`, progress displays in :mod:`.progress`.

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
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import IO, TYPE_CHECKING, Literal, Self, overload

from cerebras_appliance.contract.api import ExecuteJobStatus
from cerebras_appliance.handle.backend import AttemptRef, JobBackend
from cerebras_appliance.handle.errors import (
    JobFailedError,
    JobSuspendedError,
    JobTimeoutError,
    Until,
)
from cerebras_appliance.handle.interrupt import OnInterrupt, ask, notice, sigint_deferred
from cerebras_appliance.handle.logs import End, LogLine, LogStream
from cerebras_appliance.handle.progress import counts, make_display, problem

if TYPE_CHECKING:
    from types import TracebackType

#: How long one step of a wait blocks at most (the display's elapsed time moves on).
WAIT_TICK_S = 0.5
#: A wait says so (once) when the job still has no status this long after it began: on
#: Kubernetes, the operator is not running or does not watch the namespace.
NO_STATUS_NOTICE_S = 30.0


class JobHandle(JobBackend):
    """A handle on an execute job; what ``submit()`` and ``get_job()`` return.

    Backends set ``name`` and ``manifest`` and implement :class:`~.backend.JobBackend`.
    """

    _keep: bool = False
    _last_status: ExecuteJobStatus | None = None

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
            self._cancellednotice()
            raise
        except KeyboardInterrupt:
            cancel.set()
            self._interrupted(on_interrupt, None)
            raise

    def _cancellednotice(self) -> None:
        status = self._last_status
        if status is None or not status.finished:
            hint = self._reattach_hint()
            notice(None, f"{self.label}: stopped waiting (cancelled); the job keeps running"
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
        stream = LogStream(self, worker)
        try:
            while True:
                item = stream.get(WAIT_TICK_S)
                if item is None:
                    continue
                if isinstance(item, End):
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
        stream = LogStream(self, worker)
        try:
            while True:
                item = await asyncio.to_thread(stream.get, WAIT_TICK_S)
                if item is None:
                    continue
                if isinstance(item, End):
                    return
                yield item
        except asyncio.CancelledError:
            stream.close()
            self._cancellednotice()
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
            notice(stream, f"{self.label}: interrupted; the job had already finished "
                    f"({status.phase}): nothing was running")  # fmt: skip
            return
        if rule == "ask":
            rule = ask(stream, f"{self.label}: interrupted. Stop the job and its workers? [Y/n]")
        if rule == "keep":
            self._keep = True
            hint = self._reattach_hint()
            notice(stream, f"{self.label}: interrupted; the job keeps running"
                    + (f" ({hint})" if hint else ""))  # fmt: skip
            return
        with sigint_deferred(stream, f"{self.label}: still stopping the workers, one moment"):
            self.delete()
        notice(stream, f"{self.label}: interrupted: job deleted, its workers stopped"
                + self._after_interrupt_delete()
                + " (on_interrupt='keep' leaves a job running)")  # fmt: skip


def _all_ready(status: ExecuteJobStatus) -> bool:
    cond = status.condition("WorkersReady")
    return cond is not None and cond.status == "True"
