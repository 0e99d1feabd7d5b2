"""Submit an ExecuteJob to a cluster from Python, and print what its input workers saw.

    python examples/submit_example.py --namespace default
    python examples/submit_example.py -n ml --image my-loader:1 --entrypoint my_pkg.loader:main
    python examples/submit_example.py --print-manifest     # the ExecuteJob, without a cluster

What is set through ``appliance_environ`` reaches the workers (every value travels in a Secret
the job owns, not in the ExecuteJob); what is set through ``os.environ`` does not. Needs a
cluster running the operator (docs/install.md) and a kubeconfig.

By default the workers run examples/show_env.py, which this script ships in a ConfigMap
mounted into them, so any worker image with the cerebras_appliance package works. With
``--entrypoint`` they run your code from ``--image`` instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import cerebras_appliance as app
from cerebras_appliance.environment import appliance_environ

SCRIPT = Path(__file__).with_name("show_env.py")
SCRIPT_CONFIGMAP = "appliance-example-show-env"
SCRIPT_DIR = "/opt/examples"
# show_env.py prints these, as each worker sees them.
PRINTED = ["DATA_ROOT", "SHARD_COUNT", "API_TOKEN", "LOCAL_ONLY"]


def script_template() -> dict[str, Any]:
    """spec.template: mount the ConfigMap holding show_env.py at SCRIPT_DIR."""
    return {
        "volumes": [{"name": "examples", "configMap": {"name": SCRIPT_CONFIGMAP}}],
        "volumeMounts": [{"name": "examples", "mountPath": SCRIPT_DIR, "readOnly": True}],
    }


def ensure_script_configmap(namespace: str) -> None:
    """Create (or refresh) the ConfigMap with examples/show_env.py in ``namespace``."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    from cerebras_appliance.backends.kubernetes import (
        new_api_client,  # the client's own kubeconfig lookup
    )

    core = client.CoreV1Api(new_api_client())
    body = {
        "metadata": {"name": SCRIPT_CONFIGMAP, "labels": {"app.kubernetes.io/part-of": "examples"}},
        "data": {"show_env.py": SCRIPT.read_text()},
    }
    try:
        core.create_namespaced_config_map(namespace, body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        core.replace_namespaced_config_map(SCRIPT_CONFIGMAP, namespace, body)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--namespace", "-n", help="namespace of the job (default: the kubeconfig context's)"
    )
    parser.add_argument(
        "--image",
        help="worker image (default: $APPLIANCE_WORKER_IMAGE, else the client's default, "
        "the image `make kind-up` builds)",
    )
    parser.add_argument("--replicas", type=int, default=2, help="input workers (default 2)")
    parser.add_argument(
        "--entrypoint", help="run this ('pkg.module:function' or a script in the image) instead"
    )
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for the end")
    parser.add_argument("--keep", action="store_true", help="do not delete the job at the end")
    parser.add_argument(
        "--print-manifest",
        action="store_true",
        help="print the ExecuteJob (JSON, for kubectl apply -f -) instead of submitting it",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    # Tracked: sent to the workers with the job (a snapshot, taken by submit()).
    appliance_environ["DATA_ROOT"] = "/mnt/data"
    appliance_environ["SHARD_COUNT"] = str(args.replicas)
    appliance_environ["API_TOKEN"] = "demo-token-not-a-real-secret"
    # Untracked: visible in this process only.
    os.environ["LOCAL_ONLY"] = "1"

    entrypoint = args.entrypoint or f"{SCRIPT_DIR}/{SCRIPT.name}"
    options: dict[str, Any] = {
        "args": [] if args.entrypoint else PRINTED,
        "namespace": args.namespace,
        "image": args.image,
        "template": None if args.entrypoint else script_template(),
    }

    if args.print_manifest:
        # Without a cluster there is no Secret to write: every value goes inline, where
        # everyone who can read the job reads it (submit() puts them in a Secret instead).
        print("(values are inline here; submit() puts them in a Secret)", file=sys.stderr)
        job = app.build_job(
            entrypoint, args.replicas, appliance_environ.snapshot(), inline=True, **options
        )
        print(json.dumps(job.to_manifest(), indent=2))
        return 0

    from cerebras_appliance.backends.kubernetes import default_namespace

    namespace = options["namespace"] = args.namespace or default_namespace()
    if not args.entrypoint:
        ensure_script_configmap(namespace)
    handle = app.submit(entrypoint, args.replicas, backend="kubernetes", **options)
    print(f"submitted {handle.name}; follow it with: kubectl get ej -n {namespace} -w")
    try:
        status = handle.wait(timeout=args.timeout)
        print(f"\n{handle.name}: {status.phase} (envHash {status.env_hash})")
        for worker, text in sorted(handle.logs().items()):
            print(f"--- {worker}")
            print(text.rstrip())
    finally:
        if not args.keep:
            handle.delete()
    return 0 if status.phase == "Succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
