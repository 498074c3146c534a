"""``sandrun exec`` where ``wasmtime run`` users expect it (issue 10, item 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import wasmtime
from cli_process import REPO, sandrun

PROBE = REPO / "tests" / "fixtures" / "probe.wasm"

_CALC = """
(module
  (memory (export "memory") 1)
  (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add)
  (func (export "pair") (param f64) (result f64 i64) local.get 0 i64.const -7)
  (func (export "_start") (call $boom))
  (func $boom unreachable))
"""


def _state(tmp_path: Path) -> dict[str, str]:
    return {"XDG_STATE_HOME": str(tmp_path / "state")}


def _project(tmp_path: Path) -> Path:
    """A project folder to run from, and a module elsewhere on disk (outside that folder)."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "data.txt").write_text("project data\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(PROBE, elsewhere / "probe.wasm")
    (elsewhere / "calc.wasm").write_bytes(wasmtime.wat2wasm(_CALC))
    return project


def test_a_module_outside_the_folder_runs_but_mounts_stay_checked(tmp_path: Path) -> None:
    project = _project(tmp_path)
    ran = sandrun("exec", "../elsewhere/probe.wasm", "argv", cwd=project, env=_state(tmp_path))
    assert ran.returncode == 0, ran.stderr
    assert "argv[0]=probe" in ran.stdout
    escape = sandrun("exec", "--dir", "..", "../elsewhere/probe.wasm", cwd=project, env=_state(tmp_path))
    assert escape.returncode == 3 and "[fs.outside-root]" in escape.stderr


def test_dir_is_spelled_as_wasmtime_spells_it(tmp_path: Path) -> None:
    project = _project(tmp_path)
    (project / "sub").mkdir()
    (project / "sub" / "x.txt").write_text("in sub\n")
    here = sandrun(
        "exec", "--dir", ".", "../elsewhere/probe.wasm", "read", "data.txt", cwd=project, env=_state(tmp_path)
    )
    assert here.returncode == 0, here.stderr
    assert "project data" in here.stdout
    mapped = sandrun(
        "exec",
        "--dir",
        "sub::/s",
        "../elsewhere/probe.wasm",
        "read",
        "/s/x.txt",
        cwd=project,
        env=_state(tmp_path),
    )
    assert mapped.returncode == 0 and "in sub" in mapped.stdout, mapped.stderr
    same = sandrun(
        "exec",
        "--dir",
        "sub",
        "../elsewhere/probe.wasm",
        "read",
        "/sub/x.txt",
        cwd=project,
        env=_state(tmp_path),
    )
    assert same.returncode == 0 and "in sub" in same.stdout, same.stderr


def test_an_unknown_option_is_an_error_not_the_module_path(tmp_path: Path) -> None:
    project = _project(tmp_path)
    wrong = sandrun("exec", "--bogus", "../elsewhere/probe.wasm", cwd=project, env=_state(tmp_path))
    assert wrong.returncode == 2
    assert "--bogus" in wrong.stderr and "cannot read module" not in wrong.stderr
    # after the module, everything is the guest's, options included
    guest = sandrun("exec", "../elsewhere/probe.wasm", "argv", "--bogus", cwd=project, env=_state(tmp_path))
    assert "argv[2]=--bogus" in guest.stdout, guest.stderr  # (the probe then refuses the command)


def test_env_name_alone_passes_the_hosts_value(tmp_path: Path) -> None:
    project = _project(tmp_path)
    env = {**_state(tmp_path), "SANDRUN_TEST_SECRET": "from-host"}
    named = sandrun(
        "exec", "--env", "SANDRUN_TEST_SECRET", "--env", "SANDRUN_TEST_UNSET", "--env", "Y=1",
        "../elsewhere/probe.wasm", "env", cwd=project, env=env,
    )  # fmt: skip
    assert named.returncode == 0, named.stderr
    assert "env SANDRUN_TEST_SECRET=from-host" in named.stdout and "env Y=1" in named.stdout
    assert "SANDRUN_TEST_UNSET" not in named.stdout
    unnamed = sandrun("exec", "../elsewhere/probe.wasm", "env", cwd=project, env=env)
    assert "from-host" not in unnamed.stdout  # the host's environment never leaks unasked


def test_invoke_prints_results_like_wasmtime_and_a_trap_prints_no_rust_panic(tmp_path: Path) -> None:
    project = _project(tmp_path)
    added = sandrun(
        "exec", "--invoke", "add", "../elsewhere/calc.wasm", "2", "40", cwd=project, env=_state(tmp_path)
    )
    assert added.returncode == 0, added.stderr
    assert added.stdout == "42\n"
    pair = sandrun(
        "exec", "--invoke", "pair", "../elsewhere/calc.wasm", "1.5", cwd=project, env=_state(tmp_path)
    )
    assert pair.stdout == "1.5\n-7\n", pair.stderr
    trapped = sandrun("exec", "../elsewhere/calc.wasm", cwd=project, env=_state(tmp_path))
    assert trapped.returncode == 134
    assert "unreachable" in trapped.stderr
    for noise in ("panicked", "backtrace", "RUST_BACKTRACE", "Traceback"):
        assert noise not in trapped.stderr


def test_no_sandrun_out_is_left_behind_and_the_record_goes_to_the_state_folder(tmp_path: Path) -> None:
    project = _project(tmp_path)
    ran = sandrun(
        "exec", "--invoke", "add", "../elsewhere/calc.wasm", "1", "2", cwd=project, env=_state(tmp_path)
    )
    assert ran.returncode == 0, ran.stderr
    assert sorted(p.name for p in project.iterdir()) == ["data.txt"]
    (run,) = (tmp_path / "state" / "sandrun" / "exec").iterdir()
    assert run.stat().st_mode & 0o077 == 0
    report = json.loads((run / "report.json").read_text())
    (job,) = report["jobs"]
    assert job["invoke_results"] == ["3"]
    assert job["fuel_used"] is None  # no fuel metering unless a fuel limit is asked for
    verified = sandrun("audit", "verify", str(run))
    assert verified.returncode == 0, verified.stderr
    out = tmp_path / "out"
    metered = sandrun("exec", "--out", str(out), "--fuel", "1000000", "../elsewhere/calc.wasm", cwd=project)
    assert metered.returncode == 134
    assert json.loads((out / "report.json").read_text())["jobs"][0]["fuel_used"] is not None


def test_only_the_newest_exec_records_are_kept(tmp_path: Path) -> None:
    from runner.api import EXEC_RUNS_KEPT, exec_out_dir

    environ = {"XDG_STATE_HOME": str(tmp_path)}
    folders = [exec_out_dir(environ) for _ in range(EXEC_RUNS_KEPT + 3)]
    kept = sorted((tmp_path / "sandrun" / "exec").iterdir())
    assert len(kept) == EXEC_RUNS_KEPT and folders[-1] in kept and folders[0] not in kept
