"""What waiting for a job raises: the job did not end as the caller waited for it to
(:class:`JobError` and its kinds), or the wait's timeout passed (:class:`JobTimeoutError`)."""

from __future__ import annotations

import re
from typing import Literal

from cerebras_appliance.contract.api import ExecuteJobStatus
from cerebras_appliance.handle.progress import failure_message

#: What a wait waits for: the job to finish, or every worker to have applied the env.
Until = Literal["finished", "ready"]

_FAILED_WORKER = re.compile(r"worker (\S+) failed \(exit code (-?\d+)")


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
