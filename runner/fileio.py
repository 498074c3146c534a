"""Files in and out: writing so that a reader never sees half of one (temp file in the same folder,
then rename), reading an input that may not be what its name says."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

__all__ = ["write_atomic", "fsync_dir", "read_regular"]


def write_atomic(path: Path, data: bytes | bytearray, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically (same-folder temp file, fsync, ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:  # name the file (a full disk, say)
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def fsync_dir(path: Path) -> None:
    """Make a folder's entries durable (a new, renamed or removed file survives a power loss)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_regular(path: Path, limit: int) -> bytes:
    """At most ``limit`` bytes of ``path``, which must be a regular file (symlinks followed).

    An input named on the command line may be a link a repository committed: to ``/dev/zero`` (a
    read that never ends, filling memory), to ``/dev/stdin`` or a FIFO (a read, or even the open,
    that blocks forever). The file is opened without waiting for a writer and refused unless it is
    a regular file; ``OSError`` (naming the file) otherwise.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a FIFO, a device or a folder)", str(path))
        chunks: list[bytes] = []
        size = 0
        while size < limit and (chunk := os.read(fd, min(1 << 20, limit - size))):
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
