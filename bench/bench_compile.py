"""Benchmark: what bounding compilation costs, as ratios against compiling in-process.

Sandrun compiles every module in a child process (``runner.compiling``: a forkserver child under
``RLIMIT_CPU`` and ``RLIMIT_DATA``, the result sent back serialized and deserialized here). This
prints, for a tiny module (``fixtures/hello.wasm``) and the bytecode interpreter
(``fixtures/interp.wasm``), the best of several rounds of:

- in-process: ``wasmtime.Module(engine, data)`` with the engine configuration Sandrun uses;
- bounded: ``compile_bounded(...)`` then ``Compiled.load(engine)`` (the whole round trip);

and the ratio bounded / in-process. The first bounded compile of a process also starts the
forkserver (it imports Wasmtime once); that one-off cost is printed separately.

Run: ``python bench/bench_compile.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import wasmtime

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runner.compiling import CompileBounds, compile_bounded, new_config  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"
BOUNDS = CompileBounds(cpu_ms=60_000, memory=2 << 30)
FUEL, STACK = False, 512 << 10


def best(rounds: int, work: Callable[[], object]) -> float:
    """The fastest of ``rounds`` runs, in seconds: on a shared machine noise only adds time."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    rounds = parser.parse_args().rounds
    engine = wasmtime.Engine(new_config(fuel=FUEL, stack=STACK))

    def bounded(data: bytes) -> wasmtime.Module:
        return compile_bounded(data, fuel=FUEL, stack=STACK, bounds=BOUNDS).load(engine)

    started = time.perf_counter()
    bounded((FIXTURES / "hello.wasm").read_bytes())
    print(f"first bounded compile (starts the forkserver): {(time.perf_counter() - started) * 1e3:.0f} ms")
    print(f"{'module':<12} {'size':>8} {'in-process':>11} {'bounded':>9} {'ratio':>6}")
    for name in ("hello.wasm", "interp.wasm"):
        data = (FIXTURES / name).read_bytes()
        inline = best(rounds, lambda data=data: wasmtime.Module(engine, data))
        child = best(rounds, lambda data=data: bounded(data))
        print(
            f"{name:<12} {len(data) / 1024:>6.0f} K {inline * 1e3:>8.1f} ms {child * 1e3:>6.1f} ms "
            f"{child / inline:>5.2f}x"
        )


if __name__ == "__main__":
    main()
