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
4. a seal's checkpoint describes exactly the chain before it (``audit.seal-mismatch``) and, when
   public keys are given, carries a valid signature by one of them (``audit.bad-seal-signature``,
   ``audit.unknown-signer``, ``audit.unsigned``);
5. with ``expect_head``, the published head is in the log (``audit.head-mismatch``,
   ``audit.truncated``).

A log whose last run has no seal verifies as *unsealed*, not as intact and not as damaged: that is
what a SIGKILL (or a truncation to a record boundary, which only a published head can tell apart)
leaves.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from runner.audit.checkpoint import Checkpoint, parse_checkpoint, verify_signatures
from runner.audit.record import GENESIS, RUN_SEALED, LineError, LineHead, parse_line, parse_record
from runner.canonical import canonical_digest
from runner.errors import EXIT_AUDIT_FAILED, EXIT_OK, AuditError, InputError, Location, Violation
from runner.signing import PublicKey

__all__ = ["RunSummary", "VerifyReport", "verify_log", "read_records"]

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
    ``problems`` holds the first damage found, or ``audit.unsealed`` for an ok-but-unsealed log."""

    path: str
    ok: bool
    records: int
    runs: list[RunSummary]
    sealed: bool
    problems: list[Violation]
    head: str | None = None
    signatures_checked: bool = False

    @property
    def status(self) -> Literal["intact", "unsealed", "damaged"]:
        if not self.ok:
            return "damaged"
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
    return _Anchor(note.root_hash, note.size, note)


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

    def at(self, rule: str, message: str, line: int | None, pointer: str = "") -> Violation:
        return Violation(rule, message, Location(file=self.where, line=line, pointer=pointer))

    def check(self, anchor: _Anchor | None) -> Violation | None:
        # The hot loop: locals only (this runs a few hundred thousand times per second).
        ended: set[str] = set()
        anchor_index = -1 if anchor is None or anchor.size is None else anchor.size - 1
        strict = self.strict
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
                if index == anchor_index and anchor is not None and digest != anchor.root:
                    message = (
                        f"the published head (size {anchor.size}) names another hash for seq {seq}: "
                        "the log was rewritten"
                    )
                    return self.at("audit.head-mismatch", message, index + 1, "/hash")
                prev = digest
            else:
                index = len(self.lines)
            return None
        finally:
            self.count = index  # records verified before the first damage
            self.prev = prev

    def check_seal(self, line: bytes, head: LineHead, run: _Run, number: int) -> Violation | None:
        pointer = "/data/checkpoint"
        try:
            data = parse_record(line)["data"]
            checkpoint = parse_checkpoint(data["checkpoint"])
        except (LineError, ValueError, TypeError, KeyError) as exc:
            return self.at(
                "audit.seal-mismatch", f"the seal holds no valid checkpoint: {exc}", number, pointer
            )
        expected = (head.seq, head.prev, head.seq, head.prev, head.seq - run.first_seq)
        found = (
            checkpoint.size,
            checkpoint.root_hash,
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
        run.signers = tuple(s.name for s in checkpoint.signatures)
        run.checkpoint = checkpoint.text
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
            if not verdict.verified:
                if not checkpoint.signatures:
                    return self.at(
                        "audit.unsigned", "the seal is not signed, but a signer was expected", number, pointer
                    )
                return self.at(
                    "audit.unknown-signer",
                    "the seal is signed by "
                    + ", ".join(verdict.unknown)
                    + ", none of them a given public key",
                    number,
                    pointer,
                )
        run.sealed = True
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
    where = str(path)
    anchor = None if expect_head is None else _anchor(expect_head)
    lines = _read_lines(path)
    torn = lines.pop()
    walk = _Walk(where, lines, public_keys, strict)
    problem = walk.check(anchor)
    if problem is None and anchor is not None and anchor.note is not None and public_keys:
        verdict = verify_signatures(anchor.note, public_keys)
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
    ends = [r.first_seq for r in walk.runs[1:]] + [walk.count]
    runs = [r.summary(end) for r, end in zip(walk.runs, ends, strict=False)]
    sealed = problem is None and bool(runs) and runs[-1].sealed
    problems = [problem] if problem is not None else []
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
    )


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
    where = str(path)
    lines = _read_lines(path)
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
