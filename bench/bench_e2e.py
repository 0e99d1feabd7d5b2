"""Job start on a real kubelet: ``kubectl apply`` of an ExecuteJob until every worker is Ready
(its entrypoint applied the env), as a ratio to ``kubectl apply`` of the same number of bare
pods, same image, that become Ready once their Python is up. Both are measured alternately,
in the same run, on a kind cluster of one worker node (``hack/kind/up.sh --name
appliance-bench``: made if not up, and deleted again then; images from ``images/*.Dockerfile``,
``kind load``ed); the operator runs on this host (``python -m appliance_operator``).

Where the time goes is read from a pod watch (client-side times, CLOCK_MONOTONIC, which the
node containers and their pods share with this host: the user code prints its own
``time.monotonic_ns()``):

    job:  apply -> pod created (operator) -> bound (scheduler) -> container running (kubelet,
          containerd, runc) -> user code entered (worker: python, env file, os.environ) -> Ready
          (startup probe, 1 s period)
    bare: apply -> pod created -> bound -> container running -> python entered -> Ready

Needs what ``make e2e`` needs (docs/kind.md): Docker (or root to start the project's own).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

from appliance_operator.testing import OperatorProcess

REPO_ROOT = Path(__file__).resolve().parents[1]
KIND_SCRIPTS = REPO_ROOT / "hack" / "kind"
OFFLINE_SCRIPTS = REPO_ROOT / "hack" / "offline"  # the project's own dockerd
KIND_STATE = Path(os.environ.get("APPLIANCE_KIND_STATE") or REPO_ROOT / ".kind")
CLUSTER = os.environ.get("APPLIANCE_BENCH_KIND_CLUSTER", "appliance-bench")
KUBECONFIG = KIND_STATE / f"{CLUSTER}.kubeconfig"
ROUND_TIMEOUT_S = 180

#: The user code of both sides: report "entered" with the shared monotonic clock, mark
#: readiness (bare pods only: a worker's marker is written by its entrypoint), then idle.
SLEEPER = """\
import os, sys, time
print("entered", time.monotonic_ns(), flush=True)
if len(sys.argv) > 1:
    open(sys.argv[1], "w").close()
time.sleep(3600)
"""
MILESTONES = ("created", "bound", "running", "entered", "ready")


def now() -> int:
    return time.monotonic_ns()


@functools.cache
def bindir() -> str:
    """The pinned kubectl's directory (hack/offline/cluster-build/build.sh builds it once)."""
    build = REPO_ROOT / "hack" / "offline" / "cluster-build" / "build.sh"
    return (
        subprocess.run(["bash", str(build)], capture_output=True, text=True, check=True)
        .stdout.strip()
        .splitlines()[-1]
    )


def kubectl(*args: str, stdin: str | None = None, timeout: float = 120) -> str:
    proc = subprocess.run(
        [f"{bindir()}/kubectl", "--kubeconfig", str(KUBECONFIG), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def parse_env(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out


class PodWatch:
    """First time (monotonic ns) each pod of the namespace reached each milestone."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        from kubernetes import client, watch

        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace
        self.seen: dict[str, dict[str, int]] = defaultdict(dict)
        self.lock = threading.Lock()
        self.watch = watch.Watch()
        self.stopped = False
        self.error: Exception | None = None
        rv = self.core.list_namespaced_pod(namespace).metadata.resource_version
        self.thread = threading.Thread(target=self._run, args=(rv,), daemon=True)
        self.thread.start()

    def _run(self, resource_version: str) -> None:
        try:
            for event in self.watch.stream(
                self.core.list_namespaced_pod,
                self.namespace,
                resource_version=resource_version,
                timeout_seconds=3600,
            ):
                self._record(event["object"], now())
        except Exception as exc:  # the stream breaks when stop() closes it
            if not self.stopped:
                self.error = exc

    def _record(self, pod: Any, t: int) -> None:
        marks = {"created"}
        if pod.spec.node_name:
            marks.add("bound")
        for s in pod.status.container_statuses or []:
            if s.state and s.state.running:
                marks.add("running")
        if any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []):
            marks.add("ready")
        with self.lock:
            for mark in marks:
                self.seen[pod.metadata.name].setdefault(mark, t)

    def ready(self, names: set[str]) -> bool:
        if self.error is not None:
            raise RuntimeError(f"the pod watch failed: {self.error!r}")
        with self.lock:
            return all("ready" in self.seen.get(n, {}) for n in names)

    def reset(self) -> None:
        with self.lock:
            self.seen.clear()

    def stop(self) -> None:
        self.stopped = True
        self.watch.stop()


def pod_names(namespace: str, selector: str) -> set[str]:
    out = kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "name")
    return {line.split("/", 1)[1] for line in out.split()}


def entered_times(namespace: str, names: set[str]) -> dict[str, int]:
    times = {}
    for name in names:
        for line in kubectl("logs", "-n", namespace, name).splitlines():
            if line.startswith("entered "):
                times[name] = int(line.split()[1])
    return times


def wait_for(predicate: Any, what: str, timeout: float = ROUND_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def job_manifest(name: str, image: str, replicas: int, n_vars: int) -> dict[str, Any]:
    return {
        "apiVersion": "appliance.dev/v1alpha1",
        "kind": "ExecuteJob",
        "metadata": {"name": name, "labels": {"bench": name}},
        "spec": {
            "replicas": replicas,
            "image": image,
            "entrypoint": "/bench/sleeper.py",
            "env": [{"name": f"BENCH_VAR_{i}", "value": f"value-{i}"} for i in range(n_vars)],
            "template": {
                "imagePullPolicy": "Never",
                "volumes": [{"name": "bench", "configMap": {"name": "bench-sleeper"}}],
                "volumeMounts": [{"name": "bench", "mountPath": "/bench", "readOnly": True}],
            },
        },
    }


def bare_manifests(name: str, image: str, replicas: int) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"{name}-{i}", "labels": {"bench": name}},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                "terminationGracePeriodSeconds": 0,
                "containers": [
                    {
                        "name": "worker",
                        "image": image,
                        "imagePullPolicy": "Never",
                        "command": ["python3", "/bench/sleeper.py", "/tmp/ready"],
                        "readinessProbe": {
                            "exec": {"command": ["cat", "/tmp/ready"]},
                            "periodSeconds": 1,
                            "failureThreshold": 1,
                        },
                        "volumeMounts": [
                            {"name": "bench", "mountPath": "/bench", "readOnly": True}
                        ],
                    }
                ],
                "volumes": [{"name": "bench", "configMap": {"name": "bench-sleeper"}}],
            },
        }
        for i in range(replicas)
    ]


def run_round(
    kind: str, namespace: str, image: str, replicas: int, n_vars: int, pods: PodWatch
) -> dict[str, float]:
    """One job or one set of bare pods: seconds from apply to each milestone (slowest pod)."""
    name = f"{kind}-{uuid.uuid4().hex[:6]}"
    if kind == "job":
        docs = [job_manifest(name, image, replicas, n_vars)]
        selector = f"appliance.dev/job-name={name}"
    else:
        docs = bare_manifests(name, image, replicas)
        selector = f"bench={name}"
    manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
    pods.reset()
    start = now()
    kubectl("apply", "-n", namespace, "-f", "-", stdin=manifest)
    applied = now()

    def all_ready() -> bool:
        with pods.lock:
            names = {n for n in pods.seen if n.startswith(name)}
        return len(names) == replicas and pods.ready(names)

    wait_for(all_ready, f"{replicas} {kind} pods Ready")
    names = pod_names(namespace, selector)
    entered = entered_times(namespace, names)
    result = {"apply": (applied - start) / 1e9}
    with pods.lock:
        for mark in MILESTONES:
            if mark == "entered":
                times = [entered[n] for n in names]
            else:
                times = [pods.seen[n][mark] for n in names]
            result[mark] = (max(times) - start) / 1e9
    # Clean up before the next round (not timed).
    if kind == "job":
        kubectl("delete", "-n", namespace, "executejob", name, "--wait=false")
    kubectl("delete", "pods", "-n", namespace, "-l", selector, "--grace-period=0", "--force")
    wait_for(lambda: not pod_names(namespace, selector), f"{kind} pods deleted")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--vars", type=int, default=20, help="tracked variables in the job")
    args = parser.parse_args()
    own_docker = subprocess.run(
        ["bash", str(OFFLINE_SCRIPTS / "dockerd.sh"), "status"], capture_output=True, check=False
    )
    t = now()
    up = subprocess.run(
        [
            "bash", str(KIND_SCRIPTS / "up.sh"), "--name", CLUSTER, "--workers", "1",
            "--images", "--kubeconfig", str(KUBECONFIG),
        ],
        stdout=subprocess.PIPE,
        text=True,
        timeout=3600,
        check=False,
    )  # fmt: skip
    if up.returncode != 0:
        print(f"hack/kind/up.sh failed (exit {up.returncode}); see its output", file=sys.stderr)
        return 1
    env = parse_env(up.stdout)
    created = env.get("CREATED") == "1"
    how = "made" if created else "reused"
    print(f"kind cluster {CLUSTER} up in {(now() - t) / 1e9:.1f}s ({how})")
    image = env["WORKER_IMAGE"]

    from kubernetes import config as k8s_config

    api_client = k8s_config.new_client_from_config(config_file=str(KUBECONFIG))
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", namespace)
    operator: OperatorProcess | None = None
    pods = None
    try:
        for crd in ("executejobs", "workerpools"):  # the operator watches both
            kubectl("apply", "--server-side", "-f", str(REPO_ROOT / f"crds/{crd}.yaml"))
            kubectl("wait", "--for=condition=Established", f"crd/{crd}.appliance.dev")
        wait_for(
            lambda: bool(kubectl("get", "sa", "-n", namespace, "--ignore-not-found", "-o", "name")),
            "the namespace's default ServiceAccount",
        )
        kubectl(
            "create",
            "configmap",
            "bench-sleeper",
            "-n",
            namespace,
            f"--from-literal=sleeper.py={SLEEPER}",
        )
        log_path = KIND_STATE / "logs" / "bench-operator.log"
        operator = OperatorProcess(str(KUBECONFIG), log_path, ["--all-namespaces"])
        operator.start()
        pods = PodWatch(api_client, namespace)
        # One unmeasured round each: the first pod of an image pays one-off costs (page cache).
        run_round("bare", namespace, image, args.replicas, args.vars, pods)
        run_round("job", namespace, image, args.replicas, args.vars, pods)
        results: dict[str, list[dict[str, float]]] = {"job": [], "bare": []}
        for i in range(args.rounds):
            for kind in ("job", "bare") if i % 2 == 0 else ("bare", "job"):
                results[kind].append(
                    run_round(kind, namespace, image, args.replicas, args.vars, pods)
                )
    finally:
        if pods is not None:
            pods.stop()
        if operator is not None:
            operator.stop()
        kubectl("delete", "namespace", namespace, "--wait=false")
        api_client.close()
        if created:
            down = ["bash", str(KIND_SCRIPTS / "down.sh"), "--name", CLUSTER]
            if own_docker.returncode == 0:
                down.append("--keep-docker")  # it ran before: leave it as it was
            subprocess.run(down, timeout=600, check=False)

    def med(kind: str, mark: str) -> float:
        return statistics.median(r[mark] for r in results[kind])

    print(
        f"\n{args.replicas} workers, {args.vars} tracked variables, {args.rounds} rounds "
        "(medians, seconds since `kubectl apply` started; slowest pod):"
    )
    labels = {
        "apply": "kubectl apply returned",
        "created": "pods created",
        "bound": "pods bound to the node",
        "running": "(kubelet reports Running)",
        "entered": "user code entered",
        "ready": "pods Ready",
    }
    print(f"  {'milestone':<32}{'ExecuteJob':>12}{'bare pods':>12}")
    for mark in ("apply", *MILESTONES):
        print(f"  {labels[mark]:<32}{med('job', mark):>12.3f}{med('bare', mark):>12.3f}")
    print("\nwhere the time goes (ExecuteJob vs bare pods, per step):")
    steps = [
        ("start", "created", "apiserver + operator (Secret, pods)"),
        ("created", "bound", "scheduler"),
        ("bound", "entered", "kubelet + containerd + runc + python start + worker entrypoint"),
        ("entered", "ready", "readiness (worker: startup probe, bare: readiness probe, 1 s)"),
    ]
    for a, b, what in steps:
        d_job = med("job", b) - (med("job", a) if a != "start" else 0.0)
        d_bare = med("bare", b) - (med("bare", a) if a != "start" else 0.0)
        print(f"  {a:>7} -> {b:<7} {d_job:6.3f}s vs {d_bare:6.3f}s  {what}")
    ratio = med("job", "ready") / med("bare", "ready")
    print(
        f"\nall workers Ready: {med('job', 'ready'):.3f}s vs bare pods {med('bare', 'ready'):.3f}s"
        f" -> ratio {ratio:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
