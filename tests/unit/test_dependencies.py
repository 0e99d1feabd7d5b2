"""The dependency floors in pyproject.toml have the APIs the code uses.

The check runs twice: against the installed versions, and against the floors themselves,
installed (once, cached) into a folder of their own and imported ahead of the venv's.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(
    os.environ.get("APPLIANCE_OPERATOR_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "appliance-operator"
)


def floors() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *project["optional-dependencies"]["operator"]]
    out = {}
    for req in requirements:
        m = re.match(r"^([A-Za-z0-9_.-]+)>=([0-9.]+)", req)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def check_apis() -> list[str]:
    """What the code relies on; returns the problems (empty: all there)."""
    import kopf
    from kubernetes import client

    problems = []
    if not hasattr(kopf.OperatorSettings().watching, "label_selectors"):
        problems.append("kopf: settings.watching.label_selectors (handlers.configure_settings)")
    for method, param in [
        (client.CoreV1Api.list_namespaced_pod, "_headers"),  # kubeapi.list_uids
        (client.CustomObjectsApi.list_namespaced_custom_object, "_headers"),
        (client.CoreV1Api.patch_namespaced_pod, "_content_type"),  # kubeapi.remove_finalizer
    ]:
        if param not in inspect.signature(method).parameters:
            problems.append(f"kubernetes: {method.__qualname__}({param}=)")
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    for owner, attr in [  # pooltls.new_pool_credentials
        (x509, "CertificateBuilder"),
        (x509, "ExtendedKeyUsage"),
        (x509, "random_serial_number"),
        (ec, "SECP256R1"),
    ]:
        if not hasattr(owner, attr):
            problems.append(f"cryptography: {owner.__name__}.{attr}")
    import cloudpickle
    import pathspec

    for attr in [  # code.capture pickles a function by value
        "register_pickle_by_value",
        "unregister_pickle_by_value",
        "list_registry_pickle_by_value",
        "Pickler",
        "DEFAULT_PROTOCOL",
    ]:
        if not hasattr(cloudpickle, attr):
            problems.append(f"cloudpickle: {attr} (code.capture)")
    if not hasattr(pathspec, "GitIgnoreSpec"):  # contract.bundle honours a .gitignore
        problems.append("pathspec: GitIgnoreSpec (contract.bundle.pack)")
    return problems


def test_installed_versions_meet_the_floors_and_have_the_apis() -> None:
    from importlib.metadata import version

    for name, floor in floors().items():
        have = tuple(int(x) for x in re.findall(r"\d+", version(name))[:2])
        want = tuple(int(x) for x in floor.split(".")[:2])
        assert have >= want, f"{name} {version(name)} is below the floor {floor}"
    assert check_apis() == []


def test_the_floors_themselves_have_the_apis(tmp_path: Path) -> None:
    wanted = floors()
    pins = [
        f"kopf=={wanted['kopf']}.0",
        f"kubernetes=={wanted['kubernetes']}.0.0",
        f"cloudpickle=={wanted['cloudpickle']}.0",
        f"pathspec=={wanted['pathspec']}.0",
    ]
    target = CACHE / "floors" / "-".join(p.replace("==", "-") for p in pins)
    if not (target / ".complete").exists():
        install = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--target",
                str(target),
                *pins,
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if install.returncode != 0:
            pytest.fail(f"installing the floors {pins} failed:\n{install.stderr[-2000:]}")
        (target / ".complete").touch()
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2]);"
        "import kopf, kubernetes, cloudpickle, pathspec, test_dependencies as t;"
        "assert kopf.__file__.startswith(sys.argv[1]), kopf.__file__;"
        "assert cloudpickle.__file__.startswith(sys.argv[1]), cloudpickle.__file__;"
        "assert pathspec.__file__.startswith(sys.argv[1]), pathspec.__file__;"
        "print('\\n'.join(t.check_apis()) or 'ok')"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(target), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok", f"the floors {pins} lack: {result.stdout}"
