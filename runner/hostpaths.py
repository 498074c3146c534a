"""Whether two host paths name overlapping folders, however the host spells them.

The runner refuses a ``rw`` mount that overlaps the output folder or the module cache, and any
mount that holds one of its keys. Comparing resolved paths as text misses a folder the host shows
under two names:

- a **bind mount** (a container volume: ``-v $PWD:/w -v $PWD/out:/out`` makes ``/out`` and
  ``/w/out`` one folder); ``/proc/self/mountinfo`` says which part of which filesystem each mount
  shows, so a path is compared by its place *in its filesystem* as well;
- a **case-insensitive** folder (macOS, ext4 or tmpfs ``casefold``): ``OUT`` and ``out`` are one
  folder; the folders are compared by identity (device and inode) along their ancestors as well.

Each test only adds refusals: two paths that overlap by name still overlap.
"""

from __future__ import annotations

import functools
import os
import re
import select
import threading
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Mount", "Place", "fixed_places", "mount_table", "overlaps", "place"]

_MOUNTINFO = "/proc/self/mountinfo"
_ESCAPE = re.compile(rb"\\([0-7]{3})")


Mount = tuple[str, str, str]  # mount point, device (major:minor), folder of its filesystem it shows


@dataclass(frozen=True, slots=True)
class Place:
    """Where a resolved host path is, every way the host can tell: its name, the identity (device,
    inode) of it and of each folder above it, and where its folders lie in their filesystems."""

    path: str
    lineage: tuple[tuple[int, int], ...]
    views: tuple[tuple[str, str], ...]


def place(path: Path, mounts: tuple[Mount, ...]) -> Place:
    """``path``'s :class:`Place` (``mounts``: :func:`mount_table`, read once for many paths)."""
    text = str(path)
    return Place(text, _lineage(text), _views(text, mounts))


@functools.lru_cache(maxsize=16)
def fixed_places(paths: tuple[Path, ...], mounts: tuple[Mount, ...]) -> tuple[Place, ...]:
    """:func:`place` of each of ``paths``, folders and files that stay put during a run (the
    output folder, the cache, the keys), kept while the mount table is the same: a check per job
    then costs only the places of the job's own mounts (~40 µs each)."""
    return tuple(place(path, mounts) for path in paths)


def overlaps(a: Place, b: Place) -> bool:
    """Whether ``a`` and ``b`` are one folder or file, or one lies inside the other."""
    if _nested(a.path, b.path):
        return True
    if (a.lineage and a.lineage[0] in b.lineage) or (b.lineage and b.lineage[0] in a.lineage):
        return True
    return any(
        device_a == device_b and _nested(inside_a, inside_b)
        for device_a, inside_a in a.views
        for device_b, inside_b in b.views
    )


def mount_table() -> tuple[Mount, ...]:
    """Every mount of this process's namespace, in table order (empty without
    ``/proc/self/mountinfo``). Parsed once, then again only when the kernel says the table changed:
    reading it costs ~100 µs, asking whether it changed ~2 µs."""
    return _TABLE.current()


class _WatchedTable:
    """The parsed mount table, re-read only after a change: ``mountinfo`` is pollable, a mount or
    an unmount marks an open descriptor of it with ``POLLPRI`` (proc(5)), and each poll that
    reports it clears it. The mark belongs to the open file, which a forked child shares with its
    parent, so a child opens its own rather than take its parent's changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fd = -1
        self._pid = 0
        self._table: tuple[Mount, ...] = ()

    def current(self) -> tuple[Mount, ...]:
        with self._lock:
            if self._fd < 0 or self._pid != os.getpid():
                self._open()
            elif self._changed():
                self._table = self._read()
            return self._table

    def _open(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # the parent's, inherited: its changes are the parent's to see
            self._fd = -1
        try:
            self._fd = os.open(_MOUNTINFO, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._table = ()
            return
        self._pid = os.getpid()
        self._changed()  # clears the mark the open itself may leave
        self._table = self._read()

    def _changed(self) -> bool:
        watch = select.poll()
        watch.register(self._fd, select.POLLPRI)
        return bool(watch.poll(0))

    def _read(self) -> tuple[Mount, ...]:
        chunks = []
        offset = 0
        while chunk := os.pread(self._fd, 1 << 16, offset):
            chunks.append(chunk)
            offset += len(chunk)
        found = []
        for line in b"".join(chunks).splitlines():
            fields = line.split(b" ")
            if len(fields) >= 5:
                device = fields[2].decode("ascii", "replace")
                found.append((_unescape(fields[4]), device, _unescape(fields[3])))
        return tuple(found)


_TABLE = _WatchedTable()


def _views(path: str, mounts: tuple[Mount, ...]) -> tuple[tuple[str, str], ...]:
    """Where the folders under ``path`` really are, as (device, path inside that filesystem): the
    place of ``path`` itself, by the mount that shows it (the longest mount point above it; of one
    mounted over, the last listed), and the folder each mount below ``path`` shows."""
    best: Mount | None = None
    views = []
    for mount in mounts:
        point, device, shown = mount
        if (point == path or _below(path, point)) and (best is None or len(point) >= len(best[0])):
            best = mount
        elif _below(point, path):
            views.append((device, shown))
    if best is not None:
        point, device, shown = best
        rest = path[len(point) :].lstrip("/")
        views.append((device, os.path.join(shown, rest) if rest else shown))
    return tuple(views)


def _nested(a: str, b: str) -> bool:
    """Absolute normalised paths: equal, or one below the other."""
    return a == b or _below(a, b) or _below(b, a)


def _below(inner: str, outer: str) -> bool:
    return inner.startswith(outer if outer.endswith("/") else outer + "/")


def _lineage(path: str) -> tuple[tuple[int, int], ...]:
    """(device, inode) of ``path`` then of each folder above it; empty when ``path`` is gone."""
    found: list[tuple[int, int]] = []
    each = path
    while True:
        try:
            info = os.stat(each)
        except OSError:
            if each == path:
                return ()
        else:
            found.append((info.st_dev, info.st_ino))
        if each == "/":
            return tuple(found)
        each = os.path.dirname(each)


def _unescape(field: bytes) -> str:
    """A mountinfo path: spaces, tabs, newlines and backslashes are written as octal escapes."""
    return os.fsdecode(_ESCAPE.sub(lambda m: bytes([int(m[1], 8)]), field))
