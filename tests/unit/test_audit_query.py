"""Answers from the log alone: filters, and report.json rebuilt from the records."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import pytest

from runner.audit import AuditLog, read_records, results_from_log, select
from runner.errors import AuditError
from runner.results import JobResult, Status


def _result(i: int, status: Status) -> JobResult:
    return JobResult(
        manifest="m.yaml",
        name=f"job-{i}",
        tool="t",
        module_sha256=hashlib.sha256(b"t").hexdigest(),
        status=status,
        exit_code=0 if status == "passed" else None,
        trap=None if status == "passed" else "out_of_fuel",
        fuel_used=100 * i,
        memory_peak=65536,
        wall_ms=i,
        stdout_sha256=hashlib.sha256(b"o").hexdigest(),
        stderr_sha256=hashlib.sha256(b"").hexdigest(),
        stdout_truncated=i == 2,
        reason=None if status == "passed" else "out of fuel",
    )


def _run(folder: Path, run: str, statuses: list[Status]) -> dict[str, Any]:
    """A run like api.run logs it; returns the report.json the run itself would write."""
    results = [_result(i, s) for i, s in enumerate(statuses)]
    with AuditLog.open(folder, run_id=run) as log:
        log.append("run.started", {})
        log.append(
            "plan.compiled",
            {
                "plan_sha256": "cd" * 32,
                "policy": {"name": "ci", "sha256": "ef" * 32, "git_commit": "0" * 40},
                "jobs": [r.id for r in results],
            },
        )
        for i in range(len(results)):
            log.append("job.started", {"job": results[i].id, "index": i})
        for i in reversed(range(len(results))):  # finished out of plan order, as a thread pool does
            log.append("job.finished", {**results[i].to_dict(), "index": i, "outcome": {"extra": "kept"}})
        log.seal(None)
    return {
        "run": run,
        "plan_sha256": "cd" * 32,
        "policy": "ci",
        "ok": all(s == "passed" for s in statuses),
        "jobs": [r.to_dict() for r in results],
    }


def test_report_json_is_rebuilt_from_the_log_alone(tmp_path: Path) -> None:
    first = _run(tmp_path, "r1", ["passed", "passed"])
    second = _run(tmp_path, "r2", ["passed", "failed", "passed"])
    records = read_records(tmp_path / "audit.jsonl")
    assert results_from_log(records) == second
    assert results_from_log(records, "r1") == first
    assert second["ok"] is False and first["ok"] is True
    assert [j["name"] for j in second["jobs"]] == ["job-0", "job-1", "job-2"]
    assert set(second["jobs"][0]) == {f.name for f in dataclasses.fields(JobResult)}


def test_a_run_without_a_plan_has_no_report(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path, run_id="denied") as log:
        log.append("run.started", {})
        log.append("run.denied", {"exit_code": 3, "violations": []})
        log.seal(None)
    with pytest.raises(AuditError) as caught:
        results_from_log(read_records(tmp_path / "audit.jsonl"))
    assert caught.value.rule_id == "audit.no-plan"


@pytest.mark.parametrize(
    "edit",
    [
        {"trap": "\x1b[2J::error::x"},  # not a trap kind: renderers never see it
        {"fuel_used": "lots"},
        {"stdout_truncated": "no"},
        {"name": ["a"]},
        {"reason": {"x": 1}},
    ],
)
def test_a_job_row_of_the_wrong_shape_is_refused(tmp_path: Path, edit: dict[str, Any]) -> None:
    with AuditLog.open(tmp_path, run_id="r1") as log:
        log.append("plan.compiled", {"plan_sha256": "cd" * 32, "policy": {"name": "ci"}, "jobs": ["m/j"]})
        row = {**_result(0, "failed").to_dict(), "index": 0}
        log.append(
            "job.finished", {**row, **edit} if "memory_peak" not in edit else {**row, "memory_peak": 2}
        )
        log.seal(None)
    with pytest.raises(AuditError) as caught:
        results_from_log(read_records(tmp_path / "audit.jsonl"))
    assert caught.value.rule_id == "audit.bad-record"


def test_results_that_do_not_match_the_plan_are_not_a_report(tmp_path: Path) -> None:
    """A run that died after its plan (or a log cut inside a run) is never ``ok: true, jobs: []``."""
    with AuditLog.open(tmp_path, run_id="r1") as log:
        log.append(
            "plan.compiled", {"plan_sha256": "cd" * 32, "policy": {"name": "ci"}, "jobs": ["m/a", "m/b"]}
        )
        log.append("job.finished", {**_result(0, "passed").to_dict(), "index": 0})
        log.seal(None)
    with pytest.raises(AuditError) as caught:
        results_from_log(read_records(tmp_path / "audit.jsonl"))
    assert (
        caught.value.rule_id == "audit.bad-record"
        and "planned 2 job(s)" in caught.value.violations[0].message
    )


def test_select_filters_by_job_kind_and_run(tmp_path: Path) -> None:
    _run(tmp_path, "r1", ["passed", "failed"])
    _run(tmp_path, "r2", ["passed"])
    records = read_records(tmp_path / "audit.jsonl")
    assert len(select(records, job="job-1")) == 2  # started and finished, by name
    assert [r["kind"] for r in select(records, job="m.yaml/job-1", kind="job.finished")] == ["job.finished"]
    assert {r["kind"] for r in select(records, kind="job")} == {"job.started", "job.finished"}
    assert select(records, kind="job.*") == select(records, kind="job")
    assert select(records, kind="jo") == []
    assert {r["run"] for r in select(records, run="r2")} == {"r2"} and len(select(records, run="r2")) == 5
    assert select(records, job="job-0", run="r2", kind="job.finished")[0]["data"]["status"] == "passed"


def test_read_records_refuses_a_damaged_line(tmp_path: Path) -> None:
    _run(tmp_path, "r1", ["passed"])
    path = tmp_path / "audit.jsonl"
    path.write_bytes(path.read_bytes() + b'{"torn')
    with pytest.raises(AuditError) as caught:
        read_records(path)
    assert caught.value.rule_id == "audit.torn-line"


def test_a_job_reported_twice_cannot_stand_in_for_one_that_never_finished(tmp_path: Path) -> None:
    """The plan's two jobs, two results, but both of job 0 (passed): job 1 never finished. Counting
    rows took that for a complete, passing run; each planned job needs exactly one result."""
    from click.testing import CliRunner

    from runner.cli import cli

    first, second = _result(0, "passed"), _result(1, "passed")
    with AuditLog.open(tmp_path, run_id="r1") as log:
        log.append(
            "plan.compiled",
            {"plan_sha256": "cd" * 32, "policy": {"name": "ci"}, "jobs": [first.id, second.id]},
        )
        log.append("job.finished", {**first.to_dict(), "index": 0})
        log.append("job.finished", {**first.to_dict(), "index": 1})
        log.seal(None)
    with pytest.raises(AuditError) as caught:
        results_from_log(read_records(tmp_path / "audit.jsonl"))
    assert caught.value.rule_id == "audit.bad-record"
    shown = CliRunner().invoke(cli, ["report", str(tmp_path), "--format", "json"])
    assert shown.exit_code == 4 and "[audit.bad-record]" in shown.stderr and shown.stdout == ""
