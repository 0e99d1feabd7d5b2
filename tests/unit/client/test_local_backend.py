"""submit() on the local backend: snapshot semantics, isolation, failures, logs."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import cerebras_appliance as app
from cerebras_appliance.backends.local.job import LocalJob
from cerebras_appliance.backends.local.state import base_environment
from cerebras_appliance.contract import envfile
from cerebras_appliance.contract.api import InvalidJobError
from cerebras_appliance.environment import appliance_environ

SHOW = textwrap.dedent(
    """
    import os, subprocess, sys
    me = os.environ["APPLIANCE_WORKER_NAME"]
    for name in sys.argv[1:]:
        print(f"{me} {name}={os.environ.get(name, '<absent>')}")
    subprocess.run([sys.executable, "-c",
        "import os; print('child', os.environ.get('" + sys.argv[1] + "'))"], check=True)
    """
)


@pytest.fixture
def show(tmp_path: Path) -> str:
    script = tmp_path / "show.py"
    script.write_text(SHOW)
    return str(script)


def run(job: app.Job) -> dict[str, str]:
    status = job.wait(timeout=60)
    logs = job.logs()
    assert status.phase == "Succeeded", logs
    return logs


def test_tracked_vars_reach_every_worker_and_untracked_do_not(show: str) -> None:
    appliance_environ["foo"] = "1"
    os.environ["bar"] = "2"
    with app.submit(show, replicas=2, args=["foo", "bar"], name="t-isolation") as job:
        logs = run(job)
        assert set(logs) == {"t-isolation-worker-0", "t-isolation-worker-1"}
        for name, text in logs.items():
            assert f"{name} foo=1" in text
            assert f"{name} bar=<absent>" in text
            assert "child 1" in text  # a child process of the worker sees it too
        status = job.status()
        assert status.succeeded == 2 and status.failed == 0 and status.replicas == 2
        assert isinstance(job, LocalJob)
        assert status.env_hash == job.env_hash
        assert status.env_hash is not None and status.env_hash.startswith("hmac-sha256:")


def test_snapshot_is_taken_at_submit(show: str) -> None:
    appliance_environ["foo"] = "first"
    first = app.submit(show, args=["foo"], name="t-snap-1")
    appliance_environ["foo"] = "second"  # after the first job was created
    second = app.submit(show, args=["foo"], name="t-snap-2")
    try:
        assert "foo=first" in run(first)["t-snap-1-worker-0"]
        assert "foo=second" in run(second)["t-snap-2-worker-0"]
        # The manifest holds names and references; the values are only in the env files.
        assert [e["name"] for e in first.manifest["spec"]["env"]] == ["foo"]
        assert "first" not in repr(first.manifest["spec"]["env"])
    finally:
        first.delete()
        second.delete()


def test_variables_of_the_callers_environment_do_not_leak(show: str) -> None:
    os.environ["CALLER_SECRET"] = "nope"
    with app.submit(show, args=["CALLER_SECRET", "HOME"], name="t-base") as job:
        text = run(job)["t-base-worker-0"]
        assert "CALLER_SECRET=<absent>" in text
        assert f"HOME={os.environ['HOME']}" in text  # part of the documented base


def test_pythonpath_set_through_appliance_environ_takes_effect(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "extra_mod.py").write_text("WHERE = 'found on PYTHONPATH'\n")
    (tmp_path / "use.py").write_text("import extra_mod\nprint(extra_mod.WHERE)\n")
    appliance_environ["PYTHONPATH"] = str(lib)
    with app.submit(str(tmp_path / "use.py"), name="t-pythonpath") as job:
        assert "found on PYTHONPATH" in run(job)["t-pythonpath-worker-0"]


def test_failing_worker_fails_the_job_naming_worker_and_exit_code(tmp_path: Path) -> None:
    script = tmp_path / "fail.py"
    script.write_text(
        "import os, sys\nif os.environ['APPLIANCE_WORKER_INDEX'] == '1':\n    sys.exit(3)\n"
    )
    with app.submit(str(script), replicas=2, name="t-fail") as job:
        status = job.wait(timeout=60)
        assert status.phase == "Failed"
        failed = status.condition("Failed")
        assert failed is not None and failed.status == "True"
        assert failed.reason == "BackoffLimitExceeded"
        assert "worker t-fail-worker-1 failed (exit code 3)" in failed.message
        assert status.failed == 1


def test_backoff_limit_replaces_failed_workers(tmp_path: Path) -> None:
    counter = tmp_path / "attempts"
    script = tmp_path / "flaky.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import pathlib, sys
            p = pathlib.Path({str(counter)!r})
            n = int(p.read_text()) if p.exists() else 0
            p.write_text(str(n + 1))
            sys.exit(0 if n >= 2 else 1)
            """
        )
    )
    with app.submit(str(script), backoff_limit=2, name="t-backoff") as job:
        status = job.wait(timeout=60)
        assert status.phase == "Succeeded", job.logs()
        assert status.failed == 2
        assert counter.read_text() == "3"


def test_deadline_fails_a_job_that_runs_too_long(tmp_path: Path) -> None:
    script = tmp_path / "slow.py"
    script.write_text("import time\ntime.sleep(600)\n")
    with app.submit(str(script), active_deadline_seconds=1, name="t-deadline") as job:
        status = job.wait(timeout=60)
        assert status.phase == "Failed"
        failed = status.condition("Failed")
        assert failed is not None and failed.reason == "DeadlineExceeded"


def test_delete_stops_workers_and_removes_the_env_file(tmp_path: Path) -> None:
    script = tmp_path / "slow.py"
    script.write_text("import time\ntime.sleep(600)\n")
    appliance_environ["TOKEN"] = "s3cret"
    job = app.submit(str(script), name="t-delete")
    assert isinstance(job, LocalJob)
    env_file = job.env_file
    assert envfile.read(env_file).env == (("TOKEN", "s3cret"),)
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    procs = [w.proc for w in job.processes]
    job.delete()
    assert all(p is None or p.poll() is not None for p in procs)
    assert not env_file.exists()


def test_status_reports_ready_once_env_applied(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    script = tmp_path / "wait_gate.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import pathlib, time
            # Hold the worker in user code until the test opens the gate (bounded wait).
            gate, deadline = pathlib.Path({str(gate)!r}), time.monotonic() + 60
            while not gate.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            """
        )
    )
    with app.submit(str(script), replicas=2, name="t-ready") as job:
        assert isinstance(job, LocalJob)
        # wait (bounded) until both readiness markers exist: env applied, user code entered
        deadline = time.monotonic() + 30
        status = job.status()
        while status.ready_replicas < 2 and time.monotonic() < deadline:
            job.wait_for_a_worker(0.01)
            status = job.status()
        assert status.ready_replicas == 2, (status, job.logs())
        assert status.phase == "Running"
        ready = status.condition("WorkersReady")
        assert ready is not None and ready.status == "True" and ready.reason == "EnvApplied"
        # A file, not a FIFO: a FIFO write can reach a worker that has not opened it yet.
        gate.write_text("go")
        assert job.wait(timeout=60).phase == "Succeeded"


def test_invalid_submissions_are_refused_before_anything_runs(show: str) -> None:
    with pytest.raises(InvalidJobError, match=r"spec.replicas: Input should be greater than"):
        app.submit(show, replicas=0)
    with pytest.raises(InvalidJobError, match=r"metadata.name: 'Bad_Name' is not a valid"):
        app.submit(show, name="Bad_Name")
    with pytest.raises(InvalidJobError, match=r"spec.entrypoint: 'no way' is neither"):
        app.submit("no way")
    with pytest.raises(InvalidJobError, match=r"sensitive: 'NOPE' is not a tracked"):
        app.submit(show, sensitive=["NOPE"])
    with pytest.raises(ValueError, match="backend"):
        app.submit(show, backend="moon")  # type: ignore[arg-type]


def test_base_environment_is_minimal() -> None:
    env = base_environment({"PATH": "/bin", "HOME": "/h", "SECRET": "x", "LANG": "C.UTF-8"})
    assert env == {"PATH": "/bin", "HOME": "/h", "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"}
    assert base_environment({})["PATH"] == os.defpath


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie is gone too: reaped by init once its parent (the submitter) has exited.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    return True


def test_a_dropped_handle_does_not_let_workers_outlive_the_interpreter(tmp_path: Path) -> None:
    """``app.submit(...)`` without keeping the handle: the worker still stops at exit (a
    ``WeakSet`` of live jobs lost the garbage-collected handle and left it running)."""
    pid_file = tmp_path / "worker.pid"
    loader = tmp_path / "forever.py"
    loader.write_text(
        "import os, sys, time\n"
        f"open({str(pid_file)!r} + '.tmp', 'w').write(str(os.getpid()))\n"
        f"os.rename({str(pid_file)!r} + '.tmp', {str(pid_file)!r})\n"
        "time.sleep(600)\n"
    )
    submitter = tmp_path / "submit_and_drop.py"
    submitter.write_text(
        textwrap.dedent(
            f"""
            import gc, os, time
            import cerebras_appliance as app
            app.submit({str(loader)!r}, backend="local")   # the handle is dropped at once
            gc.collect()
            deadline = time.monotonic() + 60
            while not os.path.exists({str(pid_file)!r}):   # the worker runs the user's code
                assert time.monotonic() < deadline, "the worker never started"
                time.sleep(0.01)
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(submitter)],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    pid = int(pid_file.read_text())
    try:
        deadline = time.monotonic() + 30
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(pid), f"worker {pid} outlived the interpreter that submitted it"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
