"""Log streaming, written once for both backends: the lines of every attempt of a job (or of
one worker), across replaced attempts, until the job has finished and each log has ended."""

from __future__ import annotations

import queue
import threading
from typing import NamedTuple

from cerebras_appliance.handle.backend import AttemptRef, JobBackend


class LogLine(NamedTuple):
    """One line of one worker attempt's log (without its newline)."""

    worker: int  # the worker index
    attempt: int  # 0 for ``<job>-worker-<i>``, a for ``<job>-worker-<i>-<a>``
    pod: str  # the attempt's name (a pod's name on Kubernetes)
    text: str

    def __str__(self) -> str:
        return f"[{self.pod}] {self.text}"


class End:
    """What :meth:`LogStream.get` returns once the stream is done (:data:`END`)."""


END = End()


def split_lines(buffer: str, data: str) -> tuple[list[str], str]:
    """Complete lines of ``buffer + data`` and the incomplete rest."""
    text = buffer + data
    *lines, rest = text.split("\n")
    return [line.removesuffix("\r") for line in lines], rest


class LogStream:
    """Follows every attempt of a job (or of one worker) until the job has finished and each
    attempt's log has ended; lines of all attempts go to one queue, in arrival order.

    A driver thread refreshes the job (on the local backend this also runs its reconcile, so
    failed workers are replaced while nobody calls ``wait()``), finds new attempts and starts
    a follower thread for each; consumers take from the queue with a timeout, so neither a
    Ctrl-C nor an asyncio cancellation waits on a blocked read.
    """

    def __init__(self, job: JobBackend, worker: int | None) -> None:
        self._job, self._worker = job, worker
        self._queue: queue.Queue[LogLine | BaseException | End] = queue.Queue()
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
            self._queue.put(END)

    def _mine(self) -> list[AttemptRef]:
        return [r for r in self._job._attempts() if self._worker in (None, r.index)]

    def _follow(self, ref: AttemptRef) -> None:
        try:
            for text in self._job._follow_attempt(ref, self.stop, self.finished):
                self._queue.put(LogLine(ref.index, ref.attempt, ref.name, text))
        except Exception as exc:
            if not self.stop.is_set():
                self._queue.put(exc)

    def get(self, timeout: float) -> LogLine | End | None:
        """The next line, :data:`END` when done, None when nothing came within ``timeout``."""
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
