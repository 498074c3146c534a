"""Issue 9 item 2: compiling a module is bounded (CPU time, memory, size, engine configurations).

Hostile modules (``compile_bombs``) need tens of seconds and a gigabyte to compile; the policies
here bound compilation far below that, so the outcome does not depend on the machine's speed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import wasmtime
from cli_process import sandrun
from compile_bombs import huge_module, slow_module

HELLO = wasmtime.wat2wasm('(module (memory (export "memory") 1) (func (export "_start")))')


def _write_run(tmp_path: Path, hostile: bytes, modules: str) -> None:
    """A policy with ``modules`` and one manifest: a hostile tool's job and a harmless tool's job."""
    (tmp_path / "hostile.wasm").write_bytes(hostile)
    (tmp_path / "hello.wasm").write_bytes(HELLO)
    (tmp_path / "policy.yaml").write_text(
        f"apiVersion: sandrun/v1\nkind: Policy\nmetadata: {{name: bounded}}\nmodules: {modules}\n"
    )
    (tmp_path / "m.yaml").write_text(
        "apiVersion: sandrun/v1\nkind: Manifest\nmetadata: {name: bombs}\ntools:\n"
        f"  hostile: {{module: hostile.wasm, sha256: {hashlib.sha256(hostile).hexdigest()}}}\n"
        f"  hello: {{module: hello.wasm, sha256: {hashlib.sha256(HELLO).hexdigest()}}}\n"
        "jobs:\n  - {name: bomb, tool: hostile}\n  - {name: fine, tool: hello}\n"
    )


def _run_and_check_denied(tmp_path: Path, rule_id: str) -> None:
    ran = sandrun(
        "run", "m.yaml", "--policy", "policy.yaml", "--out", "out", "--cache-dir", "cache", cwd=tmp_path
    )
    assert ran.returncode == 1, ran.stderr
    assert "Traceback" not in ran.stderr
    jobs = {job["name"]: job for job in json.loads((tmp_path / "out" / "report.json").read_text())["jobs"]}
    assert jobs["fine"]["status"] == "passed"
    assert jobs["bomb"]["status"] == "denied" and jobs["bomb"]["reason"].startswith(f"[{rule_id}]")
    records = [json.loads(line) for line in (tmp_path / "out" / "audit.jsonl").read_text().splitlines()]
    denied = [r["data"] for r in records if r["kind"] == "tool.denied"]
    assert [(d["tool"], d["rule_id"]) for d in denied] == [("hostile", rule_id)]
    assert records[-1]["kind"] == "run.sealed"
    verified = sandrun("audit", "verify", "out", cwd=tmp_path)
    assert verified.returncode == 0 and verified.stdout.startswith("intact"), (
        verified.stdout + verified.stderr
    )


def test_a_module_slow_to_compile_is_denied_at_its_cpu_bound_and_the_run_goes_on(tmp_path: Path) -> None:
    _write_run(tmp_path, slow_module(), "{compile_timeout: 1s}")
    _run_and_check_denied(tmp_path, "compile.timeout")


def test_a_module_huge_to_compile_is_denied_at_its_memory_bound_and_the_run_goes_on(tmp_path: Path) -> None:
    _write_run(tmp_path, huge_module(), "{compile_memory: 128MiB}")
    _run_and_check_denied(tmp_path, "compile.memory")


def test_an_invalid_module_is_denied_at_deploy_and_the_run_goes_on(tmp_path: Path) -> None:
    _write_run(tmp_path, b"\0asm\x01\0\0\0\x01\xff", "{}")
    ran = sandrun(
        "run", "m.yaml", "--policy", "policy.yaml", "--out", "out", "--cache-dir", "cache", cwd=tmp_path
    )
    assert ran.returncode == 1 and "Traceback" not in ran.stderr
    records = [json.loads(line) for line in (tmp_path / "out" / "audit.jsonl").read_text().splitlines()]
    assert [r["data"]["rule_id"] for r in records if r["kind"] == "tool.denied"] == ["module.invalid"]
    assert sandrun("audit", "verify", "out", cwd=tmp_path).returncode == 0


def test_a_module_over_the_size_cap_is_denied_by_check_before_it_is_read(tmp_path: Path) -> None:
    _write_run(tmp_path, HELLO + b"\0" * 2048, "{max_size: 1KiB}")
    checked = sandrun("check", "m.yaml", "--policy", "policy.yaml", cwd=tmp_path)
    assert checked.returncode == 3
    lines = [line for line in checked.stderr.splitlines() if "[modules.max-size]" in line]
    assert len(lines) == 1 and lines[0].startswith("m.yaml:5:"), checked.stderr
    assert "/tools/hostile/module [modules.max-size]" in lines[0]


def test_distinct_engine_configurations_are_capped_naming_the_job_that_goes_over(tmp_path: Path) -> None:
    (tmp_path / "hello.wasm").write_bytes(HELLO)
    (tmp_path / "policy.yaml").write_text(
        "apiVersion: sandrun/v1\nkind: Policy\nmetadata: {name: p}\nlimits: {max: {stack: 2MiB}}\n"
        "modules: {max_engines: 2}\n"
    )
    stacks = ["1MiB", "2MiB", "1MiB", "512KiB", "256KiB"]  # at most 2 MiB: the engine takes no more
    jobs = "".join(f"  - {{name: j{i}, tool: hello, limits: {{stack: {s}}}}}\n" for i, s in enumerate(stacks))
    (tmp_path / "m.yaml").write_text(
        "apiVersion: sandrun/v1\nkind: Manifest\nmetadata: {name: engines}\ntools:\n"
        f"  hello: {{module: hello.wasm, sha256: {hashlib.sha256(HELLO).hexdigest()}}}\njobs:\n{jobs}"
    )
    checked = sandrun("check", "m.yaml", "--policy", "policy.yaml", cwd=tmp_path)
    assert checked.returncode == 3
    denied = [line for line in checked.stderr.splitlines() if "[modules.max-engines]" in line]
    assert [line.split(": ")[1].split(" ")[0] for line in denied] == [
        "/jobs/3/limits/stack",
        "/jobs/4/limits/stack",
    ]
    assert denied[0].startswith("m.yaml:10:") and "engines/j3" in denied[0]


def test_a_plan_whose_compile_bounds_were_loosened_by_hand_is_refused(tmp_path: Path) -> None:
    _write_run(tmp_path, HELLO, "{compile_timeout: 1s}")
    assert (
        sandrun("compile", "m.yaml", "--policy", "policy.yaml", "-o", "plan.json", cwd=tmp_path).returncode
        == 0
    )
    plan = (tmp_path / "plan.json").read_text()
    assert '"compile_timeout_ms":1000' in plan
    (tmp_path / "plan.json").write_text(
        plan.replace('"compile_timeout_ms":1000', '"compile_timeout_ms":9000000')
    )
    ran = sandrun(
        "run", "plan.json", "--policy", "policy.yaml", "--out", "out", "--cache-dir", "cache", cwd=tmp_path
    )
    assert ran.returncode == 3 and "[plan.mismatch]" in ran.stderr


@pytest.mark.parametrize(
    "modules",
    ["{compile_timeout: 10}", "{compile_memory: lots}", "{max_engines: 0}", "{max_size: 1mib}", "{cpu: 1s}"],
)
def test_a_bad_modules_section_is_invalid_input_on_one_line(tmp_path: Path, modules: str) -> None:
    _write_run(tmp_path, HELLO, modules)
    checked = sandrun("check", "m.yaml", "--policy", "policy.yaml", cwd=tmp_path)
    assert checked.returncode == 2 and "Traceback" not in checked.stderr
    assert "policy.yaml:4:" in checked.stderr and "/modules" in checked.stderr
