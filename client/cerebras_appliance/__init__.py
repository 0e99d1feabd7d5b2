"""cerebras_appliance: send the variables set through ``appliance_environ`` to input workers.

>>> import cerebras_appliance as app
>>> app.environ is app.appliance_environ
True
"""

from cerebras_appliance.api import ExecuteJob, ExecuteJobSpec, ExecuteJobStatus, InvalidJobError
from cerebras_appliance.environment import ApplianceEnviron, appliance_environ
from cerebras_appliance.jobs import Job, build_job, submit

#: The same object as :data:`appliance_environ` (the original docs call it ``app.environ``).
environ = appliance_environ

__version__ = "0.1.0"

__all__ = [
    "ApplianceEnviron",
    "ExecuteJob",
    "ExecuteJobSpec",
    "ExecuteJobStatus",
    "InvalidJobError",
    "Job",
    "appliance_environ",
    "build_job",
    "environ",
    "submit",
]
