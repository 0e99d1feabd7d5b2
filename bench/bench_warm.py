"""Warm pools against cold starts: the time from the client's create call (``submit``) to
the user code's first line with the env applied, in every worker of the job (the slowest).

Local backend (this run): ``--replicas`` (4) workers; three sides measured alternately in
the same run, ``--jobs`` (>= 20) rounds each:

* warm: ``submit(..., pool=LocalPool(...))``, claiming pre-started workers (the pool is
  refilled between rounds, outside the measured time, as a pool does between jobs);
* cold: ``submit(...)`` starting the workers;
* bare: the baseline, ``--replicas`` concurrent ``python -c`` processes that only print that
  they started (the cost of the interpreter starts a warm pool saves).

The user code prints ``time.monotonic_ns()`` (CLOCK_MONOTONIC, shared by every process of the
machine) and the env it sees is checked. p50/p90 are printed with the ratios warm/bare and
warm/cold. The target (issue 12): warm p50 <= 0.25x bare.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cerebras_appliance as app
from cerebras_appliance.environment import appliance_environ
from cerebras_appliance.pool import LocalPool

USER_CODE = (
    "import time; t = time.monotonic_ns()\n"
    "import os; print('entered', t, os.environ.get('BENCH_VAR_0'), flush=True)\n"
)
BARE_CODE = "import time; print('entered', time.monotonic_ns(), 'value-0', flush=True)\n"


def entered_at(text: str) -> int:
    for line in text.splitlines():
        if line.startswith("entered "):
            _, stamp, value = line.split()
            if value != "value-0":
                raise RuntimeError(f"the worker did not see the snapshot: {line!r}")
            return int(stamp)
    raise RuntimeError(f"no 'entered' line in worker output:\n{text}")


def run_job(script: Path, replicas: int, pool: LocalPool | None) -> float:
    start = time.monotonic_ns()
    job = app.submit(str(script), replicas=replicas, pool=pool)
    try:
        status = job.wait(timeout=120, progress=False)
        logs = job.logs()
        if status.phase != "Succeeded":
            raise RuntimeError(f"bench job failed: {logs}")
        return (max(entered_at(t) for t in logs.values()) - start) / 1e9
    finally:
        job.delete()


def run_bare(replicas: int) -> float:
    start = time.monotonic_ns()
    procs = [
        subprocess.Popen([sys.executable, "-c", BARE_CODE], stdout=subprocess.PIPE, text=True)
        for _ in range(replicas)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    return (max(entered_at(o) for o in outputs) - start) / 1e9


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def report(label: str, values: list[float]) -> str:
    return f"{label} p50 {pct(values, 50) * 1e3:7.1f} ms  p90 {pct(values, 90) * 1e3:7.1f} ms"


def local(opts: argparse.Namespace) -> None:
    for i in range(opts.vars):
        appliance_environ[f"BENCH_VAR_{i}"] = f"value-{i}"
    with tempfile.TemporaryDirectory() as tmp, LocalPool(size=opts.replicas) as pool:
        script = Path(tmp, "user.py")
        script.write_text(USER_CODE)
        warm: list[float] = []
        cold: list[float] = []
        bare: list[float] = []
        # One unmeasured round of each: bytecode and page caches warm for every side.
        for sample in (lambda: run_bare(opts.replicas), lambda: run_job(script, 1, None)):
            sample()
        for _ in range(opts.jobs):
            if not pool.wait_idle(timeout=120):
                raise RuntimeError(f"the pool did not refill: {pool.counts()}")
            warm.append(run_job(script, opts.replicas, pool))
            cold.append(run_job(script, opts.replicas, None))
            bare.append(run_bare(opts.replicas))
        if pool.counts().cold_fallbacks:
            raise RuntimeError(f"a warm round started cold workers: {pool.counts()}")
    w50, c50, b50 = pct(warm, 50), pct(cold, 50), pct(bare, 50)
    print(f"local backend, {opts.replicas} workers, {opts.vars} vars, {opts.jobs} jobs per side")
    print("  " + report("warm (pool)      ", warm))
    print("  " + report("cold (submit)    ", cold))
    print("  " + report("bare python -c   ", bare))
    print(
        f"  ratio warm/bare {w50 / b50:.3f}x (target <= 0.25x: "
        f"{'met' if w50 <= 0.25 * b50 else 'NOT met'}); warm/cold {w50 / c50:.3f}x"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--vars", type=int, default=20, help="tracked variables in the snapshot")
    opts = parser.parse_args()
    if opts.jobs < 20:
        parser.error("--jobs: p90 needs at least 20 jobs per side")
    local(opts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
