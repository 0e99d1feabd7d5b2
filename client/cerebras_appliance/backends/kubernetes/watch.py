"""The status feed of one wait: the job is listed, then watched (no polling), in a thread;
the wait takes the newest status as it comes."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from kubernetes import client, watch

from cerebras_appliance.backends.kubernetes.errors import _EJ, KubernetesError, _api_error
from cerebras_appliance.backends.kubernetes.objects import (
    REQUEST_TIMEOUT_S,
    JobRef,
    raw,
    status_of,
)
from cerebras_appliance.contract.api import PLURAL, ExecuteJobStatus
from cerebras_appliance.contract.names import GROUP, VERSION
from cerebras_appliance.handle import JobDeletedError

#: A wait's watch is renewed this often (seconds).
_WATCH_WINDOW_S = 60


def list_once(ref: JobRef) -> tuple[ExecuteJobStatus | None, str]:
    """(the job's status, None if it does not exist; the list's resourceVersion to watch
    from). A server error (5xx) is raised as is, for the feed to retry."""
    try:
        listing = raw(
            ref.custom.list_namespaced_custom_object(
                GROUP,
                VERSION,
                ref.namespace,
                PLURAL,
                field_selector=f"metadata.name={ref.name}",
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT_S,
            )
        )
    except client.ApiException as exc:
        if exc.status is not None and exc.status >= 500:
            raise  # retried by the feed
        raise _api_error(
            f"listing ExecuteJob {ref.namespace}/{ref.name}", exc, "list", _EJ, ref.namespace
        ) from None
    items = listing.get("items") or []
    status = status_of(items[0]) if items else None
    return status, str(listing["metadata"]["resourceVersion"])


def watch_job(
    ref: JobRef,
    resource_version: str,
    seconds: int,
    stop: threading.Event | None = None,
    started: Callable[[Any], None] | None = None,
) -> Iterator[dict[str, Any] | None]:
    """The job's new versions for up to ``seconds`` (None: it was deleted). ``started``
    gets the ``Watch``, whose ``stop()`` ends it from another thread."""
    stream = watch.Watch()  # type: ignore[no-untyped-call]
    if started is not None:
        started(stream)
    try:
        for event in stream.stream(  # type: ignore[no-untyped-call]
            ref.custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            ref.namespace,
            PLURAL,
            field_selector=f"metadata.name={ref.name}",
            resource_version=resource_version,
            timeout_seconds=seconds,
            _request_timeout=seconds + 10,
        ):
            if stop is not None and stop.is_set():
                return
            if event["type"] == "DELETED":
                yield None
                return
            if event["type"] in ("ADDED", "MODIFIED"):
                yield event["object"]
    except client.ApiException as exc:
        if exc.status != 410:  # 410 Gone: our version is too old; list again
            raise _api_error(
                f"watching ExecuteJob {ref.namespace}/{ref.name}",
                exc,
                "watch",
                _EJ,
                ref.namespace,
            ) from None
    finally:
        stream.stop()  # type: ignore[no-untyped-call]


#: How often close() repeats the watch's stop while its thread has not ended.
_STOP_RETRY_S = 0.1


class StatusFeed:
    """The job's status, as a watch delivers it, for one wait: a thread lists and watches the
    job and queues each version; ``next(seconds)`` returns the newest one, blocking up to
    ``seconds`` when nothing new came, and hands it to ``seen`` too. Connection errors are
    retried (the wait goes on)."""

    def __init__(self, ref: JobRef, seen: Callable[[ExecuteJobStatus], None]) -> None:
        self._ref = ref
        self._seen = seen
        self._queue: queue.Queue[ExecuteJobStatus | BaseException | None] = queue.Queue()
        self._stop = threading.Event()
        self._latest: ExecuteJobStatus | None = None
        self._watching: Any = None
        self._thread = threading.Thread(target=self._run, name=f"watch-{ref.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                status, version = list_once(self._ref)
                if status is None:
                    self._queue.put(None)
                    return
                self._queue.put(status)
                for obj in watch_job(
                    self._ref, version, _WATCH_WINDOW_S, self._stop, self._started
                ):
                    if obj is None:
                        self._queue.put(None)
                        return
                    self._queue.put(status_of(obj))
                failures = 0
            except (KubernetesError, client.ApiException) as exc:
                code = getattr(exc, "status", None)
                if isinstance(exc, KubernetesError) or (code is not None and code < 500):
                    self._queue.put(exc)
                    return
                failures += 1
            except Exception:  # a dropped connection: list and watch again
                failures += 1
            if failures:
                self._stop.wait(min(30.0, 0.5 * 2 ** min(failures, 6)))

    def next(self, seconds: float) -> ExecuteJobStatus:
        """The newest status (JobDeletedError once the job is gone)."""
        # The first status: as long as a request may take (the feed retries meanwhile).
        wait_for = seconds if self._latest is not None else REQUEST_TIMEOUT_S + 5
        items: list[ExecuteJobStatus | BaseException | None] = []
        with contextlib.suppress(queue.Empty):
            items.append(
                self._queue.get(timeout=wait_for) if wait_for > 0 else self._queue.get_nowait()
            )
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        for item in items:
            if item is None:
                raise JobDeletedError(f"job {self._ref.label} was deleted", self._latest)
            if isinstance(item, BaseException):
                raise item
            self._latest = item
        if self._latest is None:
            raise KubernetesError(
                f"reading ExecuteJob {self._ref.label}: no answer within {wait_for}s"
            )
        self._seen(self._latest)
        return self._latest

    def _started(self, stream: Any) -> None:
        self._watching = stream
        if self._stop.is_set():
            stream.stop()

    def close(self) -> None:
        """Stop the watch now (its socket is shut down) and let the thread end: a thread
        blocked in a TLS read at interpreter exit can abort the process.

        ``Watch.stop()`` shuts the socket down only once the watch's response exists, and a
        ``stream()`` that begins after it resets the flag: a wait that ends while the watch
        is connecting (a finished job: the first list answers it) would leave the thread in a
        quiet watch for its whole window. So the stop is repeated until the thread ends."""
        self._stop.set()
        deadline = time.monotonic() + REQUEST_TIMEOUT_S
        while self._thread.is_alive() and time.monotonic() < deadline:
            if self._watching is not None:
                with contextlib.suppress(Exception):
                    self._watching.stop()
            self._thread.join(timeout=_STOP_RETRY_S)
