"""The partition (issue 14): every job once, components whole, the same on every machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.canonical import canonical_json
from runner.errors import InputError
from runner.executor import _clash, _footprint
from runner.plan import InputFile, JobSpec, Limits, Mount, Plan, PolicyRef, Tool
from runner.shard import (
    ShardRequest,
    ShardSpec,
    components,
    load_durations,
    parse_shard,
    partition,
    partition_digest,
)

SHA = "0" * 64
HOSTS = ("data", "data/sub", "out", "other", "data/sub/deep")


def spec(name: str, needs: tuple[str, ...] = (), mounts: tuple[tuple[str, str], ...] = ()) -> JobSpec:
    return JobSpec(
        id=f"m/{name}",
        manifest="m",
        name=name,
        tool="t",
        module="t.wasm",
        module_sha256=SHA,
        args=(),
        program_name="t",
        invoke=None,
        env=(),
        stdin=None,
        mounts=tuple(Mount(host=h, guest=f"/g{i}", mode=m) for i, (h, m) in enumerate(mounts)),  # type: ignore[arg-type]
        network=None,
        limits=Limits(fuel=None, memory=1 << 20, timeout_ms=1000, stack=1 << 16, output=1 << 10),
        needs=tuple(f"m/{n}" for n in needs),
        expect_exit_code=0,
        actions=(),
        score="0",
    )


def plan_of(jobs: list[JobSpec]) -> Plan:
    tool = Tool(
        manifest="m",
        name="t",
        module="t.wasm",
        sha256=SHA,
        version=None,
        signer=None,
        signature_verified=False,
        actions=(),
    )
    return Plan(
        policy=PolicyRef(name="p", path="p.yaml", sha256=SHA, git_commit=None),
        inputs=(InputFile(path="m.yaml", sha256=SHA),),
        tools=(tool,),
        jobs=tuple(jobs),
    )


@st.composite
def plans(draw: st.DrawFn) -> tuple[list[JobSpec], dict[str, int]]:
    count = draw(st.integers(min_value=0, max_value=25))
    names = [f"j{i:02d}" for i in range(count)]
    jobs = []
    for i, name in enumerate(names):
        needs = draw(st.lists(st.sampled_from(names[:i]), unique=True, max_size=2)) if i else []
        mounts = draw(st.lists(st.tuples(st.sampled_from(HOSTS), st.sampled_from(("ro", "rw"))), max_size=2))
        jobs.append(spec(name, tuple(needs), tuple(mounts)))
    durations = draw(st.dictionaries(st.sampled_from(names or ["x"]), st.integers(0, 10_000)))
    return jobs, {f"m/{k}": v for k, v in durations.items()}


@settings(max_examples=150, deadline=None)
@given(plans(), st.integers(min_value=1, max_value=6), st.randoms(use_true_random=False))
def test_every_job_once_components_whole_and_order_free(
    drawn: tuple[list[JobSpec], dict[str, int]], total: int, rng: object
) -> None:
    jobs, durations = drawn
    split = partition(plan_of(jobs), total, durations)
    shard_of = {ident: i for i, ids in enumerate(split.shards) for ident in ids}
    placed = [ident for ids in split.shards for ident in ids]
    # every job exactly once
    assert sorted(placed) == sorted(job.id for job in jobs) and len(placed) == len(set(placed))
    # components never split: needs and clashing mounts stay together
    for job in jobs:
        assert all(shard_of[need] == shard_of[job.id] for need in job.needs)
        for other in jobs:
            if _clash(_footprint(job), _footprint(other)):
                assert shard_of[job.id] == shard_of[other.id]
    # any input order gives the same partition
    shuffled = list(jobs)
    rng.shuffle(shuffled)  # type: ignore[attr-defined]
    assert partition(plan_of(shuffled), total, durations) == split
    assert split.digest == partition_digest([list(reversed(s)) for s in split.shards])


def test_largest_first_into_the_least_loaded_shard_with_stable_ties() -> None:
    jobs = [spec("a"), spec("b"), spec("c"), spec("d"), spec("e", needs=("d",))]
    durations = {"m/a": 50, "m/b": 30, "m/c": 20, "m/d": 10, "m/e": 5}
    split = partition(plan_of(jobs), 2, durations)
    # a (50) -> 1, b (30) -> 2, c (20) -> 2 (now 50), {d, e} (15) -> the tie goes to shard 1
    assert split.shards == (("m/a", "m/d", "m/e"), ("m/b", "m/c"))
    assert split.loads == (65, 50)
    # without durations every job weighs 1: {d, e} (2) first, then a, b, c by id
    assert partition(plan_of(jobs), 2).shards == (("m/c", "m/d", "m/e"), ("m/a", "m/b"))


def test_unknown_jobs_weigh_the_mean_of_the_known_ones() -> None:
    jobs = [spec("a"), spec("b"), spec("c")]
    split = partition(plan_of(jobs), 2, {"m/a": 100, "m/b": 300})
    assert split.loads == (300, 300)  # c weighs 200, joins a


def test_a_writer_joins_everything_under_or_above_its_mount_and_readers_stay_apart() -> None:
    jobs = [
        spec("w", mounts=(("data", "rw"),)),
        spec("r1", mounts=(("data/sub", "ro"),)),
        spec("r2", mounts=(("other", "ro"),)),
        spec("r3", mounts=(("other", "ro"),)),
    ]
    assert components(plan_of(jobs)) == [("m/r1", "m/w"), ("m/r2",), ("m/r3",)]


def test_more_shards_than_components_leaves_empty_shards() -> None:
    split = partition(plan_of([spec("a"), spec("b", needs=("a",))]), 3)
    assert split.shards == (("m/a", "m/b"), (), ())


def test_the_partition_is_the_same_under_any_hash_seed(tmp_path: Path) -> None:
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from test_shard import plan_of, spec;"
        "from runner.shard import partition;"
        "jobs = [spec(f'n{i}', needs=(f'n{i-1}',) if i % 3 else (), "
        "mounts=((('data','rw'),) if i % 7 == 0 else ())) for i in range(60)];"
        "print(partition(plan_of(jobs), 4).digest, len({str(i) for i in range(50)}))"
    )
    here = str(Path(__file__).parent)
    seen = set()
    for seed in ("1", "2024"):
        result = subprocess.run(
            [sys.executable, "-c", script, here],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        seen.add(result.stdout)
    assert len(seen) == 1


def test_the_assignment_runs_the_shards_jobs_in_plan_order_with_their_tools() -> None:
    jobs = [spec("b"), spec("a"), spec("c", needs=("b",))]
    request = ShardRequest(ShardSpec(1, 2))
    assignment = request.assign(plan_of(jobs), "f" * 64)
    assert [job.id for job in assignment.plan.jobs] == ["m/b", "m/c"]
    record = assignment.record()
    assert record["jobs"] == ["m/b", "m/c"] and record["index"] == 1 and record["total"] == 2
    assert record["partition_sha256"] == assignment.partition.digest and record["plan_sha256"] == "f" * 64


# -- --shard ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("2/4", {}, (2, 4)),
        ("auto", {"CI_NODE_INDEX": "3", "CI_NODE_TOTAL": "5"}, (3, 5)),
        ("auto/4", {"JOB_COMPLETION_INDEX": "0"}, (1, 4)),
        ("auto", {"JOB_COMPLETION_INDEX": "3", "SANDRUN_SHARD_TOTAL": "4"}, (4, 4)),
        ("auto/2", {"JOB_COMPLETION_INDEX": "1", "CI_NODE_INDEX": "2", "CI_NODE_TOTAL": "2"}, (2, 2)),
    ],
)
def test_shard_specs(text: str, env: dict[str, str], expected: tuple[int, int]) -> None:
    got = parse_shard(text, env)
    assert (got.index, got.total) == expected


@pytest.mark.parametrize(
    ("text", "env", "rule"),
    [
        ("0/3", {}, "shard.invalid"),
        ("4/3", {}, "shard.invalid"),
        ("1/3/", {}, "shard.invalid"),
        ("-1/3", {}, "shard.invalid"),
        ("auto", {}, "shard.unknown"),
        ("auto", {"JOB_COMPLETION_INDEX": "1"}, "shard.unknown"),
        ("auto/2", {"JOB_COMPLETION_INDEX": "2"}, "shard.invalid"),
        ("auto", {"CI_NODE_INDEX": "1"}, "shard.unknown"),
        ("auto", {"CI_NODE_INDEX": "x1", "CI_NODE_TOTAL": "2"}, "shard.invalid"),
        ("auto", {"JOB_COMPLETION_INDEX": "0", "CI_NODE_INDEX": "2", "CI_NODE_TOTAL": "2"}, "shard.unknown"),
        ("auto/3", {"CI_NODE_INDEX": "1", "CI_NODE_TOTAL": "2"}, "shard.unknown"),
    ],
)
def test_shard_specs_refused(text: str, env: dict[str, str], rule: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_shard(text, env)
    assert caught.value.rule_id == rule


def test_durations_from_a_report(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    jobs = [{"manifest": "m", "name": "a", "wall_ms": 12}, {"manifest": "m", "name": "b", "wall_ms": None}]
    report.write_text(json.dumps({"jobs": jobs}))
    assert load_durations(report) == {"m/a": 12}
    report.write_text('{"jobs": [1]}')
    with pytest.raises(InputError) as caught:
        load_durations(report)
    assert caught.value.rule_id == "shard.durations" and caught.value.location.pointer == "/jobs/0"  # type: ignore[union-attr]
    report.write_text("[")
    with pytest.raises(InputError):
        load_durations(report)


def test_plan_to_dict_is_exactly_asdict_for_every_kind_of_field() -> None:
    """The fast ``Plan.to_dict`` (a shard hashes the whole plan) against ``dataclasses.asdict``."""
    import dataclasses

    from runner.api import compile_manifests

    cases = Path(__file__).resolve().parents[1] / "cases"
    plan = compile_manifests(
        [cases / "valid" / "manifest.yaml"], cases / "_shared" / "policy.yaml", root=cases
    )
    assert any(job.mounts for job in plan.jobs) and any(job.network for job in plan.jobs)
    assert any(job.needs for job in plan.jobs) and any(job.env for job in plan.jobs)
    assert plan.to_dict() == dataclasses.asdict(plan)
    assert plan.to_json() == canonical_json(dataclasses.asdict(plan))


def test_a_loaded_plan_is_hashed_from_the_bytes_it_was_checked_against(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every shard reads the whole plan: ``load_plan`` encodes it once to check its canonical form,
    and the run's digest is the hash of those bytes (no second encoding); a plan that is not the
    very object just loaded, or a file not in canonical form, gets no such shortcut."""
    from runner import api

    plan = plan_of([spec(f"j{i}") for i in range(5)])
    path = tmp_path / "plan.json"
    path.write_bytes(plan.to_json() + b"\n")
    loaded = api.load_plan(path)
    encodings = []
    real = Plan.to_json
    monkeypatch.setattr(Plan, "to_json", lambda self: encodings.append(self) or real(self))
    assert api.plan_sha256(loaded) == plan.sha256 == canonical_sha256(path)
    assert encodings == [plan]  # only the ``plan.sha256`` of the assert: the loaded one was free
    other = plan_of([spec(f"j{i}") for i in range(5)])
    digest = api.plan_sha256(other)
    assert encodings[-1] is other and digest == plan.sha256
    path.write_bytes(b" " + plan.to_json())  # same plan, not canonical: refused before any hash
    with pytest.raises(InputError, match="canonical form"):
        api.load_plan(path)
    assert api.plan_sha256(loaded) == plan.sha256


def canonical_sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes().rstrip(b"\n")).hexdigest()


def reference_partition(plan: Plan, total: int, durations: dict[str, int]) -> tuple[tuple[str, ...], ...]:
    """The rule as the docs state it, scanning every shard for the least loaded one (what a heap
    makes O(log n): with a shard per job, 2,000 jobs were 4 million comparisons)."""
    known = [max(1, durations[job.id]) for job in plan.jobs if job.id in durations]
    default = round(sum(known) / len(known)) if known else 1
    weight = {job.id: max(1, durations[job.id]) if job.id in durations else default for job in plan.jobs}
    ordered = sorted(components(plan), key=lambda ids: (-sum(weight[i] for i in ids), ids[0]))
    loads, shards = [0] * total, [[] for _ in range(total)]  # type: list[int], list[list[str]]
    for ids in ordered:
        target = min(range(total), key=lambda i: (loads[i], i))
        loads[target] += sum(weight[i] for i in ids)
        shards[target].extend(ids)
    return tuple(tuple(sorted(s)) for s in shards)


@settings(max_examples=150, deadline=None)
@given(plans(), st.integers(min_value=1, max_value=40))
def test_the_least_loaded_shard_is_found_as_a_scan_would(
    drawn: tuple[list[JobSpec], dict[str, int]], total: int
) -> None:
    jobs, durations = drawn
    plan = plan_of(jobs)
    assert partition(plan, total, durations).shards == reference_partition(plan, total, durations)
    assert partition(plan, total).shards == reference_partition(plan, total, {})


EARLY = """
import json, sys
from multiprocessing import forkserver
from pathlib import Path
from runner.api import run
from runner.errors import InputError
from runner.executor import BatchOptions

seen = []

def make_plan():
    seen.append(forkserver._forkserver._forkserver_pid is not None)
    raise InputError.one("plan.invalid", "refused here: only the order matters")

try:
    run(make_plan, root=Path(sys.argv[1]), out_dir=Path(sys.argv[1]) / "out",
        options=BatchOptions(isolation=sys.argv[2]))
except InputError:
    print(json.dumps(seen))
"""


@pytest.mark.parametrize(("isolation", "started"), [("workers", True), ("threads", False)])
def test_the_forkserver_starts_before_the_plan_is_read(tmp_path: Path, isolation: str, started: bool) -> None:
    """Every shard reads and checks the whole plan; the forkserver's interpreter starts first and
    imports wasmtime meanwhile (a new process, so no earlier test started it). Not for threads."""
    result = subprocess.run(
        [sys.executable, "-c", EARLY, str(tmp_path), isolation],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [started]
