"""The worker entrypoint, run as a real subprocess the way pods and local workers run it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cerebras_appliance.contract import envfile, names
from cerebras_appliance.worker.entrypoint import EXIT_CONFIG, EXIT_USAGE, needs_reexec

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
    base[names.ENV_FILE_VAR] = str(env_file)
    base[names.READY_FILE_VAR] = str(tmp_path / "state" / "ready")
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


# -- stopping: SIGTERM / SIGINT, and PID 1 -----------------------------------------------------

HOLDER = """
import os, pathlib, subprocess, sys, time
out = pathlib.Path(sys.argv[1])
try:
    child = subprocess.Popen(["sleep", "600"])
    out.joinpath("started").write_text(str(child.pid))
    child.wait()
finally:
    out.joinpath("cleanup").write_text("ran")
"""


def start_worker(
    tmp_path: Path, entrypoint: str, *args: str, prefix: tuple[str, ...] = ()
) -> subprocess.Popen[str]:
    env_file = tmp_path / "env.json"
    envfile.write(env_file, [("DATA", "x")], HASH)
    base = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    base[names.ENV_FILE_VAR] = str(env_file)
    return subprocess.Popen(
        [*prefix, sys.executable, "-m", "cerebras_appliance.worker", entrypoint, *args],
        env=base,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    """Until ``path`` exists (the worker got that far), or fail with the worker's output."""
    import select

    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out = proc.communicate()[0]
            pytest.fail(f"{path.name} never appeared; worker output:\n{out}")
        select.select([], [], [], 0.02)  # poll interval, bounded by the deadline


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_stop_signal_reaches_user_code_which_cleans_up_and_exits_128_plus_n(
    tmp_path: Path, signum: int, code: int
) -> None:
    write(tmp_path / "holder.py", HOLDER)
    proc = start_worker(tmp_path, "holder.py", str(tmp_path))
    wait_for(tmp_path / "started", proc)
    started = time.monotonic()
    os.killpg(proc.pid, signum)  # as the local backend stops a worker: its whole group
    out = proc.communicate(timeout=30)[0]
    assert proc.returncode == code, out
    assert time.monotonic() - started < 5
    assert (tmp_path / "cleanup").read_text() == "ran"
    assert f"stopped by {signal.Signals(signum).name}" in out
    assert "Traceback" not in out


def test_stopped_worker_exits_143_even_if_user_code_swallows_the_exit(tmp_path: Path) -> None:
    write(
        tmp_path / "stubborn.py",
        """
        import pathlib, sys, time
        try:
            pathlib.Path(sys.argv[1], "started").write_text("1")
            time.sleep(600)
        except SystemExit:
            pass  # returns normally: the work was still not done
        """,
    )
    proc = start_worker(tmp_path, "stubborn.py", str(tmp_path))
    wait_for(tmp_path / "started", proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143


def test_user_installed_sigterm_handler_keeps_working(tmp_path: Path) -> None:
    write(
        tmp_path / "own.py",
        """
        import pathlib, signal, sys, time
        out = pathlib.Path(sys.argv[1])
        def handler(signum, frame):
            out.joinpath("handled").write_text(str(signum))
            sys.exit(7)
        signal.signal(signal.SIGTERM, handler)
        out.joinpath("started").write_text("1")
        time.sleep(600)
        """,
    )
    proc = start_worker(tmp_path, "own.py", str(tmp_path))
    wait_for(tmp_path / "started", proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 7
    assert (tmp_path / "handled").read_text() == str(int(signal.SIGTERM))


needs_pid_namespace = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="a new PID namespace needs root and util-linux's unshare",
)


@needs_pid_namespace
def test_as_pid_1_the_worker_forwards_sigterm_to_its_group_and_reaps_orphans(
    tmp_path: Path,
) -> None:
    """As a pod's PID 1 (a fresh PID namespace here): the kernel drops signals PID 1 does not
    handle, orphans are reparented to it, and it must exit with the worker's code."""
    write(
        tmp_path / "pid1.py",
        """
        import os, pathlib, subprocess, sys
        out = pathlib.Path(sys.argv[1])
        # An orphan: its parent (sh) exits at once, so PID 1 must reap it when it exits.
        subprocess.run(["sh", "-c", "sleep 0.2 & exit 0"], check=True)
        # A child in the worker's group that records the SIGTERM it gets.
        child_code = (
            "import pathlib, signal, sys, time; out = pathlib.Path(sys.argv[1]);"
            "signal.signal(signal.SIGTERM, lambda *a: (out.joinpath('child-term').write_text('1'),"
            " sys.exit(0)));"
            "out.joinpath('child-up').write_text('1'); time.sleep(600)"
        )
        child = subprocess.Popen([sys.executable, "-c", child_code, str(out)])
        try:
            while not out.joinpath("child-up").exists():
                pass  # the child has installed its handler
            out.joinpath("started").write_text(f"{os.getpid()} {os.getppid()}")
            child.wait()
        finally:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            out.joinpath("cleanup").write_text("ran")
            zombies = [
                p for p in os.listdir("/proc") if p.isdigit()
                and open(f"/proc/{p}/stat").read().split(")")[1].split()[0] == "Z"
            ]
            out.joinpath("zombies").write_text(",".join(zombies))
        """,
    )
    proc = start_worker(
        tmp_path,
        "pid1.py",
        str(tmp_path),
        prefix=("unshare", "--pid", "--fork", "--mount-proc", "--kill-child"),
    )
    wait_for(tmp_path / "started", proc)
    worker_pid, parent_pid = (tmp_path / "started").read_text().split()
    assert parent_pid == "1" and worker_pid != "1", "the worker runs under a PID 1 init"
    started = time.monotonic()
    # unshare --fork runs PID 1 as its child: signal that process as the kubelet would.
    pid1 = int(subprocess.check_output(["pgrep", "-P", str(proc.pid)], text=True).split()[0])
    os.kill(pid1, signal.SIGTERM)
    out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 143, out
    assert time.monotonic() - started < 5, "stopped promptly, not after a grace period"
    # The forwarded SIGTERM reached the worker's group: its child got it too.
    assert (tmp_path / "child-term").exists(), "the worker's child never got SIGTERM"
    assert (tmp_path / "cleanup").read_text() == "ran"
    assert (tmp_path / "zombies").read_text() == "", "orphans were reaped"
