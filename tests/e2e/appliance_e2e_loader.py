"""The user code of the e2e jobs: ``appliance_e2e_loader:main NAME... [--exit=N] [--wait-release]``.

It is not in the worker image: the tests ship this file in a ConfigMap mounted at ``/e2e``, and
the job's tracked env sets ``PYTHONPATH=/e2e``. So the module imports at all only because the
worker re-executed itself with the job's PYTHONPATH (a start-up variable).

Prints, one line each (``E2E`` prefix, so tests find them among the worker's own lines):

* ``E2E env NAME=value`` for each NAME given (``<unset>`` when absent);
* ``E2E child NAME=value`` from a child process, for the first NAME;
* ``E2E names=A,B,...``: the names of every variable in ``os.environ``;
* ``E2E ready-marker=...``: the readiness marker's content when the user code started (the
  env hash; ``<missing>`` would mean the pod could be Ready before the env was applied);
* ``E2E done``, then exits with ``--exit=N`` (default 0).

``--wait-release`` first waits (up to 5 minutes) for ``/tmp/e2e-release`` to exist, so a test
can observe the worker Running and Ready before letting it finish.

``--hold`` runs ``sleep 600`` as a child and waits for it, printing ``E2E holding`` first: the
worker runs until it is stopped. Its ``finally`` prints ``E2E cleanup`` (the user code's own
clean-up on SIGTERM). ``--fail-index=I`` makes the worker with index I exit 3 at once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

RELEASE_FILE = Path("/tmp/e2e-release")
CHILD = "import os, sys; n = sys.argv[1]; print(f'E2E child {n}=' + os.environ.get(n, '<unset>'))"


def main(*args: str) -> int:
    names = [a for a in args if not a.startswith("--")]
    exit_code = 0
    for arg in args:
        if arg.startswith("--exit="):
            exit_code = int(arg.split("=", 1)[1])
        if arg == f"--fail-index={os.environ.get('APPLIANCE_WORKER_INDEX')}":
            print("E2E failing on purpose", flush=True)
            return 3
    for name in names:
        print(f"E2E env {name}={os.environ.get(name, '<unset>')}")
    sys.stdout.flush()
    if names:
        # The child writes to the same stdout: its line lands in the pod's log too.
        subprocess.run([sys.executable, "-c", CHILD, names[0]], check=True)
    print("E2E names=" + ",".join(sorted(os.environ)), flush=True)
    ready = os.environ.get("APPLIANCE_READY_FILE", "")
    marker = Path(ready).read_text().strip() if ready and Path(ready).exists() else "<missing>"
    print(f"E2E ready-marker={marker}", flush=True)
    if "--wait-release" in args:
        deadline = time.monotonic() + 300
        while not RELEASE_FILE.exists():
            if time.monotonic() > deadline:
                print("E2E release timed out", flush=True)
                return 99
            time.sleep(0.1)
        print("E2E released", flush=True)
    if "--hold" in args:
        try:
            print("E2E holding", flush=True)
            subprocess.run(["sleep", "600"], check=False)
        finally:
            print("E2E cleanup", flush=True)
    print("E2E done", flush=True)
    return exit_code
