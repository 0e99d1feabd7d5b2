"""Capture the user's own code for a job (issue 23): a function, a working directory, local
packages and pip requirements, packed into one bundle when :func:`capture` is called.

Like the env snapshot, the code is captured *now*: :func:`capture` reads the files and
pickles the function at the call and holds the bytes
(:class:`~cerebras_appliance.contract.bundle.Bundle`); editing the files afterwards changes
nothing for that capture, only for the next. The workers run from an unpacked copy of it
(:mod:`cerebras_appliance.worker.code`).

* ``working_dir``: a local directory; the workers run in a copy of it, first on ``sys.path``.
  A script entrypoint is a path inside it (relative to it, or an absolute path under it); a
  ``module:function`` is imported from it (or from ``py_modules``, or the worker's image).
* ``py_modules``: package directories, ``.py`` files or imported modules, importable in the
  workers and their child processes (``sys.path`` and ``PYTHONPATH``).
* a **callable** runs in each worker with the job's ``args`` (strings), through
  :data:`~cerebras_appliance.contract.names.FUNCTION_ENTRYPOINT`: its return value and its
  exceptions mean what they mean for a ``module:function`` entrypoint.
* ``requirements``: pip requirement strings, installed by each worker before the user's code
  from the package index the platform configures; never pip options (no ``--index-url``:
  where packages come from is the platform's choice, ``PIP_INDEX_URL`` and the like).

**A function by value or by reference.** The function is pickled with cloudpickle. It goes
*by value* (its code, closure and the globals it uses travel in the bundle) when its module
would not be importable in a worker: ``__main__`` (a notebook, a script), a function defined
inside another (a closure), or a module that is neither shipped nor installed (a file beside
the notebook, a test module): that module is registered with cloudpickle's
``register_pickle_by_value`` while pickling, so the module-level helpers it calls travel too.
It goes *by reference* (module and name, imported in the worker) when its module is shipped
in this capture (``working_dir`` or ``py_modules``: the worker imports the captured copy, with
the same code) or installed (site-packages, the standard library, this client): the worker
must have the same package, as for any import. Other modules the function uses go by
reference; one the worker lacks fails the job with the module's name (ship it with
``py_modules``). ``os.environ`` is pickled as a reference to the worker's own environment (its
values never travel), and ``appliance_environ`` as the worker's ``appliance_environ``. The
client's Python version is recorded beside the pickle: a worker of another minor version
refuses the function with both versions in the message (bytecode does not travel between
minor versions).

This module is at the client's top layer, beside :mod:`.jobs`; the backends take the
:class:`Bundle` and the entrypoint, never this module. cloudpickle is imported only to
capture a callable.
"""

from __future__ import annotations

import json
import os
import site
import sys
import sysconfig
import threading
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cerebras_appliance.contract import bundle as bundles
from cerebras_appliance.contract.api import InvalidJobError
from cerebras_appliance.contract.entrypoints import entrypoint_problem, is_script_entrypoint
from cerebras_appliance.contract.names import FUNCTION_ENTRYPOINT, FUNCTION_FILE

__all__ = ["FUNCTION_INFO_FILE", "REQUIREMENTS_FILE", "Capture", "capture"]

#: Beside the pickle: the Python (and cloudpickle) that made it, for the worker's check.
FUNCTION_INFO_FILE = "function.json"
#: The requirements, one a line, as the worker's pip reads them.
REQUIREMENTS_FILE = "requirements.txt"

PathLike = str | os.PathLike[str]

#: cloudpickle's by-value registry is global: one capture at a time registers in it.
_registry_lock = threading.Lock()


@dataclass(frozen=True)
class Capture:
    """The captured code: the bundle to ship, and the entrypoint the workers run with it (the
    user's, relative to the working directory for a script, or
    :data:`~cerebras_appliance.contract.names.FUNCTION_ENTRYPOINT` for a callable)."""

    bundle: bundles.Bundle
    entrypoint: str


def capture(
    entrypoint_or_callable: str | Callable[..., Any],
    *,
    working_dir: PathLike | None = None,
    py_modules: Sequence[PathLike | types.ModuleType] = (),
    requirements: Sequence[str] = (),
) -> Capture:
    """Pack the code as it is now. Raises :class:`InvalidJobError` naming the argument at
    fault (``working_dir``, ``py_modules``, ``requirements``, ``entrypoint``), or the bundle's
    problem (a size limit with the largest files, a link out of the tree, ...)."""
    errors: list[str] = []
    root = _working_dir(working_dir, errors)
    modules = _py_modules(py_modules, errors)
    wanted = _requirements(requirements, errors)
    if errors:
        raise InvalidJobError(errors)
    files: dict[str, bytes] = {}
    if callable(entrypoint_or_callable):
        shipped = [p for p in (root, *modules) if p is not None]
        files.update(_pickle_function(entrypoint_or_callable, shipped))
        entrypoint = FUNCTION_ENTRYPOINT
    elif isinstance(entrypoint_or_callable, str):
        entrypoint = _entrypoint(entrypoint_or_callable, root)
    else:
        raise InvalidJobError(
            [
                "entrypoint: must be a script path, 'module:function' or a callable, not "
                f"{type(entrypoint_or_callable).__name__}"
            ]
        )
    if wanted:
        files[REQUIREMENTS_FILE] = "".join(f"{line}\n" for line in wanted).encode("utf-8")
    try:
        packed = bundles.pack(root, modules, files=files)
    except bundles.BundleError as exc:
        raise InvalidJobError([f"code: {exc}"]) from exc
    return Capture(bundle=packed, entrypoint=entrypoint)


def _working_dir(working_dir: PathLike | None, errors: list[str]) -> Path | None:
    if working_dir is None:
        return None
    try:
        path = Path(working_dir)
    except TypeError:
        errors.append(f"working_dir: {working_dir!r} is not a path")
        return None
    if not path.is_dir():
        errors.append(f"working_dir: {path} is not a directory")
        return None
    return path


def _py_modules(py_modules: Sequence[PathLike | types.ModuleType], errors: list[str]) -> list[Path]:
    if isinstance(py_modules, str | bytes | os.PathLike):
        errors.append(f"py_modules: give a list of paths or modules, not one ({py_modules!r})")
        return []
    paths: list[Path] = []
    for module in py_modules:
        if isinstance(module, types.ModuleType):
            path = _module_path(module)
            if path is None:
                errors.append(f"py_modules: module {module.__name__!r} has no file to ship")
                continue
        else:
            try:
                path = Path(module)
            except TypeError:
                errors.append(f"py_modules: {module!r} is neither a path nor a module")
                continue
        if not (path.is_dir() or (path.is_file() and path.suffix == ".py")):
            errors.append(f"py_modules: {path} is neither a package directory nor a .py file")
            continue
        paths.append(path)
    return paths


def _module_path(module: types.ModuleType) -> Path | None:
    """A package's directory, or a module's ``.py`` file."""
    file = getattr(module, "__file__", None)
    if not file:
        return None
    path = Path(file)
    return path.parent if path.name == "__init__.py" else path


def _requirements(requirements: Sequence[str], errors: list[str]) -> list[str]:
    if isinstance(requirements, str | bytes):
        errors.append(
            f"requirements: give a list of requirement strings, not one string ({requirements!r})"
        )
        return []
    wanted: list[str] = []
    for requirement in requirements:
        if not isinstance(requirement, str) or not requirement.strip():
            errors.append(f"requirements: {requirement!r} is not a requirement string")
        elif any(c in requirement for c in "\r\n\x00"):
            errors.append(f"requirements: {requirement!r} spans lines; give one per item")
        elif requirement.lstrip().startswith("-"):
            errors.append(
                f"requirements: {requirement!r} is an option of pip, not a requirement; the "
                "package index is the platform's (PIP_INDEX_URL in the pool or template)"
            )
        else:
            wanted.append(requirement.strip())
    return wanted


def _entrypoint(entrypoint: str, root: Path | None) -> str:
    """The entrypoint the workers run; a script must be a file inside ``working_dir``."""
    problem = entrypoint_problem(entrypoint)
    if problem:
        raise InvalidJobError([f"entrypoint: {problem}"])
    if root is None or not is_script_entrypoint(entrypoint):
        return entrypoint
    script = Path(entrypoint)
    base = root.resolve()
    resolved = (script if script.is_absolute() else base / script).resolve()
    if not resolved.is_relative_to(base):
        raise InvalidJobError(
            [
                f"entrypoint: {entrypoint!r} is not inside working_dir {root}: the workers run the "
                "copy of working_dir, so the script must be in it"
            ]
        )
    if not resolved.is_file():
        raise InvalidJobError([f"entrypoint: {entrypoint!r} is not a file in working_dir {root}"])
    return resolved.relative_to(base).as_posix()


def _pickle_function(function: Callable[..., Any], shipped: Sequence[Path]) -> dict[str, bytes]:
    """``files/function.pkl`` and ``files/function.json`` of the bundle."""
    # Only a capture of a callable pays for it; cloudpickle ships no type information.
    import cloudpickle  # type: ignore[import-untyped]  # noqa: PLC0415

    module = _by_value_module(function, shipped)
    info = {
        "python": ".".join(map(str, sys.version_info[:3])),
        "cloudpickle": cloudpickle.__version__,
    }
    with _registry_lock:
        register = module is not None and module.__name__ not in (
            cloudpickle.list_registry_pickle_by_value()
        )
        if register:
            cloudpickle.register_pickle_by_value(module)
        try:
            data = _dumps(cloudpickle, function)
        except Exception as exc:  # whatever pickling raises: the function cannot travel
            raise InvalidJobError(
                [f"entrypoint: the function cannot be pickled: {type(exc).__name__}: {exc}"]
            ) from exc
        finally:
            if register:
                cloudpickle.unregister_pickle_by_value(module)
    return {
        FUNCTION_FILE: data,
        FUNCTION_INFO_FILE: json.dumps(info, sort_keys=True).encode("utf-8"),
    }


def _dumps(cloudpickle: types.ModuleType, function: Callable[..., Any]) -> bytes:
    """cloudpickle's bytes, with the process environment by reference, never by value."""
    import io  # noqa: PLC0415  # with cloudpickle, only to capture a callable

    class _Pickler(cloudpickle.Pickler):  # type: ignore[name-defined,misc]
        def reducer_override(self, obj: object) -> object:
            if obj is os.environ:
                return getattr, (os, "environ")
            if obj is os.environb:
                return getattr, (os, "environb")
            if isinstance(obj, os._Environ) and type(obj) is os._Environ:
                raise TypeError("it refers to a copy of the process environment")
            return super().reducer_override(obj)

    out = io.BytesIO()
    _Pickler(out, protocol=cloudpickle.DEFAULT_PROTOCOL).dump(function)
    return out.getvalue()


def _by_value_module(function: Callable[..., Any], shipped: Sequence[Path]) -> Any:
    """The function's module when it must travel by value (see the module's docstring), else
    None (``__main__`` and closures go by value in cloudpickle already)."""
    name = getattr(function, "__module__", None) or type(function).__module__
    if name in (None, "__main__") or name.partition(".")[0] == "cerebras_appliance":
        return None
    module = sys.modules.get(name)
    file = getattr(module, "__file__", None)
    if module is None or not file:
        return None  # built in, or not imported under its name: cloudpickle decides
    path = Path(file).resolve()
    roots = [p.resolve() for p in shipped] + _installed_roots()
    if any(path == root or path.is_relative_to(root) for root in roots):
        return None
    return module


def _installed_roots() -> list[Path]:
    """Where installed packages and the standard library live."""
    found: set[str] = set()
    paths = sysconfig.get_paths()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        if paths.get(key):
            found.add(paths[key])
    for directory in [*getattr(site, "getsitepackages", list)(), site.getusersitepackages()]:
        found.add(directory)
    return [Path(p).resolve() for p in sorted(found) if p]
