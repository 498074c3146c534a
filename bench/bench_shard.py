"""Benchmark: what sharding costs, measured as CI runs it. A 2,000-job batch run as one process
against the same batch as 4 shards run one after another on this machine, and merging their logs.

(a) total work: 20 manifests of 100 jobs of a tiny WASI tool (``fixtures/hello.wasm``), compiled
    once by ``sandrun compile``. One ``sandrun run plan.json --policy P`` process against
    ``sandrun run plan.json --policy P --shard i/4`` for i = 1..4, each a new process with its own
    ``--out``, one after another (as on four machines, so the 4 shards' times add up). Both sides
    do everything ``run`` does: read the plan, recompile its manifests under the operator's policy
    (the plan-vs-policy check), partition it, start the workers, run, write the reports, seal and
    sign the log. ``--jobs 1``, the module cache warm, and the bytecode cached (as in a pip-installed
    Sandrun; this machine sets PYTHONDONTWRITEBYTECODE, so the bench points PYTHONPYCACHEPREFIX at
    a temporary folder instead). Ratio: the 4 shards' summed wall time over the one run's, per
    round; target 1.1x. CPU: what the ``sandrun`` processes and the children they reaped used.
(b) where a shard's fixed cost goes: the extra wall time per shard ((4 shards - 1 run) / 3) next
    to what every shard repeats: the interpreter and the CLI's imports (``sandrun --version``), and
    ``--shard 1/4 --dry-run`` (all of that plus reading and checking the whole plan and the
    partition, without running), and, in this process, the pieces of checking the plan (loading the
    manifests, compiling them, encoding the result) and what the plan was rebuilt with before
    (``load_plan``: ``Plan.from_dict`` and the canonical re-encoding, now skipped). From these: the
    floor no change to Sandrun can go below (4 interpreters importing the CLI, against the one
    run), and the break-even: how long one run of a batch must take for 4 shards to stay within
    the target with this fixed cost, as the extra time per job over hello.wasm's.
(c) merge: ``sandrun audit merge`` of the 4 shard folders as a process (verify each log and its
    signature, embed every record, seal, write the reports), per 10,000 shard records and against
    the one run.

Rounds are interleaved (the order of the two sides alternates), medians are printed with the
spread of the per-round ratios and the load average. Run: ``python bench/bench_shard.py [--quick]``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_executor import FIXTURES  # noqa: E402

from runner import api  # noqa: E402
from runner.audit import LOG_NAME, record  # noqa: E402
from runner.plan import Plan  # noqa: E402
from runner.shard import ShardRequest, ShardSpec  # noqa: E402

KEYS = Path(__file__).resolve().parents[1] / "tests" / "keys"
KEY, PUB = KEYS / "examples-2026.key", KEYS / "examples-2026.pub"
TARGET_WORK = 1.1
SHARDS = 4
MANIFESTS = 20
POLICY = "policies/bench.yaml"


def make_project(root: Path, jobs: int, work: int = 0) -> None:
    """``jobs`` jobs in :data:`MANIFESTS` manifests, a policy, and ``plan.json``: each job runs
    hello.wasm, or with ``work`` the bytecode interpreter ``interp.wasm`` for ``work`` steps."""
    for folder in ("manifests", "tools", "policies"):
        (root / folder).mkdir(parents=True)
    tool = "interp" if work else "hello"
    wasm = (FIXTURES / f"{tool}.wasm").read_bytes()
    (root / "tools" / f"{tool}.wasm").write_bytes(wasm)
    (root / POLICY).write_text(
        "apiVersion: sandrun/v1\nkind: Policy\nmetadata: {name: bench}\n"
        "signatures: {required: false}\nlimits:\n  max: {memory: 64MiB}\n"
    )
    sha256 = hashlib.sha256(wasm).hexdigest()
    per = -(-jobs // MANIFESTS)
    for m in range(MANIFESTS):
        names = range(m * per, min(jobs, (m + 1) * per))
        (root / "manifests" / f"m{m:02d}.yaml").write_text(
            f"apiVersion: sandrun/v1\nkind: Manifest\nmetadata: {{name: m{m:02d}}}\ntools:\n"
            f"  {tool}: {{module: ../tools/{tool}.wasm, sha256: {sha256}}}\njobs:\n"
            + "".join(f"  - {{name: job-{i:05d}, tool: {tool}, args: ['{work or i}']}}\n" for i in names)
        )
    sandrun(root, "compile", "manifests", "--policy", POLICY, "-o", "plan.json")


class Processes:
    """``python -m runner`` in ``root`` as CI runs it; each call's wall and CPU seconds are kept."""

    def __init__(self, root: Path, pycache: Path, source: Path | None = None) -> None:
        self.root = root
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        self.env = {**env, "CI": "true", "PYTHONPYCACHEPREFIX": str(pycache)}
        if source is not None:  # another Sandrun's source tree, found before the installed one
            self.env["PYTHONPATH"] = str(source)

    def __call__(self, *args: str, codes: tuple[int, ...] = (0,)) -> tuple[float, float]:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "runner", *args],
            cwd=self.root,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=False,
        )
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if result.returncode not in codes:
            raise SystemExit(f"sandrun {' '.join(args)}: exit {result.returncode}\n{result.stderr.decode()}")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return wall, cpu


def sandrun(root: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "runner", *args], cwd=root, check=True, capture_output=True)


def run_args(out: str, *extra: str) -> tuple[str, ...]:
    return (
        "run",
        "plan.json",
        "--policy",
        POLICY,
        "-j",
        "1",
        "--signing-key",
        str(KEY),
        "--out",
        out,
        *extra,
    )


def in_process(root: Path, rounds: int) -> dict[str, float]:
    """Median seconds of the pieces of a shard's whole-plan work, in this process."""
    plan_file, policy = root / "plan.json", root / POLICY
    paths = sorted((root / "manifests").glob("*.yaml"))

    def compiled() -> Plan:
        documents, _ = api.load_manifests(paths)
        return api.compile_documents(documents, policy, root=root)

    plan = compiled()
    pieces: dict[str, Callable[[], object]] = {
        "verified_plan": lambda: api.verified_plan(plan_file, policy, root=root),
        "manifests": lambda: api.load_manifests(paths),
        "compile": compiled,
        "encode": plan.to_json,
        "old load_plan": lambda: api.load_plan(plan_file),
        "partition": lambda: ShardRequest(ShardSpec(1, SHARDS)).assign(plan, "0" * 64),
        "plan.compiled": lambda: record.plan_compiled(plan, "0" * 64, None),
    }
    times: dict[str, list[float]] = {name: [] for name in pieces}
    for _ in range(rounds):
        for name, piece in pieces.items():
            started = time.perf_counter()
            piece()
            times[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(values) for name, values in times.items()}
    medians["compile"] -= medians["manifests"]
    return medians


def summary(
    whole: list[tuple[float, float]], sharded: list[tuple[float, float]]
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Per-round ratios (4 shards over 1 run) of wall and CPU time, and the median times."""
    ratios = {
        kind: [s[k] / w[k] for s, w in zip(sharded, whole, strict=True)]
        for k, kind in enumerate(("wall", "cpu"))
    }
    median = {
        f"{n} {kind}": statistics.median(v[k] for v in values)
        for n, values in (("1", whole), ("4", sharded))
        for k, kind in enumerate(("wall", "cpu"))
    }
    return ratios, median


def spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--jobs", type=int, default=2000, help="batch size (default 2,000)")
    parser.add_argument(
        "--work",
        type=int,
        default=0,
        help="each job runs interp.wasm for this many steps instead of hello.wasm (~1.6 us a step): "
        "checks the break-even the tiny batch predicts",
    )
    parser.add_argument(
        "--against",
        type=Path,
        default=None,
        help="another Sandrun source tree, run the same way in the same rounds",
    )
    args = parser.parse_args()
    rounds = 3 if args.quick else 7
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp).resolve() / "project"
        make_project(root, args.jobs, args.work)
        procs = {"this": Processes(root, Path(tmp) / "pycache")}
        if args.against is not None:
            procs["against"] = Processes(root, Path(tmp) / "pycache-against", args.against.resolve())
        proc = procs["this"]
        whole: dict[str, list[tuple[float, float]]] = {name: [] for name in procs}
        sharded: dict[str, list[tuple[float, float]]] = {name: [] for name in procs}
        fixed: dict[str, list[float]] = {"--version": [], "--dry-run": []}

        def one(name: str, number: int) -> None:
            whole[name].append(procs[name](*run_args(f"{name}-whole-{number}")))

        def four(name: str, number: int) -> None:
            runs = [
                procs[name](*run_args(f"{name}-r{number}-s{i}", "--shard", f"{i}/{SHARDS}"))
                for i in range(1, SHARDS + 1)
            ]
            sharded[name].append((sum(w for w, _ in runs), sum(c for _, c in runs)))

        for name in procs:
            procs[name](*run_args(f"{name}-warm"))  # the module cache and the bytecode cache
        for number in range(rounds):
            sides = [(side, name) for name in procs for side in (one, four)]
            for side, name in sides if number % 2 == 0 else reversed(sides):
                side(name, number)
            fixed["--version"].append(proc("--version")[0])
            fixed["--dry-run"].append(proc(*run_args("dry", "--shard", f"1/{SHARDS}", "--dry-run"))[0])
        folders = [f"this-r0-s{i}" for i in range(1, SHARDS + 1)]
        records = sum(len((root / f / LOG_NAME).read_bytes().splitlines()) for f in folders)
        merge = [
            proc(
                "audit", "merge", *folders, "--plan", "plan.json", "--out", f"merged-{n}",
                "--pub", str(PUB), "--signing-key", str(KEY), codes=(0, 1),
            )[0]
            for n in range(rounds)
        ]  # fmt: skip
        pieces = in_process(root, rounds + 2)
    ratios, median = summary(whole["this"], sharded["this"])
    print(
        f"{args.jobs} jobs of {f'interp.wasm {args.work:,}' if args.work else 'hello.wasm'} in "
        f"{MANIFESTS} manifests, --jobs 1, whole processes; medians of {rounds} "
        f"interleaved rounds; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    for kind in ("wall", "cpu"):
        ratio = statistics.median(ratios[kind])
        verdict = "OK" if ratio <= TARGET_WORK else "OVER"
        print(
            f"  {kind:<4}: 1 run {median[f'1 {kind}']:5.2f} s, {SHARDS} shards in turn "
            f"{median[f'4 {kind}']:5.2f} s: ratio {ratio:4.2f}x (rounds {spread(ratios[kind])}) "
            f"target <= {TARGET_WORK} {verdict}"
        )
    if args.against is not None:
        theirs, their_median = summary(whole["against"], sharded["against"])
        for k, kind in enumerate(("wall", "cpu")):
            this_by_that = {
                n: [a[k] / b[k] for a, b in zip(values["this"], values["against"], strict=True)]
                for n, values in (("1", whole), ("4", sharded))
            }
            mid = {n: statistics.median(v) for n, v in (*this_by_that.items(), ("ratio", theirs[kind]))}
            print(
                f"  {kind:<4} against {args.against.name} in the same rounds: 1 run "
                f"{their_median[f'1 {kind}']:5.2f} s, {SHARDS} shards {their_median[f'4 {kind}']:5.2f} s: "
                f"ratio {mid['ratio']:4.2f}x (rounds {spread(theirs[kind])}); this / that: 1 run "
                f"{mid['1']:4.2f}x ({spread(this_by_that['1'])}), {SHARDS} shards {mid['4']:4.2f}x "
                f"({spread(this_by_that['4'])})"
            )
    extra = (median["4 wall"] - median["1 wall"]) / (SHARDS - 1)
    version, dry = (statistics.median(fixed[k]) for k in ("--version", "--dry-run"))
    print(f"  each extra shard costs {extra * 1000:.0f} ms of wall time; every shard repeats:")
    print(f"    interpreter + CLI imports (sandrun --version)      {version * 1000:5.0f} ms")
    print(f"    --dry-run: that + read, check, partition the plan  {dry * 1000:5.0f} ms")
    print(f"    the rest (log, workers, reports, seal): ~{(extra - dry) * 1000:.0f} ms (extra - dry-run)")
    check = pieces["verified_plan"]
    print(
        f"    in this process: checking the whole plan {check * 1000:.0f} ms = manifests (read, YAML, "
        f"schema) {pieces['manifests'] * 1000:.0f} + compile {pieces['compile'] * 1000:.0f} + encode "
        f"{pieces['encode'] * 1000:.0f} + the rest; partition {pieces['partition'] * 1000:.0f}, "
        f"plan.compiled record {pieces['plan.compiled'] * 1000:.0f}"
    )
    print(
        f"    skipped now: rebuilding the file into a plan and re-encoding it (load_plan) "
        f"{pieces['old load_plan'] * 1000:.0f} ms"
    )
    print(
        f"  -> the floor with this fixed cost: {SHARDS} shards >= "
        f"{1 + (SHARDS - 1) * dry / median['1 wall']:.2f}x one run of this batch (dry-run alone)"
    )
    # What no change to Sandrun can remove: every shard is a new interpreter importing the CLI.
    interpreter_floor = 1 + (SHARDS - 1) * version / median["1 wall"]
    print(
        f"  -> the floor of {SHARDS} interpreters alone (sandrun --version each): "
        f"{interpreter_floor:.2f}x one run of this batch"
    )
    # The target holds once one run's wall time T satisfies (SHARDS - 1) * extra <= (TARGET - 1) * T.
    break_even = (SHARDS - 1) * extra / (TARGET_WORK - 1)
    per_job = (break_even - median["1 wall"]) / args.jobs
    print(
        f"  -> {TARGET_WORK}x holds for a batch whose one run takes >= {break_even:.1f} s "
        f"({SHARDS - 1} x {extra * 1000:.0f} ms / {TARGET_WORK - 1:.1f}): {args.jobs} jobs each "
        f"~{max(0.0, per_job) * 1000:.1f} ms longer than these"
    )
    merge_s = statistics.median(merge)
    print(
        f"  merge of {records} records (a process) {merge_s:5.2f} s = {merge_s * 10_000 / records:.2f} s per "
        f"10,000 records (rounds {spread([m * 10_000 / records for m in merge])}); merge / 1 run "
        f"{merge_s / median['1 wall']:4.2f}x"
    )


if __name__ == "__main__":
    main()
