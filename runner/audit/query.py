"""Questions answered from the records alone, after the fact: filters, tool changes, the report.

Nothing here writes or verifies; ``sandrun audit show`` and ``sandrun report`` run
:func:`~runner.audit.verify.verify_log` first and then read the records through these functions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from runner.audit.record import JOB_FINISHED, PLAN_COMPILED, SHARD_ASSIGNED, TOOL_REGISTERED
from runner.errors import AuditError, Location
from runner.results import TRAP_KINDS, JobResult

__all__ = ["last_run", "job_id", "select", "tool_changes", "results_from_log"]

_RESULT_FIELDS = tuple(f.name for f in dataclasses.fields(JobResult))


def last_run(records: Sequence[Mapping[str, Any]]) -> str | None:
    """The run id of the last record, or None for an empty log."""
    return str(records[-1]["run"]) if records else None


def job_id(record: Mapping[str, Any]) -> str | None:
    """``manifest/name`` of the job a ``job.*`` record is about (or its ``job``/``id`` field)."""
    data = record.get("data") or {}
    for key in ("job", "id"):
        if isinstance(data.get(key), str):
            return str(data[key])
    if str(record.get("kind", "")).startswith("job.") and "manifest" in data and "name" in data:
        return f"{data['manifest']}/{data['name']}"
    return None


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
    latest: dict[tuple[Any, Any], Mapping[str, Any]] = {}
    for record in earlier:
        if record.get("kind") == TOOL_REGISTERED and record.get("run") != run:
            data = record.get("data") or {}
            latest[(data.get("manifest"), data.get("name"))] = record
    changes: list[dict[str, Any]] = []
    for tool in tools:
        previous = latest.get((tool.get("manifest"), tool.get("name")))
        if previous is None:
            continue
        before = previous["data"]
        if (before.get("module_sha256"), before.get("version")) == (
            tool.get("module_sha256"),
            tool.get("version"),
        ):
            continue
        changes.append(
            {
                "manifest": tool.get("manifest"),
                "name": tool.get("name"),
                "module_sha256": tool.get("module_sha256"),
                "version": tool.get("version"),
                "previous": {
                    "module_sha256": before.get("module_sha256"),
                    "version": before.get("version"),
                    "run": previous.get("run"),
                    "seq": previous.get("seq"),
                },
            }
        )
    return changes


_NUMBERS = ("exit_code", "fuel_used", "memory_peak", "wall_ms")
_FLAGS = ("stdout_truncated", "stderr_truncated")
_OPTIONAL_TEXT = ("stdout_sha256", "stderr_sha256", "reason")


def _check_types(result: JobResult) -> None:
    """A row rebuilt from a log holds what a runner writes (renderers rely on it): ``TypeError``."""
    values = dataclasses.asdict(result)
    if not all(isinstance(values[k], str) for k in ("manifest", "name", "tool", "module_sha256")):
        raise TypeError("manifest, name, tool and module_sha256 are strings")
    if not all(values[k] is None or type(values[k]) is int for k in _NUMBERS):
        raise TypeError(", ".join(_NUMBERS) + " are integers or null")
    if not all(type(values[k]) is bool for k in _FLAGS) or not all(
        values[k] is None or isinstance(values[k], str) for k in _OPTIONAL_TEXT
    ):
        raise TypeError("the truncation flags are booleans, digests and reason strings or null")
    if result.trap is not None and result.trap not in TRAP_KINDS:
        raise ValueError(f"unknown trap kind {result.trap!r}")


def results_from_log(records: Sequence[Mapping[str, Any]], run: str | None = None) -> dict[str, Any]:
    """Rebuild ``report.json`` (DESIGN.md, "Run outputs") for ``run`` (default: the last run).

    Reads the run's last ``plan.compiled`` record (``plan_sha256``, ``policy.name``) and its
    ``job.finished`` records (a :class:`~runner.results.JobResult` dict plus ``index``, the job's
    place in the plan, which orders the jobs). ``ok`` is true when every job passed; a run whose
    results do not match its plan's job count is refused (``audit.bad-record``), never ``ok``.
    """
    run = run or last_run(records)
    mine = [r for r in records if r.get("run") == run]
    plans = [r for r in mine if r.get("kind") == PLAN_COMPILED]
    if run is None or not plans:
        raise AuditError.one(
            "audit.no-plan",
            f"run {run} has no plan.compiled record (denied or interrupted?)",
            Location(file="audit.jsonl"),
        )
    plan = plans[-1]["data"]
    policy = plan.get("policy")
    finished = [r for r in mine if r.get("kind") == JOB_FINISHED]
    ordered = sorted(enumerate(finished), key=lambda pair: (pair[1]["data"].get("index", pair[0]), pair[0]))
    jobs: list[dict[str, Any]] = []
    for _, record in ordered:
        try:
            result = JobResult.from_dict(
                {k: record["data"][k] for k in _RESULT_FIELDS if k in record["data"]}
            )
            _check_types(result)
        except (TypeError, ValueError) as exc:
            raise AuditError.one(
                "audit.bad-record",
                f"job.finished does not hold a job result: {exc}",
                Location(file="audit.jsonl", line=record.get("seq", -1) + 1, pointer="/data"),
            ) from None
        jobs.append(result.to_dict())
    planned = plan.get("jobs")
    assigned = [r for r in mine if r.get("kind") == SHARD_ASSIGNED]
    if assigned:  # a shard runs only its own part of the plan (docs/shards.md)
        planned = assigned[-1]["data"].get("jobs")
    if not isinstance(planned, list) or len(planned) != len(jobs):
        raise AuditError.one(
            "audit.bad-record",
            f"run {run} planned {len(planned) if isinstance(planned, list) else '?'} job(s) but the log "
            f"holds {len(jobs)} result(s): not the complete results of a run",
            Location(file="audit.jsonl", line=plans[-1].get("seq", -1) + 1, pointer="/data/jobs"),
        )
    return {
        "run": run,
        "plan_sha256": plan.get("plan_sha256"),
        "policy": policy.get("name") if isinstance(policy, Mapping) else policy,
        "ok": all(job["status"] == "passed" for job in jobs),
        "jobs": jobs,
    }
