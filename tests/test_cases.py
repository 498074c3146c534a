"""Data-driven compiler cases: each ``tests/cases/<name>/`` holds one manifest and what it must yield.

``expected.yaml`` lists the exact exit code and every violation as (rule id, line, JSON Pointer); the
test fails on any missing or extra one, so a case pins both the reason and where it points. All
cases compile against ``tests/cases/_shared/policy.yaml`` with ``tests/cases`` as the root and a
fixed date (key expiry must not depend on the day the suite runs). Each case also runs through the
real CLI to prove that no input produces a traceback.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from runner.api import compile_manifests
from runner.cli import cli
from runner.errors import SandrunError

CASES = Path(__file__).parent / "cases"
POLICY = CASES / "_shared" / "policy.yaml"
TODAY = dt.date(2026, 11, 21)
NAMES = sorted(p.name for p in CASES.iterdir() if p.is_dir() and not p.name.startswith("_"))


def _policy(case: Path) -> Path:
    """A case may bring its own policy; otherwise the shared one."""
    own = case / "policy.yaml"
    return own if own.exists() else POLICY


def _expected(case: Path) -> dict:
    return yaml.safe_load((case / "expected.yaml").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", NAMES)
def test_case_yields_exactly_the_expected_violations(name: str) -> None:
    case = CASES / name
    expected = _expected(case)
    if expected["exit_code"] == 0:
        plan = compile_manifests([case / "manifest.yaml"], _policy(case), root=CASES, today=TODAY)
        assert [job.name for job in plan.jobs] == expected["jobs"]
        return
    with pytest.raises(SandrunError) as caught:
        compile_manifests([case / "manifest.yaml"], _policy(case), root=CASES, today=TODAY)
    error = caught.value
    got = sorted(
        (v.rule_id, v.location.line if v.location else None, v.location.pointer if v.location else None)
        for v in error.violations
    )
    want = sorted((v["rule"], v["line"], v["pointer"]) for v in expected["violations"])
    assert got == want
    assert error.exit_code == expected["exit_code"]
    for violation in error.violations:
        assert violation.location is not None
        assert violation.location.file.endswith(f"{name}/manifest.yaml")


@pytest.mark.parametrize("name", NAMES)
def test_case_through_the_cli_prints_one_line_per_problem_and_no_traceback(name: str) -> None:
    case = CASES / name
    expected = _expected(case)
    result = CliRunner().invoke(
        cli, ["check", str(case / "manifest.yaml"), "--policy", str(_policy(case)), "--root", str(CASES)]
    )
    assert "Traceback" not in result.output
    assert result.exit_code == expected["exit_code"], result.output
    if expected["exit_code"] == 0:
        return
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == len(expected["violations"])
    for line in lines:
        assert "manifest.yaml:" in line and "] " in line
