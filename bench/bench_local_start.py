"""Local job start latency: submit() until every worker has applied the env and entered user
code, as a ratio to starting the same number of bare ``python -c`` processes that only report
that they started. Both sides are measured alternately in the same run; medians are printed.

The clock is CLOCK_MONOTONIC (``time.monotonic_ns``), shared by every process of the machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import entered_at, job_time  # bench/, this script's folder

import cerebras_appliance as app
from cerebras_appliance.environment import appliance_environ

USER_CODE = "import time; print('entered', time.monotonic_ns(), flush=True)\n"


def run_job(script: Path, replicas: int) -> float:
    return job_time(lambda: app.submit(str(script), replicas=replicas), expect=None)


def run_bare(replicas: int) -> float:
    start = time.monotonic_ns()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", USER_CODE], stdout=subprocess.PIPE, text=True, env={}
        )
        for _ in range(replicas)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    return (max(entered_at(o, expect=None) for o in outputs) - start) / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--vars", type=int, default=20, help="tracked variables in the snapshot")
    opts = parser.parse_args()

    for i in range(opts.vars):
        appliance_environ[f"BENCH_VAR_{i}"] = f"value-{i}"
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp, "user.py")
        script.write_text(USER_CODE)
        job_times, bare_times = [], []
        run_job(script, opts.replicas)  # warm caches (bytecode, page cache) for both sides
        run_bare(opts.replicas)
        for _ in range(opts.rounds):
            job_times.append(run_job(script, opts.replicas))
            bare_times.append(run_bare(opts.replicas))
    job, bare = statistics.median(job_times), statistics.median(bare_times)
    print(
        f"local start, {opts.replicas} workers, {opts.vars} vars: "
        f"submit->all in user code {job * 1e3:.0f} ms; "
        f"bare python -c {bare * 1e3:.0f} ms; ratio {job / bare:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
