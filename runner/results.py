"""What running a job produced, as data: a job's failure is a result, never an exception.

:class:`Outcome` is what the sandbox observed for one job; :class:`JobResult` is one row of
``report.json`` (DESIGN.md, "Run outputs"), the same dict that the audit log's ``job.finished``
record carries, so reports can be rebuilt from the log alone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["TRAP_KINDS", "STATUSES", "TrapKind", "Status", "Outcome", "JobResult"]

TrapKind = Literal["out_of_fuel", "timeout", "memory", "stack_overflow", "trap", "crash"]
Status = Literal["passed", "failed", "denied", "skipped"]
TRAP_KINDS: tuple[str, ...] = ("out_of_fuel", "timeout", "memory", "stack_overflow", "trap", "crash")
STATUSES: tuple[str, ...] = ("passed", "failed", "denied", "skipped")


_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def _sha256_hex(data: bytes) -> str:
    # most streams of most jobs are empty: their digest is a constant
    return hashlib.sha256(data).hexdigest() if data else _EMPTY_SHA256


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What one sandboxed job did. ``exit_code`` is set when the guest exited (or returned from
    ``_start``: 0); ``trap`` when it was stopped instead. Output is captured up to the job's cap;
    ``*_dropped`` counts the bytes beyond it."""

    exit_code: int | None
    trap: TrapKind | None
    trap_message: str | None
    fuel_used: int | None
    memory_peak: int | None  # None: not measured (a component's memory is out of the API's reach)
    wall_ms: int
    stdout: bytes
    stderr: bytes
    stdout_dropped: int = 0
    stderr_dropped: int = 0
    invoke_results: tuple[str, ...] | None = None
    invoke: dict[str, Any] | None = None  # results as WAVE and JSON, or the rule that refused the call
    net_hops: tuple[dict[str, Any], ...] = ()  # one record per sandrun:http hop (runner.egress)
    rss_peak: int | None = None  # the worker process's peak resident memory during the job

    def __post_init__(self) -> None:
        if (self.exit_code is None) == (self.trap is None):
            raise ValueError("an outcome has exactly one of exit_code and trap")
        if self.trap is not None and self.trap not in TRAP_KINDS:
            raise ValueError(f"unknown trap kind {self.trap!r}")

    @property
    def stdout_sha256(self) -> str:
        return _sha256_hex(self.stdout)

    @property
    def stderr_sha256(self) -> str:
        return _sha256_hex(self.stderr)

    @property
    def stdout_truncated(self) -> bool:
        return self.stdout_dropped > 0

    @property
    def stderr_truncated(self) -> bool:
        return self.stderr_dropped > 0


@dataclass(frozen=True, slots=True, kw_only=True)
class JobResult:
    """One job's row in ``report.json``; ``reason`` says why it did not pass (None if it did)."""

    manifest: str
    name: str
    tool: str
    module_sha256: str
    status: Status
    exit_code: int | None = None
    trap: TrapKind | None = None
    fuel_used: int | None = None
    memory_peak: int | None = None
    rss_peak: int | None = None
    wall_ms: int | None = None
    stdout_sha256: str | None = None
    stderr_sha256: str | None = None
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    reason: str | None = None
    invoke_results: list[str] | None = None  # what an ``invoke`` call returned, as text
    invoke: dict[str, Any] | None = None  # {export, wave, json} or {rule, error} (docs/invoke.md)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}")

    @property
    def id(self) -> str:
        return f"{self.manifest}/{self.name}"

    def to_dict(self) -> dict[str, Any]:
        # every field is a scalar: a flat copy, not dataclasses.asdict's deep one (it is per job)
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobResult:
        return cls(**data)
