"""The worker entrypoint, run as a real subprocess the way pods and local workers run it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cerebras_appliance import envfile
from cerebras_appliance.worker import EXIT_CONFIG, EXIT_USAGE, needs_reexec

HASH = "sha256:test"


def run_worker(
    tmp_path: Path,
    entrypoint: str,
    *args: str,
    env: list[tuple[str, str]] | None = None,
    env_file: Path | None = None,
    extra: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    if env_file is None:
        env_file = tmp_path / "env.json"
        envfile.write(env_file, env or [], HASH)
    base = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    base[envfile.ENV_FILE_VAR] = str(env_file)
    base[envfile.READY_FILE_VAR] = str(tmp_path / "state" / "ready")
    base.update(extra or {})
    return subprocess.run(
        [sys.executable, "-m", "cerebras_appliance.worker", entrypoint, *args],
        env=base,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def test_script_sees_env_argv_and_ready_marker_exists_before_user_code(tmp_path: Path) -> None:
    write(
        tmp_path / "user.py",
        """
        import os, sys, pathlib, ctypes
        libc = ctypes.CDLL(None); libc.getenv.restype = ctypes.c_char_p
        print("argv", sys.argv[1:])
        print("DATA", os.environ["DATA"], libc.getenv(b"DATA").decode())
        print("ready", pathlib.Path(os.environ["APPLIANCE_READY_FILE"]).read_text().strip())
        """,
    )
    done = run_worker(tmp_path, "user.py", "--shards", "2", env=[("DATA", "/mnt/x y")])
    assert done.returncode == 0, done.stderr
    assert "argv ['--shards', '2']" in done.stdout
    assert "DATA /mnt/x y /mnt/x y" in done.stdout  # os.environ and C getenv
    assert f"ready {HASH}" in done.stdout


def test_module_function_gets_args_and_return_code(tmp_path: Path) -> None:
    write(
        tmp_path / "userpkg.py",
        """
        import os, sys
        def main(*args):
            print("args", list(args), "argv", sys.argv, "X", os.environ.get("X"))
            return int(args[0])
        """,
    )
    done = run_worker(tmp_path, "userpkg:main", "5", env=[("X", "1")])
    assert done.returncode == 5
    assert "args ['5'] argv ['userpkg:main', '5'] X 1" in done.stdout


def test_child_process_sees_tracked_variable(tmp_path: Path) -> None:
    write(
        tmp_path / "spawn.py",
        """
        import subprocess
        subprocess.run(["sh", "-c", 'echo "child: $TOKEN"'], check=True)
        """,
    )
    done = run_worker(tmp_path, "spawn.py", env=[("TOKEN", "t-123")])
    assert done.returncode == 0, done.stderr
    assert "child: t-123" in done.stdout


def test_raising_user_code_exits_nonzero_with_traceback(tmp_path: Path) -> None:
    write(tmp_path / "boom.py", "raise RuntimeError('dataloader exploded')\n")
    done = run_worker(tmp_path, "boom.py")
    assert done.returncode == 1
    assert "Traceback" in done.stderr
    assert "RuntimeError: dataloader exploded" in done.stderr


def test_sys_exit_code_is_the_worker_exit_code(tmp_path: Path) -> None:
    write(tmp_path / "three.py", "import sys; sys.exit(3)\n")
    assert run_worker(tmp_path, "three.py").returncode == 3


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "cannot read env snapshot file"),
        ("{not json", "not valid JSON"),
        ('{"kind": "Other"}', "not an EnvSnapshot document"),
        (
            '{"kind": "EnvSnapshot", "envHash": "h", "env": [{"name": "A=B", "value": "1"}]}',
            "env[0].name",
        ),
        ('{"kind": "EnvSnapshot", "envHash": "h", "env": [{"name": "A"}]}', "env[0].value"),
        ('{"kind": "EnvSnapshot", "env": []}', "'envHash' is missing"),
    ],
)
def test_missing_or_malformed_env_file_names_the_file_and_runs_nothing(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    marker = tmp_path / "ran"
    write(tmp_path / "user.py", f"open({str(marker)!r}, 'w').write('x')\n")
    env_file = tmp_path / "broken.json"
    if content is not None:
        env_file.write_text(content)
    done = run_worker(tmp_path, "user.py", env_file=env_file)
    assert done.returncode == EXIT_CONFIG
    assert str(env_file) in done.stderr
    assert problem in done.stderr
    assert not marker.exists()
    assert not (tmp_path / "state" / "ready").exists()


def test_unset_env_file_variable_is_a_clear_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cerebras_appliance.worker", "x.py"],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == EXIT_CONFIG
    assert "APPLIANCE_ENV_FILE is not set" in done.stderr


def test_bad_entrypoint_is_a_usage_error(tmp_path: Path) -> None:
    done = run_worker(tmp_path, "not an entrypoint")
    assert done.returncode == EXIT_USAGE
    assert "neither 'package.module:function' nor a script path" in done.stderr


def test_pythonpath_from_snapshot_takes_effect_through_reexec(tmp_path: Path) -> None:
    libdir = tmp_path / "lib"
    libdir.mkdir()
    write(libdir / "only_on_pythonpath.py", "VALUE = 'imported'\n")
    write(
        tmp_path / "user.py",
        """
        import os, sys
        import only_on_pythonpath
        print("module", only_on_pythonpath.VALUE)
        print("hashseed", sys.flags.hash_randomization, os.environ["PYTHONHASHSEED"])
        print("marker", "APPLIANCE_WORKER_REEXECUTED" in os.environ)
        """,
    )
    done = run_worker(
        tmp_path, "user.py", env=[("PYTHONPATH", str(libdir)), ("PYTHONHASHSEED", "0")]
    )
    assert done.returncode == 0, done.stderr
    assert "module imported" in done.stdout
    assert "hashseed 0 0" in done.stdout  # PYTHONHASHSEED=0 disables hash randomization
    assert "marker False" in done.stdout
    assert done.stderr.count("re-executing once") == 1


def test_no_reexec_without_startup_variables(tmp_path: Path) -> None:
    write(tmp_path / "user.py", "print('ok')\n")
    done = run_worker(tmp_path, "user.py", env=[("PLAIN", "1")])
    assert done.returncode == 0
    assert "re-executing" not in done.stderr


def test_needs_reexec_only_for_changed_startup_variables() -> None:
    env = (("PYTHONPATH", "/x"), ("OMP_NUM_THREADS", "4"), ("PLAIN", "1"))
    assert needs_reexec(env, {}) == ["PYTHONPATH", "OMP_NUM_THREADS"]
    assert needs_reexec(env, {"PYTHONPATH": "/x", "OMP_NUM_THREADS": "4"}) == []
