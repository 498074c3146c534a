"""The signing key is out of reach of the processes that run guests (runner/keyguard.py).

A guest that took its worker over through a Wasmtime bug runs as the runner's user: these tests
read what it could read, ``/proc/PID/environ`` of its worker and of the forkserver the worker came
from, while a job runs with ``$SANDRUN_SIGNING_KEY`` set as CI sets it.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import time
from pathlib import Path

import wasmtime
from cli_process import workers_of
from test_cli_workers import SLEEP, project, wait_for_started

from runner.keyguard import WITHHELD, shield_process

KEY = Path(__file__).resolve().parents[1] / "keys" / "examples-2026.key"
_PR_GET_DUMPABLE, _PR_SET_DUMPABLE = 3, 4


def _environ(pid: int) -> bytes:
    return Path(f"/proc/{pid}/environ").read_bytes()


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _keyed_env(folder: Path) -> dict[str, str]:
    return {
        **os.environ,
        "CI": "true",
        "SANDRUN_SIGNING_KEY": KEY.read_text(),
        "XDG_STATE_HOME": str(folder / "state"),
        "XDG_CACHE_HOME": str(folder / "cache"),
    }


def _start_keyed(folder: Path, *args: str) -> subprocess.Popen[str]:
    """``sandrun ARGS`` with the key in its environment, as CI passes it."""
    return subprocess.Popen(
        [sys.executable, "-m", "runner", *args],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_keyed_env(folder),
    )


def _worker_of(proc: subprocess.Popen[str]) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        found = workers_of(proc.pid)
        if found:
            return found[0]
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no worker appeared: {proc.communicate()}")


def _assert_key_out_of_reach(proc: subprocess.Popen[str], worker: int) -> None:
    marker = b"SANDRUN_SIGNING_KEY="
    assert marker in _environ(proc.pid)  # the runner was given it: the check below can fail
    for pid in (worker, _parent(worker)):  # the worker, and the forkserver it came from
        assert _parent(worker) != proc.pid  # not forked from the runner, whose memory holds it
        assert marker not in _environ(pid), pid
        assert b"BEGIN PRIVATE KEY" not in _environ(pid), pid


def test_no_worker_of_a_run_or_its_forkserver_holds_the_key_from_the_environment(tmp_path: Path) -> None:
    project(tmp_path, "  - {name: long, tool: sleep, limits: {timeout: 5m}}\n")
    proc = _start_keyed(tmp_path, "run", "m.yaml", "--policy", "policy.yaml", "--out", "out")
    try:
        wait_for_started(tmp_path, 1)
        _assert_key_out_of_reach(proc, _worker_of(proc))
    finally:
        proc.kill()
        proc.wait()


def test_exec_with_the_key_in_its_environment_takes_its_worker_from_the_forkserver(tmp_path: Path) -> None:
    """``exec`` otherwise forks its worker from the CLI, which would copy the environment block."""
    (tmp_path / "sleep.wasm").write_bytes(wasmtime.wat2wasm(SLEEP))
    proc = _start_keyed(tmp_path, "exec", "--timeout", "1m", "sleep.wasm")
    try:
        _assert_key_out_of_reach(proc, _worker_of(proc))
    finally:
        proc.kill()
        proc.wait()


_DUMPABLE_AFTER_RUN = f"""
import ctypes
from runner.cli import main

try:
    main(["run", "m.yaml", "--policy", "policy.yaml", "--out", "out", "--signing-key", {str(KEY)!r}])
except SystemExit as ended:
    print("exit", ended.code)
print("dumpable", ctypes.CDLL(None).prctl({_PR_GET_DUMPABLE}, 0, 0, 0, 0))
"""


def test_a_runner_that_loaded_the_key_is_not_dumpable(tmp_path: Path) -> None:
    """Other processes of the user (a guest that escaped) can then neither read its memory nor
    attach to it, and no core dump holds the key."""
    project(tmp_path, "  - {name: quick, tool: ok}\n")
    ran = subprocess.run(
        [sys.executable, "-c", _DUMPABLE_AFTER_RUN],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "CI": "true"},
    )
    assert ran.stdout.splitlines()[-2:] == ["exit 0", "dumpable 0"], ran.stdout + ran.stderr


def test_a_check_that_loads_no_key_leaves_the_process_dumpable(tmp_path: Path) -> None:
    project(tmp_path, "  - {name: quick, tool: ok}\n")
    script = _DUMPABLE_AFTER_RUN.replace(f', "--signing-key", {str(KEY)!r}', "")
    ran = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={k: v for k, v in os.environ.items() if k not in WITHHELD},
    )
    assert ran.stdout.splitlines()[-1] == "dumpable 1", ran.stdout + ran.stderr


def test_shield_process_makes_its_process_non_dumpable() -> None:
    """In a child (this test process may have loaded a key through the CLI already)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        libc = ctypes.CDLL(None)
        libc.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)
        before = libc.prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0)
        shield_process()
        os._exit(10 * before + libc.prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0))
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 10  # dumpable before, not after
