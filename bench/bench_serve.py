"""Benchmark: `sandrun serve` (a fresh sandbox per request) against a plain Starlette handler.

Both answer the same 5-byte text on the same machine, each in its own process under uvicorn with
the same settings; the guest behind `sandrun serve` is a WAT CGI program (headers, blank line,
body) under the default limits, and every request it answers is one audit record. A Python load
generator (several processes, each with a few keep-alive connections; no wrk needed) drives each
server for the same time, after a warm-up, and the script prints requests/s, median and p99
latency for both, and their ratios. The load generator shares the machine's cores with the
server, so absolute figures are low and noisy; the ratio is the figure to watch.

Run: ``python bench/bench_serve.py [--seconds 5] [--procs 2] [--connections 4] [--concurrency N]``
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import wasmtime

GUEST_WAT = r"""
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "Content-Type: text/plain\n\nhello")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 31))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""

PLAIN_APP = """\
import socket, sys
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

async def hello(request):
    return PlainTextResponse("hello")

app = Starlette(routes=[Route("/hello", hello, methods=["GET", "POST"])])
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY (see serve)
sock.bind(("127.0.0.1", 0))
sock.listen(1024)
print(f"serving on http://127.0.0.1:{sock.getsockname()[1]}", file=sys.stderr, flush=True)
config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False, server_header=False)
uvicorn.Server(config).run(sockets=[sock])
"""

POLICY = """\
apiVersion: sandrun/v1
kind: Policy
metadata: {name: bench}
signatures: {required: false}
"""

MANIFEST = """\
apiVersion: sandrun/v1
kind: Manifest
metadata: {{name: bench}}
tools:
  hello: {{module: hello.wasm, sha256: {digest}}}
jobs:
  - {{name: hello, tool: hello, route: /hello}}
"""

_READY = re.compile(r"serving on http://127\.0\.0\.1:(\d+)")


def _start(command: list[str], cwd: Path) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(command, cwd=cwd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert process.stderr is not None
    for line in process.stderr:
        ready = _READY.search(line)
        if ready:
            return process, int(ready.group(1))
    raise SystemExit(f"server did not start: {command}")


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    process.wait(60)


def _client(args: tuple[int, int, float]) -> list[float]:
    """One load-generator process: ``connections`` keep-alive connections, round robin, until the deadline."""
    port, connections, seconds = args
    pool = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(connections)]
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    import threading

    lock = threading.Lock()

    def loop(connection: http.client.HTTPConnection) -> None:
        mine: list[float] = []
        while True:
            start = time.perf_counter()
            if start >= deadline:
                break
            connection.request("GET", "/hello")
            response = connection.getresponse()
            body = response.read()
            mine.append(time.perf_counter() - start)
            if response.status != 200 or body != b"hello":
                raise SystemExit(f"bad answer {response.status} {body[:80]!r}")
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=loop, args=(c,)) for c in pool]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def _load(port: int, procs: int, connections: int, seconds: float) -> tuple[float, float, float]:
    """Requests/s, median and p99 latency (ms) over ``seconds`` of load."""
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        pool.map(_client, [(port, connections, 1.0)] * procs)  # warm-up: connections, caches, JIT-free paths
        started = time.perf_counter()
        results = pool.map(_client, [(port, connections, seconds)] * procs)
        elapsed = time.perf_counter() - started
    latencies = sorted(x for part in results for x in part)
    rate = len(latencies) / elapsed
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    return rate, statistics.median(latencies) * 1000, p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--procs", type=int, default=2, help="load-generator processes")
    parser.add_argument("--connections", type=int, default=4, help="keep-alive connections per process")
    parser.add_argument("--concurrency", type=int, default=os.cpu_count() or 1, help="serve's guest threads")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        wasm = wasmtime.wat2wasm(GUEST_WAT)
        (work / "hello.wasm").write_bytes(wasm)
        (work / "hello.yaml").write_text(MANIFEST.format(digest=hashlib.sha256(wasm).hexdigest()))
        (work / "policy.yaml").write_text(POLICY)
        (work / "plain.py").write_text(textwrap.dedent(PLAIN_APP))
        figures = {}
        for name, command in (
            ("plain Starlette", [sys.executable, "plain.py"]),
            (
                "sandrun serve",
                [sys.executable, "-m", "runner", "serve", "hello.yaml", "--policy", "policy.yaml"]
                + ["--port", "0", "--out", "out", "--cache-dir", "cache"]
                + ["--concurrency", str(options.concurrency), "--queue", "1024"],
            ),
        ):
            process, port = _start(command, work)
            try:
                figures[name] = _load(port, options.procs, options.connections, options.seconds)
            finally:
                _stop(process)
        plain, served = figures["plain Starlette"], figures["sandrun serve"]
        clients = options.procs * options.connections
        print(f"{clients} keep-alive clients ({options.procs} processes), {options.seconds:g} s each")
        print(f"{'server':<18}{'req/s':>10}{'median ms':>12}{'p99 ms':>10}")
        for name, (rate, median, p99) in figures.items():
            print(f"{name:<18}{rate:>10.0f}{median:>12.2f}{p99:>10.2f}")
        print(f"throughput: plain / serve = {plain[0] / served[0]:.2f}x (target: well under 10x)")
        print(f"p99 latency: serve / plain = {served[2] / plain[2]:.2f}x")
        records = sum(
            1 for line in (work / "out" / "audit.jsonl").open() if '"kind":"request.served"' in line
        )
        print(f"audit records written by serve: {records}")


if __name__ == "__main__":
    main()
