"""End to end through the client: a user program sets ``appliance_environ`` and calls
``submit(backend="kubernetes")``; the operator runs the workers on the real node.

The program runs in a fresh interpreter (as a user's would), with only the cluster's kubeconfig
in its environment to find the cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from support.kind import Loader, NodeCluster, Operator

PROGRAM = r"""
import json, os, sys
from cerebras_appliance import appliance_environ, submit

cfg = json.loads(sys.argv[1])
appliance_environ["DATA_ROOT"] = "/mnt/from-client"
appliance_environ["API_TOKEN"] = "client-secret-e2e"      # sent as a Secret (sensitive)
appliance_environ["PYTHONPATH"] = cfg["loader_path"]        # makes the loader importable
os.environ["LOCAL_ONLY"] = "1"                              # visible here, never sent
job = submit(
    cfg["entrypoint"],
    replicas=2,
    args=["DATA_ROOT", "API_TOKEN", "LOCAL_ONLY"],
    name="client-e2e",
    backend="kubernetes",
    namespace=cfg["namespace"],
    image=cfg["image"],
    sensitive=["API_TOKEN"],
    template=cfg["template"],
)
appliance_environ["DATA_ROOT"] = "/mnt/changed-after-submit"  # the job keeps its snapshot
status = job.wait(timeout=cfg["timeout"])
print(json.dumps({"phase": status.phase, "manifest": job.manifest, "logs": job.logs()}))
"""


def test_submit_kubernetes_backend(
    cluster: NodeCluster, namespace: str, operator: Operator, loader: Loader
) -> None:
    cfg = {
        "namespace": namespace,
        "image": cluster.worker_image,
        "entrypoint": loader.entrypoint,
        "loader_path": loader.path,
        "template": {**loader.template, "imagePullPolicy": "Never"},
        "timeout": 180,
    }
    env = {"PATH": os.environ.get("PATH", ""), "KUBECONFIG": cluster.kubeconfig}
    proc = subprocess.run(
        [sys.executable, "-c", PROGRAM, json.dumps(cfg)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    operator.check_alive()
    assert proc.returncode == 0, f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["phase"] == "Succeeded", result

    # The sensitive value went to a Secret, never into the ExecuteJob.
    spec_env = {e["name"]: e for e in result["manifest"]["spec"]["env"]}
    assert "value" not in spec_env["API_TOKEN"]
    assert "client-secret-e2e" not in json.dumps(result["manifest"])
    assert set(spec_env) == {"DATA_ROOT", "API_TOKEN", "PYTHONPATH"}

    logs = result["logs"]
    assert sorted(logs) == ["client-e2e-worker-0", "client-e2e-worker-1"]
    for pod, log in logs.items():
        live = cluster.pod_logs(namespace, pod)
        assert log == live  # job.logs() returns the pods' logs
        seen = loader.parse(log)
        assert seen.get("env DATA_ROOT") == "/mnt/from-client", log
        assert seen.get("env API_TOKEN") == "client-secret-e2e", log
        assert seen.get("env LOCAL_ONLY") == "<unset>", log
        assert seen.get("child DATA_ROOT") == "/mnt/from-client", log
        names = set(seen.get("names", "").split(","))
        assert loader.untracked(names, set(spec_env)) == set(), log
        assert "E2E done" in log
