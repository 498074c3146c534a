"""The merge's checks on shard logs written directly (runs no guest): what a CLI run cannot produce."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_shard import plan_of, spec

from runner.audit import AuditLog
from runner.audit.merge import merge_shards
from runner.errors import AuditError
from runner.plan import Plan
from runner.shard import ShardRequest, ShardSpec
from runner.signing import load_private_key, parse_public_key

KEYS = Path(__file__).resolve().parents[1] / "keys"
KEY = load_private_key(KEYS / "examples-2026.key")
PUB = parse_public_key((KEYS / "examples-2026.pub").read_text())


def result(job_id: str) -> dict[str, Any]:
    manifest, name = job_id.split("/")
    return {"manifest": manifest, "name": name, "tool": "t", "module_sha256": "0" * 64, "status": "passed"}


def write_shard(
    folder: Path,
    plan: Plan,
    index: int,
    total: int,
    *,
    finish: int | None = None,
    seal: bool = True,
    run: str = "r",
) -> None:
    """A shard log as ``sandrun run --shard`` writes it; ``finish`` cuts the finished jobs short."""
    assignment = ShardRequest(ShardSpec(index, total)).assign(plan, plan.sha256)
    with AuditLog.open(folder, run_id=f"{run}-{index}") as log:
        log.append("run.started", {})
        log.append("plan.compiled", {"plan_sha256": plan.sha256})
        log.append("shard.assigned", assignment.record())
        for job_id in assignment.jobs[:finish]:
            log.append("job.finished", result(job_id))
        if seal:
            log.seal(KEY)


def merge(folders: list[Path], plan: Plan, out: Path) -> Any:
    return merge_shards(folders, plan, out_dir=out, public_keys=[PUB], run_id="merge-1", signing_key=KEY)


@pytest.fixture
def plan() -> Plan:
    return plan_of([spec("a"), spec("b"), spec("c", needs=("a",))])


def test_a_shard_that_did_not_finish_its_jobs_is_incomplete(plan: Plan, tmp_path: Path) -> None:
    write_shard(tmp_path / "s1", plan, 1, 2, finish=1)
    write_shard(tmp_path / "s2", plan, 2, 2)
    with pytest.raises(AuditError) as caught:
        merge([tmp_path / "s1", tmp_path / "s2"], plan, tmp_path / "out")
    assert caught.value.rule_id == "merge.incomplete" and "shard " + str(tmp_path / "s1") in str(caught.value)


def test_an_earlier_sealed_attempt_is_taken_over_a_later_killed_one(plan: Plan, tmp_path: Path) -> None:
    write_shard(tmp_path / "s1", plan, 1, 2, run="first")
    write_shard(tmp_path / "s1", plan, 1, 2, run="second", finish=0, seal=False)  # killed mid-run
    write_shard(tmp_path / "s2", plan, 2, 2)
    outcome = merge([tmp_path / "s1", tmp_path / "s2"], plan, tmp_path / "out")
    assert outcome.taken[0] == (1, str(tmp_path / "s1"), "first-1")
    assert [job["name"] for job in outcome.report["jobs"]] == ["a", "b", "c"]


def test_a_log_without_an_assignment_is_not_a_shard(plan: Plan, tmp_path: Path) -> None:
    with AuditLog.open(tmp_path / "s1", run_id="plain") as log:
        log.append("run.started", {})
        log.seal(KEY)
    write_shard(tmp_path / "s2", plan, 2, 2)
    with pytest.raises(AuditError) as caught:
        merge([tmp_path / "s1", tmp_path / "s2"], plan, tmp_path / "out")
    assert caught.value.rule_id == "merge.foreign"


def test_shards_of_different_totals_are_of_another_partition(plan: Plan, tmp_path: Path) -> None:
    write_shard(tmp_path / "s1", plan, 1, 2)
    write_shard(tmp_path / "s2", plan, 2, 3)
    with pytest.raises(AuditError) as caught:
        merge([tmp_path / "s1", tmp_path / "s2"], plan, tmp_path / "out")
    assert caught.value.rule_id == "merge.foreign" and "partition" in str(caught.value)


def test_a_merge_without_keys_is_refused(plan: Plan, tmp_path: Path) -> None:
    write_shard(tmp_path / "s1", plan, 1, 1)
    with pytest.raises(AuditError) as caught:
        merge_shards([tmp_path / "s1"], plan, out_dir=tmp_path / "out", public_keys=[], run_id="m-1")
    assert caught.value.rule_id == "merge.untrusted"


@pytest.mark.parametrize(
    "records",
    [
        [("merge.shard-record", {"shard": [1], "line": 5}), ("merge.shard", {"index": 1})],
        [("merge.shard", {"index": [1], "folder": "f", "run": "r", "records": 0, "head": "h"})],
        [("merge.shard", {"index": 1, "folder": 2, "run": "r", "records": 0, "head": "h"})],
    ],
    ids=["unhashable-shard", "list-index", "folder-not-text"],
)
def test_merge_records_of_a_shape_no_merge_writes_are_damage_not_a_crash(
    tmp_path: Path, records: list[tuple[str, dict[str, Any]]]
) -> None:
    """A merged log's chain holds whatever its writer put there (no key is needed without --pub):
    ``audit verify`` names such records ``audit.merged-shard`` (exit 4), never an internal error."""
    from click.testing import CliRunner

    from runner.cli import cli

    with AuditLog.open(tmp_path, run_id="m1") as log:
        log.append("merge.started", {})
        for kind, data in records:
            log.append(kind, data)
        log.seal(None)
    result = CliRunner().invoke(cli, ["audit", "verify", str(tmp_path)])
    assert result.exit_code == 4, result.output
    assert "[audit.merged-shard]" in result.stderr and "internal error" not in result.stderr
