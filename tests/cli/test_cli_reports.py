"""Reports CI systems and reviewers use (issue 10, item 6), end to end through the CLI.

A real run of real modules (WAT): one job that passes and prints, one that fails with output on
stderr only, one skipped behind it, one with a mount, env and a network grant. From it: GitHub
annotations from ``run`` and ``report``, JUnit with each job's output, the HTML page's date,
policy and log links, the grants in the audit log, SARIF from ``check`` validated against the
official schema, and the exit codes of a filter or a run id that matches nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest
import wasmtime
from cli_process import sandrun
from click.testing import CliRunner

from runner.audit import read_records
from runner.cli import cli

SCHEMA = Path(__file__).resolve().parents[1] / "data" / "sarif-schema-2.1.0.json"


def _printer(text: str, fd: int, code: int) -> str:
    """A module that writes ``text`` to ``fd`` and exits with ``code``."""
    data = text.encode()
    return f"""
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "{data.decode()}")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const {len(data)}))
    (drop (call $w (i32.const {fd}) (i32.const 0) (i32.const 1) (i32.const 8)))
    (call $exit (i32.const {code}))))
"""


POLICY = """\
apiVersion: sandrun/v1
kind: Policy
metadata: {name: reports}
signatures: {required: false}
fs: {roots: [.]}
network: {allow: ["https://*.example.org"]}
"""

MANIFEST = """\
apiVersion: sandrun/v1
kind: Manifest
metadata: {{name: ci}}
tools:
  say: {{module: ../tools/say.wasm, sha256: {say}}}
  moan: {{module: ../tools/moan.wasm, sha256: {moan}}}
jobs:
  - name: ok
    tool: say
  - name: fail
    tool: moan
  - name: after
    tool: say
    needs: [fail]
  - name: granted
    tool: say
    fs: [{{host: ../data, guest: /data}}]
    env: {{LANG: C}}
    network: {{allow: ["https://api.example.org"]}}
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reports")
    for folder in ("tools", "manifests", "policies", "data"):
        (root / folder).mkdir()
    digests = {}
    for name, wat in (("say", _printer("hello from ok", 1, 0)), ("moan", _printer("it broke", 2, 3))):
        module = wasmtime.wat2wasm(wat)
        (root / "tools" / f"{name}.wasm").write_bytes(module)
        digests[name] = hashlib.sha256(module).hexdigest()
    (root / "manifests" / "ci.yaml").write_text(MANIFEST.format(**digests))
    (root / "policies" / "reports.yaml").write_text(POLICY)
    result = sandrun(
        "run",
        "manifests",
        "--policy",
        "policies/reports.yaml",
        "--out",
        "out",
        "--format",
        "github",
        cwd=root,
    )
    assert result.returncode == 1, result.stderr
    (root / "run-stdout.txt").write_text(result.stdout)
    return root


def _job_line(project: Path, job: str) -> int:
    lines = (project / "manifests" / "ci.yaml").read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.strip() == f"- name: {job}")


def test_run_and_report_print_one_annotation_per_failed_job_on_its_manifest_line(project: Path) -> None:
    expected = [
        f"::error file=manifests/ci.yaml,line={_job_line(project, 'fail')},title=ci/fail::"
        "failed: exit code 3, expected 0"
    ]
    ran = (project / "run-stdout.txt").read_text().splitlines()
    assert [line for line in ran if line.startswith("::")] == expected
    report = sandrun("report", "out", "--format", "github", cwd=project)
    assert report.returncode == 0, report.stderr
    assert report.stdout.splitlines() == expected


def test_annotations_leave_out_a_manifest_that_changed_since_the_run(project: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    for folder in ("manifests", "out"):
        (copy / folder).mkdir(parents=True)
    (copy / "manifests" / "ci.yaml").write_text(
        (project / "manifests" / "ci.yaml").read_text() + "\n# edited\n"
    )
    (copy / "out" / "audit.jsonl").write_bytes((project / "out" / "audit.jsonl").read_bytes())
    report = sandrun("report", "out", "--format", "github", cwd=copy)
    assert (
        report.stdout == "::error title=ci/fail::failed: exit code 3, expected 0\n"
    )  # no file, no wrong line


def _cases(text: str) -> dict[str, ET.Element]:
    return {case.get("name", ""): case for case in ET.fromstring(text).iter("testcase")}


@pytest.mark.parametrize("source", ["run", "report"])
def test_junit_holds_each_jobs_output_and_names_only_written_logs(project: Path, source: str) -> None:
    if source == "run":
        text = (project / "out" / "junit.xml").read_text()
    else:
        text = sandrun("report", "out", "--format", "junit", "-o", "out/again.xml", cwd=project).stdout
        text = (project / "out" / "again.xml").read_text()
    cases = _cases(text)
    assert cases["ok"].find("system-out").text == "hello from ok\n"  # type: ignore[union-attr]
    assert cases["ok"].find("system-err") is None  # it wrote nothing there: no file, no element
    failed = cases["fail"]
    assert failed.find("system-err").text == "it broke\n"  # type: ignore[union-attr]
    assert failed.find("system-out") is None
    details = failed.find("failure").text or ""  # type: ignore[union-attr]
    assert "stderr: logs/ci/fail.stderr" in details and "stdout:" not in details
    assert (project / "out" / "logs" / "ci" / "fail.stderr").is_file()
    assert not (project / "out" / "logs" / "ci" / "fail.stdout").exists()
    skipped = ET.tostring(cases["after"], "unicode")
    assert "system-out" not in skipped and "logs/" not in skipped


def test_html_page_has_the_date_the_policy_and_working_log_links(project: Path, tmp_path: Path) -> None:
    page_path = tmp_path / "pages" / "run.html"
    result = sandrun("report", "out", "--format", "html", "-o", str(page_path), cwd=project)
    assert result.returncode == 0, result.stderr
    page = page_path.read_text()
    records = read_records(project / "out" / "audit.jsonl")
    plan = next(r for r in records if r["kind"] == "plan.compiled")
    policy = plan["data"]["policy"]
    assert f"date {plan['ts']}" in page
    assert f"policy reports ({policy['path']}, sha256 {policy['sha256']})" in page
    assert policy["path"] == "policies/reports.yaml"
    links = re.findall(r'<a href="([^"]+)">(stdout|stderr)</a>', page)
    assert sorted(stream for _, stream in links) == ["stderr", "stdout", "stdout"]  # ok, fail, granted
    for href, _ in links:
        assert not href.startswith("/") and (page_path.parent / href).resolve().is_file(), href


def test_the_audit_log_holds_each_jobs_score_effect_vector_and_network_grant(project: Path) -> None:
    records = read_records(project / "out" / "audit.jsonl")
    plan = next(r for r in records if r["kind"] == "plan.compiled")["data"]
    grants = {g["id"]: g for g in plan["grants"]}
    assert list(grants) == plan["jobs"]
    granted = grants["ci/granted"]
    network = granted["network"]
    assert (network["allow"], network["secrets"]) == (["https://api.example.org"], [])
    assert network["block"] == [] and network["limits"]["requests"] > 0  # this policy blocks nothing more
    assert grants["ci/ok"]["network"] is None
    # unsigned (novelty .2, security .2) + one ro mount (privacy .1) + one env var (privacy .02)
    # + a network allow list (risk .2, privacy .3, security .3)
    assert granted["effects"] == {
        "risk": "0.2000", "fairness": "0.0000", "privacy": "0.4200",
        "novelty": "0.2000", "security": "0.5000",
    }  # fmt: skip
    norm = math.sqrt(sum(float(v) ** 2 for v in granted["effects"].values()))
    assert granted["score"] == f"{norm:.4f}"


def test_a_filter_or_run_that_matches_nothing_is_invalid_input_not_an_audit_failure(project: Path) -> None:
    shown = sandrun("audit", "show", "out", "--job", "NOSUCH", cwd=project)
    assert shown.returncode == 2 and shown.stdout == ""
    assert "[input.no-match] no record matched --job NOSUCH" in shown.stderr
    assert sandrun("audit", "show", "out", "--job", "ci/fail", cwd=project).returncode == 0
    report = sandrun("report", "out", "--run", "NOSUCH", cwd=project)
    assert report.returncode == 2 and "[input.run] no run NOSUCH in the log" in report.stderr


def _sarif(stdout: str) -> dict:  # type: ignore[type-arg]
    log = json.loads(stdout)
    jsonschema.Draft4Validator(json.loads(SCHEMA.read_text())).validate(log)
    return log  # type: ignore[no-any-return]


def test_check_prints_valid_sarif_with_rules_and_regions(project: Path) -> None:
    good = sandrun(
        "check", "manifests", "--policy", "policies/reports.yaml", "--format", "sarif", cwd=project
    )
    assert good.returncode == 0, good.stderr
    assert _sarif(good.stdout)["runs"][0]["results"] == []
    bad = project / "bad"
    bad.mkdir(exist_ok=True)
    (bad / "bad.yaml").write_text(
        (project / "manifests" / "ci.yaml")
        .read_text()
        .replace("tool: moan", "tool: nope\n    fs: [{host: ../data, guest: /d, mode: rw}]")
    )
    result = sandrun("check", "bad", "--policy", "policies/reports.yaml", "--format", "sarif", cwd=project)
    assert result.returncode == 2, (
        result.stderr
    )  # an unknown tool is invalid input, which wins over the denial
    run = _sarif(result.stdout)["runs"][0]
    rules = [rule["id"] for rule in run["tool"]["driver"]["rules"]]
    assert len(rules) == len(set(rules)) and {"job.unknown-tool", "fs.write-denied"} <= set(rules)
    for found in run["results"]:
        assert rules[found["ruleIndex"]] == found["ruleId"]
        physical = found["locations"][0]["physicalLocation"]
        assert physical["artifactLocation"] == {"uri": "bad/bad.yaml", "uriBaseId": "SRCROOT"}
        assert physical["region"]["startLine"] >= 1 and physical["region"]["startColumn"] >= 1
    unknown = next(r for r in run["results"] if r["ruleId"] == "job.unknown-tool")
    assert unknown["locations"][0]["logicalLocations"][0]["fullyQualifiedName"] == "/jobs/1/tool"


def test_a_format_does_not_leak_into_the_next_call_in_the_same_process(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project)
    (project / "broken").mkdir(exist_ok=True)
    (project / "broken" / "b.yaml").write_text("apiVersion: sandrun/v1\nkind: Manifest\n")
    runner = CliRunner()
    args = ["check", "broken", "--policy", "policies/reports.yaml"]
    first = runner.invoke(cli, [*args, "--format", "github"])
    assert first.exit_code == 2 and first.output.startswith("::error ")
    second = runner.invoke(cli, args)
    assert second.exit_code == 2 and "::error" not in second.output
    assert second.output.startswith("broken/b.yaml:")


def test_the_executors_records_are_what_the_builders_build(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seam for the executor: its records today equal record.py's builders, field for field."""
    from runner.api import compile_manifests
    from runner.audit import record

    monkeypatch.chdir(project)
    plan = compile_manifests([Path("manifests")], Path("policies/reports.yaml"))
    seen = set()
    for entry in read_records(project / "out" / "audit.jsonl"):
        data, kind = entry["data"], entry["kind"]
        seen.add(kind)
        if kind == record.PLAN_COMPILED:
            assert data == record.plan_compiled(plan, plan.sha256, "policies/reports.yaml")
        elif kind == record.TOOL_REGISTERED:
            assert data in [record.tool_registered(tool) for tool in plan.tools]
        elif kind == record.TOOL_DEPLOYED:
            job = next(j for j in plan.jobs if j.tool == data["tool"])
            assert data == record.tool_deployed(job, data["source"], data["engine"])
        elif kind == record.JOB_STARTED:
            assert data == record.job_started(plan.job(data["id"]), data["index"])
        elif kind == record.JOB_FINISHED:
            index, result = record.read_job_finished(data)
            if result.status == "skipped":
                assert data == record.job_finished(result, index or 0, None)
            assert record.record_job(kind, data) == result.id
    assert {record.JOB_STARTED, record.JOB_FINISHED, record.TOOL_DEPLOYED} <= seen


def test_the_front_door_does_what_the_commands_do(project: Path, tmp_path: Path) -> None:
    from runner import api
    from runner.errors import InputError, PolicyDenied

    pair = api.generate_keys("k1", tmp_path / "keys")
    module = project / "tools" / "say.wasm"
    signed = api.sign_module(module, pair.private_path)
    assert signed.key_id == "k1" and signed.sha256 == hashlib.sha256(module.read_bytes()).hexdigest()
    assert api.verify_module(module, signed.signature, str(pair.public_path)) == signed.sha256
    with pytest.raises(PolicyDenied) as denied:
        api.verify_module(project / "tools" / "moan.wasm", signed.signature, pair.public_b64)
    assert denied.value.rule_id == "signature.invalid"
    out = project / "out"
    assert api.verify_audit(out).status == "intact"
    shown = api.show_records(out, kind="job.finished")
    assert len(shown.records) == 4 and all(sealed for _, sealed in shown.records)
    with pytest.raises(InputError) as nothing:
        api.show_records(out, run="NOSUCH")
    assert nothing.value.rule_id == "input.no-match"
    rebuilt = api.report_from_log(out, fmt="json")
    assert json.loads(rebuilt.text) == json.loads((out / "report.json").read_text())
    assert rebuilt.verification.startswith("audit chain intact")


def test_sarif_names_a_file_whose_name_is_not_utf8(project: Path) -> None:
    """A repository can hold a file name that is not UTF-8: its SARIF location is the name's bytes
    percent-encoded (it was a traceback from the error printer, and no SARIF at all)."""
    bad = project / "latin1"
    bad.mkdir(exist_ok=True)
    (bad / "ok.yaml").write_text("apiVersion: sandrun/v1\nkind: Manifest\n")
    (bad / "ok.yaml").rename(bad / os.fsdecode(b"caf\xe9.yaml"))
    result = sandrun("check", "latin1", "--policy", "policies/reports.yaml", "--format", "sarif", cwd=project)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    [*_, found] = _sarif(result.stdout)["runs"][0]["results"]
    assert found["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "latin1/caf%E9.yaml"


def test_annotations_read_only_regular_files_under_the_root(project: Path, tmp_path: Path) -> None:
    """The inputs a log lists are names anyone may have written: a FIFO among them (inside the
    root or anywhere) made ``report --format github`` wait forever; they are not read at all."""
    from runner.audit import AuditLog
    from runner.results import JobResult

    os.mkfifo(project / "stuck.yaml")
    os.mkfifo(tmp_path / "far.yaml")
    row = JobResult(manifest="m", name="a", tool="t", module_sha256="2" * 64, status="failed", exit_code=1)
    policy = {"name": "p", "path": "p.yaml", "sha256": "0" * 64, "git_commit": None}
    inputs = [
        {"path": "stuck.yaml", "sha256": "0" * 64},
        {"path": str(tmp_path / "far.yaml"), "sha256": "0" * 64},
    ]
    out = tmp_path / "out"
    with AuditLog.open(out, run_id="r1") as log:
        log.append(
            "plan.compiled", {"plan_sha256": "1" * 64, "policy": policy, "inputs": inputs, "jobs": ["m/a"]}
        )
        log.append("job.finished", {**row.to_dict(), "index": 0})
        log.seal(None)
    result = subprocess.run(
        [sys.executable, "-m", "runner", "report", str(out), "--format", "github", "--root", str(project)],
        capture_output=True,
        text=True,
        timeout=60,  # generous: it returns at once; before, it never did
        check=False,
    )
    assert result.returncode == 0 and result.stdout == "::error title=m/a::failed: failed\n", result.stderr
