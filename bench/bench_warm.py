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

Kubernetes (``--kubernetes``): see :func:`kubernetes`; target warm p50 <= 100 ms, 8 workers.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import entered_at, job_time, pct  # bench/, this script's folder

import cerebras_appliance as app
from cerebras_appliance.backends.local.state import base_environment
from cerebras_appliance.environment import appliance_environ
from cerebras_appliance.pool import LocalPool

USER_CODE = (
    "import time; t = time.monotonic_ns()\n"
    "import os; print('entered', t, os.environ.get('BENCH_VAR_0'), flush=True)\n"
)
BARE_CODE = "import time; print('entered', time.monotonic_ns(), 'value-0', flush=True)\n"


def run_job(script: Path, replicas: int, pool: LocalPool | None) -> float:
    return job_time(lambda: app.submit(str(script), replicas=replicas, pool=pool))


def run_bare(replicas: int) -> float:
    start = time.monotonic_ns()
    env = base_environment(os.environ)  # what a local worker starts from
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", BARE_CODE], stdout=subprocess.PIPE, text=True, env=env
        )
        for _ in range(replicas)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    return (max(entered_at(o) for o in outputs) - start) / 1e9


def report(label: str, values: list[float]) -> str:
    return f"{label} p50 {pct(values, 50) * 1e3:7.1f} ms  p90 {pct(values, 90) * 1e3:7.1f} ms"


def local(opts: argparse.Namespace) -> None:
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
            # The pool refills before each other side too: no side shares the CPU with it.
            pool.wait_idle(timeout=120)
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


# -- Kubernetes ------------------------------------------------------------------------------

K8S_USER_CODE = (
    "import time; t = time.monotonic_ns()\n"
    "import os; print('entered', t, os.environ.get('BENCH_VAR_0'), flush=True)\n"
)
POOL = "bench"


def kubernetes(opts: argparse.Namespace) -> None:
    """The operator as the chart's pod in a fresh namespace of the cluster ``$KUBECONFIG``
    names (kind: ``make kind-e2e-up``), a WorkerPool of ``--k8s-replicas`` idle workers, and
    ``--jobs`` jobs of that many workers each way, alternately: warm (``submit(...,
    pool=...)``) and cold (``submit(...)``). The pool is refilled between rounds, outside the
    measured time. Times: ``submit()`` called -> the slowest worker's first line of user code
    (its ``time.monotonic_ns()``: kind's nodes are containers of this machine's kernel, the
    clock is shared)."""
    import uuid

    from kubernetes import client

    from cerebras_appliance.backends.kubernetes import new_api_client

    api = new_api_client()
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    ns = f"bench-warm-{uuid.uuid4().hex[:6]}"
    repo = Path(__file__).resolve().parents[1]

    def sh(*args: str) -> str:
        return subprocess.run(args, check=True, capture_output=True, text=True).stdout

    core.create_namespace({"metadata": {"name": ns}})
    try:
        for crd in ("executejobs", "workerpools"):
            sh("kubectl", "apply", "--server-side", "-f", str(repo / "crds" / f"{crd}.yaml"))
        repository, _, tag = opts.operator_image.rpartition(":")
        sh(
            "helm", "install", "appliance-operator", str(repo / "charts" / "appliance-operator"),
            "--namespace", ns, "--set", "rbac.scope=namespace",
            "--set", "rbac.aggregateToDefaultRoles=false",
            "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
            "--set", "image.pullPolicy=Never", "--wait", "--timeout", "5m",
        )  # fmt: skip
        core.create_namespaced_config_map(
            ns, {"metadata": {"name": "bench-user"}, "data": {"user.py": K8S_USER_CODE}}
        )
        template = {
            "imagePullPolicy": "Never",
            "volumes": [{"name": "user", "configMap": {"name": "bench-user"}}],
            "volumeMounts": [{"name": "user", "mountPath": "/bench", "readOnly": True}],
        }
        replicas = opts.k8s_replicas
        custom.create_namespaced_custom_object(
            "appliance.dev", "v1alpha1", ns, "workerpools",
            {"apiVersion": "appliance.dev/v1alpha1", "kind": "WorkerPool",
             "metadata": {"name": POOL},
             "spec": {"image": opts.worker_image, "replicas": replicas, "template": template}},
        )  # fmt: skip

        def idle() -> int:
            pool = custom.get_namespaced_custom_object(
                "appliance.dev", "v1alpha1", ns, "workerpools", POOL
            )
            return int((pool.get("status") or {}).get("idle", 0))

        def wait_idle() -> None:
            """Between rounds, outside the measured time: the pool full again and the last
            round's pods gone (their shutdown would share the CPU with the next round)."""
            deadline = time.monotonic() + 300
            while (
                idle() < replicas
                or core.list_namespaced_pod(ns, label_selector="appliance.dev/job-name").items
            ):
                if time.monotonic() > deadline:
                    raise RuntimeError("the pool did not refill in 5 minutes")
                time.sleep(0.2)  # poll interval of the pool's status

        def log_of(pod: str) -> str:
            """The pod's log (the kubelet may need a moment to have all of a short one)."""
            deadline = time.monotonic() + 30
            while True:
                text = str(core.read_namespaced_pod_log(pod, ns))
                if "entered " in text or time.monotonic() > deadline:
                    if "entered " not in text:
                        got = core.read_namespaced_pod(pod, ns)
                        print(
                            f"{pod}: {got.status.phase} {got.metadata.labels} "
                            f"{got.metadata.annotations} log={text!r}",
                            file=sys.stderr,
                        )
                    return text
                time.sleep(0.2)  # poll interval of the log

        def one(pool: str | None) -> tuple[float, bool, float]:
            start = time.monotonic_ns()
            job = app.submit(
                "/bench/user.py", replicas, backend="kubernetes", namespace=ns,
                image=opts.worker_image, template=template, pool=pool,
            )  # fmt: skip
            submit_s.append((time.monotonic_ns() - start) / 1e9)
            try:
                status = job.wait(timeout=300, progress=False)
                if status.phase != "Succeeded":
                    raise RuntimeError(f"bench job failed: {status}")
                pods = [
                    p
                    for p in core.list_namespaced_pod(
                        ns, label_selector=f"appliance.dev/job-name={job.name}"
                    ).items
                    if p.status.phase == "Succeeded"  # not a replaced (disrupted) attempt
                ]
                stamps = [entered_at(log_of(p.metadata.name)) for p in pods]
                warm = all("appliance.dev/pool-name" in (p.metadata.labels or {}) for p in pods)
                return (max(stamps) - start) / 1e9, warm, (min(stamps) - start) / 1e9
            finally:
                job.delete()

        warm_t: list[float] = []
        cold_t: list[float] = []
        submit_s: list[float] = []
        first_t: list[float] = []  # warm: the first worker's first line
        mixed = 0
        wait_idle()
        one(None)  # unmeasured: the image's page cache, the operator's connections
        while len(warm_t) < opts.jobs:
            wait_idle()
            seconds, all_warm, first = one(POOL)
            if not all_warm:  # an idle pod not claimable after all (e.g. no IP yet): apart
                mixed += 1
                if mixed > opts.jobs:
                    raise RuntimeError("most warm rounds got cold workers")
                continue
            warm_t.append(seconds)
            first_t.append(first)
            wait_idle()
            cold_t.append(one(None)[0])
            print(
                f"  round {len(warm_t)}: warm {warm_t[-1] * 1e3:.0f} ms, "
                f"cold {cold_t[-1] * 1e3:.0f} ms",
                file=sys.stderr,
                flush=True,
            )
    except BaseException:
        # Before the namespace goes: what the operator said (the failure is usually there).
        log = subprocess.run(
            ["kubectl", "logs", "-n", ns, "deploy/appliance-operator", "--tail", "60"],
            check=False, capture_output=True, text=True,
        )  # fmt: skip
        print(f"operator log (end):\n{log.stdout}{log.stderr}", file=sys.stderr)
        raise
    finally:
        subprocess.run(["helm", "uninstall", "appliance-operator", "--namespace", ns],
                       check=False, capture_output=True)  # fmt: skip
        core.delete_namespace(ns)
    w50, c50 = pct(warm_t, 50), pct(cold_t, 50)
    print(f"Kubernetes, {replicas} workers, {opts.vars} vars, {opts.jobs} jobs per side")
    print("  " + report("warm (pool)      ", warm_t))
    print("  " + report("cold (submit)    ", cold_t))
    print("  " + report("warm, 1st worker ", first_t) + " (the slowest is the figure above)")
    print(
        f"  warm p50 target <= 100 ms: {'met' if w50 <= 0.1 else 'NOT met'}; "
        f"ratio warm/cold {w50 / c50:.3f}x"
    )
    print(
        f"  of which submit() itself (client: job, values Secret, release): p50 "
        f"{pct(submit_s, 50) * 1e3:.0f} ms; warm rounds that got a cold worker (left out): "
        f"{mixed}; load average at the end: {os.getloadavg()[0]:.1f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--vars", type=int, default=20, help="tracked variables in the snapshot")
    parser.add_argument(
        "--kubernetes",
        action="store_true",
        help="also the Kubernetes part, on the cluster $KUBECONFIG names (kubectl/helm on PATH)",
    )
    parser.add_argument("--k8s-replicas", type=int, default=8)
    parser.add_argument("--worker-image", default="appliance-operator/worker:0.1.0")
    parser.add_argument("--operator-image", default="appliance-operator/operator:0.1.0")
    parser.add_argument("--skip-local", action="store_true")
    opts = parser.parse_args()
    if opts.jobs < 20:
        parser.error("--jobs: p90 needs at least 20 jobs per side")
    for i in range(opts.vars):
        appliance_environ[f"BENCH_VAR_{i}"] = f"value-{i}"
    if not opts.skip_local:
        local(opts)
    if opts.kubernetes:
        kubernetes(opts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
