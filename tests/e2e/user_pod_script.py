"""The user's program of ``test_user_pod_e2e.py``: runs in a pod of the user image, under the
ServiceAccount of ``examples/user-rbac.yaml``, with the client's configuration in the pod's
environment only (no backend, namespace or image argument).

``user_pod_script.py submit TEMPLATE_JSON``: sets variables through ``appliance_environ`` (and
one through ``os.environ``), submits two workers running ``appliance_e2e_loader``, follows
their logs to the end, and prints ``E2E-USER result {json}`` (phase, backend, namespace, the
job's spec.env names, the workers' logs).

``user_pod_script.py refused TEMPLATE_JSON``: submits with ``$APPLIANCE_BACKEND`` as the pod
has it (``kubernetes``), prints the error (``E2E-USER error {json}``), then sets
``APPLIANCE_BACKEND=auto`` through ``appliance_environ`` and submits again: ``auto`` warns
and picks the local backend (``E2E-USER auto {json}``).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import warnings

import cerebras_appliance as app
from cerebras_appliance.environment import appliance_environ

ARGS = ["DATA_ROOT", "API_TOKEN", "LOCAL_ONLY", "APPLIANCE_WORKER_IMAGE"]


def out(tag: str, data: object) -> None:
    print(f"E2E-USER {tag} {json.dumps(data)}", flush=True)


def main(mode: str, template_json: str) -> int:
    template = json.loads(template_json)
    appliance_environ["DATA_ROOT"] = "/mnt/from-the-user-pod"
    appliance_environ["API_TOKEN"] = "user-pod-secret"
    appliance_environ["PYTHONPATH"] = "/e2e"  # where the loader is mounted in the workers
    os.environ["LOCAL_ONLY"] = "stays-in-the-user-pod"  # untracked: never sent
    # A configuration variable set through appliance_environ: read, never sent.
    appliance_environ["APPLIANCE_WORKER_IMAGE"] = os.environ["APPLIANCE_WORKER_IMAGE"]
    entry = "appliance_e2e_loader:main"
    if mode == "submit":
        with app.submit(entry, replicas=2, args=ARGS, template=template) as job:
            for line in job.logs(follow=True):
                print(f"E2E-USER log {line}", flush=True)
            status = job.result(timeout=240)
            out(
                "result",
                {
                    "phase": status.phase,
                    "backend": type(job).__name__,
                    "namespace": getattr(job, "namespace", None),
                    "image": job.manifest["spec"]["image"],
                    "env": [e["name"] for e in job.manifest["spec"]["env"]],
                    "logs": job.logs(),
                },
            )
        return 0
    try:
        app.submit(entry, replicas=1, args=ARGS, template=template)
    except Exception as exc:
        out("error", {"type": type(exc).__name__, "message": str(exc),
                      "attrs": [getattr(exc, a, None) for a in ("verb", "resource")]})  # fmt: skip
    else:
        out("error", None)
    appliance_environ["APPLIANCE_BACKEND"] = "auto"  # read at call time
    noop = os.path.join(tempfile.mkdtemp(), "noop.py")
    with open(noop, "w") as f:
        f.write("print('E2E local worker')\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        job = app.submit(noop, replicas=1)
        status = job.wait(timeout=60, progress=False)
        job.delete()
    out("auto", {"backend": type(job).__name__, "phase": status.phase,
                 "warnings": [str(w.message) for w in caught]})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
