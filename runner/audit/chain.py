"""The only writer of ``audit.jsonl``: append under a lock, group-commit fsync, seal.

Durability contract (docs/audit.md, "Crash safety"):

* every record is one ``os.write`` of a whole line, so it reaches the OS (the page cache) before
  :meth:`AuditLog.append` returns: a process that dies, even by SIGKILL, leaves only whole records;
* ``fdatasync`` runs as a group commit on a background thread, at most ``fsync_interval_s`` after a
  record was written or as soon as ``fsync_every`` records are pending, and synchronously at
  :meth:`AuditLog.seal` and :meth:`AuditLog.close`; appenders never wait for the disk;
* a power loss can therefore cost the records of the last interval (and the fsync in flight): the
  log then ends in whole records (an unsealed run) or a torn last line, never a broken chain.

``fcntl.flock`` on ``audit.lock`` serialises writers: a second run on the same folder waits for the
first to close, up to ``lock_timeout_s``, then fails with ``audit.locked``.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from runner.audit.checkpoint import (
    DEFAULT_KEY_NAME,
    ORIGIN_PREFIX,
    Checkpoint,
    parse_checkpoint,
    sign_checkpoint,
    verify_signatures,
)
from runner.audit.merkle import CompactRange, leaf_hash
from runner.audit.query import tool_changes
from runner.audit.record import (
    GENESIS,
    RUN_CONTINUED,
    RUN_SEALED,
    SEAL_TREE,
    TOOL_REGISTERED,
    LineError,
    LineHead,
    check_kind,
    check_run_id,
    encode_checked,
    format_ts,
    parse_line,
    parse_record,
    seal_extension,
)
from runner.errors import AuditError, Location, SandrunError
from runner.fileio import fsync_dir
from runner.signing import PrivateKey, PublicKey

__all__ = ["LOG_NAME", "LOCK_NAME", "AuditLog", "continued_record", "repair_torn_tail"]

LOG_NAME = "audit.jsonl"
LOCK_NAME = "audit.lock"
_TAIL_CHUNK = 64 * 1024
_sync = getattr(os, "fdatasync", os.fsync)


def _lock(lock_path: Path, timeout_s: float) -> int:
    """An exclusive ``flock`` on ``lock_path``, polling until ``timeout_s``; the fd holds it."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as exc:
            if (
                exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
                or time.monotonic() >= deadline
            ):
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise AuditError.one(
                        "audit.locked",
                        f"another sandrun process is writing this audit log (waited {timeout_s:g}s)",
                        Location(file=str(lock_path)),
                    ) from None
                raise
        time.sleep(0.02)


def _read_tail(path: Path) -> tuple[list[bytes], bytes, int]:
    """The last two complete lines (oldest first), the bytes after the last LF, and the file size."""
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        pieces: list[bytes] = []  # read backwards; joined once (prepending each was quadratic:
        newlines = 0  # a 30 MB last line took half a minute to open)
        start = size
        while start > 0 and newlines < 3:
            step = min(_TAIL_CHUNK, start)
            start -= step
            handle.seek(start)
            piece = handle.read(step)
            pieces.append(piece)
            newlines += piece.count(b"\n")
        chunk = b"".join(reversed(pieces))
    if b"\n" not in chunk:  # only possible when the whole file was read
        return [], chunk, size
    complete, _, torn = chunk.rpartition(b"\n")
    lines = complete.split(b"\n")
    if start > 0:
        lines = lines[1:]  # the first piece may be the end of an older line
    return lines[-2:], torn, size


def _tail_state(path: Path) -> tuple[LineHead | None, bytes, int]:
    """Check the end of an existing log; ``AuditError`` if its last records are bad.

    Returns the last record's head, the torn bytes after it (empty unless torn) and the file size.
    """
    lines, torn, size = _read_tail(path)
    where = str(path)
    heads: list[LineHead] = []
    for line in lines:
        try:
            heads.append(parse_line(line))
        except LineError as exc:
            raise AuditError.one(
                "audit.edited",
                f"the log's last records do not verify ({exc}); run `sandrun audit verify {where}`",
                Location(file=where, pointer=exc.pointer),
            ) from None
    if len(heads) == 2 and (heads[1].prev != heads[0].hash or heads[1].seq != heads[0].seq + 1):
        raise AuditError.one(
            "audit.edited",
            f"the log's last two records do not chain; run `sandrun audit verify {where}`",
            Location(file=where, line=heads[1].seq + 1, pointer="/prev"),
        )
    if len(heads) == 1 and heads[0].seq == 0 and heads[0].prev != GENESIS:
        raise AuditError.one(
            "audit.edited",
            "the first record does not start the chain",
            Location(file=where, line=1, pointer="/prev"),
        )
    return (heads[-1] if heads else None), torn, size


def _resume_tree(path: Path, size: int, head: LineHead | None, signer: PublicKey | None) -> CompactRange:
    """The Merkle tree (compact) of every record of the log, so this run's seal can sign its root.

    A log whose last record is a seal resumes from the subtree heads it stores and its own line,
    reading nothing more; any other log (an old one, or one continued after an unsealed run) is
    read once, :func:`_tree_of`. What this run signs extends what the seals signed, never more:
    each seal met on the way must sign the Merkle root of the records before it (the stored heads
    must fold to it), else ``audit.seal-mismatch``. Heads edited and rehashed into the last seal
    would otherwise have this run's key sign the root of whatever history they were made from,
    records the file does not hold, for anyone to prove against
    (``tests/unit/test_audit_chain.py::test_a_run_never_signs_a_root_its_last_seal_does_not``).
    With ``signer`` (the key this run seals with), a signature line of that key on such a seal
    must verify (``audit.bad-seal-signature``): a history rewritten under a re-rooted checkpoint
    is not signed again by the key whose signature it broke.
    """
    if head is None or head.kind != RUN_SEALED:
        return _tree_of(path, size, signer)
    lines, _, _ = _read_tail(path)
    signed = _checked_seal(path, lines[-1], head, None, signer)
    if signed.merkle_root is None:  # an old seal signs the chain head only: read the log
        return _tree_of(path, size, signer)
    try:
        stored = parse_record(lines[-1])["data"][SEAL_TREE]
        tree = CompactRange(head.seq, [bytes.fromhex(h) for h in stored])
    except (LineError, ValueError, TypeError, KeyError) as exc:
        raise _seal_mismatch(path, head, f"its stored tree is not one: {exc}") from None
    _checked_seal(path, lines[-1], head, tree, signer)
    tree.append(leaf_hash(lines[-1]))
    return tree


def _checked_seal(
    path: Path, line: bytes, head: LineHead, tree: CompactRange | None, signer: PublicKey | None
) -> Checkpoint:
    """The checkpoint of the seal ``line`` (``head``, its chain fields), checked to describe the
    chain before it and, given ``tree`` (of the records before it), to sign its Merkle root."""
    try:
        signed = parse_checkpoint(parse_record(line)["data"]["checkpoint"])
    except (LineError, ValueError, TypeError, KeyError) as exc:
        raise _seal_mismatch(path, head, f"it holds no checkpoint: {exc}") from None
    if (signed.size, signed.chain_head) != (head.seq, head.prev):
        raise _seal_mismatch(path, head, "its checkpoint does not describe the chain before it")
    if tree is not None and signed.merkle_root not in (None, tree.root.hex()):
        raise _seal_mismatch(path, head, "its Merkle root is not that of the records before it")
    if signer is not None and verify_signatures(signed, [signer]).bad:
        raise AuditError.one(
            "audit.bad-seal-signature",
            f"the log's seal at seq {head.seq} carries a signature by this run's key that does not "
            f"verify: the records it covers were changed after signing; run `sandrun audit verify {path}`",
            Location(file=str(path), line=head.seq + 1, pointer="/data/checkpoint"),
        )
    return signed


def _seal_mismatch(path: Path, head: LineHead, why: str) -> SandrunError:
    return AuditError.one(
        "audit.seal-mismatch",
        f"the log's seal at seq {head.seq} does not describe the records before it ({why}); "
        f"run `sandrun audit verify {path}`",
        Location(file=str(path), line=head.seq + 1, pointer="/data"),
    )


_SEAL_MARK = b'"kind":"run.sealed"'


def _tree_of(path: Path, size: int, signer: PublicKey | None = None) -> CompactRange:
    """The Merkle tree (compact) of the log's first ``size`` bytes, whole lines: one leaf each;
    one pass of reading and hashing, checking each seal on the way (:func:`_checked_seal`)."""
    tree = CompactRange()
    rest = b""
    with open(path, "rb") as handle:
        while size > 0:
            chunk = handle.read(min(size, 1 << 20))
            if not chunk:
                break
            size -= len(chunk)
            *lines, rest = (rest + chunk).split(b"\n")
            for line in lines:
                if _SEAL_MARK in line:  # rare: parse only lines that may be seals
                    _check_seal_line(path, line, tree, signer)
                tree.append(leaf_hash(line))
    return tree


def _check_seal_line(path: Path, line: bytes, tree: CompactRange, signer: PublicKey | None) -> None:
    """A line that may be a seal: a seal, checked, or another record; a damaged one is refused (a
    seal whose hash was broken must not drop out of the check and let its records be signed)."""
    try:
        head = parse_line(line)
    except LineError as exc:
        raise AuditError.one(
            "audit.edited",
            f"a record of the log does not verify ({exc}); run `sandrun audit verify {path}`",
            Location(file=str(path), line=tree.size + 1, pointer=exc.pointer),
        ) from None
    if head.kind == RUN_SEALED:
        _checked_seal(path, line, head, tree, signer)


_TORN = f"{LOG_NAME}.torn-"  # a cut not yet acknowledged by a run (``sandrun audit repair``)
_CUT = f"{LOG_NAME}.cut-"  # the same side file once a run.continued record named it


def _pending_cuts(out_dir: Path) -> list[Path]:
    return sorted(out_dir.glob(_TORN + "*"))


def continued_record(head: LineHead | None, cuts: list[Path]) -> dict[str, Any]:
    """``run.continued`` data: the record this run appends after (None: the repair emptied the
    log), and the torn tails ``sandrun audit repair`` cut off, under the names they get once
    acknowledged (``audit.jsonl.cut-*``), with their size and digest."""
    return {
        "after": None if head is None else {"run": head.run, "seq": head.seq, "hash": head.hash},
        "cut": [
            {
                "file": _CUT + side.name[len(_TORN) :],
                "bytes": side.stat().st_size,
                "sha256": hashlib.sha256(side.read_bytes()).hexdigest(),
            }
            for side in cuts
        ],
    }


def _first_run(path: Path, fallback: str) -> str:
    """The run id of the log's first record: the default origin names the log, not the sealing run,
    so every checkpoint of one log carries the same origin (a tlog client or witness pins it).
    ``fallback`` when the first line cannot be read (``audit verify`` names that damage)."""
    with path.open("rb") as file:
        line = file.readline(_FIRST_LINE_MAX)
    try:
        run = parse_line(line.rstrip(b"\n")).run
        check_run_id(run)
    except (LineError, ValueError):
        return fallback
    return run


_FIRST_LINE_MAX = 1 << 20


class AuditLog:
    """Appends one run's records to ``DIR/audit.jsonl``, continuing the chain, and seals the run.

    Thread-safe: the executor's workers may call :meth:`append` concurrently. Use as a context
    manager; leaving it without :meth:`seal` closes the log unsealed, which ``verify`` reports.
    """

    def __init__(
        self,
        *,
        path: Path,
        fd: int,
        lock_fd: int,
        run_id: str,
        origin: str,
        head: LineHead | None,
        size: int,
        tree: CompactRange,
        fsync_interval_s: float,
        fsync_every: int,
        clock: Callable[[], int],
    ) -> None:
        self.path = path
        self.run_id = run_id
        self.origin = origin
        self._fd = fd
        self._lock_fd = lock_fd
        self._seq = 0 if head is None else head.seq + 1
        self._prev = GENESIS if head is None else head.hash
        self._first_seq = self._seq
        self._tree = tree  # the Merkle tree of every record so far
        self._end = size  # the file's size after the last whole record: where a failed write is cut
        self._clock = clock
        self._every = max(1, fsync_every)
        self._interval = fsync_interval_s
        self._mutex = threading.Lock()
        self._written = 0
        self._synced = 0
        self._failure: str | None = None
        self._sealed = False
        self._closed = False
        self._wake = threading.Event()
        self._flusher: threading.Thread | None = None
        if fsync_interval_s > 0:
            self._flusher = threading.Thread(target=self._flush_loop, name="sandrun-audit-fsync", daemon=True)
            self._flusher.start()

    @classmethod
    def open(
        cls,
        out_dir: Path,
        *,
        run_id: str,
        fsync_interval_s: float = 0.2,
        fsync_every: int = 256,
        lock_timeout_s: float = 30.0,
        origin: str | None = None,
        clock: Callable[[], int] = time.time_ns,
        continue_unsealed: bool = False,
        signer: PublicKey | None = None,
    ) -> AuditLog:
        """Lock ``out_dir``, check the end of its log and continue the chain from it.

        Refuses (``AuditError``) a log whose last line is torn (``audit.torn-line``; see
        :func:`repair_torn_tail`) or whose last records do not verify: it never appends to a broken
        chain. A log whose last run has no seal (killed, or cut back after a failed write) is
        refused too (``audit.unsealed``), and one that ``repair_torn_tail`` cut back
        (``audit.cut-back``), unless ``continue_unsealed``: the operator looked at it, and the new
        run's first record, ``run.continued``, says what it continues after and what was cut.
        ``fsync_interval_s=0`` syncs every record before ``append`` returns. ``signer``: the public
        key of the key this run will seal with (:func:`_resume_tree`).
        """
        check_run_id(run_id)
        if origin is not None:
            Checkpoint(origin, 0, GENESIS)  # validates the origin before anything is written
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / LOG_NAME
        lock_fd = _lock(out_dir / LOCK_NAME, lock_timeout_s)
        try:
            created = not path.exists()
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                if created:
                    fsync_dir(out_dir)
                head, torn, size = _tail_state(path)
                if torn:
                    line = None if head is None else head.seq + 2
                    raise AuditError.one(
                        "audit.torn-line",
                        "the log ends in an incomplete line (a crash, power loss or full disk while "
                        f"writing); `sandrun audit repair {out_dir}` cuts it off into a side file",
                        Location(file=str(path), line=line),
                    )
                cuts = _pending_cuts(out_dir)
                if head is not None and head.kind != RUN_SEALED and not continue_unsealed:
                    raise AuditError.one(
                        "audit.unsealed",
                        f"the log's last run {head.run} has no seal (it was killed, or a write failed "
                        "and the log was cut back to its last whole record); check it with `sandrun "
                        "audit verify`, then run with --continue-unsealed to append after it",
                        Location(file=str(path), line=head.seq + 1),
                    )
                if cuts and not continue_unsealed:
                    raise AuditError.one(
                        "audit.cut-back",
                        f"`sandrun audit repair` cut this log back ({cuts[0].name}); check it with "
                        "`sandrun audit verify`, then run with --continue-unsealed to append after it",
                        Location(file=str(path), line=None if head is None else head.seq + 1),
                    )
                if head is not None and head.run == run_id:
                    raise AuditError.one(
                        "audit.run-reused",
                        f"run id {run_id} already wrote to this log",
                        Location(file=str(path), line=head.seq + 1, pointer="/run"),
                    )
                tree = _resume_tree(path, size, head, signer)
                origin = origin or ORIGIN_PREFIX + (run_id if head is None else _first_run(path, run_id))
            except BaseException:
                os.close(fd)
                raise
        except BaseException:
            os.close(lock_fd)
            raise
        log = cls(
            path=path,
            fd=fd,
            lock_fd=lock_fd,
            run_id=run_id,
            origin=origin,
            head=head,
            size=size,
            tree=tree,
            fsync_interval_s=fsync_interval_s,
            fsync_every=fsync_every,
            clock=clock,
        )
        if cuts or (head is not None and head.kind != RUN_SEALED):
            try:
                log._append(RUN_CONTINUED, continued_record(head, cuts))
                for side in cuts:  # acknowledged: the next run is not asked again
                    os.replace(side, out_dir / (_CUT + side.name[len(_TORN) :]))
                fsync_dir(out_dir)
            except BaseException:
                log.close()
                raise
        return log

    # -- writing ---------------------------------------------------------------------------------

    def append(self, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        """Write one record (flushed to the OS before returning) and return it, hash included."""
        if kind in (RUN_SEALED, RUN_CONTINUED):
            raise ValueError(f"{kind} records are written by the log itself")
        return self._append(kind, data)

    def _append(self, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        with self._mutex:
            record = self._write(kind, data)
            pending = self._written - self._synced
        if self._flusher is None:
            self._sync()
        elif pending >= self._every:
            self._wake.set()
        return record

    def _write(self, kind: str, data: dict[str, Any], ts: str | None = None) -> dict[str, Any]:
        """Append one whole line or nothing; the caller holds the mutex.

        A failed write (a full disk, an I/O error) is cut back to the last whole record, so the log
        stays a verifiable, unsealed chain, and poisons this log for good: the run ends unsealed.
        """
        if self._closed or self._sealed:
            state = "sealed" if self._sealed else "closed"
            raise AuditError.one(
                "audit.closed", f"run {self.run_id} is already {state}", Location(file=str(self.path))
            )
        if self._failure is not None:
            raise AuditError.one("audit.write-failed", self._failure, Location(file=str(self.path)))
        record, line = encode_checked(  # run checked at open, seq, ts and prev are this log's own
            seq=self._seq,
            ts=ts or format_ts(self._clock()),
            kind=check_kind(kind),
            run=self.run_id,
            data=data,
            prev=self._prev,
        )
        view = memoryview(line)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            self._failure = f"writing the audit log failed ({exc.strerror}); " + self._cut_back()
            raise AuditError.one("audit.write-failed", self._failure, Location(file=str(self.path))) from None
        self._end += len(line)
        self._tree.append(leaf_hash(line[:-1]))
        self._seq += 1
        self._prev = record["hash"]
        self._written += 1
        return record

    def _cut_back(self) -> str:
        """Truncate a partly written line away; say where the log now ends."""
        try:
            os.ftruncate(self._fd, self._end)
        except OSError as exc:
            return f"cutting the partial line back failed too ({exc.strerror}): the last line is torn"
        return f"the run ends unsealed after seq {self._seq - 1}, every record before it whole"

    def _sync(self) -> None:
        """fdatasync if records are pending; a failure is remembered and fails the next append."""
        with self._mutex:
            target = self._written
            if target == self._synced or self._fd < 0:
                return
        try:
            _sync(self._fd)
        except OSError as exc:
            with self._mutex:
                self._failure = f"syncing the audit log failed ({exc.strerror})"
            return
        with self._mutex:
            self._synced = max(self._synced, target)

    def _flush_loop(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._closed:
                return
            self._sync()

    def seal(self, signing_key: PrivateKey | None, key_name: str | None = None) -> Checkpoint:
        """End the run: a ``run.sealed`` record holding the checkpoint over every record before it.

        The checkpoint's tree size is the seal's ``seq``, its root hash the Merkle root of those
        records and its chain-head line the seal's ``prev``; it is signed when ``signing_key`` is
        given. Synced before returning.
        """
        with self._mutex:
            ts = format_ts(self._clock())
            run_records = self._seq - self._first_seq
            extension = seal_extension(self.run_id, ts, run_records)
            merkle_root = self._tree.root.hex()
            checkpoint = Checkpoint.of_tree(self.origin, self._seq, merkle_root, self._prev, (extension,))
            if signing_key is not None:
                checkpoint = sign_checkpoint(checkpoint, signing_key, key_name or DEFAULT_KEY_NAME)
            data = {
                "size": self._seq,
                "head": self._prev,
                "run_records": run_records,
                "checkpoint": checkpoint.text,
                "signers": [s.name for s in checkpoint.signatures],
                SEAL_TREE: [node.hex() for node in self._tree.nodes],
            }
            self._write(RUN_SEALED, data, ts)
            self._sealed = True
        self._sync()
        if self._failure is not None:
            raise AuditError.one("audit.write-failed", self._failure, Location(file=str(self.path)))
        return checkpoint

    def close(self) -> None:
        """Stop the flusher, sync, release the file and the lock. Idempotent."""
        with self._mutex:
            if self._closed:
                return
            self._closed = True
        self._wake.set()
        if self._flusher is not None:
            self._flusher.join()
        self._sync()
        with self._mutex:
            os.close(self._fd)
            self._fd = -1
            os.close(self._lock_fd)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def sealed(self) -> bool:
        return self._sealed

    @property
    def run_records(self) -> int:
        """How many records this run has written so far."""
        with self._mutex:
            return self._seq - self._first_seq

    @property
    def head(self) -> tuple[int, str]:
        """``(records so far, hash of the last one)``: what a checkpoint made now would sign."""
        with self._mutex:
            return self._seq, self._prev

    # -- reading back ----------------------------------------------------------------------------

    def versioned_tools(self, tools: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """``tool.versioned`` data for each tool whose digest or version differs from its latest
        ``tool.registered`` record in an earlier run of this log (see :func:`query.tool_changes`)."""
        earlier: list[dict[str, Any]] = []
        with open(self.path, "rb") as handle:
            for line in handle:
                if b'"kind":"' + TOOL_REGISTERED.encode() + b'"' not in line or not line.endswith(b"\n"):
                    continue
                try:
                    earlier.append(parse_record(line[:-1]))
                except LineError:
                    continue  # a damaged line is verify's business; it cannot vouch for a version
        return tool_changes(earlier, tools, run=self.run_id)


def repair_torn_tail(out_dir: Path, *, lock_timeout_s: float = 30.0) -> Path | None:
    """Cut an incomplete last line off ``out_dir``'s log, keeping its bytes in a side file.

    The explicit, never automatic, repair after a crash or power loss: it takes the writers' lock,
    refuses unless everything before the torn bytes ends in a record that verifies, moves the torn
    bytes to ``audit.jsonl.torn-<UTC time>`` and truncates. Returns the side file, or None if the
    log was not torn. The next run appends only with ``continue_unsealed``; its ``run.continued``
    record names the side file, which it renames ``audit.jsonl.cut-<UTC time>``.
    """
    path = out_dir / LOG_NAME
    lock_fd = _lock(out_dir / LOCK_NAME, lock_timeout_s)
    try:
        _, torn, _ = _tail_state(path)
        if not torn:
            return None
        size = path.stat().st_size
        side = out_dir / f"{_TORN}{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S%fZ}"
        side.write_bytes(torn)
        with open(path, "r+b") as handle:
            handle.truncate(size - len(torn))
            handle.flush()
            os.fsync(handle.fileno())
        fsync_dir(out_dir)
        return side
    finally:
        os.close(lock_fd)
