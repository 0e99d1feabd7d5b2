"""A user's script in its own interpreter, as the Ctrl-C tests of the client need it.

Used by tests/integration/test_client_follow.py and tests/e2e/test_client_follow_e2e.py
(``tests/data`` is on pytest's pythonpath).
"""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
import time


class UserClient:
    """``python -c SCRIPT ARGS...`` with ``env``; its stderr read line by line by a thread."""

    def __init__(self, script: str, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script, *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.seen: list[str] = []
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._lines.put(line)

    def wait_for(self, needle: str, timeout: float) -> None:
        """Until a stderr line contains ``needle``; fails if the client ends first."""
        deadline = time.monotonic() + timeout
        while not any(needle in x for x in self.seen):
            assert time.monotonic() < deadline, self.seen
            try:
                self.seen.append(self._lines.get(timeout=1))
            except queue.Empty:
                assert self.proc.poll() is None, self.seen

    def interrupt(self, timeout: float = 60) -> tuple[int, str]:
        """Ctrl-C: SIGINT, then the exit code and the whole stderr."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=30)  # stderr read to its end
        while not self._lines.empty():
            self.seen.append(self._lines.get())
        return self.proc.returncode, "".join(self.seen)
