"""Benchmark: whole-process start-up of `sandrun exec` and `sandrun check`, against bare baselines.

- ``sandrun exec hello.wasm`` (a tiny WASI module printing one line; default policy, worker
  process, audit record in a private state folder) vs a bare wasmtime-py script running the same
  module (engine, WASI, instantiate, ``_start``): target 1.3x or better.
- ``sandrun check manifest.yaml --policy policy.yaml`` (one manifest) vs a bare Python process
  doing ``yaml.safe_load`` of that manifest: target 2x or better.

Each command is a new process, as a user or CI step runs it; rounds interleave the commands so a
machine's load affects both sides alike, and the ratios of medians measured in the same run are
what to compare (not the absolute times). CPU time (user + system of the process and the children
it waited for: ``exec``'s worker) is printed too: on a loaded machine it moves less than the wall
clock, and it shows what a second process costs even when it runs on another core. Both sides
run with compiled bytecode, as after ``pip install`` (``PYTHONDONTWRITEBYTECODE`` is dropped; the
``.pyc`` files go to a temporary ``PYTHONPYCACHEPREFIX``, written by a warm-up round).

The floors (an interpreter importing only the libraries each command loads: click and PyYAML,
and wasmtime for ``exec``; fastjsonschema no longer, see docs/exec.md) are printed with them:
what no change to Sandrun's own code can go below.

``--account`` then splits each command's CPU time in a child that imports the same libraries one
by one before running the command in-process (as ``python -m runner`` does): the interpreter's
own start, each library, Sandrun's modules, and the part of those spent creating dataclasses.

Run: ``python bench/bench_startup.py [--rounds 15] [--account]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import wasmtime

HELLO = """
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 8) "hello\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 8))
    (i32.store (i32.const 4) (i32.const 6))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 20)))))
"""

BARE_RUN = """
import sys, wasmtime
engine = wasmtime.Engine()
store = wasmtime.Store(engine)
linker = wasmtime.Linker(engine)
linker.define_wasi()
wasi = wasmtime.WasiConfig()
wasi.inherit_stdout()
wasi.inherit_stderr()
wasi.argv = ["hello"]
store.set_wasi(wasi)
module = wasmtime.Module.from_file(engine, sys.argv[1])
linker.instantiate(store, module).exports(store)["_start"](store)
"""

BARE_LOAD = "import sys, yaml; yaml.safe_load(open(sys.argv[1], 'rb'))"

POLICY = """\
apiVersion: sandrun/v1
kind: Policy
metadata: {name: bench}
limits:
  default: {memory: 16MiB, timeout: 5s, stack: 512KiB, output: 64KiB}
fs: {roots: [.], write: [./out]}
actions: {allow: ["tool.fs.*"]}
"""

MANIFEST = """\
apiVersion: sandrun/v1
kind: Manifest
metadata:
  name: startup
  description: one tool, two jobs
tools:
  hello:
    module: hello.wasm
    sha256: {digest}
jobs:
  - name: greet
    tool: hello
    args: ["--name", "world"]
    env: {{LANG: C}}
    limits: {{memory: 8MiB, timeout: 2s}}
  - name: again
    tool: hello
    needs: [greet]
"""

TARGETS = {"exec": 1.3, "check": 2.0}

# What each command cannot start without: an interpreter importing the libraries it loads (click
# parses its flags, PyYAML reads the files, wasmtime runs the module), before a line of Sandrun
# runs. Their ratio to the baseline is the floor of the target. (The schema's fast checks are
# generated code that needs nothing of fastjsonschema: tests/cli/test_cli_startup_imports.py.)
LIBRARIES = {"exec": ("click", "yaml", "wasmtime"), "check": ("click", "yaml")}
FLOORS = {f"{name} floor": ", ".join(modules) for name, modules in LIBRARIES.items()}

# --account: in one child, import the command's libraries one at a time, then run the command
# in-process, timing each step in CPU time (the worker ``exec`` forks is counted separately).
_ACCOUNT = """
import time
started = time.process_time()
import atexit, dataclasses, importlib, json, resource, runpy, sys
spent = {"start": started, "tooling": time.process_time() - started}
libraries, args = sys.argv[1].split(","), sys.argv[2:]
for name in libraries:
    before = time.process_time()
    importlib.import_module(name)
    spent[name] = time.process_time() - before
made = [0, 0.0]
original = dataclasses.dataclass
def timed(cls=None, /, **options):
    def wrap(cls):
        before = time.process_time()
        try:
            return original(**options)(cls)
        finally:
            made[0] += 1
            made[1] += time.process_time() - before
    return wrap if cls is None else wrap(cls)
dataclasses.dataclass = timed
before = time.process_time()
def report():
    spent["sandrun"] = time.process_time() - before
    spent["dataclasses"], spent["classes"] = made[1], made[0]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    spent["worker"] = children.ru_utime + children.ru_stime
    print(json.dumps(spent), file=sys.__stderr__)
atexit.register(report)
sys.argv = ["sandrun", *args]
runpy.run_module("runner", run_name="__main__")
"""


def _seconds(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall-clock and CPU seconds (user + system, the process and the children it waited for)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.decode()}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--account", action="store_true", help="split each command's CPU time")
    options = parser.parse_args()
    rounds = options.rounds
    python = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        module = wasmtime.wat2wasm(HELLO)
        (folder / "hello.wasm").write_bytes(module)
        (folder / "bare_run.py").write_text(BARE_RUN)
        (folder / "policy.yaml").write_text(POLICY)
        (folder / "manifest.yaml").write_text(MANIFEST.format(digest=hashlib.sha256(module).hexdigest()))
        env = {
            **{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
            "PYTHONPYCACHEPREFIX": str(folder / "pycache"),
            "XDG_STATE_HOME": str(folder / "state"),
            "XDG_CACHE_HOME": str(folder / "cache"),
        }
        commands = {
            "exec": [python, "-m", "runner", "exec", "hello.wasm"],
            "bare run": [python, "bare_run.py", "hello.wasm"],
            "check": [python, "-m", "runner", "check", "manifest.yaml", "--policy", "policy.yaml"],
            "bare load": [python, "-c", BARE_LOAD, "manifest.yaml"],
            **{name: [python, "-c", f"import {modules}"] for name, modules in FLOORS.items()},
        }
        for command in commands.values():  # warm: .pyc files, the compiled-module cache
            _seconds(command, folder, env)
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        accounts: dict[str, list[dict[str, float]]] = {name: [] for name in LIBRARIES}
        for _ in range(rounds):
            for name, command in commands.items():
                times[name].append(_seconds(command, folder, env))
            if options.account:
                for name in LIBRARIES:
                    accounts[name].append(_account(name, commands[name][3:], folder, env))
    median = {name: statistics.median(wall for wall, _ in values) for name, values in times.items()}
    cpu = {name: statistics.median(used for _, used in values) for name, values in times.items()}
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; medians of {rounds}:")
    for name in median:
        print(f"{name:>11}: {median[name] * 1000:7.1f} ms wall, {cpu[name] * 1000:7.1f} ms CPU")
    for name, baseline in (("exec", "bare run"), ("check", "bare load")):
        ratio = median[name] / median[baseline]
        verdict = "ok" if ratio <= TARGETS[name] else "above target"
        print(f"{name} / {baseline}: {ratio:.2f}x (target {TARGETS[name]}x or better: {verdict})")
        floor = f"{name} floor"
        print(
            f"  CPU {cpu[name] / cpu[baseline]:.2f}x; the imports of its libraries alone: "
            f"{median[floor] / median[baseline]:.2f}x wall, {cpu[floor] / cpu[baseline]:.2f}x CPU; "
            f"Sandrun's own: {(median[name] - median[floor]) * 1000:.1f} ms wall, "
            f"{(cpu[name] - cpu[floor]) * 1000:.1f} ms CPU"
        )
        if options.account:
            _print_account(name, accounts[name], cpu[baseline])


def _account(name: str, args: list[str], cwd: Path, env: dict[str, str]) -> dict[str, float]:
    """One run of ``name`` with its CPU time split (``_ACCOUNT``), in seconds."""
    command = [sys.executable, "-c", _ACCOUNT, ",".join(LIBRARIES[name]), *args]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{name} --account failed ({done.returncode}): {done.stderr}")
    split: dict[str, float] = json.loads(done.stderr.splitlines()[-1])
    return split


def _print_account(name: str, runs: list[dict[str, float]], baseline_cpu: float) -> None:
    """Medians of each part, in ms and as a share of the baseline's whole CPU time."""
    part = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    pieces = [("interpreter start", part["start"]), ("dataclasses, json (+ runpy)", part["tooling"])]
    pieces += [(library, part[library]) for library in LIBRARIES[name]]
    pieces += [("Sandrun (its modules + the work)", part["sandrun"]), ("worker process", part["worker"])]
    total = sum(seconds for _, seconds in pieces)
    print(f"  CPU account of {name} (medians of {len(runs)}; x = share of the baseline's CPU time):")
    for label, seconds in pieces:
        print(f"    {label:>32}: {seconds * 1000:6.1f} ms {seconds / baseline_cpu:5.2f}x")
    print(
        f"    {'of Sandrun: dataclass creation':>32}: {part['dataclasses'] * 1000:6.1f} ms "
        f"{part['dataclasses'] / baseline_cpu:5.2f}x ({part['classes']:.0f} classes)"
    )
    print(f"    {'total':>32}: {total * 1000:6.1f} ms {total / baseline_cpu:5.2f}x")


if __name__ == "__main__":
    main()
