"""Sealed memfds (runner.sealed): once made, nobody can change their bytes or size."""

from __future__ import annotations

import fcntl
import mmap
import os
from pathlib import Path

import pytest

from runner.sealed import ALL_SEALS, require_sealed, seal_bytes, seal_copy


def test_sealed_bytes_cannot_be_written_resized_or_unsealed() -> None:
    sealed = seal_bytes(b"checked code")
    fd = sealed.fileno()
    assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) & ALL_SEALS == ALL_SEALS
    with pytest.raises(PermissionError):
        os.pwrite(fd, b"X", 0)
    with pytest.raises(PermissionError):
        os.ftruncate(fd, 4)
    with pytest.raises(PermissionError):
        os.ftruncate(fd, 1 << 20)
    with pytest.raises(PermissionError):  # a shared writable mapping is refused too
        mmap.mmap(fd, sealed.size, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    with pytest.raises(PermissionError):  # F_SEAL_SEAL: no seal can be added or lifted
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE)
    # reopened through /proc/self/fd: the same sealed file
    with pytest.raises(PermissionError), open(sealed.path, "r+b") as reopened:
        reopened.write(b"X")
    with sealed.view() as view:
        assert bytes(view) == b"checked code"
    require_sealed(fd)


def test_a_copy_holds_the_bytes_of_the_moment_it_was_made(tmp_path: Path) -> None:
    path = tmp_path / "entry.cwasm"
    path.write_bytes(b"A" * 5000)
    fd = os.open(path, os.O_RDONLY)
    try:
        sealed = seal_copy(fd, 5000)
        path.write_bytes(b"B" * 5000)  # rewritten in place afterwards
        with sealed.view() as view:
            assert bytes(view) == b"A" * 5000
        with pytest.raises(OSError, match="shrank"):
            seal_copy(fd, 6000)  # the file holds fewer bytes than it should
    finally:
        os.close(fd)


def test_only_a_fully_sealed_memfd_passes(tmp_path: Path) -> None:
    path = tmp_path / "plain"
    path.write_bytes(b"code")
    plain = os.open(path, os.O_RDONLY)
    partly = os.memfd_create("partly", os.MFD_ALLOW_SEALING)
    fcntl.fcntl(partly, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)  # still writable
    unsealed = os.memfd_create("unsealed")
    try:
        for fd in (plain, partly, unsealed):
            with pytest.raises(OSError):
                require_sealed(fd)
    finally:
        for fd in (plain, partly, unsealed):
            os.close(fd)
