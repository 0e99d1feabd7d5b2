"""The ML user's client on the local backend: progress in ``wait()``, the error types, streamed
logs across replaced attempts, the context manager, Ctrl-C, ``get_job``, async variants.

Workers are tiny scripts that synchronise with the test through files (a release file the test
creates, a pid file the worker writes): no test sleeps to let something happen.
"""

from __future__ import annotations

import asyncio
import fcntl
import io
import os
import pty
import queue
import signal
import struct
import subprocess
import sys
import termios
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

import cerebras_appliance as app
from cerebras_appliance.contract.api import Condition, ExecuteJobStatus
from cerebras_appliance.handle import JobFailedError, JobSuspendedError, JobTimeoutError
from cerebras_appliance.handle.progress import BarDisplay, LineDisplay, make_display, summary

REPO = Path(__file__).resolve().parents[3]
T = TypeVar("T")


def wait_until(probe: Callable[[], T], timeout: float = 30, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or probe}")
        time.sleep(0.02)


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


#: Prints "first", waits for <dir>/release, prints "second"; exits with argv[2] (default 0).
RELEASED = """
    import os, sys, time
    from pathlib import Path
    release = Path(sys.argv[1])
    print("first", flush=True)
    while not release.exists():
        time.sleep(0.02)
    print("second", flush=True)
    sys.exit(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
"""

#: Writes its pid to argv[1], then runs until stopped.
HOLD = """
    import os, sys, time
    from pathlib import Path
    tmp = f"{sys.argv[1]}.{os.getpid()}.tmp"  # one per worker: several may share the path
    Path(tmp).write_text(str(os.getpid()))
    os.replace(tmp, sys.argv[1])
    while True:
        time.sleep(1)
"""


def release_when(out: io.StringIO, needle: str, release: Path) -> threading.Thread:
    """Create ``release`` once ``needle`` is in ``out`` (the display showed it)."""

    def run() -> None:
        wait_until(lambda: needle in out.getvalue(), what=needle)
        release.touch()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


class TTYStream(io.StringIO):
    def isatty(self) -> bool:
        return True


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# -- progress ------------------------------------------------------------------------------


def stuck_status() -> ExecuteJobStatus:
    return ExecuteJobStatus(
        phase="Pending",
        replicas=2,
        conditions=[
            Condition(
                type="WorkersReady",
                status="False",
                reason="ImagePullBackOff",
                message="worker j-worker-1 is not running: ImagePullBackOff: Back-off pulling "
                'image "nope:1"; 0/2 workers applied the env',
            )
        ],
    )


def test_progress_lines_when_not_interactive(tmp_path: Path) -> None:
    release = tmp_path / "release"
    out = io.StringIO()
    with app.submit(script(tmp_path, "w.py", RELEASED), 2, args=[str(release)], name="t-pl") as job:
        release_when(out, "2/2 ready", release)
        status = job.wait(timeout=60, progress=out)
    assert status.phase == "Succeeded"
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
    assert any(
        line.startswith("t-pl: Running: 2/2 ready (env applied), 0/2 succeeded, 0 failed [")
        for line in lines
    )
    assert lines[-1].startswith("t-pl: Succeeded: 0/2 ready (env applied), 2/2 succeeded, 0 failed")


def test_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    release = tmp_path / "release"
    out = TTYStream()
    with app.submit(script(tmp_path, "w.py", RELEASED), 2, args=[str(release)], name="t-pb") as job:
        release_when(out, "ready 2/2", release)
        job.wait(timeout=60, progress=out)
    text = out.getvalue()
    assert "\r" in text  # redrawn in place, tqdm's way
    assert "t-pb Running" in text and "ready 2/2, failed 0" in text
    assert "t-pb Succeeded" in text and "2/2 succeeded" in text


def test_progress_bar_on_a_real_pty(tmp_path: Path) -> None:
    """stderr a terminal, progress=True: the bar; the same program piped: plain lines."""
    program = textwrap.dedent(
        f"""
        import cerebras_appliance as app
        with app.submit({script(tmp_path, "ok.py", "print('ok')")!r}, 2, name="t-pty") as job:
            print("PHASE", job.wait(timeout=60).phase, flush=True)
        """
    )
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-c", program], stdout=subprocess.PIPE, stderr=secondary, cwd=tmp_path
    )
    os.close(secondary)
    stdout, _ = proc.communicate(timeout=60)
    chunks = []
    while True:
        try:
            data = os.read(primary, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(primary)
    terminal = b"".join(chunks).decode()
    assert b"PHASE Succeeded" in stdout
    assert "\r" in terminal and "t-pty Succeeded" in terminal and "2/2 succeeded" in terminal

    piped = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert "\r" not in piped.stderr
    assert "t-pty: Succeeded: 0/2 ready (env applied), 2/2 succeeded, 0 failed" in piped.stderr


def test_progress_disabled_prints_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with app.submit(script(tmp_path, "ok.py", "print('ok')"), 2, name="t-quiet") as job:
        assert job.wait(timeout=60, progress=False).phase == "Succeeded"
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
    assert isinstance(make_display("x", False), type(make_display("y", False)))


def test_default_progress_goes_to_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with app.submit(script(tmp_path, "ok.py", "print('ok')"), name="t-default") as job:
        job.wait(timeout=60)
    captured = capsys.readouterr()
    assert "t-default: Succeeded: 0/1 ready (env applied), 1/1 succeeded" in captured.err
    assert captured.out == ""


def test_a_stuck_worker_shows_its_reason_and_pod() -> None:
    status = stuck_status()
    assert summary(status).startswith("Pending: 0/2 ready (env applied), 0/2 succeeded, 0 failed")
    assert "ImagePullBackOff: worker j-worker-1 is not running" in summary(status)

    lines = io.StringIO()
    display = LineDisplay("j", lines)
    display.update(status)
    display.update(status)  # unchanged: printed once
    assert lines.getvalue().count("ImagePullBackOff") == 2  # reason and message, one line
    assert len(lines.getvalue().splitlines()) == 1

    bar_out = TTYStream()
    bar = BarDisplay("j", bar_out)
    bar.update(status)
    bar.close(None)
    text = bar_out.getvalue()
    assert "ImagePullBackOff (j-worker-1)" in text  # in the bar
    assert 'Back-off pulling image "nope:1"' in text  # the whole message, once, above it

    missing = ExecuteJobStatus(
        phase="Pending",
        replicas=1,
        conditions=[
            Condition(
                type="EnvResolved",
                status="False",
                reason="SecretNotFound",
                message="spec.env[0] (TOKEN): Secret s not found",
            )
        ],
    )
    assert "SecretNotFound: spec.env[0] (TOKEN): Secret s not found" in summary(missing)


# -- outcome -------------------------------------------------------------------------------


def test_raise_on_failure_and_result(tmp_path: Path) -> None:
    failing = script(tmp_path, "f.py", "print('boom', flush=True); raise SystemExit(3)")
    with app.submit(failing, name="t-failed") as job:
        assert job.wait(timeout=60, progress=False).phase == "Failed"  # default: returned
        with pytest.raises(JobFailedError) as caught:
            job.wait(timeout=60, progress=False, raise_on_failure=True)
        with pytest.raises(app.JobFailedError):
            job.result(timeout=60, progress=False)
    err = caught.value
    assert isinstance(err, app.JobError) and isinstance(err, RuntimeError)
    assert err.reason == "BackoffLimitExceeded"
    assert err.worker == "t-failed-worker-0" and err.exit_code == 3
    assert err.status is not None and err.status.phase == "Failed"
    assert "job t-failed failed: BackoffLimitExceeded: worker t-failed-worker-0 failed " in str(err)
    assert "(exit code 3)" in str(err)


def test_timeout_names_the_phase_and_what_it_waited_for(tmp_path: Path) -> None:
    hold = script(tmp_path, "hold.py", HOLD)
    with app.submit(hold, 2, args=[str(tmp_path / "pid")], name="t-timeout") as job:
        wait_until(lambda: job.status().ready_replicas == 2, what="ready")
        with pytest.raises(TimeoutError) as caught:
            job.wait(timeout=0.3, progress=False)
        assert isinstance(caught.value, JobTimeoutError)
        assert str(caught.value).startswith(
            "job t-timeout did not finish within 0.3s: phase Running, waiting for 2 of 2 "
            "workers to succeed (2/2 ready (env applied), 0/2 succeeded, 0 failed)"
        )
        assert caught.value.status.phase == "Running" and caught.value.until == "finished"
        # until="ready" returns once every worker applied the env
        assert job.wait(timeout=30, until="ready", progress=False).ready_replicas == 2
        job.suspend()
        with pytest.raises(JobSuspendedError, match="is suspended"):
            job.wait(timeout=30, progress=False)


# -- logs ----------------------------------------------------------------------------------


def test_follow_yields_lines_before_the_end_and_the_replacement_attempt(tmp_path: Path) -> None:
    release = tmp_path / "release"
    # Attempt 0 of worker 0 exits 3 after "second"; its replacement (attempt 1) exits 0.
    worker = script(
        tmp_path,
        "w.py",
        RELEASED.replace(
            "sys.exit(int(sys.argv[2]) if len(sys.argv) > 2 else 0)",
            "sys.exit(3 if os.environ['APPLIANCE_WORKER_NAME'].endswith('-worker-0') else 0)",
        ),
    )
    with app.submit(worker, 2, args=[str(release)], backoff_limit=1, name="t-follow") as job:
        seen: list[app.LogLine] = []
        for line in job.stream_logs():
            if line.text.startswith("appliance worker:"):
                continue
            seen.append(line)
            if line.text == "first" and not release.exists():
                # A line arrived while the job runs: it only goes on once we release it.
                assert job.status().phase == "Running"
                release.touch()
        final = job.wait(timeout=30, progress=False)
        assert final.phase == "Succeeded" and final.failed == 1
        by_pod: dict[str, list[str]] = {}
        for line in seen:
            by_pod.setdefault(line.pod, []).append(line.text)
        assert by_pod == {
            "t-follow-worker-0": ["first", "second"],
            "t-follow-worker-1": ["first", "second"],
            "t-follow-worker-0-1": ["first", "second"],
        }
        replacement = next(x for x in seen if x.pod == "t-follow-worker-0-1")
        assert (replacement.worker, replacement.attempt) == (0, 1)
        assert str(replacement) == "[t-follow-worker-0-1] first"

        # One log file per attempt; logs(worker=i) is the latest attempt, tail= its last lines.
        assert sorted(job.logs()) == [
            "t-follow-worker-0",
            "t-follow-worker-0-1",
            "t-follow-worker-1",
        ]
        assert job.logs(worker=0, tail=1) == "second\n"
        assert job.logs(worker=0, attempt=0).endswith("first\nsecond\n")
        assert job.logs(tail=1) == {n: "second\n" for n in job.logs()}
        assert job.logs(worker=5) == ""
        # follow=True: the same lines, as text, prefixed by the attempt; a finished job's
        # stream ends once its logs are read.
        followed = [x for x in job.logs(follow=True) if "appliance worker:" not in x]
        assert sorted(followed) == sorted(str(x) for x in seen)
        only = [x.pod for x in job.stream_logs(worker=1)]
        assert set(only) == {"t-follow-worker-1"}


# -- stopping ------------------------------------------------------------------------------


def test_context_manager_deletes_unless_kept(tmp_path: Path) -> None:
    hold = script(tmp_path, "hold.py", HOLD)
    with app.submit(hold, args=[str(tmp_path / "a")], name="t-cm") as job:
        pid = int(wait_until(lambda: (tmp_path / "a").exists() and (tmp_path / "a").read_text()))
    assert not alive(pid)
    with pytest.raises(app.JobDeletedError):
        job.wait(timeout=5, progress=False)

    with app.submit(hold, args=[str(tmp_path / "b")], name="t-kept").keep() as kept:
        pid = int(wait_until(lambda: (tmp_path / "b").exists() and (tmp_path / "b").read_text()))
    try:
        assert alive(pid) and kept.status().phase == "Running"
        assert app.get_job("t-kept", backend="local") is kept
    finally:
        kept.delete()
    assert not alive(pid)
    with pytest.raises(app.JobNotFoundError, match="cannot be reattached from another process"):
        app.get_job("t-kept", backend="local")


CLIENT = """
import ctypes, signal, sys
import cerebras_appliance as app
# Ctrl-C as on a terminal, even when the tests run where SIGINT is ignored (a background job).
signal.signal(signal.SIGINT, signal.default_int_handler)
# If the test process dies first (killed by a timeout), this client gets a Ctrl-C: the rule
# under test then stops its workers, instead of leaving them to nobody.
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG
mode, hold, pidfile = sys.argv[1:4]
job = app.submit(hold, args=[pidfile], name="t-sigint")
print("submitted", flush=True)
if mode == "wait":
    job.wait()
elif mode == "stream":
    # A Ctrl-C lands where the program is: in this loop's body it is raised in the body (a
    # generator's frame is not running then). So the test interrupts only once this thread is
    # back inside the stream, which this profile hook marks: the stream's first wait for a line
    # after one was printed.
    printed, marker = [], pidfile + ".in-stream"
    def back_in_stream(frame, event, arg):
        if printed and event == "call" and frame.f_code.co_qualname == "LogStream.get":
            open(marker, "w").close()
            sys.setprofile(None)
    sys.setprofile(back_in_stream)
    for line in job.logs(follow=True):
        print(line, flush=True)
        printed.append(line)
elif mode == "keep":
    try:
        job.wait(on_interrupt="keep")
    except KeyboardInterrupt:
        print("still", job.status().phase, flush=True)
        job.delete()
"""


class Client:
    """A user's program in its own interpreter; its stderr read line by line."""

    def __init__(self, tmp_path: Path, mode: str) -> None:
        self.pidfile = tmp_path / f"pid-{mode}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                CLIENT,
                mode,
                script(tmp_path, "hold.py", HOLD),
                str(self.pidfile),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        self.err: queue.Queue[str] = queue.Queue()
        self.err_lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err.put(line)

    def wait_for_err(self, needle: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(needle in line for line in self.err_lines):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no {needle!r} on the client's stderr: {self.err_lines}")
            try:
                self.err_lines.append(self.err.get(timeout=remaining))
            except queue.Empty:
                continue

    def worker_pid(self) -> int:
        return int(
            wait_until(lambda: self.pidfile.exists() and self.pidfile.read_text(), what="pid")
        )

    def kill(self) -> None:
        """After a failed test: Ctrl-C first (the client then stops its workers)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)

    def interrupt(self) -> tuple[int, str, str]:
        self.proc.send_signal(signal.SIGINT)
        out, rest = self.proc.communicate(timeout=60)
        while not self.err.empty():
            self.err_lines.append(self.err.get())
        return self.proc.returncode, out, "".join(self.err_lines) + (rest or "")


@pytest.mark.parametrize("mode", ["wait", "stream"])
def test_ctrl_c_deletes_the_job_and_stops_its_workers(
    tmp_path: Path, mode: str, request: pytest.FixtureRequest
) -> None:
    client = Client(tmp_path, mode)
    request.addfinalizer(client.kill)
    pid = client.worker_pid()
    if mode == "wait":
        client.wait_for_err("t-sigint: Running:")  # inside wait(): its first progress line
    else:
        assert client.proc.stdout is not None
        deadline = time.monotonic() + 30
        while "[t-sigint-worker-0]" not in client.proc.stdout.readline():
            # a line of the worker came through the stream
            assert client.proc.poll() is None and time.monotonic() < deadline
        marker = client.pidfile.with_name(client.pidfile.name + ".in-stream")
        wait_until(marker.exists, what="the client back inside the stream")
    code, _, err = client.interrupt()
    assert code in (-signal.SIGINT, 130), err
    assert "KeyboardInterrupt" in err
    assert "t-sigint: interrupted: job deleted, its workers stopped" in err
    assert not alive(pid)


def test_ctrl_c_with_keep_leaves_the_job_running_and_says_so(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    client = Client(tmp_path, "keep")
    request.addfinalizer(client.kill)
    pid = client.worker_pid()
    client.wait_for_err("t-sigint: Running:")
    code, out, err = client.interrupt()
    assert code == 0, err
    assert "still Running" in out  # the job was not touched by the interrupt
    assert "t-sigint: interrupted; the job keeps running (local workers are stopped when " in err
    assert not alive(pid)  # deleted by the program afterwards


# -- async ---------------------------------------------------------------------------------


def test_async_wait_and_stream(tmp_path: Path) -> None:
    release = tmp_path / "release"

    async def main(job: Any) -> tuple[list[str], str]:
        lines: list[str] = []
        async for line in job.stream_logs_async():
            lines.append(line.text)
            if line.text == "first" and lines.count("first") == 2:
                release.touch()
        status = await job.wait_async(timeout=30, progress=False)
        return lines, status.phase

    with app.submit(
        script(tmp_path, "w.py", RELEASED), 2, args=[str(release)], name="t-async"
    ) as job:
        lines, phase = asyncio.run(main(job))
    assert phase == "Succeeded"
    assert lines.count("first") == 2 and lines.count("second") == 2


def test_async_wait_cancelled_stops_waiting_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hold = script(tmp_path, "hold.py", HOLD)

    async def main(job: Any) -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(job.wait_async(progress=False), 0.5)

    with app.submit(hold, args=[str(tmp_path / "pid")], name="t-cancel") as job:
        asyncio.run(main(job))
        assert job.status().phase in ("Pending", "Running")
    assert "t-cancel: stopped waiting (cancelled); the job keeps running" in capsys.readouterr().err


@pytest.fixture(autouse=True)
def _no_leftover_jobs() -> Iterator[None]:
    yield
    from cerebras_appliance.backends.local import job as local

    assert not [j.name for j in local.live_jobs()], "a test left a local job behind"


def test_the_notebook_example_runs_as_a_script_on_the_local_backend() -> None:
    """examples/notebook_quickstart.py (the README's Usage): streamed lines of both workers,
    worker 1's replacement attempt after its first one failed, then the outcome."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env.pop("BACKEND", None)
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "notebook_quickstart.py")],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    shards: dict[str, list[str]] = {}  # attempt -> its shard lines, in order
    for line in lines:
        if line.startswith("[") and "/mnt/data: shard" in line:
            attempt, _, text = line.partition("] ")
            shards.setdefault(attempt.lstrip("[").rsplit("-worker-", 1)[1], []).append(text)
    every = [f"/mnt/data: shard {i}" for i in range(3)]
    assert shards == {"0": every, "1": every, "1-1": every}, lines
    assert "Succeeded 2/2 succeeded, 1 failed" in lines, lines
    assert "worker 1, last line: /mnt/data: shard 2" in lines, lines
