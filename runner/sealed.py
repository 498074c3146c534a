"""Sealed in-memory files: compiled code nobody can change once it was checked.

Loading compiled code maps it as machine code unchecked, so what a process loads must be exactly
what was authenticated. A file in the cache folder can be rewritten in place by whoever may write
there, between the check and a later load (by this process or by a worker it hands the code to).
Copying the bytes once into a ``memfd`` and sealing it (``F_SEAL_WRITE | F_SEAL_GROW |
F_SEAL_SHRINK | F_SEAL_SEAL``) *before* checking them closes that window: after the seals no
process, this one included, can change the file's bytes or size, so checking it once is checking
it for every process that gets the descriptor (a worker, over ``SCM_RIGHTS``). Wasmtime then maps
it directly (``Module.deserialize_file('/proc/self/fd/N')``): no copy into each worker, no pipe.
"""

from __future__ import annotations

import fcntl
import mmap
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["ALL_SEALS", "Sealed", "fd_path", "require_sealed", "seal_bytes", "seal_copy"]

ALL_SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL


class Sealed:
    """One sealed memfd, closed when the last reference goes (an entry of the module cache, a
    batch's worker pool): its descriptor is valid as long as the object is referenced."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self.size = size

    def fileno(self) -> int:
        return self._fd

    @property
    def path(self) -> str:
        """The path Wasmtime opens to map these very bytes (this process's descriptor)."""
        return fd_path(self._fd)

    @contextmanager
    def view(self) -> Iterator[memoryview]:
        """The bytes, mapped read-only (no copy)."""
        with mmap.mmap(self._fd, self.size, prot=mmap.PROT_READ) as mapped, memoryview(mapped) as view:
            yield view

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()


def fd_path(fd: int) -> str:
    """``/proc/self/fd/N``: opening it opens the descriptor's own file, never a name in a folder."""
    return str(Path("/proc/self/fd") / str(fd))


def seal_copy(source: int, size: int) -> Sealed:
    """The first ``size`` bytes of the open file ``source``, copied once by the kernel
    (``sendfile``) into a new sealed memfd. OSError when the file holds fewer bytes."""
    fd = os.memfd_create("sandrun-code", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        offset = 0
        while offset < size:
            sent = os.sendfile(fd, source, offset, size - offset)
            if sent == 0:
                raise OSError("the file shrank while it was copied")
            offset += sent
        return _sealed(fd, size)
    except BaseException:
        os.close(fd)
        raise


def seal_bytes(data: bytes | bytearray) -> Sealed:
    """``data`` in a new sealed memfd."""
    fd = os.memfd_create("sandrun-code", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        with memoryview(data) as view:
            offset = 0
            while offset < len(view):
                offset += os.write(fd, view[offset:])
        return _sealed(fd, len(data))
    except BaseException:
        os.close(fd)
        raise


def _sealed(fd: int, size: int) -> Sealed:
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, ALL_SEALS)
    if os.fstat(fd).st_size != size:  # sealed now: this size is final
        raise OSError("the sealed file does not have the expected size")
    return Sealed(fd, size)


def require_sealed(fd: int) -> None:
    """Raise OSError unless ``fd`` is a memfd carrying every seal (what a worker checks before it
    maps code it was handed: a plain file could still change under it)."""
    seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)  # EINVAL for anything but a memfd
    if seals & ALL_SEALS != ALL_SEALS:
        raise OSError(f"the code handed over is not sealed (seals {seals:#x})")
