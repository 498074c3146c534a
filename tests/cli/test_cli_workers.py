"""Worker processes through the CLI: SIGTERM, a worker killed mid-job, a guest blocked in a FIFO.

Each test runs ``python -m runner run`` as a real subprocess and checks the outputs and that the
audit log verifies sealed afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import wasmtime
from cli_process import sandrun, workers_of

SLEEP = """(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store8 (i32.const 8) (i32.const 0))
    (i64.store (i32.const 24) (i64.const 3600000000000))
    (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))))"""
OK = '(module (memory (export "memory") 1) (func (export "_start")))'


# Opens /data/fifo (the first preopen) for reading: blocks in the host until a writer comes.
FIFO = """(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "fifo")
  (func (export "_start")
    (drop (call $open (i32.const 3) (i32.const 0) (i32.const 16) (i32.const 4)
                      (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 8)))))"""


def project(root: Path, jobs: str) -> None:
    """A policy and a manifest with tools ``sleep`` and ``ok`` and the given job lines."""
    tools = []
    for name, text in (("sleep", SLEEP), ("ok", OK)):
        module = wasmtime.wat2wasm(text)
        (root / f"{name}.wasm").write_bytes(module)
        tools.append(f"  {name}: {{module: {name}.wasm, sha256: {hashlib.sha256(module).hexdigest()}}}\n")
    (root / "policy.yaml").write_text(
        "apiVersion: sandrun/v1\nkind: Policy\nmetadata: {name: p}\nlimits:\n  max: {timeout: 10m}\n"
    )
    (root / "m.yaml").write_text(
        "apiVersion: sandrun/v1\nkind: Manifest\nmetadata: {name: w}\ntools:\n"
        + "".join(tools)
        + "jobs:\n"
        + jobs
    )


def start_run(root: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "runner", "run", "m.yaml", "--policy", "policy.yaml", "--out", "out", *extra],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "CI": "true"},
    )


def wait_for_started(root: Path, count: int) -> None:
    log = root / "out" / "audit.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if log.exists() and log.read_text().count('"job.started"') >= count:
            return
        time.sleep(0.05)
    raise AssertionError("the jobs never started")


def kill_the_worker(proc: subprocess.Popen[str], root: Path) -> None:
    """SIGKILL the worker of a ``--jobs 1`` run once its first job has started."""
    wait_for_started(root, 1)
    deadline = time.monotonic() + 30
    while not workers_of(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(workers_of(proc.pid)[0], signal.SIGKILL)


def jobs_by_name(root: Path) -> dict[str, dict[str, object]]:
    report = json.loads((root / "out" / "report.json").read_text())
    return {job["name"]: job for job in report["jobs"]}


def test_sigterm_ends_a_run_like_ctrl_c_writes_reports_and_seals_the_log(tmp_path: Path) -> None:
    sleepers = "".join(f"  - {{name: s{i}, tool: sleep, limits: {{timeout: 5m}}}}\n" for i in range(3))
    project(tmp_path, sleepers)
    proc = start_run(tmp_path, "--jobs", "2")
    wait_for_started(tmp_path, 2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    rows = jobs_by_name(tmp_path)
    assert sorted(str(row["status"]) for row in rows.values()) == ["failed", "failed", "skipped"]
    assert all(str(row["reason"]).startswith("interrupted") for row in rows.values())
    assert sandrun("audit", "verify", str(tmp_path / "out")).returncode == 0
    assert workers_of(proc.pid) == []


def test_a_worker_killed_mid_job_fails_that_job_only_and_the_log_verifies_sealed(tmp_path: Path) -> None:
    project(
        tmp_path,
        "  - {name: victim, tool: sleep, limits: {timeout: 5m}}\n  - {name: after, tool: ok}\n",
    )
    proc = start_run(tmp_path, "--jobs", "1")
    kill_the_worker(proc, tmp_path)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr
    rows = jobs_by_name(tmp_path)
    assert (rows["victim"]["status"], rows["victim"]["trap"]) == ("failed", "crash")
    assert rows["victim"]["reason"] == "trap: crash (worker killed by SIGKILL)"
    assert rows["after"]["status"] == "passed"
    verify = sandrun("audit", "verify", str(tmp_path / "out"))
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_guest_blocked_on_a_fifo_under_a_1s_timeout_ends_and_the_run_goes_on(tmp_path: Path) -> None:
    module = wasmtime.wat2wasm(FIFO)
    project(tmp_path, "")
    (tmp_path / "fifo.wasm").write_bytes(module)
    (tmp_path / "data").mkdir()
    os.mkfifo(tmp_path / "data" / "fifo")
    manifest = (
        (tmp_path / "m.yaml")
        .read_text()
        .replace(
            "jobs:\n",
            f"  fifo: {{module: fifo.wasm, sha256: {hashlib.sha256(module).hexdigest()}}}\njobs:\n"
            "  - {name: blocked, tool: fifo, limits: {timeout: 1s}, fs: [{host: data, guest: /data}]}\n"
            "  - {name: after, tool: ok}\n",
        )
    )
    (tmp_path / "m.yaml").write_text(manifest)
    (tmp_path / "policy.yaml").write_text((tmp_path / "policy.yaml").read_text() + "fs:\n  roots: [data]\n")
    proc = start_run(tmp_path, "--jobs", "1")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    rows = jobs_by_name(tmp_path)
    assert (rows["blocked"]["trap"], rows["after"]["status"]) == ("timeout", "passed")
    assert int(str(rows["blocked"]["wall_ms"])) < 10_000  # issue: within 2 s; generous here
    assert sandrun("audit", "verify", str(tmp_path / "out")).returncode == 0
