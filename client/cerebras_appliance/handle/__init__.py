"""The job handle both backends return (:class:`JobHandle`), and what it raises.

Waiting, log streaming, progress, Ctrl-C and the async variants are written once here; a
backend implements the primitives :class:`JobHandle` declares.
"""

from cerebras_appliance.handle.base import (
    AttemptRef,
    JobDeletedError,
    JobError,
    JobFailedError,
    JobHandle,
    JobNotFoundError,
    JobSuspendedError,
    JobTimeoutError,
    LogLine,
    split_lines,
)

__all__ = [
    "AttemptRef",
    "JobDeletedError",
    "JobError",
    "JobFailedError",
    "JobHandle",
    "JobNotFoundError",
    "JobSuspendedError",
    "JobTimeoutError",
    "LogLine",
    "split_lines",
]
