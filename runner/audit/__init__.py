"""The chain-logged audit: one hash-chained JSON Lines file per output folder, each run sealed.

:class:`AuditLog` is the only writer of ``audit.jsonl``; :func:`verify_log` checks a log offline;
:mod:`runner.audit.query` answers questions from its records. The format, the exact hashing, the
seal (a C2SP signed-note checkpoint) and the crash-safety guarantees are in ``docs/audit.md``.

Names load on first use (PEP 562): ``sandrun exec`` writes a log without loading the verifier.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.audit.chain import LOCK_NAME, LOG_NAME, AuditLog, repair_torn_tail
    from runner.audit.checkpoint import (
        DEFAULT_KEY_NAME,
        SIGNING_KEY_ENV,
        Checkpoint,
        load_runner_key,
        parse_checkpoint,
        verifier_key,
    )
    from runner.audit.query import results_from_log, select, tool_changes
    from runner.audit.record import (
        GENESIS,
        JOB_FINISHED,
        JOB_STARTED,
        KINDS,
        PLAN_COMPILED,
        RUN_CONTINUED,
        RUN_DENIED,
        RUN_SEALED,
        RUN_STARTED,
        TOOL_DENIED,
        TOOL_DEPLOYED,
        TOOL_REGISTERED,
        TOOL_REVOKED,
        TOOL_VERSIONED,
    )
    from runner.audit.verify import (
        RunSummary,
        VerifyReport,
        read_records,
        verification_line,
        verified_records,
        verify_log,
    )

#: Each public name and the module that defines it.
_HOMES = {
    "LOCK_NAME": "runner.audit.chain",
    "LOG_NAME": "runner.audit.chain",
    "AuditLog": "runner.audit.chain",
    "repair_torn_tail": "runner.audit.chain",
    "DEFAULT_KEY_NAME": "runner.audit.checkpoint",
    "SIGNING_KEY_ENV": "runner.audit.checkpoint",
    "Checkpoint": "runner.audit.checkpoint",
    "load_runner_key": "runner.audit.checkpoint",
    "parse_checkpoint": "runner.audit.checkpoint",
    "verifier_key": "runner.audit.checkpoint",
    "results_from_log": "runner.audit.query",
    "select": "runner.audit.query",
    "tool_changes": "runner.audit.query",
    "GENESIS": "runner.audit.record",
    "JOB_FINISHED": "runner.audit.record",
    "JOB_STARTED": "runner.audit.record",
    "KINDS": "runner.audit.record",
    "PLAN_COMPILED": "runner.audit.record",
    "RUN_CONTINUED": "runner.audit.record",
    "RUN_DENIED": "runner.audit.record",
    "RUN_SEALED": "runner.audit.record",
    "RUN_STARTED": "runner.audit.record",
    "TOOL_DENIED": "runner.audit.record",
    "TOOL_DEPLOYED": "runner.audit.record",
    "TOOL_REGISTERED": "runner.audit.record",
    "TOOL_REVOKED": "runner.audit.record",
    "TOOL_VERSIONED": "runner.audit.record",
    "RunSummary": "runner.audit.verify",
    "VerifyReport": "runner.audit.verify",
    "read_records": "runner.audit.verify",
    "verification_line": "runner.audit.verify",
    "verified_records": "runner.audit.verify",
    "verify_log": "runner.audit.verify",
}

__all__ = [
    "LOG_NAME",
    "LOCK_NAME",
    "AuditLog",
    "repair_torn_tail",
    "DEFAULT_KEY_NAME",
    "SIGNING_KEY_ENV",
    "Checkpoint",
    "load_runner_key",
    "parse_checkpoint",
    "verifier_key",
    "results_from_log",
    "select",
    "tool_changes",
    "GENESIS",
    "KINDS",
    "RUN_STARTED",
    "PLAN_COMPILED",
    "TOOL_REGISTERED",
    "TOOL_DEPLOYED",
    "TOOL_VERSIONED",
    "TOOL_DENIED",
    "TOOL_REVOKED",
    "JOB_STARTED",
    "JOB_FINISHED",
    "RUN_DENIED",
    "RUN_SEALED",
    "RUN_CONTINUED",
    "RunSummary",
    "VerifyReport",
    "read_records",
    "verified_records",
    "verification_line",
    "verify_log",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
