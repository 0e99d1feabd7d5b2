"""The claim channel's security claims, on real TLS over loopback with a real warm worker.

* only the operator's certificate can claim (no certificate, another pool's CA, and the
  workers' own certificate are all refused, and the refused peer learns nothing);
* a claim is accepted once: a second connection finds nobody listening, and the bytes of a
  recorded claim connection replayed to an idle worker of the same pool do not claim it;
* the claimed worker applies the snapshot as the cold path does and confirms its envHash.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance_operator.pool import tls as pooltls
from cerebras_appliance.contract import channel, envfile, names
from cerebras_appliance.contract import claim as claims
from cerebras_appliance.worker import entrypoint as worker_mod

SENTINEL = "sentinel-value-7f3a9"


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)  # poll interval of a file/port condition


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Warm:
    proc: subprocess.Popen[str]
    port: int
    idle: Path
    state: Path

    def result(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, out, err


@pytest.fixture(scope="module")
def creds() -> pooltls.PoolCredentials:
    return pooltls.new_pool_credentials("p1")


@pytest.fixture
def start(tmp_path: Path, creds: pooltls.PoolCredentials) -> Iterator[Callable[[str], Warm]]:
    started: list[Warm] = []
    tls = tmp_path / "tls"
    tls.mkdir()
    for name, value in creds.worker.secret_data().items():
        (tls / name).write_bytes(base64.b64decode(value))
    (tmp_path / "user.py").write_text(
        "import os, subprocess, sys\n"
        "print('SECRET', os.environ.get('SECRET'))\n"
        "print('ready', open(os.environ['APPLIANCE_READY_FILE']).read().strip())\n"
        "print('warmvars', sorted(k for k in os.environ if 'CLAIM' in k or 'WARM' in k))\n"
        "subprocess.run([sys.executable, '-c', "
        '\'import os; print("child", os.environ.get("SECRET"))\'], check=True)\n'
    )

    def launch(name: str = "pod-a") -> Warm:
        port = free_port()
        state = tmp_path / f"state-{len(started)}-{name}"
        state.mkdir()
        idle = state / "idle"
        env = {
            "PATH": os.environ["PATH"],
            names.CLAIM_TLS_DIR_VAR: str(tls),
            names.CLAIM_PORT_VAR: str(port),
            names.IDLE_FILE_VAR: str(idle),
            names.STATE_DIR_VAR: str(state),
            names.POOL_WORKER_VAR: name,
            names.READY_FILE_VAR: str(state / "ready"),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "cerebras_appliance.worker", "--warm"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        warm = Warm(proc, port, idle, state)
        started.append(warm)
        wait_for(lambda: idle.exists() or proc.poll() is not None)
        assert proc.poll() is None, proc.communicate()
        return warm

    yield launch
    for warm in started:
        if warm.proc.poll() is None:
            warm.proc.kill()
            warm.proc.communicate()


def a_claim(worker: str = "pod-a") -> tuple[bytes, str]:
    pairs = [("SECRET", SENTINEL)]
    key, digest = envfile.seal(pairs)
    claim = claims.Claim(
        worker=worker,
        entrypoint="user.py",
        args=(),
        plumbing=(("APPLIANCE_JOB_NAME", "j"), ("APPLIANCE_WORKER_NAME", "j-worker-0")),
        snapshot=envfile.dumps(pairs, digest, key),
    )
    return claims.dumps(claim), digest


def operator_context(creds: pooltls.PoolCredentials) -> ssl.SSLContext:
    return pooltls.client_context(creds.operator)


def test_the_operator_claims_and_the_worker_runs_the_cold_path(
    start: Callable[[str], Warm], creds: pooltls.PoolCredentials
) -> None:
    warm = start("pod-a")
    data, digest = a_claim()
    answer = pooltls.deliver(operator_context(creds), "127.0.0.1", data, port=warm.port)
    assert answer == {"accepted": True, "envHash": digest, "job": "", "nonce": ""}
    code, out, err = warm.result()
    assert code == 0, err
    assert f"SECRET {SENTINEL}" in out and f"child {SENTINEL}" in out
    assert f"ready {digest}" in out  # the same readiness marker as the cold path
    assert "warmvars []" in out
    assert SENTINEL not in err  # the worker's own log never holds a value
    assert not warm.idle.exists()


def _tls_client(context: ssl.SSLContext, port: int) -> str:
    """Try to claim with ``context``; what happened (never raises)."""
    data, _ = a_claim()
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            context.wrap_socket(raw) as conn,
        ):
            channel.send_frame(conn, data)
            return f"answered {channel.recv_frame(conn)!r}"
    except (OSError, ssl.SSLError, channel.ChannelError) as exc:
        return f"refused {type(exc).__name__}"


def _anonymous_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def test_no_one_but_the_operator_can_claim_or_read_a_snapshot(
    start: Callable[[str], Warm], creds: pooltls.PoolCredentials
) -> None:
    warm = start("pod-a")
    other_pool = pooltls.new_pool_credentials("p2")
    impostors = {
        "no certificate": _anonymous_context(),
        "another pool's operator certificate": pooltls.client_context(other_pool.operator),
        "the workers' own certificate": pooltls.client_context(creds.worker),
    }
    for label, context in impostors.items():
        outcome = _tls_client(context, warm.port)
        assert outcome.startswith("refused") or outcome == "answered b''", (label, outcome)
        assert "accepted" not in outcome, label
    # A plain-text client gets nothing either.
    with socket.create_connection(("127.0.0.1", warm.port), timeout=10) as raw:
        raw.sendall(a_claim()[0])
        raw.settimeout(10)
        try:
            reply = raw.recv(65536)
        except OSError:
            reply = b""
        assert SENTINEL.encode() not in reply and b"accepted" not in reply
    assert warm.idle.exists() and warm.proc.poll() is None  # still idle, still unclaimed
    # The operator can still claim it afterwards.
    data, digest = a_claim()
    answer = pooltls.deliver(operator_context(creds), "127.0.0.1", data, port=warm.port)
    assert answer["envHash"] == digest
    code, _, err = warm.result()
    assert code == 0, err
    assert "refused a claim connection" in err


def test_the_operator_refuses_a_peer_that_is_not_a_worker_of_the_pool(
    creds: pooltls.PoolCredentials, tmp_path: Path
) -> None:
    other = pooltls.new_pool_credentials("p2")
    tls = tmp_path / "other"
    tls.mkdir()
    for name, value in other.worker.secret_data().items():
        (tls / name).write_bytes(base64.b64decode(value))
    server = channel.ClaimServer.listen(channel.server_context(tls), 0, host="127.0.0.1")
    received: list[bytes] = []
    thread = threading.Thread(target=lambda: _accept_into(server, received), daemon=True)
    thread.start()
    with pytest.raises(pooltls.ClaimRefusedError):
        pooltls.deliver(operator_context(creds), "127.0.0.1", a_claim()[0], port=server.port)
    server.close()
    assert received == []  # the impostor worker never saw the claim


def _accept_into(server: channel.ClaimServer, received: list[bytes]) -> None:
    try:
        data, reply = server.accept_one()
    except OSError:
        return
    received.append(data)
    reply({"accepted": False, "reason": "test"})


def test_a_second_claim_finds_nobody_listening(
    start: Callable[[str], Warm], creds: pooltls.PoolCredentials
) -> None:
    warm = start("pod-a")
    context = operator_context(creds)
    pooltls.deliver(context, "127.0.0.1", a_claim()[0], port=warm.port)
    with pytest.raises(pooltls.ClaimRefusedError, match="ConnectionRefused"):
        pooltls.deliver(context, "127.0.0.1", a_claim()[0], port=warm.port, timeout=5)
    code, _, err = warm.result()
    assert code == 0, err


class Recorder:
    """A TCP relay that records what the client sent."""

    def __init__(self, target_port: int) -> None:
        self.sent = bytearray()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.target = target_port
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        client, _ = self.listener.accept()
        upstream = socket.create_connection(("127.0.0.1", self.target))

        def pump(src: socket.socket, dst: socket.socket, record: bool) -> None:
            try:
                while chunk := src.recv(65536):
                    if record:
                        self.sent += chunk
                    dst.sendall(chunk)
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)

        back = threading.Thread(target=pump, args=(upstream, client, False), daemon=True)
        back.start()
        pump(client, upstream, True)
        back.join(timeout=10)
        client.close()
        upstream.close()
        self.listener.close()


def test_a_recorded_claim_replayed_to_another_idle_worker_claims_nothing(
    start: Callable[[str], Warm], creds: pooltls.PoolCredentials
) -> None:
    first = start("pod-a")
    recorder = Recorder(first.port)
    pooltls.deliver(operator_context(creds), "127.0.0.1", a_claim("pod-a")[0], port=recorder.port)
    recorder.thread.join(timeout=30)
    assert first.result()[0] == 0
    assert len(recorder.sent) > 100
    assert SENTINEL.encode() not in bytes(recorder.sent)  # encrypted on the wire

    second = start("pod-a")  # same pool, same name even: only the TLS keys differ
    with socket.create_connection(("127.0.0.1", second.port), timeout=10) as raw:
        raw.sendall(bytes(recorder.sent))
        raw.shutdown(socket.SHUT_WR)  # nothing more comes: the worker must decide now
        raw.settimeout(60)
        # The worker closes the connection once it has refused it (and logged that).
        with contextlib.suppress(ConnectionResetError):
            while raw.recv(65536):
                pass
    assert second.proc.poll() is None and second.idle.exists(), "the replay claimed a worker"
    # Still idle and still the operator's: a real claim now is the one it accepts.
    data, digest = a_claim("pod-a")
    answer = pooltls.deliver(operator_context(creds), "127.0.0.1", data, port=second.port)
    assert answer["envHash"] == digest
    code, _, err = second.result()
    assert code == 0, err
    assert "refused a claim connection" in err


def test_a_claim_meant_for_another_pod_is_refused(
    start: Callable[[str], Warm], creds: pooltls.PoolCredentials
) -> None:
    warm = start("pod-a")
    with pytest.raises(pooltls.ClaimRefusedError, match="pod-b"):
        pooltls.deliver(operator_context(creds), "127.0.0.1", a_claim("pod-b")[0], port=warm.port)
    code, out, _ = warm.result()
    assert code == worker_mod.EXIT_CONFIG and SENTINEL not in out


def test_credentials_round_trip_through_secret_data(creds: pooltls.PoolCredentials) -> None:
    again = pooltls.KeyPair.from_secret_data(creds.operator.secret_data())
    assert again == creds.operator
    assert b"PRIVATE KEY" in creds.worker.key_pem
    assert creds.worker.key_pem != creds.operator.key_pem
    with pytest.raises(channel.ChannelError, match=r"tls\.key"):
        pooltls.KeyPair.from_secret_data({"ca.crt": "", "tls.crt": ""})


def test_silent_connections_do_not_stall_the_operators_claim(
    start: Callable[[str], Warm], creds: pooltls.PoolCredentials
) -> None:
    """Peers that connect and send nothing (a port scan, a stuck proxy, a hostile pod) each
    hold a connection for up to IO_TIMEOUT_SECONDS; handshaken one at a time they stalled
    every claim for N x 10 s. Handshaken concurrently, the claim is answered at once."""
    warm = start("pod-a")
    silent = []
    for _ in range(12):  # 12 x 10 s = 120 s, one at a time
        silent.append(socket.create_connection(("127.0.0.1", warm.port), timeout=10))
    try:
        data, digest = a_claim()
        began = time.monotonic()
        answer = pooltls.deliver(
            operator_context(creds), "127.0.0.1", data, port=warm.port, timeout=30
        )
        took = time.monotonic() - began
        assert answer["envHash"] == digest
        assert took < 5.0, f"the claim waited {took:.1f} s behind silent connections"
    finally:
        for s in silent:
            s.close()
    code, _, err = warm.result()
    assert code == 0, err


def test_a_probe_is_answered_and_claims_nothing(
    start: Callable[[str], Warm], creds: pooltls.PoolCredentials
) -> None:
    warm = start("pod-a")
    for _ in range(2):
        pooltls.probe(operator_context(creds), "127.0.0.1", port=warm.port)
    assert warm.idle.exists() and warm.proc.poll() is None  # still idle
    with pytest.raises(pooltls.ClaimRefusedError):  # only the operator may probe
        pooltls.probe(pooltls.client_context(creds.worker), "127.0.0.1", port=warm.port)
    data, _ = a_claim()
    assert pooltls.deliver(operator_context(creds), "127.0.0.1", data, port=warm.port)
    code, _, err = warm.result()
    assert code == 0, err


def test_an_answer_confirms_only_the_claim_it_answers(
    start: Callable[[str], Warm], creds: pooltls.PoolCredentials
) -> None:
    """A worker claimed first by someone else (job A) is never confirmed for job B: B's
    delivery finds nobody listening, which is a failure (not "it accepted B's claim"), and
    an answer that does not repeat B's job uid and nonce is refused."""
    warm = start("pod-a")
    context = operator_context(creds)
    data_a = claims.dumps(claims.parse(a_claim()[0])._replace(job="uid-a", nonce="n-a"))
    answer = pooltls.deliver(context, "127.0.0.1", data_a, port=warm.port, job="uid-a", nonce="n-a")
    assert (answer["job"], answer["nonce"]) == ("uid-a", "n-a")
    data_b = claims.dumps(claims.parse(a_claim()[0])._replace(job="uid-b", nonce="n-b"))
    with pytest.raises(pooltls.ClaimRefusedError, match="ConnectionRefused"):
        pooltls.deliver(context, "127.0.0.1", data_b, port=warm.port, job="uid-b", nonce="n-b")
    assert warm.result()[0] == 0


def test_an_answer_not_bound_to_the_claim_is_refused(
    creds: pooltls.PoolCredentials, tmp_path: Path
) -> None:
    """A peer with the workers' certificate (e.g. a claimed job's own code) answering
    "accepted" without this claim's job uid and nonce confirms nothing."""
    tls = tmp_path / "tls"
    tls.mkdir()
    for name, value in creds.worker.secret_data().items():
        (tls / name).write_bytes(base64.b64decode(value))
    server = channel.ClaimServer.listen(channel.server_context(tls), 0, host="127.0.0.1")

    def answer_for_another_job() -> None:
        with contextlib.suppress(OSError):
            _, reply = server.accept_one()
            reply({"accepted": True, "envHash": "x", "job": "uid-a", "nonce": "old"})

    thread = threading.Thread(target=answer_for_another_job, daemon=True)
    thread.start()
    data = claims.dumps(claims.parse(a_claim()[0])._replace(job="uid-b", nonce="n-b"))
    with pytest.raises(pooltls.ClaimRefusedError, match="not bound to this claim"):
        pooltls.deliver(
            operator_context(creds), "127.0.0.1", data, port=server.port, job="uid-b", nonce="n-b"
        )
    thread.join(timeout=10)
    server.close()
