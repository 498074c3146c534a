"""Fuel is metered only where a job or the policy's default asks for it (issue 10, item 3)."""

from __future__ import annotations

from pathlib import Path

import pytest
import wasmtime

from runner.api import compile_documents, default_policy_path, exec_manifest
from runner.errors import PolicyDenied

_MODULE = '(module (memory (export "memory") 1) (func (export "_start")))'


def _policy(folder: Path, limits: str) -> Path:
    path = folder / "policy.yaml"
    path.write_text(
        f"apiVersion: sandrun/v1\nkind: Policy\nmetadata: {{name: f}}\nfs: {{roots: [.]}}\n{limits}"
    )
    return path


@pytest.fixture
def module(tmp_path: Path) -> Path:
    path = tmp_path / "tool.wasm"
    path.write_bytes(wasmtime.wat2wasm(_MODULE))
    return path


def _fuel(module: Path, policy: Path, **limits: object) -> int | None:
    document = exec_manifest(module, [], limits=limits)
    plan = compile_documents([document], policy, root=module.parent, named_module=module)
    return plan.jobs[0].limits.fuel


def test_the_default_policy_meters_no_fuel_and_caps_none(module: Path) -> None:
    assert _fuel(module, default_policy_path()) is None
    assert _fuel(module, default_policy_path(), fuel=10**15) == 10**15  # a tool that needs more may ask


def test_a_fuel_maximum_alone_does_not_turn_metering_on(module: Path, tmp_path: Path) -> None:
    policy = _policy(tmp_path, "limits:\n  max: {fuel: 1000}\n")
    assert _fuel(module, policy) is None
    assert _fuel(module, policy, fuel=1000) == 1000
    with pytest.raises(PolicyDenied) as denied:
        _fuel(module, policy, fuel=1001)
    assert denied.value.violations[0].rule_id == "limits.max"


def test_a_policy_default_meters_every_job(module: Path, tmp_path: Path) -> None:
    policy = _policy(tmp_path, "limits:\n  default: {fuel: 500}\n")
    assert _fuel(module, policy) == 500
