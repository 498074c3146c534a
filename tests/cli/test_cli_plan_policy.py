"""A plan runs only under the policy the operator names (issue 9, item 4), through the real CLI.

The plan's author must never pick the policy: ``run plan.json`` needs ``--policy P`` and refuses a
plan compiled under anything but ``P``, or naming a policy outside the root; the policy that decided
is printed and logged.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cli_process import sandrun
from cli_project import make_project

from runner.canonical import canonical_json

LENIENT, STRICT = "policies/lenient.yaml", "policies/strict.yaml"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project whose manifest asks for 32 MiB: allowed by lenient.yaml (64), denied by strict.yaml (16)."""
    return make_project(tmp_path / "project", {LENIENT: "64MiB", STRICT: "16MiB"})


def run(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return sandrun("run", *args, "--out", "out", cwd=project)


def compile_plan(project: Path, policy: str, *extra: str) -> Path:
    result = sandrun("compile", "manifests", "--policy", policy, "-o", "plan.json", *extra, cwd=project)
    assert result.returncode == 0, result.stderr
    return project / "plan.json"


def records(project: Path, kind: str) -> list[dict[str, Any]]:
    lines = (project / "out" / "audit.jsonl").read_text().splitlines()
    return [r["data"] for r in map(json.loads, lines) if r["kind"] == kind]


def edit_plan(plan: Path, change: Any) -> None:
    """Rewrite the plan in canonical form after ``change(data)``: an edit no format check can see."""
    data = json.loads(plan.read_bytes())
    change(data)
    plan.write_bytes(canonical_json(data))


def test_a_lenient_plan_fails_under_the_strict_policy_the_operator_names(project: Path) -> None:
    compile_plan(project, LENIENT)
    result = run(project, "plan.json", "--policy", STRICT)
    assert result.returncode == 3, result.stderr
    assert "[plan.policy-mismatch]" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (project / "out" / "report.json").exists()
    (denied,) = records(project, "run.denied")
    assert denied["violations"][0]["rule_id"] == "plan.policy-mismatch"
    assert records(project, "run.sealed")
    assert sandrun("audit", "verify", "out", cwd=project).returncode == 0


def test_the_named_policy_decides_and_is_printed_and_logged(project: Path) -> None:
    compile_plan(project, LENIENT)
    result = run(project, "plan.json", "--policy", LENIENT)
    assert result.returncode == 0, result.stderr
    sha256 = json.loads((project / "plan.json").read_text())["policy"]["sha256"]
    assert f"policy (--policy): lenient ({LENIENT}, sha256 {sha256})" in result.stderr
    (record,) = records(project, "plan.compiled")
    assert record["operator_policy"] == {"path": LENIENT, "sha256": sha256}
    assert record["policy"]["path"] == LENIENT and record["policy"]["sha256"] == sha256


def test_without_policy_a_plan_does_not_run(project: Path) -> None:
    """Even a plan naming a policy inside the root: a pull request can add a lenient one there."""
    compile_plan(project, LENIENT)
    result = run(project, "plan.json")
    assert result.returncode == 2 and "[input.policy]" in result.stderr
    assert len(result.stderr.splitlines()) == 1 and not (project / "out").exists()


def test_manifests_run_under_policy_records_the_operator(project: Path) -> None:
    result = run(project, "manifests", "--policy", LENIENT)
    assert result.returncode == 0, result.stderr
    (record,) = records(project, "plan.compiled")
    assert record["operator_policy"]["path"] == LENIENT


def test_same_content_under_another_path_is_not_the_named_policy(project: Path) -> None:
    compile_plan(project, LENIENT)
    (project / "policies" / "copy.yaml").write_bytes((project / LENIENT).read_bytes())
    result = run(project, "plan.json", "--policy", "policies/copy.yaml")
    assert result.returncode == 3 and "[plan.policy-mismatch]" in result.stderr


def test_a_policy_changed_since_compile_is_refused(project: Path) -> None:
    compile_plan(project, LENIENT)
    (project / LENIENT).write_text((project / LENIENT).read_text().replace("64MiB", "65MiB"))
    result = run(project, "plan.json", "--policy", LENIENT)
    assert result.returncode == 3 and "[plan.policy-mismatch]" in result.stderr


@pytest.mark.parametrize("named_by_operator", [False, True], ids=["policy-inside", "same-policy"])
def test_a_plan_naming_a_policy_outside_the_root_is_refused(
    project: Path, tmp_path: Path, named_by_operator: bool
) -> None:
    outside = tmp_path / "outside.yaml"
    outside.write_bytes((project / LENIENT).read_bytes())
    compile_plan(project, str(outside))  # compiling under any policy is fine; running the plan is not
    assert json.loads((project / "plan.json").read_text())["policy"]["path"] == str(outside)
    result = run(project, "plan.json", "--policy", str(outside) if named_by_operator else LENIENT)
    assert result.returncode == 3 and "[plan.policy-outside-root]" in result.stderr, result.stderr
    assert not (project / "out" / "report.json").exists()


@pytest.mark.parametrize("path", ["../outside.yaml", "policies/escape.yaml"], ids=["dotdot", "symlink"])
def test_an_edited_plan_pointing_outside_the_root_is_refused(
    project: Path, tmp_path: Path, path: str
) -> None:
    compile_plan(project, LENIENT)
    (tmp_path / "outside.yaml").write_bytes((project / LENIENT).read_bytes())
    (project / "policies" / "escape.yaml").symlink_to(tmp_path / "outside.yaml")
    edit_plan(project / "plan.json", lambda data: data["policy"].update(path=path))
    result = run(project, "plan.json", "--policy", LENIENT)
    assert result.returncode == 3 and "[plan.policy-outside-root]" in result.stderr, result.stderr


def test_a_plan_edited_after_compile_is_refused(project: Path) -> None:
    plan = compile_plan(project, LENIENT)

    def more_memory(data: dict[str, Any]) -> None:
        data["jobs"][0]["limits"]["memory"] *= 2

    edit_plan(plan, more_memory)
    result = run(project, "plan.json", "--policy", LENIENT)
    assert result.returncode == 3 and "[plan.mismatch]" in result.stderr


def test_a_plan_relabelled_with_the_strict_policy_is_recompiled_under_it_and_denied(project: Path) -> None:
    """strict.yaml's path and digest copied into a lenient plan pass the policy check, not the recompile."""
    plan = compile_plan(project, LENIENT)
    sha256 = hashlib.sha256((project / STRICT).read_bytes()).hexdigest()
    edit_plan(plan, lambda data: data["policy"].update(path=STRICT, sha256=sha256, name="strict"))
    result = run(project, "plan.json", "--policy", STRICT)
    assert result.returncode == 3 and "[limits.max]" in result.stderr, result.stderr


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink"])
def test_a_plan_naming_a_host_file_as_its_manifest_never_reads_it(
    project: Path, tmp_path: Path, how: str
) -> None:
    # the recompile read any file the plan named and echoed its fields and values in error lines:
    # a pull request's plan.json could print the runner's own credentials into a public CI log
    secret = tmp_path / "hosts.yml"  # next to the project folder, so "../hosts.yml" from its root
    secret.write_text("apiVersion: sandrun/v1\nkind: Manifest\nmetadata: {name: gho_SECRET_TOKEN}\n")
    named = {"absolute": str(secret), "dotdot": "../hosts.yml", "symlink": "link.yaml"}[how]
    compile_plan(project, LENIENT)
    (project / "link.yaml").symlink_to(secret)
    edit_plan(project / "plan.json", lambda data: data.update(manifests=[named]))
    result = run(project, "plan.json", "--policy", LENIENT)
    assert result.returncode == 3 and "[plan.manifest-outside-root]" in result.stderr, result.stderr
    assert "gho_SECRET" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (project / "out" / "report.json").exists()


@pytest.mark.parametrize(
    "nested",
    ["[" * 100_000 + "]" * 100_000, '{"a":' * 100_000 + "1" + "}" * 100_000],
    ids=["arrays", "objects"],  # the value as the id: a 200 KB $PYTEST_CURRENT_TEST, too long to exec with
)
def test_a_plan_nested_past_the_parsers_stack_is_invalid_input_and_the_log_seals(
    project: Path, nested: str
) -> None:
    # json.loads raised RecursionError: an internal error (exit 70) that left the log unsealed, so
    # that every later run was refused until the operator repaired it
    (project / "plan.json").write_text(nested)
    result = run(project, "plan.json", "--policy", LENIENT)
    assert result.returncode == 2 and "[plan.invalid]" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    verified = sandrun("audit", "verify", "out/audit.jsonl", cwd=project)
    assert verified.returncode == 0 and verified.stdout.startswith("intact:"), verified.stdout


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        # a float where a string belongs: the dataclass took it, encoding it again raised
        (lambda data: data["tools"][0].update(signer=1.5), "plan.invalid"),
        (lambda data: data.update(manifests=["a" * 5000]), "input.read"),  # ENAMETOOLONG
        (lambda data: data.update(manifests=["manifests/\x00.yaml"]), "plan.manifest-outside-root"),
    ],
    ids=["float-for-string", "name-too-long", "nul-in-manifest"],
)
def test_odd_values_in_a_plan_end_in_one_line_and_a_sealed_log(project: Path, change: Any, rule: str) -> None:
    # each was an internal error (exit 70) found by fuzzing plan.json, and left the log unsealed
    plan = compile_plan(project, LENIENT)
    data = json.loads(plan.read_bytes())
    change(data)
    plan.write_text(json.dumps(data, sort_keys=True, separators=(",", ":")))  # floats too
    result = run(project, "plan.json", "--policy", LENIENT)
    assert result.returncode in (2, 3) and f"[{rule}]" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    verified = sandrun("audit", "verify", "out/audit.jsonl", cwd=project)
    assert verified.returncode == 0 and verified.stdout.startswith("intact:"), verified.stdout
