"""The rule registry is the truth: every rule id used in ``runner/`` is in it, and the docs match it."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from runner import rules
from runner.errors import InputError, PolicyDenied, SandrunError, Violation, error_for
from runner.rules import RULES, Category

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "runner"
_RULE_ID = re.compile(r"[a-z][a-z0-9-]*(?:\.[a-z0-9-]+)+")
#: Calls whose first string argument (or second, after a document) is a rule id.
_RULE_CALLS = frozenset({"Violation", "one", "deny", "_report", "_fatal", "at"})


def _callee(node: ast.Call) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _rule_literals(tree: ast.AST) -> list[tuple[int, str]]:
    """Rule-id literals: first/second positional of a rule call, ``rule_id=`` keywords, and the
    strings a ``rule_id``/``rule`` variable is compared with or returned as a rule."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        args: list[ast.expr] = []
        if _callee(node) in _RULE_CALLS:
            args.extend(node.args[:2])
        args.extend(k.value for k in node.keywords if k.arg == "rule_id")
        for arg in args:
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and _RULE_ID.fullmatch(arg.value):
                found.append((arg.lineno, arg.value))
    return found


def test_every_rule_id_literal_in_the_package_is_registered() -> None:
    unregistered = []
    count = 0
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, rule_id in _rule_literals(ast.parse(path.read_text(encoding="utf-8"))):
            count += 1
            if rule_id not in RULES:
                unregistered.append(f"{path.relative_to(ROOT)}:{line}: {rule_id}")
    assert count > 80  # the scan does find the call sites
    assert not unregistered, "add these to runner/rules.py:\n" + "\n".join(unregistered)


def test_the_scan_catches_an_unregistered_id() -> None:
    source = 'raise InputError.one("input.brand-new", "x")\nViolation(rule_id="tool.nope", message="")'
    tree = ast.parse(source)
    assert [r for _, r in _rule_literals(tree)] == ["input.brand-new", "tool.nope"]


@pytest.mark.parametrize("what", ["tool.module", "fs", "stdin"])
@pytest.mark.parametrize("suffix", ["missing", "outside-root"])
def test_rule_ids_the_compiler_builds_from_parts_are_registered(what: str, suffix: str) -> None:
    assert f"{what}.{suffix}" in RULES  # _ManifestCompiler.resolve: f"{what}.{suffix}"


def test_every_schema_keyword_has_a_rule_of_its_own() -> None:
    from runner.schema import _rule_id

    keywords: set[str] = set()

    def walk(schema: object) -> None:
        if isinstance(schema, dict):
            for key, value in schema.items():
                keywords.add(key)
                if key in ("properties", "$defs"):
                    for sub in value.values():
                        walk(sub)
                elif key not in ("enum", "const", "examples", "default", "required"):
                    walk(value)
        elif isinstance(schema, list):
            for item in schema:
                walk(item)

    for kind in ("manifest", "policy"):
        walk(json.loads((PACKAGE / "schema" / f"{kind}.schema.json").read_text(encoding="utf-8")))
    structural = {"$defs", "$id", "$ref", "$schema", "description", "title", "examples", "default"}
    structural |= {"properties", "items", "if", "then", "else", "propertyNames", "additionalProperties"}
    for keyword in sorted(keywords - structural):
        assert _rule_id(keyword) != "schema.invalid", keyword


def _doc_table() -> str:
    text = (ROOT / "docs" / "policy.md").read_text(encoding="utf-8")
    return text.split("<!-- rules:begin -->\n", 1)[1].split("<!-- rules:end -->", 1)[0]


def test_docs_policy_lists_every_rule_and_no_stale_one() -> None:
    documented = set(re.findall(r"^\| `([^`]+)` \|", _doc_table(), re.MULTILINE))
    assert not RULES.keys() - documented, "undocumented; run `python -m runner.rules docs/policy.md`"
    assert not documented - RULES.keys(), "stale ids in docs/policy.md"
    assert _doc_table() == rules.markdown_table(), (
        "docs/policy.md differs; run `python -m runner.rules docs/policy.md`"
    )


def test_each_category_has_its_documented_exit_code() -> None:
    assert {c: c.exit_code for c in Category} == {
        Category.INVALID_INPUT: 2,
        Category.POLICY_DENIAL: 3,
        Category.AUDIT_FAILURE: 4,
        Category.JOB_FAILURE: 1,
    }
    assert all(rule.doc and "\n" not in rule.doc for rule in RULES.values())


def test_the_exit_code_comes_from_the_rule_not_the_exception_class() -> None:
    error = PolicyDenied.one("tool.module.missing", "gone")  # raised as a denial by mistake
    assert error.exit_code == 2
    assert InputError.one("tool.digest", "changed").exit_code == 3


def test_a_mix_takes_the_category_with_precedence() -> None:
    denial = Violation("tool.digest", "x")
    invalid = Violation("policy.key-invalid", "y")
    mixed = error_for([denial, invalid])
    assert isinstance(mixed, InputError) and mixed.exit_code == 2
    only = error_for([denial])
    assert isinstance(only, PolicyDenied) and only.exit_code == 3


def test_an_unregistered_rule_is_a_bug_not_a_guess() -> None:
    with pytest.raises(KeyError):
        SandrunError.one("schema.brand-new", "x").exit_code  # noqa: B018
