"""The manifest and policy schemas, their validation, and the jsonschema traps they must not fall into."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.errors import Violation
from runner.schema import (  # the fast path is checked against jsonschema
    SCHEMA_KINDS,
    SchemaKind,
    _as_draft_07,
    _fast_check,
    _plain_json,
    _validator,
    schema_text,
    validate,
)
from runner.source import Document, load_yaml_bytes
from runner.units import DURATION_PATTERN, SIZE_PATTERN

REPO = Path(__file__).resolve().parents[2]
HEX = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
SIG = "46X++tnIp20sI+EIM3LHtqGEfDVXs8rs8WsNFMpdoeiePflMVapNbTghPmk9SIp1nu1vQC9q3XiKmT4Y1iOcCw=="

FULL_MANIFEST: dict[str, Any] = {
    "apiVersion": "sandrun/v1",
    "kind": "Manifest",
    "metadata": {"name": "docs-checks", "description": "Lint the docs."},
    "tools": {
        "mdlint": {
            "module": "../tools/mdlint.wasm",
            "sha256": HEX,
            "version": "1.4.0",
            "signature": {"key": "release-2026", "sig": SIG},
            "actions": ["tool.fs.read"],
        },
        "convert": {"module": "builtin:convert"},
    },
    "jobs": [
        {
            "name": "lint-readme",
            "tool": "mdlint",
            "args": ["--strict", "/src/README.md"],
            "program_name": "mdlint",
            "invoke": None,
            "env": {"LANG": "C"},
            "stdin": "./input.txt",
            "fs": [{"host": "./docs", "guest": "/src", "mode": "ro"}, {"host": "./out", "guest": "/out"}],
            "network": {
                "allow": ["https://api.github.com", "https://*.example.org:8443"],
                "block": ["private", "203.0.113.0/24"],
            },
            "limits": {
                "fuel": 2000000000,
                "memory": "64MiB",
                "timeout": "30s",
                "stack": "1MiB",
                "output": 1024,
            },
            "needs": ["convert"],
            "expect": {"exit_code": 0},
        },
        {"name": "convert", "tool": "convert", "invoke": "run"},
    ],
}

FULL_POLICY: dict[str, Any] = {
    "apiVersion": "sandrun/v1",
    "kind": "Policy",
    "metadata": {"name": "ci", "description": "CI."},
    "signatures": {
        "required": True,
        "trusted_keys": [
            {
                "id": "release-2026",
                "public_key": "u0ArpydXjVcTF/PGplvPldoDy4g7sM1CHn/qP1UbbLQ=",
                "not_after": "2027-06-30",
            }
        ],
        "revoked": [HEX, "old-key"],
    },
    "limits": {
        "default": {
            "fuel": 1000000000,
            "memory": "64MiB",
            "timeout": "30s",
            "stack": "512KiB",
            "output": "1MiB",
        },
        "max": {
            "fuel": 20000000000,
            "memory": "512MiB",
            "timeout": "10m",
            "stack": "8MiB",
            "output": "16MiB",
        },
    },
    "fs": {"roots": ["./workspace", "./docs"], "write": True},
    "network": {
        "allow": ["https://*.github.com"],
        "block": ["private", "loopback", "link-local", "100.64.0.0/10"],
    },
    "actions": {"allow": ["tool.fs.*", "tool.sys.*"], "deny": ["tool.agent.*"]},
    "governance": {"max_score": 0.6},
}

FULL = {"manifest": FULL_MANIFEST, "policy": FULL_POLICY}


def _load(text: str) -> Document:
    return load_yaml_bytes(text.encode("utf-8"), "test.yaml")


def _document(data: dict[str, Any]) -> Document:
    """JSON is YAML: one field per line, strings quoted, numbers and booleans plain."""
    return _load(json.dumps(data, indent=1))


def _found(violations: list[Violation]) -> list[tuple[str, str]]:
    return [(v.rule_id, v.location.pointer if v.location else "") for v in violations]


def _token(node: Any, token: str) -> Any:
    """One JSON Pointer token (RFC 6901: ``~1`` is ``/``, ``~0`` is ``~``) as a key or an index."""
    return int(token) if isinstance(node, list) else token.replace("~1", "/").replace("~0", "~")


def _at(data: Any, pointer: str) -> Any:
    for token in pointer.split("/")[1:]:
        data = data[_token(data, token)]
    return data


def _set(data: dict[str, Any], pointer: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``data`` with ``pointer`` set (or removed when ``value`` is ``_REMOVE``)."""
    data = copy.deepcopy(data)
    parent, _, last = pointer.rpartition("/")
    node = _at(data, parent)
    if value is _REMOVE:
        del node[_token(node, last)]
    else:
        node[_token(node, last)] = value
    return data


_REMOVE = object()


def _check(kind: SchemaKind, pointer: str, value: Any) -> list[tuple[str, str]]:
    return _found(validate(_document(_set(FULL[kind], pointer, value)), kind))


# --- the shipped schemas ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", SCHEMA_KINDS)
def test_shipped_schema_is_valid_draft_2020_12(kind: SchemaKind) -> None:
    from jsonschema import Draft202012Validator

    schema = json.loads(schema_text(kind))
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://sandrun.dev/schema/v1/{kind}.json"
    assert schema_text(kind) == (REPO / "runner" / "schema" / f"{kind}.schema.json").read_text(
        encoding="utf-8"
    )


def test_unknown_schema_kind_is_refused() -> None:
    with pytest.raises(ValueError):
        schema_text("plan")  # type: ignore[arg-type]


def _subschemas(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            if key not in ("enum", "const", "required", "examples", "default"):
                yield from _subschemas(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _subschemas(value, f"{path}/{index}")


@pytest.mark.parametrize("kind", SCHEMA_KINDS)
def test_every_object_is_closed(kind: SchemaKind) -> None:
    for path, schema in _subschemas(json.loads(schema_text(kind))):
        if schema.get("type") == "object":
            closed = schema.get("additionalProperties")
            assert closed is False or (isinstance(closed, dict) and "propertyNames" in schema), path


@pytest.mark.parametrize("kind", SCHEMA_KINDS)
def test_every_pattern_is_anchored_at_both_ends(kind: SchemaKind) -> None:
    for path, schema in _subschemas(json.loads(schema_text(kind))):
        if "pattern" in schema and "/if/" not in path:  # the `if` tests a prefix on purpose
            assert schema["pattern"].startswith("^"), path
            assert schema["pattern"].endswith(r"(?![\s\S])"), path
            assert "$" not in schema["pattern"].replace("$defs", ""), path


@pytest.mark.parametrize("kind", SCHEMA_KINDS)
def test_size_and_duration_patterns_are_the_parsers_own(kind: SchemaKind) -> None:
    defs = json.loads(schema_text(kind))["$defs"]
    assert defs["size"]["pattern"] == SIZE_PATTERN
    assert defs["duration"]["pattern"] == DURATION_PATTERN


def test_definitions_shared_by_both_schemas_are_identical() -> None:
    manifest = json.loads(schema_text("manifest"))["$defs"]
    policy = json.loads(schema_text("policy"))["$defs"]
    shared = set(manifest) & set(policy)
    assert {
        "limits",
        "size",
        "duration",
        "network",
        "hostPattern",
        "blockEntry",
        "name",
        "metadata",
    } <= shared
    for name in shared:
        assert manifest[name] == policy[name], name


def test_importing_the_package_imports_neither_validator() -> None:
    code = "import sys, runner.schema; assert not {'jsonschema', 'fastjsonschema'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# --- valid documents --------------------------------------------------------------------------


MINIMAL_MANIFEST = """\
apiVersion: sandrun/v1
kind: Manifest
metadata: {name: m}
tools:
  t: {module: builtin:echo}
jobs:
  - {name: j, tool: t}
"""

MINIMAL_POLICY = """\
apiVersion: sandrun/v1
kind: Policy
metadata: {name: p}
"""


@pytest.mark.parametrize(("kind", "text"), [("manifest", MINIMAL_MANIFEST), ("policy", MINIMAL_POLICY)])
def test_minimal_documents_are_valid(kind: SchemaKind, text: str) -> None:
    assert validate(_load(text), kind) == []


@pytest.mark.parametrize("kind", SCHEMA_KINDS)
def test_full_documents_are_valid(kind: SchemaKind) -> None:
    assert validate(_document(FULL[kind]), kind) == []


@pytest.mark.parametrize(
    "path",
    sorted(
        str(p.relative_to(REPO))
        for p in [*REPO.glob("policies/*.yaml"), REPO / "tests/cases/_shared/policy.yaml"]
    ),
)
def test_shipped_policies_are_valid(path: str) -> None:
    document = load_yaml_bytes((REPO / path).read_bytes(), path)
    assert validate(document, "policy") == []


def test_policy_write_may_list_folders() -> None:
    assert _check("policy", "/fs/write", ["./sandrun-work"]) == []
    assert _check("policy", "/fs/write", "yes") == [("schema.type", "/fs/write")]


def test_builtin_module_needs_no_sha256_but_a_file_does() -> None:
    assert _check("manifest", "/tools/convert/sha256", HEX) == []
    assert _check("manifest", "/tools/mdlint/sha256", _REMOVE) == [
        ("schema.required", "/tools/mdlint/sha256")
    ]


def test_digests_are_hex_in_either_case_and_key_ids_never_look_like_one() -> None:
    """Upper case is a digest (read as lower case); a 64-hex key id would be ambiguous in revoked."""
    assert _check("manifest", "/tools/mdlint/sha256", HEX.upper()) == []
    assert _check("policy", "/signatures/revoked/0", HEX.upper()) == []
    assert _check("policy", "/signatures/trusted_keys/0/id", HEX) == [
        ("schema.pattern", "/signatures/trusted_keys/0/id")
    ]
    assert _check("policy", "/signatures/trusted_keys/0/id", HEX[:63]) == []


# --- bad values: rule id and pointer ----------------------------------------------------------


M = "manifest"
P = "policy"
J = "/jobs/0"


@pytest.mark.parametrize(
    ("kind", "pointer", "value", "rule"),
    [
        (M, "/apiVersion", "sandrun/v2", "schema.const"),
        (M, "/kind", "Policy", "schema.const"),
        (P, "/kind", "Manifest", "schema.const"),
        (M, "/metadata/name", "Bad_Name", "schema.pattern"),
        (M, "/metadata/name", "-x", "schema.pattern"),
        (M, "/metadata/name", "a" * 64, "schema.pattern"),
        (M, "/metadata/name", "docs\n", "schema.pattern"),  # `$` would let the newline through
        (M, "/metadata/name", 5, "schema.type"),
        (M, "/metadata/description", ["x"], "schema.type"),
        (M, "/tools/mdlint/module", "", "schema.pattern"),
        (M, "/tools/mdlint/module", "builtin:Bad Name", "schema.pattern"),
        (M, "/tools/mdlint/sha256", HEX[:-1] + "g", "schema.pattern"),
        (M, "/tools/mdlint/sha256", HEX[:-1], "schema.pattern"),
        (M, "/tools/mdlint/sha256", HEX + "\n", "schema.pattern"),
        (M, "/tools/mdlint/signature/key", "-bad", "schema.pattern"),
        (M, "/tools/mdlint/signature/key", HEX.upper(), "schema.pattern"),  # would read as a digest
        (M, "/tools/mdlint/signature/sig", SIG[:-3] + "B==", "schema.pattern"),  # not canonical base64
        (M, "/tools/mdlint/signature/sig", "A" + SIG, "schema.pattern"),
        (M, "/tools/mdlint/signature/sig", _REMOVE, "schema.required"),
        (M, "/tools/mdlint/actions", ["tool.fs.read", "tool.fs.read"], "schema.unique-items"),
        (M, "/tools/mdlint/actions/0", "Tool.Fs", "schema.pattern"),
        (M, "/tools/mdlint/actions/0", "tool..fs", "schema.pattern"),
        (M, "/tools/mdlint/version", 1.4, "schema.type"),
        (M, "/jobs", [], "schema.min-items"),
        (M, f"{J}/name", "Lint", "schema.pattern"),
        (M, f"{J}/tool", "Md Lint", "schema.pattern"),
        (M, f"{J}/args/0", 1, "schema.type"),
        (M, f"{J}/args/0", "a\u0000b", "schema.pattern"),
        (M, f"{J}/program_name", "", "schema.min-length"),
        (M, f"{J}/invoke", "", "schema.min-length"),
        (M, f"{J}/invoke", 3, "schema.type"),
        (M, f"{J}/env/LANG", 1, "schema.type"),
        (M, f"{J}/stdin", "", "schema.min-length"),
        (M, f"{J}/fs/0/guest", "src", "schema.pattern"),
        (M, f"{J}/fs/0/guest", "/a\u0000b", "schema.pattern"),
        (M, f"{J}/fs/0/mode", "rx", "schema.enum"),
        (M, f"{J}/fs/0/mode", "RO", "schema.enum"),
        (M, f"{J}/fs/0/host", _REMOVE, "schema.required"),
        (M, f"{J}/limits/fuel", 0, "schema.minimum"),
        (M, f"{J}/limits/fuel", -1, "schema.minimum"),
        (M, f"{J}/limits/fuel", 2**63, "schema.maximum"),
        (M, f"{J}/limits/fuel", 1.0, "schema.type"),
        (M, f"{J}/limits/fuel", True, "schema.type"),
        (M, f"{J}/limits/fuel", "1000", "schema.type"),
        (M, f"{J}/limits/memory", "64mib", "schema.format"),
        (M, f"{J}/limits/memory", "64 MiBs", "schema.format"),
        (M, f"{J}/limits/memory", "0", "schema.format"),
        (M, f"{J}/limits/memory", "2TiB", "schema.format"),
        (M, f"{J}/limits/memory", "64MiB\n", "schema.format"),
        (M, f"{J}/limits/memory", 0, "schema.minimum"),
        (M, f"{J}/limits/memory", 2**41, "schema.maximum"),
        (M, f"{J}/limits/memory", 1.5, "schema.type"),
        (M, f"{J}/limits/memory", True, "schema.type"),
        (M, f"{J}/limits/stack", "1.5B", "schema.format"),
        (M, f"{J}/limits/output", "-1KiB", "schema.format"),
        (M, f"{J}/limits/timeout", 30, "schema.type"),
        (M, f"{J}/limits/timeout", "30", "schema.format"),
        (M, f"{J}/limits/timeout", "1e3s", "schema.format"),
        (M, f"{J}/limits/timeout", "0s", "schema.format"),
        (M, f"{J}/needs", ["a", "a"], "schema.unique-items"),
        (M, f"{J}/needs/0", "Bad", "schema.pattern"),
        (M, f"{J}/expect/exit_code", 256, "schema.maximum"),
        (M, f"{J}/expect/exit_code", -1, "schema.minimum"),
        (M, f"{J}/expect/exit_code", "0", "schema.type"),
        (M, f"{J}/network/allow/0", "api.github.com/path", "schema.format"),
        (M, f"{J}/network/allow/0", "https://api.github.com/path", "schema.format"),
        (M, f"{J}/network/block/0", "10.0.0.0/33", "schema.format"),
        (M, f"{J}/network/block/0", "everything", "schema.format"),
        (M, f"{J}/network", [], "schema.type"),
        (M, f"{J}/name", _REMOVE, "schema.required"),
        (P, "/signatures/required", "yes", "schema.type"),
        (P, "/signatures/trusted_keys/0/id", "bad key", "schema.pattern"),
        (P, "/signatures/trusted_keys/0/public_key", "", "schema.min-length"),
        (P, "/signatures/trusted_keys/0/not_after", "2027-13-01", "schema.format"),
        (P, "/signatures/trusted_keys/0/not_after", "2027-6-30", "schema.format"),
        (P, "/signatures/trusted_keys/0/not_after", "2027-06-30\n", "schema.format"),
        (P, "/signatures/trusted_keys/0/not_after", "20270630", "schema.format"),  # fromisoformat takes it
        (P, "/signatures/trusted_keys/0/not_after", "2027-06-30T00:00", "schema.format"),
        (P, "/signatures/revoked/0", "not valid!", "schema.any-of"),
        (P, "/signatures/revoked/0", 5, "schema.type"),
        (P, "/signatures/revoked", [HEX, HEX], "schema.unique-items"),
        (P, "/limits/max/fuel", 1.0, "schema.type"),
        (P, "/limits/default/memory", "64 mb", "schema.format"),
        (P, "/fs/roots/0", 7, "schema.type"),
        (P, "/network/allow/0", "*", "schema.format"),
        (P, "/actions/allow/0", "tool.fs.[a]", "schema.pattern"),
        (P, "/actions/deny/0", "Tool.*", "schema.pattern"),
        (P, "/governance/max_score", 2.5, "schema.maximum"),
        (P, "/governance/max_score", -0.1, "schema.minimum"),
        (P, "/governance/max_score", True, "schema.type"),
        (P, "/governance/max_score", "0.5", "schema.type"),
        (P, "/metadata", _REMOVE, "schema.required"),
    ],
)
def test_bad_value_is_reported_with_its_rule_and_pointer(
    kind: SchemaKind, pointer: str, value: Any, rule: str
) -> None:
    assert _check(kind, pointer, value) == [(rule, pointer)]


def test_bad_key_of_a_map_is_located_at_the_key() -> None:
    data = _set(FULL_MANIFEST, f"{J}/env", {"LANG": "C", "1BAD": "x"})
    document = _document(data)
    [violation] = validate(document, "manifest")
    assert (violation.rule_id, violation.location) == ("schema.pattern", document.locate_key(f"{J}/env/1BAD"))
    tools = _set(FULL_MANIFEST, "/tools/Bad Tool", {"module": "builtin:x"})
    assert _found(validate(_document(tools), "manifest")) == [("schema.pattern", "/tools/Bad Tool")]


def test_missing_field_is_located_at_its_parent() -> None:
    document = _load(MINIMAL_MANIFEST.replace("{name: j, tool: t}", "{name: j}"))
    [violation] = validate(document, "manifest")
    assert violation.rule_id == "schema.required"
    assert violation.location is not None
    assert (violation.location.pointer, violation.location.line) == ("/jobs/0/tool", 7)


# --- the jsonschema traps ---------------------------------------------------------------------


def test_trap_float_that_is_a_whole_number_is_not_an_integer() -> None:
    document = _load(MINIMAL_MANIFEST.replace("tool: t}", "tool: t, limits: {fuel: 1.0}}"))
    assert _found(validate(document, "manifest")) == [("schema.type", "/jobs/0/limits/fuel")]


def test_trap_boolean_is_not_a_number() -> None:
    document = _load(MINIMAL_MANIFEST.replace("tool: t}", "tool: t, limits: {fuel: true}}"))
    assert _found(validate(document, "manifest")) == [("schema.type", "/jobs/0/limits/fuel")]


def test_trap_nan_does_not_pass_maximum() -> None:
    data = _set(FULL_POLICY, "/governance/max_score", math.nan)
    document = Document(
        path="p.yaml", data=data, sha256="0" * 64
    )  # YAML refuses .nan; Python callers may not
    assert _found(validate(document, "policy")) == [("schema.type", "/governance/max_score")]


def test_trap_format_is_asserted_not_just_annotated() -> None:
    assert _check("manifest", f"{J}/limits/stack", "1mib") == [("schema.format", f"{J}/limits/stack")]


def test_trap_trailing_newline_does_not_satisfy_a_pattern() -> None:
    document = _load(MINIMAL_MANIFEST.replace("{name: m}", '{name: "m\\n"}'))
    assert _found(validate(document, "manifest")) == [("schema.pattern", "/metadata/name")]


def test_trap_unquoted_number_where_text_is_expected_says_quote_it() -> None:
    document = _load(
        MINIMAL_MANIFEST.replace("{module: builtin:echo}", "{module: builtin:echo, version: 0777}")
    )
    [violation] = validate(document, "manifest")
    assert (violation.rule_id, violation.location and violation.location.line) == ("schema.type", 5)
    assert "quote" in violation.message
    quoted = _load(MINIMAL_MANIFEST.replace("{name: m}", "{name: m, description: [x]}"))
    assert "quote" not in validate(quoted, "manifest")[0].message  # a list is not fixed by quoting


def test_size_failing_pattern_and_format_is_reported_once() -> None:
    violations = validate(_document(_set(FULL_MANIFEST, f"{J}/limits/memory", "64 MiBs")), "manifest")
    assert len(violations) == 1 and "MiB" in violations[0].message


def test_any_of_is_collapsed_to_one_violation() -> None:
    violations = validate(_document(_set(FULL_POLICY, "/signatures/revoked/0", "not valid!")), "policy")
    assert _found(violations) == [("schema.any-of", "/signatures/revoked/0")]


# --- unknown fields ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "parent"),
    [
        (M, ""),
        (M, "/metadata"),
        (M, "/tools/mdlint"),
        (M, "/tools/mdlint/signature"),
        (M, J),
        (M, f"{J}/fs/0"),
        (M, f"{J}/network"),
        (M, f"{J}/limits"),
        (M, f"{J}/expect"),
        (P, ""),
        (P, "/metadata"),
        (P, "/signatures"),
        (P, "/signatures/trusted_keys/0"),
        (P, "/limits"),
        (P, "/limits/default"),
        (P, "/limits/max"),
        (P, "/fs"),
        (P, "/network"),
        (P, "/actions"),
        (P, "/governance"),
    ],
)
def test_unknown_field_is_refused_at_every_level(kind: SchemaKind, parent: str) -> None:
    document = _document(_set(FULL[kind], f"{parent}/bogus", 1))
    [violation] = validate(document, kind)
    assert violation.rule_id == "schema.unknown-field"
    assert violation.location == document.locate_key(f"{parent}/bogus")


def test_each_unknown_field_is_its_own_violation_with_a_suggestion() -> None:
    text = MINIMAL_MANIFEST.replace("{name: j, tool: t}", "{name: j, tool: t, limts: {}, nedds: []}")
    violations = validate(_load(text), "manifest")
    assert _found(violations) == [
        ("schema.unknown-field", "/jobs/0/limts"),
        ("schema.unknown-field", "/jobs/0/nedds"),
    ]
    assert "'limits'" in violations[0].message and "'needs'" in violations[1].message


# --- every error, sorted, no duplicates -------------------------------------------------------


def test_all_errors_are_reported_together_sorted_by_line() -> None:
    text = """\
apiVersion: sandrun/v2
kind: Manifest
metadata: {name: Bad}
tools:
  t: {module: ../t.wasm}
jobs:
  - name: j
    tool: t
    limits: {memory: 64mib, timeout: 30, fuel: 1.0}
    colour: blue
"""
    violations = validate(_load(text), "manifest")
    assert _found(violations) == [
        ("schema.const", "/apiVersion"),
        ("schema.pattern", "/metadata/name"),
        ("schema.required", "/tools/t/sha256"),
        ("schema.format", "/jobs/0/limits/memory"),
        ("schema.type", "/jobs/0/limits/timeout"),
        ("schema.type", "/jobs/0/limits/fuel"),
        ("schema.unknown-field", "/jobs/0/colour"),
    ]
    lines = [v.location.line or 0 for v in violations if v.location]
    assert lines == sorted(lines) and len(lines) == len(violations)
    assert all(v.location and v.location.file == "test.yaml" for v in violations)


def test_repeated_missing_fields_are_reported_once_each() -> None:
    violations = validate(_load("apiVersion: sandrun/v1\nkind: Manifest\n"), "manifest")
    assert _found(violations) == [("schema.required", f"/{name}") for name in ("jobs", "metadata", "tools")]


# --- the fast path (fastjsonschema) never accepts what jsonschema refuses ----------------------


def _pointers(node: Any, pointer: str = "") -> Iterator[str]:
    yield pointer
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in children:
        token = str(key).replace("~", "~0").replace("/", "~1")  # a drawn key may hold either
        yield from _pointers(value, f"{pointer}/{token}")


#: Values fastjsonschema or a careless fast check reads differently from jsonschema with Sandrun's
#: types and formats: whole floats are integers to it, NaN and Decimal numbers, tuples arrays;
#: "1" is not 1; `$` would let a trailing newline through; unknown fields hide one level down.
TRAPS: list[Any] = [
    1.0,
    0.0,
    2.0**63,
    True,
    False,
    "1",
    "",
    "x\n",
    "64MiB\n",
    "30s\n",
    HEX + "\n",
    "builtin:x\n",
    "2027-06-30\n",
    math.nan,
    math.inf,
    Decimal("0.5"),
    Decimal(1),
    ("x",),
    (),
    {"bogus": {"bogus": 1}},
    {"name": "x", "bogus": {}},
]

_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=True)
    | st.text(max_size=8)
    | st.sampled_from(["64MiB", "30s", "ro", "rw", "sandrun/v1", HEX, "https://a.b", "private", "/src", "x"])
    | st.sampled_from(TRAPS),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _assert_agrees(kind: SchemaKind, document: Any) -> None:
    fast, valid = _fast_check(kind)(document), _validator(kind).is_valid(document)
    assert valid or not fast, "accepted by the fast path, refused by jsonschema"  # it would skip jsonschema
    assert fast or not valid or not _plain_json(document), "refused by the fast path only"  # stays fast


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SCHEMA_KINDS), st.data())
def test_fast_path_agrees_with_jsonschema(kind: SchemaKind, data: st.DataObject) -> None:
    document = copy.deepcopy(FULL[kind])
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        pointer = data.draw(st.sampled_from(sorted(_pointers(document))[1:]))
        action = data.draw(st.sampled_from(["replace", "remove", "add"]))
        if action == "remove":
            document = _set(document, pointer, _REMOVE)
        elif action == "add" and isinstance(_at(document, pointer), dict):
            document = _set(
                document, f"{pointer}/{data.draw(st.text(max_size=6)).replace('/', '')}", data.draw(_JSON)
            )
        else:
            document = _set(document, pointer, data.draw(_JSON))
    _assert_agrees(kind, document)


@pytest.mark.parametrize("kind", SCHEMA_KINDS)
def test_fast_path_is_not_fooled_by_any_trap_anywhere(kind: SchemaKind) -> None:
    for pointer in sorted(_pointers(FULL[kind]))[1:]:
        for trap in TRAPS:
            _assert_agrees(kind, _set(FULL[kind], pointer, trap))
        if isinstance(_at(FULL[kind], pointer), dict):
            _assert_agrees(kind, _set(FULL[kind], f"{pointer}/bogus", {"bogus": 1}))


@pytest.mark.parametrize(
    ("kind", "pointer", "value"),
    [
        (M, f"{J}/limits/fuel", 1.0),  # fastjsonschema's Draft 7 reads 1.0 as an integer
        (M, f"{J}/limits/memory", 64.0),
        (P, "/governance/max_score", math.nan),  # NaN is a number to it, and passes min and max
        (P, "/governance/max_score", Decimal("0.5")),
        (M, f"{J}/args", ("--strict",)),  # a tuple is an array to it
        (M, f"{J}/program_name", ""),  # Draft 7 ignores minLength next to a $ref
    ],
)
def test_fast_path_closes_what_fastjsonschema_leaves_open(kind: SchemaKind, pointer: str, value: Any) -> None:
    document = _set(FULL[kind], pointer, value)
    assert not _fast_check(kind)(document)
    assert not _validator(kind).is_valid(document)


@pytest.mark.parametrize(("kind", "text"), [(M, MINIMAL_MANIFEST), (P, MINIMAL_POLICY), (M, None), (P, None)])
def test_fast_path_accepts_valid_documents(kind: SchemaKind, text: str | None) -> None:
    document = _load(text) if text else _document(FULL[kind])
    assert _fast_check(kind)(document.data)  # or every valid document would pay for jsonschema


def test_whole_float_where_a_number_is_allowed_is_left_to_jsonschema_and_valid() -> None:
    document = _set(FULL_POLICY, "/governance/max_score", 1.0)
    assert not _fast_check("policy")(document)
    assert validate(_document(document), "policy") == []


def test_validation_does_not_fill_in_defaults() -> None:
    data = copy.deepcopy(FULL_MANIFEST)  # its second mount has no `mode`; the schema's default is "ro"
    assert validate(Document(path="m.yaml", data=data, sha256="0" * 64), "manifest") == []
    assert data == FULL_MANIFEST


@pytest.mark.parametrize(
    "schema",
    [
        {"maxLength": 3},  # a keyword the schemas do not use
        {"properties": {"a": {"prefixItems": [{}]}}},  # 2020-12 only: Draft 7 would ignore it
        {"$defs": {"a": {"unevaluatedProperties": False}}},
        {"anyOf": [{"dependentRequired": {}}]},
        {"not": {"pattern": "^a$"}},  # fastjsonschema reads `$` as `\\Z`
        {"format": "email"},  # a format without Sandrun's parser
    ],
)
def test_fast_path_refuses_a_schema_it_would_read_differently(schema: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        _as_draft_07(schema)


def test_ref_next_to_other_keywords_keeps_them_for_draft_7() -> None:
    schema = {"$ref": "#/$defs/a", "title": "A", "minLength": 1, "allOf": [{"type": "string"}]}
    assert _as_draft_07(schema) == {
        "title": "A",
        "minLength": 1,
        "allOf": [{"$ref": "#/$defs/a"}, {"type": "string"}],
    }
    assert _as_draft_07({"$ref": "#/$defs/a", "title": "A"}) == {"$ref": "#/$defs/a", "title": "A"}


def test_bad_date_names_the_form_it_needs() -> None:
    violation = _check("policy", "/signatures/trusted_keys/0/not_after", "2027-13-01")
    assert violation == [("schema.format", "/signatures/trusted_keys/0/not_after")]
    document = _document(_set(FULL_POLICY, "/signatures/trusted_keys/0/not_after", "2027-13-01"))
    assert "YYYY-MM-DD" in validate(document, "policy")[0].message


def test_messages_name_what_is_expected() -> None:
    violations = validate(_document(_set(FULL_MANIFEST, "/tools/mdlint/sha256", "abc")), "manifest")
    assert "SHA-256" in violations[0].message
