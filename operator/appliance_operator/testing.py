"""Run the operator as a subprocess, for tests and benchmarks (in the spirit of kopf.testing).

:class:`OperatorProcess` starts ``python -m appliance_operator`` against a kubeconfig, appends
its output to a log file, and returns once kopf's liveness endpoint answers; it raises
:class:`OperatorExitedError` (with the log's tail) when the process dies instead.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
_LOG_TAIL = 3000
#: How faulthandler starts each thread of a stack dump.
STACK_MARK = "(most recent call first)"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the kernel picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def http_get(url: str, timeout: float = 5) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return int(response.status), response.read().decode()


class OperatorExitedError(RuntimeError):
    """The operator process ended (or never became live); the message holds its log's tail."""


class OperatorProcess:
    """``python -m appliance_operator ARGS --liveness http://127.0.0.1:<port>/healthz``."""

    def __init__(self, kubeconfig: str, log_path: Path, args: Sequence[str] = ()) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.args = list(args)
        self.liveness_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def liveness_url(self) -> str:
        return f"http://127.0.0.1:{self.liveness_port}/healthz"

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start (again) and wait, bounded, until the liveness endpoint answers 200."""
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n===== operator start #{self.starts} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "appliance_operator",
                    *self.args,
                    "--liveness",
                    self.liveness_url,
                ],
                env={**os.environ, "KUBECONFIG": self.kubeconfig, "PYTHONUNBUFFERED": "1"},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self._live():
            if time.monotonic() > deadline:
                raise OperatorExitedError(
                    f"the operator did not answer {self.liveness_url} within {timeout}s:\n"
                    f"{self.log()[-_LOG_TAIL:]}"
                )
            time.sleep(0.1)  # poll interval of a bounded wait

    def _live(self) -> bool:
        self.check_alive()
        try:
            return http_get(self.liveness_url, timeout=2)[0] == 200
        except OSError:
            return False

    def check_alive(self) -> None:
        """Raise OperatorExitedError at once when the process has ended."""
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise OperatorExitedError(f"the operator exited ({code}):\n{self.log()[-_LOG_TAIL:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def dump_stacks(self, timeout: float = 5.0) -> None:
        """Have the running operator write every thread's stack to its log (SIGUSR1)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        before = self.log().count(STACK_MARK)
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while self.log().count(STACK_MARK) <= before and time.monotonic() < deadline:
            time.sleep(0.05)  # poll interval of a bounded wait

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` and wait for the process to end (SIGKILL: no clean-up at all)."""
        assert self.proc is not None, "the operator was never started"
        self.proc.send_signal(sig)
        self.proc.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT_S."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
