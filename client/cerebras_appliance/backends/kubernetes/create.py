"""The create protocol: an ExecuteJob, the Secret of its values and the Secrets of its code,
in the order that makes an interruption harmless (``docs/security.md``).

1. :func:`create_job`: the job, carrying :data:`AWAITING_VALUES_ANNOTATION`: the operator
   resolves nothing and starts no worker while it is there;
2. :func:`write_values`: the values Secret, with an ownerReference to the job's uid *in the
   create request*: it never exists without an owner, and holds every key or none;
   :func:`write_code`: with a code bundle (issue 23), its chunks, one Secret each
   (``<job>-code-<i>``, key ``chunk-NNN``), owned and labelled the same way, in order;
3. :func:`release`: the annotation is removed, and the operator starts the workers.

An error or an exception (Ctrl-C included) after step 1 deletes the job (:func:`_abandon`), and
with it (garbage collection) the Secrets. A SIGKILL after step 1 leaves a job that waits, saying
so in its ``EnvResolved`` condition; the Secrets, if written, are the job's and go with it.
A job with code and no values (inline ones, or none) is annotated too, naming its first code
Secret, so its workers never start before all of its code is there.
Each step is a module-level function called by name, so a test can mark when each begins.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from kubernetes import client

from cerebras_appliance.backends.kubernetes.errors import (
    _EJ,
    CONNECTION_ERRORS,
    KubernetesError,
    _api_error,
    message_of,
    unreachable,
    with_suffix,
)
from cerebras_appliance.backends.kubernetes.objects import JobRef, drained, raw
from cerebras_appliance.contract import bundle as bundles
from cerebras_appliance.contract.api import (
    KIND,
    PLURAL,
    ExecuteJob,
    InvalidJobError,
    code_chunk_key,
    code_secret_name,
)
from cerebras_appliance.contract.names import (
    API_VERSION,
    AWAITING_VALUES_ANNOTATION,
    GROUP,
    JOB_NAME_LABEL,
    MANAGED_BY_LABEL,
    VERSION,
)

#: The client's label on the Secret of sensitive values.
CLIENT = "cerebras-appliance"
_DELETED = ". The job was deleted"


def create_executejob(
    ref: JobRef,
    job: ExecuteJob,
    manifest: dict[str, Any],
    snapshot: Sequence[tuple[str, str]],
    code: bundles.Bundle | None = None,
) -> None:
    """Run the protocol for ``job`` (its ``manifest``, which loses the annotation once the job
    is released). ``code``: the bundle ``job.spec.code`` describes, written to its Secrets.
    Raises InvalidJobError when the API server refuses the job (the message names the
    field), KubernetesError for anything else, naming the object and the fix."""
    secret = job.metadata.annotations.get(AWAITING_VALUES_ANNOTATION)
    chunks = code_chunks(job, code)
    if secret is None and chunks:
        # No values to wait for, but code: the operator waits for it all the same.
        annotations = manifest["metadata"].setdefault("annotations", {})
        annotations[AWAITING_VALUES_ANNOTATION] = code_secret_name(ref.name, 0)
    created = create_job(ref, manifest)
    if secret is None and not chunks:
        return  # built with inline values: nothing to write
    uid = str(created["metadata"]["uid"])
    try:
        if secret is not None:
            write_values(ref, job, secret, snapshot, uid)
        if chunks:
            write_code(ref, chunks, uid)
        release(ref, secret or code_secret_name(ref.name, 0))
    except BaseException as exc:
        _abandon(ref, uid, exc)
        raise
    manifest["metadata"].get("annotations", {}).pop(AWAITING_VALUES_ANNOTATION, None)


def code_chunks(job: ExecuteJob, code: bundles.Bundle | None) -> list[bytes]:
    """The bundle's chunks, one a Secret (none without code); ValueError when ``job.spec.code``
    does not describe this bundle (a caller's mistake: nothing is created)."""
    described = job.spec.code
    if code is None:
        if described is not None:
            raise ValueError("spec.code describes a bundle, but no bundle was given")
        return []
    chunks = bundles.split(code.data, bundles.SECRET_CHUNK_BYTES)
    if described is None or (described.sha256, described.chunks, described.size) != (
        code.sha256,
        len(chunks),
        len(code.data),
    ):
        raise ValueError("spec.code does not describe the bundle given (its hash, chunks, size)")
    return chunks


def create_job(ref: JobRef, manifest: dict[str, Any]) -> dict[str, Any]:
    """Step 1: the ExecuteJob as created (its uid owns the Secret)."""
    what = f"creating ExecuteJob {ref.namespace}/{ref.name}"
    try:
        return raw(
            ref.custom.create_namespaced_custom_object(
                GROUP, VERSION, ref.namespace, PLURAL, manifest, _preload_content=False
            )
        )
    except client.ApiException as exc:
        if exc.status == 409:
            raise KubernetesError(
                f"ExecuteJob {ref.namespace}/{ref.name} already exists; choose another "
                "name (or delete it first)"
            ) from None
        if exc.status == 422:
            raise InvalidJobError([message_of(exc)]) from None
        raise _api_error(what, exc, "create", _EJ, ref.namespace) from None
    except CONNECTION_ERRORS as exc:
        raise KubernetesError(f"{what}: {unreachable(exc)}") from None


def write_values(
    ref: JobRef, job: ExecuteJob, secret: str, snapshot: Sequence[tuple[str, str]], job_uid: str
) -> None:
    """Step 2: the values Secret (immutable, owned by the job from its first instant)."""
    values = dict(snapshot)
    data: dict[str, bytes | str] = {}
    for item in job.spec.env:
        key_ref = item.value_from.secret_key_ref if item.value_from is not None else None
        if key_ref is not None and key_ref.name == secret:
            data[key_ref.key] = base64.b64encode(values[item.name].encode("utf-8")).decode()
    body = _owned_secret(ref, secret, job_uid)
    body.data = data
    what = f"creating Secret {ref.namespace}/{secret} (the values of job {ref.name})"
    _create_secret(ref, body, what, "the name is random: someone else made it); submit again")


def write_code(ref: JobRef, chunks: Sequence[bytes], job_uid: str) -> None:
    """Step 2, with code: chunk ``i`` in Secret ``<job>-code-<i>`` under key ``chunk-NNN``,
    in order, immutable, owned by the job from its first instant (as the values Secret: the
    same readers, the same garbage collection). Their content is checked by its hash
    (``spec.code.sha256``) wherever it is used, so a Secret someone else made cannot pass for
    one of them."""
    for index, chunk in enumerate(chunks):
        name = code_secret_name(ref.name, index)
        body = _owned_secret(ref, name, job_uid)
        body.data = {code_chunk_key(index): base64.b64encode(chunk).decode("ascii")}
        what = (
            f"creating Secret {ref.namespace}/{name} (chunk {index + 1} of {len(chunks)} of the "
            f"code of job {ref.name})"
        )
        _create_secret(
            ref,
            body,
            what,
            "an earlier job of the same name whose Secrets are still being garbage-collected, "
            "or someone else made it); submit again, under another name or once it is gone",
        )


def _create_secret(ref: JobRef, body: client.V1Secret, what: str, taken: str) -> None:
    """Create one Secret of the job's (the job is deleted by the caller on any error: every
    message says so); ``taken``: why its name may be in use, for the 409."""
    try:
        drained(ref.core.create_namespaced_secret(ref.namespace, body, _preload_content=False))
    except client.ApiException as exc:
        if exc.status == 409:
            raise KubernetesError(
                f"{what}: a Secret of that name exists already ({taken}. The job was deleted"
            ) from None
        error = _api_error(what, exc, "create", "secrets", ref.namespace)
        raise with_suffix(error, _DELETED) from None
    except CONNECTION_ERRORS as exc:
        raise KubernetesError(f"{what}: {unreachable(exc)}{_DELETED}") from None


def _owned_secret(ref: JobRef, name: str, job_uid: str) -> client.V1Secret:
    """An immutable Secret the job owns (ownerReference in the create request), labelled as
    the client's and the job's; its data is set by the caller."""
    owner = client.V1OwnerReference(
        api_version=API_VERSION,
        kind=KIND,
        name=ref.name,
        uid=job_uid,
        block_owner_deletion=False,
    )
    return client.V1Secret(
        metadata=client.V1ObjectMeta(
            name=name,
            namespace=ref.namespace,
            labels={MANAGED_BY_LABEL: CLIENT, JOB_NAME_LABEL: ref.name},
            owner_references=[owner],
        ),
        type="Opaque",
        immutable=True,
    )


def release(ref: JobRef, secret: str) -> None:
    """Step 3: remove the annotation; the operator may now resolve the values and start
    workers."""
    what = f"releasing ExecuteJob {ref.namespace}/{ref.name} (values in Secret {secret})"
    try:
        ref.patch({"metadata": {"annotations": {AWAITING_VALUES_ANNOTATION: None}}})
    except client.ApiException as exc:
        error = _api_error(what, exc, "patch", _EJ, ref.namespace)
        raise with_suffix(error, _DELETED) from None
    except CONNECTION_ERRORS as exc:
        raise KubernetesError(f"{what}: {unreachable(exc)}{_DELETED}") from None


def _abandon(ref: JobRef, job_uid: str, cause: BaseException) -> None:
    """Delete the job created by a protocol that failed (its Secret goes with it). Best
    effort: if even that fails, ``cause`` gets a note saying how to delete it by hand."""
    try:
        ref.delete(
            client.V1DeleteOptions(
                propagation_policy="Background",
                preconditions=client.V1Preconditions(uid=job_uid),
            )
        )
    except client.ApiException as exc:
        if exc.status not in (404, 409):  # 404: gone; 409: a newer job of that name
            _note_leftover(ref, cause, f"{exc.status} {exc.reason}")
    except CONNECTION_ERRORS as exc:
        _note_leftover(ref, cause, exc.__class__.__name__)


def _note_leftover(ref: JobRef, cause: BaseException, why: str) -> None:
    cause.add_note(
        f"deleting the unfinished ExecuteJob {ref.namespace}/{ref.name} failed too "
        f"({why}); it waits for its values and starts nothing: "
        f"kubectl delete executejob -n {ref.namespace} {ref.name}"
    )
