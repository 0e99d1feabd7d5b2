# %% [markdown]
# # Submit, watch, follow: the client from a notebook
#
# Cells (`# %%`) run as they are in Jupyter, VS Code or `python examples/notebook_quickstart.py`.
# The local backend needs nothing else; pass `--kubernetes` (or set `BACKEND=kubernetes`) to run
# the same on a cluster with the operator: the function below travels with the job, so the
# worker image needs only this package, not your code.

# %%
import os
import sys

import cerebras_appliance as app
from cerebras_appliance.environment import appliance_environ

backend = "kubernetes" if "--kubernetes" in sys.argv else os.environ.get("BACKEND", "local")

# A stand-in for a dataloader, defined right here: submit() sends the function itself to the
# workers (by value, with what it closes over), so no image is built for an edit.
SHARDS = 3


def loader() -> int:
    import os
    import time

    name = os.environ["APPLIANCE_WORKER_NAME"]
    for step in range(SHARDS):
        print(f"{os.environ['DATA_ROOT']}: shard {step}", flush=True)
        time.sleep(0.5)
    return 3 if name.endswith("-worker-1") else 0  # the first attempt of worker 1 fails


# %% Only what is set through appliance_environ reaches the workers.
appliance_environ["DATA_ROOT"] = "/mnt/data"

# %% Submit; `with` deletes the job (and stops its workers) when the block ends.
with app.submit(loader, replicas=2, backoff_limit=1, backend=backend) as job:
    # Lines arrive as workers write them, prefixed by the attempt; worker 1's replacement
    # (<job>-worker-1-1) follows its failed first attempt. Ctrl-C (or "Interrupt kernel")
    # deletes the job: pass on_interrupt="keep" to leave it running.
    for line in job.logs(follow=True):
        print(line)

    # A progress bar on a terminal or in Jupyter, plain lines in a log; raises
    # JobFailedError (with the worker and exit code) if the job failed.
    status = job.result(timeout=300)
    print(status.phase, f"{status.succeeded}/{status.replicas} succeeded, {status.failed} failed")
    print("worker 1, last line:", job.logs(worker=1, tail=1).strip())

# %% After a kernel restart (Kubernetes): job = app.get_job("<name>", namespace="team-a")
