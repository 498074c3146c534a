"""Compiled-module cache: in memory (LRU) and on disk, so a second run does not recompile.

Entries are keyed by (module sha256, engine configuration, wasmtime version, machine): Wasmtime's
compiled code is only valid for the engine configuration and version that produced it.

Loading compiled code (``Module.deserialize_file``) is *unsafe* on untrusted bytes: Wasmtime maps
them as machine code without validating them. That is why the disk cache

- lives in a folder private to the user (created 0700; the cache is switched off, never used,
  when the folder is a symlink, is owned by someone else or is group/world-accessible);
- writes every entry atomically (temporary file + rename) as two files: ``<name>.cwasm`` (the
  bytes ``Module.serialize()`` produced) and ``<name>.json`` (a sidecar naming the full key, the
  size and a digest of the ``.cwasm`` bytes: sha256 over the sha256 of each 8 MiB chunk);
- before loading, opens the ``.cwasm`` without following symlinks, checks owner, mode, key, size
  and sha256 on that open file, and deserializes the very same inode (``/proc/self/fd/N``), so a
  corrupted, truncated, foreign or swapped entry is recompiled and rewritten, never loaded.

Wasmtime's own cache (``Config.cache``) was not used: it neither checks the integrity of an entry
before deserializing it nor keeps its folder private, and it stores entries compressed, which
makes loading a large module slower than mapping the serialized file directly.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import platform
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import Literal

from wasmtime import Engine, Module, WasmtimeError

from runner.fileio import write_atomic

__all__ = ["CACHE_FORMAT", "Source", "ModuleCache", "default_cache_dir", "check_private_dir"]

CACHE_FORMAT = "sandrun-module-cache/v1"
Source = Literal["compiled", "memory", "disk"]
_MAX_SIDECAR = 4096
_CHUNK = 8 << 20
_PROC_FD = Path("/proc/self/fd")
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/sandrun/modules``, else ``~/.cache/sandrun/modules``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sandrun" / "modules"


def check_private_dir(path: Path) -> str | None:
    """Create ``path`` (0700) if needed; return why it may not hold compiled code, or None."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.lstat()
    except OSError as exc:
        return f"cannot create {path}: {exc.strerror}"
    if not stat.S_ISDIR(info.st_mode):
        return f"{path} is not a directory (or is a symlink)"
    if info.st_uid != os.getuid():
        return f"{path} is not owned by the current user"
    if info.st_mode & 0o077:
        return f"{path} is accessible to group or others (mode {stat.S_IMODE(info.st_mode):o}, need 700)"
    return None


def _owned_private_file(info: os.stat_result) -> bool:
    return stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o022


class ModuleCache:
    """Modules by key: an in-memory LRU in front of an optional private folder on disk.

    ``disk_problem`` says why the disk cache is off (None when it is on): callers may log it.
    """

    def __init__(self, directory: Path | None, *, memory_entries: int = 64) -> None:
        self._memory: OrderedDict[str, Module] = OrderedDict()
        self._memory_entries = max(0, memory_entries)
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._runtime = f"wasmtime-{version('wasmtime')}/{platform.machine()}"
        self.directory = directory
        self.disk_problem = "no cache folder" if directory is None else check_private_dir(directory)

    def key(self, digest: str, engine_tag: str) -> str:
        """The full cache key of a module compiled for one engine configuration."""
        return f"{digest}|{engine_tag}|{self._runtime}"

    def cached(self, key: str) -> Module | None:
        """The module if it is in memory (marks it recently used); never touches the disk."""
        with self._lock:
            module = self._memory.get(key)
            if module is not None:
                self._memory.move_to_end(key)
            return module

    def load(
        self,
        engine: Engine,
        key: str,
        fetch: Callable[[], bytes],
        compile: Callable[[Engine, bytes], Module] = Module,
    ) -> tuple[Module, Source]:
        """The module for ``key``: from memory, else from disk, else ``compile(engine, fetch())``.

        One compilation per key at a time: concurrent callers wait for the first one.
        ``fetch`` reads and verifies the WebAssembly bytes; its errors and ``compile``'s propagate.
        """
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            module = self.cached(key)
            if module is not None:
                return module, "memory"
            module = self._read_disk(engine, key)
            source: Source = "disk"
            if module is None:
                module = compile(engine, fetch())
                source = "compiled"
                self._write_disk(key, module)
            self._remember(key, module)
            return module, source

    def _remember(self, key: str, module: Module) -> None:
        with self._lock:
            self._memory[key] = module
            self._memory.move_to_end(key)
            while len(self._memory) > self._memory_entries:
                self._memory.popitem(last=False)

    def _paths(self, key: str) -> tuple[Path, Path]:
        assert self.directory is not None
        name = hashlib.sha256(key.encode()).hexdigest()
        return self.directory / f"{name}.cwasm", self.directory / f"{name}.json"

    def _read_disk(self, engine: Engine, key: str) -> Module | None:
        """The verified entry for ``key``, or None when absent or not trustworthy."""
        if self.disk_problem is not None:
            return None
        artifact, sidecar = self._paths(key)
        try:
            meta = _read_sidecar(sidecar)
            if meta is None or meta.get("format") != CACHE_FORMAT or meta.get("key") != key:
                return None
            fd = os.open(artifact, _OPEN_FLAGS)
        except OSError:
            return None
        try:
            info = os.fstat(fd)
            if not _owned_private_file(info) or not info.st_size or info.st_size != meta.get("size"):
                return None
            if _fd_digest(fd, info.st_size) != meta.get("sha256"):
                return None
            source = _PROC_FD / str(fd) if _PROC_FD.is_dir() else artifact
            return Module.deserialize_file(engine, str(source))
        except (OSError, WasmtimeError):
            return None
        finally:
            os.close(fd)

    def _write_disk(self, key: str, module: Module) -> None:
        """Store ``module`` best effort: a cache that cannot be written only costs time."""
        if self.disk_problem is not None:
            return
        artifact, sidecar = self._paths(key)
        try:
            data = module.serialize()
            with memoryview(data) as view:
                meta = {"format": CACHE_FORMAT, "key": key, "size": len(data), "sha256": _digest(view)}
            write_atomic(artifact, data, mode=0o600)
            write_atomic(sidecar, json.dumps(meta, sort_keys=True).encode(), mode=0o600)
        except (OSError, WasmtimeError):
            return


def _digest(data: memoryview) -> str:
    """sha256 over the sha256 of each 8 MiB chunk, the chunks hashed in parallel.

    hashlib releases the GIL on large buffers, so a large artifact verifies about cores-times
    faster than with one running hash: loading from the cache must stay much faster than compiling.
    """
    chunks = [data[start : start + _CHUNK] for start in range(0, len(data), _CHUNK)]
    if len(chunks) <= 1:
        parts = [hashlib.sha256(data).digest()]
    else:
        with ThreadPoolExecutor(max_workers=min(len(chunks), os.cpu_count() or 1)) as pool:
            parts = list(pool.map(lambda chunk: hashlib.sha256(chunk).digest(), chunks))
    for chunk in chunks:
        chunk.release()
    return hashlib.sha256(b"".join(parts)).hexdigest()


def _fd_digest(fd: int, size: int) -> str:
    with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as mapped, memoryview(mapped) as view:
        return _digest(view)


def _read_sidecar(path: Path) -> dict[str, object] | None:
    fd = os.open(path, _OPEN_FLAGS)
    with os.fdopen(fd, "rb") as stream:
        if not _owned_private_file(os.fstat(stream.fileno())):
            return None
        raw = stream.read(_MAX_SIDECAR + 1)
    if len(raw) > _MAX_SIDECAR:
        return None
    try:
        meta = json.loads(raw)
    except ValueError:
        return None
    return meta if isinstance(meta, dict) else None
