"""Signed in-toto attestations built from a verified audit log (``sandrun attest``).

Auditors' tools already verify DSSE envelopes holding in-toto Statements; this module answers in
that format instead of Sandrun's own. The log is verified first (a damaged, untrusted or unsealed
run is refused) and every statement is a pure function of the records of one sealed run, so the
same log and key always give the same bytes. Four predicates:

1. ``https://in-toto.io/attestation/test-result/v0.1`` for the batch: the tools as subject, the
   manifests, policy and plan by digest as configuration, one entry per job;
2. ``https://in-toto.io/attestation/runtime-trace/v0.2`` per job: the module as subject, every
   mount and the stdin file in ``fileAccess``, network hops when the log records them;
3. ``https://slsa.dev/provenance/v1`` per job with a read-write mount. The log records no
   per-file digests of what a job wrote, so the subject is what it does record with digests (the
   captured stdout and stderr) and the rw mounts are listed as byproducts, marked unrecorded;
4. ``https://slsa.dev/verification_summary/v1`` for the policy decision (allowed / denied).

The DSSE signature is Ed25519 (``runner.signing``) over the spec's PAE of the payload.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.audit.record import (
    JOB_FINISHED,
    JOB_STARTED,
    PLAN_COMPILED,
    RUN_DENIED,
    RUN_SEALED,
    RUN_STARTED,
    TOOL_REGISTERED,
)
from runner.errors import AuditError, InputError, Location, Violation
from runner.signing import PrivateKey, PublicKey, public_key_raw, sign_bytes, verify_bytes

__all__ = [
    "PAYLOAD_TYPE",
    "STATEMENT_TYPE",
    "PREDICATE_TYPES",
    "BUNDLE_NAME",
    "pae",
    "key_id",
    "statements_from_log",
    "sign_statement",
    "attest",
    "verify_bundle",
    "VerifiedStatement",
]

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
TEST_RESULT = "https://in-toto.io/attestation/test-result/v0.1"
RUNTIME_TRACE = "https://in-toto.io/attestation/runtime-trace/v0.2"
PROVENANCE = "https://slsa.dev/provenance/v1"
VERIFICATION_SUMMARY = "https://slsa.dev/verification_summary/v1"
PREDICATE_TYPES = (TEST_RESULT, RUNTIME_TRACE, PROVENANCE, VERIFICATION_SUMMARY)
BUNDLE_NAME = "attestations.intoto.jsonl"
_SANDRUN = "https://sandrun.dev"


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 Pre-Authentication Encoding: what is signed, binding the type to the bytes."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def key_id(key: PublicKey) -> str:
    """The envelope's ``keyid``: SHA-256 of the raw Ed25519 public key, hex (a hint, not trusted)."""
    return hashlib.sha256(public_key_raw(key)).hexdigest()


def _descriptor(name: str, sha256: str, **annotations: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "digest": {"sha256": sha256}}
    if annotations:
        entry["annotations"] = annotations
    return entry


def _statement(
    subject: list[dict[str, Any]], predicate_type: str, predicate: dict[str, Any]
) -> dict[str, Any]:
    return {
        "_type": STATEMENT_TYPE,
        "subject": subject,
        "predicateType": predicate_type,
        "predicate": predicate,
    }


@dataclass(frozen=True, slots=True)
class _Run:
    """The records of one sealed run, by kind."""

    run: str
    started: Mapping[str, Any]
    plan: Mapping[str, Any] | None
    denied: Mapping[str, Any] | None
    tools: list[Mapping[str, Any]]
    job_started: dict[str, Mapping[str, Any]]
    job_finished: dict[str, Mapping[str, Any]]
    sealed: Mapping[str, Any]


def _select_run(records: Sequence[Mapping[str, Any]], sealed_runs: Sequence[str], run: str | None) -> _Run:
    if run is None:
        if not sealed_runs:
            raise AuditError.one("attest.unsealed", "the log holds no sealed run to attest")
        run = sealed_runs[-1]
    elif run not in sealed_runs:
        raise AuditError.one("attest.unsealed", f"run {run!r} is not a sealed run of this log")
    mine = [r for r in records if r["run"] == run]
    by_kind: dict[str, list[Mapping[str, Any]]] = {}
    for record in mine:
        by_kind.setdefault(record["kind"], []).append(record)
    finished = {}
    for record in by_kind.get(JOB_FINISHED, []):
        data = record["data"]
        finished[f"{data['manifest']}/{data['name']}"] = record
    return _Run(
        run=run,
        started=by_kind[RUN_STARTED][0] if RUN_STARTED in by_kind else mine[0],
        plan=by_kind.get(PLAN_COMPILED, [None])[0],
        denied=by_kind.get(RUN_DENIED, [None])[0],
        tools=[r["data"] for r in by_kind.get(TOOL_REGISTERED, [])],
        job_started={r["data"]["id"]: r for r in by_kind.get(JOB_STARTED, [])},
        job_finished=finished,
        sealed=by_kind[RUN_SEALED][-1],
    )


def _tool_subjects(run: _Run) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for tool in run.tools:
        seen.setdefault(tool["module_sha256"], _descriptor(tool["module"], tool["module_sha256"]))
    return list(seen.values())


def _configuration(run: _Run) -> list[dict[str, Any]]:
    if run.plan is None:
        return []
    data = run.plan["data"]
    entries = [_descriptor(item["path"], item["sha256"]) for item in data.get("inputs", [])]
    entries.append(_descriptor("plan.json", data["plan_sha256"], role="plan"))
    return entries


def _test_result(run: _Run, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The batch's verdict from the same checked reader as ``sandrun report``
    (:func:`~runner.audit.query.results_from_log`): a run whose results do not number its plan's
    jobs, or hold a row no runner writes, is ``audit.bad-record``, never attested as passed."""
    from runner.audit.query import results_from_log

    rows = [] if run.plan is None else results_from_log(records, run.run)["jobs"]
    jobs = [
        {
            "id": f"{row['manifest']}/{row['name']}",
            "status": row["status"],
            "exitCode": row["exit_code"],
            "trap": row["trap"],
            "stdout": {"sha256": row["stdout_sha256"]},
            "stderr": {"sha256": row["stderr_sha256"]},
        }
        for row in rows
    ]
    jobs.sort(key=lambda job: job["id"])
    passed = [j["id"] for j in jobs if j["status"] == "passed"]
    failed = [j["id"] for j in jobs if j["status"] != "passed"]
    ok = run.denied is None and not failed
    predicate = {
        "result": "PASSED" if ok else "FAILED",
        "configuration": _configuration(run),
        "url": f"sandrun:run/{run.run}",
        "passedTests": passed,
        "warnedTests": [],
        "failedTests": failed,
        "sandrunJobs": jobs,
        "sandrunAuditHead": run.sealed["data"]["head"],
    }
    return _statement(_tool_subjects(run), TEST_RESULT, predicate)


def _mounts(started: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "name": m["host"],
            "uri": f"sandrun-mount:{m['host']}",
            "annotations": {"guest": m["guest"], "mode": m["mode"]},
        }
        for m in started["data"].get("mounts", [])
    ]


def _network(finished: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Hops as ``job.finished`` records them (``data.network``: host, ip, port), when it does."""
    hops = finished["data"].get("network") if finished is not None else None
    if not isinstance(hops, list):
        return []
    keep = ("ip", "hostname", "port", "protocol")
    return [{k: hop[k] for k in keep if k in hop} for hop in hops if isinstance(hop, Mapping)]


def _runtime_trace(run: _Run, job_id: str, started: Mapping[str, Any]) -> dict[str, Any]:
    finished = run.job_finished.get(job_id)
    data = started["data"]
    log: dict[str, Any] = {"fileAccess": _mounts(started)}
    network = _network(finished)
    if network:
        log["network"] = network
    predicate = {
        "monitor": {
            "type": f"{_SANDRUN}/monitor/wasmtime-host/v1",
            "tracePolicy": {"fsScope": data.get("fs_scope"), "limits": data.get("limits", {})},
        },
        "monitoredProcess": {
            "hostID": f"{_SANDRUN}/runner/{run.started['data'].get('sandrun', 'unknown')}",
            "type": f"{_SANDRUN}/job/v1",
            "event": f"{run.run}/{job_id}",
        },
        "monitorLog": log,
        "metadata": {
            "buildStartedOn": started["ts"],
            **({"buildFinishedOn": finished["ts"]} if finished is not None else {}),
        },
    }
    return _statement([_descriptor(job_id, data["module_sha256"])], RUNTIME_TRACE, predicate)


def _provenance(run: _Run, job_id: str, started: Mapping[str, Any]) -> dict[str, Any] | None:
    mounts = started["data"].get("mounts", [])
    finished = run.job_finished.get(job_id)
    if finished is None or not any(m["mode"] == "rw" for m in mounts):
        return None
    data = finished["data"]
    subject = [
        _descriptor(f"logs/{job_id}.{stream}", data[f"{stream}_sha256"]) for stream in ("stdout", "stderr")
    ]
    predicate = {
        "buildDefinition": {
            "buildType": f"{_SANDRUN}/job/v1",
            "externalParameters": {"job": job_id, "limits": started["data"].get("limits", {})},
            "resolvedDependencies": [
                _descriptor(f"module:{data['tool']}", data["module_sha256"]),
                *[
                    {"name": m["host"], "uri": f"sandrun-mount:{m['host']}", "annotations": {"mode": "ro"}}
                    for m in mounts
                    if m["mode"] == "ro"
                ],
            ],
        },
        "runDetails": {
            "builder": {"id": f"{_SANDRUN}/runner/{run.started['data'].get('sandrun', 'unknown')}"},
            "metadata": {
                "invocationId": f"{run.run}/{job_id}",
                "startedOn": started["ts"],
                "finishedOn": finished["ts"],
            },
            "byproducts": [
                {
                    "name": m["host"],
                    "uri": f"sandrun-mount:{m['host']}",
                    "annotations": {"mode": "rw", "guest": m["guest"], "contentsRecorded": False},
                }
                for m in mounts
                if m["mode"] == "rw"
            ],
        },
    }
    return _statement(subject, PROVENANCE, predicate)


def _verification_summary(run: _Run) -> dict[str, Any]:
    when = (run.plan or run.denied or run.started)["ts"]
    plan = run.plan["data"] if run.plan is not None else {}
    policy = plan.get("operator_policy") or {}
    predicate: dict[str, Any] = {
        "verifier": {"id": f"{_SANDRUN}/runner/{run.started['data'].get('sandrun', 'unknown')}"},
        "timeVerified": when,
        "resourceUri": f"sandrun:run/{run.run}",
        "policy": (
            {"uri": f"sandrun-policy:{policy['path']}", "digest": {"sha256": policy["sha256"]}}
            if policy
            else {}
        ),
        "verificationResult": "FAILED" if run.denied is not None else "PASSED",
        "verifiedLevels": ["SANDRUN_POLICY_DENIED" if run.denied is not None else "SANDRUN_POLICY_ALLOWED"],
        "slsaVersion": "1.0",
    }
    if run.denied is not None:
        predicate["sandrunDenials"] = [
            {"rule": v["rule_id"], "pointer": (v.get("location") or {}).get("pointer", "")}
            for v in run.denied["data"].get("violations", [])
        ]
    subject = _tool_subjects(run) or [_descriptor(f"run:{run.run}", run.sealed["data"]["head"])]
    return _statement(subject, VERIFICATION_SUMMARY, predicate)


def statements_from_log(
    path: Path,
    *,
    public_keys: Sequence[PublicKey] = (),
    expect_head: str | None = None,
    run: str | None = None,
) -> list[dict[str, Any]]:
    """Verify the log, then build every statement for one sealed run (default: the last sealed)."""
    from runner.audit import verified_records

    report, records = verified_records(path, public_keys=public_keys, expect_head=expect_head)
    sealed = [r.run for r in report.runs if r.sealed]
    if run is None:  # the last sealed run that decided something, not a replay or merge after it
        decided = {r["run"] for r in records if r["kind"] in (PLAN_COMPILED, RUN_DENIED)}
        sealed = [s for s in sealed if s in decided] or sealed
    try:
        chosen = _select_run(records, sealed, run)
        if chosen.plan is None and chosen.denied is None:
            raise AuditError.one(
                "audit.no-plan",
                f"run {chosen.run} neither compiled a plan nor was denied (a replay or a merge): it "
                "holds no policy decision or test result to attest; name a run with --run",
                Location(file=str(path)),
            )
        statements = [_test_result(chosen, records)]
        for job_id, started in sorted(chosen.job_started.items()):
            statements.append(_runtime_trace(chosen, job_id, started))
            provenance = _provenance(chosen, job_id, started)
            if provenance is not None:
                statements.append(provenance)
        statements.append(_verification_summary(chosen))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        # A chain-valid log holds what its writer put there: a record of a shape no runner writes
        # is refused here, never an internal error (tests/cli/test_cli_attest.py).
        raise AuditError.one(
            "audit.bad-record",
            f"the run holds a record no runner writes ({type(exc).__name__}: {exc})",
            Location(file=str(path)),
        ) from None
    return statements


def _canonical(statement: Mapping[str, Any]) -> bytes:
    return json.dumps(statement, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign_statement(statement: Mapping[str, Any], key: PrivateKey) -> dict[str, Any]:
    """A DSSE envelope holding ``statement`` (canonical JSON), signed by ``key``."""
    payload = _canonical(statement)
    signature = sign_bytes(key, pae(PAYLOAD_TYPE, payload))
    return {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signatures": [
            {"keyid": key_id(key.public_key()), "sig": base64.b64encode(signature).decode("ascii")}
        ],
    }


def attest(statements: Sequence[Mapping[str, Any]], key: PrivateKey) -> bytes:
    """The bundle: one envelope per line (the ``.intoto.jsonl`` layout SLSA tooling reads)."""
    return b"".join(
        json.dumps(sign_statement(s, key), sort_keys=True).encode("ascii") + b"\n" for s in statements
    )


@dataclass(frozen=True, slots=True)
class VerifiedStatement:
    line: int
    predicate_type: str
    subjects: int
    statement: dict[str, Any]


def _b64(text: object) -> bytes:
    if not isinstance(text, str):
        raise ValueError("not a string")
    return base64.b64decode(text, validate=True)


def verify_bundle(
    path: Path, public_keys: Sequence[PublicKey], *, expected: Sequence[Mapping[str, Any]] | None = None
) -> list[VerifiedStatement]:
    """Check every envelope of a bundle; raise :class:`AuditError` naming the first bad line.

    (1) the envelope's shape and payload type; (2) a signature by one of ``public_keys`` over the
    PAE; (3) the payload is an in-toto Statement v1 with a known predicate type and subjects with
    sha256 digests; (4) when ``expected`` (statements rebuilt from the log) is given, the payloads
    are exactly those statements, in order.
    """
    if not public_keys:
        raise InputError.one("attest.no-key", "give the runner's public key (--pub) to verify against")
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise InputError.one("input.read", f"cannot read: {exc.strerror}", Location(str(path))) from None
    verified: list[VerifiedStatement] = []

    def fail(number: int, rule: str, message: str) -> AuditError:
        return AuditError(violations=(Violation(rule, message, Location(str(path), number)),))

    for number, line in enumerate(lines, start=1):
        # (1) envelope
        try:
            envelope = json.loads(line)
            if not isinstance(envelope, dict) or envelope.get("payloadType") != PAYLOAD_TYPE:
                raise ValueError(f"payloadType is not {PAYLOAD_TYPE}")
            payload = _b64(envelope["payload"])
            signatures = [_b64(s["sig"]) for s in envelope["signatures"]]
        except (ValueError, KeyError, TypeError, RecursionError, binascii.Error) as exc:
            raise fail(number, "attest.envelope", f"not a DSSE envelope: {exc}") from None
        # (2) signature
        signed = pae(PAYLOAD_TYPE, payload)
        if not any(verify_bytes(k, signed, s) for k in public_keys for s in signatures if len(s) == 64):
            raise fail(number, "attest.signature", "no signature verifies under the given key(s)")
        # (3) statement
        try:
            statement = json.loads(payload)
            kind = statement["predicateType"]
            if statement["_type"] != STATEMENT_TYPE or kind not in PREDICATE_TYPES:
                raise ValueError(f"unknown statement or predicate type {kind!r}")
            subjects = statement["subject"]
            if not subjects or not all(isinstance(s["digest"]["sha256"], str) for s in subjects):
                raise ValueError("every subject needs a sha256 digest")
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise fail(number, "attest.statement", f"not a valid in-toto statement: {exc}") from None
        # (4) the log says the same
        if expected is not None and (number > len(expected) or _canonical(expected[number - 1]) != payload):
            raise fail(number, "attest.mismatch", "the statement differs from what the audit log records")
        verified.append(VerifiedStatement(number, kind, len(subjects), statement))
    if expected is not None and len(verified) != len(expected):
        raise fail(
            len(lines), "attest.mismatch", f"{len(expected)} statements expected, {len(verified)} found"
        )
    if not verified:
        raise fail(0, "attest.empty", "the bundle holds no envelope")
    return verified
