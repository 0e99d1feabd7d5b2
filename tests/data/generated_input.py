"""ExecuteJobs and WorkerPools generated from the CRDs' own OpenAPI schemas, then mutated.

Used by tests/integration/test_generated_input.py (sent to the real API server, with the
operator running) and tests/unit/contract/test_api.py (the client's side alone). Each object is
built in two steps:

1. **From the schema**: :func:`from_schema` walks the ``openAPIV3Schema`` of
   ``crds/<plural>.yaml`` (the subset a structural CRD schema uses: objects with properties,
   maps, arrays, strings with lengths, patterns and enums, integers with bounds, booleans,
   free-form objects) and draws a value the schema's types and bounds allow. Patterns are
   drawn with Python's regex semantics, so a ``$`` may take a trailing newline: the kind of
   gap between two regex engines the API server and the client could disagree on.
2. **Mutated**: zero to three edits at paths of the drawn object: a value replaced by a
   nasty one (:data:`NASTY`: boundary and huge numbers, numbers as text, booleans, NUL,
   odd unicode, over-long text, reserved names), a key removed, an unknown key added, a
   template label or annotation with one of the operator's own keys, a list grown past its
   ``maxItems``. The metadata.name is drawn valid or nasty the same way.

Not generated, on purpose (each is a legitimate difference the test does not assert on):

* ``status`` (a subresource: the API server drops it on create; the client parses it only
  from the server),
* ``null`` values (the API server prunes a null field, i.e. reads it as absent; the client
  never sends one: ``to_manifest`` drops them),
* lone surrogates (not JSON-encodable text: the client refuses them before building a job,
  ``env_from_snapshot``),
* metadata other than the name (the API server validates ObjectMeta itself; the models
  check only the name, which becomes part of pod names and labels).

A hypothesis seed is fixed (``derandomize=True``): the same objects on every run.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION = "appliance.dev", "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KINDS = {"ExecuteJob": "executejobs", "WorkerPool": "workerpools"}

#: Text any field may be set to: empty, NUL, control and odd unicode (bidi override, BOM,
#: line/paragraph separators, NEL, an emoji, a combining mark), '=', reserved prefixes,
#: trailing newlines after otherwise valid names, over-long names, paths and module names.
NASTY_TEXT = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "/mnt/\x00data",
    "\n",
    "name\n",
    "my_pkg.loader:main\n",
    "loader.py\x00",
    "\t",
    "\u202e",
    "\ufeff",
    "\u0085",
    "\u2028",
    "\U0001f600",
    "e\u0301",
    "é",
    "A=B",
    "=",
    "APPLIANCE_ENV_FILE",
    "APPLIANCE_",
    "UPPER",
    "-a",
    "a-",
    "a.b",
    "..",
    "/",
    "a.py",
    "a:b",
    "x" * 53,
    "x" * 254,
    "x" * 257,
    "é" * 300,
    "appliance.dev/job-name",
]
#: Numbers: around every bound the models declare, int32/int64 edges, 1e12 (defect 9), and
#: values that are not JSON integers (a fraction, a whole float, a huge float).
NASTY_NUMBERS: list[Any] = [
    0,
    1,
    -1,
    2,
    52,
    53,
    255,
    256,
    257,
    999,
    1000,
    1001,
    2**31 - 1,
    2**31,
    2**32,
    10**12,
    2**53 + 1,
    2**63 - 1,
    2**63,
    -(2**63),
    2**64,
    1.5,
    2.0,
    -0.0,
    1e308,
]
NASTY: list[Any] = [
    *NASTY_TEXT,
    *NASTY_NUMBERS,
    True,
    False,
    "2",
    "true",
    [],
    ["a"],
    {},
    {"a": "b"},
]
#: Label/annotation keys: the operator's own (refused), and near misses (accepted).
RESERVED_KEYS = [
    "appliance.dev/job-name",
    "appliance.dev/pool-state",
    "appliance.dev/pool-name",
    "appliance.dev/env-hash",
    "appliance.dev/",
    "app.kubernetes.io/managed-by",
]
NEAR_MISS_KEYS = [
    "x.appliance.dev/job-name",
    "appliance.devx/a",
    "app.kubernetes.io/name",
    "team",
    "Appliance.dev/job-name",
]
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

#: Text the schema-driven strings are drawn from: any code point UTF-8 can carry (NUL and
#: controls included), no surrogates.
TEXT = st.text(st.characters(codec="utf-8"), max_size=12)
_DNS = string.ascii_lowercase + string.digits
DNS_LABEL = st.builds(
    lambda first, rest: (first + rest).rstrip("-") or first,
    st.sampled_from(_DNS),
    st.text(_DNS + "-", max_size=10),
)
IDENTIFIER = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(string.ascii_letters + "_"),
    st.text(string.ascii_letters + string.digits + "_", max_size=6),
)
#: The CRDs' patterns, each drawn by a cheap strategy of strings it matches (st.from_regex,
#: the fallback for any other pattern, costs about a third of the generation time).
PATTERNS: dict[str, st.SearchStrategy[str]] = {
    r"^[^=\x00]+$": st.text(
        st.characters(codec="utf-8", exclude_characters="=\x00"), min_size=1, max_size=12
    ),
    r"^[^\x00]*$": st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12),
    r"^[-._a-zA-Z0-9]+$": st.text(
        string.ascii_letters + string.digits + "-._", min_size=1, max_size=12
    ),
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$": DNS_LABEL,
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$": st.lists(
        DNS_LABEL, min_size=1, max_size=3
    ).map(".".join),
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$": st.lists(
        IDENTIFIER, min_size=1, max_size=3
    ).map(".".join),
    # spec.code.sha256 (issue 23): a bundle's hash.
    r"^sha256:[0-9a-f]{64}$": st.text("0123456789abcdef", min_size=64, max_size=64).map(
        "sha256:".__add__
    ),
}


@functools.cache
def crd_schema(kind: str) -> dict[str, Any]:
    crd = yaml.safe_load((REPO / "crds" / f"{KINDS[kind]}.yaml").read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _json_leaf() -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.booleans(), st.integers(-5, 5), TEXT)


#: What a free-form field (x-kubernetes-preserve-unknown-fields) holds: small JSON.
FREE_FORM = st.recursive(
    _json_leaf(),
    lambda inner: st.one_of(st.lists(inner, max_size=2), st.dictionaries(TEXT, inner, max_size=2)),
    max_leaves=4,
)


#: Where a field's CEL rules make a schema-only draw almost always invalid, the draw is mixed
#: with values those rules accept (by path; ``[]`` is a list's item), so about half of the
#: objects get past admission and reach the operator.
ENTRYPOINTS = st.one_of(
    st.sampled_from(["my_pkg.loader:main", "loader.py", "/app/x", "a.b:c"]),
    st.builds(
        lambda module, function: f"{'.'.join(module)}:{function}",
        st.lists(IDENTIFIER, min_size=1, max_size=3),
        IDENTIFIER,
    ),
    TEXT.map(lambda s: s + ".py"),
)


def _hint(path: str, node: dict[str, Any]) -> st.SearchStrategy[Any] | None:
    if path == ".entrypoint":
        return st.one_of(ENTRYPOINTS, ENTRYPOINTS, _string(node))
    if path == ".env[]":
        value = from_schema(node["properties"]["value"], path + ".value")
        ref = from_schema(node["properties"]["valueFrom"], path + ".valueFrom")
        name = from_schema(node["properties"]["name"], path + ".name")
        return st.one_of(
            st.builds(lambda n, v: {"name": n, "value": v}, name, value),
            st.builds(lambda n, r: {"name": n, "valueFrom": r}, name, ref),
            _object(node, path),
        )
    return None


def from_schema(node: dict[str, Any], path: str = "") -> st.SearchStrategy[Any]:
    """A value the structural schema ``node`` (at ``path`` below the spec) allows by its types
    and bounds; its CEL rules are not read (the mutations, the regexes' own edges and
    :func:`_hint` reach them)."""
    hinted = _hint(path, node)
    if hinted is not None:
        return hinted
    if node.get("x-kubernetes-preserve-unknown-fields") and "properties" not in node:
        if node.get("type") == "object":
            return st.dictionaries(TEXT, FREE_FORM, max_size=2)
        return FREE_FORM
    if "enum" in node:
        return st.sampled_from(node["enum"])
    kind = node.get("type")
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        low, high = node.get("minimum", -(2**63)), node.get("maximum", 2**63 - 1)
        return st.one_of(st.integers(low, min(high, low + 5)), st.integers(low, high))
    if kind == "string":
        return _string(node)
    if kind == "array":
        most = min(node.get("maxItems", 4), 4)
        return st.lists(from_schema(node["items"], path + "[]"), max_size=most)
    if kind == "object" and "properties" in node:
        return _object(node, path)
    if kind == "object":
        values = from_schema(node.get("additionalProperties") or {"type": "string"}, path + "{}")
        keys = st.one_of(st.sampled_from(NEAR_MISS_KEYS), DNS_LABEL, TEXT)
        return st.dictionaries(keys, values, max_size=3)
    raise ValueError(f"no strategy for schema node {node!r}")


def _string(node: dict[str, Any]) -> st.SearchStrategy[str]:
    low, high = node.get("minLength", 0), node.get("maxLength")
    pattern = node.get("pattern")
    if pattern:
        # A pattern's strings, kept within the lengths most of the time.
        drawn = PATTERNS[pattern] if pattern in PATTERNS else st.from_regex(pattern, fullmatch=True)
        if high is not None:
            drawn = drawn.map(lambda s: s[:high])
        return drawn
    top = 24 if high is None else min(high, 24)
    return st.text(st.characters(codec="utf-8"), min_size=low, max_size=max(low, top))


def _object(node: dict[str, Any], path: str) -> st.SearchStrategy[dict[str, Any]]:
    required = set(node.get("required", []))
    fields = {
        name: from_schema(child, f"{path}.{name}") for name, child in node["properties"].items()
    }

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, strategy in fields.items():
            if name in required or draw(st.booleans()):
                out[name] = draw(strategy)
        return out

    return build()


# -- mutations ----------------------------------------------------------------------------


def _paths(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path in ``doc`` (dict keys and list indexes), the root included."""
    out = [path]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += _paths(value, (*path, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            out += _paths(value, (*path, index))
    return out


def _at(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        doc = doc[part]
    return doc


@st.composite
def _mutate(draw: st.DrawFn, spec: dict[str, Any]) -> dict[str, Any]:
    spec = copy.deepcopy(spec)
    path = draw(st.sampled_from(_paths(spec)))
    target = _at(spec, path)
    edits: list[str] = ["replace"] if path else []
    if isinstance(target, dict):
        edits += ["add-unknown", "reserved-key"]
        if target:
            edits.append("remove")
    if isinstance(target, list):
        edits.append("grow")
        if target:
            edits.append("duplicate")
    edits.append("template-key")
    edit = draw(st.sampled_from(edits))
    if edit == "replace":
        parent = _at(spec, path[:-1])
        parent[path[-1]] = copy.deepcopy(draw(st.sampled_from(NASTY)))
    elif edit == "add-unknown":
        target[draw(st.sampled_from(["replica", "valueFromm", "nodeSelectors", "x"]))] = 1
    elif edit == "reserved-key":
        target[draw(st.sampled_from(RESERVED_KEYS))] = "x"
    elif edit == "remove":
        del target[draw(st.sampled_from(sorted(target, key=str)))]
    elif edit == "grow":
        item = target[0] if target else draw(st.sampled_from(["a", {"name": "A", "value": "1"}]))
        target.extend(copy.deepcopy(item) for _ in range(draw(st.sampled_from([257, 1001]))))
    elif edit == "duplicate":
        target.append(copy.deepcopy(target[0]))
    else:  # a template label/annotation, the operator's own key or a near miss
        template = spec.setdefault("template", {})
        if not isinstance(template, dict):
            return spec
        part = draw(st.sampled_from(["labels", "annotations"]))
        keys = template.setdefault(part, {})
        if isinstance(keys, dict):
            keys[draw(st.sampled_from(RESERVED_KEYS + NEAR_MISS_KEYS))] = draw(
                st.sampled_from(["x", "", "\x00"])
            )
    return spec


NAMES = st.one_of(
    DNS_LABEL,
    st.sampled_from(["demo", "a", "x" * 52, "x" * 53, "demo\n", "Demo", "-demo", "de.mo", ""]),
)


@functools.cache
def _spec_strategy(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    return from_schema(crd_schema(kind)["properties"]["spec"])


@st.composite
def objects(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    """One generated ExecuteJob or WorkerPool (namespace left out)."""
    spec = draw(_spec_strategy(kind))
    for _ in range(draw(st.integers(0, 3))):
        spec = draw(_mutate(spec))
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": {"name": draw(NAMES)},
        "spec": spec,
    }


def generate(kind: str, count: int) -> list[dict[str, Any]]:
    """``count`` objects of ``kind`` at most (distinct; the same ones on every run)."""
    seen: dict[str, dict[str, Any]] = {}

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(objects(kind))
    def collect(obj: dict[str, Any]) -> None:
        seen.setdefault(json.dumps(obj, sort_keys=True), obj)

    collect()
    return list(seen.values())


#: ``"spec.env[0].name: ..."`` -> ``spec.env[0].name``: the field a refusal names.
FIELD = re.compile(r"\b(?:spec|metadata)(?:\.[A-Za-z]+|\[\d+\])*")


def fields_named(text: str) -> set[str]:
    return set(FIELD.findall(text))


Verdict = Callable[[dict[str, Any]], str | None]
