"""Offline verification of an audit log: recompute every hash and link, check every seal.

The walk is a checklist run on each line in order; the first line that fails names the damage:

1. the line is a record whose content matches its own hash, else ``audit.edited`` (or
   ``audit.inserted`` for a blank line; ``audit.torn-line`` for an incomplete last line);
2. its ``seq`` is the next number and its ``prev`` the previous record's hash, else the break is
   classified by looking at the rest of the file: a record that turns up further down means
   ``audit.reordered``; a gap nobody fills, ``audit.removed``; a second record claiming a ``seq``
   already taken, ``audit.inserted``; a record that no longer links to its predecessor,
   ``audit.edited`` (one of the two was rewritten and rehashed);
3. a record after its run's seal, or of a run that already ended, is ``audit.inserted``;
4. a seal's checkpoint describes exactly the chain before it (size, chain head, and the RFC 6962
   Merkle root of those records; a log whose seals once signed a root never drops it), and every
   other field of the seal (its run, time, record count and signer list) matches what the
   checkpoint signs (``audit.seal-mismatch``); when public keys are given, a signature line that
   names one of them must verify (``audit.bad-seal-signature``: damage);
5. a run that follows an unsealed one opens with a ``run.continued`` record, and that record
   names the unsealed record right before it (``audit.inserted``);
6. with ``expect_head``, the published head is in the log, and a published Merkle root is that of
   the log's first ``size`` records (``audit.head-mismatch``, ``audit.truncated``).

A log whose last run has no seal verifies as *unsealed*, not as intact and not as damaged: that is
what a SIGKILL (or a truncation to a record boundary, which only a published head can tell apart)
leaves. A seal that is whole but signed by none of the given keys (``audit.unknown-signer``: a
wrong ``--pub``, or a log re-signed by someone else) or not signed (``audit.unsigned``) makes the
log *untrusted*, not damaged: the walk goes on and still names any damage after it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from runner.audit.checkpoint import Checkpoint, parse_checkpoint, verify_signatures
from runner.audit.merkle import CompactRange
from runner.audit.record import (
    GENESIS,
    RUN_CONTINUED,
    RUN_SEALED,
    SEAL_FIELDS,
    SEAL_TREE,
    LineError,
    LineHead,
    parse_line,
    parse_record,
    seal_extension,
)
from runner.canonical import canonical_digest
from runner.errors import EXIT_AUDIT_FAILED, EXIT_OK, AuditError, InputError, Location, Violation
from runner.signing import PublicKey

__all__ = [
    "RunSummary",
    "VerifyReport",
    "verify_log",
    "verify_read",
    "read_records",
    "verified_records",
    "verification_line",
    "signatures_clause",
    "checks_clause",
]

_UNSEALED = "audit.unsealed"


@dataclass(frozen=True, slots=True)
class RunSummary:
    """One run's span of the log. ``signers`` are the names on its seal; ``verified_signers`` those
    whose signature verified under a given public key (empty when no key was given)."""

    run: str
    first_seq: int
    last_seq: int
    first_line: int
    records: int
    sealed: bool
    signers: tuple[str, ...] = ()
    verified_signers: tuple[str, ...] = ()
    checkpoint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "first_line": self.first_line,
            "records": self.records,
            "sealed": self.sealed,
            "signers": list(self.signers),
            "verified_signers": list(self.verified_signers),
            "checkpoint": self.checkpoint,
        }


@dataclass(frozen=True)
class VerifyReport:
    """``ok``: no damage (every complete record verified). ``sealed``: and the last run is sealed.
    ``problems`` holds the first damage found, then the first seal not signed by a given key
    (``untrusted``), or ``audit.unsealed`` for an ok-but-unsealed log. ``signatures_checked``: keys
    were given; ``seals_verified`` counts the seals whose signature verified under one of them
    (before the first damage)."""

    path: str
    ok: bool
    records: int
    runs: list[RunSummary]
    sealed: bool
    problems: list[Violation]
    head: str | None = None
    signatures_checked: bool = False
    seals_verified: int = 0
    untrusted: bool = False
    published: str | None = None  # what the check against ``expect_head`` found, when it passed

    @property
    def status(self) -> Literal["intact", "unsealed", "untrusted", "damaged"]:
        if not self.ok:
            return "damaged"
        if self.untrusted:
            return "untrusted"
        return "intact" if self.sealed else "unsealed"

    @property
    def exit_code(self) -> int:
        """0 only for an intact log: an unsealed one cannot be told apart from a truncated one."""
        return EXIT_OK if self.status == "intact" else EXIT_AUDIT_FAILED

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "status": self.status,
            "ok": self.ok,
            "sealed": self.sealed,
            "records": self.records,
            "head": self.head,
            "signatures_checked": self.signatures_checked,
            "seals_verified": self.seals_verified,
            "published": self.published,
            "runs": [r.to_dict() for r in self.runs],
            "problems": [p.to_dict() for p in self.problems],
        }


@dataclass
class _Run:
    run: str
    first_seq: int
    first_line: int
    sealed: bool = False
    signers: tuple[str, ...] = ()
    verified: tuple[str, ...] = ()
    checkpoint: str | None = None

    def summary(self, end_seq: int) -> RunSummary:
        """This run's summary, given the ``seq`` where the next run (or the verified log) starts."""
        records = end_seq - self.first_seq
        return RunSummary(
            self.run,
            self.first_seq,
            end_seq - 1,
            self.first_line,
            records,
            self.sealed,
            self.signers,
            self.verified,
            self.checkpoint,
        )


@dataclass(frozen=True, slots=True)
class _Anchor:
    """A published head: a note's (size, root) or a bare record hash (size None)."""

    root: str
    size: int | None = None
    note: Checkpoint | None = field(default=None)


def _anchor(text: str) -> _Anchor:
    stripped = canonical_digest(text.strip())
    if stripped is not None:
        return _Anchor(stripped)
    try:
        note = parse_checkpoint(text if text.endswith("\n") else text + "\n")
    except ValueError as exc:
        raise InputError.one(
            "input.expect-head",
            f"not a head hash (64 hex) nor a checkpoint note: {exc}",
            Location(file="--expect-head"),
        ) from None
    return _Anchor(note.chain_head, note.size, note)


class _Walk:
    """The verification of one file; ``check`` returns the first damage, or None."""

    def __init__(self, where: str, lines: list[bytes], keys: Sequence[PublicKey], strict: bool) -> None:
        self.where = where
        self.lines = lines
        self.keys = keys
        self.strict = strict
        self.runs: list[_Run] = []
        self.count = 0
        self.prev = GENESIS
        self.untrusted: list[Violation] = []  # seals signed by none of the keys: not damage
        self.seals_verified = 0
        self.tree = CompactRange()  # the Merkle tree of the records verified so far
        self.merkle_sealed = False  # a seal has signed a Merkle root: later seals must too

    def at(self, rule: str, message: str, line: int | None, pointer: str = "") -> Violation:
        return Violation(rule, message, Location(file=self.where, line=line, pointer=pointer))

    def check(self, anchor: _Anchor | None) -> Violation | None:
        # The hot loop: locals only (this runs a few hundred thousand times per second).
        ended: set[str] = set()
        anchor_index = -1 if anchor is None or anchor.size is None else anchor.size - 1
        strict = self.strict
        add_leaf = self.tree.append
        sha256 = hashlib.sha256
        prev = GENESIS
        run: _Run | None = None
        index = 0
        try:
            for index, line in enumerate(self.lines):
                try:
                    head = parse_line(line)
                    digest, kind, head_prev, run_id, seq = head
                    if strict:
                        parse_record(line)
                except LineError as exc:
                    if not line:
                        return self.at("audit.inserted", "a blank line inside the log", index + 1)
                    return self.at("audit.edited", f"record edited: {exc}", index + 1, exc.pointer)
                if seq != index or head_prev != prev:
                    return self.chain_break(index, head)
                if run is None or run_id != run.run:
                    if run is not None:
                        ended.add(run.run)
                        if not run.sealed and kind != RUN_CONTINUED:
                            message = (
                                f"run {run_id} appends after the unsealed run {run.run} without a "
                                "run.continued record (the operator's --continue-unsealed)"
                            )
                            return self.at("audit.inserted", message, index + 1, "/kind")
                    if run_id in ended:
                        message = f"a record of run {run_id}, which already ended"
                        return self.at("audit.inserted", message, index + 1, "/run")
                    run = _Run(run_id, seq, index + 1)
                    self.runs.append(run)
                elif run.sealed:
                    return self.at("audit.inserted", f"a record after the seal of run {run.run}", index + 1)
                if kind == RUN_SEALED:
                    problem = self.check_seal(line, head, run, index + 1)
                    if problem is not None:
                        return problem
                elif kind == RUN_CONTINUED:
                    problem = self.check_continued(line, head, run, index)
                    if problem is not None:
                        return problem
                if index == anchor_index and anchor is not None and digest != anchor.root:
                    message = (
                        f"the published head (size {anchor.size}) names another hash for seq {seq}: "
                        "the log was rewritten"
                    )
                    return self.at("audit.head-mismatch", message, index + 1, "/hash")
                add_leaf(sha256(b"\x00" + line).digest())  # leaf_hash, inlined
                if index == anchor_index and anchor is not None and anchor.note is not None:
                    problem = self.check_anchor_root(anchor.note, index + 1)
                    if problem is not None:
                        return problem
                prev = digest
            else:
                index = len(self.lines)
            return None
        finally:
            self.count = index  # records verified before the first damage
            self.prev = prev

    def check_merkle_root(
        self, checkpoint: Checkpoint, stored: Any, number: int, pointer: str
    ) -> Violation | None:
        """The seal's Merkle root, and the subtree heads it stores (``stored``), are those of the
        records before it; once one seal of the log signed a root, every later one does (a
        chain-head-only seal is an old log's, never a new one's)."""
        if checkpoint.merkle_root is None:
            if not self.merkle_sealed:
                return None
            message = "the seal signs no Merkle root, but an earlier seal of this log did"
            return self.at("audit.seal-mismatch", message, number, pointer)
        self.merkle_sealed = True
        if checkpoint.merkle_root == self.tree.root.hex() and stored == [n.hex() for n in self.tree.nodes]:
            return None
        message = f"the seal's Merkle root or tree is not that of the {self.tree.size} records before it"
        return self.at("audit.seal-mismatch", message, number, pointer)

    def check_anchor_root(self, note: Checkpoint, number: int) -> Violation | None:
        """A published checkpoint with a Merkle root: the root of the log's first ``size`` records."""
        if note.merkle_root is None or note.merkle_root == self.tree.root.hex():
            return None
        message = f"the published checkpoint's Merkle root is not that of the log's first {note.size} records"
        return self.at("audit.head-mismatch", message, number, "/hash")

    def check_seal(self, line: bytes, head: LineHead, run: _Run, number: int) -> Violation | None:
        pointer = "/data/checkpoint"
        try:
            record = parse_record(line)
            data = record["data"]
            checkpoint = parse_checkpoint(data["checkpoint"])
        except (LineError, ValueError, TypeError, KeyError) as exc:
            return self.at(
                "audit.seal-mismatch", f"the seal holds no valid checkpoint: {exc}", number, pointer
            )
        run_records = head.seq - run.first_seq
        expected = (head.seq, head.prev, head.seq, head.prev, run_records)
        found = (
            checkpoint.size,
            checkpoint.chain_head,
            data.get("size"),
            data.get("head"),
            data.get("run_records"),
        )
        if found != expected:
            return self.at(
                "audit.seal-mismatch",
                f"the seal describes another chain than the {head.seq} records before it",
                number,
                pointer,
            )
        # Every other field of the seal is bound to what the checkpoint signs (or says).
        names = [s.name for s in checkpoint.signatures]
        fields = SEAL_FIELDS if checkpoint.merkle_root is None else SEAL_FIELDS | {SEAL_TREE}
        if set(data) != fields or data["signers"] != names:
            return self.at(
                "audit.seal-mismatch",
                "the seal's fields or signer list differ from its checkpoint",
                number,
                "/data",
            )
        if checkpoint.own_extensions != (seal_extension(head.run, record["ts"], run_records),):
            return self.at(
                "audit.seal-mismatch",
                "the seal's run, time or record count differ from what its checkpoint signs",
                number,
                pointer,
            )
        problem = self.check_merkle_root(checkpoint, data.get(SEAL_TREE), number, pointer)
        if problem is not None:
            return problem
        run.signers = tuple(names)
        run.checkpoint = checkpoint.text
        run.sealed = True
        if self.keys:
            verdict = verify_signatures(checkpoint, self.keys)
            run.verified = verdict.verified
            if verdict.bad:
                return self.at(
                    "audit.bad-seal-signature",
                    f"the seal's signature by {verdict.bad[0]!r} does not "
                    "verify: the records it covers were changed after signing",
                    number,
                    pointer,
                )
            if verdict.verified:
                self.seals_verified += 1
            elif not checkpoint.signatures:
                self.untrusted.append(
                    self.at(
                        "audit.unsigned", "the seal is not signed, but a signer was expected", number, pointer
                    )
                )
            else:
                self.untrusted.append(
                    self.at(
                        "audit.unknown-signer",
                        "signed by a different key: the seal's signature ("
                        + ", ".join(verdict.unknown)
                        + ") is by none of the --pub keys given (a wrong --pub, or the log was "
                        "re-signed by another key)",
                        number,
                        pointer,
                    )
                )
        return None

    def check_continued(self, line: bytes, head: LineHead, run: _Run, index: int) -> Violation | None:
        """A ``run.continued`` opens its run, names the record right before it, and follows an
        unsealed run or names the cut (``audit repair``) it continues after."""
        before = self.head_at(index - 1)
        try:
            data = parse_record(line)["data"]
        except LineError:
            data = {}
        previous = self.runs[-2] if len(self.runs) > 1 else None
        expected = None if before is None else {"run": before.run, "seq": before.seq, "hash": before.hash}
        reason = bool(data.get("cut")) or (previous is not None and not previous.sealed)
        if run.first_seq != head.seq or data.get("after") != expected or not reason:
            message = (
                "a run.continued record that does not open its run right after an unsealed run "
                "(or a cut) and name the record before it"
            )
            return self.at("audit.inserted", message, index + 1, "/data/after")
        return None

    # -- classifying a broken link --------------------------------------------------------------

    def heads_after(self, index: int) -> Iterator[tuple[int, LineHead]]:
        for later in range(index + 1, len(self.lines)):
            try:
                yield later, parse_line(self.lines[later])
            except LineError:
                continue

    def head_at(self, index: int) -> LineHead | None:
        try:
            return parse_line(self.lines[index]) if 0 <= index < len(self.lines) else None
        except LineError:
            return None

    def chain_break(self, index: int, head: LineHead) -> Violation:
        """Name the damage at a record whose ``seq`` or ``prev`` does not continue the chain."""
        number, expected = index + 1, index
        if head.seq > expected:
            if not any(h.seq == expected for _, h in self.heads_after(index)):
                missing = f"seq {expected}" if head.seq == expected + 1 else f"seq {expected}..{head.seq - 1}"
                return self.at(
                    "audit.removed", f"record(s) removed before this one: {missing} missing", number, "/seq"
                )
            if self.has_predecessor(head):
                return self.at(
                    "audit.reordered",
                    f"seq {head.seq} comes before seq {expected}: records were moved",
                    number,
                    "/seq",
                )
            return self.at(
                "audit.inserted", f"a record with seq {head.seq} that links to no record", number, "/seq"
            )
        if head.seq < expected:
            if self.lines[head.seq] == self.lines[index]:
                return self.at("audit.inserted", f"a copy of line {head.seq + 1}", number, "/seq")
            taken = self.head_at(head.seq)
            if head.seq == expected - 1 and taken is not None and taken.prev == head.prev:
                # Two records follow the same predecessor: the one the chain continues from is
                # genuine. With nothing after them either could be, so name the earlier one.
                follower = self.head_at(index + 1)
                if follower is None or follower.prev == head.hash:
                    return self.at(
                        "audit.inserted",
                        f"this record and line {number} both claim seq {head.seq} and the same prev; "
                        + ("the chain continues from the latter" if follower else "one was inserted"),
                        index,
                        "/seq",
                    )
                return self.at(
                    "audit.inserted",
                    f"a second record claiming seq {head.seq} (line {index})",
                    number,
                    "/seq",
                )
            return self.at(
                "audit.inserted", f"seq {head.seq} is already taken (line {head.seq + 1})", number, "/seq"
            )
        if any(h.seq == head.seq for _, h in self.heads_after(index)):
            return self.at(
                "audit.inserted",
                f"a forged record claiming seq {head.seq}, which a later record also claims",
                number,
                "/prev",
            )
        before = f"line {index}" if index else "the start of the chain"
        return self.at(
            "audit.edited",
            f"prev does not match the hash of {before}: one of the two was rewritten "
            "(hash recomputed), or records between them were removed and renumbered",
            number,
            "/prev",
        )

    def has_predecessor(self, head: LineHead) -> bool:
        """Whether ``head.prev`` is the hash of a record with ``seq - 1`` somewhere in the file."""
        if head.seq == 0:
            return head.prev == GENESIS
        return any(h.seq == head.seq - 1 and h.hash == head.prev for _, h in self.heads_after(-1))


def verify_log(
    path: Path,
    *,
    public_keys: Sequence[PublicKey] = (),
    expect_head: str | None = None,
    strict: bool = False,
) -> VerifyReport:
    """Verify ``path`` offline and report the first damage.

    ``public_keys``: every seal must then carry a valid signature by one of them. ``expect_head``:
    a checkpoint note (or a bare 64-hex record hash) published elsewhere; the log must contain it.
    ``strict`` also re-encodes every record to check it is exactly canonical JSON (a format check
    for third-party writers; integrity does not depend on it, every byte is hashed either way).
    """
    return verify_read(path, public_keys=public_keys, expect_head=expect_head, strict=strict)[0]


def verify_read(
    path: Path,
    *,
    public_keys: Sequence[PublicKey] = (),
    expect_head: str | None = None,
    strict: bool = False,
) -> tuple[VerifyReport, list[bytes]]:
    """:func:`verify_log`, and the very lines it verified (the file read once, each split at LF,
    the last item what follows the last LF): a check that reads on must read these, not the file
    again, which may have been replaced meanwhile."""
    lines = _read_lines(path)
    return _verify(str(path), lines, public_keys, expect_head, strict), lines


def _verify(
    where: str, lines: list[bytes], public_keys: Sequence[PublicKey], expect_head: str | None, strict: bool
) -> VerifyReport:
    """:func:`verify_log` of lines already read (split at LF; the last item is the torn tail)."""
    anchor = None if expect_head is None else _anchor(expect_head)
    lines = lines[:]
    torn = lines.pop()
    walk = _Walk(where, lines, public_keys, strict)
    problem = walk.check(anchor)
    anchor_signers: tuple[str, ...] = ()
    if problem is None and anchor is not None and anchor.note is not None and public_keys:
        verdict = verify_signatures(anchor.note, public_keys)
        anchor_signers = verdict.verified
        if verdict.bad:
            problem = Violation(
                "audit.bad-seal-signature",
                "the published checkpoint's signature does not verify",
                Location(file="--expect-head"),
            )
    if problem is None and torn:
        problem = walk.at(
            "audit.torn-line",
            "the last line is incomplete (a crash or power loss while writing)",
            len(lines) + 1,
        )
    if problem is None and anchor is not None:
        problem = _anchor_problem(walk, anchor)
    published = None
    if problem is None and anchor is not None:
        published = _published(anchor, anchor_signers, bool(public_keys))
    ends = [r.first_seq for r in walk.runs[1:]] + [walk.count]
    runs = [r.summary(end) for r, end in zip(walk.runs, ends, strict=False)]
    sealed = problem is None and bool(runs) and runs[-1].sealed
    problems = [problem] if problem is not None else []
    problems += walk.untrusted[:1]
    if problem is None and not sealed:
        message = (
            f"unsealed: interrupted after seq {runs[-1].last_seq} (run {runs[-1].run}), or truncated"
            if runs
            else "unsealed: the log has no records"
        )
        problems.append(walk.at(_UNSEALED, message, len(lines) or None))
    return VerifyReport(
        where,
        problem is None,
        walk.count,
        runs,
        sealed,
        problems,
        head=walk.prev if walk.count else None,
        signatures_checked=bool(public_keys),
        seals_verified=walk.seals_verified,
        untrusted=bool(walk.untrusted),
        published=published,
    )


def _published(anchor: _Anchor, signers: tuple[str, ...], keys_given: bool) -> str:
    """What the check against a published head established, and what it did not."""
    if anchor.note is None:
        return "the published head hash is a record of the log"
    text = f"the published checkpoint (size {anchor.size}) is a prefix of the log"
    if signers:
        return text + ", its signature by " + ", ".join(signers) + " verified"
    if not anchor.note.signatures:
        return text + " (it is unsigned)"
    return text + (" (signed by none of the --pub keys)" if keys_given else " (its signature not checked)")


def _anchor_problem(walk: _Walk, anchor: _Anchor) -> Violation | None:
    if anchor.size is None:
        if anchor.root in {parse_line(line).hash for line in walk.lines}:
            return None
        return walk.at("audit.head-mismatch", "the published head hash is not the hash of any record", None)
    if walk.count < anchor.size:
        return walk.at(
            "audit.truncated",
            f"the published head covers {anchor.size} records, the log has {walk.count}",
            walk.count or None,
        )
    if anchor.size == 0 and anchor.root != GENESIS:
        return walk.at("audit.head-mismatch", "an empty published head names a hash", None)
    return None


def _read_lines(path: Path) -> list[bytes]:
    """The file split at LF; the last item is what follows the last LF (empty unless torn)."""
    try:
        return path.read_bytes().split(b"\n")
    except OSError as exc:
        message = f"cannot read the audit log: {exc.strerror}"
        raise InputError.one("input.read", message, Location(file=str(path))) from None


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every record of ``path``, parsed (for queries). A line that is not a record, torn last line
    included, is an ``AuditError``; integrity is :func:`verify_log`'s job, run it first."""
    return _records(str(path), _read_lines(path))


def _records(where: str, lines: list[bytes]) -> list[dict[str, Any]]:
    lines = lines[:]
    if lines.pop():
        raise AuditError.one(
            "audit.torn-line", "the last line is incomplete", Location(file=where, line=len(lines) + 1)
        )
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(parse_record(line))
        except LineError as exc:
            raise AuditError.one(
                "audit.edited", str(exc), Location(file=where, line=number, pointer=exc.pointer)
            ) from None
    return records


def verified_records(
    path: Path, *, public_keys: Sequence[PublicKey] = (), expect_head: str | None = None
) -> tuple[VerifyReport, list[dict[str, Any]]]:
    """Verify ``path`` first, then read its records: what every reader of a log (``sandrun report``,
    ``sandrun audit show``) goes through. ``AuditError`` (exit 4) for a damaged log, or one whose
    seals are not signed by ``public_keys``; an unsealed last run is the caller's to handle."""
    lines = _read_lines(path)  # once: what was verified is exactly what is read
    report = _verify(str(path), lines, public_keys, expect_head, strict=False)
    if not report.ok or report.untrusted:
        raise AuditError(violations=tuple(p for p in report.problems if p.rule_id != _UNSEALED))
    return report, _records(str(path), lines)


def verification_line(report: VerifyReport, run: RunSummary | None = None) -> str:
    """One line saying exactly what was verified: the chain, the run's seal, its signatures."""
    text = f"audit chain {report.status}: {report.records} records verified"
    if run is not None:
        text += f"; run {run.run} " + (
            "sealed" if run.sealed else "UNSEALED (no seal: not verified as complete)"
        )
        if run.verified_signers:
            text += ", seal signed by " + ", ".join(run.verified_signers)
    return text + checks_clause(report)


def checks_clause(report: VerifyReport) -> str:
    """What was verified beyond the chain: the seal signatures, and the published head if given."""
    return signatures_clause(report) + ("" if report.published is None else f"; {report.published}")


def signatures_clause(report: VerifyReport) -> str:
    """What was verified of the seal signatures, never more than was."""
    if not report.signatures_checked:
        return "; seal signatures not checked (no --pub)"
    if report.ok and report.seals_verified:
        return f"; {report.seals_verified} seal signature(s) verified"
    return ""
