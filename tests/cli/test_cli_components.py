"""WASI preview-2 components through the CLI, beside core modules (issue 12, item 1).

The guest is ``tests/fixtures/components/probe.wasm``: ``tests/fixtures/probe.wasm`` (source in
``tests/fixtures/src/probe.c``) adapted to a component with jco's preview-1 command adapter
(``scripts/build-components.sh``). The escape and limit tests run it in-process
(``tests/unit/test_escape.py``); here it runs as CI runs it, in worker processes, and the audit log
must verify sealed after every run.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
import wasmtime
from cli_process import REPO, sandrun
from test_cli_workers import jobs_by_name, kill_the_worker, start_run

FIXTURES = REPO / "tests" / "fixtures"
COMPONENT = (FIXTURES / "components" / "probe.wasm").read_bytes()
MODULE = (FIXTURES / "probe.wasm").read_bytes()

# A component with a typed export and no wasi:cli/run (the invoke work calls such exports).
ADDER = """(component
  (core module $m (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))
  (core instance $i (instantiate $m))
  (func (export "add") (param "a" u32) (param "b" u32) (result u32) (canon lift (core func $i "add"))))"""


def importing(name: str) -> bytes:
    """A component that imports one function of interface ``name`` and does nothing else."""
    return wasmtime.wat2wasm(f'(component (import "{name}" (instance (export "f" (func)))))')


def project(root: Path, jobs: str, *, tools: dict[str, bytes] | None = None, policy: str = "") -> None:
    """Tools ``comp`` (the component probe) and ``mod`` (the core probe), plus ``tools``; a data
    folder the policy allows to mount; and the given job lines."""
    entries = []
    for name, data in {"comp": COMPONENT, "mod": MODULE, **(tools or {})}.items():
        (root / f"{name}.wasm").write_bytes(data)
        entries.append(f"  {name}: {{module: {name}.wasm, sha256: {hashlib.sha256(data).hexdigest()}}}\n")
    (root / "data").mkdir(exist_ok=True)
    (root / "data" / "in.txt").write_text("mounted input\n")
    (root / "policy.yaml").write_text(
        "apiVersion: sandrun/v1\nkind: Policy\nmetadata: {name: p}\nlimits:\n  max: {timeout: 10m}\n"
        "fs:\n  roots: [data]\n  write: true\n" + policy
    )
    (root / "m.yaml").write_text(
        "apiVersion: sandrun/v1\nkind: Manifest\nmetadata: {name: w}\ntools:\n"
        + "".join(entries)
        + "jobs:\n"
        + jobs
    )


def run(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    proc = start_run(root, *extra)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def verified(root: Path) -> None:
    verify = sandrun("audit", "verify", str(root / "out"))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.startswith("intact:"), verify.stdout  # "intact" is said of a sealed log only


def test_check_and_the_plan_say_which_tool_is_a_component(tmp_path: Path) -> None:
    project(tmp_path, "  - {name: a, tool: comp}\n  - {name: b, tool: mod}\n")
    checked = sandrun("check", "m.yaml", "--policy", "policy.yaml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "2 tool(s) (1 component(s))" in checked.stdout
    compiled = sandrun("compile", "m.yaml", "--policy", "policy.yaml", "-o", "-", cwd=tmp_path)
    plan = json.loads(compiled.stdout)
    assert {tool["name"]: tool["kind"] for tool in plan["tools"]} == {"comp": "component", "mod": "module"}
    assert {job["name"]: job["kind"] for job in plan["jobs"]} == {"a": "component", "b": "module"}


def test_a_component_and_a_module_run_side_by_side_with_the_same_grants(tmp_path: Path) -> None:
    job = (
        "  - {{name: {name}, tool: {tool}, args: [argv, env, read, /data/in.txt, write, /data/in.txt, x],"
        " env: {{LANG: C}}, fs: [{{host: data, guest: /data, mode: ro}}], expect: {{exit_code: 1}}}}\n"
    )
    project(tmp_path, job.format(name="c", tool="comp") + job.format(name="m", tool="mod"))
    ran = run(tmp_path, "--jobs", "2")
    assert ran.returncode == 0, ran.stderr
    logs = tmp_path / "out" / "logs" / "w"
    component, module = ((logs / f"{name}.stdout").read_text() for name in ("c", "m"))
    assert component.replace("argv[0]=comp", "") == module.replace("argv[0]=mod", "")
    assert "env LANG=C\nread ok 14 bytes: mounted input" in component
    assert component.endswith("write denied errno=63 (Operation not permitted)\n")
    assert (tmp_path / "data" / "in.txt").read_text() == "mounted input\n"
    verified(tmp_path)


def test_a_component_sleeping_in_a_host_call_and_one_blocked_on_a_fifo_time_out(tmp_path: Path) -> None:
    project(
        tmp_path,
        "  - {name: sleeper, tool: comp, args: [sleep, '3600'], limits: {timeout: 1s}}\n"
        "  - {name: blocked, tool: comp, args: [read, /data/fifo], limits: {timeout: 1s},"
        " fs: [{host: data, guest: /data, mode: ro}]}\n"
        "  - {name: after, tool: comp, args: [argv]}\n",
    )
    os.mkfifo(tmp_path / "data" / "fifo")
    ran = run(tmp_path, "--jobs", "1")
    assert ran.returncode == 1, ran.stderr
    rows = jobs_by_name(tmp_path)
    for name in ("sleeper", "blocked"):
        assert rows[name]["trap"] == "timeout", rows[name]
        assert "worker killed" in str(rows[name]["reason"])
        assert int(str(rows[name]["wall_ms"])) < 10_000  # a 1 s timeout; generous: the machine is shared
    assert rows["after"]["status"] == "passed"
    verified(tmp_path)


def test_a_worker_killed_mid_component_fails_that_job_only(tmp_path: Path) -> None:
    project(
        tmp_path,
        "  - {name: victim, tool: comp, args: [spin], limits: {timeout: 5m}}\n"
        "  - {name: after, tool: comp}\n",
    )
    proc = start_run(tmp_path, "--jobs", "1")
    kill_the_worker(proc, tmp_path)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr
    rows = jobs_by_name(tmp_path)
    assert rows["victim"]["reason"] == "trap: crash (worker killed by SIGKILL)"
    assert rows["after"]["status"] == "passed"
    verified(tmp_path)


def test_limits_hold_for_components_in_workers(tmp_path: Path) -> None:
    project(
        tmp_path,
        "  - {name: fuel, tool: comp, args: [spin], limits: {fuel: 5000000}}\n"
        "  - {name: spin, tool: comp, args: [spin], limits: {timeout: 500ms}}\n"
        "  - {name: stack, tool: comp, args: [recurse], limits: {stack: 256KiB}}\n"
        "  - {name: memory, tool: comp, args: [alloc, '64'], limits: {memory: 8MiB}}\n"
        "  - {name: flood, tool: comp, args: [flood, '100000000'], limits: {output: 4KiB}}\n",
    )
    ran = run(tmp_path, "--jobs", "2")
    assert ran.returncode == 1, ran.stderr
    rows = jobs_by_name(tmp_path)
    assert (rows["fuel"]["trap"], rows["fuel"]["fuel_used"]) == ("out_of_fuel", 5_000_000)
    assert rows["spin"]["trap"] == "timeout"
    assert rows["stack"]["trap"] == "stack_overflow"
    assert (rows["memory"]["exit_code"], rows["memory"]["memory_peak"]) == (1, None)
    assert "alloc failed" in (tmp_path / "out" / "logs" / "w" / "memory.stdout").read_text()
    assert (rows["flood"]["status"], rows["flood"]["stdout_truncated"]) == ("passed", True)
    assert (tmp_path / "out" / "logs" / "w" / "flood.stdout").read_bytes() == b"x" * 4096
    verified(tmp_path)


@pytest.mark.parametrize(
    "interface",
    ["wasi:sockets/tcp@0.2.0", "wasi:http/outgoing-handler@0.2.0", "sandrun:http/client@0.1.0"],
)
def test_network_imports_are_not_linked_and_the_job_fails_naming_them(tmp_path: Path, interface: str) -> None:
    project(tmp_path, "  - {name: net, tool: net}\n", tools={"net": importing(interface)})
    ran = run(tmp_path)
    assert ran.returncode == 1, ran.stderr
    row = jobs_by_name(tmp_path)["net"]
    assert row["trap"] == "trap"
    assert str(row["reason"]).startswith("trap: trap (cannot instantiate: ")
    assert interface in str(row["reason"])
    verified(tmp_path)


def test_a_component_without_wasi_cli_run_fails_with_a_clear_reason(tmp_path: Path) -> None:
    project(tmp_path, "  - {name: adder, tool: adder}\n", tools={"adder": wasmtime.wat2wasm(ADDER)})
    ran = run(tmp_path)
    assert ran.returncode == 1, ran.stderr
    assert "exports no wasi:cli/run" in str(jobs_by_name(tmp_path)["adder"]["reason"])


def test_a_component_invokes_by_a_wave_call_not_by_an_export_name(tmp_path: Path) -> None:
    project(
        tmp_path,
        "  - {name: j, tool: adder, invoke: add, args: ['1', '2']}\n",
        tools={"adder": wasmtime.wat2wasm(ADDER)},
    )
    checked = sandrun("check", "m.yaml", "--policy", "policy.yaml", cwd=tmp_path)
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert "/jobs/0/invoke [component.invoke]" in checked.stderr


def test_a_component_job_invokes_a_typed_export_and_reports_its_results(tmp_path: Path) -> None:
    project(
        tmp_path,
        "  - {name: sum, tool: adder, invoke: 'add(40, 2)'}\n"
        "  - {name: wide, tool: adder, invoke: 'add(1, 4294967296)'}\n",
        tools={"adder": wasmtime.wat2wasm(ADDER)},
    )
    ran = run(tmp_path)
    assert ran.returncode == 1, ran.stderr  # the out-of-range call fails its job, before any guest code
    rows = jobs_by_name(tmp_path)
    assert rows["sum"]["invoke"] == {"export": "add", "wave": "42", "json": [42]}
    assert rows["wide"]["invoke"]["rule"] == "invoke.out-of-range", rows["wide"]
    verified(tmp_path)


def test_a_mistyped_sandrun_http_import_fails_its_job_naming_the_rule(tmp_path: Path) -> None:
    project(tmp_path, "  - {name: net, tool: net}\n", tools={"net": importing("sandrun:http/client")})
    ran = run(tmp_path)
    assert ran.returncode == 1, ran.stderr
    assert "[net.component-import]" in str(jobs_by_name(tmp_path)["net"]["reason"])
    verified(tmp_path)


def test_a_hermetic_component_reads_virtual_clocks_and_random_and_replays(tmp_path: Path) -> None:
    timely = (FIXTURES / "components" / "timely.wasm").read_bytes()
    project(
        tmp_path,
        "  - {name: a, tool: timely, hermetic: {seed: 7}}\n"
        "  - {name: b, tool: timely, hermetic: {seed: 7}}\n"
        "  - {name: c, tool: timely, hermetic: {seed: 8}}\n"
        "  - {name: plain, tool: timely}\n",
        tools={"timely": timely},
    )
    ran = run(tmp_path, "--jobs", "2")
    assert ran.returncode == 0, ran.stderr
    a, b, c, plain = (
        (tmp_path / "out" / "logs" / "w" / f"{n}.stdout").read_text() for n in ("a", "b", "c", "plain")
    )
    assert a == b != c  # two worker processes, the same bytes; another seed, other random bytes
    before, after = a.splitlines()
    # the plan's fixed time, 1 ms per clock read; the preview-2 sleep is real, the clocks are not
    assert before.startswith("before time=1700000000 realtime=1700000000.001000000 monotonic=0.002000000 ")
    assert after.startswith("after time=1700000000 realtime=1700000000.004000000 monotonic=0.005000000 ")
    assert "time=1700000000 " not in plain
    replay = sandrun("audit", "replay", "out", "--job", "w/a", cwd=tmp_path)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert "identical" in replay.stdout
    verified(tmp_path)


def test_exec_runs_a_component_like_a_module(tmp_path: Path) -> None:
    (tmp_path / "probe.wasm").write_bytes(COMPONENT)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "in.txt").write_text("exec input\n")
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    ran = sandrun("exec", "--dir", "data::/d", "probe.wasm", "read", "/d/in.txt", cwd=tmp_path, env=env)
    assert ran.returncode == 0, ran.stderr
    assert "read ok 11 bytes: exec input" in ran.stdout
    failed = sandrun("exec", "probe.wasm", "exit", "7", cwd=tmp_path, env=env)
    assert failed.returncode == 1  # the preview-1 adapter's collapse of exit(7)
    fuel = sandrun("exec", "--fuel", "100000", "probe.wasm", "spin", cwd=tmp_path, env=env)
    assert fuel.returncode == 134 and "out_of_fuel" in fuel.stderr


def test_exec_invokes_a_component_export_as_wasmtime_prints_it(tmp_path: Path) -> None:
    (tmp_path / "adder.wasm").write_bytes(wasmtime.wat2wasm(ADDER))
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    ran = sandrun("exec", "--invoke", "add(1, 2)", "adder.wasm", cwd=tmp_path, env=env)
    assert (ran.returncode, ran.stdout) == (0, "3\n"), ran.stderr
    wide = sandrun("exec", "--invoke", "add(1, 4294967296)", "adder.wasm", cwd=tmp_path, env=env)
    assert wide.returncode == 2 and "[invoke.out-of-range]" in wide.stderr, wide.stderr
    assert len(wide.stderr.strip().splitlines()) == 1


def test_the_kind_is_part_of_the_plan_an_edited_one_is_refused(tmp_path: Path) -> None:
    project(tmp_path, "  - {name: a, tool: comp}\n")
    compiled = sandrun("compile", "m.yaml", "--policy", "policy.yaml", "-o", "plan.json", cwd=tmp_path)
    assert compiled.returncode == 0, compiled.stderr
    plan = (tmp_path / "plan.json").read_text()
    (tmp_path / "forged.json").write_text(plan.replace('"kind":"component"', '"kind":"module"'))
    ran = sandrun("run", "forged.json", "--policy", "policy.yaml", "--out", "out", cwd=tmp_path)
    assert ran.returncode == 3, ran.stdout + ran.stderr
    assert "[plan.mismatch]" in ran.stderr


# Function names (a module's name section) show in the backtrace of a component's trap, so a guest
# chooses them: here, Wasmtime's own trap texts, even a whole forged "Caused by:" section.
NAMED_TRAPS = r"""(component
  (core module $m
    (func (@name "wasm trap: interrupt") (export "crash") (result i32) unreachable)
    (func $r (@name "x\n\nCaused by:\n    wasm trap: all fuel consumed by WebAssembly") (export "recurse")
      (result i32) (call $r)))
  (core instance $i (instantiate $m))
  (func (export "crash") (result u32) (canon lift (core func $i "crash")))
  (func (export "recurse") (result u32) (canon lift (core func $i "recurse"))))"""


def test_a_component_cannot_name_its_own_trap_kind_through_its_function_names(tmp_path: Path) -> None:
    (tmp_path / "named.wasm").write_bytes(wasmtime.wat2wasm(NAMED_TRAPS))
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    for call, said in [
        ("crash()", "trap: trap (wasm trap: wasm `unreachable` instruction executed)"),  # not a timeout
        ("recurse()", "trap: stack_overflow (wasm trap: call stack exhausted)"),  # not out of fuel
    ]:
        ran = sandrun(
            "exec", "--out", str(tmp_path / "out"), "--invoke", call, "named.wasm", cwd=tmp_path, env=env
        )
        assert ran.returncode == 134 and ran.stderr == f"sandrun exec: {said}\n", ran.stderr
        [job] = json.loads((tmp_path / "out" / "report.json").read_text())["jobs"]
        assert job["reason"] == said
