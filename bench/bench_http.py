"""Benchmark: one HTTP GET from a guest through ``sandrun:http`` against the same GET with Python's
``http.client``, both to the same loopback server, a new connection per request each.

The guest is ``tests/fixtures/httpget.wasm`` (C, three host calls per request). Its per-request
cost is the slope between a job making 1 request and a job making N, so the job's own start-up
is not counted (as the baseline's interpreter start is not). Each request has its own path
(``/ok/0``, ``/ok/1`` ...) on both sides, so nothing the egress layer remembers per URL is reused:
every request's URL is parsed and matched against the grant anew (what is kept per job is what
does not depend on the URL's path: the grant's entries per origin and the verdict per address).
Neither side reuses connections (the egress layer does not pool them). The server is a minimal
socket loop (fixed reply, ``Connection: close``) so that it does not hide the client's cost.

After each N-request job its hops' ``net.request`` records are appended to a real audit log, as
the executor does after a job; that time is printed apart (the ratio with and without it), since
it is spent after the job rather than on the request path.

Rounds interleave the two sides. Printed: the medians and their ratio (target: within 1.5x), the
spread of the per-round ratios (each round's two sides ran in the same second), the ratio of the
CPU time the client's own thread spends per request (the guest runs on the calling thread; the
server's thread is not counted), which other processes disturb least, the load average, and the
host calls per request, counted in a separate run (the counting wrapper is not timed).

Run: ``python bench/bench_http.py [--requests 60] [--rounds 101]``
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runner.audit import AuditLog, record  # noqa: E402
from runner.egress import abi  # noqa: E402
from runner.plan import JobSpec, Limits, Network  # noqa: E402

GUEST = ROOT / "tests" / "fixtures" / "httpget.wasm"
REPLY = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"


def serve(listener: socket.socket) -> None:
    """Answer every connection with REPLY once its request head has arrived."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            conn.sendall(REPLY)


def plain(port: int, count: int) -> tuple[float, float]:
    """Seconds per request with ``http.client``: wall clock, and this thread's CPU time."""
    started, cpu = time.perf_counter(), time.thread_time()
    for index in range(count):
        connection = http.client.HTTPConnection("127.0.0.1", port)
        connection.request("GET", f"/ok/{index}")
        assert connection.getresponse().read() == b"hello"
        connection.close()
    return (time.perf_counter() - started) / count, (time.thread_time() - cpu) / count


def job(root: Path, port: int, count: int) -> JobSpec:
    data = GUEST.read_bytes()
    (root / "httpget.wasm").write_bytes(data)
    args: tuple[str, ...] = ()
    for index in range(count):
        args += ("GET", "0", f"http://127.0.0.1:{port}/ok/{index}")
    return JobSpec(
        id=f"bench/get{count}",
        manifest="bench",
        name=f"get{count}",
        tool="httpget",
        module="httpget.wasm",
        module_sha256=hashlib.sha256(data).hexdigest(),
        args=args,
        program_name="httpget",
        invoke=None,
        env=(),
        stdin=None,
        mounts=(),
        network=Network(allow=("http://127.0.0.1:*",), block=()),
        limits=Limits(fuel=None, memory=64 << 20, timeout_ms=120_000, stack=512 << 10, output=16 << 20),
        needs=(),
        expect_exit_code=0,
        actions=(),
        score="0",
    )


def counting(calls: Counter[str]) -> None:
    """Wrap the host functions so each call is counted (before the runtime links them)."""

    def wrap(name: str, function: Callable[..., int]) -> Callable[..., int]:
        def counted(*args: int) -> int:
            calls[name] += 1
            return function(*args)

        return counted

    abi.FUNCTIONS = tuple((name, arity, wrap(name, function)) for name, arity, function in abi.FUNCTIONS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=60)  # at most 64 per job (Bounds.max_requests)
    parser.add_argument("--rounds", type=int, default=101)
    options = parser.parse_args()
    from runner.sandbox import Runtime

    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    port = listener.getsockname()[1]
    threading.Thread(target=serve, args=(listener,), daemon=True).start()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        one, many = job(root, port, 1), job(root, port, options.requests)
        # per round: the 1-request job's and the N-request job's wall and CPU time, and the baseline's
        singles, totals, single_cpus, total_cpus, plain_times, plain_cpu = [], [], [], [], [], []
        audit_times = []  # per request: its net.request record appended as the executor does
        with (
            Runtime(cache_dir=root / "cache") as runtime,
            AuditLog.open(root / "audit", run_id="bench") as log,
        ):
            runtime.run(one, root)  # compile and warm up
            plain(port, options.requests)
            for _ in range(options.rounds):
                for spec, walls, cpus in ((one, singles, single_cpus), (many, totals, total_cpus)):
                    started, cpu = time.perf_counter(), time.thread_time()
                    outcome = runtime.run(spec, root)
                    walls.append(time.perf_counter() - started)
                    cpus.append(time.thread_time() - cpu)
                    assert outcome.exit_code == 0, outcome.stdout[-300:]
                started = time.perf_counter()
                for hop in outcome.net_hops:
                    log.append("net.request", record.net_request(many, hop))
                audit_times.append((time.perf_counter() - started) / len(outcome.net_hops))
                wall, thread_cpu = plain(port, options.requests)
                plain_times.append(wall)
                plain_cpu.append(thread_cpu)
        calls: Counter[str] = Counter()
        counting(calls)  # a runtime links the host functions when it first runs a job
        with Runtime(cache_dir=root / "cache") as runtime:
            assert runtime.run(many, root).exit_code == 0
    listener.close()
    # The job's start-up is the median 1-request job (a single round's is too noisy to subtract).
    median = statistics.median
    start_up, start_up_cpu, extra = median(singles), median(single_cpus), options.requests - 1
    guest_times = [(total - start_up) / extra for total in totals]
    guest, baseline = median(guest_times), median(plain_times)
    ratios = sorted(g / p for g, p in zip(guest_times, plain_times, strict=True))
    cpu_ratio = (median(total_cpus) - start_up_cpu) / extra / median(plain_cpu)
    per_request = sum(calls.values()) / options.requests
    print(f"guest via sandrun:http : {guest * 1e6:8.1f} us/request")
    print(f"plain http.client      : {baseline * 1e6:8.1f} us/request")
    print(f"ratio guest/plain      : {guest / baseline:8.2f}x (target <= 1.5x)")
    print(
        f"per-round ratios       : {ratios[0]:.2f}x min, {median(ratios):.2f}x median,"
        f" {ratios[-1]:.2f}x max over {len(ratios)} rounds"
    )
    print(f"client-thread CPU ratio: {cpu_ratio:8.2f}x")
    audit = median(audit_times)
    print(
        f"+ audit record appended: {(guest + audit) * 1e6:8.1f} us/request,"
        f" ratio {(guest + audit) / baseline:.2f}x (the executor writes it after the job)"
    )
    print(f"load average (1 min)   : {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    print(f"host calls per request : {per_request:8.2f} ({dict(calls)})")


if __name__ == "__main__":
    main()
