"""SARIF for ``check``: hostile names and messages still give a log the official schema accepts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import pytest

from runner.errors import Location, Violation
from runner.sarif import render_sarif

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "data" / "sarif-schema-2.1.0.json").read_text())


def test_hostile_files_messages_and_locations_stay_valid_and_neutralised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    os.symlink("loop", tmp_path / "loop")  # a symlink loop: named, never resolved
    violations = [
        Violation(
            "schema.type", "bad\r\n::error::forged \x1b[31m\u202e", Location("a b/%x#?.yaml", 3, 5, "/jobs/0")
        ),
        Violation("yaml.syntax", "no line", Location("loop/x.yaml")),
        Violation("input.empty", "no location"),
        Violation("schema.type", "outside", Location("/etc/passwd", 0, 0)),
    ]
    log = json.loads(render_sarif(violations, root=tmp_path))
    jsonschema.Draft4Validator(SCHEMA).validate(log)
    run = log["runs"][0]
    assert [r["id"] for r in run["tool"]["driver"]["rules"]] == ["schema.type", "yaml.syntax", "input.empty"]
    first, second, third, fourth = run["results"]
    assert first["locations"][0]["physicalLocation"] == {
        "artifactLocation": {"uri": "a%20b/%25x%23%3F.yaml", "uriBaseId": "SRCROOT"},
        "region": {"startLine": 3, "startColumn": 5},
    }
    assert "\r" not in first["message"]["text"] and "::" not in first["message"]["text"]
    assert "\x1b" not in first["message"]["text"] and "\u202e" not in first["message"]["text"]
    assert second["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "loop/x.yaml"
    assert "locations" not in third and third["ruleIndex"] == 2
    assert fourth["locations"][0]["physicalLocation"] == {"artifactLocation": {"uri": "file:///etc/passwd"}}
