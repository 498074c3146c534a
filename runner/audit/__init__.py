"""The chain-logged audit: one hash-chained JSON Lines file per output folder, each run sealed.

:class:`AuditLog` is the only writer of ``audit.jsonl``; :func:`verify_log` checks a log offline;
:mod:`runner.audit.query` answers questions from its records. The format, the exact hashing, the
seal (a C2SP signed-note checkpoint) and the crash-safety guarantees are in ``docs/audit.md``.
"""

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
