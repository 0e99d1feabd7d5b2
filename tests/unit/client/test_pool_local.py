"""Warm pools on the local backend: real warm worker processes, claimed over their pipes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import cerebras_appliance as app
from cerebras_appliance.backends.local.job import LocalJob
from cerebras_appliance.contract import claim as claims
from cerebras_appliance.contract import envfile, names
from cerebras_appliance.contract.api import InvalidJobError
from cerebras_appliance.environment import appliance_environ
from cerebras_appliance.pool import LocalPool
from cerebras_appliance.worker import entrypoint as worker_mod

SHOW = textwrap.dedent(
    """
    import os, subprocess, sys
    print("pid", os.getpid())
    for name in sys.argv[1:]:
        print(f"{name}={os.environ.get(name, '<absent>')}")
    print("warmvars", sorted(k for k in os.environ if k.startswith("APPLIANCE_CLAIM")
                                                   or k.startswith("APPLIANCE_WARM")))
    subprocess.run([sys.executable, "-c",
        "import os; print('child', os.environ.get('" + sys.argv[1] + "', '<absent>'))"],
        check=True)
    """
)


@pytest.fixture
def show(tmp_path: Path) -> str:
    script = tmp_path / "show.py"
    script.write_text(SHOW)
    return str(script)


@pytest.fixture
def pool() -> Iterator[LocalPool]:
    with LocalPool(size=3, imports=["json"]) as p:
        assert p.wait_idle(timeout=60), p.counts()
        yield p


def run(job: app.Job) -> dict[str, str]:
    status = job.wait(timeout=60)
    logs = job.logs()
    assert status.phase == "Succeeded", logs
    job.delete()
    return logs


def pids(logs: dict[str, str]) -> set[str]:
    return {
        line.split()[1] for text in logs.values() for line in text.splitlines() if "pid " in line
    }


def test_warm_workers_see_tracked_vars_and_children_do_too_never_untracked(
    pool: LocalPool, show: str
) -> None:
    appliance_environ["FOO"] = "1"
    os.environ["BAR"] = "2"
    before = {proc.pid for proc in pool.processes}
    logs = run(pool.submit(show, replicas=3, args=["FOO", "BAR"]))
    assert len(logs) == 3
    for text in logs.values():
        assert "FOO=1" in text and "BAR=<absent>" in text and "child 1" in text
        assert "warmvars []" in text  # the pool's plumbing is gone before user code runs
    assert pids(logs) == {str(pid) for pid in before}  # the pre-started processes ran it
    assert pool.counts().claimed == 3 and pool.counts().cold_fallbacks == 0


def test_second_job_gets_fresh_workers_and_none_of_the_first_jobs_variables(
    pool: LocalPool, show: str
) -> None:
    appliance_environ["FIRST_ONLY"] = "secret-1"
    first = run(app.submit(show, replicas=2, args=["FIRST_ONLY"], pool=pool))
    del appliance_environ["FIRST_ONLY"]
    appliance_environ["SECOND"] = "2"
    assert pool.wait_idle(timeout=60)
    second = run(app.submit(show, replicas=2, args=["SECOND", "FIRST_ONLY"], pool=pool))
    assert pids(first).isdisjoint(pids(second))
    for text in second.values():
        assert "SECOND=2" in text and "FIRST_ONLY=<absent>" in text
        assert "secret-1" not in text


def test_job_larger_than_the_pool_gets_warm_and_cold_workers(pool: LocalPool, show: str) -> None:
    appliance_environ["FOO"] = "x"
    job = pool.submit(show, replicas=5, args=["FOO"])
    assert isinstance(job, app.Job)
    assert isinstance(job, LocalJob)
    warm = [w.warm for w in job.processes]
    assert warm.count(True) == 3 and warm.count(False) == 2
    logs = run(job)
    assert all("FOO=x" in text for text in logs.values()) and len(logs) == 5
    assert pool.counts().cold_fallbacks == 2


def test_startup_variable_in_the_snapshot_reexecutes_the_warm_worker(
    pool: LocalPool, tmp_path: Path
) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "extra_mod.py").write_text("VALUE = 'from PYTHONPATH'\n")
    (tmp_path / "use.py").write_text("import extra_mod; print('got', extra_mod.VALUE)\n")
    appliance_environ["PYTHONPATH"] = str(lib)
    logs = run(pool.submit(str(tmp_path / "use.py"), replicas=2))
    for text in logs.values():
        assert "re-executing once" in text and "got from PYTHONPATH" in text


def test_pool_startup_variables_reexecute_too(tmp_path: Path) -> None:
    (tmp_path / "s.py").write_text("import os; print('V', os.environ['READ_AT_IMPORT'])\n")
    appliance_environ["READ_AT_IMPORT"] = "7"
    with LocalPool(size=1, startup_variables=["READ_AT_IMPORT"]) as p:
        assert p.wait_idle(timeout=60)
        logs = run(p.submit(str(tmp_path / "s.py")))
    (text,) = logs.values()
    assert "re-executing once so start-up variables take effect: READ_AT_IMPORT" in text
    assert "V 7" in text


def test_bad_pool_arguments_are_clear_errors(show: str) -> None:
    with pytest.raises(ValueError, match="size"):
        LocalPool(size=-1)
    with pytest.raises(ValueError, match="imports"):
        LocalPool(size=0, imports=["not a module"])
    with pytest.raises(InvalidJobError, match="pool"):
        app.submit(show, pool="some-pool")  # a name is a Kubernetes WorkerPool


def test_a_pool_whose_import_fails_says_which_module(tmp_path: Path) -> None:
    with LocalPool(size=1, imports=["no_such_module_here"]) as p:
        proc = p.processes[0]
        assert proc.wait(timeout=60) == worker_mod.EXIT_CONFIG
        log = next(p.directory.glob("*.log")).read_text()
    assert "cannot import 'no_such_module_here'" in log


def test_close_stops_idle_workers_and_removes_the_pool_files() -> None:
    p = LocalPool(size=2)
    assert p.wait_idle(timeout=60)
    procs = list(p.processes)
    p.close()
    assert all(proc.poll() is not None for proc in procs)
    assert not p.directory.exists()


# -- the warm worker itself, driven directly over its pipe ---------------------------------


def start_warm(tmp_path: Path, name: str = "w-1") -> tuple[subprocess.Popen[str], int, Path]:
    read_end, write_end = os.pipe()
    idle = tmp_path / "idle"
    env = {
        "PATH": os.environ["PATH"],
        names.CLAIM_FD_VAR: str(read_end),
        names.IDLE_FILE_VAR: str(idle),
        names.POOL_WORKER_VAR: name,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "cerebras_appliance.worker", "--warm"],
        env=env,
        cwd=tmp_path,
        pass_fds=(read_end,),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(read_end)
    return proc, write_end, idle


def send(fd: int, data: bytes) -> None:
    os.write(fd, data)
    os.close(fd)


def test_a_claim_for_another_worker_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    env_file = tmp_path / "env.json"
    key, digest = envfile.seal([("X", "1")])
    envfile.write(env_file, [("X", "1")], digest, key)
    (tmp_path / "u.py").write_text("print('USER CODE RAN')\n")
    proc, fd, _ = start_warm(tmp_path, name="w-1")
    claim = claims.Claim(
        worker="w-2",
        entrypoint="u.py",
        args=(),
        plumbing=((names.ENV_FILE_VAR, str(env_file)),),
    )
    send(fd, claims.dumps(claim))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == worker_mod.EXIT_CONFIG
    assert "claim refused" in err and "USER CODE RAN" not in out


def test_a_snapshot_whose_hash_does_not_match_is_refused(tmp_path: Path) -> None:
    key, _ = envfile.seal([("X", "1")])
    _, other = envfile.seal([("X", "2")])
    proc, fd, _ = start_warm(tmp_path)
    claim = claims.Claim(
        worker="w-1",
        entrypoint="u.py",
        args=(),
        plumbing=(),
        snapshot=envfile.dumps([("X", "1")], other, key),
    )
    send(fd, claims.dumps(claim))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == worker_mod.EXIT_CONFIG and "HMAC" in err


def test_claim_parse_refuses_foreign_variables() -> None:
    data = claims.dumps(
        claims.Claim(worker="w", entrypoint="u.py", args=(), plumbing=(("LD_PRELOAD", "x"),))
    )
    with pytest.raises(claims.ClaimError, match="LD_PRELOAD"):
        claims.parse(data)
    with pytest.raises(claims.ClaimError, match="neither"):
        claims.parse(claims.dumps(claims.Claim("w", "u.py", (), ())))


def test_warm_worker_without_a_claim_exits_cleanly(tmp_path: Path) -> None:
    proc, fd, idle = start_warm(tmp_path)
    os.close(fd)  # the pool closed: EOF, no claim
    assert proc.wait(timeout=60) == 0
    assert not idle.exists()
