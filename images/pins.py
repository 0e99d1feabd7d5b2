#!/usr/bin/env python3
"""Print the pinned Python requirements an image layer installs (one ``name==version`` a line).

    python images/pins.py                 # runtime deps of appliance-operator (worker image)
    python images/pins.py --extra operator --exclude-base   # what the operator extra adds

Run it with the repository's virtualenv python: the pins are the versions installed there (the
ones the unit and integration tests ran with), found by walking the ``Requires-Dist`` closure
of the ``appliance-operator`` distribution. When the distribution is not installed in the
running interpreter, the unpinned requirements of ``pyproject.toml`` are printed instead (pip
then resolves them).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

DIST = "appliance-operator"
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _marker_ok(marker: str | None, extras: set[str]) -> bool:
    if not marker:
        return True
    try:
        from packaging.markers import Marker
    except ImportError:  # pip vendors packaging
        from pip._vendor.packaging.markers import Marker  # type: ignore[no-redef,assignment,unused-ignore]
    m = Marker(marker)
    if extras:
        return any(m.evaluate({"extra": e}) for e in extras)
    return m.evaluate({"extra": ""})


def _split(req: str) -> tuple[str, set[str], str | None]:
    try:
        from packaging.requirements import Requirement
    except ImportError:
        from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef,assignment,unused-ignore]
    r = Requirement(req)
    return r.name, set(r.extras), str(r.marker) if r.marker else None


def closure(root: str, extras: set[str]) -> dict[str, str]:
    """{normalized name: version} of everything ``root[extras]`` needs, root excluded."""
    out: dict[str, str] = {}
    todo: list[tuple[str, set[str]]] = [(root, extras)]
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, want = todo.pop()
        key = (_norm(name), frozenset(want))
        if key in done:
            continue
        done.add(key)
        dist = md.distribution(name)
        if _norm(name) != _norm(root):
            out[_norm(name)] = dist.version
        for req in dist.requires or []:
            dep, dep_extras, marker = _split(req)
            if _marker_ok(marker, want):
                todo.append((dep, dep_extras))
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--extra", action="append", default=[])
    parser.add_argument("--exclude-base", action="store_true")
    args = parser.parse_args()
    try:
        pins = closure(DIST, set(args.extra))
        if args.exclude_base:
            base = closure(DIST, set())
            pins = {k: v for k, v in pins.items() if k not in base}
        for name in sorted(pins):
            print(f"{name}=={pins[name]}")
    except md.PackageNotFoundError as exc:
        print(f"pins.py: {exc} not installed; printing unpinned requirements", file=sys.stderr)
        project = tomllib.loads(PYPROJECT.read_text())["project"]
        reqs = [] if args.exclude_base else list(project["dependencies"])
        for extra in args.extra:
            reqs += project["optional-dependencies"][extra]
        for req in reqs:
            print(req)
    return 0


if __name__ == "__main__":
    sys.exit(main())
