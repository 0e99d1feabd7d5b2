"""The claim channel of a warm worker pod: mutual TLS, one claim, then closed.

The worker listens on ``APPLIANCE_CLAIM_PORT`` with the pool's worker certificate (files
``ca.crt``, ``tls.crt``, ``tls.key`` in ``APPLIANCE_CLAIM_TLS_DIR``, a Secret volume) and
accepts a connection only from a client whose certificate the pool's CA signed for the
operator (subject CN :data:`OPERATOR_CN`). The operator checks the worker's certificate the
same way (CN :data:`WORKER_CN`). TLS 1.3 only: both sides authenticated, the claim encrypted,
and a recorded connection cannot be replayed (fresh session keys). The worker reads one
length-prefixed claim, answers it, and closes its listener: a second (or replayed) claim finds
no one listening. Connections are handshaken concurrently (a thread each, bounded), so silent
peers cannot hold up the operator's claim. A probe frame (:data:`PROBE_KIND`) is answered
without claiming: the operator checks with it that a pool's channel works. The handshake and
framing are the standard library's ``ssl`` (OpenSSL); nothing here is hand-written
cryptography. The operator's side (certificates, connecting) is ``appliance_operator.pool.tls``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import ssl
import struct
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cerebras_appliance.contract.claim import MAX_CLAIM_BYTES
from cerebras_appliance.contract.names import (
    CLAIM_HOST_VAR,
    CLAIM_PORT,
    CLAIM_PORT_VAR,
    CLAIM_TLS_DIR_VAR,
)

OPERATOR_CN = "appliance-operator"
WORKER_CN = "appliance-worker"
#: A peer must finish the handshake and send its claim within this many seconds.
IO_TIMEOUT_SECONDS = 10.0
CA_FILE = "ca.crt"
CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
#: At most this many connections are handshaken at once (each on a thread, each for at most
#: :data:`IO_TIMEOUT_SECONDS`); more are closed at once.
MAX_PENDING_CONNECTIONS = 128
#: A probe: the operator checks that an idle worker's channel answers; it claims nothing.
PROBE_KIND = "WorkerProbe"
PROBE_ANSWER_KIND = "WorkerIdle"

Reply = Callable[[Mapping[str, Any]], None]


class ChannelError(RuntimeError):
    """The channel cannot be set up or a peer broke the protocol (never holds a value)."""


def peer_common_name(conn: ssl.SSLSocket) -> str:
    cert: dict[str, Any] = dict(conn.getpeercert() or {})
    for rdn in cert.get("subject", ()):
        for pair in rdn:
            if pair[0] == "commonName":
                return str(pair[1])
    return ""


def send_frame(conn: ssl.SSLSocket, payload: bytes) -> None:
    conn.sendall(struct.pack("!I", len(payload)) + payload)


def recv_frame(conn: ssl.SSLSocket, limit: int = MAX_CLAIM_BYTES) -> bytes:
    header = _recv_exactly(conn, 4)
    (size,) = struct.unpack("!I", header)
    if size > limit:
        raise ChannelError(f"frame of {size} bytes is larger than {limit}")
    return _recv_exactly(conn, size)


def _recv_exactly(conn: ssl.SSLSocket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = conn.recv(min(65536, size - len(data)))
        if not chunk:
            raise ChannelError("the peer closed the connection mid-frame")
        data += chunk
    return bytes(data)


def server_context(tls_dir: str | os.PathLike[str]) -> ssl.SSLContext:
    """TLS 1.3, client certificate required and checked against the pool's CA."""
    folder = Path(tls_dir)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_verify_locations(cafile=str(folder / CA_FILE))
        context.load_cert_chain(str(folder / CERT_FILE), str(folder / KEY_FILE))
    except (OSError, ssl.SSLError) as exc:
        raise ChannelError(
            f"{CLAIM_TLS_DIR_VAR}: cannot load the pool's TLS files: {exc}"
        ) from None
    return context


class ClaimServer:
    """A listener that hands out the first authenticated claim and then closes."""

    def __init__(self, context: ssl.SSLContext, sock: socket.socket) -> None:
        self._context = context
        self._sock = sock

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> ClaimServer:
        tls_dir = environ.get(CLAIM_TLS_DIR_VAR)
        if not tls_dir:
            raise ChannelError(
                f"warm mode needs a claim channel: set APPLIANCE_CLAIM_FD or {CLAIM_TLS_DIR_VAR}"
            )
        try:
            port = int(environ.get(CLAIM_PORT_VAR) or CLAIM_PORT)
        except ValueError:
            raise ChannelError(f"{CLAIM_PORT_VAR} is not a port number") from None
        return cls.listen(server_context(tls_dir), port, environ.get(CLAIM_HOST_VAR, ""))

    @classmethod
    def listen(cls, context: ssl.SSLContext, port: int, host: str = "") -> ClaimServer:
        """Listen on ``host`` (default: every address, IPv6 and IPv4 where there is IPv6)."""
        candidates = [(socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")] if not host else []
        if host:
            candidates = [(socket.AF_INET6 if ":" in host else socket.AF_INET, host)]
        problem: OSError | None = None
        for family, address in candidates:
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
            except OSError as exc:  # no IPv6 in this network namespace
                problem = exc
                continue
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6 and not host:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.bind((address, port))
                sock.listen(64)
            except OSError as exc:
                sock.close()
                problem = exc
                continue
            return cls(context, sock)
        raise ChannelError(f"cannot listen on port {port}: {problem}")

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept()
        with contextlib.suppress(OSError):
            self._sock.close()

    def accept_one(self) -> tuple[bytes, Reply]:
        """Wait for the first peer that is the operator and sends a claim; close the listener.

        Each connection is handshaken on a thread of its own (at most
        :data:`MAX_PENDING_CONNECTIONS` at once, each given :data:`IO_TIMEOUT_SECONDS`), so
        peers that connect and stay silent delay no other connection: the operator's claim is
        accepted while they hang. Connections that fail the handshake (no certificate, another
        CA, another name) or break the framing are dropped and the wait goes on. A probe
        (:data:`PROBE_KIND`, the operator checking that the channel answers) is answered and
        the wait goes on. A claim arriving after the first is refused.
        """
        wait = _Wait()
        acceptor = threading.Thread(
            target=self._accept_loop, args=(wait,), name="claim-accept", daemon=True
        )
        acceptor.start()
        wait.done.wait()
        acceptor.join()
        if not wait.taken:
            raise OSError("the claim listener closed without a claim")
        return wait.taken[0]

    def _accept_loop(self, wait: _Wait) -> None:
        """Accept connections, each served on its own thread, until a claim is taken."""
        while not wait.done.is_set():
            try:
                raw, address = self._sock.accept()
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EINTR, errno.EPROTO):
                    continue  # that one connection went away before it was accepted
                break  # the listener was closed: a claim was taken
            if wait.done.is_set():
                with contextlib.suppress(OSError):
                    raw.close()
                break
            if not wait.slots.acquire(blocking=False):
                _log(f"refused a claim connection from {address[0]}: too many pending")
                with contextlib.suppress(OSError):
                    raw.close()
                continue
            threading.Thread(
                target=self._serve,
                args=(wait, raw, str(address[0])),
                name="claim-conn",
                daemon=True,
            ).start()
        wait.done.set()

    def _serve(self, wait: _Wait, raw: socket.socket, address: str) -> None:
        """One connection: the handshake, probes answered, then its claim taken or refused."""
        try:
            conn = self._handshake(raw, address)
            if conn is None:
                return
            data = _claim_of(conn, address)
            if data is None:
                return
            if wait.take(data, conn):
                wait.done.set()
                self.close()  # one claim: nobody can connect again
                return
            _replier(conn)({"accepted": False, "reason": "this worker is claimed already"})
        finally:
            wait.slots.release()

    def _handshake(self, raw: socket.socket, address: str) -> ssl.SSLSocket | None:
        """The TLS handshake of one connection; the connection if its peer is the operator."""
        raw.settimeout(IO_TIMEOUT_SECONDS)
        try:
            conn = self._context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            _log(f"refused a claim connection from {address}: {type(exc).__name__}")
            with contextlib.suppress(OSError):
                raw.close()
            return None
        if peer_common_name(conn) != OPERATOR_CN:
            _log(f"refused a claim connection from {address}: not the operator")
            with contextlib.suppress(OSError):
                conn.close()
            return None
        return conn


class _Wait:
    """One :meth:`ClaimServer.accept_one`: the claim taken (the first only), whether the wait
    is over, and the slots of connections being served."""

    def __init__(self) -> None:
        self.taken: list[tuple[bytes, Reply]] = []
        self.done = threading.Event()
        self._lock = threading.Lock()
        self.slots = threading.BoundedSemaphore(MAX_PENDING_CONNECTIONS)

    def take(self, data: bytes, conn: ssl.SSLSocket) -> bool:
        """Take ``data`` as the claim if it is the first; whether it was."""
        with self._lock:
            first = not self.taken and not self.done.is_set()
            if first:
                self.taken.append((data, _replier(conn)))
        return first


def _claim_of(conn: ssl.SSLSocket, address: str) -> bytes | None:
    """The connection's first frame that is not a probe (each probe is answered: the channel
    answers, the worker stays idle); None when the connection broke (it is closed)."""
    while True:
        try:
            data = recv_frame(conn)
        except (OSError, ChannelError) as exc:
            _log(f"dropped a claim connection from {address}: {exc}")
            with contextlib.suppress(OSError):
                conn.close()
            return None
        if not is_probe(data):
            return data
        try:
            send_frame(conn, json.dumps({"kind": PROBE_ANSWER_KIND}).encode())
        except OSError:
            with contextlib.suppress(OSError):
                conn.close()
            return None


def is_probe(data: bytes) -> bool:
    """A probe frame: the operator checking that the channel answers (claims nothing)."""
    if len(data) > 256:
        return False
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return False
    return isinstance(document, dict) and document.get("kind") == PROBE_KIND


def _replier(conn: ssl.SSLSocket) -> Reply:
    def reply(message: Mapping[str, Any]) -> None:
        try:
            send_frame(conn, json.dumps(dict(message)).encode("utf-8"))
        except OSError as exc:
            _log(f"could not answer the claim: {exc}")
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    return reply


def _log(message: str) -> None:
    print(f"appliance worker: {message}", file=sys.stderr, flush=True)
