"""``sandrun exec`` runs its one job in a worker forked straight from the CLI process (no
forkserver: bench/bench_startup.py), with the guarantees of every worker (issue 9): the hard
wall-clock kill, crash isolation, the OS memory budget, and no process left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import wasmtime
from cli_process import workers_of
from test_cli_workers import FIFO, SLEEP

from runner import worker


def _env(folder: Path) -> dict[str, str]:
    """The folder's own state and module cache: no other process can empty or fill the cache."""
    return {**os.environ, "XDG_STATE_HOME": str(folder / "state"), "XDG_CACHE_HOME": str(folder / "cache")}


def _start(folder: Path, *args: str, stdin: int | None = None) -> subprocess.Popen[str]:
    """``sandrun exec ARGS`` in its own process group (so whatever it forks can be found)."""
    return subprocess.Popen(
        [sys.executable, "-m", "runner", "exec", *args],
        cwd=folder,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(folder),
        start_new_session=True,
    )


def _group_gone(pgid: int) -> bool:
    """True once no process of the group is left (waits up to 10 s for the last to exit)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def _group_commands(pgid: int) -> list[str]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getpgid(int(entry)) != pgid:
                continue
            found.append(Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, ProcessLookupError):
            continue
    return found


def _worker_while_running(proc: subprocess.Popen[str]) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = workers_of(proc.pid)
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError("no worker appeared")


def test_the_worker_is_forked_directly_and_carries_the_memory_budget(tmp_path: Path) -> None:
    (tmp_path / "sleep.wasm").write_bytes(wasmtime.wat2wasm(SLEEP))
    # a module compiled for the first time is compiled from a forkserver (docs/exec.md): compile
    # and cache it first, so the run below is the warm path whose process tree is checked
    warm = [sys.executable, "-m", "runner", "exec", "--timeout", "100ms", "sleep.wasm"]
    done = subprocess.run(warm, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 134, done.stderr
    proc = _start(tmp_path, "--timeout", "2m", "--memory", "16MiB", "sleep.wasm")
    try:
        pid = _worker_while_running(proc)
        assert int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) == proc.pid
        assert not [c for c in _group_commands(proc.pid) if "forkserver" in c or "resource_tracker" in c]
        deadline = time.monotonic() + 30
        limit = ""
        while time.monotonic() < deadline:  # RLIMIT_DATA is lowered once the job starts
            limit = next(x for x in Path(f"/proc/{pid}/limits").read_text().splitlines() if "data" in x)
            if limit.split()[3] != "unlimited":
                break
            time.sleep(0.05)
        assert limit.split()[3] != "unlimited", limit
        os.kill(pid, signal.SIGKILL)  # crash isolation: the job fails, the CLI says how
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 134, stderr
    assert "crash (worker killed by SIGKILL)" in stderr
    assert _group_gone(proc.pid)


def test_a_guest_blocked_in_a_host_call_is_killed_at_the_deadline(tmp_path: Path) -> None:
    (tmp_path / "fifo.wasm").write_bytes(wasmtime.wat2wasm(FIFO))
    (tmp_path / "data").mkdir()
    os.mkfifo(tmp_path / "data" / "fifo")
    proc = _start(tmp_path, "--timeout", "1s", "--dir", "data", "fifo.wasm")
    _, stderr = proc.communicate(timeout=120)  # the 1 s timeout + 0.5 s grace, on a slow machine
    assert proc.returncode == 134, stderr
    assert "still blocked in a host call: worker killed" in stderr
    assert _group_gone(proc.pid)


READ_STDIN = """(module
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 64))
    (drop (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))))"""


def test_a_guest_blocked_reading_an_open_stdin_is_killed_at_the_deadline(tmp_path: Path) -> None:
    """exec's guest reads the runner's own stdin: a pipe nobody writes to or closes blocks that
    read for good, which only the worker's kill ends."""
    (tmp_path / "read.wasm").write_bytes(wasmtime.wat2wasm(READ_STDIN))
    read_end, write_end = os.pipe()  # the write end stays open until the end of the test
    try:
        proc = _start(tmp_path, "--timeout", "1s", "read.wasm", stdin=read_end)
        _, stderr = proc.communicate(timeout=120)  # the 1 s timeout + 0.5 s grace, on a slow machine
    finally:
        os.close(read_end)
        os.close(write_end)
    assert proc.returncode == 134, stderr
    assert "still blocked in a host call: worker killed" in stderr
    assert _group_gone(proc.pid)


def test_a_refused_exec_leaves_no_worker_behind(tmp_path: Path) -> None:
    (tmp_path / "sleep.wasm").write_bytes(wasmtime.wat2wasm(SLEEP))
    proc = _start(tmp_path, "--dir", "/", "sleep.wasm")  # outside the root: refused before running
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 3 and "[fs.outside-root]" in stderr, stderr
    assert _group_gone(proc.pid)


def test_no_worker_is_forked_from_a_process_with_threads() -> None:
    before = worker._spare
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert worker.fork_spare_worker(passthrough=True) is False  # a fork could copy a held lock
    finally:
        stop.set()
        thread.join()
    assert worker._spare is before


_IN_PROCESS = """
import multiprocessing
from runner import worker
from runner.cli import main

try:
    main(["exec", "--dir", "/", "sleep.wasm"])
except SystemExit as ended:
    print("exit", ended.code)
print("spare", worker._spare, "children", multiprocessing.active_children())
"""


def test_an_exec_in_process_leaves_no_spare_worker(tmp_path: Path) -> None:
    """A library caller runs ``exec`` in its own, long-lived process: the spare ends with the
    command (here the job is refused, so no job takes it), not only when the process exits."""
    (tmp_path / "sleep.wasm").write_bytes(wasmtime.wat2wasm(SLEEP))
    ran = subprocess.run(
        [sys.executable, "-c", _IN_PROCESS],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")},
    )
    assert ran.stdout.splitlines() == ["exit 3", "spare None children []"], ran.stdout + ran.stderr
