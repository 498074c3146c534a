"""Each class of input that fuzzing turned into an internal error (exit 70), pinned to its answer."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from wasmtime import wat2wasm

from runner.cli import cli

REPO = Path(__file__).resolve().parents[2]
WASM = wat2wasm('(module (func (export "_start")))')
DIGEST = hashlib.sha256(WASM).hexdigest()
POLICY = "apiVersion: sandrun/v1\nkind: Policy\nmetadata: {name: p}\nfs: {roots: [.]}\n"


def _manifest(*, name: str = "m", job: str = "{name: a, tool: t}", extra: str = "") -> str:
    return (
        f"apiVersion: sandrun/v1\nkind: Manifest\nmetadata: {{name: {name}}}\n"
        f"tools:\n  t: {{module: tool.wasm, sha256: {DIGEST}}}\njobs:\n  - {job}\n{extra}"
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "tool.wasm").write_bytes(WASM)
    (tmp_path / "policy.yaml").write_text(POLICY)
    return tmp_path


def _check(root: Path, manifest: str, policy: str = POLICY) -> Result:
    (root / "m.yaml").write_text(manifest)
    (root / "policy.yaml").write_text(policy)
    return CliRunner().invoke(
        cli, ["check", str(root / "m.yaml"), "--policy", str(root / "policy.yaml"), "--root", str(root)]
    )


def _rules(result: Result) -> list[str]:
    return [line.split("[", 1)[1].split("]", 1)[0] for line in result.stderr.splitlines() if "[" in line]


@pytest.mark.parametrize("number", ["0x" + "f" * 5000, "0o" + "7" * 6000, "9" * 5000])
@pytest.mark.parametrize("where", ["name", "limits"])
def test_a_huge_integer_in_any_base_is_invalid_input(root: Path, number: str, where: str) -> None:
    manifest = (
        _manifest(name=number)
        if where == "name"
        else _manifest(job=f"{{name: a, tool: t, limits: {{fuel: {number}}}}}")
    )
    result = _check(root, manifest)
    assert result.exit_code == 2, result.output
    assert _rules(result) == ["yaml.number"]


def test_a_huge_integer_in_a_policy_is_invalid_input(root: Path) -> None:
    result = _check(root, _manifest(), POLICY + "governance: {max_score: 0x" + "f" * 4000 + "}\n")
    assert result.exit_code == 2 and _rules(result) == ["yaml.number"], result.output


@pytest.mark.parametrize("field", ["roots", "write"])
def test_a_symlink_loop_among_policy_roots_is_invalid_input(root: Path, field: str) -> None:
    (root / "loop").symlink_to("loop")
    policy = POLICY.replace(
        "fs: {roots: [.]}",
        f"fs: {{roots: [.], {field}: [loop]}}" if field == "write" else "fs: {roots: [loop, .]}",
    )
    result = _check(root, _manifest(), policy)
    assert result.exit_code == 2, result.output
    assert _rules(result) == ["policy.root-invalid"]


def test_a_root_that_is_a_symlink_loop_is_invalid_input(root: Path) -> None:
    (root / "loop").symlink_to("loop")
    (root / "m.yaml").write_text(_manifest())
    result = CliRunner().invoke(
        cli,
        ["check", str(root / "m.yaml"), "--policy", str(root / "policy.yaml"), "--root", str(root / "loop")],
    )
    assert result.exit_code == 2 and "[root.missing]" in result.stderr, result.output


@pytest.mark.parametrize("what", ["mount", "module", "stdin"])
def test_a_backslash_in_a_real_name_under_the_root_is_refused_cleanly(root: Path, what: str) -> None:
    folder = root / "a\\b"
    folder.mkdir()
    (folder / "tool.wasm").write_bytes(WASM)
    (folder / "in.txt").write_text("x")
    if what == "mount":
        manifest = _manifest(job="{name: a, tool: t, fs: [{host: 'a\\b', guest: /x}]}")
    elif what == "stdin":
        manifest = _manifest(job="{name: a, tool: t, stdin: 'a\\b/in.txt'}")
    else:
        manifest = _manifest().replace("module: tool.wasm", "module: 'a\\b/tool.wasm'")
    result = _check(root, manifest)
    assert result.exit_code == 2, result.output
    assert "[path.backslash]" in result.stderr


def test_a_line_break_in_a_key_cannot_forge_a_second_problem_line(root: Path) -> None:
    forged = "/etc/passwd:1:1: /x [tool.digest] looks real"
    result = _check(root, _manifest(extra=f'"a\\n{forged}": 1\n'))
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "[schema.unknown-field]" in lines[0]
    assert not any(line.startswith("/etc/passwd") for line in lines)
    assert " /a\\n~1etc~1passwd" in lines[0]  # the key, escaped, still names the field


def test_control_characters_in_keys_are_escaped_not_printed(root: Path) -> None:
    result = _check(root, _manifest(extra='"\\e]0;owned\\a\\u202e": 1\n'))
    assert result.exit_code == 2
    assert "\x1b" not in result.stderr and "\u202e" not in result.stderr and "\\x1b" in result.stderr


def test_exec_passes_arguments_above_u_ffff_to_the_guest(tmp_path: Path) -> None:
    probe = (REPO / "tests" / "fixtures" / "probe.wasm").read_bytes()
    (tmp_path / "probe.wasm").write_bytes(probe)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "runner",
            "exec",
            "--root",
            str(tmp_path),
            "--out",
            str(tmp_path / "out"),
            str(tmp_path / "probe.wasm"),
            "argv",
            "😀 \U0010ffff",
            "\\ud83d\\ude00",
        ],
        cwd=tmp_path,
        capture_output=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert b"yaml" not in done.stderr  # the guest ran (probe then calls the unknown command "😀": 2)
    assert "argv[2]=😀 \U0010ffff".encode() in done.stdout
    assert b"argv[3]=\\ud83d\\ude00" in done.stdout  # text that only looks like an escape stays text


def test_exec_refuses_an_argument_that_is_not_unicode(tmp_path: Path) -> None:
    (tmp_path / "t.wasm").write_bytes(WASM)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "runner",
            "exec",
            "--root",
            str(tmp_path),
            "--out",
            str(tmp_path / "out"),
            str(tmp_path / "t.wasm"),
            os.fsdecode(b"\xff\xfe"),
        ],
        cwd=tmp_path,
        capture_output=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 2, done.stderr
    assert b"[input.encoding]" in done.stderr and b"Traceback" not in done.stderr


#: An EC public key on secp112r1, a curve cryptography cannot load (``UnsupportedAlgorithm``).
_SECP112R1_PUB = (
    "-----BEGIN PUBLIC KEY-----\n"
    "MDIwEAYHKoZIzj0CAQYFK4EEAAYDHgAEYFiRXxBA2KZc3a+5Vj08PzcPKMKQPQTE\n"
    "rzH4Ag==\n"
    "-----END PUBLIC KEY-----\n"
)


def test_a_pem_key_on_an_unsupported_curve_is_invalid_input(root: Path) -> None:
    key = _SECP112R1_PUB.replace("\n", "\\n")
    policy = POLICY + f'signatures:\n  trusted_keys:\n    - {{id: k, public_key: "{key}"}}\n'
    result = _check(root, _manifest(), policy)
    assert result.exit_code == 2, result.output
    assert _rules(result) == ["policy.key-invalid"]
    (root / "k.pub").write_text(_SECP112R1_PUB)
    (root / "log").mkdir()
    verify = CliRunner().invoke(cli, ["audit", "verify", str(root / "log"), "--pub", str(root / "k.pub")])
    assert verify.exit_code == 2 and "[keys.invalid]" in verify.stderr, verify.output


@pytest.mark.parametrize("key", ["\\f", "\\u2028", "\\x1c", "\\N", "\\r"])
def test_any_line_break_in_a_key_stays_on_one_annotation_line(root: Path, key: str) -> None:
    (root / "m.yaml").write_text(_manifest(extra=f'"a{key}b": 1\n'))
    result = CliRunner().invoke(
        cli,
        [
            "check",
            str(root / "m.yaml"),
            "--policy",
            str(root / "policy.yaml"),
            "--root",
            str(root),
            "--format",
            "github",
        ],
    )
    assert result.exit_code == 2, result.output
    lines = result.stdout.splitlines()  # Python's splitlines knows every line break there is
    assert len(lines) == 1 and lines[0].startswith("::error ") and "schema.unknown-field" in lines[0]
