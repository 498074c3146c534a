"""Benchmark: the executor against bare wasmtime-py doing the same work, in one run.

Every figure is a ratio against a baseline measured in the same run, so it compares rather than
times on a noisy machine. The baseline is wasmtime-py used directly: compile once, then
``Store`` + ``WasiConfig`` + instantiate + ``_start`` in a loop.

(a) per-job overhead, 1,000 jobs of a tiny WASI tool (``fixtures/hello.wasm``). The baseline B is
    bare wasmtime-py doing the same work as a Sandrun job: output captured to memfds and read
    back, Sandrun's limits on (memory and table caps, an epoch deadline with its ticker). Sandrun's
    ``run_plan`` with an audit log is compared with B plus the two audit records a job gets
    (``job.started``, ``job.finished``, through ``AuditLog``), and ``runner.api.run`` (audit log,
    reports, a log file per job) with B plus those records and a new file per job (creating a file
    costs from 10 us to several hundred depending on the disk). Target 1.2x. Jobs run in worker
    processes (the default), pipelined (each worker gets its next job while it runs one); the
    same with ``isolation="threads"`` gives the isolation's cost. The floor of process isolation
    is measured too: B in a child process driven over a socket pair, one round trip per job (and
    an empty round trip alone), and the same pipelined (the next request sent before the answer:
    the parent's audit records then overlap the child's run on the other core). That is what any
    runner that puts each job in another process pays at least, and Sandrun's workers are
    compared with the pipelined one. Pipelining needs a free core: on a machine whose cores are
    busy with other work, the floor and the workers approach the sum of both sides' CPU time.
    The best of several rounds: on a shared machine noise only ever adds time.
(b) a CPU-bound job (``fixtures/interp.wasm``, a bytecode interpreter): Sandrun against bare
    wasmtime-py with the same limits on (fuel, epoch deadline + ticker, memory limit), target
    1.05x; a plan without a fuel limit against bare with epoch + memory only (it must not pay for
    fuel metering); and what each limit costs bare wasmtime-py against none. A job's cost is a
    3-job batch's time less a 1-job batch's, halved (the batch's own start is printed apart).
(c) ``--jobs 2`` against ``--jobs 1`` on 4 CPU-bound jobs: throughput, against what bare
    wasmtime-py threads gain on the same machine in the same run, target 0.95 of it.
(d) cold against warm start of a run whose module is tens of MB (generated here): time from
    ``run_plan`` to the end of a ``_start`` that returns at once, with an empty cache folder, then
    with the disk cache filled (a new Runtime each time, so nothing is in memory). Target 100x.
(e) peak RSS of a 10,000-job batch run through ``runner.api.run`` in a child process: RSS after
    1k, 5k and 10k jobs and the growth per 1,000 jobs. Target: under 1 MiB per 1,000 jobs (about
    what the results a run keeps for its report take).

Run: ``python bench/bench_executor.py [--quick] [--profile]`` (``--profile``: cProfile of (a) only).
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import functools
import hashlib
import json
import os
import pstats
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import wasmtime

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runner.api import run as sandrun_run  # noqa: E402
from runner.audit import AuditLog  # noqa: E402
from runner.executor import BatchOptions, BatchResult, run_plan  # noqa: E402
from runner.plan import JobSpec, Limits, Plan, PolicyRef, Tool  # noqa: E402
from runner.sandbox import Runtime  # noqa: E402
from runner.worker import Isolation  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"
MEMORY = 64 << 20
TIMEOUT_MS = 120_000
FUEL = 10**13
TICK_S = 0.01  # Sandrun's epoch tick; the bare baseline runs the same ticker

TARGET_OVERHEAD = 1.2
TARGET_CPU = 1.05
TARGET_PARALLEL_SHARE = 0.95  # of what bare wasmtime-py threads gain on the same machine
TARGET_WARM = 100.0
TARGET_RSS_GROWTH_MIB = 1.0


@dataclasses.dataclass(frozen=True)
class Settings:
    jobs: int  # (a) batch size
    rounds: int
    interp_n: int  # (b) work of one CPU-bound job (~1.6 s per million here)
    parallel_n: int  # (c) work of each of its 4 jobs
    big_functions: int  # (d) module size: ~15 KB of wasm per function, ~0.4 s of compiling on 2 cores
    rss_jobs: int  # (e)


FULL = Settings(
    jobs=1000, rounds=3, interp_n=700_000, parallel_n=600_000, big_functions=2600, rss_jobs=10_000
)
QUICK = Settings(
    jobs=1000, rounds=2, interp_n=250_000, parallel_n=250_000, big_functions=650, rss_jobs=10_000
)


# -- plans ------------------------------------------------------------------------------------


def install(root: Path, name: str, wasm: bytes) -> tuple[str, str]:
    """Write a module under ``root``; (path relative to root, sha256)."""
    path = root / "modules" / f"{name}.wasm"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(wasm)
    return path.relative_to(root).as_posix(), hashlib.sha256(wasm).hexdigest()


def make_plan(module: tuple[str, str], argvs: list[list[str]], *, fuel: int | None = None) -> Plan:
    """A plan of one job per argv (``argv[0]`` its program name), as the policy compiler would make it."""
    path, digest = module
    limits = Limits(fuel=fuel, memory=MEMORY, timeout_ms=TIMEOUT_MS, stack=512 << 10, output=64 << 10)
    jobs = tuple(
        JobSpec(
            id=f"bench/job-{i:05d}",
            manifest="bench",
            name=f"job-{i:05d}",
            tool="tool",
            module=path,
            module_sha256=digest,
            args=tuple(argv[1:]),
            program_name=argv[0],
            invoke=None,
            env=(("LANG", "C"),),
            stdin=None,
            mounts=(),
            network=None,
            limits=limits,
            needs=(),
            expect_exit_code=0,
            actions=(),
            score="0",
        )
        for i, argv in enumerate(argvs)
    )
    tool = Tool(
        manifest="bench",
        name="tool",
        module=path,
        sha256=digest,
        version=None,
        signer=None,
        signature_verified=False,
        actions=(),
    )
    policy = PolicyRef(name="bench", path="policy.yaml", sha256="0" * 64, git_commit=None)
    return Plan(policy=policy, inputs=(), tools=(tool,), jobs=jobs, manifests=("bench.yaml",))


def _started_record(index: int) -> dict[str, Any]:
    limits = {
        "fuel": None,
        "memory": MEMORY,
        "timeout_ms": TIMEOUT_MS,
        "stack": 512 << 10,
        "output": 64 << 10,
    }
    return {
        "id": f"bench/job-{index:05d}",
        "index": index,
        "module_sha256": "0" * 64,
        "limits": limits,
        "mounts": [],
        "fs_scope": "none",
    }


def _finished_record(index: int, out: bytes) -> dict[str, Any]:
    empty = hashlib.sha256(b"").hexdigest()
    return {
        "manifest": "bench",
        "name": f"job-{index:05d}",
        "tool": "tool",
        "module_sha256": "0" * 64,
        "status": "passed",
        "exit_code": 0,
        "trap": None,
        "fuel_used": None,
        "memory_peak": 1 << 20,
        "wall_ms": 0,
        "stdout_sha256": hashlib.sha256(out).hexdigest(),
        "stderr_sha256": empty,
        "stdout_truncated": False,
        "stderr_truncated": False,
        "reason": None,
        "index": index,
        "trap_message": None,
        "invoke_results": None,
        "stdout_dropped": 0,
        "stderr_dropped": 0,
    }


def bare_logged(bare: Bare, argvs: list[list[str]], root: Path) -> float:
    with tempfile.TemporaryDirectory(dir=root) as out, AuditLog.open(Path(out), run_id="bare") as log:
        return bare.loop(argvs, capture=True, log=log)


def bare_files(bare: Bare, argvs: list[list[str]], root: Path) -> float:
    """The bare loop with its audit records and a log file per job: what ``api.run`` writes."""
    with tempfile.TemporaryDirectory(dir=root) as out, AuditLog.open(Path(out), run_id="bare") as log:
        (Path(out) / "logs").mkdir()
        return bare.loop(argvs, capture=True, log=log, files=Path(out) / "logs")


def bare_child_logged(
    child: BareChild, argvs: list[list[str]] | None, count: int, root: Path, *, pipelined: bool = False
) -> float:
    with tempfile.TemporaryDirectory(dir=root) as out, AuditLog.open(Path(out), run_id="bare") as log:
        return child.loop(argvs, count, log=log, pipelined=pipelined)


def check_passed(batch: BatchResult) -> None:
    bad = [r for r in batch.results if r.status != "passed"]
    assert not bad, bad[0]


def run_audited(
    plan: Plan, root: Path, cache: Path, jobs: int = 1, isolation: Isolation = "workers"
) -> tuple[float, list[str]]:
    """The executor with an audit log as its event sink (what ``api.run`` wires up), timed.

    Also returns where each module came from (``compiled``, ``memory``, ``disk``).
    """
    sources: list[str] = []
    with tempfile.TemporaryDirectory(dir=root) as out:
        start = time.perf_counter()
        with AuditLog.open(Path(out), run_id="bench") as log:

            def sink(kind: str, data: dict[str, Any]) -> None:
                if kind == "tool.deployed":
                    sources.append(data["source"])
                log.append(kind, data)

            options = BatchOptions(jobs=jobs, cache_dir=cache, isolation=isolation)
            batch = run_plan(plan, root, options, on_event=sink)
            log.seal(None)
        elapsed = time.perf_counter() - start
    check_passed(batch)
    return elapsed, sources


def run_timed(plan: Plan, root: Path, cache: Path) -> float:
    return run_audited(plan, root, cache)[0]


def run_full(plan: Plan, root: Path, cache: Path, jobs: int = 1) -> float:
    """``runner.api.run``: what ``sandrun run`` does once the plan is made (audit, reports, logs)."""
    with tempfile.TemporaryDirectory(dir=root) as out:
        start = time.perf_counter()
        outcome = sandrun_run(
            lambda: plan, root=root, out_dir=Path(out), options=BatchOptions(jobs=jobs, cache_dir=cache)
        )
        elapsed = time.perf_counter() - start
    assert outcome.exit_code == 0, outcome.exit_code
    return elapsed


# -- the bare wasmtime-py baseline --------------------------------------------------------------


class Bare:
    """wasmtime-py used directly: one engine and linker, the module compiled once."""

    def __init__(self, wasm: bytes, *, fuel: bool = False, epoch: bool = False, memory: bool = False) -> None:
        config = wasmtime.Config()
        config.consume_fuel = fuel
        config.epoch_interruption = epoch
        self.fuel, self.epoch, self.memory = fuel, epoch, memory
        self.engine = wasmtime.Engine(config)
        self.module = wasmtime.Module(self.engine, wasm)
        self.linker = wasmtime.Linker(self.engine)
        self.linker.define_wasi()

    def run(self, argv: list[str], capture: tuple[int, int] | None = None) -> bytes:
        """One job; with ``capture`` (two memfds) stdout/stderr are captured and read back."""
        store = wasmtime.Store(self.engine)
        wasi = wasmtime.WasiConfig()
        wasi.argv = argv
        wasi.env = [["LANG", "C"]]
        if capture is not None:
            wasi.stdout_file = f"/proc/self/fd/{capture[0]}"
            wasi.stderr_file = f"/proc/self/fd/{capture[1]}"
        store.set_wasi(wasi)
        if self.memory:
            store.set_limits(
                memory_size=MEMORY, table_elements=max(10_000, MEMORY // 8), instances=1, memories=1
            )
        if self.fuel:
            store.set_fuel(FUEL)
        if self.epoch:
            store.set_epoch_deadline(int(TIMEOUT_MS / 1000 / TICK_S))
        try:
            self.linker.instantiate(store, self.module).exports(store)["_start"](store)  # type: ignore[operator]
        except wasmtime.ExitTrap as exc:
            assert exc.code == 0, exc.code
        del store
        if capture is None:
            return b""
        out = b""
        for fd in capture:
            size = os.fstat(fd).st_size
            if size:
                out += os.pread(fd, size, 0)
                os.ftruncate(fd, 0)
        return out

    def loop(
        self, argvs: list[list[str]], capture: bool, log: AuditLog | None = None, files: Path | None = None
    ) -> float:
        """The bare loop; with ``log``, also the two audit records a job gets, as Sandrun writes them
        (no limits, no classification, no scheduling): what audit logging alone costs; with
        ``files``, each job's output also goes to a new file in that folder, as Sandrun's logs do."""
        fds = (os.memfd_create("out"), os.memfd_create("err")) if capture else None
        try:
            start = time.perf_counter()
            for index, argv in enumerate(argvs):
                if log is not None:
                    log.append("job.started", _started_record(index))
                out = self.run(argv, fds)
                if log is not None:
                    log.append("job.finished", _finished_record(index, out))
                if files is not None:
                    (files / f"job-{index:05d}.stdout").write_bytes(out)
            return time.perf_counter() - start
        finally:
            for fd in fds or ():
                os.close(fd)

    @contextmanager
    def ticking(self) -> Iterator[None]:
        """The epoch ticker a timeout needs (Sandrun runs one per engine)."""
        stop = threading.Event()

        def tick() -> None:
            while not stop.wait(TICK_S):
                self.engine.increment_epoch()

        thread = threading.Thread(target=tick, daemon=True)
        if self.epoch:
            thread.start()
        try:
            yield
        finally:
            stop.set()
            if self.epoch:
                thread.join()

    def timed(self, argv: list[str]) -> float:
        with self.ticking():
            start = time.perf_counter()
            self.run(argv)
            return time.perf_counter() - start

    def timed_call(self, argv: list[str]) -> Callable[[], float]:
        return lambda: self.timed(argv)


class BareChild:
    """The floor of process isolation: the bare loop (output captured, limits on) in a child
    process, one round trip per job over a socket pair (argv there, the captured output back).
    Any design that runs each job in another process pays this before doing anything of its own.
    ``pipelined``: the next job's request is sent before the answer of the one running (queue
    depth 2, as Sandrun's workers do), the floor of that design.

    Made before this process compiles anything or starts a thread (it forks)."""

    def __init__(self, wasm: bytes) -> None:
        sock, theirs = socket.socketpair()
        self.pid = os.fork()
        if self.pid == 0:  # the child: serve until the parent closes its end
            sock.close()
            try:
                _serve_bare(_Framed(theirs), wasm)
            finally:
                os._exit(0)
        theirs.close()
        self.conn = _Framed(sock)

    def loop(
        self,
        argvs: list[list[str]] | None,
        count: int,
        log: AuditLog | None = None,
        *,
        pipelined: bool = False,
    ) -> float:
        """``count`` jobs; ``argvs`` None: empty round trips (the child answers without running
        anything), which is the pipe's own cost."""

        def send(index: int) -> None:
            self.conn.send(b"" if argvs is None else "\0".join(argvs[index]).encode())

        start = time.perf_counter()
        sent = 0
        for index in range(count):
            if log is not None:
                log.append("job.started", _started_record(index))
            if sent == index:
                send(index)
                sent += 1
            if pipelined and sent < count:
                send(sent)
                sent += 1
            out = self.conn.recv()
            if log is not None:
                log.append("job.finished", _finished_record(index, out))
        return time.perf_counter() - start

    def close(self) -> None:
        self.conn.sock.close()
        os.waitpid(self.pid, 0)


class _Framed:
    """Length-prefixed messages over a socket; several may arrive in one read."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(struct.pack("!I", len(data)) + data)

    def recv(self) -> bytes:
        while len(self.buffer) < 4 or len(self.buffer) < 4 + struct.unpack_from("!I", self.buffer)[0]:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise EOFError
            self.buffer += chunk
        end = 4 + struct.unpack_from("!I", self.buffer)[0]
        data, self.buffer = self.buffer[4:end], self.buffer[end:]
        return data


def _serve_bare(conn: _Framed, wasm: bytes) -> None:
    bare = Bare(wasm, epoch=True, memory=True)
    fds = (os.memfd_create("out"), os.memfd_create("err"))
    with bare.ticking():
        while True:
            try:
                request = conn.recv()
            except EOFError:
                return
            conn.send(bare.run(request.decode().split("\0"), fds) if request else b"")


# -- the big module of (d) ----------------------------------------------------------------------


def _uleb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _sleb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if (n == 0 and not byte & 0x40) or (n == -1 and byte & 0x40):
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def _section(code: int, payload: bytes) -> bytes:
    return bytes([code]) + _uleb(len(payload)) + payload


def _vector(items: list[bytes]) -> bytes:
    return _uleb(len(items)) + b"".join(items)


def big_module(functions: int, groups: int = 1000, width: int = 16) -> bytes:
    """A valid module of ``functions`` functions (~15 KB each) whose ``_start`` returns at once.

    Each function mixes ``width`` i64 locals seeded from its parameter and returns all of them
    combined, so the optimiser can fold nothing away: compiling costs what real code of this size
    costs (~0.3 s per MB here, on 2 cores), and the compiled code is about as large as the WebAssembly.
    """
    common = bytearray()
    for g in range(groups):
        a, b, c, d = (
            (g * 5 + 1) % width + 1,
            (g * 3 + 2) % width + 1,
            (g * 11 + 5) % width + 1,
            g * 7 % width + 1,
        )
        # d = (a * b ^ c) + constant
        common += bytes([0x20, a, 0x20, b, 0x7E, 0x20, c, 0x85, 0x42]) + _sleb(g * 2654435761 % 1000003)
        common += bytes([0x7C, 0x21, d])
    common += bytes([0x20, 1]) + b"".join(bytes([0x20, k, 0x85]) for k in range(2, width + 1))
    common += bytes([0xA7, 0x0B])  # i32.wrap_i64; end
    bodies = []
    for f in range(functions):
        seeds = b"".join(  # local k = i64(param + f * 31 + k)
            bytes([0x20, 0, 0x41]) + _sleb(f * 31 + k) + bytes([0x6A, 0xAC, 0x21, k])
            for k in range(1, width + 1)
        )
        body = b"\x01" + _uleb(width) + b"\x7e" + seeds + common
        bodies.append(_uleb(len(body)) + body)
    start = b"\x00\x41\x01\x10\x00\x1a\x0b"  # call function 0 once, drop its result
    bodies.append(_uleb(len(start)) + start)
    return b"".join(
        (
            b"\x00asm\x01\x00\x00\x00",
            _section(1, _vector([b"\x60\x00\x00", b"\x60\x01\x7f\x01\x7f"])),
            _section(3, _vector([b"\x01"] * functions + [b"\x00"])),
            _section(7, _vector([_uleb(6) + b"_start\x00" + _uleb(functions)])),
            _section(10, _vector(bodies)),
        )
    )


# -- (e) in a child process ---------------------------------------------------------------------


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def rss_child(count: int) -> None:
    """Run ``count`` tiny jobs through ``api.run``; print RSS samples (KiB) as one JSON line."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        module = install(root, "hello", (FIXTURES / "hello.wasm").read_bytes())
        plan = make_plan(module, [["hello", str(i)] for i in range(count)])
        marks = {1000, 5000, 10_000, count}
        samples: dict[str, int] = {}
        finished = 0

        def progress(event: Any) -> None:
            nonlocal finished
            if event.kind == "finished":
                finished += 1
                if finished in marks:
                    samples[str(finished)] = _rss_kib("VmRSS")

        samples["start"] = _rss_kib("VmRSS")
        outcome = sandrun_run(
            lambda: plan,
            root=root,
            out_dir=root / "out",
            options=BatchOptions(jobs=1, cache_dir=root / "cache"),
            on_progress=progress,
        )
        assert outcome.exit_code == 0
        samples["end"] = _rss_kib("VmRSS")
        jobs = outcome.report["jobs"]
        for mark in sorted(marks):  # the worker's own RSS: its peak during that job
            samples[f"worker {mark}"] = (jobs[mark - 1]["rss_peak"] or 0) // 1024
        samples["peak"] = _rss_kib("VmHWM")
    print(json.dumps(samples))


# -- the measurements ----------------------------------------------------------------------------


def median_of(
    rounds: int,
    measures: dict[str, Callable[[], float]],
    pick: Callable[[list[float]], float] = statistics.median,
) -> dict[str, float]:
    """Median (or ``pick``) time of each measure, interleaved round by round (fair to drift)."""
    times: dict[str, list[float]] = {name: [] for name in measures}
    for _ in range(rounds):
        for name, measure in measures.items():
            times[name].append(measure())
    return {name: pick(values) for name, values in times.items()}


Row = tuple[str, float, float, bool]  # name, figure, target, higher is better


def bench_overhead(root: Path, s: Settings, rows: list[Row]) -> None:
    wasm = (FIXTURES / "hello.wasm").read_bytes()
    child = BareChild(wasm)  # first: it forks
    module = install(root, "hello", wasm)
    argvs = [["hello", str(i)] for i in range(s.jobs)]
    plan = make_plan(module, argvs)
    cache = root / "cache-a"
    bare = Bare(wasm)
    limited = Bare(wasm, epoch=True, memory=True)  # Sandrun's limits: memory, tables, epoch deadline
    bare.loop(argvs[:50], capture=True)  # warm up: imports, the disk cache, page faults
    child.loop(argvs, 50)
    run_audited(make_plan(module, argvs[:50]), root, cache)
    with limited.ticking():
        t = median_of(
            s.rounds + 4,
            {
                "bare": lambda: bare.loop(argvs, capture=False),
                "bare_cap": lambda: bare.loop(argvs, capture=True),
                "same": lambda: limited.loop(argvs, capture=True),
                "same_log": lambda: bare_logged(limited, argvs, root),
                "same_files": lambda: bare_files(limited, argvs, root),
                "pipe": lambda: child.loop(None, s.jobs),
                "child": lambda: child.loop(argvs, s.jobs),
                "child_log": lambda: bare_child_logged(child, argvs, s.jobs, root),
                "child_piped": lambda: bare_child_logged(child, argvs, s.jobs, root, pipelined=True),
                "audited": lambda: run_audited(plan, root, cache)[0],
                "audited_threads": lambda: run_audited(plan, root, cache, isolation="threads")[0],
                "full": lambda: run_full(plan, root, cache),
                "full_j2": lambda: run_full(plan, root, cache, jobs=2),
            },
            pick=min,
        )
    child.close()
    us = {name: value / s.jobs * 1e6 for name, value in t.items()}

    def line(label: str, name: str, base: str | None = None, note: str = "") -> None:
        ratio = f"x{us[name] / us[base]:.2f}" if base else ""
        print(f"    {label:<46}{us[name]:8.1f} us/job   {ratio:<6} {note}".rstrip())

    print(f"(a) per-job time, {s.jobs} jobs of hello.wasm, best of {s.rounds + 4} rounds")
    line("bare wasmtime-py, output discarded", "bare")
    line("bare, output captured (memfd)", "bare_cap", "bare")
    line("bare, captured, Sandrun's limits on", "same", "bare_cap", "<- the same work (baseline B)")
    line("B + its two audit records per job", "same_log", "same", "<- audit logging alone")
    line("B + audit records + a log file per job", "same_files", "same", "<- what api.run writes")
    line("run_plan + audit log, isolation=threads", "audited_threads", "same_log", "vs B + audit records")
    line("run_plan + audit log, worker processes", "audited", "same_log", "vs B + audit records")
    line("api.run (audit + reports + logs), --jobs 1", "full", "same_files", "vs B + audit + log files")
    line("api.run, --jobs 2", "full_j2", "same_files", "vs B + audit + log files")
    print("    the floor of process isolation (B in a child process, one round trip per job):")
    line("  an empty round trip (socket pair)", "pipe")
    line("  B in a child", "child", "same", "vs B in this process")
    line("  B in a child + audit records here", "child_log", "same_log", "vs B + audit records")
    line("  the same, pipelined (next job sent ahead)", "child_piped", "same_log", "vs B + audit records")
    line("run_plan + audit log, worker processes", "audited", "child_piped", "vs the pipelined floor")
    print(
        f"    -> isolation by processes costs at least x{us['child_piped'] / us['same_log']:.2f} here "
        f"(x{us['child_log'] / us['same_log']:.2f} with one round trip per job); "
        f"Sandrun's workers cost x{us['audited'] / us['audited_threads']:.2f} of its threads; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    rows.append(
        ("(a) run_plan+audit / bare+audit records", us["audited"] / us["same_log"], TARGET_OVERHEAD, False)
    )
    rows.append(
        (
            "(a) same, threads / bare+audit records",
            us["audited_threads"] / us["same_log"],
            TARGET_OVERHEAD,
            False,
        )
    )
    rows.append(
        (
            "(a) run_plan+audit / floor (bare in a child)",
            us["audited"] / us["child_piped"],
            TARGET_OVERHEAD,
            False,
        )
    )
    rows.append(("(a) api.run / bare+audit+log files", us["full"] / us["same_files"], TARGET_OVERHEAD, False))
    rows.append(("(a) floor: bare in a child / bare, +audit", us["child_log"] / us["same_log"], 0, False))
    rows.append(("(a) floor, pipelined / bare, +audit", us["child_piped"] / us["same_log"], 0, False))
    rows.append(("(a) isolation cost: workers / threads", us["audited"] / us["audited_threads"], 0, False))


def bench_cpu(root: Path, s: Settings, rows: list[Row]) -> None:
    wasm = (FIXTURES / "interp.wasm").read_bytes()
    module = install(root, "interp", wasm)
    argv = ["interp", str(s.interp_n)]
    cache = root / "cache-b"
    with_fuel, no_fuel = make_plan(module, [argv], fuel=FUEL), make_plan(module, [argv])
    run_audited(with_fuel, root, cache), run_audited(no_fuel, root, cache)  # fill the disk cache
    bares = {
        "none": Bare(wasm),
        "fuel": Bare(wasm, fuel=True),
        "epoch": Bare(wasm, epoch=True),
        "memory": Bare(wasm, memory=True),
        "epoch+memory": Bare(wasm, epoch=True, memory=True),
        "all": Bare(wasm, fuel=True, epoch=True, memory=True),
    }
    measures: dict[str, Callable[[], float]] = {
        f"bare {name}": bare.timed_call(argv) for name, bare in bares.items()
    }
    # A job's own cost is what a batch of three costs over a batch of one, halved: the batch's
    # fixed costs (deploy, a worker's start) are not the job's, as the bare figures have none.
    three = {
        name: make_plan(module, [argv] * 3, fuel=fuel) for name, fuel in (("fuel", FUEL), ("no fuel", None))
    }
    for name, plan in (("fuel", with_fuel), ("no fuel", no_fuel)):
        measures[f"sandrun {name}"] = functools.partial(run_timed, plan, root, cache)
        measures[f"sandrun {name} x3"] = functools.partial(run_timed, three[name], root, cache)
    # The best of more rounds: on a shared machine noise only ever adds time to a CPU-bound job.
    t = median_of(s.rounds + 2, measures, pick=min)
    per_job = {name: (t[f"sandrun {name} x3"] - t[f"sandrun {name}"]) / 2 for name in ("fuel", "no fuel")}
    print(f"(b) CPU-bound job: interp.wasm {s.interp_n:,}, best of {s.rounds + 2} rounds")
    print("    what each limit costs bare wasmtime-py against none:")
    for name in bares:
        print(f"      {name:<13} {t[f'bare {name}']:7.3f} s   x{t[f'bare {name}'] / t['bare none']:.3f}")
    fuel_ratio = per_job["fuel"] / t["bare all"]
    free_ratio = per_job["no fuel"] / t["bare epoch+memory"]
    print(
        f"    Sandrun per job (3-job batch - 1-job batch, / 2), fuel limit  {per_job['fuel']:7.3f} s   "
        f"x{fuel_ratio:.3f} vs bare with all limits"
    )
    print(
        f"    Sandrun per job, no fuel limit                           {per_job['no fuel']:7.3f} s   "
        f"x{free_ratio:.3f} vs bare epoch+memory, x{per_job['no fuel'] / t['bare none']:.3f} vs bare none"
    )
    print(
        f"    a whole 1-job batch (deploy, worker start): fuel {t['sandrun fuel']:7.3f} s "
        f"x{t['sandrun fuel'] / t['bare all']:.3f}, no fuel {t['sandrun no fuel']:7.3f} s "
        f"x{t['sandrun no fuel'] / t['bare epoch+memory']:.3f}"
    )
    rows.append(("(b) Sandrun fuel / bare all limits", fuel_ratio, TARGET_CPU, False))
    rows.append(("(b) Sandrun no fuel / bare epoch+memory", free_ratio, TARGET_CPU, False))


def bare_threads(bare: Bare, argvs: list[list[str]], threads: int) -> float:
    """The same jobs on ``threads`` plain threads: what the machine allows, the baseline of (c)."""
    workers = [
        threading.Thread(target=lambda share=argvs[i::threads]: [bare.run(argv) for argv in share])
        for i in range(threads)
    ]
    with bare.ticking():
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return time.perf_counter() - start


def bench_parallel(root: Path, s: Settings, rows: list[Row]) -> None:
    wasm = (FIXTURES / "interp.wasm").read_bytes()
    module = install(root, "interp", wasm)
    argvs = [["interp", str(s.parallel_n)]] * 4
    plan = make_plan(module, argvs)
    cache = root / "cache-c"
    run_audited(make_plan(module, [["interp", "1"]]), root, cache)
    bare = Bare(wasm, epoch=True, memory=True)
    t = median_of(
        s.rounds,
        {
            "j1": lambda: run_audited(plan, root, cache, jobs=1)[0],
            "j2": lambda: run_audited(plan, root, cache, jobs=2)[0],
            "t1": lambda: run_audited(plan, root, cache, jobs=1, isolation="threads")[0],
            "t2": lambda: run_audited(plan, root, cache, jobs=2, isolation="threads")[0],
            "b1": lambda: bare_threads(bare, argvs, 1),
            "b2": lambda: bare_threads(bare, argvs, 2),
        },
    )
    ratio = t["j1"] / t["j2"]
    print(f"(c) 4 CPU-bound jobs (interp.wasm {s.parallel_n:,}), {os.cpu_count()} CPUs, median of {s.rounds}")
    print(f"    Sandrun --jobs 1 {t['j1']:6.2f} s   --jobs 2 {t['j2']:6.2f} s   throughput x{ratio:.2f}")
    machine = t["b1"] / t["b2"]
    print(
        f"    bare, 1 thread   {t['b1']:6.2f} s   2 threads {t['b2']:6.2f} s   throughput x{machine:.2f}"
        "   <- what this machine allows"
    )
    threads = t["t1"] / t["t2"]
    print(f"    isolation=threads --jobs 1 {t['t1']:6.2f} s   --jobs 2 {t['t2']:6.2f} s   x{threads:.2f}")
    print(
        f"    worker processes keep x{ratio / machine:.2f} of the bare gain "
        f"(threads: x{threads / machine:.2f}); one CPU-bound job costs x{t['j1'] / t['t1']:.2f} of threads"
    )
    rows.append(("(c) Sandrun gain / bare threads gain", ratio / machine, TARGET_PARALLEL_SHARE, True))


def bench_cold_warm(root: Path, s: Settings, rows: list[Row]) -> None:
    start = time.perf_counter()
    wasm = big_module(s.big_functions)
    module = install(root, "big", wasm)
    made = time.perf_counter() - start
    plan = make_plan(module, [["big"]])
    cache = root / "cache-d"

    def start_once() -> tuple[float, str]:
        elapsed, sources = run_audited(plan, root, cache)
        return elapsed, sources[0]

    def read_once() -> float:
        with Runtime(cache_dir=cache) as runtime:
            started = time.perf_counter()
            runtime.load_module(plan.jobs[0], root)
            return time.perf_counter() - started

    cold, cold_source = start_once()
    warm_runs = [start_once() for _ in range(max(3, s.rounds))]
    warm = statistics.median(t for t, _ in warm_runs)
    read = statistics.median(read_once() for _ in range(max(3, s.rounds)))
    cwasm = sum(p.stat().st_size for p in cache.glob("*.cwasm"))
    print(
        f"(d) a {len(wasm) / 1e6:.1f} MB module ({s.big_functions} functions, generated in {made:.1f} s), "
        f"compiled code in the disk cache {cwasm / 1e6:.1f} MB"
    )
    print(f"    cold (empty cache: {cold_source})  {cold * 1000:9.1f} ms to the end of _start")
    print(
        f"    warm (new Runtime: {'/'.join(sorted({src for _, src in warm_runs}))})    {warm * 1000:9.1f} ms"
        f"   -> x{cold / warm:.0f} faster"
    )
    print(
        f"    of a warm start, reading the entry into a sealed memfd, checking its MAC and loading it "
        f"{read * 1000:.1f} ms (the worker starts meanwhile); the ratio follows the cold compile's speed"
    )
    assert cold_source == "compiled" and all(src == "disk" for _, src in warm_runs)
    rows.append(("(d) cold / warm start", cold / warm, TARGET_WARM, True))


def bench_rss(s: Settings, rows: list[Row]) -> None:
    child = subprocess.run(
        [sys.executable, __file__, "--rss-child", str(s.rss_jobs)], capture_output=True, text=True, check=True
    )
    kib = json.loads(child.stdout.strip().splitlines()[-1])
    marks = [m for m in ("1000", "5000", "10000") if m in kib]
    growth = (kib[marks[-1]] - kib["1000"]) / 1024 / ((int(marks[-1]) - 1000) / 1000)
    print(f"(e) RSS of a {s.rss_jobs:,}-job batch through api.run (child process)")
    print(
        "    "
        + "   ".join(f"{name}: {kib[name] / 1024:.1f} MiB" for name in ("start", *marks, "end", "peak"))
    )
    print("    worker: " + "   ".join(f"{m}: {kib[f'worker {m}'] / 1024:.1f} MiB" for m in marks))
    print(f"    growth from 1k to {int(marks[-1]) // 1000}k jobs: {growth:.2f} MiB per 1,000 jobs")
    span = (int(marks[-1]) - 1000) / 1000
    worker_growth = (kib[f"worker {marks[-1]}"] - kib["worker 1000"]) / 1024 / span
    print(f"    worker growth: {worker_growth:.2f} MiB per 1,000 jobs")
    rows.append(("(e) worker RSS growth, MiB per 1,000 jobs", worker_growth, TARGET_RSS_GROWTH_MIB, False))
    rows.append(("(e) RSS growth, MiB per 1,000 jobs", growth, TARGET_RSS_GROWTH_MIB, False))


def profile_overhead(root: Path, s: Settings) -> None:
    """cProfile of (a)'s executor + audit log (run_audited), worker and audit threads included."""
    module = install(root, "hello", (FIXTURES / "hello.wasm").read_bytes())
    plan = make_plan(module, [["hello", str(i)] for i in range(s.jobs)])
    cache = root / "cache-p"
    run_audited(plan, root, cache)
    profiles = [cProfile.Profile()]
    thread_run = threading.Thread.run

    def profiled(thread: threading.Thread) -> None:
        profile = cProfile.Profile()
        profiles.append(profile)
        profile.runcall(thread_run, thread)

    threading.Thread.run = profiled  # type: ignore[method-assign,assignment]
    try:
        profiles[0].runcall(run_audited, plan, root, cache)
    finally:
        threading.Thread.run = thread_run  # type: ignore[method-assign]
    stats = pstats.Stats(*profiles).strip_dirs()  # type: ignore[arg-type]
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller work, about 2 minutes")
    parser.add_argument("--profile", action="store_true", help="profile (a) instead of measuring")
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child)
        return
    settings = QUICK if args.quick else FULL
    rows: list[Row] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp).resolve()
        if args.profile:
            profile_overhead(root, settings)
            return
        bench_overhead(root, settings, rows)
        bench_cpu(root, settings, rows)
        bench_parallel(root, settings, rows)
        bench_cold_warm(root, settings, rows)
    bench_rss(settings, rows)
    print(f"\nsummary ({'quick' if args.quick else 'full'} run, {time.perf_counter() - started:.0f} s)")
    for name, figure, target, higher in rows:
        if not target:  # a figure to report, with no target
            print(f"  {name:<42} {figure:9.2f}")
            continue
        ok = figure >= target if higher else figure <= target
        sign = ">=" if higher else "<="
        print(f"  {name:<42} {figure:9.2f}   target {sign} {target:<5g} {'OK' if ok else 'OVER'}")


if __name__ == "__main__":
    main()
