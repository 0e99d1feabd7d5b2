"""A local warm pool: worker processes started before any job, claimed one per job worker.

>>> pool = LocalPool(size=4, imports=["json"])          # doctest: +SKIP
>>> job = pool.submit("loader.py", replicas=4)          # or submit(..., pool=pool)

The processes are :class:`~cerebras_appliance.backends.local.pool.ProcessPool`'s; this class
adds :meth:`submit`, which is :func:`cerebras_appliance.submit` with ``pool=self`` (it lives
here, beside ``submit``, because the backend below must not import the layer that chooses it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cerebras_appliance.backends.local.pool import ProcessPool
from cerebras_appliance.handle import JobHandle
from cerebras_appliance.jobs import submit


class LocalPool(ProcessPool):
    """Keep ``size`` warm workers; ``imports``: modules each imports while warming;
    ``startup_variables``: variables those modules read at import (a job setting one of them
    re-executes its worker, as for PYTHONPATH)."""

    def submit(
        self, entrypoint: str | Callable[..., Any], replicas: int = 1, **kwargs: Any
    ) -> JobHandle:
        """``cerebras_appliance.submit(..., pool=self)``."""
        return submit(entrypoint, replicas, pool=self, **kwargs)
