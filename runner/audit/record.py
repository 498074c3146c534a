"""One audit record, one line: its kinds, its exact bytes, the cheap check of one line, and each
kind's data (one builder and one reader per kind, at the end).

A record is the canonical JSON (``runner.canonical``) of ``{data, hash, kind, prev, run, seq, ts}``
followed by LF. ``hash`` is the SHA-256 of the canonical JSON of the record without ``hash``.
Because keys are sorted, ``hash`` sits right after the ``data`` object, so the hashed bytes are the
line with the 74 bytes ``,"hash":"<64 hex>"`` cut out: :func:`parse_line` checks a line by slicing
and one regular expression instead of a JSON parse and re-encode, which is what lets a verifier run
at a few hundred thousand records per second. :func:`parse_record` is the full (strict) check.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from runner.canonical import canonical_json
from runner.results import TRAP_KINDS, JobResult

if TYPE_CHECKING:
    from runner.plan import JobSpec, Plan, Tool
    from runner.policy.governance import Grants
    from runner.results import Outcome

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
    "SEAL_TREE",
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
    "job_grant",
    "run_started",
    "plan_compiled",
    "tool_registered",
    "ToolVersion",
    "read_tool_registered",
    "tool_versioned",
    "tool_refused",
    "tool_deployed",
    "tool_denied",
    "job_started",
    "job_finished",
    "run_denied",
    "PolicyInfo",
    "PlanInfo",
    "read_plan_compiled",
    "read_job_finished",
    "read_job_started",
    "record_job",
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
# A seal whose checkpoint signs a Merkle root also holds the tree's subtree heads (hex, largest
# first), so the next run resumes the tree from the log's last record instead of re-reading it.
SEAL_TREE = "tree"


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
        raise LineError(_malformed(line))
    digest, kind, prev, run, seq = match.groups()
    hex_digest = digest.decode("ascii")
    if _sha256(line[:cut] + line[cut + _HASH_MEMBER_LEN :]).hexdigest() != hex_digest:
        raise LineError("the record's content does not match its hash", "/hash")
    # tuple.__new__ skips NamedTuple's Python-level constructor: this is the verifier's hot path.
    return tuple.__new__(LineHead, (hex_digest, kind.decode(), prev.decode(), run.decode(), int(seq)))


def _malformed(line: bytes) -> str:
    """Why a line is no record, naming the two damages a copy makes without anyone editing it."""
    if line.endswith(b"\r"):
        return "not a well-formed audit record: the line ends in CR (CRLF line ends, from a text-mode copy?)"
    if line.startswith(b"\xef\xbb\xbf"):
        return "not a well-formed audit record: the file starts with a byte order mark"
    return "not a well-formed audit record"


def _no_float(text: str) -> Any:
    raise LineError(f"a float ({text}) in a record; canonical JSON has none")


def parse_record(line: bytes) -> dict[str, Any]:
    """The full record of a line, checked to be exactly its own canonical JSON (no floats)."""
    # A line's bytes are hashed whatever they hold, so a hostile one (no key needed without --pub)
    # may nest deeper than the parser recurses, or escape a lone surrogate that no UTF-8 encoding
    # of it can hold: it is not a record, never an internal error (tests/cli/test_cli_audit.py).
    try:
        record = json.loads(line, parse_float=_no_float, parse_constant=_no_float)
    except LineError:
        raise
    except RecursionError:
        raise LineError("not a record: JSON nested too deep") from None
    except ValueError as exc:  # invalid JSON or invalid UTF-8
        raise LineError(f"not JSON: {exc}") from None
    if not isinstance(record, dict) or set(record) != FIELDS:
        raise LineError("an audit record has exactly the fields " + ", ".join(sorted(FIELDS)))
    try:
        canonical = canonical_json(record)
    except (RecursionError, ValueError) as exc:  # UnicodeEncodeError: a lone surrogate
        raise LineError(f"the record has no canonical JSON form: {type(exc).__name__}") from None
    if canonical != line:
        raise LineError("the record is not in canonical JSON form")
    return record


# -- the kinds' data: one builder and one reader per kind ---------------------------------------
#
# The writers (api.run, the executor) build each record's ``data`` here, and everything that reads
# a log (query, the reports, ``audit show``) goes through the readers below, so a field is named
# in one place. A reader raises ``ValueError``/``TypeError`` for data that is not what a runner
# writes; callers turn that into ``audit.bad-record``.

_AXIS_PLACES = 4  # effect weights as decimal strings, like the plan's score: canonical JSON has no floats


def _decimal(value: float) -> str:
    return f"{value:.{_AXIS_PLACES}f}"


@functools.lru_cache(maxsize=256)
def _effects(grants: Grants) -> tuple[tuple[str, str], ...]:
    """A grant's effect vector as decimal strings; the jobs of one tool mostly share one, and every
    shard of a plan records all of its jobs' grants (bench/bench_shard.py)."""
    from runner.policy.governance import effect_vector

    return tuple((axis, _decimal(weight)) for axis, weight in effect_vector(grants).items())


def job_grant(job: JobSpec, *, signed: bool) -> dict[str, Any]:
    """What a job was granted, for ``plan.compiled``: its governance score, the effect vector the
    score is the norm of (docs/policy.md, "Governance score") and its network grant. ``signed``:
    its tool's signature verified under a trusted key."""
    from runner.plan import plain
    from runner.policy.governance import Grants

    grants = Grants(
        ro_mounts=sum(1 for m in job.mounts if m.mode == "ro"),
        rw_mounts=sum(1 for m in job.mounts if m.mode == "rw"),
        network=job.network is not None and bool(job.network.allow),
        env_vars=len(job.env),
        signed=signed,
        actions=job.actions,
    )
    network = job.network
    return {
        "id": job.id,
        "score": job.score,
        "effects": dict(_effects(grants)),
        # the whole grant as the plan holds it: allow entries (strings or {host, methods, paths}),
        # blocks, secrets by name and origin (never a value: the plan has none), bounds
        "network": None if network is None else json.loads(canonical_json(plain(network))),
    }


def run_started(version: str, sources: Sequence[str]) -> dict[str, Any]:
    return {"sandrun": version, "sources": list(sources)}


def plan_compiled(plan: Plan, plan_sha256: str, operator_policy: str | None) -> dict[str, Any]:
    """``plan.compiled``: the plan's identity, its policy (and the one the operator named, as typed),
    its inputs, its jobs in order, and each job's grant (:func:`job_grant`)."""
    policy = plan.policy
    signed = {(t.manifest, t.name) for t in plan.tools if t.signature_verified}
    return {
        "operator_policy": None
        if operator_policy is None
        else {"path": operator_policy, "sha256": policy.sha256},
        "plan_sha256": plan_sha256,
        "policy": {
            "name": policy.name,
            "path": policy.path,
            "sha256": policy.sha256,
            "git_commit": policy.git_commit,
        },
        "inputs": [{"path": i.path, "sha256": i.sha256} for i in plan.inputs],
        "jobs": [job.id for job in plan.jobs],
        "grants": [job_grant(job, signed=(job.manifest, job.tool) in signed) for job in plan.jobs],
        "wasm_features": list(plan.wasm_features),
    }


def tool_registered(tool: Tool) -> dict[str, Any]:
    return {
        "manifest": tool.manifest,
        "name": tool.name,
        "module": tool.module,
        "module_sha256": tool.sha256,
        "version": tool.version,
        "signer": tool.signer,
        "signature_verified": tool.signature_verified,
        "actions": list(tool.actions),
        "kind": tool.kind,
    }


class ToolVersion(NamedTuple):
    """A ``tool.registered`` record's identity (manifest and name) and version (digest, version)."""

    manifest: Any
    name: Any
    module_sha256: Any
    version: Any


def read_tool_registered(data: Mapping[str, Any]) -> ToolVersion:
    """The fields of ``tool.registered`` data that say which tool it is and which version."""
    return ToolVersion(data.get("manifest"), data.get("name"), data.get("module_sha256"), data.get("version"))


def tool_versioned(tool: ToolVersion, previous: ToolVersion, run: Any, seq: Any) -> dict[str, Any]:
    """``tool.versioned``: a tool whose digest or version differs from its latest registration in
    an earlier run (``run``, ``seq`` of that record)."""
    return {
        "manifest": tool.manifest,
        "name": tool.name,
        "module_sha256": tool.module_sha256,
        "version": tool.version,
        "previous": {
            "module_sha256": previous.module_sha256,
            "version": previous.version,
            "run": run,
            "seq": seq,
        },
    }


def tool_refused(tool: str, file: str, rule_id: str, reason: str) -> dict[str, Any]:
    """``tool.denied``/``tool.revoked`` at compile time: the manifest file and the tool's key in it."""
    return {"tool": tool, "file": file, "rule_id": rule_id, "reason": reason}


def _job_tool(job: JobSpec) -> dict[str, Any]:
    """The fields naming the tool a job runs, as the executor's tool records carry them."""
    return {"tool": job.tool, "manifest": job.manifest, "module_sha256": job.module_sha256}


def tool_deployed(job: JobSpec, source: str, engine: str) -> dict[str, Any]:
    """``tool.deployed`` (executor): where the compiled module came from, under which engine."""
    return {**_job_tool(job), "source": source, "engine": engine}


def tool_denied(job: JobSpec, rule_id: str, reason: str) -> dict[str, Any]:
    """``tool.denied`` at deploy time (executor): the module could not be loaded as planned."""
    return {**_job_tool(job), "rule_id": rule_id, "reason": reason}


def _flat(record: Any) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__dataclass_fields__}


def job_started(job: JobSpec, index: int, hermetic: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``job.started`` (executor): the concrete limits and mounts (and ``work_dir``, when the job
    has one) the job starts with; ``hermetic``, a hermetic job's input digests and seed (what a
    replay needs, docs/hermetic.md)."""
    data = {
        "id": job.id,
        "index": index,
        "module_sha256": job.module_sha256,
        "limits": _flat(job.limits),
        "mounts": [_flat(m) for m in job.mounts],
        "fs_scope": job.fs_scope,
    }
    if job.work_dir is not None:
        data["work_dir"] = job.work_dir
    if hermetic is not None:
        data["hermetic"] = dict(hermetic)
    return data


#: Bound on the raw trap message kept in ``job.finished``.
TRAP_MESSAGE_MAX = 2000


def job_finished(
    result: JobResult,
    index: int,
    outcome: Outcome | None,
    outputs: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """``job.finished`` (executor): the report row plus what only the log keeps (docs/reports.md);
    ``outputs``, a hermetic job's rw mounts after the run."""
    data = result.to_dict()
    data["index"] = index
    if outputs is not None:
        data["outputs"] = list(outputs)
    if outcome is None:
        data.update(trap_message=None, invoke_results=None, stdout_dropped=0, stderr_dropped=0)
    else:
        message, results = outcome.trap_message, outcome.invoke_results
        data["trap_message"] = None if message is None else message[:TRAP_MESSAGE_MAX]
        data["invoke_results"] = None if results is None else list(results)
        data["stdout_dropped"], data["stderr_dropped"] = outcome.stdout_dropped, outcome.stderr_dropped
    return data


def net_request(job: JobSpec, hop: Mapping[str, Any]) -> dict[str, Any]:
    """``net.request`` (executor): one ``sandrun:http`` hop of a job, as the egress layer saw it."""
    return {"id": job.id, **hop}


def run_denied(exit_code: int, violations: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {"exit_code": exit_code, "violations": list(violations)}


class PolicyInfo(NamedTuple):
    name: str
    path: str
    sha256: str


class PlanInfo(NamedTuple):
    """What a ``plan.compiled`` record says, as read back."""

    plan_sha256: str | None
    policy: PolicyInfo | None
    jobs: list[str] | None
    inputs: dict[str, str]  # path -> sha256
    grants: dict[str, dict[str, Any]]  # job id -> job_grant(); empty for logs written before it


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, not {type(value).__name__}")
    return value


def read_plan_compiled(data: Mapping[str, Any]) -> PlanInfo:
    """A ``plan.compiled`` record's data; a policy given as a bare name (older logs) has no path."""
    policy = data.get("policy")
    info = None
    if isinstance(policy, Mapping):
        path, sha256 = policy.get("path", ""), policy.get("sha256", "")
        info = PolicyInfo(_text(policy.get("name")), _text(path), _text(sha256))
    elif isinstance(policy, str):
        info = PolicyInfo(policy, "", "")
    jobs = data.get("jobs")
    sha = data.get("plan_sha256")
    inputs = {
        _text(item.get("path")): _text(item.get("sha256"))
        for item in data.get("inputs") or ()
        if isinstance(item, Mapping)
    }
    grants = {
        _text(item.get("id")): dict(item) for item in data.get("grants") or () if isinstance(item, Mapping)
    }
    return PlanInfo(
        plan_sha256=sha if isinstance(sha, str) else None,
        policy=info,
        jobs=[_text(j) for j in jobs] if isinstance(jobs, list) else None,
        inputs=inputs,
        grants=grants,
    )


_RESULT_FIELDS = tuple(f.name for f in dataclasses.fields(JobResult))
_NUMBERS = ("exit_code", "fuel_used", "memory_peak", "wall_ms")
# Counts and sizes a runner records fit in 64 bits (an exit code in 32, either sign); a bigger
# integer in a hand-written log would overflow the renderers' float arithmetic.
_BOUND = 1 << 64


def _bounded(value: Any) -> bool:
    """None, or an integer (not a bool) of at most 64 bits, either sign."""
    return value is None or (type(value) is int and -_BOUND < value < _BOUND)


_FLAGS = ("stdout_truncated", "stderr_truncated")
_OPTIONAL_TEXT = ("stdout_sha256", "stderr_sha256", "reason")


def read_job_finished(data: Mapping[str, Any]) -> tuple[int | None, JobResult]:
    """A ``job.finished`` record's place in the plan and its result, checked to hold what a runner
    writes (renderers rely on the types): ``TypeError``/``ValueError`` otherwise."""
    result = JobResult.from_dict({k: data[k] for k in _RESULT_FIELDS if k in data})
    values = result.to_dict()
    if not all(isinstance(values[k], str) for k in ("manifest", "name", "tool", "module_sha256")):
        raise TypeError("manifest, name, tool and module_sha256 are strings")
    if not all(_bounded(values[k]) for k in _NUMBERS):
        raise TypeError(", ".join(_NUMBERS) + " are integers of at most 64 bits, or null")
    if not all(type(values[k]) is bool for k in _FLAGS) or not all(
        values[k] is None or isinstance(values[k], str) for k in _OPTIONAL_TEXT
    ):
        raise TypeError("the truncation flags are booleans, digests and reason strings or null")
    if result.trap is not None and result.trap not in TRAP_KINDS:
        raise ValueError(f"unknown trap kind {result.trap!r}")
    index = data.get("index")
    return (index if type(index) is int else None), result


def read_job_started(data: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """A ``job.started`` record's job id and granted limits (``{}`` when they are not a mapping);
    ``TypeError`` for a limit that is not an integer of at most 64 bits or null."""
    limits = data.get("limits")
    granted = dict(limits) if isinstance(limits, Mapping) else {}
    if not all(_bounded(value) for value in granted.values()):
        raise TypeError("limits are integers of at most 64 bits, or null")
    return _text(data.get("id")), granted


def record_job(kind: str, data: Mapping[str, Any]) -> str | None:
    """``manifest/name`` of the job a record is about (its ``job``/``id`` field, or a ``job.*``
    record's ``manifest`` and ``name``); None for records about no job."""
    for key in ("job", "id"):
        if isinstance(data.get(key), str):
            return str(data[key])
    if (
        kind.startswith("job.")
        and isinstance(data.get("manifest"), str)
        and isinstance(data.get("name"), str)
    ):
        return f"{data['manifest']}/{data['name']}"
    return None
