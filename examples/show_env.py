"""An input worker's user code: print what it sees of the variables named on the command line.

Runs inside a worker (local subprocess or pod) through ``python -m cerebras_appliance.worker``.
A child process prints the first variable too, to show the values reach child processes.
"""

import os
import subprocess
import sys

worker = os.environ.get("APPLIANCE_WORKER_NAME", "worker")
for name in sys.argv[1:]:
    value = os.environ.get(name)
    print(f"{worker}: {name}={value}" if value is not None else f"{worker}: {name} is absent")
if len(sys.argv) > 1:
    first = sys.argv[1]
    child = f"import os; print('{worker} child process: {first}=' + str(os.environ.get('{first}')))"
    subprocess.run([sys.executable, "-c", child], check=True)
