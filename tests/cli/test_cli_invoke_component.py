"""Typed invoke of a component built from a WIT world (issue 12: "a typed-export component from a
WIT world").

The guest is ``tests/fixtures/components/calc.wasm``: the world ``calc`` of
``tests/fixtures/components/calc.wit``, implemented by ``tests/fixtures/components/src/calc.c``
(the canonical ABI by hand) and made a component by ``scripts/build-components.sh`` (zig cc, jco
embed, jco new). Each export exercises other WAVE types: integers, strings and chars, a list and a
record with an option, a result of flags, an enum, a variant. Calls run through the CLI, as CI runs
them; bad arguments are refused before any guest code, with one line naming the rule.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import wasmtime
import wasmtime.component as wc
from cli_process import REPO, sandrun
from test_cli_components import project, run, verified
from test_cli_workers import jobs_by_name

HERE = REPO / "tests" / "fixtures" / "components"
CALC = (HERE / "calc.wasm").read_bytes()

# (call, what `wasmtime run --invoke` prints, the results as report.json's JSON)
CALLS = [
    ("add(40, 2)", "42", [42]),
    ("add(4294967295, 1)", "0", [0]),  # u32 arithmetic wraps in the guest
    ('greet("Wasm")', '"Hello, Wasm!"', ["Hello, Wasm!"]),  # the trailing option argument left out
    ("greet(\"\u2603\", some('?'))", '"Hello, \u2603?"', ["Hello, \u2603?"]),
    # a control character in a result is escaped: a guest cannot write a raw escape to the terminal
    ('greet("\\u{1b}[2J")', '"Hello, \\u{1b}[2J!"', ["Hello, \x1b[2J!"]),
    ("stats([3, -7, 12])", "{count: 3, sum: 8, min: some(-7)}", [{"count": 3, "sum": 8, "min": -7}]),
    ("stats([])", "{count: 0, sum: 0}", [{"count": 0, "sum": 0, "min": None}]),
    ('parse-perms("rw-")', "ok({read, write})", [{"ok": ["read", "write"]}]),
    (
        'parse-perms("rwxr")',
        'err("expected three characters like \\"rw-\\"")',
        [{"err": 'expected three characters like "rw-"'}],
    ),
    ("to-bytes(4294967295, mib)", "4503599626321920", [4503599626321920]),
    ("area(rect((3, 4)))", "12", [12]),
    ("area(square(5))", "25", [25]),
    ("area(point)", "0", [0]),
]

# (call, the rule that refuses it)
REFUSED = [
    ("add(1, 4294967296)", "invoke.out-of-range"),
    ("add(-1, 2)", "invoke.out-of-range"),
    ("stats([1, 2147483648])", "invoke.out-of-range"),
    ("greet(42)", "invoke.type"),
    ('add("1", 2)', "invoke.type"),
    ("to-bytes(1, gib)", "invoke.type"),
    ("area(circle(1))", "invoke.type"),
    ("parse-perms(ok)", "invoke.type"),
    ("add(1)", "invoke.arity"),
    ('greet("a", none, 3)', "invoke.arity"),
    ("multiply(2, 3)", "invoke.export"),
]


def exec_calc(tmp_path: Path, call: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "calc.wasm").write_bytes(CALC)
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    return sandrun("exec", "--invoke", call, "calc.wasm", cwd=tmp_path, env=env)


@pytest.mark.parametrize(("call", "printed"), [(call, printed) for call, printed, _ in CALLS])
def test_exec_prints_each_export_s_results_as_wasmtime_does(tmp_path: Path, call: str, printed: str) -> None:
    ran = exec_calc(tmp_path, call)
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, printed + "\n", "")


@pytest.mark.parametrize(
    ("call", "rule"), [*REFUSED, ("add(1,", "invoke.malformed"), ("add(1) x", "invoke.malformed")]
)
def test_exec_refuses_a_bad_call_with_one_line_and_exit_2(tmp_path: Path, call: str, rule: str) -> None:
    ran = exec_calc(tmp_path, call)
    assert (ran.returncode, ran.stdout) == (2, ""), ran.stderr
    assert len(ran.stderr.splitlines()) == 1 and f"/jobs/0/invoke [{rule}] " in ran.stderr, ran.stderr


def test_a_run_invokes_every_export_reports_wave_and_json_and_fails_refused_calls(tmp_path: Path) -> None:
    calls = [*((call, None) for call, _, _ in CALLS), *REFUSED]
    jobs = "".join(
        f"  - {{name: j{i}, tool: calc, invoke: {json.dumps(call)}}}\n" for i, (call, _) in enumerate(calls)
    )
    project(tmp_path, jobs, tools={"calc": CALC})
    ran = run(tmp_path, "--jobs", "2")
    assert ran.returncode == 1, ran.stderr  # the refused calls fail their jobs, the run goes on
    rows = jobs_by_name(tmp_path)
    for i, (call, printed, results) in enumerate(CALLS):
        row = rows[f"j{i}"]
        assert row["status"] == "passed", (call, row)
        assert row["invoke"] == {"export": call.split("(")[0], "wave": printed, "json": results}, call
        assert row["invoke_results"] == [printed]
    for i, (call, rule) in enumerate(REFUSED, start=len(CALLS)):
        row = rows[f"j{i}"]
        assert row["status"] == "failed" and row["invoke"]["rule"] == rule, (call, row)
        assert str(row["reason"]).startswith(f"invoke refused: [{rule}] "), row["reason"]
    verified(tmp_path)


def test_check_refuses_a_malformed_call_before_any_run(tmp_path: Path) -> None:
    project(
        tmp_path,
        "  - {name: ok, tool: calc, invoke: 'add(1, 2)'}\n"
        "  - {name: bad, tool: calc, invoke: 'stats([1, 2'}\n",
        tools={"calc": CALC},
    )
    checked = sandrun("check", "m.yaml", "--policy", "policy.yaml", cwd=tmp_path)
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert "/jobs/1/invoke [invoke.malformed]" in checked.stderr


def test_the_component_exports_exactly_the_functions_its_wit_world_declares() -> None:
    declared = re.findall(r"^\s*export ([a-z][a-z0-9-]*): func", (HERE / "calc.wit").read_text(), re.M)
    engine = wasmtime.Engine()
    component = wc.Component(engine, CALC).type
    assert sorted(component.exports(engine)) == sorted(declared)
    assert dict(component.imports(engine)) == {}  # no libc, no WASI: nothing to grant
    assert len(declared) == 6


def _sections(wasm: bytes) -> list[tuple[int, bytes]]:
    """The (id, body) sections of a module or component binary, past its 8-byte preamble."""
    found, at = [], 8
    while at < len(wasm):
        section, size, shift = wasm[at], 0, 0
        at += 1
        while True:
            byte = wasm[at]
            at, size, shift = at + 1, size | (byte & 0x7F) << shift, shift + 7
            if byte < 0x80:
                break
        found.append((section, wasm[at : at + size]))
        at += size
    return found


@pytest.mark.skipif(
    importlib.util.find_spec("ziglang") is None, reason="needs ziglang (pip install -e '.[dev]')"
)
def test_the_component_s_core_module_is_the_committed_c_source_built(tmp_path: Path) -> None:
    """calc.c rebuilt here is, custom sections aside, the one core module (section 1) the
    component embeds: the committed bytes come from the committed source."""
    core = tmp_path / "calc.core.wasm"
    flags = ["cc", "--target=wasm32-wasi", "-O2", "-s", "-nostdlib", "-Wl,--no-entry"]  # as the script
    subprocess.run(
        [sys.executable, "-m", "ziglang", *flags, "-o", str(core), str(HERE / "src" / "calc.c")],
        check=True,
        capture_output=True,
        timeout=600,
    )
    embedded = [body for section, body in _sections(CALC) if section == 1]
    assert len(embedded) == 1

    def code(module: bytes) -> list[tuple[int, bytes]]:
        return [(section, body) for section, body in _sections(module) if section != 0]

    assert code(embedded[0]) == code(core.read_bytes())
