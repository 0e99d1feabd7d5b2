"""End to end from inside the cluster: the Python client in a user pod, as platform teams run it.

The pod runs the user image (``images/user.Dockerfile``) under the ServiceAccount of
``examples/user-rbac.yaml`` (bound to that Role and nothing else), with the client's
configuration in its environment only. ``tests/e2e/user_pod_script.py`` is the user's program:
it sets variables through ``appliance_environ`` and submits with no backend, namespace or image
argument. The operator is the e2e host operator, the workers run ``appliance_e2e_loader``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from support.cluster import WaitUntil
    from support.kind import KindCluster, Loader, Operator

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
SCRIPT = HERE / "user_pod_script.py"
RBAC = REPO_ROOT / "examples" / "user-rbac.yaml"
ACCOUNT = "appliance-user"
POD_TIMEOUT_S = 300


def _setup(cluster: KindCluster, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", str(RBAC))
    cluster.kubectl("create", "configmap", "user-script", "-n", namespace, f"--from-file={SCRIPT}")


def _can_i(cluster: KindCluster, namespace: str, verb: str, resource: str) -> bool:
    proc = cluster.kubectl(
        "auth", "can-i", verb, resource, "-n", namespace,
        f"--as=system:serviceaccount:{namespace}:{ACCOUNT}", check=False,
    )  # fmt: skip
    answer = proc.stdout.split(maxsplit=1)[0] if proc.stdout.strip() else ""  # "no - RBAC: ..."
    assert answer in ("yes", "no"), proc
    return answer == "yes"


def _run_user_pod(
    cluster: KindCluster,
    namespace: str,
    wait_until: WaitUntil,
    name: str,
    mode: str,
    env: dict[str, str],
    template: dict[str, Any],
) -> str:
    """Run the user's program in a pod; return its log once it has exited 0."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "serviceAccountName": ACCOUNT,
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "user",
                    "image": cluster.user_image,
                    "imagePullPolicy": "Never",
                    "command": [
                        "python3",
                        "/script/user_pod_script.py",
                        mode,
                        json.dumps(template),
                    ],
                    "env": [{"name": k, "value": v} for k, v in env.items()],
                    "volumeMounts": [{"name": "script", "mountPath": "/script"}],
                }
            ],
            "volumes": [{"name": "script", "configMap": {"name": "user-script"}}],
        },
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod))

    def finished() -> str | None:
        phase = cluster.kubectl(
            "get", "pod", name, "-n", namespace, "-o", "jsonpath={.status.phase}"
        ).stdout.strip()
        return phase if phase in ("Succeeded", "Failed") else None

    phase = wait_until(finished, timeout=POD_TIMEOUT_S, interval=1, what=f"user pod {name}")
    log = cluster.pod_logs(namespace, name)
    assert phase == "Succeeded", f"user pod {name} {phase}:\n{log}"
    return log


def _tagged(log: str, tag: str) -> Any:
    found = re.findall(rf"^E2E-USER {tag} (.*)$", log, flags=re.MULTILINE)
    assert len(found) == 1, log
    return json.loads(found[0])


def test_a_user_pod_with_the_example_role_submits_follows_and_reads_logs(
    cluster: KindCluster,
    namespace: str,
    operator: Operator,
    loader: Loader,
    wait_until: WaitUntil,
) -> None:
    _setup(cluster, namespace)
    # The Role reads no Secret: the client only creates the values Secret.
    assert not _can_i(cluster, namespace, "get", "secrets")
    assert not _can_i(cluster, namespace, "list", "secrets")
    assert _can_i(cluster, namespace, "create", "executejobs.appliance.dev")

    # Only the worker image: the backend is "auto" (in a pod that may create ExecuteJobs:
    # Kubernetes), the namespace is the pod's own.
    env = {"APPLIANCE_WORKER_IMAGE": cluster.worker_image}
    template = {**loader.template, "imagePullPolicy": "Never"}
    log = _run_user_pod(cluster, namespace, wait_until, "user", "submit", env, template)
    operator.check_alive()
    result = _tagged(log, "result")

    assert result["phase"] == "Succeeded", log
    assert result["backend"] == "KubernetesJob"
    assert result["namespace"] == namespace
    assert result["image"] == cluster.worker_image
    # Tracked variables only; the configuration variable set through appliance_environ and
    # the os.environ one were not sent.
    assert result["env"] == ["DATA_ROOT", "API_TOKEN", "PYTHONPATH"]

    logs: dict[str, str] = result["logs"]
    assert len(logs) == 2, logs
    tracked = {"DATA_ROOT", "API_TOKEN", "PYTHONPATH"}
    for pod, worker_log in logs.items():
        seen = loader.parse(worker_log)
        assert seen["env DATA_ROOT"] == "/mnt/from-the-user-pod", (pod, worker_log)
        assert seen["env API_TOKEN"] == "user-pod-secret", (pod, worker_log)
        assert seen["env LOCAL_ONLY"] == "<unset>", (pod, worker_log)
        assert seen["env APPLIANCE_WORKER_IMAGE"] == "<unset>", (pod, worker_log)
        assert seen["child DATA_ROOT"] == "/mnt/from-the-user-pod"
        assert loader.untracked(set(seen["names"].split(",")), tracked) == set(), worker_log
        # The followed lines reached the user pod's own output as the workers wrote them.
        assert f"E2E-USER log [{pod}] E2E env DATA_ROOT=/mnt/from-the-user-pod" in log
    # The with-block deleted the job (the Role's delete).
    remaining = cluster.kubectl("get", "executejobs", "-n", namespace, "-o", "name").stdout
    assert remaining.strip() == ""


def test_the_same_pod_without_the_role_is_told_the_verb_resource_and_role(
    cluster: KindCluster,
    namespace: str,
    operator: Operator,
    loader: Loader,
    wait_until: WaitUntil,
) -> None:
    _setup(cluster, namespace)
    cluster.kubectl("delete", "role", ACCOUNT, "-n", namespace)
    wait_until(
        lambda: not _can_i(cluster, namespace, "create", "executejobs.appliance.dev"),
        timeout=30,
        what="the Role's removal to take effect",
    )
    env = {"APPLIANCE_BACKEND": "kubernetes", "APPLIANCE_WORKER_IMAGE": cluster.worker_image}
    template = {**loader.template, "imagePullPolicy": "Never"}
    log = _run_user_pod(cluster, namespace, wait_until, "user-refused", "refused", env, template)

    error = _tagged(log, "error")
    assert error is not None, log
    assert error["type"] == "ForbiddenError", error
    assert error["attrs"] == ["create", "executejobs.appliance.dev"]
    message = error["message"]
    assert "'create executejobs.appliance.dev'" in message, message
    assert f"system:serviceaccount:{namespace}:{ACCOUNT}" in message, message
    assert f"namespace {namespace!r}" in message, message
    assert "Role 'appliance-user' of examples/user-rbac.yaml" in message, message
    assert "user-pod-secret" not in message
    # Nothing was created.
    assert cluster.kubectl("get", "executejobs", "-n", namespace, "-o", "name").stdout == ""

    # backend "auto" in the same pod: it may not create ExecuteJobs, so it runs locally, and
    # says why.
    auto = _tagged(log, "auto")
    assert auto["backend"] == "LocalJob", auto
    assert auto["phase"] == "Succeeded", auto
    assert len(auto["warnings"]) == 1, auto
    assert "may not create executejobs.appliance.dev" in auto["warnings"][0], auto
    assert "APPLIANCE_BACKEND=kubernetes" in auto["warnings"][0], auto
