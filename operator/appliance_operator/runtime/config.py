"""The operator's options: from the command line (``__main__``) or ``APPLIANCE_OPERATOR_*``."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from appliance_operator.scope import NamespaceScope

logger = logging.getLogger("appliance_operator")


@dataclass
class Config:
    workers: int = 8  # concurrent reconciles (of different jobs)
    metrics_port: int = 8081  # 0: no metrics endpoint
    metrics_address: str = "0.0.0.0"  # a pod's port, scraped by Prometheus
    resync_seconds: float = 60.0
    #: The namespaces served (``--namespace``); kopf may watch more (scope.py).
    scope: NamespaceScope = field(default_factory=NamespaceScope)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Config:
        """From ``APPLIANCE_OPERATOR_*``. A value that is not a number is ignored with a
        warning: Kubernetes injects Service link variables such as
        ``APPLIANCE_OPERATOR_METRICS_PORT=tcp://10.0.0.7:8081`` when the release is named
        ``appliance-operator`` and service links are on."""
        defaults = cls()

        def number(name: str, default: float) -> float:
            text = environ.get(name)
            if text is None:
                return default
            try:
                return float(text)
            except ValueError:
                logger.warning("ignoring %s=%r: not a number (a Service link?)", name, text)
                return default

        return cls(
            workers=int(number("APPLIANCE_OPERATOR_WORKERS", defaults.workers)),
            metrics_port=int(number("APPLIANCE_OPERATOR_METRICS_PORT", defaults.metrics_port)),
            metrics_address=environ.get(
                "APPLIANCE_OPERATOR_METRICS_ADDRESS", defaults.metrics_address
            ),
            resync_seconds=number("APPLIANCE_OPERATOR_RESYNC_SECONDS", defaults.resync_seconds),
        )
