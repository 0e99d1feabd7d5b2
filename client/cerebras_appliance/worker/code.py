"""The user's code in the worker (issue 23): unpack the job's bundle, install its
requirements, and run a function submitted by value.

Imported by :mod:`.entrypoint` only when ``APPLIANCE_CODE_DIR`` is set, after the env is
applied and before the readiness marker: a cold worker without code never loads this module,
the bundle reader or cloudpickle, and starts as fast as before (a pool's warm worker loads
them while it is idle, :mod:`.warm`, so a warm job with code does not pay for them). "Ready"
then means the code is in place and the user's entrypoint is about to run.

:func:`prepare`:

1. joins the chunk files ``chunk-000``, ``chunk-001``, ... of ``APPLIANCE_CODE_DIR`` in
   order and unpacks them (:func:`cerebras_appliance.contract.bundle.unpack`, which checks
   every member and the hash ``APPLIANCE_CODE_SHA256`` before writing anything) into a new
   0700 directory, in memory where possible (code can hold credentials, which then never
   reach a disk): in ``APPLIANCE_STATE_DIR`` when it is set (a pod's private memory-backed
   volume, sized for a bundle), else on ``/dev/shm`` when it has room for it (the local
   backend), else in the temp directory. It is removed when the worker exits. The worker
   runs from this copy, never from the directory the code was captured from. Every worker
   has its own copy, also where a job's workers share a machine (the local backend) and
   one unpacked copy per job would start them sooner: the working directory is the
   worker's to write into (the bundle ships empty directories for that), as in a pod, and a
   shared copy would be read-only or written by all of them at once.
2. changes into the bundle's ``working_dir`` when it has one, and puts the bundle's import
   paths (:func:`~cerebras_appliance.contract.bundle.import_paths`: ``working_dir`` then
   ``py_modules``) first on :data:`sys.path`, and first on ``PYTHONPATH`` for the user's child
   processes. With a ``working_dir`` they replace the directory the worker started in (a
   script's relative path, and ``module:function``, now resolve inside the copy).
3. installs ``files/requirements.txt`` when the bundle has it: ``python -m pip install
   --target <dir>`` with the worker's own Python, from whatever package index the environment
   configures (``PIP_INDEX_URL``, ``PIP_FIND_LINKS``, ``PIP_NO_INDEX``... set in the pool, the
   template or the job's snapshot). The directory goes right after the bundle's paths, ahead
   of the image's site-packages (a pinned version wins over the image's, the user's own code
   over both). It is in the temp directory, not in memory: packages can be large and hold
   no secret of the user.

Every failure here is a configuration error: a line naming the cause and exit code
:data:`~.report.EXIT_CONFIG` (78), the user's code never runs.

:func:`run_function` is the ``module:function`` entrypoint of a function submitted by value
(:data:`~cerebras_appliance.contract.names.FUNCTION_ENTRYPOINT`): it loads
``files/function.pkl`` and calls the function with the job's arguments, so its return value
and exceptions mean what they mean for any ``module:function`` entrypoint. A function this
Python cannot load (the client's Python was another minor version, as recorded in
``files/function.json``; a module it refers to is missing here) is a configuration error too.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import sys
import time
from pathlib import Path

from cerebras_appliance.contract import bundle, names
from cerebras_appliance.worker.report import EXIT_CONFIG, log

#: Memory-backed file systems tried first for the unpacked code.
MEMORY_DIRS: tuple[str, ...] = ("/dev/shm",)
#: What the client writes beside the pickled function: the Python that pickled it.
FUNCTION_INFO_FILE = "function.json"
#: The pip requirements of the bundle (``files/requirements.txt``).
REQUIREMENTS_FILE = "requirements.txt"
#: How many of pip's last lines a failed install shows.
PIP_TAIL_LINES = 15
#: Room wanted on the memory file system per compressed byte: source code inflates 3 to 6
#: times, and the bundle's uncompressed limit is 8 times its compressed one.
_ROOM_FACTOR = 10
_ROOM_MARGIN = 1024 * 1024

#: Where :func:`prepare` unpacked the bundle (:func:`run_function` reads it).
_unpacked: Path | None = None


class CodeError(Exception):
    """The job's code cannot be put in place; the message says why (no content of it)."""


def prepare() -> list[str] | int:
    """Unpack the job's bundle, enter it, install its requirements: the ``sys.path`` entries
    added (first first), or the exit code to exit with after a line saying why."""
    global _unpacked  # noqa: PLW0603  # one bundle per worker process, set once
    started = time.monotonic()
    try:
        data, expected = _read_chunks()
        root = _private_dir("appliance-code-", _code_base(len(data)))
        bundle.unpack(data, root, expected_sha256=expected)
    except (CodeError, bundle.BundleError) as exc:
        log(f"cannot unpack the job's code: {exc}")
        return EXIT_CONFIG
    except OSError as exc:
        log(f"cannot unpack the job's code: {exc.strerror or exc}")
        return EXIT_CONFIG
    _unpacked = root
    paths = [str(p) for p in bundle.import_paths(root)]
    working_dir = root / bundle.WORKING_DIR
    if working_dir.is_dir():
        started_in = os.getcwd()
        os.chdir(working_dir)
        if sys.path and sys.path[0] in (started_in, ""):
            del sys.path[0]  # the directory the worker started in: the copy replaces it
    requirements = root / bundle.FILES / REQUIREMENTS_FILE
    wanted = _requirement_lines(requirements) if requirements.is_file() else []
    if wanted:
        target = _install(requirements, wanted)
        if isinstance(target, int):
            return target
        paths.append(target)
    sys.path[0:0] = paths
    _prepend_pythonpath(paths)
    importlib.invalidate_caches()
    log(
        f"unpacked the job's code ({expected}, {len(data)} bytes) in "
        f"{(time.monotonic() - started) * 1e3:.0f} ms"
    )
    return paths


def _read_chunks() -> tuple[bytes, str]:
    """The bundle from ``APPLIANCE_CODE_DIR``'s chunk files, in order, and its expected hash."""
    directory = Path(os.environ[names.CODE_DIR_VAR])
    expected = os.environ.get(names.CODE_SHA256_VAR, "")
    if not expected:
        raise CodeError(f"{names.CODE_SHA256_VAR} is not set: the bundle cannot be checked")
    try:
        entries = [e for e in os.listdir(directory) if e.startswith(names.CODE_CHUNK_PREFIX)]
    except OSError as exc:
        raise CodeError(f"{names.CODE_DIR_VAR} {directory}: {exc.strerror}") from None
    numbered: dict[int, str] = {}
    for entry in entries:
        suffix = entry[len(names.CODE_CHUNK_PREFIX) :]
        if not suffix.isdigit():
            raise CodeError(f"{directory}: {entry!r} is not a chunk file name")
        numbered[int(suffix)] = entry
    if not numbered or sorted(numbered) != list(range(len(numbered))):
        raise CodeError(
            f"{directory}: the chunks must be {names.CODE_CHUNK_PREFIX}000 and on without a "
            f"gap, found {sorted(entries)}"
        )
    if len(numbered) > bundle.MAX_CHUNKS:
        raise CodeError(f"{directory}: {len(numbered)} chunks, at most {bundle.MAX_CHUNKS}")
    chunks = [(directory / numbered[i]).read_bytes() for i in range(len(numbered))]
    return bundle.join(chunks), expected


def _code_base(compressed: int) -> Path:
    """The worker's state directory when it has one, else the memory file system when it is
    writable and has room for the unpacked code, else the temp directory."""
    state = os.environ.get(names.STATE_DIR_VAR, "")
    if state and os.path.isdir(state) and os.access(state, os.W_OK | os.X_OK):
        return Path(state)
    for candidate in MEMORY_DIRS:
        if not os.access(candidate, os.W_OK | os.X_OK):
            continue
        with contextlib.suppress(OSError):
            info = os.statvfs(candidate)
            if info.f_bavail * info.f_frsize >= compressed * _ROOM_FACTOR + _ROOM_MARGIN:
                return Path(candidate)
    return Path(_temp_dir())


def _temp_dir() -> str:
    # tempfile (and the shutil that removes a tree) are not imported on a cold worker's start
    # path: with random and its kin they cost a few milliseconds of every cold start.
    import tempfile  # noqa: PLC0415

    return tempfile.gettempdir()


def _private_dir(prefix: str, base: Path) -> Path:
    """A new 0700 directory in ``base`` with a random name (``mkdir`` fails rather than
    reuse a name, as ``tempfile.mkdtemp`` does), removed when the worker exits."""
    for _ in range(100):
        path = base / f"{prefix}{os.urandom(6).hex()}"
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        atexit.register(_remove, path)
        return path
    raise FileExistsError(f"no unused name for a directory in {base}")


def _remove(path: Path) -> None:
    import shutil  # noqa: PLC0415  # at exit only

    shutil.rmtree(path, ignore_errors=True)


def _prepend_pythonpath(paths: list[str]) -> None:
    """Put ``paths`` first on ``PYTHONPATH``; with none (a function alone) leave it as it is:
    the user's code sees no variable it did not set, an empty one included."""
    if not paths:
        return
    current = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join([*paths, *([current] if current else [])])


def _requirement_lines(path: Path) -> list[str]:
    return [
        line.strip()
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def _install(requirements: Path, wanted: list[str]) -> str | int:
    """Install the requirements into a new private directory: its path, or an exit code."""
    # Only a job with requirements loads these: a cold worker's start is a headline figure.
    import importlib.util  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    if importlib.util.find_spec("pip") is None:
        log(
            f"the job's requirements ({', '.join(wanted)}) need pip, and this worker's Python "
            f"({sys.executable}) has none: install pip in the worker image, or the packages "
            "themselves"
        )
        return EXIT_CONFIG
    target = _private_dir("appliance-requirements-", Path(_temp_dir()))
    started = time.monotonic()
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--target",
        str(target),
        "--no-input",
        "--disable-pip-version-check",
        "--no-warn-script-location",
        "--requirement",
        str(requirements),
    ]
    done = subprocess.run(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        check=False,
    )
    if done.returncode != 0:
        tail = done.stdout.strip().splitlines()[-PIP_TAIL_LINES:]
        # The requirements pip's ERROR lines name (else the lines shown), else all of them.
        errors = [line for line in tail if line.startswith("ERROR")] or tail
        named = [r for r in wanted if any(_requirement_name(r) in line for line in errors)]
        log(
            f"pip could not install the job's requirements ({', '.join(named or wanted)}); "
            f"exit code {done.returncode}; pip's last lines:\n" + "\n".join(tail)
        )
        return EXIT_CONFIG
    log(f"installed {', '.join(wanted)} in {time.monotonic() - started:.1f} s")
    return str(target)


def _requirement_name(requirement: str) -> str:
    """The project name of a requirement line (``pkg[extra]>=1 ; marker`` -> ``pkg``)."""
    for index, char in enumerate(requirement):
        if not (char.isalnum() or char in "-_."):
            return requirement[:index] or requirement
    return requirement


def _python(version: str) -> str:
    return ".".join(version.split(".")[:2])


def _load_function() -> object:
    """The submitted function, or :class:`SystemExit` (``EXIT_CONFIG``) after a line saying
    why this Python cannot load it."""
    if _unpacked is None:
        log(f"{names.FUNCTION_ENTRYPOINT} runs only in a worker given the job's code")
        raise SystemExit(EXIT_CONFIG)
    files = _unpacked / bundle.FILES
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    try:
        info = json.loads((files / FUNCTION_INFO_FILE).read_text(encoding="utf-8"))
        pickled_by = str(info["python"])
        data = (files / names.FUNCTION_FILE).read_bytes()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log(f"the job's code holds no loadable function ({type(exc).__name__}: {exc})")
        raise SystemExit(EXIT_CONFIG) from None
    if _python(pickled_by) != here:
        log(
            f"the function was pickled by Python {pickled_by} and this worker runs Python "
            f"{sys.version.split()[0]}: a function travels by value only between the same "
            f"Python {_python(pickled_by)}.x; use a worker image with Python "
            f"{_python(pickled_by)}, or submit a script or a module:function instead"
        )
        raise SystemExit(EXIT_CONFIG)
    import pickle  # noqa: PLC0415  # cloudpickle's output loads with pickle (and cloudpickle)

    try:
        return pickle.loads(data)
    except ModuleNotFoundError as exc:
        log(
            f"cannot load the function: it needs the module {exc.name!r}, which this worker "
            "does not have; ship it with py_modules= or working_dir=, or add it to "
            "requirements= or the worker image"
        )
    except Exception as exc:  # whatever unpickling raises: the function cannot be loaded here
        log(
            f"cannot load the function in Python {sys.version.split()[0]}: "
            f"{type(exc).__name__}: {exc}"
        )
    raise SystemExit(EXIT_CONFIG)


def run_function(*args: str) -> object:
    """The entrypoint of a function submitted by value: call it with the job's arguments and
    return what it returns (the worker maps it to the exit code as for any ``module:function``);
    its exceptions propagate (exit code 1 with the traceback)."""
    function = _load_function()
    if not callable(function):
        log(f"the job's {names.FUNCTION_FILE} holds a {type(function).__name__}, not a function")
        raise SystemExit(EXIT_CONFIG)
    return function(*args)
