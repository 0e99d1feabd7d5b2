"""Load tests/data/invalid_executejobs.yaml: ExecuteJobs both the client and the API refuse.

Used by tests/unit/operator/test_crd.py (parse_job) and tests/integration/test_operator.py
(kubectl apply); load it with :func:`load` from either (importlib, by path).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DATA = Path(__file__).with_name("invalid_executejobs.yaml")


@dataclass(frozen=True)
class Case:
    id: str
    manifest: dict[str, Any]
    field: str  # must appear in every refusal
    message: str | None  # a further substring of the API server's refusal


def _parent(doc: Any, path: str) -> tuple[Any, Any]:
    parts = path.split(".")
    target = doc
    for part in parts[:-1]:
        target = target[int(part)] if isinstance(target, list) else target[part]
    last: Any = int(parts[-1]) if isinstance(target, list) else parts[-1]
    return target, last


def base() -> dict[str, Any]:
    return copy.deepcopy(yaml.safe_load(DATA.read_text())["base"])


def cases() -> list[Case]:
    data = yaml.safe_load(DATA.read_text())
    out = []
    for raw in data["cases"]:
        doc = copy.deepcopy(data["base"])
        for path, value in (raw.get("set") or {}).items():
            target, key = _parent(doc, path)
            target[key] = value
        for path, (item, count) in (raw.get("repeat") or {}).items():
            target, key = _parent(doc, path)
            target[key] = [item] * count
        for path in raw.get("unset") or []:
            target, key = _parent(doc, path)
            del target[key]
        out.append(Case(raw["id"], doc, raw["field"], raw.get("message")))
    return out
