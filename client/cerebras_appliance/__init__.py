"""cerebras_appliance: send the variables set through ``appliance_environ`` to input workers.

>>> import cerebras_appliance as app
>>> app.environ is app.appliance_environ
True

Only :mod:`cerebras_appliance.environment` is imported eagerly: the worker entrypoint imports
this package before the user's code runs, and its start-up time is a headline figure. The
job API (pydantic) loads on first use of ``submit`` and friends.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cerebras_appliance.environment import ApplianceEnviron, appliance_environ

if TYPE_CHECKING:
    from cerebras_appliance.contract.api import (
        ExecuteJob,
        ExecuteJobSpec,
        ExecuteJobStatus,
        InvalidJobError,
    )
    from cerebras_appliance.handle import (
        JobDeletedError,
        JobError,
        JobFailedError,
        JobNotFoundError,
        JobSuspendedError,
        JobTimeoutError,
        LogLine,
    )
    from cerebras_appliance.jobs import Job, build_job, get_job, submit

#: The same object as :data:`appliance_environ` (the original docs call it ``app.environ``).
environ = appliance_environ

__version__ = "0.1.0"

_LAZY = {
    "ExecuteJob": "cerebras_appliance.contract.api",
    "ExecuteJobSpec": "cerebras_appliance.contract.api",
    "ExecuteJobStatus": "cerebras_appliance.contract.api",
    "InvalidJobError": "cerebras_appliance.contract.api",
    "Job": "cerebras_appliance.jobs",
    "JobDeletedError": "cerebras_appliance.handle",
    "JobError": "cerebras_appliance.handle",
    "JobFailedError": "cerebras_appliance.handle",
    "JobNotFoundError": "cerebras_appliance.handle",
    "JobSuspendedError": "cerebras_appliance.handle",
    "JobTimeoutError": "cerebras_appliance.handle",
    "LogLine": "cerebras_appliance.handle",
    "build_job": "cerebras_appliance.jobs",
    "get_job": "cerebras_appliance.jobs",
    "submit": "cerebras_appliance.jobs",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cerebras_appliance' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "ApplianceEnviron",
    "ExecuteJob",
    "ExecuteJobSpec",
    "ExecuteJobStatus",
    "InvalidJobError",
    "Job",
    "JobDeletedError",
    "JobError",
    "JobFailedError",
    "JobNotFoundError",
    "JobSuspendedError",
    "JobTimeoutError",
    "LogLine",
    "appliance_environ",
    "build_job",
    "environ",
    "get_job",
    "submit",
]
