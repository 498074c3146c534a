"""Policy unit tests kept beside the policies (``sandrun test``), in the spirit of ``opa test``.

A test file (``*.test.yaml``, ``kind: PolicyTest``) names one policy and a list of cases; each case
gives manifests (files, or documents written inline) and the outcome the policy must produce:
``allowed``, or ``denied`` with the *exact* set of rule ids and field paths. A policy edit that
lets something new through, or refuses something it used to allow, fails a test in review instead
of surprising a CI run. Cases compile exactly as ``sandrun check`` does (same loader, schema and
compiler); nothing runs.

Inline documents keep their place in the test file: a denial in one is reported at the test
file's line, and paths in it are relative to the test file's folder.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from runner.errors import InputError, Location, SandrunError, Violation
from runner.source import Document, load_yaml_file
from runner.textsafe import sanitize_text

__all__ = [
    "TEST_SUFFIXES",
    "CaseResult",
    "discover",
    "run_file",
    "run_paths",
    "render_junit",
    "failure_violation",
]

TEST_SUFFIXES = (".test.yaml", ".test.yml")

Outcome = Literal["passed", "failed"]
#: A denial as a test states it and as the compiler reports it: (rule id, JSON Pointer, file).
Denial = tuple[str, str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class CaseResult:
    """One case's verdict; ``expected``/``actual`` are sorted denials (empty = allowed)."""

    file: str
    suite: str
    name: str
    line: int | None
    outcome: Outcome
    expected: tuple[Denial, ...]
    actual: tuple[Denial, ...]

    @property
    def message(self) -> str:
        if self.outcome == "passed":
            return "passed"
        return f"expected {_shown(self.expected)}, got {_shown(self.actual)}"


def _shown(denials: Sequence[Denial]) -> str:
    if not denials:
        return "allowed"
    return "denied " + ", ".join(
        f"[{rule}] {path or '/'}" + (f" ({Path(file).name})" if file else "") for rule, path, file in denials
    )


def discover(paths: Iterable[Path]) -> list[Path]:
    """Test files as given, and every ``*.test.yaml``/``*.test.yml`` below the folders given."""
    found: list[Path] = []
    problems: list[Violation] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.name.endswith(TEST_SUFFIXES) and p.is_file()))
        elif path.is_file():
            found.append(path)
        else:
            problems.append(Violation("input.missing", "no such file or folder", Location(file=str(path))))
    if problems:
        raise InputError(violations=tuple(problems))
    if not found:
        shown = ", ".join(str(p) for p in paths)
        raise InputError.one("policytest.none", f"no policy tests (*.test.yaml) found in {shown}")
    return list(dict.fromkeys(found))


def _validated(document: Document, kind: str) -> list[Violation]:
    from runner.schema import validate

    return validate(document, kind)  # type: ignore[arg-type]


def inline_document(test: Document, pointer: str) -> Document:
    """The mapping at ``pointer`` of the test file as a document of its own that keeps its lines.

    Its pointers are re-rooted (``/tests/0/documents/1/jobs/0`` becomes ``/jobs/0``) so denials
    name the field as in a manifest file, while the location still points into the test file.
    """
    data: dict[str, Any] = test.data
    for token in pointer.strip("/").split("/"):
        data = data[int(token)] if isinstance(data, list) else data[token]

    def rerooted(spans: Any) -> dict[str, tuple[int, int]]:
        return {
            key[len(pointer) :]: span
            for key, span in spans.items()
            if key == pointer or key.startswith(pointer + "/")
        }

    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return Document(
        path=test.path,
        data=data,
        sha256=hashlib.sha256(canonical.encode("utf-8")).hexdigest(),
        spans=rerooted(test.spans),
        key_spans=rerooted(test.key_spans),
        plain=frozenset(p[len(pointer) :] for p in test.plain if p.startswith(pointer + "/")),
    )


def _same_file(a: str, b: str) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def _load_test(path: Path) -> Document:
    document = load_yaml_file(path)
    problems = _validated(document, "policytest")
    if problems:
        raise InputError(violations=tuple(problems))
    return document


def run_file(path: Path) -> list[CaseResult]:
    """Run every case of one test file; a broken test file or policy is an :class:`InputError`."""
    from runner.api import load_manifests, load_policy
    from runner.policy.compiler import compile_plan

    test = _load_test(path)
    here = path.resolve().parent
    data = test.data
    root = (here / data.get("root", ".")).resolve()
    policy = load_policy(here / data["policy"], root)
    today = dt.date.fromisoformat(data["today"]) if "today" in data else None
    results: list[CaseResult] = []
    for index, case in enumerate(data["tests"]):
        pointer = f"/tests/{index}"
        problems: list[Violation] = []
        documents: list[Document] = []
        files = [here / text for text in case.get("manifests", [])]
        if files:
            try:
                loaded, problems = load_manifests(files)
            except InputError as exc:  # a missing manifest file is the test's own mistake
                raise InputError(
                    violations=tuple(
                        Violation(v.rule_id, v.message, test.locate(pointer + "/manifests"))
                        for v in exc.violations
                    )
                ) from None
            documents.extend(loaded)
        for number in range(len(case.get("documents", []))):
            inline = inline_document(test, f"{pointer}/documents/{number}")
            found = _validated(inline, "manifest")
            problems.extend(found)
            if not found:
                documents.append(inline)
        if documents:
            try:
                compile_plan(documents, policy, root, today=today)
            except SandrunError as exc:
                problems.extend(exc.violations)
        actual = tuple(sorted(_denial(v) for v in problems))
        expected = _expected(case["expect"], here)
        results.append(
            CaseResult(
                file=str(path),
                suite=data["metadata"]["name"],
                name=case["name"],
                line=test.locate(pointer).line,
                outcome="passed" if _matches(expected, actual) else "failed",
                expected=expected,
                actual=actual,
            )
        )
    return results


def _denial(violation: Violation) -> Denial:
    location = violation.location
    if location is None:
        return (violation.rule_id, "", "")
    return (violation.rule_id, location.pointer, location.file)


def _expected(expect: Any, here: Path) -> tuple[Denial, ...]:
    if expect == "allowed":
        return ()
    return tuple(
        sorted(
            (entry["rule"], entry["path"], str(here / entry["file"]) if "file" in entry else "")
            for entry in expect["denied"]
        )
    )


def _matches(expected: tuple[Denial, ...], actual: tuple[Denial, ...]) -> bool:
    """Exactly the same denials, counted: an expected entry without ``file`` matches any file."""
    if len(expected) != len(actual):
        return False
    left = Counter((rule, path) for rule, path, _ in actual)
    if left != Counter((rule, path) for rule, path, _ in expected):
        return False
    unmatched = list(actual)
    for rule, path, file in sorted(expected, key=lambda d: d[2] == ""):  # files first, then wildcards
        for candidate in unmatched:
            if candidate[:2] == (rule, path) and (not file or _same_file(file, candidate[2])):
                unmatched.remove(candidate)
                break
        else:
            return False
    return True


def run_paths(paths: Iterable[Path]) -> list[CaseResult]:
    """Every case of every test file found; all broken test files are reported together."""
    results: list[CaseResult] = []
    problems: list[Violation] = []
    for path in discover(paths):
        try:
            results.extend(run_file(path))
        except InputError as exc:
            problems.extend(exc.violations)
    if problems:
        raise InputError(violations=tuple(problems))
    return results


def failure_violation(result: CaseResult) -> Violation:
    """A failed case as a problem line (``FILE:LINE: [policytest.failed] …``, or a GitHub annotation)."""
    return Violation(
        "policytest.failed",
        f"{result.suite}: {result.name}: {result.message}",
        Location(result.file, result.line, None, ""),
    )


def render_junit(results: Sequence[CaseResult]) -> str:
    """One ``<testsuite>`` per test file, one ``<testcase>`` per case; a failure names both sides."""
    suites: dict[str, list[CaseResult]] = {}
    for result in results:
        suites.setdefault(result.file, []).append(result)

    def totals(element: ET.Element, members: Sequence[CaseResult]) -> None:
        element.set("tests", str(len(members)))
        element.set("failures", str(sum(r.outcome == "failed" for r in members)))
        element.set("errors", "0")
        element.set("skipped", "0")

    root = ET.Element("testsuites", name="sandrun policy tests")
    totals(root, results)
    for file, members in suites.items():
        suite = ET.SubElement(root, "testsuite", name=sanitize_text(members[0].suite, limit=200))
        suite.set("file", sanitize_text(file, limit=500))
        totals(suite, members)
        for result in members:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=sanitize_text(result.suite, limit=200),
                name=sanitize_text(result.name, limit=200),
            )
            if result.outcome == "failed":
                failure = ET.SubElement(case, "failure", message=sanitize_text(result.message), type="policy")
                failure.text = sanitize_text(result.message, limit=4000)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
