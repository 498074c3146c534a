"""`sandrun run`, `exec`, `audit` and `report` end to end, as real subprocesses like CI runs them."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import wasmtime
from cli_process import REPO, sandrun

DEMO = ("manifests/examples", "--policy", "policies/default.yaml")


def run_demo(out: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The README's demo, with its outputs in ``out``."""
    return sandrun("run", *DEMO, "--out", str(out), env=env)


def test_readme_demo_runs_green_and_its_log_verifies_and_rebuilds_the_report(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_demo(out)
    assert result.returncode == 0, result.stderr
    assert "9 of 9 jobs passed" in result.stdout
    assert "Traceback" not in result.stderr
    for name in (
        "audit.jsonl",
        "report.json",
        "junit.xml",
        "summary.md",
        "checkpoint.txt",
        "logs/docs-checks/count-words.stdout",
    ):
        assert (out / name).is_file(), name
    assert "/docs/guide.md" in (out / "logs/docs-checks/count-words.stdout").read_text()
    verified = sandrun("audit", "verify", str(out))
    assert verified.returncode == 0 and verified.stdout.startswith("intact:")
    rebuilt = sandrun("report", str(out), "--format", "json")
    assert json.loads(rebuilt.stdout) == json.loads((out / "report.json").read_text())
    html = sandrun("report", str(out), "--format", "html")
    assert html.returncode == 0 and "<table" in html.stdout and "http" not in html.stdout.split("<body", 1)[1]


def test_signed_seal_verifies_only_with_the_runner_key(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert sandrun("keys", "generate", "--id", "runner", "--out", str(keys)).returncode == 0
    assert sandrun("keys", "generate", "--id", "other", "--out", str(keys)).returncode == 0
    out = tmp_path / "out"
    env = {"SANDRUN_SIGNING_KEY": (keys / "runner.key").read_text()}
    result = run_demo(out, env=env)
    assert result.returncode == 0, result.stderr
    good = sandrun("audit", "verify", str(out), "--pub", str(keys / "runner.pub"), "--format", "json")
    assert good.returncode == 0 and json.loads(good.stdout)["signatures_checked"] is True
    bad = sandrun("audit", "verify", str(out), "--pub", str(keys / "other.pub"))
    assert bad.returncode == 4 and "[audit.unknown-signer]" in bad.stderr
    anchored = sandrun("audit", "verify", str(out), "--expect-head", str(out / "checkpoint.txt"))
    assert anchored.returncode == 0


def test_tampered_log_fails_verification_naming_the_line(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_demo(out).returncode == 0
    log = out / "audit.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    index = next(i for i, line in enumerate(lines) if '"job.finished"' in line and '"exit_code":3' in line)
    lines[index] = lines[index].replace('"exit_code":3', '"exit_code":0')
    log.write_text("".join(lines))
    result = sandrun("audit", "verify", str(out))
    assert result.returncode == 4
    assert f"audit.jsonl:{index + 1}:" in result.stderr and "[audit.edited]" in result.stderr


def test_compiled_plan_runs_and_a_denied_run_is_logged_but_writes_no_report(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    assert sandrun("compile", *DEMO, "-o", str(plan)).returncode == 0
    out = tmp_path / "out"
    ran = sandrun("run", str(plan), *DEMO[1:], "--out", str(out))
    assert ran.returncode == 0, ran.stderr
    assert (
        json.loads((out / "report.json").read_text())["plan_sha256"]
        == hashlib.sha256(plan.read_bytes().rstrip(b"\n")).hexdigest()
    )

    denied_out = tmp_path / "denied"
    case = REPO / "tests" / "cases" / "sha256-mismatch" / "manifest.yaml"
    denied = sandrun(
        "run",
        str(case),
        "--policy",
        "tests/cases/_shared/policy.yaml",
        "--root",
        "tests/cases",
        "--out",
        str(denied_out),
    )
    assert denied.returncode == 3 and "[tool.digest]" in denied.stderr
    assert not (denied_out / "report.json").exists()
    records = [json.loads(line) for line in (denied_out / "audit.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records] == ["run.started", "tool.denied", "run.denied", "run.sealed"]
    assert sandrun("audit", "verify", str(denied_out)).returncode == 0


def test_a_plan_runs_only_if_its_inputs_still_compile_to_it(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    assert sandrun("compile", *DEMO, "-o", str(plan)).returncode == 0
    original = plan.read_text()
    plan.write_text(original.replace('"expect_exit_code":3', '"expect_exit_code":0'))  # still canonical
    result = sandrun("run", str(plan), *DEMO[1:], "--out", str(tmp_path / "out"))
    assert result.returncode == 3 and "[plan.mismatch]" in result.stderr
    plan.write_text(original.replace('"fuel":50000000', '"fuel":50000001').replace(" ", ""))
    result = sandrun("run", str(plan), *DEMO[1:], "--out", str(tmp_path / "out"))
    assert result.returncode == 3 and "[plan.mismatch]" in result.stderr
    plan.write_text("{not json")
    result = sandrun("run", str(plan), *DEMO[1:], "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "[plan.invalid]" in result.stderr and "Traceback" not in result.stderr


def test_exec_behaves_like_wasmtime_run(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    counted = sandrun(
        "exec",
        "--out",
        out,
        "--map-dir",
        "manifests/examples/docs::/d",
        "manifests/tools/wordcount.wasm",
        "/d/guide.md",
    )
    assert counted.returncode == 0, counted.stderr
    assert "/d/guide.md" in counted.stdout  # the guest's stdout passes through
    failed = sandrun("exec", "--out", out, "manifests/tools/fail.wasm")
    assert failed.returncode == 3 and "fails (exit code 3)" in failed.stderr
    escape = sandrun("exec", "--out", out, "--map-dir", "/etc::/etc", "manifests/tools/fail.wasm")
    assert escape.returncode == 3 and "[fs.outside-root]" in escape.stderr


def test_exec_trap_exits_134_and_stdin_passes_through(tmp_path: Path) -> None:
    spin = tmp_path / "spin.wasm"
    spin.write_bytes(
        wasmtime.wat2wasm('(module (memory (export "memory") 1) (func (export "_start") (loop br 0)))')
    )
    trapped = sandrun("exec", "--out", str(tmp_path / "out"), "--timeout", "300ms", "spin.wasm", cwd=tmp_path)
    assert trapped.returncode == 134 and "timeout" in trapped.stderr
    echoed = sandrun(
        "exec",
        "--out",
        str(tmp_path / "out2"),
        "tests/fixtures/probe.wasm",
        "stdin",
        input="hello from stdin\n",
    )
    assert echoed.returncode == 0, echoed.stderr
    assert "hello from stdin" in echoed.stdout


def test_ctrl_c_interrupts_running_jobs_writes_results_and_exits_130(tmp_path: Path) -> None:
    module = wasmtime.wat2wasm('(module (memory (export "memory") 1) (func (export "_start") (loop br 0)))')
    (tmp_path / "spin.wasm").write_bytes(module)
    digest = hashlib.sha256(module).hexdigest()
    (tmp_path / "policy.yaml").write_text(
        "apiVersion: sandrun/v1\nkind: Policy\nmetadata: {name: p}\nlimits:\n  max: {timeout: 10m}\n"
    )
    jobs = "".join(f"  - {{name: spin{i}, tool: spin, limits: {{timeout: 5m}}}}\n" for i in range(4))
    (tmp_path / "m.yaml").write_text(
        "apiVersion: sandrun/v1\nkind: Manifest\nmetadata: {name: spin}\n"
        f"tools:\n  spin: {{module: spin.wasm, sha256: {digest}}}\njobs:\n{jobs}"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runner",
            "run",
            "m.yaml",
            "--policy",
            "policy.yaml",
            "--jobs",
            "2",
            "--out",
            "out",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "CI": "true"},
    )
    deadline = time.monotonic() + 60
    log = tmp_path / "out" / "audit.jsonl"
    while time.monotonic() < deadline and (not log.exists() or log.read_text().count('"job.started"') < 2):
        time.sleep(0.05)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert time.monotonic() - started < 20
    assert proc.returncode == 130, stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [job["status"] for job in report["jobs"]].count("skipped") == 2
    assert sandrun("audit", "verify", str(tmp_path / "out")).returncode == 0


@pytest.mark.parametrize(
    "args",
    [
        ["run", "manifests/examples"],  # no policy
        ["run", "nope/", "--policy", "policies/default.yaml"],
        ["run", "manifests/examples", "--policy", "nope.yaml"],
        ["exec", "nope.wasm"],
        ["exec", "--map-dir", "nonsense", "manifests/tools/fail.wasm"],
        ["exec", "--memory", "lots", "manifests/tools/fail.wasm"],
        ["audit", "verify", "nope.jsonl"],
        ["report", "nope.jsonl"],
        ["run", "manifests/examples", "--policy", "policies/default.yaml", "--signing-key", "README.md"],
    ],
)
def test_bad_input_is_one_line_and_exit_2_never_a_traceback(tmp_path: Path, args: list[str]) -> None:
    result = sandrun(*args, "--out", str(tmp_path / "out")) if args[0] in ("run", "exec") else sandrun(*args)
    assert "Traceback" not in result.stderr + result.stdout
    assert result.returncode == 2, result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) <= 3


def test_torn_tail_is_reported_then_repaired_explicitly(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_demo(out).returncode == 0
    with open(out / "audit.jsonl", "ab") as log:
        log.write(b'{"seq":15,"ts":"2026-')
    torn = sandrun("audit", "verify", str(out))
    assert torn.returncode == 4 and "[audit.torn-line]" in torn.stderr
    refused = run_demo(out)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    repaired = sandrun("audit", "repair", str(out))
    assert repaired.returncode == 0 and "torn" in repaired.stdout
    assert sandrun("audit", "verify", str(out)).returncode == 0
    cut_back = run_demo(out)  # the operator says whether to go on after a cut (docs/audit.md)
    assert cut_back.returncode == 4 and "[audit.cut-back]" in cut_back.stderr
    assert sandrun("run", *DEMO, "--out", str(out), "--continue-unsealed").returncode == 0
    assert sandrun("audit", "verify", str(out)).stdout.startswith("intact: ")


def test_an_unwritable_out_folder_is_one_line_and_exit_2(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = run_demo(blocker / "out")
    assert result.returncode == 2, result.stderr
    expected = f"sandrun: {blocker / 'out'}: Not a directory"
    assert result.stderr.strip().splitlines() == [expected], result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
