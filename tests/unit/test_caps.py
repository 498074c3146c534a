"""Checks that would grow with the square of the input are indexed, done in one pass, or capped.

No test here measures time: each counts the work (calls, compilations) or checks the cap's rule id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner import hosts
from runner.hosts import CoverIndex, covers, parse_host_pattern
from runner.schema import MAX_PROBLEMS, _first_duplicate, validate
from runner.source import load_yaml_bytes

# -- network allow entries x policy entries ------------------------------------------------------

_POOL = [
    "*://*:*",
    "https://*",
    "*://*",
    "https://api.example.org",
    "https://example.org",
    "https://*.example.org",
    "https://*.api.example.org",
    "https://*.org:1..65535",
    "tcp://*.org:1..65535",
    "https://a.b.example.org",
    "https://x.api.example.org:443",
    "tcp://10.0.0.0/8:5000..5100",
    "tcp://10.1.0.0/16:5000",
    "tcp://10.1.2.3:5000",
    "tcp://0.0.0.0/0:1..65535",
    "tcp://[2001:db8::]/32:80",
    "tcp://[2001:db8:1::]/48:80",
    "tcp://[2001:db8::1]:80",
    "http://192.168.1.0/24",
    "http://192.168.1.7",
    "http://*.local:8080",
    "*://api.example.org",
]
PATTERNS = [parse_host_pattern(text) for text in _POOL]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(outers=st.lists(st.sampled_from(PATTERNS), max_size=8), inner=st.sampled_from(PATTERNS))
def test_the_index_answers_exactly_as_trying_every_pattern(outers: list[Any], inner: Any) -> None:
    assert CoverIndex(outers).covers(inner) == any(covers(outer, inner) for outer in outers)


def test_the_index_tries_only_the_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    outers = [parse_host_pattern(f"https://host{i}.example.org") for i in range(2000)]
    outers += [parse_host_pattern(f"tcp://10.{i // 256}.{i % 256}.0/24:80") for i in range(2000)]
    index = CoverIndex(outers)
    calls: list[int] = []
    real = hosts.covers
    monkeypatch.setattr(hosts, "covers", lambda outer, inner: calls.append(1) or real(outer, inner))
    assert index.covers(parse_host_pattern("https://host1999.example.org"))
    assert index.covers(parse_host_pattern("tcp://10.7.207.9:80"))
    assert not index.covers(parse_host_pattern("https://other.example.org"))
    assert len(calls) <= 3  # not 4000 per entry


# -- policy action patterns x tool actions --------------------------------------------------------


def test_action_patterns_compile_once_per_policy(tmp_path: Path) -> None:
    from runner.api import compile_manifests
    from runner.policy import compiler

    wasm = b"\0asm\x01\x00\x00\x00"
    (tmp_path / "t.wasm").write_bytes(wasm)
    import hashlib

    digest = hashlib.sha256(wasm).hexdigest()
    tools = {
        f"t{i}": {"module": "t.wasm", "sha256": digest, "actions": [f"tool.x{j}.y" for j in range(64)]}
        for i in range(50)
    }
    manifest = {
        "apiVersion": "sandrun/v1",
        "kind": "Manifest",
        "metadata": {"name": "m"},
        "tools": tools,
        "jobs": [{"name": "a", "tool": "t0"}],
    }
    (tmp_path / "m.yaml").write_text(json.dumps(manifest))
    allow = [f"tool.p{i}.*" for i in range(255)] + ["tool.*"]
    policy = {
        "apiVersion": "sandrun/v1",
        "kind": "Policy",
        "metadata": {"name": "p"},
        "fs": {"roots": ["."]},
        "actions": {"allow": allow, "deny": [f"tool.d{i}" for i in range(256)]},
    }
    (tmp_path / "p.yaml").write_text(json.dumps(policy))
    compiler._glob_matcher.cache_clear()
    plan = compile_manifests([tmp_path / "m.yaml"], tmp_path / "p.yaml", root=tmp_path)
    assert len(plan.tools) == 50
    assert compiler._glob_matcher.cache_info().misses == 2  # allow and deny: 3 200 actions, 2 regexes


# -- caps in the schema ---------------------------------------------------------------------------


def _manifest_with(job: dict[str, Any], **tool: Any) -> Any:
    data = {
        "apiVersion": "sandrun/v1",
        "kind": "Manifest",
        "metadata": {"name": "m"},
        "tools": {"t": {"module": "t.wasm", "sha256": "a" * 64, **tool}},
        "jobs": [{"name": "a", "tool": "t", **job}],
    }
    return load_yaml_bytes(json.dumps(data).encode(), "m.yaml")


@pytest.mark.parametrize(
    ("job", "tool", "pointer"),
    [
        ({"fs": [{"host": f"d{i}", "guest": f"/g{i}"} for i in range(65)]}, {}, "/jobs/0/fs"),
        ({"needs": [f"j{i}" for i in range(257)]}, {}, "/jobs/0/needs"),
        ({"network": {"allow": [f"https://h{i}.org" for i in range(257)]}}, {}, "/jobs/0/network/allow"),
        ({}, {"actions": [f"tool.a{i}" for i in range(65)]}, "/tools/t/actions"),
    ],
)
def test_lists_that_checks_pair_up_are_capped(
    job: dict[str, Any], tool: dict[str, Any], pointer: str
) -> None:
    problems = validate(_manifest_with(job, **tool), "manifest")
    assert [(v.rule_id, v.location.pointer if v.location else "") for v in problems] == [
        ("schema.max-items", pointer)
    ]
    assert "at most" in problems[0].message


def test_policy_lists_are_capped() -> None:
    policy = {
        "apiVersion": "sandrun/v1",
        "kind": "Policy",
        "metadata": {"name": "p"},
        "actions": {"allow": [f"a{i}" for i in range(257)]},
        "network": {"allow": [f"https://h{i}.org" for i in range(257)]},
    }
    problems = validate(load_yaml_bytes(json.dumps(policy).encode(), "p.yaml"), "policy")
    assert sorted(v.location.pointer for v in problems if v.location) == ["/actions/allow", "/network/allow"]
    assert {v.rule_id for v in problems} == {"schema.max-items"}


def test_uniqueness_is_one_pass_even_for_mappings(monkeypatch: pytest.MonkeyPatch) -> None:
    import jsonschema._utils

    def pairwise(_container: object) -> bool:
        raise AssertionError("jsonschema's pairwise uniq must not run")

    monkeypatch.setattr(jsonschema._utils, "uniq", pairwise)
    problems = validate(_manifest_with({"needs": [{"n": i} for i in range(5000)] + [{"n": 0}]}), "manifest")
    rules = {v.rule_id for v in problems}
    assert "schema.unique-items" in rules and "schema.max-items" in rules


@pytest.mark.parametrize(
    ("items", "duplicate"),
    [
        ([1, True], None),  # true is not 1 in JSON
        ([1, 1.0], 1.0),
        ([{"a": 1, "b": 2}, {"b": 2, "a": 1}], {"b": 2, "a": 1}),
        ([[1, [2]], [1, [2]]], [1, [2]]),
        (["a", "b"], None),
    ],
)
def test_first_duplicate_follows_json_equality(items: list[Any], duplicate: Any) -> None:
    assert _first_duplicate(items) == ((True, duplicate) if duplicate is not None else (False, None))


def test_schema_problems_are_capped_like_yaml_ones() -> None:
    data = {
        "apiVersion": "sandrun/v1",
        "kind": "Manifest",
        "metadata": {"name": "m"},
        "tools": {"t": {"module": "t.wasm", "sha256": "a" * 64}},
        "jobs": [{"name": f"j{i}", "tool": "t", "bogus": i} for i in range(500)],
    }
    problems = validate(load_yaml_bytes(json.dumps(data).encode(), "m.yaml"), "manifest")
    assert len(problems) == MAX_PROBLEMS + 1
    assert problems[-1].rule_id == "schema.max-problems"
    assert all(v.rule_id == "schema.unknown-field" for v in problems[:-1])
