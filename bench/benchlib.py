"""What the local benchmarks share: when each worker entered the user's code, how long a job
took to get every worker there, and percentiles."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def entered_at(text: str, expect: str | None = "value-0") -> int:
    """The ``time.monotonic_ns()`` a worker printed on its ``entered <ns> [<value>]`` line;
    ``expect``: the snapshot value the line must carry (the worker saw the env)."""
    for line in text.splitlines():
        if line.startswith("entered "):
            parts = line.split()
            if expect is not None and parts[2:3] != [expect]:
                raise RuntimeError(f"the worker did not see the snapshot: {line!r}")
            return int(parts[1])
    raise RuntimeError(f"no 'entered' line in worker output:\n{text}")


def job_time(submit: Callable[[], Any], expect: str | None = "value-0") -> float:
    """Seconds from ``submit()`` to the last worker's first line of user code; the job must
    succeed, and is deleted."""
    start = time.monotonic_ns()
    job = submit()
    try:
        status = job.wait(timeout=120, progress=False)
        logs = job.logs()
        if status.phase != "Succeeded":
            raise RuntimeError(f"bench job failed: {logs}")
        return (max(entered_at(t, expect) for t in logs.values()) - start) / 1e9
    finally:
        job.delete()


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]
