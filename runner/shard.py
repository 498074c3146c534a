"""Split one plan across the machines a CI matrix or a Kubernetes Indexed Job already provides.

Every machine compiles (or loads) the same plan and computes the same partition from it, with no
coordinator: the partition is a pure function of the plan's jobs, the shard count and the optional
previous durations. It never depends on the order of the jobs in the plan, on a hash seed or on
the machine, so shard 2 of 3 on one runner and shard 3 of 3 on another agree on who runs what.

1. **Components.** Jobs joined by ``needs``, or whose mounts overlap with a writer among them (the
   executor's own clash test), form one component; a component is never split, so no shard waits
   for another and no two machines write the same folder.
2. **Balance.** Components go largest first (by previous ``wall_ms`` from a ``report.json`` when
   given, else by job count) into the least loaded shard; ties break on the smallest job id and
   the lowest shard index.
3. **Assignment.** Shard ``i`` of ``n`` gets the sub-plan of its jobs and an ``shard.assigned``
   audit record (plan hash, index, total, partition digest, its jobs) that ``sandrun audit
   merge`` checks against the other shards.
"""

from __future__ import annotations

import heapq
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from runner.audit.record import SHARD_ASSIGNED
from runner.canonical import canonical_json, sha256_hex
from runner.errors import InputError, Location, SandrunError
from runner.executor import _clash, _footprint  # the executor's own test of jobs that may not overlap
from runner.plan import Plan

__all__ = [
    "SHARD_ASSIGNED",
    "PARTITION_FORMAT",
    "ShardSpec",
    "Partition",
    "Assignment",
    "ShardRequest",
    "parse_shard",
    "components",
    "partition",
    "partition_digest",
    "load_durations",
    "describe",
]

PARTITION_FORMAT = "sandrun-partition/1"
MAX_SHARDS = 10_000
_SPEC = re.compile(r"([1-9][0-9]{0,4})/([1-9][0-9]{0,4})")
_AUTO = re.compile(r"auto(?:/([1-9][0-9]{0,4}))?")
_TOTAL_ENV = "SANDRUN_SHARD_TOTAL"


@dataclass(frozen=True, slots=True)
class ShardSpec:
    """Shard ``index`` of ``total``, 1-based; ``source`` says where the numbers came from."""

    index: int
    total: int
    source: str = "--shard"

    def __post_init__(self) -> None:
        if not 1 <= self.total <= MAX_SHARDS or not 1 <= self.index <= self.total:
            raise ValueError(
                f"a shard is i/n with 1 <= i <= n <= {MAX_SHARDS}, not {self.index}/{self.total}"
            )

    def __str__(self) -> str:
        return f"{self.index}/{self.total}"


def _bad(message: str, rule: str = "shard.invalid") -> SandrunError:
    return InputError.one(rule, message, Location(file="--shard"))


def _spec(index: int, total: int, source: str) -> ShardSpec:
    try:
        return ShardSpec(index, total, source)
    except ValueError as exc:
        raise _bad(f"{source}: {exc}") from None


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    text = env.get(name)
    if text is None or text == "":
        return None
    if not re.fullmatch(r"0|[1-9][0-9]{0,4}", text):
        raise _bad(f"${name} is {text!r}, not a small non-negative integer")
    return int(text)


def parse_shard(text: str, env: Mapping[str, str]) -> ShardSpec:
    """``i/n`` (1-based, e.g. a GitHub matrix's values passed as arguments), or ``auto[/n]``.

    ``auto`` reads GitLab's ``CI_NODE_INDEX``/``CI_NODE_TOTAL`` (1-based), or Kubernetes'
    ``JOB_COMPLETION_INDEX`` (0-based) with the total from ``auto/n`` or ``$SANDRUN_SHARD_TOTAL``.
    It refuses (``shard.unknown``) when it cannot tell, or when two sources disagree.
    """
    explicit = _SPEC.fullmatch(text)
    if explicit:
        return _spec(int(explicit.group(1)), int(explicit.group(2)), "--shard")
    auto = _AUTO.fullmatch(text)
    if auto is None:
        raise _bad(f"--shard is i/n (1-based, e.g. 2/4), auto or auto/n, not {text!r}")
    given_total = int(auto.group(1)) if auto.group(1) else _env_int(env, _TOTAL_ENV)
    found: list[ShardSpec] = []
    gitlab_index, gitlab_total = _env_int(env, "CI_NODE_INDEX"), _env_int(env, "CI_NODE_TOTAL")
    if (gitlab_index is None) != (gitlab_total is None):
        raise _bad("$CI_NODE_INDEX and $CI_NODE_TOTAL come together (GitLab parallel:)", "shard.unknown")
    if gitlab_index is not None and gitlab_total is not None:
        found.append(_spec(gitlab_index, gitlab_total, "CI_NODE_INDEX/CI_NODE_TOTAL"))
    k8s_index = _env_int(env, "JOB_COMPLETION_INDEX")
    if k8s_index is not None:
        if given_total is None:
            raise _bad(
                "$JOB_COMPLETION_INDEX is set but not the total: use --shard auto/N or set "
                f"${_TOTAL_ENV} (the Job's completions)",
                "shard.unknown",
            )
        found.append(_spec(k8s_index + 1, given_total, "JOB_COMPLETION_INDEX"))
    if not found:
        raise _bad(
            "--shard auto cannot tell which shard this is: no CI_NODE_INDEX/CI_NODE_TOTAL nor "
            "JOB_COMPLETION_INDEX; pass --shard i/n (e.g. a GitHub matrix's values)",
            "shard.unknown",
        )
    first = found[0]
    if any((s.index, s.total) != (first.index, first.total) for s in found[1:]) or (
        given_total is not None and first.total != given_total
    ):
        raise _bad(
            "the shard sources disagree: " + ", ".join(f"{s.source} says {s}" for s in found), "shard.unknown"
        )
    return first


# -- the partition -----------------------------------------------------------------------------


def components(plan: Plan) -> list[tuple[str, ...]]:
    """The plan's jobs grouped by ``needs`` and overlapping mounts; each sorted, sorted by first id."""
    jobs = sorted(plan.jobs, key=lambda job: job.id)
    parent = {job.id: job.id for job in jobs}

    def find(node: str) -> str:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    for job in jobs:
        for need in job.needs:
            union(job.id, need)
    prints = [(job.id, _footprint(job)) for job in jobs if job.mounts or job.stdin is not None]
    writers = [(ident, fp) for ident, fp in prints if any(write for _, write in fp)]
    for writer, wfp in writers:  # only a writer can clash: readers never clash with readers
        for other, ofp in prints:
            if other != writer and find(other) != find(writer) and _clash(wfp, ofp):
                union(writer, other)
    groups: dict[str, list[str]] = {}
    for job in jobs:
        groups.setdefault(find(job.id), []).append(job.id)
    return sorted((tuple(ids) for ids in groups.values()), key=lambda ids: ids[0])


@dataclass(frozen=True, slots=True)
class Partition:
    """``shards[i]``: the sorted job ids of shard ``i + 1``; ``loads[i]`` its expected weight."""

    shards: tuple[tuple[str, ...], ...]
    loads: tuple[int, ...]

    @property
    def total(self) -> int:
        return len(self.shards)

    @property
    def digest(self) -> str:
        return partition_digest(self.shards)


def partition_digest(shards: Sequence[Sequence[str]]) -> str:
    """sha256 of the partition's canonical JSON: the same on every machine, checked by the merge."""
    body = {"format": PARTITION_FORMAT, "total": len(shards), "shards": [sorted(s) for s in shards]}
    return sha256_hex(canonical_json(body))


def partition(plan: Plan, total: int, durations: Mapping[str, int] | None = None) -> Partition:
    """Components largest first into the least loaded shard (ties: smallest id, lowest index).

    A job's weight is its previous ``wall_ms`` (at least 1); a job the durations do not know weighs
    their mean, and without durations every job weighs 1.
    """
    if not 1 <= total <= MAX_SHARDS:
        raise ValueError(f"total must be 1..{MAX_SHARDS}")
    known = [max(1, durations[job.id]) for job in plan.jobs if durations and job.id in durations]
    default = round(sum(known) / len(known)) if known else 1

    def weight(job_id: str) -> int:
        return max(1, durations[job_id]) if durations and job_id in durations else default

    weighted = sorted(((sum(map(weight, c)), c) for c in components(plan)), key=lambda wc: (-wc[0], wc[1][0]))
    loads = [0] * total
    shards: list[list[str]] = [[] for _ in range(total)]
    least = [(0, index) for index in range(total)]  # a heap of (load, index): the least loaded first
    for load, ids in weighted:
        _, target = least[0]
        loads[target] += load
        shards[target].extend(ids)
        heapq.heapreplace(least, (loads[target], target))
    return Partition(tuple(tuple(sorted(s)) for s in shards), tuple(loads))


def load_durations(path: Path) -> dict[str, int]:
    """``manifest/name -> wall_ms`` from a previous ``report.json`` (jobs that did not run are left out)."""
    where = Location(file=str(path))
    try:
        data = json.loads(path.read_bytes())
    except OSError as exc:
        raise InputError.one("input.read", f"cannot read durations: {exc.strerror}", where) from None
    except (ValueError, RecursionError) as exc:  # a downloaded artifact: any bytes, any nesting
        raise InputError.one("shard.durations", f"not a report.json: {exc}", where) from None
    jobs = data.get("jobs") if isinstance(data, dict) else None
    if not isinstance(jobs, list):
        raise InputError.one("shard.durations", "not a report.json: no jobs list", where)
    found: dict[str, int] = {}
    for number, job in enumerate(jobs):
        if not isinstance(job, dict):
            raise InputError.one(
                "shard.durations", "a job is not an object", replace(where, pointer=f"/jobs/{number}")
            )
        manifest, name, wall = job.get("manifest"), job.get("name"), job.get("wall_ms")
        if not isinstance(manifest, str) or not isinstance(name, str):
            raise InputError.one(
                "shard.durations",
                "a job without manifest and name",
                replace(where, pointer=f"/jobs/{number}"),
            )
        if type(wall) is int and wall >= 0:
            found[f"{manifest}/{name}"] = wall
    return found


# -- one shard's run ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Assignment:
    """What shard ``spec`` runs of the plan ``plan_sha256``, and the record that says so."""

    spec: ShardSpec
    plan_sha256: str
    partition: Partition
    plan: Plan  # the sub-plan: the shard's jobs in plan order, and the tools they use

    @property
    def jobs(self) -> tuple[str, ...]:
        return self.partition.shards[self.spec.index - 1]

    def record(self) -> dict[str, Any]:
        """The ``shard.assigned`` record data, right after ``plan.compiled`` in the shard's log."""
        return {
            "plan_sha256": self.plan_sha256,
            "index": self.spec.index,
            "total": self.spec.total,
            "source": self.spec.source,
            "partition_sha256": self.partition.digest,
            "load": self.partition.loads[self.spec.index - 1],
            "jobs": list(self.jobs),
        }


@dataclass(frozen=True, slots=True)
class ShardRequest:
    """``--shard`` and ``--durations`` as given; :meth:`assign` applies them to the plan that runs."""

    spec: ShardSpec
    durations: Mapping[str, int] | None = None

    def assign(self, plan: Plan, plan_sha256: str) -> Assignment:
        split = partition(plan, self.spec.total, self.durations)
        mine = set(split.shards[self.spec.index - 1])
        jobs = tuple(job for job in plan.jobs if job.id in mine)
        used = {(job.manifest, job.tool) for job in jobs}
        tools = tuple(tool for tool in plan.tools if (tool.manifest, tool.name) in used)
        return Assignment(self.spec, plan_sha256, split, replace(plan, jobs=jobs, tools=tools))


def describe(assignment: Assignment, *, balanced_by: str) -> str:
    """``--dry-run``: the whole partition, this shard marked, one job id a line."""
    split = assignment.partition
    lines = [
        f"plan sha256 {assignment.plan_sha256}",
        f"partition sha256 {split.digest}: {split.total} shard(s), balanced by {balanced_by}",
    ]
    for number, (ids, load) in enumerate(zip(split.shards, split.loads, strict=True), 1):
        mark = "  <- this shard" if number == assignment.spec.index else ""
        lines.append(f"shard {number}/{split.total}: {len(ids)} job(s), load {load}{mark}")
        lines.extend(f"  {ident}" for ident in ids)
    return "\n".join(lines) + "\n"
