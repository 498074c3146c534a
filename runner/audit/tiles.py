"""The audit log as a C2SP tlog-tiles tree (https://c2sp.org/tlog-tiles): static files that stock
transparency-log tooling serves, fetches and proves from without Sandrun.

A log of ``n`` records (the size of its last checkpoint) becomes:

* ``checkpoint``: that signed note, whose hash line is the RFC 6962 root of the ``n`` records;
* ``tile/<L>/<N>``: level-``L`` tiles of height 8, 256 hashes of 32 bytes each; hash ``i`` of
  tile ``N`` is MTH(D[(256N+i)*256**L : (256N+i+1)*256**L]), so level 0 holds the leaf hashes;
  the rightmost tile of a level is partial, ``tile/<L>/<N>.p/<W>`` with ``W = (n >> 8L) % 256``;
* ``tile/entries/<N>[.p/<W>]``: the records themselves (each its line of ``audit.jsonl``, the
  Merkle leaf), each prefixed by its length as a big-endian uint16.

``N`` is written in 3-digit path elements, all but the last prefixed ``x`` (1234067 ->
``x001/x234/067``). Full tiles never change; a later export of the longer log adds files (new
tiles, wider partial ones) and replaces ``checkpoint`` last, after every tile it needs exists.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from runner.audit.checkpoint import Checkpoint, parse_checkpoint
from runner.audit.merkle import MerkleTree, leaf_hash
from runner.errors import AuditError, InputError, Location
from runner.fileio import fsync_dir, write_atomic

__all__ = ["TILE_HEIGHT", "TILE_WIDTH", "TilesExport", "index_path", "tile_files", "export_tiles"]

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT
_MAX_ENTRY = 0xFFFF  # the uint16 length prefix of an entry bundle


@dataclass(frozen=True, slots=True)
class TilesExport:
    """What an export did: the tree size, the files written and those already there (identical)."""

    size: int
    written: int
    kept: int


def index_path(index: int) -> str:
    """Tile index ``N`` as tlog-tiles path elements: 1234067 -> ``x001/x234/067``."""
    groups = [f"{index % 1000:03d}"]
    index //= 1000
    while index:
        groups.insert(0, f"x{index % 1000:03d}")
        index //= 1000
    return "/".join(groups)


def _tile_name(kind: str, index: int, width: int) -> str:
    partial = f".p/{width}" if width < TILE_WIDTH else ""
    return f"tile/{kind}/{index_path(index)}{partial}"


def tile_files(entries: Sequence[bytes], checkpoint: Checkpoint) -> dict[str, bytes]:
    """Every file of the export of the tree whose leaves are ``entries``, by relative path.

    ``ValueError`` if ``checkpoint`` is not of exactly that tree (size and Merkle root), or an
    entry is too long for its uint16 length prefix.
    """
    tree = MerkleTree([leaf_hash(entry) for entry in entries])
    size = tree.size
    if checkpoint.size != size or checkpoint.merkle_root != tree.root.hex():
        raise ValueError(f"the checkpoint is not of the tree of these {size} records")
    files: dict[str, bytes] = {}
    for start in range(0, size, TILE_WIDTH):
        bundle = entries[start : start + TILE_WIDTH]
        for number, entry in enumerate(bundle, start):
            if len(entry) > _MAX_ENTRY:
                raise ValueError(f"record {number} is {len(entry)} bytes, over the 65535 of a tile entry")
        name = _tile_name("entries", start // TILE_WIDTH, len(bundle))
        files[name] = b"".join(len(entry).to_bytes(2, "big") + entry for entry in bundle)
    level = 0
    while size >> (TILE_HEIGHT * level):
        hashes = tree.levels[TILE_HEIGHT * level][: size >> (TILE_HEIGHT * level)]  # whole subtrees
        for start in range(0, len(hashes), TILE_WIDTH):
            row = hashes[start : start + TILE_WIDTH]
            files[_tile_name(str(level), start // TILE_WIDTH, len(row))] = b"".join(row)
        level += 1
    files["checkpoint"] = checkpoint.text.encode("utf-8")
    return files


def export_tiles(out: Path, entries: Sequence[bytes], checkpoint: Checkpoint) -> TilesExport:
    """Write the tiles of ``entries`` under ``checkpoint`` into ``out``.

    A missing or empty ``out`` is built in a sibling temporary folder and renamed into place, so it
    is never seen half-written. A non-empty ``out`` must be an earlier export of a prefix of this
    log (``audit.tiles-mismatch``, exit 4, otherwise): files it has must be byte-identical, missing
    ones are added atomically, and ``checkpoint`` is replaced last. Anything else in the way is
    invalid input (exit 2).
    """
    where = Location(file=str(out))
    try:
        files = tile_files(entries, checkpoint)
    except ValueError as exc:
        raise InputError.one("audit.tiles-entry", str(exc), where) from None
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise InputError.one("input.tiles-dir", "the export target is not a folder", where)
    if out.is_dir() and any(out.iterdir()):
        return _extend(out, files, entries)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        for name, data in files.items():
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        tmp.chmod(0o755)
        os.replace(tmp, out)  # an empty folder is replaced whole
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(out.parent)
    return TilesExport(checkpoint.size, len(files), 0)


def _extend(out: Path, files: dict[str, bytes], entries: Sequence[bytes]) -> TilesExport:
    """Bring an earlier export of this log up to ``files`` (see :func:`export_tiles`)."""
    where = Location(file=str(out))
    for folder, dirs, names in os.walk(out):
        for name in dirs + names:
            if os.path.islink(os.path.join(folder, name)):
                message = f"the export folder holds a symbolic link ({name}); refusing to write through it"
                raise InputError.one("input.tiles-dir", message, where)
    try:
        old = parse_checkpoint((out / "checkpoint").read_text(encoding="utf-8"))
    except FileNotFoundError:
        message = "the folder is neither empty nor a tile export (it has no checkpoint)"
        raise InputError.one("input.tiles-dir", message, where) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError.one("input.tiles-dir", f"its checkpoint cannot be read: {exc}", where) from None
    prefix_root = MerkleTree([leaf_hash(e) for e in entries[: old.size]]).root.hex()
    if old.size > len(entries) or old.merkle_root != prefix_root:
        message = f"the folder holds tiles of another log or history (its checkpoint of size {old.size})"
        raise AuditError.one("audit.tiles-mismatch", message, where)
    written = kept = 0
    for name, data in files.items():
        if name == "checkpoint":
            continue
        target = out / name
        if target.is_file():
            if target.read_bytes() != data:
                raise AuditError.one(
                    "audit.tiles-mismatch", f"{name} differs from this log's", Location(file=str(target))
                )
            kept += 1
        else:
            write_atomic(target, data)
            written += 1
    write_atomic(out / "checkpoint", files["checkpoint"])
    return TilesExport(len(entries), written + 1, kept)
