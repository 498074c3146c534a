"""WebAssembly proposals are explicit: the plan records them, a policy may deny them (issue 10, item 3)."""

from __future__ import annotations

import json
from pathlib import Path

import wasmtime
from cli_process import sandrun

from runner.features import ENGINE_FEATURES, enabled

_THROWS = '(module (tag $t) (func (export "_start") throw $t))'
_GC = '(module (type (struct (field i32))) (func (export "_start")))'
_PLAIN = '(module (memory (export "memory") 1) (func (export "_start")))'


def _policy(folder: Path, features: str) -> Path:
    path = folder / "policy.yaml"
    path.write_text(
        "apiVersion: sandrun/v1\nkind: Policy\nmetadata: {name: features}\nfs: {roots: [.]}\n"
        f"modules:\n  wasm_features: {features}\n"
    )
    return path


def _modules(folder: Path) -> None:
    for name, wat in (("throws", _THROWS), ("gc", _GC), ("plain", _PLAIN)):
        (folder / f"{name}.wasm").write_bytes(wasmtime.wat2wasm(wat))


def test_a_module_needing_a_denied_proposal_is_refused_with_the_rule(tmp_path: Path) -> None:
    _modules(tmp_path)
    _policy(tmp_path, "{exceptions: false, threads: false}")
    out = str(tmp_path / "out")
    refused = sandrun("exec", "--out", out, "--policy", "policy.yaml", "throws.wasm", cwd=tmp_path)
    assert refused.returncode == 3, refused.stderr
    assert "[tool.module.wasm-feature]" in refused.stderr and "exceptions" in refused.stderr
    allowed = sandrun("exec", "--out", out, "--policy", "policy.yaml", "gc.wasm", cwd=tmp_path)
    assert allowed.returncode == 0, allowed.stderr  # gc is not denied
    _policy(tmp_path, "{gc: false}")
    no_gc = sandrun("exec", "--out", out, "--policy", "policy.yaml", "gc.wasm", cwd=tmp_path)
    assert no_gc.returncode == 3 and "[tool.module.wasm-feature]" in no_gc.stderr
    plain = sandrun("exec", "--out", out, "--policy", "policy.yaml", "plain.wasm", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr


def test_the_default_policy_keeps_exception_handling_and_the_plan_records_the_proposals(
    tmp_path: Path,
) -> None:
    _modules(tmp_path)
    out = tmp_path / "out"
    thrown = sandrun("exec", "--out", str(out), "throws.wasm", cwd=tmp_path)
    assert thrown.returncode == 134 and "exception" in thrown.stderr  # it ran, and threw
    records = [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]
    (compiled,) = [r["data"] for r in records if r["kind"] == "plan.compiled"]
    assert compiled["wasm_features"] == list(enabled()) and "exceptions" in compiled["wasm_features"]
    _policy(tmp_path, "{gc: false, threads: false}")
    out = tmp_path / "out2"
    ran = sandrun("exec", "--out", str(out), "--policy", "policy.yaml", "plain.wasm", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    records = [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]
    (compiled,) = [r["data"] for r in records if r["kind"] == "plan.compiled"]
    assert "gc" not in compiled["wasm_features"] and "threads" not in compiled["wasm_features"]
    assert "custom_page_sizes" not in compiled["wasm_features"]  # the engine does not enable it
    assert not ENGINE_FEATURES["custom_page_sizes"]


def test_a_policy_cannot_turn_on_a_proposal_the_engine_does_not_enable(tmp_path: Path) -> None:
    _modules(tmp_path)
    _policy(tmp_path, "{stack_switching: true}")
    refused = sandrun(
        "exec", "--out", str(tmp_path / "out"), "--policy", "policy.yaml", "plain.wasm", cwd=tmp_path
    )
    assert refused.returncode == 2 and "[policy.wasm-feature-unsupported]" in refused.stderr
    _policy(tmp_path, "{warp_drive: false}")
    unknown = sandrun(
        "exec", "--out", str(tmp_path / "out"), "--policy", "policy.yaml", "plain.wasm", cwd=tmp_path
    )
    assert unknown.returncode == 2 and "warp_drive" in unknown.stderr


def test_a_component_is_held_to_the_proposals_of_every_core_module_it_embeds(tmp_path: Path) -> None:
    # the proposal hides in a core module of a nested component: each one is validated
    nested = f"(component (component {_THROWS.replace('(module', '(core module', 1)}))"
    (tmp_path / "nested.wasm").write_bytes(wasmtime.wat2wasm(nested))
    out = str(tmp_path / "out")
    _policy(tmp_path, "{exceptions: false}")
    refused = sandrun("exec", "--out", out, "--policy", "policy.yaml", "nested.wasm", cwd=tmp_path)
    assert refused.returncode == 3, refused.stderr
    assert "[tool.module.wasm-feature]" in refused.stderr and "exceptions" in refused.stderr
    _policy(tmp_path, "{gc: false}")
    allowed = sandrun("exec", "--out", out, "--policy", "policy.yaml", "nested.wasm", cwd=tmp_path)
    assert "[tool.module.wasm-feature]" not in allowed.stderr  # checked, then run: it has no wasi:cli/run
    assert allowed.returncode == 134 and "exports no wasi:cli/run" in allowed.stderr, allowed.stderr
