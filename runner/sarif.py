"""``sandrun check --format sarif``: the problems of a check as a SARIF 2.1.0 log (GitHub code scanning).

One run, one result per :class:`~runner.errors.Violation` (``ruleId``, level ``error``, the message
neutralised, the file as a URI relative to the root with the 1-based line and column when known,
the JSON Pointer as a logical location), and one ``reportingDescriptor`` per rule id that occurs,
documented from the rule registry (``runner.rules``) when it is there. The output is checked
against the official schema in the tests (``tests/data/sarif-schema-2.1.0.json``).
"""

from __future__ import annotations

import importlib
import json
import os
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runner import __version__
from runner.errors import Violation
from runner.textsafe import LINE_LIMIT, sanitize_text

__all__ = ["SARIF_SCHEMA", "sarif_log", "render_sarif", "rule_doc"]

SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
_ROOT_ID = "SRCROOT"


def rule_doc(rule_id: str) -> str | None:
    """The rule's one-line doc from the rule registry, when this build has one (``runner.rules``,
    with ``RULES[id].doc``); None otherwise, and the rule is described by its id alone."""
    try:
        rules = importlib.import_module("runner.rules")
    except ImportError:
        return None
    rule = getattr(rules, "RULES", {}).get(rule_id)
    doc = getattr(rule, "doc", None)
    return doc if isinstance(doc, str) else None


def _artifact(file: str, root: Path) -> dict[str, str]:
    """A file as SARIF wants it: relative to the root (``uriBaseId``) when inside it, else a file
    URI. Paths are only normalised, never resolved: a hostile name (a symlink loop) stays a name."""
    absolute = Path(os.path.abspath(file))
    if absolute.is_relative_to(root):
        # A name that is not UTF-8 (a repository's file, read with surrogateescape) is its bytes
        # percent-encoded, as as_uri() does for absolute ones; never an exception in the printer.
        relative = urllib.parse.quote(absolute.relative_to(root).as_posix(), errors="surrogateescape")
        return {"uri": relative, "uriBaseId": _ROOT_ID}
    return {"uri": absolute.as_uri()}


def _result(violation: Violation, rule_index: int, root: Path) -> dict[str, Any]:
    result: dict[str, Any] = {
        "ruleId": violation.rule_id,
        "ruleIndex": rule_index,
        "level": "error",
        "message": {"text": sanitize_text(violation.message, limit=LINE_LIMIT) or violation.rule_id},
    }
    location = violation.location
    if location is None:
        return result
    physical: dict[str, Any] = {"artifactLocation": _artifact(location.file, root)}
    if location.line is not None and location.line >= 1:
        region: dict[str, int] = {"startLine": location.line}
        if location.column is not None and location.column >= 1:
            region["startColumn"] = location.column
        physical["region"] = region
    entry: dict[str, Any] = {"physicalLocation": physical}
    if location.pointer:
        entry["logicalLocations"] = [
            {"fullyQualifiedName": sanitize_text(location.pointer, limit=LINE_LIMIT), "kind": "member"}
        ]
    result["locations"] = [entry]
    return result


def sarif_log(violations: Sequence[Violation], *, root: Path) -> dict[str, Any]:
    """The SARIF log of one check under ``root`` (an empty ``results`` list when it passed)."""
    root = Path(os.path.abspath(root))
    rule_ids = list(dict.fromkeys(v.rule_id for v in violations))
    rules = []
    for rule_id in rule_ids:
        doc = rule_doc(rule_id)
        rules.append(
            {
                "id": rule_id,
                "shortDescription": {"text": sanitize_text(doc or rule_id)},
                "defaultConfiguration": {"level": "error"},
            }
        )
    index = {rule_id: i for i, rule_id in enumerate(rule_ids)}
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "sandrun",
                        "version": __version__,
                        "rules": rules,
                    }
                },
                "originalUriBaseIds": {_ROOT_ID: {"uri": root.as_uri() + "/"}},
                "columnKind": "unicodeCodePoints",
                "results": [_result(v, index[v.rule_id], root) for v in violations],
            }
        ],
    }


def render_sarif(violations: Sequence[Violation], *, root: Path) -> str:
    """:func:`sarif_log` as JSON text, ASCII only (no control character reaches a log that shows it)."""
    return json.dumps(sarif_log(violations, root=root), indent=2, ensure_ascii=True) + "\n"
