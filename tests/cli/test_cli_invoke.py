"""Typed ``invoke`` through the CLI (issue 12 item 2, issue 10 item 2): WAVE call expressions in
``exec --invoke`` and in manifests, results printed as ``wasmtime run --invoke`` prints them and kept
in ``report.json`` and the audit log, bad calls refused with one line and a documented exit code."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import wasmtime
from cli_process import sandrun
from cli_project import POLICY

from runner.audit.verify import read_records

CALC = wasmtime.wat2wasm(
    """(module
      (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
      (func (export "half") (param f32 f64) (result f32 f64)
        (f32.div (local.get 0) (f32.const 2)) (f64.div (local.get 1) (f64.const 2))))"""
)

MANIFEST = """\
apiVersion: sandrun/v1
kind: Manifest
metadata: {{name: calc}}
tools:
  calc: {{module: ../tools/calc.wasm, sha256: {sha256}}}
jobs:
  - {{name: answer, tool: calc, invoke: "add(2, 40)"}}
  - {{name: halves, tool: calc, invoke: "half(0.1, nan)"}}
  - {{name: old-form, tool: calc, invoke: add, args: ["0xffffffff", "1"]}}
  - {{name: too-big, tool: calc, invoke: "add(1, 1099511627776)"}}
"""


def _project(root: Path, manifest: str = MANIFEST) -> Path:
    for folder in ("manifests", "tools", "policies"):
        (root / folder).mkdir(parents=True)
    (root / "tools" / "calc.wasm").write_bytes(CALC)
    sha256 = hashlib.sha256(CALC).hexdigest()
    (root / "manifests" / "calc.yaml").write_text(manifest.format(sha256=sha256))
    (root / "policies" / "lenient.yaml").write_text(POLICY.format(name="lenient", memory="64MiB"))
    return root


def _state(tmp_path: Path) -> dict[str, str]:
    return {"XDG_STATE_HOME": str(tmp_path / "state")}


def test_exec_prints_results_as_wasmtime_run_invoke_does(tmp_path: Path) -> None:
    (tmp_path / "calc.wasm").write_bytes(CALC)
    added = sandrun("exec", "--invoke", "add(1, 2)", "calc.wasm", cwd=tmp_path, env=_state(tmp_path))
    assert (added.returncode, added.stdout) == (0, "3\n"), added.stderr
    # one line per result of a core module, floats in Rust's Display form (no exponent), NaN
    halves = sandrun("exec", "--invoke", "half(0.1, 1e21)", "calc.wasm", cwd=tmp_path, env=_state(tmp_path))
    assert halves.stdout == "0.05\n500000000000000000000\n", halves.stderr
    nan = sandrun("exec", "--invoke", "half(nan, -inf)", "calc.wasm", cwd=tmp_path, env=_state(tmp_path))
    assert nan.stdout == "NaN\n-inf\n", nan.stderr


def test_exec_refuses_a_bad_call_with_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "calc.wasm").write_bytes(CALC)
    cases = {
        "add(1, 1099511627776)": "[invoke.out-of-range] argument 1: 1099511627776 does not fit s32",
        "add(1)": "[invoke.arity] 'add' takes 2 argument(s), the call gives 1",
        'add(1, "2")': "[invoke.type] argument 1: expected s32, found a string",
        "sub(1, 2)": "[invoke.export] the module exports no function named 'sub'",
        "add(1,": "[invoke.malformed] invoke: expected a value, found the end",  # refused by check
    }
    for call, line in cases.items():
        refused = sandrun("exec", "--invoke", call, "calc.wasm", cwd=tmp_path, env=_state(tmp_path))
        assert refused.returncode == 2, (call, refused.stderr)
        assert refused.stdout == ""
        (only,) = refused.stderr.splitlines()
        # the manifest exec builds has no lines the user wrote: the field, not a line and column
        assert only.startswith("(sandrun exec): /jobs/0/invoke " + line), only


def test_check_refuses_a_malformed_call_where_the_manifest_says_it(tmp_path: Path) -> None:
    manifest = MANIFEST.replace('invoke: "add(2, 40)"', 'invoke: "add(2,, 40)"')
    project = _project(tmp_path / "p", manifest)
    checked = sandrun("check", "manifests/calc.yaml", "--policy", "policies/lenient.yaml", cwd=project)
    assert checked.returncode == 2, checked.stderr
    assert "calc.yaml:7:" in checked.stdout + checked.stderr
    assert (
        "/jobs/0/invoke [invoke.malformed] invoke: unexpected ',' at column 7"
        in checked.stdout + checked.stderr
    )


def test_run_keeps_results_as_wave_and_json_in_the_report_and_the_log(tmp_path: Path) -> None:
    project = _project(tmp_path / "p")
    out = tmp_path / "out"
    ran = sandrun(
        "run", "manifests/calc.yaml", "--policy", "policies/lenient.yaml", "--out", str(out), cwd=project
    )
    assert ran.returncode == 1, ran.stderr  # too-big is refused: the run fails, the others pass
    jobs = {job["name"]: job for job in json.loads((out / "report.json").read_text())["jobs"]}
    assert jobs["answer"]["invoke"] == {"export": "add", "wave": "42", "json": [42]}
    assert jobs["answer"]["invoke_results"] == ["42"]
    assert jobs["halves"]["invoke"] == {"export": "half", "wave": "(0.05, nan)", "json": ["0.05", "nan"]}
    assert jobs["halves"]["invoke_results"] == ["0.05", "NaN"]
    assert jobs["old-form"]["invoke"] == {"export": "add", "wave": "0", "json": [0]}
    assert jobs["too-big"]["status"] == "failed"
    assert jobs["too-big"]["reason"].startswith("invoke refused: [invoke.out-of-range] argument 1:")
    assert jobs["too-big"]["invoke"]["rule"] == "invoke.out-of-range"
    finished = {
        r["data"]["name"]: r["data"] for r in read_records(out / "audit.jsonl") if r["kind"] == "job.finished"
    }
    assert finished["answer"]["invoke"] == jobs["answer"]["invoke"]
    assert finished["too-big"]["invoke"] == jobs["too-big"]["invoke"]
    assert sandrun("audit", "verify", str(out)).returncode == 0


# Export types Wasmtime's C API cannot name: asking it their kind aborts the process (a Rust panic),
# which killed the worker (trap `crash`) and, with isolation="threads", the runner itself.
HOSTILE_SIGNATURES = wasmtime.wat2wasm(
    """(module
      (type $s (struct (field i32)))
      (func $g)
      (elem declare func $g)
      (func (export "vector") (result v128) (v128.const i64x2 1 2))
      (func (export "takes-vector") (param v128))
      (func (export "small") (result i31ref) (ref.i31 (i32.const 1)))
      (func (export "record") (param (ref null $s)))
      (func (export "exception") (result exnref) (ref.null exn))
      (func (export "function") (result funcref) (ref.func $g))
      (func (export "fine") (result i32) (i32.const 7)))"""
)


def test_exports_of_types_wasmtime_cannot_name_are_refused_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "sig.wasm").write_bytes(HOSTILE_SIGNATURES)
    for call, where in [
        ("vector()", "result 0 has type v128"),
        ("vector", "result 0 has type v128"),  # the older form (an export name and args)
        ("takes-vector(1)", "parameter 0 has type v128"),
        ("small()", "result 0 has type reference"),
        ("record(1)", "parameter 0 has type reference"),
        ("exception()", "result 0 has type reference"),
        ("function()", "result 0 has type reference"),
    ]:
        ran = sandrun("exec", "--invoke", call, "sig.wasm", cwd=tmp_path, env=_state(tmp_path))
        assert ran.returncode == 2, (call, ran.stderr)
        expected = f"(sandrun exec): /jobs/0/invoke [invoke.type] {where}, which invoke cannot pass\n"
        assert ran.stderr == expected
    fine = sandrun("exec", "--invoke", "fine()", "sig.wasm", cwd=tmp_path, env=_state(tmp_path))
    assert (fine.returncode, fine.stdout) == (0, "7\n"), fine.stderr
