"""Errors in the right category, through the CLI: the exit code says what kind of problem it was."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cli_process import REPO
from click.testing import CliRunner, Result
from wasmtime import wat2wasm

from runner.cli import cli

WASM = wat2wasm('(module (func (export "_start")))')
POLICY = """\
apiVersion: sandrun/v1
kind: Policy
metadata: {name: p}
fs: {roots: [.]}
network: {allow: ["tcp://10.0.0.0/8:1..65535"]}
"""


def _manifest(module: str, digest: str, *, job: str = "{name: a, tool: t}", name: str = "m") -> str:
    return (
        f"apiVersion: sandrun/v1\nkind: Manifest\nmetadata: {{name: {name}}}\n"
        f"tools:\n  t: {{module: {module}, sha256: {digest}}}\njobs:\n  - {job}\n"
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "tool.wasm").write_bytes(WASM)
    (tmp_path / "policy.yaml").write_text(POLICY)
    return tmp_path


def _check(root: Path, *paths: str, policy: str = "policy.yaml") -> Result:
    return CliRunner().invoke(
        cli, ["check", *(str(root / p) for p in paths), "--policy", str(root / policy), "--root", str(root)]
    )


def _write(root: Path, name: str, text: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# -- invalid input, not denials ----------------------------------------------------------------


def test_a_missing_module_is_invalid_input(root: Path) -> None:
    _write(root, "m.yaml", _manifest("gone.wasm", "a" * 64))
    result = _check(root, "m.yaml")
    assert result.exit_code == 2, result.output
    assert "[tool.module.missing]" in result.stderr


def _refuse_reading(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """``Path.read_bytes`` of ``name`` fails as an unreadable file does (as root, chmod 000 does not)."""
    real = Path.read_bytes

    def refuse(path: Path) -> bytes:
        if path.name == name:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    real_open = os.open

    def refuse_open(path: Any, *args: Any, **kwargs: Any) -> int:  # files hashed as they are read
        if os.path.basename(os.fspath(path)) == name:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse_open)


def test_an_unreadable_module_is_invalid_input(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(root, "m.yaml", _manifest("tool.wasm", hashlib.sha256(WASM).hexdigest()))
    _refuse_reading(monkeypatch, "tool.wasm")
    result = _check(root, "m.yaml")
    assert result.exit_code == 2, result.output
    assert "[tool.module.unreadable]" in result.stderr and "Permission denied" in result.stderr


def test_an_unreadable_stdin_is_invalid_input(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (root / "in.txt").write_text("x")
    job = "{name: a, tool: t, stdin: in.txt}"
    _write(root, "m.yaml", _manifest("tool.wasm", hashlib.sha256(WASM).hexdigest(), job=job))
    _refuse_reading(monkeypatch, "in.txt")
    result = _check(root, "m.yaml")
    assert result.exit_code == 2, result.output
    assert "[stdin.missing]" in result.stderr and "cannot be read" in result.stderr


def test_a_malformed_key_in_the_policy_is_invalid_input(root: Path) -> None:
    _write(root, "m.yaml", _manifest("tool.wasm", hashlib.sha256(WASM).hexdigest()))
    policy = POLICY + "signatures:\n  trusted_keys:\n    - {id: k, public_key: bm90IGEga2V5}\n"
    _write(root, "bad-key.yaml", policy)
    result = _check(root, "m.yaml", policy="bad-key.yaml")
    assert result.exit_code == 2, result.output
    assert "[policy.key-invalid]" in result.stderr


# -- not WebAssembly ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "shown"),
    [
        (b'(module (func (export "_start")))', "b'(module (func (e'"),
        (b"\x1b]0;owned\x07 not wasm", "b'\\x1b]0;owned\\x07 not w'"),
    ],
)
def test_check_refuses_a_file_that_is_not_webassembly(root: Path, data: bytes, shown: str) -> None:
    (root / "text.wasm").write_bytes(data)
    _write(root, "m.yaml", _manifest("text.wasm", hashlib.sha256(data).hexdigest()))
    result = _check(root, "m.yaml")
    assert result.exit_code == 2, result.output
    assert "[tool.module.not-wasm]" in result.stderr and shown in result.stderr
    assert "\x1b" not in result.output


def test_exec_refuses_a_wat_file_instead_of_running_it(root: Path) -> None:
    (root / "t.wasm").write_text('(module (func (export "_start")))')
    result = CliRunner().invoke(
        cli, ["exec", "--root", str(root), "--out", str(root / "out"), str(root / "t.wasm")]
    )
    assert result.exit_code == 2, result.output
    assert "[tool.module.not-wasm]" in result.stderr


# -- network CIDR entries -----------------------------------------------------------------------


def test_a_cidr_allow_entry_passes_the_schema_as_documented(root: Path) -> None:
    job = '{name: a, tool: t, network: {allow: ["tcp://10.0.0.0/8:5000..5100", "tcp://[2001:db8::]/32:80"]}}'
    _write(root, "m.yaml", _manifest("tool.wasm", hashlib.sha256(WASM).hexdigest(), job=job))
    result = _check(root, "m.yaml")
    # the IPv4 entry is covered by the policy; the IPv6 one passes the schema and is only uncovered
    assert result.exit_code == 3, result.output
    assert "[network.uncovered]" in result.stderr and "/network/allow/1" in result.stderr
    assert "/network/allow/0" not in result.stderr


# -- check DIR reads manifests only -------------------------------------------------------------


def test_check_dir_skips_workflows_and_the_policy_with_a_count(root: Path) -> None:
    _write(root, "m.yaml", _manifest("tool.wasm", hashlib.sha256(WASM).hexdigest()))
    _write(root, ".github/workflows/ci.yml", "on: [push]\njobs:\n  x: {runs-on: ubuntu-latest}\n")
    _write(root, ".github/workflows/anchors.yml", "a: &x 1\nb: *x\n")  # not strict YAML, not ours
    result = _check(root, ".")
    assert result.exit_code == 0, result.output
    assert "skipped 3 YAML file(s)" in result.stderr  # two workflows and policy.yaml


def test_check_dir_still_reports_what_claims_to_be_a_manifest(root: Path) -> None:
    _write(root, "typo.yaml", "apiVersion: sandrun/v1\nkind: Manfest\nmetadata: {name: x}\njobs: []\n")
    _write(root, "broken.yaml", "apiVersion: sandrun/v1\nkind: Manifest\nmetadata: {name: &a x}\n")
    result = _check(root, ".")
    assert result.exit_code == 2, result.output
    assert "typo.yaml" in result.stderr and "[schema.const]" in result.stderr
    assert "broken.yaml" in result.stderr and "[yaml.alias]" in result.stderr


def test_check_dir_with_no_manifest_at_all_says_so(root: Path) -> None:
    result = _check(root, ".")
    assert result.exit_code == 2
    assert "[input.empty]" in result.stderr and "1 other YAML file(s) skipped" in result.stderr


def test_a_named_file_is_always_read_as_a_manifest(root: Path) -> None:
    result = _check(root, "policy.yaml")
    assert result.exit_code == 2 and "[schema.const]" in result.stderr


# -- outside the root, from a subfolder ---------------------------------------------------------


def test_outside_the_root_from_a_subfolder_suggests_root(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(root, "sub/m.yaml", _manifest("../tool.wasm", hashlib.sha256(WASM).hexdigest()))
    _write(root, "sub/policy.yaml", POLICY)
    monkeypatch.chdir(root / "sub")
    result = CliRunner().invoke(cli, ["check", "m.yaml", "--policy", "policy.yaml"])
    assert result.exit_code == 3, result.output
    assert "[tool.module.outside-root]" in result.stderr
    assert f"--root {root.resolve()}" in result.stderr


# -- a reader that stops reading ----------------------------------------------------------------


def test_check_piped_into_head_ends_quietly_with_its_own_exit_code(root: Path) -> None:
    jobs = "\n".join(f"  - {{name: j{i}, tool: nosuch}}" for i in range(3000))  # ~400 KB of annotations
    _write(root, "m.yaml", _manifest("tool.wasm", hashlib.sha256(WASM).hexdigest(), job="{name: a, tool: t}"))
    (root / "m.yaml").write_text((root / "m.yaml").read_text() + jobs + "\n")
    _write(
        root, "policy.yaml", "apiVersion: sandrun/v1\nkind: Policy\nmetadata: {name: p}\nfs: {roots: [.]}\n"
    )
    command = (
        f"{sys.executable} -m runner check m.yaml --policy policy.yaml --format github | head -1; "
        "exit ${PIPESTATUS[0]}"
    )
    done = subprocess.run(
        ["bash", "-c", command], cwd=root, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 2, done.stderr  # job.unknown-tool: invalid input, not click's 1
    assert done.stdout.startswith("::error ") and done.stdout.count("\n") == 1
    assert done.stderr == ""


def test_a_closed_stdout_after_success_is_not_an_error(root: Path) -> None:
    _write(root, "m.yaml", _manifest("tool.wasm", hashlib.sha256(WASM).hexdigest()))
    process = subprocess.Popen(
        [sys.executable, "-m", "runner", "check", "m.yaml", "--policy", "policy.yaml", "--format", "json"],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader is gone before sandrun writes a byte
    stderr = process.stderr.read()
    assert process.wait(timeout=300) == 0, stderr
    assert stderr == b""


def test_json_errors_still_print_in_full_when_read(root: Path) -> None:
    _write(root, "m.yaml", _manifest("gone.wasm", "a" * 64))
    result = CliRunner().invoke(
        cli, ["check", str(root / "m.yaml"), "--policy", str(root / "policy.yaml"), "--format", "json"]
    )
    assert json.loads(result.stdout)["exit_code"] == 2
