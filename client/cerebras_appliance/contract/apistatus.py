"""What the Kubernetes API server says when it refuses a request (pure; no kubernetes import).

A refused request's answer is a ``Status`` object (``{"kind": "Status", "reason": ...,
"message": ..., "details": {...}}``) in the body of the HTTP error. Both sides read it: the
client to tell its user what to do (forbidden, not installed, no such namespace), the
operator to decide between retrying and reporting. Each wraps the Kubernetes client's
``ApiException`` in its own vocabulary; the reading of the body is written once, here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ApiStatus:
    """A refused request: the HTTP ``code`` (0 when there was none), the ``Status``'s
    ``reason`` (else the HTTP reason phrase), its ``message`` ("" when it gave none) and its
    ``details`` (the kind and name of the object concerned, when it says)."""

    code: int
    reason: str
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)


def parse_api_status(code: int | None, reason: str | None, body: str | bytes | None) -> ApiStatus:
    """The :class:`ApiStatus` of an HTTP error: ``code`` and ``reason`` as the client saw
    them (``ApiException.status`` and ``.reason``), ``body`` its text (not always JSON: a
    proxy's error page is taken as no ``Status``)."""
    try:
        doc = json.loads(body or "{}")
    except (TypeError, ValueError):
        doc = {}
    if not isinstance(doc, dict):
        doc = {}
    details = doc.get("details")
    return ApiStatus(
        code=int(code or 0),
        reason=str(doc.get("reason") or reason or ""),
        message=str(doc.get("message") or ""),
        details=details if isinstance(details, dict) else {},
    )
