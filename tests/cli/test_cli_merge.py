"""``sandrun audit merge`` (issue 14, items 2 and 4): shards run as separate processes, merged.

The merged reports must equal the unsharded run's (timings aside), the combined log must verify
with every shard's own signed seal still checkable, and each refusal names the shard and why.
"""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from cli_process import sandrun
from shard_project import KEY, KEYS, POLICY, PUB, make_shard_project
from shard_project import run_shard as shard_run

OTHER_PUB = str(KEYS / "expired-2020.pub")
TIMINGS = ("wall_ms", "rss_peak")  # measurements of this machine, not results


def run_shard(project: Path, shard: str, out: str, *extra: str) -> None:
    result = shard_run(project, shard, out, *extra)
    assert result.returncode in (0, 1), result.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plan run whole (``full``) and as shards 1/3, 2/3, 3/3 in three processes (``s1``..``s3``)."""
    root = make_shard_project(tmp_path_factory.mktemp("merge") / "project")
    assert sandrun("compile", "manifests", "--policy", POLICY, "-o", "plan.json", cwd=root).returncode == 0
    full = sandrun("run", "plan.json", "--policy", POLICY, "--out", "full", "--signing-key", KEY, cwd=root)
    assert full.returncode == 1, full.stderr  # hello/g expects exit code 3
    for index in (1, 2, 3):
        run_shard(root, f"{index}/3", f"s{index}")
    return root


def merge(project: Path, *folders: str, out: str = "merged", plan: str = "plan.json", pub: str = PUB) -> Any:
    return sandrun(
        "audit",
        "merge",
        *folders,
        "--plan",
        plan,
        "--out",
        out,
        "--pub",
        pub,
        "--signing-key",
        KEY,
        cwd=project,
    )


def jobs_without_timings(report: Path) -> list[dict[str, Any]]:
    jobs = json.loads(report.read_text())["jobs"]
    return [{k: v for k, v in job.items() if k not in TIMINGS} for job in jobs]


def junit_cases(path: Path) -> list[tuple[str | None, str | None, list[str]]]:
    """Each test case's class, name and outcome elements (failure, skipped...): no timings."""
    return [
        (case.get("classname"), case.get("name"), [child.tag for child in case])
        for case in ET.parse(path).getroot().iter("testcase")
    ]


def refusal(result: Any, rule: str, shard: str) -> None:
    assert result.returncode == 4, result.stderr
    assert f"[{rule}]" in result.stderr and shard in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_three_shards_merged_equal_the_unsharded_run(project: Path) -> None:
    result = merge(project, "s1", "s2", "s3")
    assert result.returncode == 1, result.stderr  # the same failing job, the same exit code
    merged, full = project / "merged", project / "full"
    assert jobs_without_timings(merged / "report.json") == jobs_without_timings(full / "report.json")
    whole = json.loads((full / "report.json").read_text())
    mine = json.loads((merged / "report.json").read_text())
    assert (mine["plan_sha256"], mine["policy"], mine["ok"]) == (whole["plan_sha256"], whole["policy"], False)
    assert junit_cases(merged / "junit.xml") == junit_cases(full / "junit.xml")
    assert "6 of 7 jobs passed" in (merged / "summary.md").read_text()
    verified = sandrun("audit", "verify", "merged", "--pub", PUB, cwd=project)
    assert verified.returncode == 0 and "intact" in verified.stdout, verified.stderr
    records = [json.loads(line) for line in (merged / "audit.jsonl").read_text().splitlines()]
    shards = [r["data"] for r in records if r["kind"] == "merge.shard"]
    assert [s["index"] for s in shards] == [1, 2, 3] and [s["folder"] for s in shards] == ["s1", "s2", "s3"]
    # each shard's lines are kept verbatim
    embedded = [
        r["data"]["line"] for r in records if r["kind"] == "merge.shard-record" and r["data"]["shard"] == 2
    ]
    assert embedded == (project / "s2" / "audit.jsonl").read_text().splitlines()


@pytest.mark.parametrize(
    ("folders", "rule", "named"),
    [
        (("s1", "s3"), "merge.missing", "2/3"),
        (("s1", "s2", "s3", "s1"), "merge.duplicated", "shard s1"),
        (("s1", "s2", "s3", "nowhere"), "merge.missing", "shard nowhere"),
    ],
)
def test_missing_and_duplicated_shards_are_refused(
    project: Path, folders: tuple[str, ...], rule: str, named: str
) -> None:
    refusal(merge(project, *folders, out=f"out-{rule}"), rule, named)


def test_a_copied_shard_folder_is_a_duplicate(project: Path) -> None:
    shutil.copytree(project / "s1", project / "s1-copy")
    refusal(merge(project, "s1", "s2", "s3", "s1-copy", out="out-copy"), "merge.duplicated", "shard s1-copy")


def test_an_unsealed_shard_is_refused(project: Path) -> None:
    shutil.copytree(project / "s2", project / "s2-killed")
    log = project / "s2-killed" / "audit.jsonl"
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:-1]))  # the seal is gone
    refusal(merge(project, "s1", "s2-killed", "s3", out="out-unsealed"), "merge.unsealed", "shard s2-killed")


def test_a_tampered_shard_is_refused(project: Path) -> None:
    shutil.copytree(project / "s3", project / "s3-edited")
    log = project / "s3-edited" / "audit.jsonl"
    log.write_text(log.read_text().replace('"status":"passed"', '"status":"failed"', 1))
    refusal(merge(project, "s1", "s2", "s3-edited", out="out-tampered"), "merge.tampered", "shard s3-edited")


def test_an_untrusted_shard_is_refused(project: Path) -> None:
    refusal(
        merge(project, "s1", "s2", "s3", out="out-untrusted", pub=OTHER_PUB), "merge.untrusted", "shard s1"
    )


def test_a_shard_of_another_plan_is_refused(project: Path) -> None:
    (project / "policies" / "other.yaml").write_text(
        (project / POLICY).read_text().replace("lenient", "other")
    )
    compiled = sandrun(
        "compile", "manifests", "--policy", "policies/other.yaml", "-o", "other.json", cwd=project
    )
    assert compiled.returncode == 0, compiled.stderr
    refusal(
        merge(project, "s1", "s2", "s3", plan="other.json", out="out-foreign"), "merge.foreign", "shard s1"
    )


def test_a_shard_of_another_partition_is_refused(project: Path) -> None:
    jobs = [{"manifest": "hello", "name": n, "wall_ms": 900 if n == "e" else 5} for n in "abcdefg"]
    (project / "durations.json").write_text(json.dumps({"jobs": jobs}))
    run_shard(project, "2/3", "s2-other", "--durations", "durations.json")
    refusal(merge(project, "s1", "s2-other", "s3", out="out-partition"), "merge.foreign", "shard s2-other")


def test_a_retried_shard_replaces_its_earlier_attempt_and_the_merge_says_which(project: Path) -> None:
    # the same folder, run twice (a retried pod writing to the same volume)
    shutil.copytree(project / "s2", project / "s2-retry")
    run_shard(project, "2/3", "s2-retry")
    # and the same index again in a second folder (a retried CI job with a new artifact)
    run_shard(project, "1/3", "s1-again")
    result = merge(project, "s1", "s2-retry", "s3", "s1-again", out="out-retry")
    assert result.returncode == 1, result.stderr
    records = [json.loads(line) for line in (project / "out-retry" / "audit.jsonl").read_text().splitlines()]
    shards = {r["data"]["index"]: r["data"] for r in records if r["kind"] == "merge.shard"}
    retry_runs = [a["run"] for a in shards[2]["attempts"]]
    assert len(retry_runs) == 2 and shards[2]["run"] == retry_runs[1]
    assert [a["taken"] for a in shards[2]["attempts"]] == [False, True]
    first_s1 = json.loads((project / "s1" / "audit.jsonl").read_text().splitlines()[0])["run"]
    assert shards[1]["folder"] == "s1-again" and shards[1]["superseded"] == [
        {"folder": "s1", "run": first_s1}
    ]
    assert jobs_without_timings(project / "out-retry" / "report.json") == jobs_without_timings(
        project / "full" / "report.json"
    )
    assert sandrun("audit", "verify", "out-retry", "--pub", PUB, cwd=project).returncode == 0


def test_the_merge_key_alone_cannot_rewrite_a_shards_records(project: Path, tmp_path: Path) -> None:
    """Whoever holds the merge key (not the shards') rebuilds the combined log with one job's result
    changed and seals it validly: the outer chain verifies, the embedded shard seal does not."""
    from runner.audit import AuditLog
    from runner.signing import load_private_key

    merger_key, merger_pub = KEYS / "expired-2020.key", str(KEYS / "expired-2020.pub")
    result = sandrun(
        "audit",
        "merge",
        "s1",
        "s2",
        "s3",
        "--plan",
        "plan.json",
        "--out",
        "by-merger",
        "--pub",
        PUB,
        "--signing-key",
        str(merger_key),
        cwd=project,
    )
    assert result.returncode == 1, result.stderr
    records = [json.loads(line) for line in (project / "by-merger" / "audit.jsonl").read_text().splitlines()]
    forged = tmp_path / "forged"
    with AuditLog.open(forged, run_id=records[0]["run"]) as log:
        for record in records[:-1]:
            data = record["data"]
            if (
                record["kind"] == "merge.shard-record"
                and '"name":"g"' in data["line"]
                and "job.finished" in data["line"]
            ):
                data = {**data, "line": data["line"].replace('"status":"failed"', '"status":"passed"')}
            log.append(record["kind"], data)
        log.seal(load_private_key(merger_key))
    verified = sandrun("audit", "verify", str(forged), "--pub", PUB, "--pub", merger_pub, cwd=project)
    assert verified.returncode == 4, verified.stdout
    assert "[audit.merged-shard]" in verified.stderr and "shard 1" in verified.stderr
    honest = sandrun("audit", "verify", "by-merger", "--pub", PUB, "--pub", merger_pub, cwd=project)
    assert honest.returncode == 0, honest.stderr


def test_the_merge_refuses_an_out_folder_that_has_a_log(project: Path) -> None:
    result = merge(project, "s1", "s2", "s3", out="s1")
    assert result.returncode == 2 and "[merge.out-exists]" in result.stderr, result.stderr


def test_shard_folder_names_are_printed_neutralised(project: Path) -> None:
    """Shard folders are uploaded artifacts: their names reach the merge's stderr, and must not
    move the cursor, retitle the terminal or start a CI workflow command there."""
    hostile = "s2\x1b]0;owned\x07\n::error::forged"
    shutil.copytree(project / "s2", project / hostile)
    result = merge(project, "s1", hostile, "s3", out="out-hostile-name")
    assert result.returncode == 1, result.stderr
    for line in result.stderr.splitlines():
        assert not any(ord(c) < 0x20 for c in line) and not line.startswith("::"), line
    assert "shard 2/3: run " in result.stderr


def test_a_plan_nested_too_deep_is_invalid_input_and_the_log_stays_sealed(project: Path) -> None:
    """A plan file nested deeper than the JSON parser recurses was an internal error: ``run`` left
    its log unsealed (every later run refused), ``audit merge --plan`` crashed."""
    (project / "deep-plan.json").write_text('{"a":' + "[" * 100_000 + "]" * 100_000 + "}")
    result = merge(project, "s1", "s2", "s3", out="out-deep", plan="deep-plan.json")
    assert result.returncode == 2 and "[plan.invalid]" in result.stderr, result.stderr
    ran = sandrun("run", "deep-plan.json", "--policy", POLICY, "--out", "out-deep-run", cwd=project)
    assert ran.returncode == 2 and "[plan.invalid]" in ran.stderr, ran.stderr
    assert sandrun("audit", "verify", "out-deep-run", cwd=project).returncode == 0
