"""The ExecuteJob API (``appliance.dev/v1alpha1``): the single source of truth.

The pydantic models here validate exactly what the CRD enforces at admission (the CRD in
``crds/executejobs.yaml`` is generated from them), so the client refuses a bad job before
sending it, with the same field path and a hint on how to fix it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from cerebras_appliance.contract.bundle import (
    HASH_PREFIX,
    MAX_BUNDLE_BYTES,
    MAX_CHUNKS,
    SECRET_CHUNK_BYTES,
)
from cerebras_appliance.contract.entrypoints import (
    ENTRYPOINT_MODULE_PATTERN as ENTRYPOINT_MODULE_PATTERN,  # re-exported for the CRD
)
from cerebras_appliance.contract.entrypoints import entrypoint_problem
from cerebras_appliance.contract.entrypoints import (
    is_script_entrypoint as is_script_entrypoint,
)
from cerebras_appliance.contract.names import CODE_CHUNK_PREFIX, GROUP, MANAGED_BY_LABEL

KIND = "ExecuteJob"
PLURAL = "executejobs"
SINGULAR = "executejob"
SHORT_NAMES = ["ej"]

#: Upper bounds shared by the client and the CRD (admission refuses anything larger).
MAX_REPLICAS = 1000
MAX_ENV_VARS = 1000
MAX_ENV_NAME_LENGTH = 256
MAX_ARGS = 256
#: Job names become parts of pod names and label values: a DNS-1123 label, kept short so
#: "<name>-worker-<index>" stays a valid label too.
MAX_JOB_NAME_LENGTH = 52

#: Names the worker entrypoint and the operator set themselves (APPLIANCE_ENV_FILE, ...):
#: refused in spec.env, so a snapshot cannot break its own delivery.
RESERVED_ENV_PREFIX = "APPLIANCE_"


#: The longest activeDeadlineSeconds / ttlSecondsAfterFinished: 2**31 - 1 s (about 68 years;
#: Kubernetes' own ttlSecondsAfterFinished is an int32). A start time plus this much is still a
#: date Python (and every backend) can represent, so a deadline never overflows a reconcile.
MAX_DURATION_SECONDS = 2**31 - 1

#: Label and annotation keys the operator writes on the pods it makes (and selects them by):
#: refused in a template's labels and annotations, so a user cannot make an idle pool pod look
#: claimed, or a cold worker look like a pool's.
RESERVED_KEY_PREFIX = f"{GROUP}/"
RESERVED_KEYS = frozenset({MANAGED_BY_LABEL})

#: WorkerPool names: a DNS-1123 label, short enough to be a label value and a pod name part.
MAX_POOL_NAME_LENGTH = 52
MAX_POOL_SIZE = 1000
MAX_POOL_IMPORTS = 64
MODULE_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"

JOB_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
ENV_NAME_PATTERN = r"^[^=\x00]+$"
SECRET_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"

Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"]
TERMINAL_PHASES: frozenset[str] = frozenset({"Succeeded", "Failed"})


class InvalidJobError(ValueError):
    """A job the API would refuse. ``errors`` holds one ``"field: problem"`` line each."""

    def __init__(self, errors: Sequence[str], kind: str = "ExecuteJob") -> None:
        self.errors = list(errors)
        super().__init__(f"invalid {kind}:\n  " + "\n  ".join(self.errors))


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=True,
    )


def _check_entrypoint(value: str) -> str:
    problem = entrypoint_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _json_integer(value: Any) -> Any:
    """What the API server takes for a JSON integer: a number, not text or a boolean (pydantic
    alone would turn "2" or true into 2; a whole float such as 2.0 stays accepted, as the API
    server's JSON decoder reads it as 2)."""
    if isinstance(value, bool | str | bytes):
        raise ValueError("must be a JSON integer (a number, not text or true/false)")
    return value


#: An integer as the CRD's ``type: integer`` takes it.
JsonInt = Annotated[int, BeforeValidator(_json_integer)]
#: Durations in seconds, up to :data:`MAX_DURATION_SECONDS`.
Seconds = Annotated[int, Field(ge=0, le=MAX_DURATION_SECONDS), BeforeValidator(_json_integer)]
PositiveSeconds = Annotated[
    int, Field(ge=1, le=MAX_DURATION_SECONDS), BeforeValidator(_json_integer)
]


def reserved_key(key: str) -> bool:
    """A label/annotation key the operator writes itself (:data:`RESERVED_KEY_PREFIX`, ...)."""
    return key.startswith(RESERVED_KEY_PREFIX) or key in RESERVED_KEYS


def _no_reserved_keys(what: str) -> Any:
    def check(value: dict[str, str]) -> dict[str, str]:
        reserved = sorted(k for k in value if reserved_key(k))
        if reserved:
            raise ValueError(
                f"{', '.join(map(repr, reserved))}: {what} keys starting with "
                f"{RESERVED_KEY_PREFIX!r} (and {', '.join(sorted(RESERVED_KEYS))}) are the "
                "operator's own; use another key"
            )
        return value

    return AfterValidator(check)


NO_NUL_PATTERN = r"^[^\x00]*$"
NUL_MESSAGE = (
    "holds a NUL character (\\x00), which no process can receive in its environment or "
    "arguments; remove it"
)


def _no_nul(value: str | None) -> str | None:
    if value is not None and "\x00" in value:
        raise ValueError(NUL_MESSAGE)
    return value


#: Text a worker's process receives (its argv): no NUL, in the models and in the CRD.
ProcessText = Annotated[
    str, Field(json_schema_extra={"pattern": NO_NUL_PATTERN}), AfterValidator(_no_nul)
]


class SecretKeySelector(_Model):
    """A key of a Secret in the job's namespace."""

    name: Annotated[
        str,
        Field(
            min_length=1,
            max_length=253,
            pattern=SECRET_NAME_PATTERN,
            description="Name of the Secret (in the job's namespace).",
        ),
    ]
    key: Annotated[
        str,
        Field(
            min_length=1,
            max_length=253,
            pattern=SECRET_KEY_PATTERN,
            description="Key inside the Secret whose value becomes the variable's value.",
        ),
    ]


class EnvVarSource(_Model):
    """Where a value comes from when it is not given inline."""

    secret_key_ref: SecretKeySelector = Field(
        description="Read the value from a key of a Secret, resolved when the job starts."
    )


class EnvVar(_Model):
    """One tracked variable: a name and exactly one of ``value`` / ``valueFrom``."""

    name: Annotated[
        str,
        Field(
            min_length=1,
            max_length=MAX_ENV_NAME_LENGTH,
            pattern=ENV_NAME_PATTERN,
            description="Variable name, as set through appliance_environ. Must not be empty "
            "or contain '='.",
        ),
    ]
    value: Annotated[
        str | None,
        Field(
            description="The value, inline: readable by everyone who can read the job. Exactly "
            "one of value/valueFrom. No NUL character.",
            # The CRD's check: a pattern, not a CEL rule, whose estimated cost on 1000 values
            # of unbounded length the API server refuses (the models give the message).
            json_schema_extra={"pattern": NO_NUL_PATTERN},
        ),
        AfterValidator(_no_nul),
    ] = None
    value_from: EnvVarSource | None = Field(
        default=None,
        description="A reference to a Secret key holding the value (the Python client sends "
        "every value this way). Exactly one of value/valueFrom.",
    )

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value.startswith(RESERVED_ENV_PREFIX):
            raise ValueError(
                f"variable {value!r}: names starting with {RESERVED_ENV_PREFIX!r} are reserved "
                "for the worker's own plumbing; rename the variable"
            )
        return value

    @model_validator(mode="after")
    def _exactly_one_source(self) -> EnvVar:
        if (self.value is None) == (self.value_from is None):
            raise ValueError(
                f"variable {self.name!r} must set exactly one of 'value' or 'valueFrom'"
            )
        return self


class WorkerTemplate(_Model):
    """Optional overrides merged into every worker pod."""

    labels: Annotated[
        dict[str, str],
        Field(
            default_factory=dict,
            description=f"Extra pod labels (not under {RESERVED_KEY_PREFIX!r}: the operator's).",
        ),
        _no_reserved_keys("label"),
    ]
    annotations: Annotated[
        dict[str, str],
        Field(
            default_factory=dict,
            description="Extra pod annotations (not under "
            f"{RESERVED_KEY_PREFIX!r}: the operator's).",
        ),
        _no_reserved_keys("annotation"),
    ]
    resources: dict[str, Any] | None = Field(
        default=None, description="Worker container resources (requests/limits)."
    )
    node_selector: dict[str, str] = Field(default_factory=dict, description="Pod nodeSelector.")
    tolerations: list[dict[str, Any]] = Field(default_factory=list, description="Pod tolerations.")
    affinity: dict[str, Any] | None = Field(default=None, description="Pod affinity.")
    volumes: list[dict[str, Any]] = Field(default_factory=list, description="Extra pod volumes.")
    volume_mounts: list[dict[str, Any]] = Field(
        default_factory=list, description="Extra worker container volumeMounts."
    )
    service_account_name: str | None = Field(
        default=None,
        description="Pod service account (its token is still not mounted).",
    )
    security_context: dict[str, Any] | None = Field(
        default=None, description="Worker container securityContext."
    )
    pod_security_context: dict[str, Any] | None = Field(
        default=None, description="Pod-level securityContext."
    )
    priority_class_name: str | None = Field(default=None, description="Pod priorityClassName.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None, description="Worker image pull policy."
    )
    image_pull_secrets: list[dict[str, Any]] = Field(
        default_factory=list, description="Pod imagePullSecrets."
    )


#: ``spec.code.sha256``: the bundle's content hash as :func:`contract.bundle.digest` spells it.
CODE_SHA256_PATTERN = rf"^{HASH_PREFIX}[0-9a-f]{{64}}$"


def code_secret_name(job_name: str, index: int) -> str:
    """The Secret holding chunk ``index`` of a job's code bundle: ``<job>-code-<i>``, written
    by the client (owned by the job), mounted by cold workers, read by the operator for a
    warm claim."""
    return f"{job_name}-code-{index}"


def code_chunk_key(index: int) -> str:
    """The key of chunk ``index`` in its Secret, and its file name in the worker's code
    directory: ``chunk-000``, ``chunk-001``, ... (zero-padded: sorted by name is in order)."""
    return f"{CODE_CHUNK_PREFIX}{index:03d}"


class CodeBundle(_Model):
    """The job's code bundle (``contract.bundle``): its hash and how it is stored, never its
    content, which is in the Secrets ``<job>-code-0`` .. ``<job>-code-<chunks-1>``."""

    sha256: Annotated[
        str,
        Field(
            pattern=CODE_SHA256_PATTERN,
            description="'sha256:<64 lower-case hex>', the hash of the bundle's uncompressed "
            "archive; a worker refuses a bundle with another. Immutable.",
        ),
    ]
    chunks: JsonInt = Field(
        ge=1,
        le=MAX_CHUNKS,
        description=f"Number of Secrets holding the bundle, one chunk of at most "
        f"{SECRET_CHUNK_BYTES} bytes each: ceil(size / {SECRET_CHUNK_BYTES}).",
    )
    size: JsonInt = Field(
        ge=1,
        le=MAX_BUNDLE_BYTES,
        description=f"The compressed bundle's size in bytes (at most {MAX_BUNDLE_BYTES}).",
    )

    @model_validator(mode="after")
    def _chunks_hold_size(self) -> CodeBundle:
        expected = -(-self.size // SECRET_CHUNK_BYTES)
        if self.chunks != expected:
            raise ValueError(
                f"chunks must be the number of {SECRET_CHUNK_BYTES}-byte chunks the bundle's "
                f"size takes: {self.size} bytes is {expected} chunk(s), not {self.chunks}"
            )
        return self


def _unique_env_names(env: list[EnvVar]) -> list[EnvVar]:
    seen: set[str] = set()
    for item in env:
        if item.name in seen:
            raise ValueError(f"duplicate variable name {item.name!r}; each name may appear once")
        seen.add(item.name)
    return env


class ExecuteJobSpec(_Model):
    """What to run and with which environment."""

    replicas: JsonInt = Field(
        default=1, ge=1, le=MAX_REPLICAS, description="Number of input workers."
    )
    image: str = Field(
        min_length=1,
        description="Worker image; must contain the cerebras_appliance package. Immutable.",
    )
    entrypoint: Annotated[
        str,
        Field(
            min_length=1,
            description="'package.module:function' or a script path (*.py) inside the image. "
            "Immutable.",
            json_schema_extra={"pattern": NO_NUL_PATTERN},
        ),
        AfterValidator(_no_nul),
        AfterValidator(_check_entrypoint),
    ]
    args: list[ProcessText] = Field(
        default_factory=list,
        max_length=MAX_ARGS,
        description="Arguments: sys.argv[1:] for scripts, positional arguments for functions.",
    )
    env: Annotated[
        list[EnvVar],
        Field(
            default_factory=list,
            max_length=MAX_ENV_VARS,
            description="The tracked environment snapshot, in the order set. Immutable.",
        ),
        AfterValidator(_unique_env_names),
    ]
    template: WorkerTemplate = Field(
        default_factory=WorkerTemplate, description="Optional worker pod overrides."
    )
    backoff_limit: JsonInt = Field(
        default=0, ge=0, le=1000, description="Worker failures tolerated before the job fails."
    )
    active_deadline_seconds: PositiveSeconds | None = Field(
        default=None,
        description="Fail the job when it has run this long (at most 2147483647 s: 68 years).",
    )
    ttl_seconds_after_finished: Seconds | None = Field(
        default=None,
        description="Delete the job this long after it finished (at most 2147483647 s).",
    )
    suspend: StrictBool = Field(default=False, description="Remove the workers but keep the job.")
    pool: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_POOL_NAME_LENGTH,
        pattern=JOB_NAME_PATTERN,
        description="A WorkerPool in the job's namespace whose idle workers the job claims "
        "(the rest start cold; an unknown pool or another image: all start cold, with a "
        "condition saying why). Immutable.",
    )
    code: CodeBundle | None = Field(
        default=None,
        description="The user's code, shipped with the job (its working directory, modules, "
        "a function): the bundle's hash and size; its bytes are in Secrets the job owns, "
        "<job>-code-<i>. Immutable.",
    )


class Condition(_Model):
    """A metav1.Condition."""

    model_config = ConfigDict(extra="ignore")

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class ExecuteJobStatus(_Model):
    """Observed state, written by the operator (or the local backend)."""

    model_config = ConfigDict(extra="ignore")

    phase: Phase = "Pending"
    conditions: list[Condition] = Field(default_factory=list)
    replicas: int = 0
    ready_replicas: int = 0
    succeeded: int = 0
    failed: int = 0
    env_hash: str | None = None
    start_time: str | None = None
    completion_time: str | None = None
    observed_generation: int | None = None
    #: Indexes of the workers that succeeded, as ranges ("0-3,5"): never run again.
    completed_indexes: str = ""
    #: uids of terminated pods already counted in succeeded/failed whose tracking
    #: finalizer is still being removed (the operator's exactly-once bookkeeping).
    counted_pods: list[str] = Field(default_factory=list)

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    @property
    def finished(self) -> bool:
        return self.phase in TERMINAL_PHASES


def _checked_name(value: str | None, kind: str, limit: int) -> str | None:
    """``value`` if it is a valid name of a ``kind`` (job, pool), else ValueError saying why."""
    if value is not None and (len(value) > limit or not re.fullmatch(JOB_NAME_PATTERN, value)):
        raise ValueError(
            f"{value!r} is not a valid {kind} name: use at most {limit} lower-case letters, "
            "digits and '-', starting and ending with a letter or digit"
        )
    return value


class ObjectMeta(_Model):
    model_config = ConfigDict(extra="allow", alias_generator=to_camel, populate_by_name=True)

    name: str | None = None
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _job_name(cls, value: str | None) -> str | None:
        return _checked_name(value, "job", MAX_JOB_NAME_LENGTH)


class _Resource(_Model):
    """What both kinds share: the API version (``names.API_VERSION``, spelled as a type here;
    a unit test checks the two agree) and reading objects as the API server returns them."""

    model_config = ConfigDict(extra="ignore", alias_generator=to_camel, populate_by_name=True)

    api_version: Literal["appliance.dev/v1alpha1"] = "appliance.dev/v1alpha1"


class ExecuteJob(_Resource):
    kind: Literal["ExecuteJob"] = "ExecuteJob"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: ExecuteJobSpec
    status: ExecuteJobStatus | None = None

    def to_manifest(self) -> dict[str, Any]:
        """The object ``kubectl apply`` takes (no status)."""
        manifest = self.model_dump(
            mode="json", by_alias=True, exclude_none=True, exclude={"status"}
        )
        manifest["metadata"] = {k: v for k, v in manifest["metadata"].items() if v != {}}
        spec = manifest["spec"]
        template = {k: v for k, v in spec.pop("template").items() if v not in ({}, [])}
        if template:
            spec["template"] = template
        return manifest


# -- WorkerPool ------------------------------------------------------------------------

POOL_KIND = "WorkerPool"
POOL_PLURAL = "workerpools"
POOL_SINGULAR = "workerpool"
POOL_SHORT_NAMES = ["wp"]


class WorkerPoolSpec(_Model):
    """Warm workers kept idle for the jobs that name this pool."""

    image: str = Field(
        min_length=1,
        description="Worker image (must contain the cerebras_appliance package). A job "
        "claims from the pool only when its spec.image is this image.",
    )
    replicas: JsonInt = Field(
        default=1,
        ge=0,
        le=MAX_POOL_SIZE,
        description="How many idle workers to keep (the scale subresource's replicas).",
    )
    imports: list[
        Annotated[str, Field(min_length=1, max_length=253, pattern=MODULE_NAME_PATTERN)]
    ] = Field(
        default_factory=list,
        max_length=MAX_POOL_IMPORTS,
        description="Modules each worker imports while warming (e.g. numpy).",
    )
    startup_variables: list[
        Annotated[
            str, Field(min_length=1, max_length=MAX_ENV_NAME_LENGTH, pattern=ENV_NAME_PATTERN)
        ]
    ] = Field(
        default_factory=list,
        max_length=MAX_ENV_VARS,
        description="Variables the preloaded modules read at import: a job whose snapshot "
        "sets one of them to a new value re-executes its worker once, as for PYTHONPATH.",
    )
    template: WorkerTemplate = Field(
        default_factory=WorkerTemplate,
        description="Pod overrides of the pool's workers (a claimed worker keeps them).",
    )


class WorkerPoolStatus(_Model):
    """Observed state of the pool, written by the operator."""

    model_config = ConfigDict(extra="ignore")

    replicas: int = 0
    idle: int = 0
    starting: int = 0
    claimed: int = 0
    selector: str = ""
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None


class PoolMeta(ObjectMeta):
    @field_validator("name")
    @classmethod
    def _job_name(cls, value: str | None) -> str | None:
        return _checked_name(value, "pool", MAX_POOL_NAME_LENGTH)


class WorkerPool(_Resource):
    kind: Literal["WorkerPool"] = "WorkerPool"
    metadata: PoolMeta = Field(default_factory=PoolMeta)
    spec: WorkerPoolSpec
    status: WorkerPoolStatus | None = None


def parse_pool(manifest: dict[str, Any]) -> WorkerPool:
    """Validate a WorkerPool manifest; raise :class:`InvalidJobError` naming each bad field."""
    try:
        return WorkerPool.model_validate(manifest)
    except ValidationError as exc:
        raise InvalidJobError(format_validation_error(exc), kind=POOL_KIND) from None


def worker_name(job_name: str, index: int, attempt: int = 0) -> str:
    """Attempt ``attempt`` of worker ``index``: the same name on every backend
    (``<job>-worker-<i>`` first, ``<job>-worker-<i>-<a>`` for a replacement)."""
    base = f"{job_name}-worker-{index}"
    return base if attempt == 0 else f"{base}-{attempt}"


def _utf8_problem(text: str) -> str:
    """Why ``text`` cannot be encoded as UTF-8, or ``""``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        char = text[exc.start]
        if "\udc80" <= char <= "\udcff":
            return (
                f"position {exc.start} holds the undecodable byte 0x{ord(char) - 0xDC00:02x}, "
                "kept by surrogateescape"
            )
        return f"position {exc.start} holds the lone surrogate {char!r}"
    return ""


def env_from_snapshot(
    snapshot: Iterable[tuple[str, str]],
    *,
    secret_refs: dict[str, SecretKeySelector] | None = None,
) -> list[EnvVar]:
    """Turn ``(name, value)`` pairs into ``spec.env`` items, in order.

    Names in ``secret_refs`` become ``valueFrom.secretKeyRef`` items (their value is not
    placed in the object). Raises :class:`InvalidJobError` naming each variable whose name or
    value is not valid UTF-8 (e.g. a byte the shell passed that ``os.environ`` keeps as a
    surrogate escape): such a value could not be sent, inline or in a Secret.
    """
    refs = secret_refs or {}
    pairs = list(snapshot)
    unsendable = [
        f"env {name!r}: the {part} is not valid UTF-8 ({problem}); only UTF-8 text can be sent "
        "to the workers"
        for name, value in pairs
        for part, problem in (("name", _utf8_problem(name)), ("value", _utf8_problem(value)))
        if problem
    ]
    if unsendable:
        raise InvalidJobError(unsendable)
    items: list[EnvVar] = []
    for name, value in pairs:
        if name in refs:
            items.append(EnvVar(name=name, value_from=EnvVarSource(secret_key_ref=refs[name])))
        else:
            items.append(EnvVar(name=name, value=value))
    return items


def format_validation_error(error: ValidationError, prefix: str = "") -> list[str]:
    """Readable ``field.path: message`` lines, with camelCase field names as in YAML."""
    lines = []
    for item in error.errors():
        path = prefix
        for part in item["loc"]:
            if isinstance(part, int):
                path += f"[{part}]"
            else:
                path += ("." if path else "") + str(part)
        message = str(item["msg"]).removeprefix("Value error, ")
        lines.append(f"{path or '<root>'}: {message}")
    return lines


def parse_job(manifest: dict[str, Any]) -> ExecuteJob:
    """Validate a manifest; raise :class:`InvalidJobError` naming each bad field."""
    try:
        return ExecuteJob.model_validate(manifest)
    except ValidationError as exc:
        raise InvalidJobError(format_validation_error(exc)) from None
