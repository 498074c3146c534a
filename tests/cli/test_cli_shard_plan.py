"""What every shard checks of the plan it is given (issue 14): the whole of it, cheaply.

``sandrun run plan.json --shard I/N`` reads the plan without rebuilding it: the file's bytes are
compared with the canonical encoding of a fresh compile of its manifests under the operator's
policy, and the plan that runs (and that is partitioned) is that compile's. So a plan tampered in
a job that another shard runs is refused by this shard too, and by the merge; a plan damaged
anywhere is still invalid input (exit 2) before any policy denial.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cli_process import sandrun
from shard_project import KEY, POLICY, PUB, make_shard_project, run_shard

from runner.canonical import canonical_json
from runner.plan import Plan
from runner.shard import partition


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = make_shard_project(tmp_path / "project")
    assert sandrun("compile", "manifests", "--policy", POLICY, "-o", "plan.json", cwd=root).returncode == 0
    return root


def edit_plan(project: Path, job: str, change: Any) -> None:
    """Change one job of the plan and write it back in canonical form: no format check can see it."""
    plan = project / "plan.json"
    data = json.loads(plan.read_bytes())
    (target,) = [j for j in data["jobs"] if j["id"] == job]
    change(target)
    plan.write_bytes(canonical_json(data) + b"\n")


def one_line(result: Any, code: int, rule: str) -> None:
    assert result.returncode == code, result.stderr
    assert f"[{rule}]" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_plan_tampered_in_another_shards_job_is_refused_by_every_shard_and_by_the_merge(
    project: Path,
) -> None:
    """The job is moved to another command line in shard 3's part of the plan: shard 1, which will
    not run it, refuses the plan as well as shard 3 (each checks the whole plan, not its part), and
    the merge of what they left refuses too, naming shard 1."""
    split = partition(Plan.from_dict(json.loads((project / "plan.json").read_bytes())), 3)
    theirs = split.shards[2][0]
    edit_plan(project, theirs, lambda job: job.update(args=["--tampered"]))
    for index in (1, 2, 3):
        one_line(run_shard(project, f"{index}/3", f"s{index}"), 3, "plan.mismatch")
        lines = (project / f"s{index}" / "audit.jsonl").read_text().splitlines()
        assert [json.loads(line)["kind"] for line in lines] == ["run.started", "run.denied", "run.sealed"]
    merged = sandrun(
        "audit", "merge", "s1", "s2", "s3", "--plan", "plan.json", "--out", "merged", "--pub", PUB,
        "--signing-key", KEY, cwd=project,
    )  # fmt: skip
    one_line(merged, 4, "merge.foreign")  # a refused run has no assignment: not a shard's log
    assert "shard s1" in merged.stderr
    assert not (project / "merged" / "report.json").exists()


DAMAGE = {
    "a job's mount leaves the root": lambda job: job.update(
        mounts=[{"host": "/etc", "guest": "/d", "mode": "ro"}]
    ),
    "a job's memory is negative": lambda job: job["limits"].update(memory=-1),
    "a job lost a field": lambda job: job.pop("module_sha256"),
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
@pytest.mark.parametrize("policy", [POLICY, "policies/other.yaml"], ids=["same-policy", "other-policy"])
def test_a_plan_invalid_in_a_job_another_shard_runs_is_invalid_input_first(
    project: Path, damage: Any, policy: str
) -> None:
    """Invalid anywhere is exit 2 (``plan.invalid``) for every shard, before the policy mismatch
    (exit 3) the other policy would give: the fast path reads no job, the refusal reads them all."""
    (project / "policies" / "other.yaml").write_text(
        (project / POLICY).read_text().replace("lenient", "other")
    )
    edit_plan(project, "hello/g", damage)  # the last job: only one shard of three runs it
    for index in (1, 3):
        result = sandrun(
            "run", "plan.json", "--policy", policy, "--shard", f"{index}/3", "--out", f"s{index}", cwd=project
        )
        one_line(result, 2, "plan.invalid")


@pytest.mark.parametrize(
    "text",
    [b"{", b"[]", b'{"policy": 1, "manifests": []}', b'{"policy": {}, "manifests": "x"}'],
    ids=["truncated", "not-an-object", "policy-not-an-object", "claims-wrong"],
)
def test_a_plan_that_is_not_one_is_invalid_input(project: Path, text: bytes) -> None:
    (project / "plan.json").write_bytes(text)
    one_line(run_shard(project, "1/2", "out"), 2, "plan.invalid")


def test_a_plan_not_in_canonical_form_is_invalid_input(project: Path) -> None:
    plan = project / "plan.json"
    plan.write_bytes(json.dumps(json.loads(plan.read_bytes()), indent=1).encode())
    result = run_shard(project, "2/2", "out")
    one_line(result, 2, "plan.invalid")
    assert "canonical form" in result.stderr


def test_the_plan_that_runs_is_the_plan_file_and_is_hashed_from_its_bytes(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``verified_plan`` returns the fresh compile, equal to the file rebuilt field by field, with
    the file's digest; it encodes the plan once (the compile's) and rebuilds nothing from JSON."""
    from runner import api

    path = project / "plan.json"
    expected = Plan.from_dict(json.loads(path.read_bytes()))
    rebuilt, encoded = [], []
    real_from_dict, real_to_json = Plan.from_dict.__func__, Plan.to_json  # type: ignore[attr-defined]
    monkeypatch.setattr(
        Plan, "from_dict", classmethod(lambda cls, d: rebuilt.append(d) or real_from_dict(cls, d))
    )
    monkeypatch.setattr(Plan, "to_json", lambda self: encoded.append(self) or real_to_json(self))
    plan = api.verified_plan(path, project / POLICY, root=project)
    assert rebuilt == [] and len(encoded) == 1
    assert plan == expected and plan.to_dict() == expected.to_dict()
    assert api.plan_sha256(plan) == hashlib.sha256(path.read_bytes().rstrip(b"\n")).hexdigest()


HOSTILE = {
    "policy path not a string": lambda plan: plan["policy"].update(path=1),
    "policy path with a NUL": lambda plan: plan["policy"].update(path="policies/\x00lenient.yaml"),
    "a mount host not a string": lambda plan: plan["jobs"][3]["mounts"][0].update(host=1),
    "a job not an object": lambda plan: plan["jobs"].__setitem__(6, ["hello", "g"]),
    "a tool's module not a string": lambda plan: plan["tools"][0].update(module=1),
}


@pytest.mark.parametrize("change", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_plan_is_invalid_input_and_its_log_is_sealed(project: Path, change: Any) -> None:
    """Values of the wrong type where the plan's claims or a job's fields are read: one line, exit
    2, and the refused run's log sealed (before, some were an internal error leaving it unsealed)."""
    plan = project / "plan.json"
    data = json.loads(plan.read_bytes())
    change(data)
    plan.write_bytes(canonical_json(data))
    one_line(run_shard(project, "1/3", "out"), 2, "plan.invalid")
    kinds = [json.loads(line)["kind"] for line in (project / "out" / "audit.jsonl").read_text().splitlines()]
    assert kinds == ["run.started", "run.denied", "run.sealed"]


def test_a_plan_naming_a_policy_in_a_symlink_loop_is_refused(project: Path) -> None:
    """The policy path is resolved before anything else of the plan is checked: a loop there is a
    denial naming the field, not an internal error leaving the log unsealed (before this change too)."""
    (project / "policies" / "loop1").symlink_to("loop2")
    (project / "policies" / "loop2").symlink_to("loop1")
    plan = project / "plan.json"
    data = json.loads(plan.read_bytes())
    data["policy"]["path"] = "policies/loop1"
    plan.write_bytes(canonical_json(data))
    one_line(run_shard(project, "1/3", "out"), 3, "plan.policy-outside-root")
    kinds = [json.loads(line)["kind"] for line in (project / "out" / "audit.jsonl").read_text().splitlines()]
    assert kinds == ["run.started", "run.denied", "run.sealed"]
