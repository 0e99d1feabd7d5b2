"""The job handle both backends return (:class:`JobHandle`), and what it raises.

Waiting, log streaming, progress, Ctrl-C and the async variants are written once here
(:mod:`.base`); a backend implements the interface :class:`JobBackend` declares
(:mod:`.backend`). The errors are in :mod:`.errors`, log streaming in :mod:`.logs`, the
Ctrl-C prompt in :mod:`.interrupt`, the progress displays in :mod:`.progress`.
"""

from cerebras_appliance.handle.backend import AttemptRef, JobBackend
from cerebras_appliance.handle.base import JobHandle
from cerebras_appliance.handle.errors import (
    JobDeletedError,
    JobError,
    JobFailedError,
    JobNotFoundError,
    JobSuspendedError,
    JobTimeoutError,
)
from cerebras_appliance.handle.logs import LogLine, split_lines

__all__ = [
    "AttemptRef",
    "JobBackend",
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
