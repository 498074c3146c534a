"""Benchmark: what sharding costs. A batch run as 1 shard against the same batch as 4 shards run
one after another on this machine, and what merging their logs costs.

(a) total work: 2,000 jobs of a tiny WASI tool (``fixtures/hello.wasm``) through ``runner.api.run``
    as ``--shard 1/1`` against ``--shard i/4`` for i = 1..4 in turn (each its own run, log, seal and
    reports, as on four machines), ``--jobs 1``; each run reads ``plan.json`` as ``sandrun run
    plan.json`` does (``api.load_plan``: parse, rebuild, check the canonical form; the recompile of
    the manifests that ``verified_plan`` adds is left out: these jobs have no manifests). The ratio is
    the 4 shards' summed time over the one shard's: what sharding adds (the partition, a run's fixed
    costs four times). Target 1.1x.
(b) merge: ``audit merge`` of the 4 shard folders (verify each log with its signature, embed every
    record, seal, write the reports), as time per 10,000 shard records, and against the time of
    the 1-shard run it replaces the need for.

The module cache is warmed first; the best of several rounds (noise on a shared machine only ever
adds time). Run: ``python bench/bench_shard.py [--quick]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_executor import FIXTURES, install, make_plan, median_of  # noqa: E402

from runner.api import load_plan, new_run_id, plan_sha256  # noqa: E402
from runner.api import run as sandrun_run  # noqa: E402
from runner.audit import LOG_NAME, record  # noqa: E402
from runner.audit.merge import merge_shards  # noqa: E402
from runner.executor import BatchOptions  # noqa: E402
from runner.shard import ShardRequest, ShardSpec  # noqa: E402
from runner.signing import load_private_key, parse_public_key  # noqa: E402

KEYS = Path(__file__).resolve().parents[1] / "tests" / "keys"
TARGET_WORK = 1.1
SHARDS = 4


def run_shards(
    plan: Path, root: Path, cache: Path, out: Path, total: int, clock: Callable[[], float]
) -> Callable[[], float]:
    """A measure: every shard of ``total`` run in turn into fresh folders under ``out``; seconds of
    ``clock`` (wall time, or the process's CPU time: the work itself, blind to disk waits)."""
    key = load_private_key(KEYS / "examples-2026.key")
    options = BatchOptions(jobs=1, cache_dir=cache)
    rounds = iter(range(1_000_000))

    def measure() -> float:
        folder = out / f"{total}-{next(rounds)}"
        started = clock()
        for index in range(1, total + 1):
            outcome = sandrun_run(
                lambda: load_plan(plan),
                root=root,
                out_dir=folder / f"shard-{index}",
                options=options,
                signing_key=key,
                shard=ShardRequest(ShardSpec(index, total)),
            )
            assert outcome.exit_code == 0
        return clock() - started

    return measure


def hash_of_loaded(plan_file: Path) -> float:
    """Seconds to get the digest of a plan ``load_plan`` has just read (as ``api.run`` does)."""
    loaded = load_plan(plan_file)
    return timed(lambda: plan_sha256(loaded))


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--jobs", type=int, default=2000, help="batch size (default 2,000)")
    args = parser.parse_args()
    rounds = 2 if args.quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp).resolve()
        module = install(root, "hello", (FIXTURES / "hello.wasm").read_bytes())
        plan = make_plan(module, [["hello", str(i)] for i in range(args.jobs)])
        plan_file = root / "plan.json"
        plan_file.write_bytes(plan.to_json() + b"\n")
        cache, out = root / "cache", root / "out"
        measures = {
            f"{total} {kind}": run_shards(plan_file, root, cache, out / kind, total, clock)
            for kind, clock in (("wall", time.perf_counter), ("cpu", time.process_time))
            for total in (1, SHARDS)
        }
        measures["1 wall"]()  # warm the module cache and the imports
        times = median_of(rounds, measures, pick=min)
        work = {kind: times[f"{SHARDS} {kind}"] / times[f"1 {kind}"] for kind in ("wall", "cpu")}

        folders = [out / "wall" / f"{SHARDS}-0" / f"shard-{i}" for i in range(1, SHARDS + 1)]
        records = sum(len((f / LOG_NAME).read_bytes().splitlines()) for f in folders)
        merges = iter(range(1_000_000))

        def merge() -> float:
            started = time.perf_counter()
            merge_shards(
                folders,
                plan,
                out_dir=root / f"merged-{next(merges)}",
                public_keys=[parse_public_key((KEYS / "examples-2026.pub").read_text())],
                run_id=new_run_id(),
                signing_key=load_private_key(KEYS / "examples-2026.key"),
            )
            return time.perf_counter() - started

        merge_s = median_of(rounds, {"merge": merge}, pick=min)["merge"]
        whole_plan = median_of(
            rounds + 2,
            {
                "load": lambda: timed(lambda: load_plan(plan_file)),
                "hash": lambda: hash_of_loaded(plan_file),
                "encode": lambda: timed(lambda: plan.sha256),
                "record": lambda: timed(lambda: record.plan_compiled(plan, "0" * 64, None)),
                "partition": lambda: timed(lambda: ShardRequest(ShardSpec(1, SHARDS)).assign(plan, "0" * 64)),
            },
            pick=min,
        )
    print(f"{args.jobs} jobs, --jobs 1, best of {rounds}")
    for kind in ("wall", "cpu"):
        verdict = "OK" if work[kind] <= TARGET_WORK else "OVER"
        print(
            f"  {kind:<4}: 1 shard {times[f'1 {kind}']:6.2f} s, {SHARDS} shards in turn "
            f"{times[f'{SHARDS} {kind}']:6.2f} s: ratio {work[kind]:5.2f}x target <= {TARGET_WORK} {verdict}"
        )
    extra = (times[f"{SHARDS} wall"] - times["1 wall"]) / (SHARDS - 1)
    plan_work = whole_plan["load"] + whole_plan["record"] + whole_plan["partition"]
    print(
        f"  each extra shard costs {extra * 1000:.0f} ms of wall time; of it, work on the whole plan that "
        f"every shard repeats: {plan_work * 1000:.0f} ms (reading plan.json and checking its canonical "
        f"form {whole_plan['load'] * 1000:.0f}, plan.compiled record {whole_plan['record'] * 1000:.0f}, "
        f"partition {whole_plan['partition'] * 1000:.0f}); the plan's hash is that of the checked bytes "
        f"(~{max(whole_plan['hash'], 0) * 1000:.1f} ms; encoding the plan again to hash it would cost "
        f"{whole_plan['encode'] * 1000:.0f})"
    )
    print(
        f"  -> with that work alone, {SHARDS} shards cost at least "
        f"{1 + (SHARDS - 1) * plan_work / times['1 wall']:.2f}x one shard for this batch"
    )
    per_10k = merge_s * 10_000 / records
    print(f"  merge of {records} records {merge_s:6.2f} s = {per_10k:.2f} s per 10,000 records")
    print(f"  merge / 1-shard run (wall) {merge_s / times['1 wall']:5.2f}x")


if __name__ == "__main__":
    main()
