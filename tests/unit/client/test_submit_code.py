"""submit() with the user's own code (issue 23), through the public API on the local backend:
a function by value, a working_dir, and the arguments' errors before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

import cerebras_appliance as app
from cerebras_appliance.environment import appliance_environ


def test_a_function_with_a_closure_runs_in_each_worker_with_the_tracked_variables() -> None:
    appliance_environ["DATA_ROOT"] = "/mnt/data"
    shards = 7

    def loader(*args: str) -> int:
        import os

        print("loader", shards, os.environ["DATA_ROOT"], *args, flush=True)
        return 0

    with app.submit(loader, 2, args=["a"], backend="local", name="t-code-fn") as job:
        assert job.result(timeout=60, progress=False).phase == "Succeeded"
        logs = job.logs()
    assert sorted(logs) == ["t-code-fn-worker-0", "t-code-fn-worker-1"]
    assert all("loader 7 /mnt/data a\n" in text for text in logs.values())


def test_a_working_dir_script_imports_its_package_from_the_captured_copy(tmp_path: Path) -> None:
    wd = tmp_path / "wd"
    (wd / "mylib").mkdir(parents=True)
    (wd / "mylib" / "__init__.py").write_text("WORD = 'first'\n")
    (wd / "main.py").write_text(
        "import os, mylib\nprint('word', mylib.WORD, os.getcwd() != os.environ['HOME'])\n"
    )
    with app.submit("main.py", 1, working_dir=wd, backend="local", name="t-code-wd") as job:
        # edited after submit(): this job still runs what was captured
        (wd / "mylib" / "__init__.py").write_text("WORD = 'second'\n")
        assert job.result(timeout=60, progress=False).phase == "Succeeded"
        assert "word first True\n" in job.logs()["t-code-wd-worker-0"]
    with app.submit("main.py", 1, working_dir=wd, backend="local", name="t-code-wd2") as job:
        assert job.result(timeout=60, progress=False).phase == "Succeeded"
        assert "word second True\n" in job.logs()["t-code-wd2-worker-0"]


def test_workdir_and_working_dir_together_are_refused_naming_both(tmp_path: Path) -> None:
    with pytest.raises(app.InvalidJobError, match="workdir: with working_dir="):
        app.submit("main.py", working_dir=tmp_path, workdir=tmp_path, backend="local")


def test_an_entrypoint_that_is_neither_text_nor_callable_is_refused() -> None:
    with pytest.raises(app.InvalidJobError, match="entrypoint: 42 is neither"):
        app.submit(42, backend="local")  # type: ignore[arg-type]


def test_a_missing_working_dir_is_refused_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(app.InvalidJobError, match="working_dir"):
        app.submit("main.py", working_dir=tmp_path / "absent", backend="local")
