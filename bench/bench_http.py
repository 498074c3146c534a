"""Benchmark: one HTTP GET from a guest through ``sandrun:http`` against the same GET with Python's
``http.client``, both to the same loopback server, a new connection per request each.

The guest is ``tests/fixtures/httpget.wasm`` (C, three host calls per request). Its per-request
cost is the slope between a job making 1 request and a job making N, so the job's own start-up
is not counted. Neither side reuses connections (a fair comparison: the egress layer does not pool
them). The server is a minimal socket loop (fixed reply, ``Connection: close``) so that it does not
hide the client's cost. Prints both medians, their ratio (target: within 1.5x) and the host calls
per request, counted by wrapping the host functions. A busy machine makes single rounds noisy, so
the ratio of the best rounds is printed too, and the ratio of the CPU time the client's own thread
spends per request (the guest runs on the calling thread; the server's thread is not counted),
which other processes disturb least.

Run: ``python bench/bench_http.py [--requests 60] [--rounds 5]``
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
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
    for _ in range(count):
        connection = http.client.HTTPConnection("127.0.0.1", port)
        connection.request("GET", "/ok")
        assert connection.getresponse().read() == b"hello"
        connection.close()
    return (time.perf_counter() - started) / count, (time.thread_time() - cpu) / count


def job(root: Path, port: int, count: int) -> JobSpec:
    data = GUEST.read_bytes()
    (root / "httpget.wasm").write_bytes(data)
    args: tuple[str, ...] = ()
    for _ in range(count):
        args += ("GET", "0", f"http://127.0.0.1:{port}/ok")
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
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    calls: Counter[str] = Counter()
    counting(calls)
    from runner.sandbox import Runtime

    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    port = listener.getsockname()[1]
    threading.Thread(target=serve, args=(listener,), daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp, Runtime(cache_dir=Path(tmp) / "cache") as runtime:
        root = Path(tmp)
        one, many = job(root, port, 1), job(root, port, options.requests)
        runtime.run(one, root)  # compile and warm up
        guest_times, plain_times, guest_cpu, plain_cpu = [], [], [], []
        for _ in range(options.rounds):
            started, cpu = time.perf_counter(), time.thread_time()
            runtime.run(one, root)
            single, single_cpu = time.perf_counter() - started, time.thread_time() - cpu
            calls.clear()
            started, cpu = time.perf_counter(), time.thread_time()
            outcome = runtime.run(many, root)
            total, total_cpu = time.perf_counter() - started, time.thread_time() - cpu
            assert outcome.exit_code == 0, outcome.stdout[-300:]
            guest_times.append((total - single) / (options.requests - 1))
            guest_cpu.append((total_cpu - single_cpu) / (options.requests - 1))
            wall, thread_cpu = plain(port, options.requests)
            plain_times.append(wall)
            plain_cpu.append(thread_cpu)
    listener.close()
    guest, baseline = statistics.median(guest_times), statistics.median(plain_times)
    per_request = sum(calls.values()) / options.requests
    print(f"guest via sandrun:http : {guest * 1e6:8.1f} us/request")
    print(f"plain http.client      : {baseline * 1e6:8.1f} us/request")
    print(f"ratio guest/plain      : {guest / baseline:8.2f}x (target <= 1.5x)")
    # the best round of each is less disturbed by other processes on a busy machine
    print(f"ratio of best rounds   : {min(guest_times) / min(plain_times):8.2f}x")
    cpu_ratio = statistics.median(guest_cpu) / statistics.median(plain_cpu)
    print(f"client-thread CPU ratio: {cpu_ratio:8.2f}x")
    print(f"host calls per request : {per_request:8.2f} ({dict(calls)})")


if __name__ == "__main__":
    main()
