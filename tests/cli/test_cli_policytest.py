"""`sandrun test`: policy unit tests, their exact matching, their output formats, broken test files."""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from pathlib import Path

from cli_process import REPO, sandrun
from cli_project import HELLO, make_project
from click.testing import CliRunner

from runner.cli import cli

HELLO_SHA = hashlib.sha256(HELLO.read_bytes()).hexdigest()

TEST_FILE = """\
apiVersion: sandrun/v1
kind: PolicyTest
metadata: {{name: lenient}}
policy: ../policies/lenient.yaml
root: ..
tests:
  - name: {name}
    manifests: [../manifests/hello.yaml]
    expect: allowed
  - name: greedy
    documents:
      - apiVersion: sandrun/v1
        kind: Manifest
        metadata: {{name: greedy}}
        tools:
          hello: {{module: ../tools/hello.wasm, sha256: {sha}}}
        jobs:
          - {{name: j, tool: hello, limits: {{memory: 1GiB}}}}
    expect: {expect}
"""


def _project(
    tmp_path: Path,
    *,
    name: str = "fits",
    expect: str = "{denied: [{rule: limits.max, path: /jobs/0/limits/memory}]}",
) -> Path:
    root = make_project(tmp_path)
    (root / "tests").mkdir()
    (root / "tests" / "lenient.test.yaml").write_text(
        TEST_FILE.format(name=name, sha=HELLO_SHA, expect=expect)
    )
    return root


def _invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_shipped_policy_tests_pass_as_a_subprocess() -> None:
    done = sandrun("test", str(REPO / "policies"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert " 0 failed" in done.stdout


def test_passing_file_exits_0(tmp_path: Path) -> None:
    root = _project(tmp_path)
    code, out, _ = _invoke("test", str(root / "tests"))
    assert (code, out.strip()) == (0, "2 passed, 0 failed (2 policy test(s))")


def test_a_missing_expected_denial_fails_with_the_line_of_the_case(tmp_path: Path) -> None:
    root = _project(tmp_path, expect="allowed")
    code, _, err = _invoke("test", str(root / "tests"))
    assert code == 1
    line = err.splitlines()[0]
    assert line.startswith(f"{root / 'tests' / 'lenient.test.yaml'}:10: [policytest.failed] lenient: greedy:")
    assert "expected allowed, got denied [limits.max] /jobs/0/limits/memory" in line


def test_denials_must_match_exactly_not_as_a_subset(tmp_path: Path) -> None:
    wrong_path = "{denied: [{rule: limits.max, path: /jobs/0/limits}]}"
    extra = (
        "{denied: [{rule: limits.max, path: /jobs/0/limits/memory}, {rule: fs.write-denied, path: /jobs/0}]}"
    )
    memory = "{rule: limits.max, path: /jobs/0/limits/memory}"
    twice = f"{{denied: [{memory}, {memory}]}}"
    for expect in (
        wrong_path,
        extra,
        twice,
        "{denied: [{rule: limits.invalid, path: /jobs/0/limits/memory}]}",
    ):
        root = _project(tmp_path / str(abs(hash(expect))), expect=expect)
        assert _invoke("test", str(root / "tests"))[0] == 1, expect


def test_an_expected_file_must_be_the_denied_one(tmp_path: Path) -> None:
    mine = "{denied: [{rule: limits.max, path: /jobs/0/limits/memory, file: lenient.test.yaml}]}"
    other = "{denied: [{rule: limits.max, path: /jobs/0/limits/memory, file: ../manifests/hello.yaml}]}"
    assert _invoke("test", str(_project(tmp_path / "a", expect=mine) / "tests"))[0] == 0
    assert _invoke("test", str(_project(tmp_path / "b", expect=other) / "tests"))[0] == 1


def test_github_format_is_one_neutralised_annotation_per_failure(tmp_path: Path) -> None:
    hostile = '"x\\n::warning file=evil::owned \\u202e ##[group]"'
    root = _project(tmp_path, name=hostile, expect="allowed")
    (root / "manifests" / "hello.yaml").write_text(
        (root / "manifests" / "hello.yaml").read_text().replace("32MiB", "2GiB")
    )
    code, out, _ = _invoke("test", str(root / "tests"), "--format", "github")
    assert code == 1
    annotations = [line for line in out.splitlines() if line.startswith("::")]
    assert len(annotations) == 2
    assert all(
        line.startswith("::error file=") and ",title=policytest.failed::" in line for line in annotations
    )
    assert "::warning" not in out and "##[" not in out and "\u202e" not in out


def test_junit_counts_failures_and_names_cases(tmp_path: Path) -> None:
    root = _project(tmp_path, expect="allowed")
    code, out, _ = _invoke("test", str(root / "tests"), "--format", "junit")
    assert code == 1
    suites = ET.fromstring(out)
    assert (suites.get("tests"), suites.get("failures")) == ("2", "1")
    failed = [c.get("name") for c in suites.iter("testcase") if c.find("failure") is not None]
    assert failed == ["greedy"]


def test_a_broken_test_file_is_invalid_input_with_its_line(tmp_path: Path) -> None:
    root = _project(tmp_path)
    path = root / "tests" / "lenient.test.yaml"
    path.write_text(path.read_text().replace("    expect: allowed", "    expect: allowd"))
    code, _, err = _invoke("test", str(root / "tests"))
    assert code == 2
    assert f"{path}:9:" in err and "/tests/0/expect" in err


def test_a_missing_policy_or_manifest_is_invalid_input(tmp_path: Path) -> None:
    root = _project(tmp_path)
    path = root / "tests" / "lenient.test.yaml"
    text = path.read_text()
    path.write_text(text.replace("policies/lenient.yaml", "policies/nope.yaml"))
    assert _invoke("test", str(root / "tests"))[0] == 2
    path.write_text(text.replace("manifests/hello.yaml", "manifests/nope.yaml"))
    code, _, err = _invoke("test", str(root / "tests"))
    assert code == 2 and "[input.missing]" in err and "/tests/0/manifests" in err


def test_no_test_files_is_invalid_input(tmp_path: Path) -> None:
    code, _, err = _invoke("test", str(tmp_path))
    assert code == 2 and "[policytest.none]" in err


def test_today_pins_the_day_key_expiry_is_judged_on(tmp_path: Path) -> None:
    expired = "\n".join(
        f"        - {{rule: signature.expired-key, path: /tools/{tool}/signature/key}}"
        for tool in ("wordcount", "report", "fail")
    )
    text = f"""\
apiVersion: sandrun/v1
kind: PolicyTest
metadata: {{name: expiry}}
policy: {REPO / "policies" / "ci-example.yaml"}
root: {REPO}
today: 2100-01-01
tests:
  - name: the examples key expired at the end of 2099
    manifests: [{REPO / "manifests" / "examples" / "docs-checks.yaml"}]
    expect:
      denied:
{expired}
"""
    (tmp_path / "expiry.test.yaml").write_text(text)
    assert _invoke("test", str(tmp_path))[0] == 0
    (tmp_path / "expiry.test.yaml").write_text(text.replace("2100-01-01", "2099-12-31"))
    code, _, err = _invoke("test", str(tmp_path))
    assert code == 1 and "got allowed" in err
