"""The library's front door: load, check, compile (and, later in this module, run and verify).

Every function here takes paths and returns values or raises a :class:`~runner.errors.SandrunError`
holding *every* problem found across all the files, so callers (the CLI, CI integrations, tests)
never see half the story.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path

from runner.errors import InputError, Location, SandrunError, Violation
from runner.plan import Plan
from runner.policy.compiler import compile_plan, denial_error
from runner.policy.model import Policy, policy_from_document
from runner.source import Document, load_yaml_file

__all__ = ["MANIFEST_SUFFIXES", "expand_paths", "load_manifests", "load_policy", "compile_manifests"]

MANIFEST_SUFFIXES = (".yaml", ".yml")


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files as given; folders searched recursively for ``*.yaml``/``*.yml``, in a stable order."""
    found: list[Path] = []
    problems: list[Violation] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.suffix in MANIFEST_SUFFIXES and p.is_file()))
        elif path.is_file():
            found.append(path)
        else:
            problems.append(Violation("input.missing", "no such file or folder", Location(file=str(path))))
    if problems:
        raise InputError(violations=tuple(problems))
    if not found:
        raise InputError.one(
            "input.empty", "no manifests (*.yaml, *.yml) found in " + ", ".join(str(p) for p in paths)
        )
    return list(dict.fromkeys(found))


def _validated(path: Path, kind: str) -> tuple[Document | None, list[Violation]]:
    """Load and schema-check one file; problems are returned, not raised, to collect them all."""
    from runner.schema import validate

    try:
        document = load_yaml_file(path)
    except InputError as exc:
        return None, list(exc.violations)
    problems = validate(document, kind)  # type: ignore[arg-type]
    return (None if problems else document), problems


def load_manifests(paths: Iterable[Path]) -> tuple[list[Document], list[Violation]]:
    """Every manifest that loaded and validated, and the problems of those that did not."""
    documents: list[Document] = []
    problems: list[Violation] = []
    for path in expand_paths(paths):
        document, found = _validated(path, "manifest")
        problems.extend(found)
        if document is not None:
            documents.append(document)
    return documents, problems


def load_policy(path: Path, root: Path) -> Policy:
    document, problems = _validated(path, "policy")
    if document is None:
        raise InputError(violations=tuple(problems))
    return policy_from_document(document, root)


def compile_manifests(
    paths: Iterable[Path], policy_path: Path, *, root: Path | None = None, today: dt.date | None = None
) -> Plan:
    """Load, validate and compile; raise one error carrying every problem of every file.

    Invalid input (YAML, schema) makes it an :class:`InputError` (exit 2), otherwise policy denials
    make it a :class:`~runner.errors.PolicyDenied` (exit 3).
    """
    root = (root or Path.cwd()).resolve()
    problems: list[Violation] = []
    try:
        policy: Policy | None = load_policy(policy_path, root)
    except InputError as exc:
        policy = None
        problems.extend(exc.violations)
    documents, found = load_manifests(paths)
    problems.extend(found)
    if policy is not None:
        try:
            plan = compile_plan(documents, policy, root, today=today)
        except SandrunError as exc:
            problems.extend(exc.violations)
        else:
            if not problems:
                return plan
    problems.sort(key=lambda v: (v.location.file, v.location.line or 0) if v.location else ("", 0))
    raise denial_error(problems)
