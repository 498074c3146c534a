"""No printed line carries a control character or starts a CI workflow command (issue 9, item 10).

Hostile text reaches Sandrun's output from YAML keys, file names, plan and log contents (names,
reasons, policy names, trap messages). Whatever hypothesis makes of them, every line that
``check``, ``run``, ``report`` and ``audit show`` print is free of C0/C1 controls (other than the
line break itself), escape sequences and bidi controls, and only a real ``--format github``
annotation starts with ``::``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from pathlib import Path

import pytest
import wasmtime
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.audit import AuditLog
from runner.cli import cli
from runner.results import TRAP_KINDS

_BIDI = re.compile("[\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_ANNOTATION = re.compile(r"::error [^:\n]*::[^\n]*")

# Text an attacker would pick, mixed with whatever hypothesis finds.
ATTACKS = (
    "\x1b[2J\x1b]0;owned\x07",
    "::error file=x::forged",
    "\n::add-mask::secret",
    "##[error]legacy ##vso[task.complete]",
    "\x9b31m\x85\u2028\u202eevil",
    "\r::set-output name=x::y",
    ":",
    "\x00\x7f",
)
hostile = st.one_of(st.sampled_from(ATTACKS), st.text(min_size=1, max_size=40)).filter(
    lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s)
)
SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def assert_safe(output: str, *, github: bool = False) -> None:
    for line in output.split("\n"):
        bad = [c for c in line if unicodedata.category(c) == "Cc" or _BIDI.match(c)]
        assert not bad, (line, bad)
        if line.startswith("::"):
            assert github and _ANNOTATION.fullmatch(line) and line.count("::") == 2, line
        assert not line.lstrip().startswith(("##[", "##vso[")), line


def _cli(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code in (0, 1, 2, 3, 4), result.output
    return result.output


def _file_name(text: str) -> str:
    """A file name made of ``text`` (what a file system allows), ending in .yaml."""
    name = text.replace("/", "_").replace("\0", "_")
    name = name.encode("utf-8", "surrogateescape")[:150].decode("utf-8", "ignore")
    return (name if name not in ("", ".", "..") else "_") + ".yaml"


MODULE = wasmtime.wat2wasm('(module (memory (export "memory") 1) (func (export "_start")))')
POLICY = "apiVersion: sandrun/v1\nkind: Policy\nmetadata: {name: p}\n"


def _manifest(key: str | None) -> str:
    document: dict[str, object] = {
        "apiVersion": "sandrun/v1",
        "kind": "Manifest",
        "metadata": {"name": "m"},
        "tools": {"t": {"module": "tool.wasm", "sha256": hashlib.sha256(MODULE).hexdigest()}},
        "jobs": [{"name": "j", "tool": "t"}],
    }
    if key is not None:
        document[key] = 1  # an unknown field, named in the error line (and its JSON pointer)
    return json.dumps(document)  # JSON is YAML; \u escapes carry any character into the key


@SETTINGS
@given(key=st.none() | hostile, file=hostile, fmt=st.sampled_from(["text", "github", "json"]))
def test_check_and_run_print_hostile_keys_and_file_names_neutralised(
    tmp_path_factory: pytest.TempPathFactory, key: str | None, file: str, fmt: str
) -> None:
    folder = tmp_path_factory.mktemp("hostile")
    (folder / "tool.wasm").write_bytes(MODULE)
    (folder / "p.yaml").write_text(POLICY)
    name = _file_name(file)
    try:
        (folder / name).write_text(_manifest(key))
    except (OSError, UnicodeEncodeError):
        return  # a name this file system refuses
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        assert_safe(_cli("check", name, "--policy", "p.yaml", "--format", fmt), github=fmt == "github")
        if key is not None:  # refused before any job: cheap, and prints the same kinds of lines
            assert_safe(_cli("run", name, "--policy", "p.yaml", "--out", "out"))
        assert_safe(_cli("check", name, "missing-" + name, "--policy", "p.yaml"))
    finally:
        os.chdir(cwd)


def test_a_run_with_a_hostile_file_name_prints_clean_lines(tmp_path: Path) -> None:
    (tmp_path / "tool.wasm").write_bytes(MODULE)
    (tmp_path / "p.yaml").write_text(POLICY)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for attack in ATTACKS:
            name = _file_name(attack)
            Path(name).write_text(_manifest(None))
            assert_safe(_cli("run", name, "--policy", "p.yaml", "--out", "out"))
    finally:
        os.chdir(cwd)


def _hostile_log(out: Path, texts: list[str], trap: str | None) -> None:
    """A genuinely written, sealed log whose names, reasons and policy name are hostile."""
    with AuditLog.open(out, run_id="r1") as log:
        log.append("run.started", {"sandrun": texts[0], "sources": texts})
        log.append("plan.compiled", {"plan_sha256": texts[1], "policy": {"name": texts[2]}, "jobs": texts})
        for index, text in enumerate(texts):
            log.append(
                "job.finished",
                {
                    "manifest": text,
                    "name": texts[-1 - index],
                    "tool": text,
                    "module_sha256": text,
                    "status": "failed",
                    "exit_code": None if trap else 1,
                    "trap": trap,
                    "fuel_used": None,
                    "memory_peak": None,
                    "wall_ms": 1,
                    "stdout_sha256": text,
                    "stderr_sha256": None,
                    "stdout_truncated": False,
                    "stderr_truncated": True,
                    "reason": text,
                    "trap_message": text,
                    "index": index,
                },
            )
        log.seal(None)


@SETTINGS
@given(
    texts=st.lists(hostile, min_size=3, max_size=4),
    trap=st.sampled_from([None, *TRAP_KINDS, "\x1b[31m::error::trap"]),
)
def test_report_and_show_print_a_hostile_log_neutralised(
    tmp_path_factory: pytest.TempPathFactory, texts: list[str], trap: str | None
) -> None:
    out = tmp_path_factory.mktemp("log")
    _hostile_log(out, texts, trap)
    for fmt in ("md", "json", "junit", "html"):
        assert_safe(_cli("report", str(out), "--format", fmt))
    for fmt in ("text", "json"):
        assert_safe(_cli("audit", "show", str(out), "--format", fmt))
        assert_safe(_cli("audit", "show", str(out), "--format", fmt, "--job", texts[0]))
    assert_safe(_cli("audit", "verify", str(out)))
