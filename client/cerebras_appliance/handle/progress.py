"""What ``job.wait()`` shows while it waits: a progress bar on a terminal or in Jupyter, plain
log lines otherwise, nothing with ``progress=False``.

The display is tqdm's (``tqdm.std`` on a terminal, ``tqdm.auto`` in a Jupyter kernel, which
is the notebook widget when ipywidgets is installed and tqdm's text bar when not); the plain
lines are this module's own. Every form shows the same facts, taken from the job's status:
the phase, workers ready (the env applied) / succeeded / failed, the elapsed time and, when a
worker is stuck, the reason and the pod the status names (``WorkersReady``'s reason, e.g.
``ImagePullBackOff`` or ``Unschedulable``; ``EnvResolved=False``: a missing Secret;
``ReplicaFailure``; ``Valid=False``).
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
from typing import IO, Any, Protocol

from cerebras_appliance.contract.api import ExecuteJobStatus

#: WorkersReady reasons that are not a problem.
_PLAIN_READY_REASONS = frozenset({"", "EnvApplied", "WaitingForWorkers", "JobFinished"})
#: Plain lines: a change of counters only is printed at most this often (seconds) ...
LINE_MIN_INTERVAL_S = 5.0
#: ... and an unchanged state is repeated this often, so a log shows the wait is alive.
LINE_HEARTBEAT_S = 30.0
#: The bar is redrawn at least this often (the elapsed time moves).
BAR_REFRESH_S = 0.5

_POD_IN_MESSAGE = re.compile(r"\bworker (\S+) (?:is not running|failed)")


def problem(status: ExecuteJobStatus) -> tuple[str, str] | None:
    """Why the job cannot progress, as (reason, message), or None."""
    for type_, bad in (("Valid", "False"), ("EnvResolved", "False"), ("ReplicaFailure", "True")):
        cond = status.condition(type_)
        if cond is not None and cond.status == bad:
            return cond.reason or type_, cond.message
    ready = status.condition("WorkersReady")
    if (
        ready is not None
        and ready.status == "False"
        and ready.reason not in _PLAIN_READY_REASONS
        and not status.finished
    ):
        return ready.reason, ready.message
    return None


def failure_message(status: ExecuteJobStatus) -> str:
    """The ``Failed`` condition's reason and message (``""`` when the job did not fail)."""
    cond = status.condition("Failed")
    if status.phase != "Failed" or cond is None:
        return ""
    return f"{cond.reason}: {cond.message}" if cond.reason else cond.message


def counts(status: ExecuteJobStatus) -> str:
    n = status.replicas
    return (
        f"{status.ready_replicas}/{n} ready (env applied), {status.succeeded}/{n} succeeded, "
        f"{status.failed} failed"
    )


def summary(status: ExecuteJobStatus) -> str:
    """One line: ``Running: 2/4 ready (env applied), 0/4 succeeded, 0 failed[; problem]``."""
    text = f"{status.phase}: {counts(status)}"
    found = problem(status)
    if found is not None:
        text += f"; {found[0]}: {found[1]}" if found[1] else f"; {found[0]}"
    elif status.phase == "Failed":
        text += f"; {failure_message(status)}"
    return text


def format_elapsed(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class Display(Protocol):
    """Where a wait reports; also where the Ctrl-C notices go (None: stderr)."""

    stream: IO[str] | None

    def update(self, status: ExecuteJobStatus) -> None: ...

    def notice(self, text: str) -> None:
        """One line about the wait itself (e.g. the operator has not answered)."""

    def close(self, status: ExecuteJobStatus | None) -> None: ...


class NullDisplay:
    """``progress=False``: nothing."""

    stream: IO[str] | None = None

    def update(self, status: ExecuteJobStatus) -> None:
        pass

    def notice(self, text: str) -> None:
        pass

    def close(self, status: ExecuteJobStatus | None) -> None:
        pass


class LineDisplay:
    """Not interactive (a file, a pipe, CI): one plain line per change, rate-limited."""

    def __init__(self, label: str, stream: IO[str]) -> None:
        self.label = label
        self.stream: IO[str] | None = stream
        self._started = time.monotonic()
        self._last_key: tuple[str, tuple[str, str] | None] | None = None
        self._last_text = ""
        self._last_print = 0.0

    def _print(self, text: str) -> None:
        assert self.stream is not None
        elapsed = format_elapsed(time.monotonic() - self._started)
        print(f"{self.label}: {text} [{elapsed}]", file=self.stream, flush=True)
        self._last_print = time.monotonic()

    def update(self, status: ExecuteJobStatus) -> None:
        key = (status.phase, problem(status))
        text = summary(status)
        now = time.monotonic()
        if (
            key != self._last_key
            or (text != self._last_text and now - self._last_print >= LINE_MIN_INTERVAL_S)
            or now - self._last_print >= LINE_HEARTBEAT_S
        ):
            self._print(text)
            self._last_key, self._last_text = key, text

    def notice(self, text: str) -> None:
        self._print(text)

    def close(self, status: ExecuteJobStatus | None) -> None:
        if status is not None and status.finished and self._last_text != summary(status):
            self._print(summary(status))
            self._last_text = summary(status)


class BarDisplay:
    """A terminal or a notebook: a tqdm bar of succeeded workers, the rest in its postfix."""

    def __init__(self, label: str, stream: IO[str] | None, *, notebook: bool = False) -> None:
        self.label = label
        self.stream = stream
        self._notebook = notebook
        self._bar: Any = None  # made at the first update, when the total is known
        self._state: tuple[Any, ...] | None = None
        self._problem: tuple[str, str] | None = None
        self._last_refresh = 0.0

    def _make_bar(self, total: int) -> Any:
        from tqdm import auto, std

        tqdm: Any = auto.tqdm if self._notebook else std.tqdm
        return tqdm(
            total=total or None,
            desc=self.label,
            unit="worker",
            file=self.stream,
            leave=True,
            dynamic_ncols=True,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} succeeded "
            "[{elapsed}{postfix}]",
        )

    def update(self, status: ExecuteJobStatus) -> None:
        if self._bar is None:
            self._bar = self._make_bar(status.replicas)
        bar = self._bar
        found = problem(status)
        if found is not None and found != self._problem:
            bar.write(f"{self.label}: {found[0]}: {found[1]}", file=self.stream)
        self._problem = found
        state = (status.phase, status.replicas, status.ready_replicas, status.succeeded,
                 status.failed, found)  # fmt: skip
        now = time.monotonic()
        if state == self._state and now - self._last_refresh < BAR_REFRESH_S:
            return
        if status.replicas and bar.total != status.replicas:
            bar.total = status.replicas
            if self._notebook:  # the widget keeps its own maximum
                with contextlib.suppress(AttributeError, IndexError):
                    bar.container.children[1].max = status.replicas
        bar.n = status.succeeded
        bar.set_description_str(f"{self.label} {status.phase}", refresh=False)
        postfix = f"ready {status.ready_replicas}/{status.replicas}, failed {status.failed}"
        if found is not None:
            pod = _POD_IN_MESSAGE.search(found[1])
            postfix += f", {found[0]}" + (f" ({pod.group(1)})" if pod else "")
        bar.set_postfix_str(postfix, refresh=False)
        bar.refresh()
        self._state, self._last_refresh = state, now

    def notice(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(f"{self.label}: {text}", file=self.stream)
        else:
            print(f"{self.label}: {text}", file=self.stream or sys.stderr, flush=True)

    def close(self, status: ExecuteJobStatus | None) -> None:
        if status is not None:
            self._state = None
            self.update(status)
        if self._bar is not None:
            self._bar.close()
        if status is not None and status.phase == "Failed":
            print(
                f"{self.label}: Failed: {failure_message(status)}", file=self.stream or sys.stderr
            )


def in_notebook() -> bool:
    """Whether this is a Jupyter kernel (IPython with a kernel app, not the terminal one)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except AttributeError:
        return False
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _isatty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def make_display(label: str, progress: bool | IO[str]) -> Display:
    """``True``: stderr (a bar when it is a terminal or in Jupyter, else lines); a stream:
    that stream (a bar when it is a terminal); ``False``: nothing."""
    if progress is False:
        return NullDisplay()
    if progress is True:
        if in_notebook():
            return BarDisplay(label, None, notebook=True)
        stream: IO[str] = sys.stderr
    else:
        stream = progress
    if _isatty(stream):
        return BarDisplay(label, stream)
    return LineDisplay(label, stream)
