"""``sandrun run PLAN --shard`` through the real CLI (issue 14, item 1)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cli_process import sandrun
from shard_project import POLICY, make_shard_project


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_shard_project(tmp_path_factory.mktemp("shard") / "project")
    result = sandrun("compile", "manifests", "--policy", POLICY, "-o", "plan.json", cwd=root)
    assert result.returncode == 0, result.stderr
    return root


def records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]


def test_dry_run_prints_the_whole_partition_and_runs_nothing(project: Path) -> None:
    result = sandrun(
        "run", "plan.json", "--policy", POLICY, "--shard", "2/3", "--dry-run", "--out", "dry", cwd=project
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[2] == "shard 1/3: 3 job(s), load 3"
    assert lines[3:6] == ["  hello/a", "  hello/b", "  hello/g"]
    assert lines[6] == "shard 2/3: 2 job(s), load 2  <- this shard"
    assert lines[7:9] == ["  hello/d", "  hello/e"]  # the writer and the reader of data/ stay together
    assert not (project / "dry").exists()


def test_a_shard_runs_only_its_jobs_after_its_assignment_record(project: Path) -> None:
    result = sandrun("run", "plan.json", "--policy", POLICY, "--shard", "2/3", "--out", "s2", cwd=project)
    assert result.returncode == 0, result.stderr
    log = records(project / "s2")
    kinds = [r["kind"] for r in log]
    assert kinds[:3] == ["run.started", "plan.compiled", "shard.assigned"] and kinds[-1] == "run.sealed"
    plan_sha256 = log[1]["data"]["plan_sha256"]
    assigned = log[2]["data"]
    assert assigned["plan_sha256"] == plan_sha256 and (assigned["index"], assigned["total"]) == (2, 3)
    assert assigned["jobs"] == ["hello/d", "hello/e"]
    finished = [r["data"]["manifest"] + "/" + r["data"]["name"] for r in log if r["kind"] == "job.finished"]
    assert finished == ["hello/d", "hello/e"]
    report = json.loads((project / "s2" / "report.json").read_text())
    assert report["plan_sha256"] == plan_sha256 and [j["name"] for j in report["jobs"]] == ["d", "e"]


def test_auto_reads_the_kubernetes_index_and_refuses_when_it_cannot_tell(project: Path) -> None:
    env = {"JOB_COMPLETION_INDEX": "0", "SANDRUN_SHARD_TOTAL": "3"}
    ok = sandrun("run", "plan.json", "--policy", POLICY, "--shard", "auto", "--dry-run", cwd=project, env=env)
    assert ok.returncode == 0 and "shard 1/3: 3 job(s), load 3  <- this shard" in ok.stdout
    clean = {"JOB_COMPLETION_INDEX": "", "CI_NODE_INDEX": "", "CI_NODE_TOTAL": "", "SANDRUN_SHARD_TOTAL": ""}
    refused = sandrun("run", "plan.json", "--policy", POLICY, "--shard", "auto", cwd=project, env=clean)
    assert refused.returncode == 2 and "[shard.unknown]" in refused.stderr
    assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_durations_move_the_slow_jobs_apart(project: Path) -> None:
    slow = {
        "jobs": [{"manifest": "hello", "name": n, "wall_ms": 1000 if n in "cf" else 1} for n in "abcdefg"]
    }
    (project / "previous.json").write_text(json.dumps(slow))
    result = sandrun(
        "run",
        "plan.json",
        "--policy",
        POLICY,
        "--shard",
        "1/2",
        "--durations",
        "previous.json",
        "--dry-run",
        cwd=project,
    )
    assert result.returncode == 0, result.stderr
    assert "balanced by previous.json" in result.stdout
    # c and f (1000 ms each) go first, one to each shard; the rest fill in by weight
    assert "shard 1/2: 4 job(s), load 1003  <- this shard\n  hello/a\n  hello/b\n  hello/c\n" in result.stdout
    assert "shard 2/2: 3 job(s), load 1002\n  hello/d\n  hello/e\n  hello/f\n" in result.stdout


def test_a_durations_file_nested_too_deep_is_invalid_input(project: Path) -> None:
    """``--durations`` is often a report.json downloaded from an earlier CI run: nesting deeper
    than the parser recurses is ``shard.durations`` (exit 2), not an internal error."""
    (project / "deep.json").write_text('{"jobs":' + "[" * 100_000 + "]" * 100_000 + "}")
    result = sandrun(
        "run",
        "plan.json",
        "--policy",
        POLICY,
        "--shard",
        "1/2",
        "--durations",
        "deep.json",
        "--dry-run",
        cwd=project,
    )
    assert result.returncode == 2 and "[shard.durations]" in result.stderr, result.stderr
