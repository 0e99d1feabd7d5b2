"""The operator's side of the claim channel: a pool's certificates, and delivering a claim.

Each WorkerPool gets its own CA, made by the operator when it first sees the pool (the
``cryptography`` package). The CA signs two certificates, then its private key is thrown
away (nobody can issue another certificate of that pool, the operator included):

* the workers' (CN ``appliance-worker``, serverAuth), in the Secret
  ``<pool>-claim-worker-<pool uid>`` that the pool's pods mount (``ca.crt``, ``tls.crt``,
  ``tls.key``);
* the operator's (CN ``appliance-operator``, clientAuth), in the Secret
  ``<pool>-claim-operator-<pool uid>``, which only the operator reads (no pod mounts it); it
  also holds a copy of the workers' pair, so the pair is made with one create (a missing
  worker Secret is made again from it).

Both are owned by the pool (controller), annotated with its uid and the CA's fingerprint, and
checked before use (:func:`binding_problem`).

A worker accepts a claim only over TLS 1.3 from a peer holding the operator's certificate;
the operator sends a claim only to a peer holding the workers' certificate.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import json
import os
import socket
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from appliance_operator.desired import controller_uid
from cerebras_appliance.contract import channel, names
from cerebras_appliance.contract.names import CA_FINGERPRINT_ANNOTATION, POOL_UID_ANNOTATION

# ``cryptography`` is imported where a pool's certificates are made, not with the operator:
# it takes ~10 MiB of the operator's memory (measured), which an operator serving no pool
# never needs.
if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

CERT_DAYS = 3650
CA_CN_PREFIX = "appliance-pool-ca"


#: The keys of the workers' pair inside the operator's Secret.
WORKER_COPY_PREFIX = "worker-"


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its PEM private key, plus the CA certificate that signed it."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    def secret_data(self) -> dict[str, str]:
        """The Secret's ``data`` (base64): ``ca.crt``, ``tls.crt``, ``tls.key``."""
        return {
            channel.CA_FILE: base64.b64encode(self.ca_pem).decode("ascii"),
            channel.CERT_FILE: base64.b64encode(self.cert_pem).decode("ascii"),
            channel.KEY_FILE: base64.b64encode(self.key_pem).decode("ascii"),
        }

    @classmethod
    def from_secret_data(cls, data: Mapping[str, str]) -> KeyPair:
        try:
            return cls(
                ca_pem=base64.b64decode(data[channel.CA_FILE]),
                cert_pem=base64.b64decode(data[channel.CERT_FILE]),
                key_pem=base64.b64decode(data[channel.KEY_FILE]),
            )
        except (KeyError, ValueError) as exc:
            raise channel.ChannelError(f"a claim Secret lacks {exc}") from None


@dataclass(frozen=True)
class PoolCredentials:
    worker: KeyPair
    operator: KeyPair

    @property
    def fingerprint(self) -> str:
        return ca_fingerprint(self.operator.ca_pem)


def ca_fingerprint(ca_pem: bytes) -> str:
    return hashlib.sha256(ca_pem).hexdigest()


def operator_secret_data(creds: PoolCredentials) -> dict[str, str]:
    """The operator's Secret: its pair, and a copy of the workers' (keys ``worker-*``)."""
    data = creds.operator.secret_data()
    for key, value in creds.worker.secret_data().items():
        data[WORKER_COPY_PREFIX + key] = value
    return data


def credentials_from_operator_secret(data: Mapping[str, str]) -> PoolCredentials:
    worker = {
        key[len(WORKER_COPY_PREFIX) :]: value
        for key, value in data.items()
        if key.startswith(WORKER_COPY_PREFIX)
    }
    return PoolCredentials(
        worker=KeyPair.from_secret_data(worker),
        operator=KeyPair.from_secret_data(data),
    )


def binding_problem(
    secret: Mapping[str, Any], pool_uid: str, fingerprint: str | None = None
) -> str:
    """Why ``secret`` is not one of the claim Secrets the operator made for the pool with
    ``pool_uid`` ("" when it is): controlled by that pool, annotated with its uid and its
    CA's fingerprint (``fingerprint``: the one its other half carries), immutable, and its
    CA certificate the one the fingerprint names."""
    annotations = (secret.get("metadata") or {}).get("annotations") or {}
    if controller_uid(secret) != pool_uid or annotations.get(POOL_UID_ANNOTATION) != pool_uid:
        return "it is not bound to this WorkerPool's uid (the operator did not make it)"
    if secret.get("immutable") is not True:
        return "it is not immutable"
    want = str(annotations.get(CA_FINGERPRINT_ANNOTATION) or "")
    try:
        ca_pem = base64.b64decode((secret.get("data") or {})[channel.CA_FILE], validate=True)
    except (KeyError, TypeError, ValueError):
        return f"it has no {channel.CA_FILE}"
    if not want or ca_fingerprint(ca_pem) != want:
        return "its CA is not the one its annotation names"
    if fingerprint is not None and want != fingerprint:
        return "its CA is not the CA of the other claim Secret"
    return ""


def claim_secret(
    name: str,
    namespace: str,
    labels: Mapping[str, str],
    owner: Mapping[str, Any],
    pool_uid: str,
    fingerprint: str,
    data: Mapping[str, str],
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": dict(labels),
            "annotations": {
                POOL_UID_ANNOTATION: pool_uid,
                CA_FINGERPRINT_ANNOTATION: fingerprint,
            },
            "ownerReferences": [dict(owner)],
        },
        "type": "Opaque",
        "immutable": True,
        "data": dict(data),
    }


def _key() -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(cn: str) -> x509.Name:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _certificate(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    now: dt.datetime,
    *,
    ca: bool,
) -> x509.CertificateBuilder:
    """What a pool's CA and its two leaf certificates share: validity, and either CA rights
    (sign certificates, nothing else) or a leaf's (sign handshakes, nothing else)."""
    from cryptography import x509

    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    cn: str,
    usage: x509.ObjectIdentifier,
    now: dt.datetime,
) -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    key = _key()
    cert = (
        _certificate(_name(cn), ca_name, key, now, ca=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def new_pool_credentials(pool: str, now: dt.datetime | None = None) -> PoolCredentials:
    """A new CA for ``pool``, its two certificates; the CA's key is not kept."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    now = now or dt.datetime.now(dt.UTC)
    ca_key = _key()
    ca_name = _name(f"{CA_CN_PREFIX}-{pool}")
    ca_cert = _certificate(ca_name, ca_name, ca_key, now, ca=True).sign(ca_key, hashes.SHA256())
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    worker = _leaf(ca_key, ca_name, channel.WORKER_CN, ExtendedKeyUsageOID.SERVER_AUTH, now)
    operator = _leaf(ca_key, ca_name, channel.OPERATOR_CN, ExtendedKeyUsageOID.CLIENT_AUTH, now)
    return PoolCredentials(
        worker=KeyPair(ca_pem, *worker),
        operator=KeyPair(ca_pem, *operator),
    )


def client_context(pair: KeyPair) -> ssl.SSLContext:
    """TLS 1.3 client context presenting ``pair`` and trusting only its CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False  # pods have no stable names: the CN is checked instead
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=pair.ca_pem.decode("ascii"))
    load_cert_chain_from_memory(context, pair.cert_pem + pair.key_pem)
    return context


def load_cert_chain_from_memory(context: ssl.SSLContext, pem: bytes) -> None:
    """``context.load_cert_chain`` of a certificate and key that never touch a disk.

    The ssl module reads a key from a path only. On Linux the path is an anonymous memory file
    (``memfd_create``, read through ``/proc/self/fd``); elsewhere (a developer's machine) a
    private temporary file, removed as soon as it is loaded."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("claim-key", os.MFD_CLOEXEC)
        try:
            view = memoryview(pem)
            while view:
                view = view[os.write(fd, view) :]
            context.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    fd, path = tempfile.mkstemp(prefix="claim-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        context.load_cert_chain(path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


class ClaimRefusedError(RuntimeError):
    """The worker could not be reached, was not a worker of the pool, or refused the claim."""


def _exchange(context: ssl.SSLContext, host: str, port: int, payload: bytes, timeout: float) -> Any:
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw) as conn,
        ):
            if channel.peer_common_name(conn) != channel.WORKER_CN:
                raise ClaimRefusedError(f"{host}: the peer is not a worker of the pool")
            channel.send_frame(conn, payload)
            return json.loads(channel.recv_frame(conn, limit=65536))
    except (OSError, ssl.SSLError, channel.ChannelError, ValueError) as exc:
        raise ClaimRefusedError(f"{host}:{port}: {type(exc).__name__}: {exc}") from None


def deliver(
    context: ssl.SSLContext,
    host: str,
    claim_bytes: bytes,
    *,
    port: int = names.CLAIM_PORT,
    timeout: float = channel.IO_TIMEOUT_SECONDS,
    job: str = "",
    nonce: str = "",
) -> dict[str, Any]:
    """Send one claim to the worker at ``host``; return its answer (``accepted``, ``envHash``).

    ``job``/``nonce``: the claim's; the answer must repeat both, else it is not an answer to
    this claim (a worker that took someone else's claim answers with theirs, or not at all).
    Raises :class:`ClaimRefusedError` (message without values) when it is not delivered: a
    worker that does not listen any more is *not* taken as having accepted this claim."""
    answer = _exchange(context, host, port, claim_bytes, timeout)
    if not isinstance(answer, dict) or not answer.get("accepted"):
        reason = answer.get("reason", "?") if isinstance(answer, dict) else "?"
        raise ClaimRefusedError(f"{host}: the worker refused the claim: {reason}")
    if answer.get("job", "") != job or answer.get("nonce", "") != nonce:
        raise ClaimRefusedError(f"{host}: the worker's answer is not bound to this claim")
    return answer


def probe(
    context: ssl.SSLContext,
    host: str,
    *,
    port: int = names.CLAIM_PORT,
    timeout: float = 5.0,
) -> None:
    """Check that the idle worker at ``host`` answers on its channel (it claims nothing);
    raises :class:`ClaimRefusedError` saying why not."""
    answer = _exchange(
        context, host, port, json.dumps({"kind": channel.PROBE_KIND}).encode(), timeout
    )
    if not isinstance(answer, dict) or answer.get("kind") != channel.PROBE_ANSWER_KIND:
        raise ClaimRefusedError(f"{host}: the worker did not answer the probe")
