"""The fast schema checks committed as code (``runner/schema/_fast_*.py``) are the shipped schemas'."""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

import fastjsonschema
import pytest

from runner.schema import SCHEMA_KINDS, _generated_check, fast_check_code, schema_text, validate
from runner.source import load_yaml_bytes

HERE = Path(__file__).resolve().parents[2] / "runner" / "schema"


@pytest.mark.parametrize("kind", SCHEMA_KINDS)
def test_the_committed_check_was_generated_from_the_shipped_schema(kind: str) -> None:
    module = importlib.import_module(f"runner.schema._fast_{kind}")
    digest = hashlib.sha256(schema_text(kind).encode("utf-8")).hexdigest()  # type: ignore[arg-type]
    assert digest == module.SCHEMA_SHA256, "schema changed: run `python -m runner.schema`"
    if module.VERSION == fastjsonschema.VERSION:  # another version generates other (equal) code
        committed = (HERE / f"_fast_{kind}.py").read_text(encoding="utf-8")
        assert committed == fast_check_code(kind), "stale: run `python -m runner.schema`"  # type: ignore[arg-type]
        assert _generated_check(kind) is module.CHECK  # type: ignore[arg-type]


def test_a_stale_committed_check_is_never_used(monkeypatch: pytest.MonkeyPatch) -> None:
    module = importlib.import_module("runner.schema._fast_manifest")
    monkeypatch.setattr(module, "SCHEMA_SHA256", "0" * 64)
    assert _generated_check("manifest") is None


@pytest.mark.parametrize("kind", SCHEMA_KINDS)
def test_the_committed_check_needs_nothing_of_fastjsonschema(kind: str) -> None:
    """Its own exceptions (``_fast_errors``): it runs as tested whichever fastjsonschema is installed,
    and a start does not pay for importing fastjsonschema's code generator."""
    committed = (HERE / f"_fast_{kind}.py").read_text(encoding="utf-8")
    assert "fastjsonschema import" not in committed and "import fastjsonschema" not in committed
    assert "from runner.schema._fast_errors import" in committed


def test_the_generated_check_still_refuses_what_the_schema_refuses() -> None:
    bad = b"apiVersion: sandrun/v1\nkind: Manifest\nmetadata: {name: x}\ntools: {}\njobs: [{name: 1}]\n"
    problems = validate(load_yaml_bytes(bad, "bad.yaml"), "manifest")
    assert problems and all(p.rule_id.startswith("schema.") for p in problems)


def test_a_check_generated_at_run_time_refuses_and_accepts_like_the_committed_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the committed code stale, the check is generated now; it raises fastjsonschema's own
    exceptions, which must read as "not valid" too (never escape as a traceback)."""
    from runner import schema

    module = importlib.import_module("runner.schema._fast_manifest")
    monkeypatch.setattr(module, "SCHEMA_SHA256", "0" * 64)
    schema._fast_check.cache_clear()
    try:
        check = schema._fast_check("manifest")
        bad = load_yaml_bytes(
            b"apiVersion: sandrun/v1\nkind: Manifest\nmetadata: {name: x}\ntools: {}\njobs: [{name: 1}]\n",
            "b.yaml",
        )
        good = load_yaml_bytes(
            b"apiVersion: sandrun/v1\nkind: Manifest\nmetadata: {name: x}\n"
            b"tools: {e: {module: 'builtin:echo'}}\njobs: [{name: a, tool: e}]\n",
            "g.yaml",
        )
        assert check(bad.data) is False
        assert validate(good, "manifest") == [] and check(good.data) is True
    finally:
        schema._fast_check.cache_clear()
