"""Worker logs on Kubernetes: each attempt is a pod (labelled with its worker index and
attempt number); a log is read whole, or followed like ``kubectl logs -f``, reconnecting
after a dropped connection without repeating a line (by the kubelet's timestamps)."""

from __future__ import annotations

import codecs
import contextlib
import threading
from collections.abc import Generator, Iterator
from typing import Any, Literal

from kubernetes import client

from cerebras_appliance.backends.kubernetes.errors import _api_error
from cerebras_appliance.backends.kubernetes.objects import REQUEST_TIMEOUT_S, JobRef, raw
from cerebras_appliance.contract.names import (
    ATTEMPT_LABEL,
    CONTAINER_NAME,
    JOB_NAME_LABEL,
    MANAGED_SELECTOR,
    WORKER_INDEX_LABEL,
)
from cerebras_appliance.handle import AttemptRef, split_lines

#: Between two tries to follow a pod's log that has not started, or whose connection dropped.
_LOG_RETRY_S = 0.5
#: A followed log that says nothing this long is reconnected (lines are never repeated, by
#: their timestamps). Short: on a loaded kind node a follow opened as the container started
#: was seen to deliver nothing for minutes; a reconnect gets the lines at once.
_LOG_READ_TIMEOUT_S = 20

PodState = Literal["gone", "ended", "live"]


class _Gone:
    """What :meth:`PodLogs._open` returns when there is no log to follow any more."""


_GONE = _Gone()


class PodLogs:
    """The logs of one job's pods; :meth:`stop_following` ends every follow in progress."""

    def __init__(self, ref: JobRef) -> None:
        self._ref = ref
        self._streams: set[Any] = set()  # log responses being followed (closed by delete)

    def _pods(self) -> list[dict[str, Any]]:
        ref = self._ref
        try:
            pods = raw(
                ref.core.list_namespaced_pod(
                    ref.namespace,
                    label_selector=f"{MANAGED_SELECTOR},{JOB_NAME_LABEL}={ref.name}",
                    _preload_content=False,
                    _request_timeout=REQUEST_TIMEOUT_S,
                )
            )
        except client.ApiException as exc:
            raise _api_error(
                f"listing the pods of job {ref.label}", exc, "list", "pods", ref.namespace
            ) from None
        return list(pods.get("items") or [])

    def attempts(self) -> list[AttemptRef]:
        """Every worker attempt that has a pod (finished ones too)."""
        refs = []
        for pod in self._pods():
            meta = pod["metadata"]
            labels = meta.get("labels") or {}
            try:
                index = int(labels[WORKER_INDEX_LABEL])
                attempt = int(labels.get(ATTEMPT_LABEL, "0"))
            except (KeyError, ValueError):
                continue
            refs.append(AttemptRef(index, attempt, str(meta["name"])))
        return refs

    def read(self, name: str, tail: int | None) -> str:
        """Pod ``name``'s log so far (``""`` before its container started, or once gone)."""
        ref = self._ref
        try:
            response: Any = ref.core.read_namespaced_pod_log(
                name,
                ref.namespace,
                container=CONTAINER_NAME,
                tail_lines=tail,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT_S,
            )
        except client.ApiException as exc:
            if exc.status not in (400, 404):  # 400: container not started yet
                raise _api_error(
                    f"reading the log of pod {name}", exc, "get", "pods/log", ref.namespace
                ) from None
            return ""
        text: str = response.data.decode("utf-8", errors="replace")
        return text

    def pod_state(self, name: str) -> PodState:
        """The pod as a log follower needs it: ``gone``, ``ended`` (it, or its container,
        terminated) or ``live``."""
        ref = self._ref
        try:
            pod = raw(
                ref.core.read_namespaced_pod(
                    name,
                    ref.namespace,
                    _preload_content=False,
                    _request_timeout=REQUEST_TIMEOUT_S,
                )
            )
        except client.ApiException as exc:
            if exc.status == 404:
                return "gone"
            if exc.status == 403:
                raise _api_error(f"reading pod {name}", exc, "get", "pods", ref.namespace) from None
            raise
        status = pod.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            return "ended"
        for container in status.get("containerStatuses") or []:
            if container.get("name") == CONTAINER_NAME and "terminated" in (
                container.get("state") or {}
            ):
                return "ended"
        return "live"

    def follow(
        self, attempt: AttemptRef, stop: threading.Event, finished: threading.Event
    ) -> Iterator[str]:
        """``kubectl logs -f`` of one pod: waits for its container to start; reconnects after
        a dropped connection without repeating lines (by the kubelet's timestamps)."""
        seen = _Seen()
        while not stop.is_set():
            response = self._open(attempt.name, stop, finished)
            if response is _GONE:
                return
            if response is None:
                continue  # not started, or not reached: tried again after a pause
            dropped = yield from self._lines(response, seen)
            if dropped:
                if stop.is_set():
                    return
                stop.wait(_LOG_RETRY_S)
                continue  # dropped mid-way: reconnect, skip what was seen
            if stop.is_set() or self.pod_state(attempt.name) != "live":
                return

    def _open(self, name: str, stop: threading.Event, finished: threading.Event) -> Any:
        """The followed log's response; ``_GONE`` when there is nothing (more) to follow;
        None after a pause when the caller should try again."""
        ref = self._ref
        try:
            return ref.core.read_namespaced_pod_log(
                name,
                ref.namespace,
                container=CONTAINER_NAME,
                follow=True,
                timestamps=True,
                _preload_content=False,
                _request_timeout=(REQUEST_TIMEOUT_S, _LOG_READ_TIMEOUT_S),
            )
        except client.ApiException as exc:
            if exc.status == 404:
                return _GONE  # the pod is gone
            if exc.status != 400:
                raise _api_error(
                    f"following the log of pod {name}", exc, "get", "pods/log", ref.namespace
                ) from None
            # 400: the container has not started (ContainerCreating, image pull...)
            if finished.is_set() and self.pod_state(name) != "live":
                return _GONE
        except Exception:  # the connection failed: try again
            pass
        stop.wait(_LOG_RETRY_S)
        return None

    def _lines(self, response: Any, seen: _Seen) -> Generator[str, None, bool]:
        """The new lines of one followed response, without their timestamps; returns whether
        the connection dropped before the log ended."""
        with _registered(self._streams, response):
            rest = ""
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            try:
                for chunk in response.stream(amt=None, decode_content=False):
                    lines, rest = split_lines(rest, decoder.decode(chunk))
                    for line in lines:
                        text = seen.new(line)
                        if text is not None:
                            yield text
            except Exception:
                return True
            finally:
                response.release_conn()
            if rest:
                yield rest.partition(" ")[2]
        return False

    def stop_following(self) -> None:
        """End every follow in progress now (their blocked reads return)."""
        for response in list(self._streams):
            with contextlib.suppress(Exception):
                response.shutdown()


class _Seen:
    """The timestamp of the last line delivered, so a reconnect skips what was seen."""

    def __init__(self) -> None:
        self.last: tuple[str, int] | None = None  # (seconds part, nanoseconds)

    def new(self, line: str) -> str | None:
        """The text of a ``<timestamp> <text>`` line, or None if it was seen already."""
        stamp, _, text = line.partition(" ")
        key = _stamp_key(stamp)
        if self.last is not None and key is not None and key <= self.last:
            return None  # seen before the reconnect
        self.last = key or self.last
        return text


def _stamp_key(stamp: str) -> tuple[str, int] | None:
    """An RFC 3339 timestamp with nanoseconds (the kubelet's) as a comparable key."""
    if not stamp.endswith("Z") or "T" not in stamp:
        return None
    whole, _, fraction = stamp[:-1].partition(".")
    digits = (fraction + "000000000")[:9]
    return (whole, int(digits)) if digits.isdigit() else None


@contextlib.contextmanager
def _registered(streams: set[Any], response: Any) -> Iterator[None]:
    streams.add(response)
    try:
        yield
    finally:
        streams.discard(response)
