"""One audit record, one line: its kinds, its exact bytes, and the cheap check of one line.

A record is the canonical JSON (``runner.canonical``) of ``{data, hash, kind, prev, run, seq, ts}``
followed by LF. ``hash`` is the SHA-256 of the canonical JSON of the record without ``hash``.
Because keys are sorted, ``hash`` sits right after the ``data`` object, so the hashed bytes are the
line with the 74 bytes ``,"hash":"<64 hex>"`` cut out: :func:`parse_line` checks a line by slicing
and one regular expression instead of a JSON parse and re-encode, which is what lets a verifier run
at a few hundred thousand records per second. :func:`parse_record` is the full (strict) check.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Any, NamedTuple

from runner.canonical import canonical_json

__all__ = [
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
    "KINDS",
    "SEAL_FIELDS",
    "seal_extension",
    "GENESIS",
    "FIELDS",
    "LineError",
    "LineHead",
    "format_ts",
    "check_run_id",
    "check_kind",
    "encode_record",
    "encode_checked",
    "parse_line",
    "parse_record",
]

RUN_STARTED = "run.started"
PLAN_COMPILED = "plan.compiled"
TOOL_REGISTERED = "tool.registered"
TOOL_DEPLOYED = "tool.deployed"
TOOL_VERSIONED = "tool.versioned"
TOOL_DENIED = "tool.denied"
TOOL_REVOKED = "tool.revoked"
JOB_STARTED = "job.started"
JOB_FINISHED = "job.finished"
RUN_DENIED = "run.denied"
RUN_SEALED = "run.sealed"
RUN_CONTINUED = "run.continued"
SHARD_ASSIGNED = "shard.assigned"
KINDS: tuple[str, ...] = (
    RUN_STARTED,
    PLAN_COMPILED,
    TOOL_REGISTERED,
    TOOL_DEPLOYED,
    TOOL_VERSIONED,
    TOOL_DENIED,
    TOOL_REVOKED,
    JOB_STARTED,
    JOB_FINISHED,
    RUN_DENIED,
    RUN_SEALED,
    RUN_CONTINUED,
)

_KNOWN_KINDS = frozenset(KINDS)
GENESIS = "0" * 64
FIELDS = frozenset({"data", "hash", "kind", "prev", "run", "seq", "ts"})

_KIND = rb"[a-z][a-z0-9-]*(?:\.[a-z][a-z0-9-]*)+"
_RUN = rb"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}"
_TS = rb"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z"
_TAIL = re.compile(
    rb',"hash":"([0-9a-f]{64})","kind":"('
    + _KIND
    + rb')","prev":"([0-9a-f]{64})","run":"('
    + _RUN
    + rb')","seq":(0|[1-9][0-9]{0,17}),"ts":"'
    + _TS
    + rb'"}'
)
_match_tail = _TAIL.fullmatch
_sha256 = hashlib.sha256
_HASH_MEMBER = b',"hash":"'
_HASH_MEMBER_LEN = len(_HASH_MEMBER) + 64 + 1
_KIND_RE = re.compile(_KIND.decode())
_RUN_RE = re.compile(_RUN.decode())
_TS_RE = re.compile(_TS.decode())
_SEQ_END = 10**18  # parse_line reads at most 18 digits
_HEX64_RE = re.compile("[0-9a-f]{64}")


class LineError(ValueError):
    """A line that is not a well-formed, self-consistent record; ``pointer`` names the field."""

    def __init__(self, message: str, pointer: str = "") -> None:
        super().__init__(message)
        self.pointer = pointer


class LineHead(NamedTuple):
    """The chain fields of a line whose own hash checked out."""

    hash: str
    kind: str
    prev: str
    run: str
    seq: int


def format_ts(ns: int) -> str:
    """RFC 3339 UTC with milliseconds, ``2026-11-21T18:00:00.123Z``, from nanoseconds since the epoch.

    A string, never a float. The date and time of day are formatted once per second (one cached
    second, swapped atomically): records come thousands a second and ``strftime`` is their
    slowest step.
    """
    global _ts_second
    seconds, millis = divmod(ns // 1_000_000, 1000)
    cached_seconds, prefix = _ts_second
    if seconds != cached_seconds:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _ts_second = (seconds, prefix)
    return f"{prefix}.{millis:03d}Z"


_ts_second: tuple[int, str] = (-1, "")


SEAL_FIELDS = frozenset({"size", "head", "run_records", "checkpoint", "signers"})


def seal_extension(run: str, ts: str, run_records: int) -> str:
    """The checkpoint extension line that binds a seal's own fields to its signature.

    The note's size and root hash cover the records before the seal; this line covers the seal
    record itself (its run, its time, how many records of the run it closes), so none of them can
    be edited and rehashed under a valid signature. ``signers`` is checked against the signature
    lines and ``kind``, ``seq`` and ``prev`` against the note, so every field of a seal is covered.
    """
    return f"sandrun-seal run={run} time={ts} records={run_records}"


def check_run_id(run: str) -> str:
    if not _RUN_RE.fullmatch(run):
        raise ValueError(f"a run id is 1-128 of [A-Za-z0-9._:-], starting alphanumeric: {run!r}")
    return run


def encode_record(
    *, seq: int, ts: str, kind: str, run: str, data: dict[str, Any], prev: str
) -> tuple[dict[str, Any], bytes]:
    """The record (with its hash) and its line (with LF). ``TypeError`` for floats in ``data``.

    Only ``data`` goes through the JSON encoder. Every other member is checked to be plain ASCII
    that JSON never escapes (dotted kind, restricted run id, hex, int, fixed timestamp), so it is
    written straight into its place in the canonical key order (data, hash, kind, prev, run, seq,
    ts); a test holds the result equal to :func:`~runner.canonical.canonical_json` of the record.
    """
    check_kind(kind)
    if type(seq) is not int or not 0 <= seq < _SEQ_END:
        raise ValueError(f"seq is an integer from 0 to 10**18 - 1, not {seq!r}")
    if not _TS_RE.fullmatch(ts):
        raise ValueError(f"ts is an RFC 3339 UTC time with milliseconds, not {ts!r}")
    if not _HEX64_RE.fullmatch(prev):
        raise ValueError(f"prev is a sha256 in lowercase hex, not {prev!r}")
    return encode_checked(seq=seq, ts=ts, kind=kind, run=check_run_id(run), data=data, prev=prev)


def encode_checked(
    *, seq: int, ts: str, kind: str, run: str, data: dict[str, Any], prev: str
) -> tuple[dict[str, Any], bytes]:
    """:func:`encode_record` for a writer whose envelope fields are already known to be valid: the
    audit log's hot path (two records per job), where ``ts``, ``prev`` and ``seq`` are its own,
    ``run`` was checked when the log opened and ``kind`` by :func:`check_kind`."""
    if type(data) is not dict:
        raise TypeError("audit data is a JSON object")
    head = b'{"data":' + canonical_json(data)
    tail = f',"kind":"{kind}","prev":"{prev}","run":"{run}","seq":{seq},"ts":"{ts}"}}'.encode()
    digest = _sha256(head + tail).hexdigest()
    line = b"".join((head, _HASH_MEMBER, digest.encode(), b'"', tail, b"\n"))
    return {"data": data, "hash": digest, "kind": kind, "prev": prev, "run": run, "seq": seq, "ts": ts}, line


def check_kind(kind: str) -> str:
    if kind not in _KNOWN_KINDS and not _KIND_RE.fullmatch(kind):
        raise ValueError(f"an audit kind is dotted lowercase words like 'job.finished': {kind!r}")
    return kind


def parse_line(line: bytes) -> LineHead:
    """Check one line (without its LF): shape, and that its hash is the hash of its content."""
    cut = line.rfind(_HASH_MEMBER)
    match = _match_tail(line, cut) if cut > 0 else None
    if match is None or not line.startswith(b'{"data":{') or line[cut - 1] != 0x7D:
        raise LineError("not a well-formed audit record")
    digest, kind, prev, run, seq = match.groups()
    hex_digest = digest.decode("ascii")
    if _sha256(line[:cut] + line[cut + _HASH_MEMBER_LEN :]).hexdigest() != hex_digest:
        raise LineError("the record's content does not match its hash", "/hash")
    # tuple.__new__ skips NamedTuple's Python-level constructor: this is the verifier's hot path.
    return tuple.__new__(LineHead, (hex_digest, kind.decode(), prev.decode(), run.decode(), int(seq)))


def _no_float(text: str) -> Any:
    raise LineError(f"a float ({text}) in a record; canonical JSON has none")


def parse_record(line: bytes) -> dict[str, Any]:
    """The full record of a line, checked to be exactly its own canonical JSON (no floats)."""
    try:
        record = json.loads(line, parse_float=_no_float, parse_constant=_no_float)
    except LineError:
        raise
    except ValueError as exc:  # invalid JSON or invalid UTF-8
        raise LineError(f"not JSON: {exc}") from None
    if not isinstance(record, dict) or set(record) != FIELDS:
        raise LineError("an audit record has exactly the fields " + ", ".join(sorted(FIELDS)))
    if canonical_json(record) != line:
        raise LineError("the record is not in canonical JSON form")
    return record
