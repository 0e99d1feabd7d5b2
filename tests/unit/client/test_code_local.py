"""The user's own code on the local backend (issue 23): captured by ``code.capture`` at the
call, run by real worker subprocesses (cold and warm) from an unpacked copy."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from cerebras_appliance.backends.local.job import LocalJob
from cerebras_appliance.code import FUNCTION_INFO_FILE, Capture, capture
from cerebras_appliance.contract import bundle as bundles
from cerebras_appliance.contract import claim as claims
from cerebras_appliance.contract import envfile, names
from cerebras_appliance.contract.api import InvalidJobError
from cerebras_appliance.contract.status import ExecuteJobStatus
from cerebras_appliance.environment import appliance_environ
from cerebras_appliance.jobs import build_job
from cerebras_appliance.pool import LocalPool
from cerebras_appliance.worker.report import EXIT_CONFIG

#: What the by-value test function reads from a closure, besides the snapshot.
CLOSURE_FACTOR = 6


def start(
    captured: Capture,
    replicas: int = 1,
    *,
    args: Sequence[str] = (),
    pool: LocalPool | None = None,
) -> LocalJob:
    """A local job of the captured code, as submit() will make it (the snapshot: now)."""
    snapshot = appliance_environ.snapshot()
    job = build_job(captured.entrypoint, replicas, snapshot, args=args)
    return LocalJob(job, snapshot, pool=pool, code=captured.bundle)


def finish(job: LocalJob) -> tuple[ExecuteJobStatus, dict[str, str]]:
    try:
        status = job.wait(timeout=120, progress=False)
        return status, job.logs()
    finally:
        job.delete()


def succeeded(job: LocalJob) -> dict[str, str]:
    status, logs = finish(job)
    assert status.phase == "Succeeded", logs
    return logs


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def pool() -> Iterator[LocalPool]:
    with LocalPool(size=2) as p:
        assert p.wait_idle(timeout=60), p.counts()
        yield p


def make_loader() -> Callable[..., int]:
    """A function defined here (not importable by a worker) with a closure variable."""
    factor = CLOSURE_FACTOR

    def loader(*args: str) -> int:
        import os

        print(
            "loader",
            os.environ["APPLIANCE_WORKER_INDEX"],
            "factor",
            factor * len(args),
            "args",
            list(args),
            "tracked",
            appliance_environ.get("SHARD_ROOT"),
            "untracked",
            os.environ.get("NOT_TRACKED", "<absent>"),
        )
        return 0

    return loader


# -- a function by value ------------------------------------------------------------------


def test_a_closure_using_a_tracked_variable_runs_by_value_on_two_cold_workers() -> None:
    appliance_environ["SHARD_ROOT"] = "/data/shards"
    os.environ["NOT_TRACKED"] = "leak"
    captured = capture(make_loader())
    assert captured.entrypoint == names.FUNCTION_ENTRYPOINT
    logs = succeeded(start(captured, 2, args=["a", "b"]))
    assert len(logs) == 2
    for index, (_, text) in enumerate(sorted(logs.items())):  # by worker name
        line = (
            f"loader {index} factor {CLOSURE_FACTOR * 2} args ['a', 'b'] "
            "tracked /data/shards untracked <absent>"
        )
        assert line in text, text


def test_a_closure_runs_on_warm_pool_workers_the_code_coming_with_the_claim(
    pool: LocalPool,
) -> None:
    appliance_environ["SHARD_ROOT"] = "/warm"
    job = start(capture(make_loader()), 2, pool=pool)
    assert [p.warm for p in job.processes] == [True, True]
    logs = succeeded(job)
    for text in logs.values():
        assert "factor 0 args [] tracked /warm untracked <absent>" in text, text
    assert pool.counts().cold_fallbacks == 0


def module_helper() -> str:
    """A module-level helper of this (not installed, not shipped) test module."""
    return "helped"


def function_pickle(captured: Capture, tmp_path: Path) -> bytes:
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir(mode=0o700)
    bundles.unpack(captured.bundle.data, unpacked)
    return (unpacked / bundles.FILES / names.FUNCTION_FILE).read_bytes()


def test_module_level_helpers_of_an_unshipped_module_travel_by_value_with_the_function(
    tmp_path: Path,
) -> None:
    def uses_helper() -> None:
        print("helper says", module_helper())

    captured = capture(uses_helper)
    assert b"helped" in function_pickle(captured, tmp_path)  # the helper's code, by value
    text = next(iter(succeeded(start(captured)).values()))
    assert "helper says helped" in text, text


def test_a_function_of_a_shipped_py_module_goes_by_reference_and_runs_the_captured_copy(
    tmp_path: Path,
) -> None:
    module = write(
        tmp_path / "lib" / "fnmod_issue23.py",
        """
        def hello(*args):
            print("hello from", __name__, list(args))
        """,
    )
    sys.path.insert(0, str(module.parent))
    try:
        import fnmod_issue23  # type: ignore[import-not-found]

        captured = capture(fnmod_issue23.hello, py_modules=[module])
    finally:
        sys.path.remove(str(module.parent))
        sys.modules.pop("fnmod_issue23", None)
    pickled = bundles_text(captured.bundle)
    assert "fnmod_issue23" in pickled and "hello from" in pickled  # the module file, shipped
    assert b"hello from" not in function_pickle(captured, tmp_path)  # by reference
    module.write_text("def hello(*args):\n    print('edited')\n")  # after the capture
    text = next(iter(succeeded(start(captured, args=["z"])).values()))
    assert "hello from fnmod_issue23 ['z']" in text, text


def test_a_function_that_raises_fails_its_worker_with_exit_code_1_and_the_traceback() -> None:
    def broken(*args: str) -> None:
        raise ValueError(f"bad shard {args}")

    status, logs = finish(start(capture(broken), args=["7"]))
    (text,) = logs.values()
    assert status.phase == "Failed"
    failed = status.condition("Failed")
    assert failed is not None and "failed (exit code 1)" in failed.message
    assert "ValueError: bad shard ('7',)" in text and "Traceback" in text


def test_a_function_returning_an_int_exits_with_it_as_a_module_function_does() -> None:
    def three() -> int:
        return 3

    status, _ = finish(start(capture(three)))
    failed = status.condition("Failed")
    assert failed is not None and "failed (exit code 3)" in failed.message


def test_a_function_needing_a_module_the_worker_lacks_names_the_module(tmp_path: Path) -> None:
    write(tmp_path / "lib" / "local_helper_mod.py", "def value():\n    return 1\n")
    sys.path.insert(0, str(tmp_path / "lib"))
    try:
        import local_helper_mod  # type: ignore[import-not-found]

        def uses_helper() -> int:
            return int(local_helper_mod.value()) - 1

        captured = capture(uses_helper)
    finally:
        sys.path.remove(str(tmp_path / "lib"))
        sys.modules.pop("local_helper_mod", None)
    status, logs = finish(start(captured))
    (text,) = logs.values()
    assert f"failed (exit code {EXIT_CONFIG})" in str(status.condition("Failed"))
    assert "needs the module 'local_helper_mod', which this worker does not have" in text
    assert "py_modules=" in text and "Traceback" not in text


def test_the_same_helper_shipped_with_py_modules_loads(tmp_path: Path) -> None:
    write(tmp_path / "lib" / "local_helper_two.py", "def value():\n    return 41\n")
    sys.path.insert(0, str(tmp_path / "lib"))
    try:
        import local_helper_two  # type: ignore[import-not-found]

        def uses_helper() -> None:
            print("helper", local_helper_two.value() + 1)

        captured = capture(uses_helper, py_modules=[tmp_path / "lib" / "local_helper_two.py"])
    finally:
        sys.path.remove(str(tmp_path / "lib"))
        sys.modules.pop("local_helper_two", None)
    assert "helper 42" in next(iter(succeeded(start(captured)).values()))


def test_a_function_pickled_by_another_python_version_names_both_versions(
    tmp_path: Path,
) -> None:
    real = capture(make_loader())
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir(mode=0o700)
    bundles.unpack(real.bundle.data, unpacked)
    files = unpacked / bundles.FILES
    forged = bundles.pack(
        None,
        files={
            names.FUNCTION_FILE: (files / names.FUNCTION_FILE).read_bytes(),
            FUNCTION_INFO_FILE: json.dumps({"python": "3.99.1"}).encode(),
        },
    )
    status, logs = finish(start(Capture(forged, real.entrypoint)))
    (text,) = logs.values()
    here = sys.version.split()[0]
    assert f"pickled by Python 3.99.1 and this worker runs Python {here}" in text, text
    assert f"failed (exit code {EXIT_CONFIG})" in str(status.condition("Failed"))
    assert "loader" not in text.replace("appliance worker", "")  # the function never ran


def test_os_environ_in_a_function_is_the_workers_and_its_values_never_travel() -> None:
    os.environ["CALLER_ONLY_SECRET"] = "s3cret-value"
    environ = os.environ

    def show() -> None:
        print("secret", environ.get("CALLER_ONLY_SECRET", "<absent>"))

    captured = capture(show)
    assert b"s3cret-value" not in captured.bundle.data
    unpacked_text = bundles_text(captured.bundle)
    assert "s3cret-value" not in unpacked_text
    assert "secret <absent>" in next(iter(succeeded(start(captured)).values()))


def bundles_text(bundle: bundles.Bundle) -> str:
    import gzip

    return gzip.decompress(bundle.data).decode("latin-1")


# -- working_dir and py_modules -------------------------------------------------------------


def project(root: Path, version: str) -> Path:
    """A working directory: a script importing a local package that is on no sys.path."""
    write(root / "mylib_issue23" / "__init__.py", f"VERSION = {version!r}\n")
    write(
        root / "tools" / "run.py",
        """
        import os, subprocess, sys
        from pathlib import Path
        import mylib_issue23
        here = Path.cwd()
        print("version", mylib_issue23.VERSION, "arg", sys.argv[1:])
        copy = here.name == "working_dir" and here.parent.name.startswith("appliance-code-")
        print("cwd-is-copy", copy)
        print("private", oct(here.parent.stat().st_mode & 0o777))
        print("copy-root", here.parent)
        print("tracked", os.environ.get("SHARD_ROOT"))
        subprocess.run([sys.executable, "-c",
            "import mylib_issue23; print('child', mylib_issue23.VERSION)"], check=True)
        """,
    )
    return root


def test_a_working_dir_script_imports_a_local_package_from_a_private_copy(
    tmp_path: Path,
) -> None:
    wd = project(tmp_path / "proj", "1")
    appliance_environ["SHARD_ROOT"] = "/s"
    captured = capture("tools/run.py", working_dir=wd)
    assert captured.entrypoint == "tools/run.py"
    logs = succeeded(start(captured, 2, args=["x"]))
    copies = set()
    for text in logs.values():
        assert "version 1 arg ['x']" in text and "cwd-is-copy True" in text, text
        assert "private 0o700" in text and "tracked /s" in text and "child 1" in text
        copies.add(next(line for line in text.splitlines() if line.startswith("copy-root")))
    assert len(copies) == 2  # each worker its own copy
    for line in copies:
        assert not Path(line.split(" ", 1)[1]).exists()  # removed when the worker exited


def test_an_absolute_script_path_inside_working_dir_becomes_relative(tmp_path: Path) -> None:
    wd = project(tmp_path / "proj", "1")
    assert capture(str(wd / "tools" / "run.py"), working_dir=wd).entrypoint == "tools/run.py"


def test_editing_the_package_after_capture_changes_nothing_and_a_new_capture_sees_it(
    tmp_path: Path, pool: LocalPool
) -> None:
    wd = project(tmp_path / "proj", "old")
    first = capture("tools/run.py", working_dir=wd)
    project(wd, "new")  # edited after the capture, before the job starts
    assert "version old" in next(iter(succeeded(start(first)).values()))
    assert "version old" in next(iter(succeeded(start(first, pool=pool)).values()))
    second = capture("tools/run.py", working_dir=wd)
    assert second.bundle.sha256 != first.bundle.sha256
    assert "version new" in next(iter(succeeded(start(second)).values()))


def test_py_modules_are_importable_by_the_worker_and_its_children(tmp_path: Path) -> None:
    write(tmp_path / "pkgs" / "featurize_pkg" / "__init__.py", "")
    write(
        tmp_path / "pkgs" / "featurize_pkg" / "main.py",
        """
        import subprocess, sys
        import single_mod_issue23
        def main(*args):
            print("main", single_mod_issue23.NAME, list(args))
            subprocess.run([sys.executable, "-c",
                "import featurize_pkg.main, single_mod_issue23; print('child ok')"], check=True)
        """,
    )
    write(tmp_path / "single_mod_issue23.py", "NAME = 'single'\n")
    captured = capture(
        "featurize_pkg.main:main",
        py_modules=[tmp_path / "pkgs" / "featurize_pkg", str(tmp_path / "single_mod_issue23.py")],
    )
    assert captured.bundle.py_modules == ("featurize_pkg", "single_mod_issue23")
    text = next(iter(succeeded(start(captured, args=["1"])).values()))
    assert "main single ['1']" in text and "child ok" in text


def test_a_snapshot_pythonpath_reexecutes_first_and_the_code_goes_before_it(tmp_path: Path) -> None:
    write(tmp_path / "env_lib" / "from_env_issue23.py", "WHERE = 'snapshot'\n")
    write(tmp_path / "mods" / "from_code_issue23.py", "WHERE = 'bundle'\n")
    appliance_environ["PYTHONPATH"] = str(tmp_path / "env_lib")

    def both() -> None:
        import os

        import from_code_issue23  # type: ignore[import-not-found]
        import from_env_issue23  # type: ignore[import-not-found]

        print("found", from_code_issue23.WHERE, from_env_issue23.WHERE)
        print("pythonpath", os.environ["PYTHONPATH"].split(os.pathsep)[-1])

    captured = capture(both, py_modules=[tmp_path / "mods" / "from_code_issue23.py"])
    text = next(iter(succeeded(start(captured)).values()))
    assert "re-executing once" in text and "found bundle snapshot" in text, text
    assert f"pythonpath {tmp_path / 'env_lib'}" in text  # the snapshot's entry kept, last


# -- requirements ---------------------------------------------------------------------------


def tiny_wheel(directory: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel built by hand (no build backend, no network)."""
    directory.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-{version}"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n".encode(),
        f"{dist}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        ).encode(),
        f"{dist}.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}.dist-info/RECORD,,")
    files[f"{dist}.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = directory / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


def offline_index(tmp_path: Path) -> None:
    """pip in the worker reads only the test's wheels: set through the job's snapshot."""
    tiny_wheel(tmp_path / "wheels", "appliance_tinypkg", "1.0")
    appliance_environ["PIP_NO_INDEX"] = "1"
    appliance_environ["PIP_FIND_LINKS"] = str(tmp_path / "wheels")


def test_requirements_are_installed_before_the_function_runs(tmp_path: Path) -> None:
    offline_index(tmp_path)

    def uses_requirement() -> None:
        import subprocess
        import sys

        import appliance_tinypkg  # type: ignore[import-not-found]

        print(
            "tinypkg",
            appliance_tinypkg.VERSION,
            sys.path.index(appliance_tinypkg.__path__[0][: -len("/appliance_tinypkg")]) >= 0,
        )
        subprocess.run(
            [sys.executable, "-c", "import appliance_tinypkg; print('child ok')"], check=True
        )

    text = next(
        iter(
            succeeded(
                start(capture(uses_requirement, requirements=["appliance_tinypkg==1.0"]))
            ).values()
        )
    )
    assert "installed appliance_tinypkg==1.0" in text and "tinypkg 1.0 True" in text, text
    assert "child ok" in text


def test_a_failing_requirement_names_it_and_shows_pips_last_lines(tmp_path: Path) -> None:
    offline_index(tmp_path)
    captured = capture(
        "json:dumps", requirements=["appliance_tinypkg==1.0", "appliance-nosuchpkg==2.0"]
    )
    status, logs = finish(start(captured))
    (text,) = logs.values()
    assert f"failed (exit code {EXIT_CONFIG})" in str(status.condition("Failed"))
    assert "pip could not install the job's requirements (appliance-nosuchpkg==2.0)" in text
    assert "No matching distribution found for appliance-nosuchpkg==2.0" in text, text


# -- a job without code, a bundle that does not match -----------------------------------------


def test_a_job_without_code_loads_neither_the_bundle_reader_nor_cloudpickle(
    tmp_path: Path,
) -> None:
    script = write(
        tmp_path / "mods.py",
        """
        import sys
        wanted = ("cloudpickle", "cerebras_appliance.contract.bundle",
                  "cerebras_appliance.worker.code")
        print("loaded", [m for m in wanted if m in sys.modules])
        """,
    )
    snapshot: list[tuple[str, str]] = []
    job = LocalJob(build_job(str(script), 1, snapshot), snapshot)
    assert "loaded []" in next(iter(succeeded(job).values()))


def run_worker_with_code(
    tmp_path: Path, captured: Capture, sha256: str, extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The worker as a pod runs it: the bundle split in chunk files (2 KiB each here)."""
    code = tmp_path / "code"
    code.mkdir()
    for index, chunk in enumerate(bundles.split(captured.bundle.data, 2048)):
        (code / f"{names.CODE_CHUNK_PREFIX}{index:03d}").write_bytes(chunk)
    env_file = tmp_path / "env.json"
    envfile.write(env_file, [], "sha256:test")
    return subprocess.run(
        [sys.executable, "-m", "cerebras_appliance.worker", captured.entrypoint],
        env={
            "PATH": os.environ["PATH"],
            names.ENV_FILE_VAR: str(env_file),
            names.CODE_DIR_VAR: str(code),
            names.CODE_SHA256_VAR: sha256,
            **(extra or {}),
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_chunks_are_joined_in_order_and_unpacked_into_the_state_dir_when_there_is_one(
    tmp_path: Path,
) -> None:
    write(tmp_path / "wd" / "run.py", "import os\nprint('cwd', os.getcwd())\n")
    (tmp_path / "wd" / "data.bin").write_bytes(os.urandom(6000))  # several chunks
    captured = capture("run.py", working_dir=tmp_path / "wd")
    assert len(bundles.split(captured.bundle.data, 2048)) > 2
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    done = run_worker_with_code(
        tmp_path, captured, captured.bundle.sha256, {names.STATE_DIR_VAR: str(state)}
    )
    assert done.returncode == 0, done.stderr
    assert f"cwd {state}/appliance-code-" in done.stdout
    assert list(state.iterdir()) == []  # removed at exit


def test_a_warm_worker_takes_code_brought_in_the_claim_as_on_kubernetes(tmp_path: Path) -> None:
    write(tmp_path / "wd" / "run.py", "import os\nprint('cwd', os.getcwd(), os.environ['X'])\n")
    captured = capture("run.py", working_dir=tmp_path / "wd")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cerebras_appliance.worker", names.WARM_FLAG],
        env={
            "PATH": os.environ["PATH"],
            names.CLAIM_FD_VAR: str(read_end),
            names.POOL_WORKER_VAR: "w-1",
            names.STATE_DIR_VAR: str(state),
        },
        cwd=tmp_path,
        pass_fds=(read_end,),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(read_end)
    key, digest = envfile.seal([("X", "1")])
    claim = claims.Claim(
        worker="w-1",
        entrypoint=captured.entrypoint,
        args=(),
        plumbing=((names.CODE_SHA256_VAR, captured.bundle.sha256),),
        snapshot=envfile.dumps([("X", "1")], digest, key),
        code=captured.bundle.data,
    )
    os.write(write_end, claims.dumps(claim))
    os.close(write_end)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"cwd {state}/appliance-code-" in out and out.strip().endswith(" 1"), out
    left = sorted(p.name for p in state.iterdir())
    assert not [name for name in left if "code" in name], left  # chunk and copy removed


def test_a_bundle_whose_hash_is_not_the_expected_one_runs_nothing(tmp_path: Path) -> None:
    real = capture("run.py", working_dir=write(tmp_path / "wd" / "run.py", "print('ran')\n").parent)
    done = run_worker_with_code(tmp_path, real, "sha256:" + "0" * 64)
    assert done.returncode == EXIT_CONFIG
    assert "cannot unpack the job's code" in done.stderr and "not the expected" in done.stderr
    assert "ran" not in done.stdout


# -- capture's errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"working_dir": "/nonexistent/wd"}, "working_dir: /nonexistent/wd is not a directory"),
        ({"py_modules": ["/nonexistent/m.py"]}, "py_modules: /nonexistent/m.py is neither"),
        ({"py_modules": "/x"}, "py_modules: give a list"),
        ({"requirements": "numpy"}, "requirements: give a list of requirement strings"),
        ({"requirements": ["--index-url=http://x"]}, "is an option of pip, not a requirement"),
        ({"requirements": ["a\nb"]}, "spans lines"),
    ],
)
def test_bad_arguments_are_invalid_job_errors_naming_the_argument(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidJobError, match="invalid ExecuteJob") as info:
        capture("json:dumps", **kwargs)
    assert any(message in error for error in info.value.errors), info.value.errors


def test_a_script_outside_working_dir_or_missing_from_it_is_named(tmp_path: Path) -> None:
    wd = project(tmp_path / "proj", "1")
    with pytest.raises(
        InvalidJobError, match=r"entrypoint: 'nope\.py' is not a file in working_dir"
    ):
        capture("nope.py", working_dir=wd)
    with pytest.raises(InvalidJobError, match="is not inside working_dir"):
        capture("../outside.py", working_dir=wd)
    with pytest.raises(InvalidJobError, match="entrypoint: must be a script path"):
        capture(42, working_dir=wd)  # type: ignore[arg-type]


def test_a_function_that_cannot_be_pickled_is_an_invalid_job() -> None:
    import threading

    lock = threading.Lock()

    def holds_a_lock() -> None:
        with lock:
            pass

    with pytest.raises(InvalidJobError, match="entrypoint: the function cannot be pickled"):
        capture(holds_a_lock)


def test_a_capture_is_the_same_bundle_for_the_same_files(tmp_path: Path) -> None:
    wd = project(tmp_path / "proj", "1")
    assert (
        capture("tools/run.py", working_dir=wd).bundle
        == capture("tools/run.py", working_dir=wd).bundle
    )


def test_a_function_alone_leaves_pythonpath_unset_in_the_worker() -> None:
    """A bundle with no import path (a function, no working_dir or py_modules) adds no
    PYTHONPATH: the user's code sees no variable it did not set (an empty one included)."""
    appliance_environ.pop("PYTHONPATH", None)

    def show() -> None:
        import os

        print("pythonpath", repr(os.environ.get("PYTHONPATH", "<unset>")))

    text = next(iter(succeeded(start(capture(show))).values()))
    assert "pythonpath '<unset>'" in text, text
