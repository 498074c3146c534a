"""``sandrun audit merge``: the verified shard logs of one plan, as one sealed log and one report.

Shards run on machines the merge does not trust more than their signatures: a shard folder is a
file someone uploaded. The merge is a checklist, and refuses (``AuditError``, exit 4) naming the
shard folder and the reason:

1. each folder is given once and its log verifies under the given keys: damage is
   ``merge.tampered``, a seal by no given key ``merge.untrusted``;
2. its attempts (runs with a ``shard.assigned`` record) are of this plan (``merge.foreign``); the
   merge takes the latest sealed attempt that finished exactly its assigned jobs
   (``merge.unsealed`` when none is sealed, ``merge.incomplete`` when none finished its jobs);
3. one attempt per index: a retry in another folder supersedes an older attempt, the same
   attempt twice is ``merge.duplicated``;
4. all shards agree on one partition (``merge.foreign``), every index 1..n is there
   (``merge.missing``), and together they cover the plan exactly (the partition digest is
   recomputed from their job lists).

The combined log is a new chain: ``merge.started``, then every line of each taken shard's log as
a ``merge.shard-record`` (the line verbatim, so its hash and the shard's signed seal stay
checkable), a ``merge.shard`` record per shard saying which attempt was taken, and a signed seal.
:func:`verify_merged` re-verifies the embedded logs (``sandrun audit verify`` runs it).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.audit.chain import LOG_NAME, AuditLog
from runner.audit.checkpoint import DEFAULT_KEY_NAME
from runner.audit.query import results_from_log
from runner.audit.record import JOB_FINISHED, PLAN_COMPILED, RUN_SEALED, LineError, parse_record
from runner.audit.verify import VerifyReport, verify_log
from runner.errors import AuditError, InputError, Location, SandrunError, Violation
from runner.plan import Plan
from runner.results import JobResult
from runner.shard import SHARD_ASSIGNED, partition_digest
from runner.signing import PrivateKey, PublicKey

__all__ = [
    "MERGE_STARTED",
    "MERGE_SHARD",
    "MERGE_SHARD_RECORD",
    "ShardLog",
    "MergeOutcome",
    "read_shard",
    "merge_shards",
    "verify_merged",
]

MERGE_STARTED = "merge.started"
MERGE_SHARD_RECORD = "merge.shard-record"
MERGE_SHARD = "merge.shard"
_UNTRUSTED = frozenset({"audit.unknown-signer", "audit.unsigned"})


@dataclass(frozen=True, slots=True)
class Attempt:
    """One run of a shard in one folder: its assignment and what it finished."""

    run: str
    assigned: Mapping[str, Any]
    plan_sha256: str | None
    finished: tuple[str, ...]
    sealed_at: str | None  # the seal's timestamp; None for an unsealed attempt
    checkpoint: str | None

    @property
    def complete(self) -> bool:
        jobs = self.assigned.get("jobs")
        return (
            self.sealed_at is not None
            and isinstance(jobs, list)
            and sorted(self.finished) == sorted(jobs)
            and len(set(self.finished)) == len(self.finished)
        )

    def summary(self, taken: bool) -> dict[str, Any]:
        return {
            "run": self.run,
            "sealed": self.sealed_at is not None,
            "complete": self.complete,
            "taken": taken,
        }


@dataclass(frozen=True, slots=True)
class ShardLog:
    """A shard folder whose log verified: its lines as read, its records, its attempts."""

    folder: Path
    lines: tuple[bytes, ...]
    records: tuple[dict[str, Any], ...]
    attempts: tuple[Attempt, ...]
    head: str

    def refuse(self, rule: str, reason: str) -> SandrunError:
        return _refuse(rule, f"shard {self.folder}: {reason}", self.folder / LOG_NAME)


def _refuse(rule: str, message: str, where: Path | str) -> SandrunError:
    return AuditError.one(rule, message, Location(file=str(where)))


def _verified(where: str, data: bytes, keys: Sequence[PublicKey]) -> VerifyReport:
    """verify_log over exactly ``data`` (a private copy: the folder may change while we read it)."""
    with tempfile.TemporaryDirectory(prefix="sandrun-merge-") as scratch:
        copy = Path(scratch) / LOG_NAME
        copy.write_bytes(data)
        report = verify_log(copy, public_keys=keys)
    problems = [
        dataclasses.replace(p, location=dataclasses.replace(p.location, file=where)) if p.location else p
        for p in report.problems
    ]
    return dataclasses.replace(report, path=where, problems=problems)


def _attempts(records: Sequence[dict[str, Any]]) -> tuple[Attempt, ...]:
    by_run: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_run.setdefault(record["run"], []).append(record)
    attempts = []
    for run, mine in by_run.items():
        assigned = [r["data"] for r in mine if r["kind"] == SHARD_ASSIGNED]
        if not assigned:
            continue  # a run that never got its assignment (denied, or not a shard run)
        plans = [r["data"].get("plan_sha256") for r in mine if r["kind"] == PLAN_COMPILED]
        seals = [r for r in mine if r["kind"] == RUN_SEALED]
        finished = tuple(
            f"{r['data'].get('manifest')}/{r['data'].get('name')}" for r in mine if r["kind"] == JOB_FINISHED
        )
        attempts.append(
            Attempt(
                run=run,
                assigned=assigned[0],
                plan_sha256=plans[0] if plans else None,
                finished=finished,
                sealed_at=seals[-1]["ts"] if seals else None,
                checkpoint=seals[-1]["data"].get("checkpoint") if seals else None,
            )
        )
    return tuple(attempts)


def read_shard(folder: Path, keys: Sequence[PublicKey]) -> ShardLog:
    """(1) One shard folder's log, verified under ``keys``, with its attempts."""
    path = folder / LOG_NAME
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _refuse("merge.missing", f"shard {folder}: no audit log ({exc.strerror})", path) from None
    report = _verified(str(path), data, keys)
    if not report.ok or report.untrusted:
        problem = report.problems[0]
        rule = "merge.untrusted" if problem.rule_id in _UNTRUSTED else "merge.tampered"
        raise _refuse(
            rule,
            f"shard {folder}: [{problem.rule_id}] {problem.message}",
            problem.location.prefix() if problem.location else path,
        )
    lines = tuple(data.split(b"\n")[:-1])
    records = tuple(parse_record(line) for line in lines)
    return ShardLog(folder, lines, records, _attempts(records), report.head or "")


def _taken(shard: ShardLog, plan_sha256: str) -> Attempt:
    """(2) The latest complete sealed attempt of this plan in one folder."""
    if not shard.attempts:
        raise shard.refuse("merge.foreign", "not a shard log (no shard.assigned record)")
    for attempt in shard.attempts:
        if attempt.assigned.get("plan_sha256") != plan_sha256 or attempt.plan_sha256 != plan_sha256:
            raise shard.refuse(
                "merge.foreign",
                f"run {attempt.run} is of plan {str(attempt.assigned.get('plan_sha256'))[:12]}, not of "
                f"the plan being merged ({plan_sha256[:12]})",
            )
    sealed = [a for a in shard.attempts if a.sealed_at is not None]
    if not sealed:
        raise shard.refuse("merge.unsealed", "no attempt was sealed (killed, or the log was truncated)")
    complete = [a for a in sealed if a.complete]
    if not complete:
        last = sealed[-1]
        raise shard.refuse(
            "merge.incomplete",
            f"run {last.run} finished {len(last.finished)} job(s), not exactly its "
            f"{len(last.assigned.get('jobs') or [])} assigned ones",
        )
    return max(complete, key=lambda a: (a.sealed_at or "", a.run))


@dataclass(frozen=True, slots=True)
class _Chosen:
    shard: ShardLog
    attempt: Attempt
    superseded: tuple[tuple[ShardLog, Attempt], ...] = ()

    @property
    def index(self) -> int:
        return int(self.attempt.assigned["index"])


def _choose(shards: Sequence[ShardLog], plan_sha256: str) -> list[_Chosen]:
    """(3) One attempt per index; (4) one partition, every index, the whole plan."""
    by_index: dict[int, list[tuple[ShardLog, Attempt]]] = {}
    seen_runs: dict[str, Path] = {}
    for shard in shards:
        attempt = _taken(shard, plan_sha256)
        if attempt.run in seen_runs:
            raise shard.refuse(
                "merge.duplicated", f"run {attempt.run} was already read from {seen_runs[attempt.run]}"
            )
        seen_runs[attempt.run] = shard.folder
        index = attempt.assigned.get("index")
        if type(index) is not int:
            raise shard.refuse("merge.foreign", "its assignment has no shard index")
        by_index.setdefault(index, []).append((shard, attempt))
    chosen = []
    for pairs in by_index.values():
        pairs.sort(key=lambda pair: (pair[1].sealed_at or "", pair[1].run))
        shard, attempt = pairs[-1]
        chosen.append(_Chosen(shard, attempt, tuple(pairs[:-1])))
    chosen.sort(key=lambda c: c.index)
    first = chosen[0].attempt.assigned
    for item in chosen:
        assigned = item.attempt.assigned
        if (assigned.get("total"), assigned.get("partition_sha256")) != (
            first.get("total"),
            first.get("partition_sha256"),
        ):
            raise item.shard.refuse(
                "merge.foreign",
                f"shard {assigned.get('index')}/{assigned.get('total')} is of partition "
                f"{str(assigned.get('partition_sha256'))[:12]}, shard "
                f"{first.get('index')}/{first.get('total')} of {str(first.get('partition_sha256'))[:12]}",
            )
    total = first.get("total")
    present = {c.index for c in chosen}
    missing = [i for i in range(1, int(total or 0) + 1) if i not in present]
    if missing or type(total) is not int or not present <= set(range(1, total + 1)):
        raise _refuse(
            "merge.missing",
            f"shard(s) {', '.join(f'{i}/{total}' for i in missing) or '?'} missing: every index of "
            f"1..{total} must be given once",
            "shards",
        )
    if partition_digest([c.attempt.assigned["jobs"] for c in chosen]) != first.get("partition_sha256"):
        raise _refuse("merge.foreign", "the shards' job lists do not make up their partition", "shards")
    return chosen


@dataclass(frozen=True, slots=True)
class MergeOutcome:
    """The merged report and the signed head of the combined log."""

    report: dict[str, Any]
    checkpoint: Any
    taken: tuple[tuple[int, str, str], ...]  # (index, folder, run)


def merge_shards(
    folders: Sequence[Path],
    plan: Plan,
    *,
    out_dir: Path,
    public_keys: Sequence[PublicKey],
    run_id: str,
    signing_key: PrivateKey | None = None,
    key_name: str | None = None,
) -> MergeOutcome:
    """Check the shards (module docstring), write the combined log and the whole plan's reports."""
    from runner.api import plan_sha256 as loaded_plan_sha256
    from runner.fileio import write_atomic
    from runner.report import build_report, render_json, render_junit, render_markdown

    if not public_keys:
        raise _refuse(
            "merge.untrusted", "give the shards' public keys (--pub): a merge checks their seals", "--pub"
        )
    if (out_dir / LOG_NAME).exists():
        raise InputError.one(
            "merge.out-exists",
            "the merge writes a log of its own: give an --out folder without an audit log",
            Location(file=str(out_dir / LOG_NAME)),
        )
    resolved: dict[Path, Path] = {}
    for folder in folders:
        if folder.resolve() in resolved:
            raise _refuse("merge.duplicated", f"shard {folder}: given twice", folder)
        resolved[folder.resolve()] = folder
    plan_sha256 = loaded_plan_sha256(plan)  # the checked file's digest when load_plan read it
    chosen = _choose([read_shard(folder, public_keys) for folder in folders], plan_sha256)
    if sorted(job for c in chosen for job in c.attempt.assigned["jobs"]) != sorted(j.id for j in plan.jobs):
        raise _refuse("merge.foreign", "the shards do not cover the plan's jobs exactly", "--plan")
    results: dict[str, JobResult] = {}
    for item in chosen:
        for job in results_from_log(item.shard.records, item.attempt.run)["jobs"]:
            result = JobResult.from_dict(job)
            results[result.id] = result
    report = build_report(
        run_id=run_id,
        plan_sha256=plan_sha256,
        policy=plan.policy.name,
        results=[results[job.id] for job in plan.jobs],
    )
    first = chosen[0].attempt.assigned
    out_dir.mkdir(parents=True, exist_ok=True)
    with AuditLog.open(out_dir, run_id=run_id) as log:
        log.append(
            MERGE_STARTED,
            {
                "plan_sha256": plan_sha256,
                "partition_sha256": first["partition_sha256"],
                "total": first["total"],
            },
        )
        for item in chosen:
            for line in item.shard.lines:
                log.append(MERGE_SHARD_RECORD, {"shard": item.index, "line": line.decode("utf-8")})
        for item in chosen:
            attempts = [a.summary(a.run == item.attempt.run) for a in item.shard.attempts]
            log.append(
                MERGE_SHARD,
                {
                    "index": item.index,
                    "folder": str(item.shard.folder),
                    "run": item.attempt.run,
                    "records": len(item.shard.lines),
                    "head": item.shard.head,
                    "checkpoint": item.attempt.checkpoint,
                    "jobs": len(item.attempt.finished),
                    "attempts": attempts,
                    "superseded": [{"folder": str(s.folder), "run": a.run} for s, a in item.superseded],
                },
            )
        checkpoint = log.seal(signing_key, key_name or DEFAULT_KEY_NAME)
    write_atomic(out_dir / "checkpoint.txt", str(checkpoint).encode("utf-8"))
    write_atomic(out_dir / "junit.xml", render_junit(report).encode())
    write_atomic(out_dir / "summary.md", render_markdown(report).encode())
    write_atomic(out_dir / "report.json", render_json(report).encode())
    taken = tuple((c.index, str(c.shard.folder), c.attempt.run) for c in chosen)
    return MergeOutcome(report=report, checkpoint=checkpoint, taken=taken)


def verify_merged(
    report: VerifyReport, lines: Sequence[bytes], public_keys: Sequence[PublicKey] = ()
) -> VerifyReport:
    """``report`` (of the combined log, whose ``lines`` it verified) plus the re-verification of
    every embedded shard log.

    Each shard's embedded lines must verify as a log of their own under ``public_keys`` and end at
    the head its ``merge.shard`` record names, with the taken attempt's seal among them. A log
    without merge records is returned as it is; merge records of a shape no merge writes are
    ``audit.merged-shard`` (``tests/unit/test_audit_merge.py``).
    """
    if not report.ok:
        return report
    embedded: dict[int, list[bytes]] = {}
    summaries: list[Mapping[str, Any]] = []
    for number, line in enumerate(lines[:-1], 1):  # the last item follows the last LF: empty
        try:
            record = parse_record(line)
            data = record["data"]
            if record["kind"] == MERGE_SHARD_RECORD:
                shard, text = data["shard"], data["line"]
                if type(shard) is not int or not isinstance(text, str):
                    raise TypeError("a merge.shard-record names its shard by number and holds a line")
                embedded.setdefault(shard, []).append(text.encode("utf-8"))
            elif record["kind"] == MERGE_SHARD:
                if not (
                    type(data.get("index")) is int
                    and type(data.get("records")) is int
                    and all(isinstance(data.get(k), str) for k in ("folder", "head", "run"))
                ):
                    raise TypeError("a merge.shard names its index, folder, run, records and head")
                summaries.append(data)
        except LineError as exc:  # hashed right, but not a record
            at = Location(file=report.path, line=number, pointer=exc.pointer)
            return dataclasses.replace(report, ok=False, problems=[Violation("audit.edited", str(exc), at)])
        except (KeyError, TypeError, UnicodeEncodeError) as exc:
            message = f"a merge record no merge writes: {exc}"
            problem = Violation("audit.merged-shard", message, Location(file=report.path, line=number))
            return dataclasses.replace(report, ok=False, problems=[problem])
    if not summaries:
        return report
    problems: list[Violation] = []
    for summary in summaries:
        index = summary["index"]
        where = f"{report.path} (shard {index}, from {summary['folder']})"
        embedded_lines = embedded.get(index, [])
        inner = _verified(where, b"".join(line + b"\n" for line in embedded_lines), public_keys)
        if not inner.ok or inner.untrusted:
            first = inner.problems[0]
            problems.append(
                Violation(
                    "audit.merged-shard",
                    f"shard {index}: [{first.rule_id}] {first.message}",
                    Location(file=report.path),
                )
            )
        elif inner.head != summary["head"] or len(embedded_lines) != summary["records"]:
            problems.append(
                Violation(
                    "audit.merged-shard",
                    f"shard {index}: the embedded log does not end at the head its merge.shard record names",
                    Location(file=report.path),
                )
            )
        elif not any(r.run == summary["run"] and r.sealed for r in inner.runs):
            problems.append(
                Violation(
                    "audit.merged-shard",
                    f"shard {index}: the taken run {summary['run']} is not sealed in the embedded log",
                    Location(file=report.path),
                )
            )
    if not problems:
        return report
    return dataclasses.replace(report, ok=False, problems=problems[:1] + report.problems)
