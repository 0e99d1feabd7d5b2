"""A coalescing work queue of keys, of jobs or of pools (asyncio; used from the operator's event
loop only).

Semantics as in client-go's workqueue, which make reconciles level-triggered and cheap:

* a key added many times before a worker takes it is processed once (a burst of pod events
  becomes one reconcile of their job);
* a key is never processed by two workers at once; a key added while it is being processed
  is processed again right after (so no event is lost);
* ``add_after`` schedules a key (deadlines, TTLs, retries); only the earliest schedule of a
  key is kept.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class QueueShutDownError(Exception):
    """The queue was shut down: workers should exit."""


class WorkQueue(Generic[K]):
    def __init__(self) -> None:
        self._queue: deque[K] = deque()
        self._dirty: set[K] = set()
        self._processing: set[K] = set()
        self._timers: dict[K, tuple[float, asyncio.TimerHandle]] = {}
        self._nonempty = asyncio.Event()
        self._shutdown = False

    def __len__(self) -> int:
        """Keys waiting to be processed (not those being processed or scheduled)."""
        return len(self._queue)

    @property
    def processing(self) -> int:
        return len(self._processing)

    @property
    def scheduled(self) -> int:
        return len(self._timers)

    def add(self, key: K) -> None:
        if self._shutdown or key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._queue.append(key)
            self._notify()

    def add_after(self, key: K, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        existing = self._timers.get(key)
        if existing is not None:
            if existing[0] <= due:
                return
            existing[1].cancel()
        self._timers[key] = (due, loop.call_at(due, self._fire, key))

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def _notify(self) -> None:
        self._nonempty.set()

    async def get(self) -> K:
        """The next key; the caller must call :meth:`done` with it. Raises QueueShutDownError."""
        while True:
            if self._queue:
                key = self._queue.popleft()
                self._processing.add(key)
                self._dirty.discard(key)
                return key
            if self._shutdown:
                raise QueueShutDownError
            self._nonempty.clear()
            await self._nonempty.wait()

    def done(self, key: K) -> None:
        self._processing.discard(key)
        if key in self._dirty and not self._shutdown:
            self._queue.append(key)
            self._notify()

    def forget(self, key: K) -> None:
        """Drop a scheduled add of ``key`` (its job is gone)."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer[1].cancel()

    def shutdown(self) -> None:
        """Wake every waiting worker with QueueShutDownError; keys left are dropped."""
        self._shutdown = True
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        self._queue.clear()
        self._nonempty.set()
