"""``python -m appliance_operator``: run the operator against $KUBECONFIG or in-cluster config.

    python -m appliance_operator --all-namespaces --liveness http://0.0.0.0:8080/healthz
    python -m appliance_operator --namespace ml --namespace ml-dev --metrics-port 9090
    python -m appliance_operator --namespace '!kube-*'   # cluster-wide, minus kube-*

Equivalent: ``kopf run --standalone -m appliance_operator.handlers [-n NAME | -A]`` with the
options below set through APPLIANCE_OPERATOR_* variables, for plain names only: globs and
exclusions are this command's (``scope.py`` says why kopf is not given them).
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import signal
import sys

from appliance_operator.runtime.config import Config
from appliance_operator.scope import ScopeError, namespace_scope


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = Config.from_env()
    parser = argparse.ArgumentParser(
        prog="python -m appliance_operator",
        description="Run the ExecuteJob operator (kopf).",
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help=(
            "serve this namespace (repeatable or comma-separated; globs like 'ml-*' and "
            "exclusions like '!kube-*' watch cluster-wide and filter)"
        ),
    )
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="watch every namespace (default)"
    )
    parser.add_argument(
        "--liveness",
        metavar="URL",
        help="serve the liveness probe here, e.g. http://0.0.0.0:8080/healthz",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=defaults.metrics_port,
        help=f"Prometheus metrics port; 0 disables (default {defaults.metrics_port})",
    )
    parser.add_argument("--metrics-address", default=defaults.metrics_address)
    parser.add_argument(
        "--workers",
        type=int,
        default=defaults.workers,
        help=f"jobs reconciled concurrently (default {defaults.workers})",
    )
    parser.add_argument(
        "--resync-seconds",
        type=float,
        default=defaults.resync_seconds,
        help=f"reconcile every job at least this often (default {defaults.resync_seconds:g})",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers: must be at least 1")
    if args.resync_seconds <= 0:
        parser.error("--resync-seconds: must be positive")
    try:
        args.scope = namespace_scope(args.namespace)
    except ScopeError as exc:
        parser.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # `kill -USR1 <pid>`: every thread's Python stack to stderr (the log), for a stuck
    # operator; the tests do it when a test that ran one fails.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    # kopf, kubernetes and the runtime load once the arguments are good: --help and a usage
    # error answer at once (the defaults come from runtime/config.py, which imports neither).
    import kopf

    import appliance_operator.handlers  # noqa: F401 - registers the handlers with kopf
    from appliance_operator.runtime.state import CONFIG, OperatorMemo

    config = Config(
        workers=args.workers,
        metrics_port=args.metrics_port,
        metrics_address=args.metrics_address,
        resync_seconds=args.resync_seconds,
        scope=args.scope,
    )
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.PLAIN)
    if not args.verbose:
        # kopf logs "Handler 'pod_event' succeeded." for every watch event: thousands of
        # lines per minute under load. Its warnings and errors still show.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    kopf.run(
        standalone=True,
        clusterwide=args.scope.clusterwide,
        namespaces=args.scope.kopf_namespaces,
        liveness_endpoint=args.liveness,
        memo=OperatorMemo({CONFIG: config}),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
