"""Benchmark: what hermetic mode costs, as ratios against the same job run plain, in one run.

(a) a clock-free job (``fixtures/hello.wasm``: print and exit): per-job cost of the hermetic
    linker and a fresh virtual world;
(b) a clock-heavy job (``tests/fixtures/timely.wasm reads N``: N ``clock_gettime`` calls): each
    virtual read is a Python host call instead of Wasmtime's native one;
(c) the mount digests a hermetic job adds in the executor (before the run, and of rw mounts
    after it): ``hermetic.snapshot`` of a folder of 200 files of 4 KiB, against the job itself.

Jobs run through ``Runtime.run`` on this thread (no worker process: it would add the same time
to both sides). The best of several rounds: on a shared machine noise only ever adds time.

Run: ``python bench/bench_hermetic.py [--quick]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runner import hermetic  # noqa: E402
from runner.plan import Hermetic, JobSpec, Limits, Mount  # noqa: E402
from runner.sandbox import Runtime  # noqa: E402

HERE = Path(__file__).resolve().parent
HELLO = HERE / "fixtures" / "hello.wasm"
TIMELY = HERE.parent / "tests" / "fixtures" / "timely.wasm"
WORLD = Hermetic(epoch_ns=hermetic.DEFAULT_EPOCH_S * 10**9, tick_ns=hermetic.TICK_NS, seed=1)


def _job(root: Path, wasm: Path, args: tuple[str, ...], mounts: tuple[Mount, ...] = ()) -> JobSpec:
    data = wasm.read_bytes()
    (root / wasm.name).write_bytes(data)
    return JobSpec(
        id=f"bench/{wasm.stem}",
        manifest="bench",
        name=wasm.stem,
        tool=wasm.stem,
        module=wasm.name,
        module_sha256=hashlib.sha256(data).hexdigest(),
        args=args,
        program_name=wasm.stem,
        invoke=None,
        env=(),
        stdin=None,
        mounts=mounts,
        network=None,
        limits=Limits(fuel=None, memory=64 << 20, timeout_ms=60_000, stack=512 << 10, output=1 << 20),
        needs=(),
        expect_exit_code=0,
        actions=(),
        score="0",
    )


def _best(rounds: int, repeat: int, work: Callable[[], object]) -> float:
    """Seconds per call: the best of ``rounds`` rounds of ``repeat`` calls."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeat):
            work()
        best = min(best, (time.perf_counter() - start) / repeat)
    return best


def _compare(name: str, runtime: Runtime, root: Path, job: JobSpec, rounds: int, repeat: int) -> None:
    sealed = dataclasses.replace(job, hermetic=WORLD)
    for spec in (job, sealed):  # compile and warm both linkers first
        outcome = runtime.run(spec, root)
        assert outcome.exit_code == 0, outcome
    plain = _best(rounds, repeat, lambda: runtime.run(job, root))
    herm = _best(rounds, repeat, lambda: runtime.run(sealed, root))
    print(f"{name}: plain {plain * 1e6:,.0f} µs, hermetic {herm * 1e6:,.0f} µs, ratio {herm / plain:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and reads")
    options = parser.parse_args()
    rounds, reads = (3, 2_000) if options.quick else (7, 20_000)
    with tempfile.TemporaryDirectory() as folder, Runtime(cache_dir=Path(folder) / "cache") as runtime:
        root = Path(folder)
        _compare("(a) clock-free (hello)", runtime, root, _job(root, HELLO, ()), rounds, 200)
        heavy = _job(root, TIMELY, ("reads", str(reads)))
        _compare(f"(b) clock-heavy ({reads:,} reads)", runtime, root, heavy, rounds, 5)
        data = root / "data"
        data.mkdir()
        for index in range(200):
            (data / f"f{index:03}").write_bytes(bytes(4096))
        mounted = _job(root, HELLO, (), (Mount(host="data", guest="/data", mode="ro"),))
        digest = _best(rounds, 20, lambda: hermetic.snapshot(mounted, root))
        alone = _best(rounds, 20, lambda: runtime.run(mounted, root))
        print(
            f"(c) digest of 200 files x 4 KiB: {digest * 1e6:,.0f} µs, "
            f"{digest / alone:.2f}x the job's own run ({alone * 1e6:,.0f} µs)"
        )


if __name__ == "__main__":
    main()
