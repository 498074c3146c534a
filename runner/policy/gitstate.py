"""The git commit a policy file comes from, read from the repository's files without running anything.

Running ``git`` on a folder hands control to that folder's repository: its config can name programs
(``core.fsmonitor``, ``core.pager``, filters, hooks), and a folder that merely *looks* like a bare
repository (``HEAD``, ``config``, ``objects/``, ``refs/`` committed by anyone) is one to git. So the
compiler never starts a program; this module reads the few files it needs itself:

1. find the repository: the nearest ``.git`` (a folder, or a file saying ``gitdir: …``) walking up
   from the policy's folder, on the same filesystem, owned by the user running Sandrun (git's own
   ``safe.directory`` rule). A folder is never taken for a bare repository.
2. resolve ``HEAD`` through loose refs and ``packed-refs`` to a commit id.
3. read the commit, then the trees down the policy's path, from loose objects or pack files
   (``.idx`` version 2, deltas applied), every read bounded in size and depth.
4. compare the tree's blob id with the blob id of the policy file's bytes: different, missing or
   not a plain file means *dirty*. The file is read again here, so the caller passes the sha256 of
   the bytes it compiled: bytes that differ from those (the file was replaced in between, say with
   the committed version after a lenient one was loaded) are *dirty* too, so a commit is recorded
   clean only for the very bytes the policy was compiled from.

Config, hooks, attributes, the index and alternates are never read. Anything unexpected (no
repository, an unborn branch, a reftable repository, a symlink or FIFO where a file should be, a
damaged object) records no commit, or, once the commit is known, a dirty one; it never raises.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["GitState", "git_state", "policy_commit"]

_MAX_SMALL_FILE = 64 << 10  # HEAD, a loose ref, a .git file, commondir
_MAX_PACKED_REFS = 64 << 20
_MAX_OBJECT = 16 << 20  # a commit or a tree; far above any real one
_MAX_POLICY = 1 << 20  # runner.source.MAX_DOCUMENT_BYTES: a larger policy never loaded anyway
_MAX_DELTA_CHAIN = 4096  # git's own pack.depth cap is 4095
_MAX_WORK = 64 << 20  # bytes read, inflated and rebuilt for one policy: a hostile pack costs no more
_MAX_SYMREF_HOPS = 5  # git follows at most 5 symbolic refs as well
_HEX = {20: re.compile(rb"[0-9a-f]{40}"), 32: re.compile(rb"[0-9a-f]{64}")}
_TYPES = {1: b"commit", 2: b"tree", 3: b"blob", 4: b"tag"}
_OFS_DELTA, _REF_DELTA = 6, 7
_IDX_MAGIC = b"\377tOc\x00\x00\x00\x02"


class _Unreadable(Exception):
    """The repository is not one this reader can vouch for; no commit (or a dirty one) is recorded."""


# Every way damaged or hostile repository files can fail a read: never an exception for the caller.
_TROUBLE = (_Unreadable, OSError, ValueError, LookupError, zlib.error, struct.error)


@dataclass(frozen=True, slots=True)
class GitState:
    """HEAD's commit id and whether the file's bytes differ from that commit's."""

    commit: str
    dirty: bool

    def __str__(self) -> str:
        """The form plans record: ``<commit>`` or ``<commit>+dirty``."""
        return self.commit + "+dirty" if self.dirty else self.commit


def policy_commit(path: Path, sha256: str | None = None) -> str | None:
    """``<commit>`` or ``<commit>+dirty`` for the repository holding ``path``, or None.
    ``sha256``: see :func:`git_state`."""
    state = git_state(path, sha256)
    return None if state is None else str(state)


def git_state(path: Path, sha256: str | None = None) -> GitState | None:
    """The state of ``path`` (a resolved file path) in its repository; None when there is none.
    ``sha256`` is that of the bytes the caller used: the file is clean only if it still holds them."""
    try:
        found = _find_repository(path.parent)
        if found is None:
            return None
        top, gitdir = found
        common = _common_dir(gitdir)
        commit = _resolve_head(gitdir, common)
    except _TROUBLE:
        return None
    try:
        matches = _file_matches(_Objects(common / "objects", len(commit) // 2), commit, top, path, sha256)
    except _TROUBLE:
        matches = False  # the commit is known, but not that the file is in it
    return GitState(commit.decode("ascii"), dirty=not matches)


# -- (1) the repository --------------------------------------------------------------------------


def _read(path: Path, limit: int) -> bytes:
    """A regular file's bytes, at most ``limit``; never follows a final symlink, never blocks on a FIFO."""
    with _RegularFile(path) as f:
        if f.size > limit:
            raise _Unreadable(f"{path} is larger than {limit} bytes")
        data = f.pread(f.size + 1, 0)  # one more: a file that changed since it was opened is refused
    if len(data) != f.size:
        raise _Unreadable(f"{path} changed while read")
    return data


def _owned(path: Path) -> bool:
    """Git's ``safe.directory`` rule: a repository must belong to the user reading it."""
    return os.stat(path).st_uid == os.geteuid()


def _find_repository(start: Path) -> tuple[Path, Path] | None:
    """(work tree top, git dir) of the nearest ``.git`` above ``start``, on ``start``'s filesystem."""
    device = os.stat(start).st_dev
    for folder in (start, *start.parents):
        if os.stat(folder).st_dev != device:
            return None  # git stops at a filesystem boundary too
        dot = folder / ".git"
        try:
            mode = os.lstat(dot).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(mode):
            mode = os.stat(dot).st_mode
        if stat.S_ISDIR(mode):
            gitdir = dot
        elif stat.S_ISREG(mode):
            gitdir = _gitdir_file(folder, dot)
        else:
            return None
        if not (_owned(folder) and _owned(gitdir)):
            return None
        return folder, gitdir
    return None


def _gitdir_file(folder: Path, dot: Path) -> Path:
    """The folder a ``.git`` file (worktrees, submodules) points at."""
    text = _read(dot, _MAX_SMALL_FILE)
    if not text.startswith(b"gitdir: "):
        raise _Unreadable("a .git file without gitdir:")
    target = folder / os.fsdecode(text[8:].strip())
    if not target.is_dir():
        raise _Unreadable("gitdir: points at no folder")
    return target


def _common_dir(gitdir: Path) -> Path:
    """Where refs and objects live: a linked worktree's git dir names it in ``commondir``."""
    try:
        text = _read(gitdir / "commondir", _MAX_SMALL_FILE)
    except FileNotFoundError:
        return gitdir
    common = gitdir / os.fsdecode(text.strip())
    if not (common.is_dir() and _owned(common)):
        raise _Unreadable("commondir points at no folder of this user")
    return common


# -- (2) HEAD -------------------------------------------------------------------------------------


def _resolve_head(gitdir: Path, common: Path) -> bytes:
    """HEAD's commit id (lower-case hex), following symbolic refs."""
    value = _read(gitdir / "HEAD", _MAX_SMALL_FILE).strip()
    for _ in range(_MAX_SYMREF_HOPS):
        if not value.startswith(b"ref: "):
            return _object_id(value)
        value = _ref(common, value[5:].strip())
    raise _Unreadable("symbolic refs nest too deeply")


def _object_id(value: bytes) -> bytes:
    if any(pattern.fullmatch(value) for pattern in _HEX.values()):
        return value
    raise _Unreadable("not an object id")


def _ref(common: Path, name: bytes) -> bytes:
    """A ref's value: its loose file, else its ``packed-refs`` line."""
    parts = name.split(b"/")
    if parts[0] != b"refs" or any(not p or p.startswith(b".") or b"\\" in p for p in parts):
        raise _Unreadable("not a ref name this reader follows")
    try:
        return _read(common.joinpath(*map(os.fsdecode, parts)), _MAX_SMALL_FILE).strip()
    except FileNotFoundError:
        pass
    for line in _read(common / "packed-refs", _MAX_PACKED_REFS).splitlines():
        value, _, ref = line.partition(b" ")
        if ref == name and not line.startswith((b"#", b"^")):
            return value
    raise _Unreadable("no such ref")


# -- (3) objects ----------------------------------------------------------------------------------


class _Objects:
    """Reads commits and trees from ``objects/``: loose files, then pack files (``.idx`` v2)."""

    def __init__(self, folder: Path, hash_size: int) -> None:
        self.folder = folder
        self.hash_size = hash_size
        self.hash = hashlib.sha1 if hash_size == 20 else hashlib.sha256
        self.budget = _MAX_WORK

    def spend(self, size: int) -> None:
        """Charge ``size`` bytes of work; a long delta chain of big objects runs out, not the host."""
        self.budget -= size
        if self.budget < 0:
            raise _Unreadable("reading the objects costs more than allowed")

    def read(self, oid: bytes, kind: bytes) -> bytes:
        """The body of object ``oid`` (hex), which must be of ``kind`` and hash to ``oid``."""
        actual, body = self._object(oid)
        if actual != kind:
            raise _Unreadable(f"object is a {actual!r}, not a {kind!r}")
        if self.hash(b"%s %d\0%s" % (kind, len(body), body)).hexdigest().encode() != oid:
            raise _Unreadable("object does not hash to its id")
        return body

    def _object(self, oid: bytes) -> tuple[bytes, bytes]:
        """Kind and body of ``oid``: loose, or packed with its whole delta chain applied.

        A loop, not recursion: a chain of reference deltas (each naming its base by id, possibly in
        another pack) is followed like offset deltas, under the same length cap.
        """
        deltas: list[bytes] = []
        while True:
            found: bytes | tuple[bytes, bytes] | None = self._loose(oid)
            if found is None:
                found = self._walk(*self._locate(oid), deltas)
            if isinstance(found, tuple):
                break
            oid = found
        kind, body = found
        for delta in reversed(deltas):
            body = _apply_delta(body, delta)
            self.spend(len(body))
        return kind, body

    def _loose(self, oid: bytes) -> tuple[bytes, bytes] | None:
        name = oid.decode("ascii")
        try:
            raw = _read(self.folder / name[:2] / name[2:], _MAX_OBJECT)
        except FileNotFoundError:
            return None
        self.spend(len(raw))
        data = _inflate(raw, _MAX_OBJECT + 64)
        self.spend(len(data))
        header, _, body = data.partition(b"\0")
        kind, _, size = header.partition(b" ")
        if not size.isdigit() or int(size) != len(body):
            raise _Unreadable("loose object size does not match")
        return kind, body

    def _locate(self, oid: bytes) -> tuple[Path, int]:
        """The pack holding ``oid`` and its offset there."""
        binary = bytes.fromhex(oid.decode("ascii"))
        try:
            names = sorted(p for p in (self.folder / "pack").iterdir() if p.suffix == ".idx")
        except FileNotFoundError:
            names = []
        for idx in names:
            offset = self._find(idx, binary)
            if offset is not None:
                return idx.with_suffix(".pack"), offset
        raise _Unreadable("object not found")

    def _find(self, idx: Path, binary: bytes) -> int | None:
        """The pack offset of ``binary`` per ``idx``: a binary search between its fan-out bounds."""
        with _RegularFile(idx) as f:
            if f.pread(8, 0) != _IDX_MAGIC:
                raise _Unreadable("not a version 2 pack index")
            first = binary[0]
            low = 0 if first == 0 else f.u32(8 + 4 * (first - 1))
            high, count = f.u32(8 + 4 * first), f.u32(8 + 4 * 255)
            names = 8 + 256 * 4
            if not low <= high <= count:
                raise _Unreadable("bad fan-out")
            while low < high:
                middle = (low + high) // 2
                name = f.pread(self.hash_size, names + middle * self.hash_size)
                if name == binary:
                    offsets = names + count * (self.hash_size + 4)
                    offset = f.u32(offsets + 4 * middle)
                    if offset & 0x80000000:
                        large = offsets + 4 * count + 8 * (offset & 0x7FFFFFFF)
                        offset = struct.unpack(">Q", f.pread(8, large))[0]
                    return offset
                if name < binary:
                    low = middle + 1
                else:
                    high = middle
        return None

    def _walk(self, pack: Path, offset: int, deltas: list[bytes]) -> bytes | tuple[bytes, bytes]:
        """Follow offset deltas from ``offset``, adding each to ``deltas``.

        Returns the base object (kind, body), or the id of the base a reference delta names.
        """
        with _RegularFile(pack) as f:
            while True:
                if len(deltas) >= _MAX_DELTA_CHAIN:
                    raise _Unreadable("delta chain too long")
                head = f.pread(64, offset)
                kind, size, used = _entry_header(head)
                if size > _MAX_OBJECT:
                    raise _Unreadable("object too large")
                if kind == _OFS_DELTA:
                    distance, more = _offset_encoding(head[used:])
                    if not 0 < distance <= offset:
                        raise _Unreadable("bad delta base offset")
                    deltas.append(f.inflate(offset + used + more, size, self.spend))
                    offset -= distance
                elif kind == _REF_DELTA:
                    deltas.append(f.inflate(offset + used + self.hash_size, size, self.spend))
                    return head[used : used + self.hash_size].hex().encode()
                elif kind in _TYPES:
                    return _TYPES[kind], f.inflate(offset + used, size, self.spend)
                else:
                    raise _Unreadable("unknown pack entry type")


class _RegularFile:
    """A file that must be a regular one (never a FIFO, device or final symlink), for positioned reads."""

    def __init__(self, path: Path) -> None:
        # O_NONBLOCK: opening a FIFO returns at once (and is then refused) instead of waiting a writer
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        info = os.fstat(self.fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(self.fd)
            raise _Unreadable(f"{path} is not a regular file")
        self.size = info.st_size

    def __enter__(self) -> _RegularFile:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def pread(self, size: int, offset: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def u32(self, offset: int) -> int:
        return int(struct.unpack(">I", self.pread(4, offset))[0])

    def inflate(self, offset: int, size: int, spend: Callable[[int], None]) -> bytes:
        """Exactly ``size`` bytes inflated from the zlib stream at ``offset``; never more are produced.

        Every byte read and inflated is charged to ``spend`` as it goes.
        """
        inflater = zlib.decompressobj()
        out = bytearray()
        pending = b""
        while not inflater.eof:
            if not pending:
                # a zlib stream is rarely much longer than what it inflates to: read about that much
                pending = self.pread(min(64 << 10, size + 256), offset)
                offset += len(pending)
                spend(len(pending))
                if not pending:
                    raise _Unreadable("truncated pack entry")
            produced = inflater.decompress(pending, size + 1 - len(out))
            spend(len(produced))
            out += produced
            pending = inflater.unconsumed_tail
            if len(out) > size:
                raise _Unreadable("pack entry larger than its header says")
        if len(out) != size:
            raise _Unreadable("pack entry size does not match")
        return bytes(out)


def _inflate(raw: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj()
    data = inflater.decompress(raw, limit + 1)
    if len(data) > limit or not inflater.eof:
        raise _Unreadable("object too large or truncated")
    return data


def _entry_header(head: bytes) -> tuple[int, int, int]:
    """(type, inflated size, header length) of a pack entry."""
    byte = head[0]
    kind, size, shift, used = (byte >> 4) & 7, byte & 15, 4, 1
    while byte & 0x80:
        if used >= 10:
            raise _Unreadable("pack entry header too long")
        byte = head[used]
        size |= (byte & 0x7F) << shift
        shift += 7
        used += 1
    return kind, size, used


def _offset_encoding(data: bytes) -> tuple[int, int]:
    """(distance back to the base, bytes used) of an ``OFS_DELTA`` entry."""
    byte = data[0]
    value, used = byte & 0x7F, 1
    while byte & 0x80:
        if used >= 10:
            raise _Unreadable("delta offset too long")
        byte = data[used]
        value = ((value + 1) << 7) | (byte & 0x7F)
        used += 1
    return value, used


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position
        if shift > 63:
            raise _Unreadable("delta size too long")


def _apply_delta(base: bytes, delta: bytes) -> bytes:
    """Git's delta format: the sizes, then copy-from-base and insert instructions."""
    base_size, position = _varint(delta, 0)
    result_size, position = _varint(delta, position)
    if base_size != len(base) or result_size > _MAX_OBJECT:
        raise _Unreadable("delta does not fit its base")
    out = bytearray()
    while position < len(delta):
        op = delta[position]
        position += 1
        if op & 0x80:
            start = length = 0
            for bit in range(4):
                if op & (1 << bit):
                    start |= delta[position] << (8 * bit)
                    position += 1
            for bit in range(3):
                if op & (1 << (4 + bit)):
                    length |= delta[position] << (8 * bit)
                    position += 1
            length = length or 0x10000
            if start + length > len(base):
                raise _Unreadable("delta copies past its base")
            out += base[start : start + length]
        elif op:
            if position + op > len(delta):
                raise _Unreadable("delta inserts past its end")
            out += delta[position : position + op]
            position += op
        else:
            raise _Unreadable("delta opcode 0")
        if len(out) > result_size:
            raise _Unreadable("delta result too large")
    if len(out) != result_size:
        raise _Unreadable("delta result size does not match")
    return bytes(out)


# -- (4) the file against the commit ---------------------------------------------------------------


def _file_matches(objects: _Objects, commit: bytes, top: Path, path: Path, sha256: str | None) -> bool:
    """Is ``path`` a plain file in ``commit``'s tree whose blob is exactly the file's bytes now,
    and are those the bytes whose ``sha256`` the caller used (when given)?"""
    body = objects.read(commit, b"commit")
    if not body.startswith(b"tree ") or body[5 + objects.hash_size * 2 : 6 + objects.hash_size * 2] != b"\n":
        raise _Unreadable("a commit without a tree")
    oid = body[5 : 5 + objects.hash_size * 2]
    parts = [os.fsencode(p) for p in path.relative_to(top).parts]
    mode = b"40000"
    for part in parts:
        if mode != b"40000":
            return False
        entry = _tree_entry(objects.read(oid, b"tree"), part, objects.hash_size)
        if entry is None:
            return False
        mode, oid = entry
    if mode not in (b"100644", b"100755"):
        return False
    data = _read(path, _MAX_POLICY)
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        return False  # not the bytes that were compiled: the commit does not vouch for those
    return objects.hash(b"blob %d\0%s" % (len(data), data)).hexdigest().encode() == oid


def _tree_entry(tree: bytes, name: bytes, hash_size: int) -> tuple[bytes, bytes] | None:
    """(mode, hex id) of ``name`` in a tree object's entries (``mode SP name NUL id``)."""
    position = 0
    while position < len(tree):
        space = tree.index(b" ", position)
        nul = tree.index(b"\0", space)
        end = nul + 1 + hash_size
        if end > len(tree):
            raise _Unreadable("truncated tree")
        if tree[space + 1 : nul] == name:
            return tree[position:space], tree[nul + 1 : end].hex().encode()
        position = end
    return None
