"""The interface every backend implements in full (:class:`JobBackend`): the job's public
operations that differ per backend (status, suspend, resume, scale, delete) and the
primitives :class:`~cerebras_appliance.handle.JobHandle` writes everything else over
(observe the status, list the worker attempts, read or follow one attempt's log).

An abstract class, not a Protocol: a backend that leaves one out cannot be instantiated, so
the gap shows at the first ``submit()`` of a test, not in a user's notebook.
"""

from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from cerebras_appliance.contract.api import ExecuteJobStatus


@dataclass(frozen=True, order=True)
class AttemptRef:
    """A worker attempt a backend knows of."""

    index: int
    attempt: int
    name: str


class JobBackend(ABC):
    """What a backend's job implements; :class:`~cerebras_appliance.handle.JobHandle` adds
    waiting, logs, Ctrl-C and async over it. Backends set ``name`` and ``manifest``."""

    name: str
    manifest: dict[str, Any]
    #: seconds between two looks at the job while streaming logs
    _poll_interval: float = 1.0

    # -- operations a user calls ---------------------------------------------------------

    @abstractmethod
    def status(self) -> ExecuteJobStatus:
        """The job's status now."""

    @abstractmethod
    def suspend(self) -> ExecuteJobStatus:
        """``spec.suspend = true``: stop the workers (not a failure), keep the job."""

    @abstractmethod
    def resume(self) -> ExecuteJobStatus:
        """``spec.suspend = false``: start the workers that have not succeeded."""

    @abstractmethod
    def scale(self, replicas: int) -> ExecuteJobStatus:
        """Change ``spec.replicas``: workers beyond it stop, missing ones start."""

    @abstractmethod
    def delete(self) -> None:
        """Delete the job; its workers are stopped."""

    @property
    def label(self) -> str:
        """How messages name the job (``namespace/name`` on Kubernetes)."""
        return self.name

    # -- primitives the handle is written over ---------------------------------------------

    @abstractmethod
    def _observer(self) -> contextlib.AbstractContextManager[Callable[[float], ExecuteJobStatus]]:
        """For the duration of a wait: a function that blocks up to the given seconds for
        news and returns the newest status; raises JobDeletedError once the job is gone."""

    @abstractmethod
    def _refresh(self) -> ExecuteJobStatus:
        """The status now (JobDeletedError when the job is gone)."""

    @abstractmethod
    def _attempts(self) -> list[AttemptRef]:
        """Every worker attempt that exists (finished ones too)."""

    @abstractmethod
    def _read_log(self, name: str, tail: int | None) -> str:
        """Attempt ``name``'s log so far (its last ``tail`` lines); ``""`` before it began."""

    @abstractmethod
    def _follow_attempt(
        self, ref: AttemptRef, stop: threading.Event, finished: threading.Event
    ) -> Iterator[str]:
        """The attempt's lines as they are written, until its log ends (it exited, or it was
        removed before it started), or ``stop`` is set."""

    # -- hooks with a default --------------------------------------------------------------

    def _stop_following(self) -> None:
        """End the reads of followed logs that block (called when a stream is closed)."""
        return  # a backend whose reads never block has nothing to end

    def _after_interrupt_delete(self) -> str:
        """What the Ctrl-C notice adds after "job deleted"."""
        return ""

    def _reattach_hint(self) -> str:
        """How to follow (or stop) the job again once this process stopped waiting."""
        return ""

    def _no_status_hint(self, status: ExecuteJobStatus) -> str:
        """Why ``status`` may be one nobody wrote (``""``: it was written). The local backend
        computes its status itself, so only the Kubernetes one says anything."""
        return ""
