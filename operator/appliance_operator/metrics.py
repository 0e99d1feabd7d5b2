"""Prometheus metrics of the operator, on their own registry and port (``--metrics-port``).

* ``appliance_operator_jobs{phase}``: jobs this operator sees, by phase (gauge);
* ``appliance_operator_reconcile_seconds``: duration of one reconcile (histogram);
* ``appliance_operator_api_requests_total{verb,resource}``: every Kubernetes API call the
  reconcile loop makes (the benchmark divides it by the number of jobs);
* ``appliance_operator_api_errors_total{verb,resource,code}``: those that failed;
* ``appliance_operator_workqueue_depth``: job keys waiting for a worker;
* ``appliance_operator_env_applied_seconds{start}``: job creation -> every worker confirmed
  the env, ``start`` = warm | cold (histogram);
* ``appliance_operator_pool_workers{namespace,pool,state}``: idle / refilling / claimed;
* ``appliance_operator_pool_claims_total{namespace,pool,outcome}``.
"""

from __future__ import annotations

import threading
from collections import Counter as _Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

PHASES = ("Pending", "Running", "Succeeded", "Failed", "Suspended")


class _JobPhases(Collector):
    """Phase of every known job (by uid), exported as counts per phase at scrape time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phases: dict[str, str] = {}

    def set(self, uid: str, phase: str) -> None:
        with self._lock:
            self._phases[uid] = phase

    def forget(self, uid: str) -> None:
        with self._lock:
            self._phases.pop(uid, None)

    def counts(self) -> dict[str, int]:
        with self._lock:
            counted = _Counter(self._phases.values())
        return {phase: counted.get(phase, 0) for phase in PHASES}

    def collect(self) -> Iterator[Any]:
        family = GaugeMetricFamily(
            "appliance_operator_jobs",
            "ExecuteJobs seen by this operator, by phase",
            labels=["phase"],
        )
        for phase, count in self.counts().items():
            family.add_metric([phase], count)
        yield family


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.jobs = _JobPhases()
        self.registry.register(self.jobs)
        self.reconcile_seconds = Histogram(
            "appliance_operator_reconcile_seconds",
            "Duration of one reconcile of one job (API calls included)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.api_requests = Counter(
            "appliance_operator_api_requests",
            "Kubernetes API calls made by the reconcile loop",
            ["verb", "resource"],
            registry=self.registry,
        )
        self.api_errors = Counter(
            "appliance_operator_api_errors",
            "Kubernetes API calls that failed (code 0: no HTTP answer)",
            ["verb", "resource", "code"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "appliance_operator_workqueue_depth",
            "Job keys waiting for a reconcile worker",
            registry=self.registry,
        )
        # Warm pools (docs/design.md, "Warm pools").
        self.env_applied_seconds = Histogram(
            "appliance_operator_env_applied_seconds",
            "From an ExecuteJob's creation to all of its workers having confirmed the env "
            "(warm: every worker claimed from a pool; cold: at least one started cold)",
            ["start"],
            buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
            registry=self.registry,
        )
        self.pool_workers = Gauge(
            "appliance_operator_pool_workers",
            "Workers of each WorkerPool by state: idle (warm, Ready), refilling (started, "
            "not warm yet), claimed (running a job)",
            ["namespace", "pool", "state"],
            registry=self.registry,
        )
        self.pool_claims = Counter(
            "appliance_operator_pool_claims",
            "Claims of pool workers by outcome: claimed (adopted and confirmed), conflict "
            "(another claim won the pod), failed (not delivered), cold (no idle worker)",
            ["namespace", "pool", "outcome"],
            registry=self.registry,
        )
