"""The CLI as users meet it: start-up cost, keys/sign/verify, schema, check formats, compile."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_process import REPO, sandrun
from click.testing import CliRunner

from runner.cli import cli

CASES = REPO / "tests" / "cases"
POLICY = CASES / "_shared" / "policy.yaml"


def test_help_does_not_import_wasmtime_or_jsonschema() -> None:
    code = (
        "import sys; from runner.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('LOADED', [m for m in ('wasmtime', 'jsonschema', 'cryptography', 'yaml') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "LOADED []" in out
    assert "Exit codes" in out


def test_keys_sign_verify_round_trip(tmp_path: Path) -> None:
    module = tmp_path / "tool.wasm"
    module.write_bytes(b"\0asm\1\0\0\0")
    generated = sandrun("keys", "generate", "--id", "ci-key", "--out", str(tmp_path / "keys"))
    assert generated.returncode == 0, generated.stderr
    assert (tmp_path / "keys" / "ci-key.key").read_text() not in generated.stdout + generated.stderr
    signed = sandrun("sign", str(module), "--key", str(tmp_path / "keys" / "ci-key.key"))
    assert signed.returncode == 0, signed.stderr
    sig = signed.stdout.split("sig: ")[1].rstrip("}\n")
    assert "signature: {key: ci-key," in signed.stdout
    ok = sandrun("verify", str(module), "--sig", sig, "--pub", str(tmp_path / "keys" / "ci-key.pub"))
    assert ok.returncode == 0, ok.stderr
    module.write_bytes(b"\0asm\1\0\0\0\0")
    bad = sandrun("verify", str(module), "--sig", sig, "--pub", str(tmp_path / "keys" / "ci-key.pub"))
    assert bad.returncode == 3
    garbled = sandrun("verify", str(module), "--sig", sig, "--pub", "not-a-key")
    assert (
        garbled.returncode == 2 and "[keys.invalid]" in garbled.stderr and "Traceback" not in garbled.stderr
    )
    assert "[signature.invalid]" in bad.stderr and "Traceback" not in bad.stderr


def test_sign_with_a_missing_or_bad_key_is_one_line(tmp_path: Path) -> None:
    module = tmp_path / "tool.wasm"
    module.write_bytes(b"\0asm\1\0\0\0")
    (tmp_path / "bad.key").write_text("not a key")
    for key in (tmp_path / "missing.key", tmp_path / "bad.key"):
        result = sandrun("sign", str(module), "--key", str(key))
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1 and "[keys.invalid]" in result.stderr


@pytest.mark.parametrize("kind", ["manifest", "policy"])
def test_schema_prints_a_2020_12_schema(kind: str) -> None:
    result = CliRunner().invoke(cli, ["schema", kind])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["properties"]["kind"]["const"] == kind.capitalize()


def test_check_formats_json_and_github() -> None:
    case = CASES / "sha256-mismatch" / "manifest.yaml"
    args = ["check", str(case), "--policy", str(POLICY), "--root", str(CASES)]
    as_json = CliRunner().invoke(cli, [*args, "--format", "json"])
    assert as_json.exit_code == 3
    data = json.loads(as_json.stdout)
    assert data["ok"] is False and data["violations"][0]["rule_id"] == "tool.digest"
    assert data["violations"][0]["location"]["pointer"] == "/tools/hello/sha256"
    github = CliRunner().invoke(cli, [*args, "--format", "github"])
    assert github.exit_code == 3
    assert github.stdout.startswith("::error file=") and ",line=5," in github.stdout
    assert "title=tool.digest::" in github.stdout


def test_compile_writes_a_canonical_plan_that_round_trips(tmp_path: Path) -> None:
    from runner.plan import Plan

    out = tmp_path / "plan.json"
    result = CliRunner().invoke(
        cli,
        [
            "compile",
            str(CASES / "valid" / "manifest.yaml"),
            "--policy",
            str(POLICY),
            "--root",
            str(CASES),
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    raw = out.read_bytes().rstrip(b"\n")
    plan = Plan.from_dict(json.loads(raw))
    assert plan.to_json() == raw
    assert [job.id for job in plan.jobs] == ["valid/first", "valid/second"]


def test_missing_paths_and_bad_flags_exit_2_without_traceback(tmp_path: Path) -> None:
    missing = sandrun("check", str(tmp_path / "nope.yaml"), "--policy", str(POLICY))
    assert missing.returncode == 2 and "[input.missing]" in missing.stderr
    flag = sandrun("check", "--no-such-flag")
    assert flag.returncode == 2 and "Traceback" not in flag.stderr
