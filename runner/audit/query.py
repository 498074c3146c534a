"""Questions answered from the records alone, after the fact: filters, tool changes, the report.

Nothing here writes or verifies; ``sandrun audit show`` and ``sandrun report`` run
:func:`~runner.audit.verify.verify_log` first and then read the records through these functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from runner.audit.record import (
    JOB_FINISHED,
    JOB_STARTED,
    PLAN_COMPILED,
    SHARD_ASSIGNED,
    TOOL_REGISTERED,
    PlanInfo,
    ToolVersion,
    read_job_finished,
    read_job_started,
    read_plan_compiled,
    read_tool_registered,
    record_job,
    tool_versioned,
)
from runner.errors import AuditError, Location

__all__ = [
    "last_run",
    "job_id",
    "select",
    "tool_changes",
    "results_from_log",
    "run_plan_info",
    "granted_limits",
]


def last_run(records: Sequence[Mapping[str, Any]]) -> str | None:
    """The run id of the last record, or None for an empty log."""
    return str(records[-1]["run"]) if records else None


def job_id(record: Mapping[str, Any]) -> str | None:
    """``manifest/name`` of the job a ``job.*`` record is about (or its ``job``/``id`` field)."""
    data = record.get("data")
    return record_job(str(record.get("kind", "")), data) if isinstance(data, Mapping) else None


def select(
    records: Iterable[Mapping[str, Any]],
    *,
    job: str | None = None,
    kind: str | None = None,
    run: str | None = None,
) -> list[dict[str, Any]]:
    """Records matching every filter given. ``kind`` matches exactly or as a prefix (``tool`` or
    ``tool.*`` selects every ``tool.…`` kind); ``job`` matches a job id ``manifest/name`` or its name."""
    prefix = kind[:-2] if kind and kind.endswith(".*") else kind
    selected: list[dict[str, Any]] = []
    for record in records:
        if run is not None and record.get("run") != run:
            continue
        if prefix is not None:
            this = str(record.get("kind", ""))
            if this != prefix and not this.startswith(prefix + "."):
                continue
        if job is not None:
            ident = job_id(record)
            if ident is None or (ident != job and ident.rpartition("/")[2] != job):
                continue
        selected.append(dict(record))
    return selected


def tool_changes(
    earlier: Iterable[Mapping[str, Any]], tools: Iterable[Mapping[str, Any]], *, run: str
) -> list[dict[str, Any]]:
    """``tool.versioned`` data: each of ``tools`` (``tool.registered`` data of run ``run``) whose
    digest or version differs from the latest ``tool.registered`` record of the same manifest and
    tool name in an earlier run. A tool never seen before is new, not versioned."""
    latest: dict[tuple[Any, Any], tuple[ToolVersion, Mapping[str, Any]]] = {}
    for record in earlier:
        data = record.get("data")
        if record.get("kind") == TOOL_REGISTERED and record.get("run") != run and isinstance(data, Mapping):
            version = read_tool_registered(data)
            latest[(version.manifest, version.name)] = (version, record)
    changes: list[dict[str, Any]] = []
    for tool in map(read_tool_registered, tools):
        found = latest.get((tool.manifest, tool.name))
        if found is None:
            continue
        before, previous = found
        if (before.module_sha256, before.version) == (tool.module_sha256, tool.version):
            continue
        changes.append(tool_versioned(tool, before, previous.get("run"), previous.get("seq")))
    return changes


def results_from_log(records: Sequence[Mapping[str, Any]], run: str | None = None) -> dict[str, Any]:
    """Rebuild ``report.json`` (DESIGN.md, "Run outputs") for ``run`` (default: the last run).

    Reads the run's last ``plan.compiled`` record (``plan_sha256``, ``policy.name``) and its
    ``job.finished`` records (a :class:`~runner.results.JobResult` dict plus ``index``, the job's
    place in the plan, which orders the jobs). ``ok`` is true when every job passed; a run whose
    results do not match its plan's job count is refused (``audit.bad-record``), never ``ok``.
    """
    run = run or last_run(records)
    mine = [r for r in records if r.get("run") == run]
    plan_record, plan = _plan_of(mine, run)
    finished = [r for r in mine if r.get("kind") == JOB_FINISHED]
    rows: list[tuple[int, int, dict[str, Any]]] = []
    for position, record in enumerate(finished):
        try:
            index, result = read_job_finished(record["data"])
        except (TypeError, ValueError) as exc:
            raise AuditError.one(
                "audit.bad-record",
                f"job.finished does not hold a job result: {exc}",
                Location(file="audit.jsonl", line=record.get("seq", -1) + 1, pointer="/data"),
            ) from None
        rows.append((position if index is None else index, position, result.to_dict()))
    jobs = [row for _, _, row in sorted(rows, key=lambda r: (r[0], r[1]))]
    planned = plan.jobs
    assigned = [r for r in mine if r.get("kind") == SHARD_ASSIGNED]
    if assigned:  # a shard runs only its own part of the plan (docs/shards.md)
        shard_jobs = assigned[-1].get("data", {}).get("jobs")
        planned = shard_jobs if isinstance(shard_jobs, list) else None
    # one result per planned job, each job once: a count alone would take a job twice for another
    if planned is None or sorted(map(str, planned)) != sorted(f"{j['manifest']}/{j['name']}" for j in jobs):
        raise AuditError.one(
            "audit.bad-record",
            f"run {run} planned {'?' if planned is None else len(planned)} job(s) but the log "
            f"holds {len(jobs)} result(s), not one for each: not the complete results of a run",
            Location(file="audit.jsonl", line=plan_record.get("seq", -1) + 1, pointer="/data/jobs"),
        )
    return {
        "run": run,
        "plan_sha256": plan.plan_sha256,
        "policy": None if plan.policy is None else plan.policy.name,
        "ok": all(job["status"] == "passed" for job in jobs),
        "jobs": jobs,
    }


def _plan_of(mine: Sequence[Mapping[str, Any]], run: str | None) -> tuple[Mapping[str, Any], PlanInfo]:
    plans = [r for r in mine if r.get("kind") == PLAN_COMPILED]
    if run is None or not plans:
        raise AuditError.one(
            "audit.no-plan",
            f"run {run} has no plan.compiled record (denied or interrupted?)",
            Location(file="audit.jsonl"),
        )
    try:
        return plans[-1], read_plan_compiled(plans[-1]["data"])
    except (TypeError, ValueError) as exc:
        raise AuditError.one(
            "audit.bad-record",
            f"plan.compiled does not hold a plan: {exc}",
            Location(file="audit.jsonl", line=plans[-1].get("seq", -1) + 1, pointer="/data"),
        ) from None


def run_plan_info(records: Sequence[Mapping[str, Any]], run: str) -> tuple[str, PlanInfo]:
    """The time and the ``plan.compiled`` data of ``run`` (``audit.no-plan`` without one)."""
    record, plan = _plan_of([r for r in records if r.get("run") == run], run)
    return str(record.get("ts", "")), plan


def granted_limits(records: Iterable[Mapping[str, Any]], run: str) -> dict[str, dict[str, Any]]:
    """Each job's granted limits (its ``job.started`` record), by job id: what the HTML bars show."""
    limits: dict[str, dict[str, Any]] = {}
    for record in records:
        if record.get("kind") == JOB_STARTED and record.get("run") == run:
            try:
                job, granted = read_job_started(record["data"])
            except TypeError:
                continue
            limits[job] = granted
    return limits
