"""The suite passes whatever the date and whichever dependency versions the bounds allow.

It broke on 2028-01-01 (a test key's ``not_after`` was 2027-12-31 and the CLI tests use today's date),
and with PyYAML 6.0.4, whose libyaml stops deep nesting under a rule of its own. There is no faketime
here: ``tests/clock/sitecustomize.py`` moves ``datetime.datetime.now()`` to ``SANDRUN_TEST_TODAY``
in the suite's process and every subprocess it starts.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import runner.source
from runner.errors import InputError
from runner.source import MAX_DEPTH, load_yaml_bytes

REPO = Path(__file__).resolve().parents[1]
CLOCK = REPO / "tests" / "clock"
FAR_FUTURE = dt.date(2099, 12, 31)
_NOT_AFTER = re.compile(r"not_after:\s*(\d{4}-\d{2}-\d{2})")


def _at(day: str) -> dict[str, str]:
    """The environment of a process whose calendar says ``day``."""
    path = os.pathsep.join(filter(None, [str(CLOCK), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "SANDRUN_TEST_TODAY": day, "CI": "true"}


def _sandrun(day: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=REPO,
        env=_at(day),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_test_keys_are_expired_on_purpose_or_trusted_until_2099() -> None:
    """A key that expires within the suite's life turns it red on that day."""
    for path in [*REPO.glob("policies/*.yaml"), *REPO.glob("tests/cases/*/policy.yaml")]:
        for day in _NOT_AFTER.findall(path.read_text(encoding="utf-8")):
            expiry = dt.date.fromisoformat(day)
            assert expiry.year < 2026 or expiry >= FAR_FUTURE, f"{path.relative_to(REPO)}: not_after {day}"


def test_the_faked_calendar_reaches_the_cli() -> None:
    """The proof below means something only if the fake moves the CLI's 'today': past 2099 it must deny."""
    args = ("check", "manifests/examples", "--policy", "policies/ci-example.yaml")
    assert _sandrun("2031-01-01", *args).returncode == 0
    late = _sandrun("2100-01-01", *args)
    assert late.returncode == 3 and "[signature.expired-key]" in late.stdout + late.stderr


def test_date_sensitive_tests_pass_in_2031() -> None:
    """The CLI tests, the data-driven cases and the compiler's, run with the calendar at 2031-01-01."""
    targets = ["tests/cli", "tests/test_cases.py", "tests/unit/test_compiler.py"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *targets],
        cwd=REPO,
        env=_at("2031-01-01"),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout


# --- YAML nesting: one rule id, whatever libyaml says ----------------------------------------------


@pytest.fixture(params=["libyaml", "pure"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "libyaml" and not yaml.__with_libyaml__:
        pytest.skip("PyYAML was built without libyaml")
    monkeypatch.setattr(
        runner.source, "_EventSource", yaml.CBaseLoader if request.param == "libyaml" else yaml.BaseLoader
    )
    yield request.param


@pytest.mark.parametrize("opening", ["[", "{a: ", "- "])
def test_nesting_far_too_deep_is_yaml_depth_with_either_parser(parser: str, opening: str) -> None:
    """PyYAML 6.0.4's libyaml refuses 1000+ flow levels itself; that is still ``yaml.depth``."""
    text = (
        "a: " + opening * 5000 if opening != "- " else "a:\n" + "".join("  " * i + "- \n" for i in range(300))
    )
    with pytest.raises(InputError) as caught:
        load_yaml_bytes(text.encode(), "deep.yaml")
    assert [v.rule_id for v in caught.value.violations] == ["yaml.depth"]
    assert caught.value.violations[0].message == f"nested deeper than {MAX_DEPTH} levels"


class _LibyamlLimit:
    """An event source that stops as a libyaml with a nesting limit does, in whatever words it uses."""

    problem = "exceeded maximum nesting depth"

    def __init__(self, text: str) -> None:
        self.text = text

    def get_event(self) -> None:
        mark = yaml.Mark("deep.yaml", 0, 0, 1002, None, None)
        raise yaml.parser.ParserError("while increasing flow level", mark, self.problem, mark)

    def dispose(self) -> None:
        pass


@pytest.mark.parametrize(
    "problem", ["exceeded maximum nesting depth", "maximum nesting level exceeded", "too deep: depth > 1000"]
)
def test_libyaml_nesting_limit_is_yaml_depth_in_any_wording(
    problem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_LibyamlLimit, "problem", problem)
    monkeypatch.setattr(runner.source, "_EventSource", _LibyamlLimit)
    with pytest.raises(InputError) as caught:
        load_yaml_bytes(b"a: [[[", "deep.yaml")
    (violation,) = caught.value.violations
    assert violation.rule_id == "yaml.depth" and violation.location is not None
    assert (violation.location.line, violation.location.column) == (1, 1003)


def test_other_syntax_errors_stay_yaml_syntax(parser: str) -> None:
    with pytest.raises(InputError) as caught:
        load_yaml_bytes(b"a: [1, 2\nb: }\n", "bad.yaml")
    assert {v.rule_id for v in caught.value.violations} == {"yaml.syntax"}
