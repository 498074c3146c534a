"""Compiled-module cache: in memory (LRU) and on disk, so a second run does not recompile.

Entries are keyed by (module sha256, engine configuration, wasmtime version, machine): Wasmtime's
compiled code is only valid for the engine configuration and version that produced it. Components
(WASI preview 2) are cached the same way, with the word ``component`` in their key: their
serialized code loads only as a ``Component``.

Loading compiled code (``Module.deserialize_file``) is *unsafe* on untrusted bytes: Wasmtime maps
them as machine code without validating them. That is why the disk cache

- lives in a folder private to the user (created 0700; the cache is switched off, never used,
  when the folder is a symlink, is owned by someone else or is group/world-accessible);
- authenticates every entry with a per-user secret kept *outside* the cache folder
  (:mod:`runner.cache_secret`): a folder restored by CI or shared between users can hold a
  consistent ``.cwasm`` + sidecar pair that someone else wrote, and only a MAC with a key they do
  not have tells it apart;
- writes every entry atomically (temporary file + rename) as two files: ``<name>.cwasm`` (the
  bytes ``Module.serialize()`` produced) and ``<name>.json`` (a sidecar naming the full key, the
  size, the secret's id and the MAC, BLAKE3 in its keyed mode under the secret, over a header
  holding the format, the secret's id, the full key and the size, then the ``.cwasm`` bytes);
- before loading, opens the ``.cwasm`` without following symlinks, checks owner, mode, key and
  size on that open file, copies it once into a sealed memfd (:mod:`runner.sealed`: nobody can
  change those bytes afterwards), checks the MAC over the sealed copy and deserializes that copy
  (``/proc/self/fd/N``), so a corrupted, truncated, foreign or swapped entry, or one rewritten in
  place after the check, is recompiled and rewritten (``recompiled``), never loaded; the sealed
  copy is what a worker process is handed (:meth:`ModuleCache.sealed`);
- keeps its total size under ``max_disk_bytes`` (``$SANDRUN_CACHE_MAX_BYTES``, default 4 GiB):
  after each write the least recently used entries (by the ``.cwasm`` modification time, which a
  hit refreshes) are deleted until the folder fits.

Wasmtime's own cache (``Config.cache``) was not used: it neither checks the integrity of an entry
before deserializing it nor keeps its folder private, and it stores entries compressed, which
makes loading a large module slower than mapping the serialized file directly.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import json
import os
import platform
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeAlias

import wasmtime
from wasmtime import Engine, Module, WasmtimeError

from runner.cache_secret import CacheSecret, CacheSecretError, default_secret_path, load_secret
from runner.fileio import write_atomic
from runner.sealed import Sealed, seal_bytes, seal_copy
from runner.units import UnitError, parse_size
from runner.wasmfile import WasmKind

if TYPE_CHECKING:
    from wasmtime.component import Component

__all__ = [
    "CACHE_FORMAT",
    "MAX_BYTES_ENV",
    "Code",
    "Source",
    "ModuleCache",
    "default_cache_dir",
    "check_private_dir",
    "wasmtime_version",
    "deserialize_file",
]

CACHE_FORMAT = "sandrun-module-cache/v3"
"""v3: the MAC is keyed BLAKE3 (v2's HMAC-SHA256 entries are recompiled once)."""
MAX_BYTES_ENV = "SANDRUN_CACHE_MAX_BYTES"
_DEFAULT_MAX_BYTES = 4 << 30
#: ``recompiled``: a disk entry was there but failed a check (foreign, damaged, swapped), so the
#: module was compiled again; the audit log's ``tool.deployed`` record says so.
Source = Literal["compiled", "recompiled", "memory", "disk"]
_MAX_SIDECAR = 4096
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Compiled code as Wasmtime holds it: a core module or a component.
Code: TypeAlias = "Module | Component"  # a string: wasmtime.component loads only for components


def deserialize_file(engine: Engine, path: str, kind: WasmKind) -> Code:
    """Compiled code mapped from ``path`` (a sealed memfd's ``/proc/self/fd/N``: unchecked machine
    code, so only bytes whose MAC was checked, or that a trusted process sealed). Components'
    loader is imported for a component only: ~10 ms of every start."""
    if kind == "component":
        from wasmtime.component import Component

        return Component.deserialize_file(engine, path)
    return Module.deserialize_file(engine, path)


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


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = path.lstat()
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _owned_private_file(info: os.stat_result) -> bool:
    return stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o022


class ModuleCache:
    """Modules by key: an in-memory LRU in front of an optional private folder on disk.

    ``disk_problem`` says why the disk cache is off (None when it is on): callers may log it.
    ``secret_path`` is where the per-user secret lives (default :func:`default_secret_path`; the
    resolved path is kept as ``secret_path``: no job may mount the folder holding it);
    ``max_disk_bytes`` caps the folder (default ``$SANDRUN_CACHE_MAX_BYTES``, else 4 GiB).
    """

    def __init__(
        self,
        directory: Path | None,
        *,
        memory_entries: int = 64,
        secret_path: Path | None = None,
        max_disk_bytes: int | None = None,
    ) -> None:
        self._memory: OrderedDict[str, Code] = OrderedDict()
        self._sealed: dict[str, Sealed] = {}  # serialized code of memory entries, for workers
        self._memory_entries = max(0, memory_entries)
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._runtime = f"wasmtime-{wasmtime_version()}/{platform.machine()}"
        self.directory = directory
        self.disk_problem = "no cache folder" if directory is None else check_private_dir(directory)
        self._identity = None if self.disk_problem is not None or directory is None else _identity(directory)
        self.max_disk_bytes = _DEFAULT_MAX_BYTES if max_disk_bytes is None else max_disk_bytes
        self._secret: CacheSecret | None = None
        self.secret_path = (secret_path or default_secret_path()).resolve()
        if self.disk_problem is None and directory is not None:
            try:
                if max_disk_bytes is None:
                    self.max_disk_bytes = _max_bytes_from_env()
                self._secret = load_secret(_outside(secret_path or default_secret_path(), directory))
            except (CacheSecretError, ValueError) as exc:
                self.disk_problem = str(exc)

    def key(self, digest: str, engine_tag: str, kind: WasmKind = "module") -> str:
        """The full cache key of a module (or component) compiled for one engine configuration."""
        if kind == "component":
            return f"{digest}|component|{engine_tag}|{self._runtime}"
        return f"{digest}|{engine_tag}|{self._runtime}"

    def cached(self, key: str) -> Code | None:
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
        compile: Callable[[Engine, bytes], Code] = Module,
        kind: WasmKind = "module",
    ) -> tuple[Code, Source]:
        """The module for ``key``: from memory, else from disk, else ``compile(engine, fetch())``.
        ``kind`` says how a disk entry is loaded (the key of a component says ``component``).

        One compilation per key at a time: concurrent callers wait for the first one.
        ``fetch`` reads and verifies the WebAssembly bytes; its errors and ``compile``'s propagate.
        The source is ``recompiled`` when a disk entry existed but was refused.
        """
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            module = self.cached(key)
            if module is not None:
                return module, "memory"
            module, sealed, present = self._read_disk(engine, key, kind)
            source: Source = "disk"
            if module is None:
                module = compile(engine, fetch())
                source = "recompiled" if present else "compiled"
                self._write_disk(key, module)
            self._remember(key, module, sealed)
            return module, source

    def sealed(self, key: str, module: Code) -> Sealed:
        """``module``'s serialized code (``key``'s) in a sealed memfd: the very copy whose MAC was
        checked when it came from disk, else serialized now and kept with the memory entry."""
        with self._lock:
            sealed = self._sealed.get(key)
        if sealed is None:
            sealed = seal_bytes(module.serialize())
            with self._lock:
                if key in self._memory:
                    sealed = self._sealed.setdefault(key, sealed)
        return sealed

    def _remember(self, key: str, module: Code, sealed: Sealed | None) -> None:
        with self._lock:
            self._memory[key] = module
            self._memory.move_to_end(key)
            if sealed is not None:
                self._sealed[key] = sealed
            while len(self._memory) > self._memory_entries:
                evicted, _ = self._memory.popitem(last=False)
                self._sealed.pop(evicted, None)  # closed once no batch holds it any more

    def _paths(self, key: str) -> tuple[Path, Path]:
        assert self.directory is not None
        name = hashlib.sha256(key.encode()).hexdigest()
        return self.directory / f"{name}.cwasm", self.directory / f"{name}.json"

    def _read_disk(self, engine: Engine, key: str, kind: WasmKind) -> tuple[Code | None, Sealed | None, bool]:
        """The authenticated entry for ``key`` or None, the sealed copy it was loaded from, and
        whether any entry was there at all.

        Checks, in order: (1) the sidecar is a private file naming this format, key and secret;
        (2) the ``.cwasm`` opened without following symlinks is a private, non-empty file of the
        sidecar's size, and no larger than the folder's cap (it is copied into memory before its
        MAC can be checked; a larger one was never written by this cache); (3) its bytes, copied
        into a sealed memfd, have the sidecar's MAC; (4) that sealed copy, which nobody can change
        any more, is what is loaded.
        """
        if self.disk_problem is not None or self._secret is None:
            return None, None, False
        artifact, sidecar = self._paths(key)
        present = os.path.lexists(artifact) or os.path.lexists(sidecar)
        try:
            meta = _read_sidecar(sidecar)  # (1)
            if meta is None or meta.get("format") != CACHE_FORMAT or meta.get("key") != key:
                return None, None, present
            if meta.get("key_id") != self._secret.key_id or not isinstance(meta.get("mac"), str):
                return None, None, present
            fd = os.open(artifact, _OPEN_FLAGS)
        except OSError:
            return None, None, present
        try:
            info = os.fstat(fd)  # (2)
            if not _owned_private_file(info) or not info.st_size or info.st_size != meta.get("size"):
                return None, None, True
            if info.st_size > self.max_disk_bytes:  # never written: a sparse giant would fill memory
                return None, None, True
            sealed = seal_copy(fd, info.st_size)  # (3)
            with sealed.view() as view:
                mac = _entry_mac(self._secret, key, sealed.size, [view])
            if not hmac.compare_digest(mac, str(meta["mac"])):
                return None, None, True
            module = deserialize_file(engine, sealed.path, kind)  # (4)
            os.utime(fd)  # recently used: the disk LRU evicts by modification time
            return module, sealed, True
        except (OSError, WasmtimeError):
            return None, None, True
        finally:
            os.close(fd)

    def _write_disk(self, key: str, module: Code) -> None:
        """Store ``module`` best effort: a cache that cannot be written only costs time."""
        if self.disk_problem is not None or self._secret is None:
            return
        artifact, sidecar = self._paths(key)
        if _identity(artifact.parent) != self._identity:
            return  # not the folder checked when the cache opened any more (see _evict)
        try:
            data = module.serialize()
            if len(data) > self.max_disk_bytes:
                return
            with memoryview(data) as view:
                mac = _entry_mac(self._secret, key, len(data), [view])
            meta = {
                "format": CACHE_FORMAT,
                "key": key,
                "key_id": self._secret.key_id,
                "size": len(data),
                "mac": mac,
            }
            write_atomic(artifact, data, mode=0o600)
            write_atomic(sidecar, json.dumps(meta, sort_keys=True).encode(), mode=0o600)
            self._evict()
        except (OSError, WasmtimeError):
            return

    def _evict(self) -> None:
        """Delete least recently used entries until the folder holds at most ``max_disk_bytes``.

        Deletes only in the very folder checked when the cache was opened: through a descriptor
        of it, refused when the path now leads elsewhere (a folder above it renamed and replaced
        by someone who may write there, with ``modules`` a link to the user's files)."""
        assert self.directory is not None
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            info = os.fstat(fd)
            if (info.st_dev, info.st_ino) != self._identity:
                return
            entries = []
            for entry in os.scandir(fd):
                if entry.name.endswith(".cwasm"):
                    try:
                        found = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue  # removed meanwhile by another runner
                    entries.append((found.st_mtime_ns, found.st_size, entry.name))
            total = sum(size for _, size, _ in entries)
            for _, size, name in sorted(entries):
                if total <= self.max_disk_bytes:
                    break
                for victim in (name.removesuffix(".cwasm") + ".json", name):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(victim, dir_fd=fd)
                total -= size
        finally:
            os.close(fd)


@functools.cache
def wasmtime_version() -> str:
    """wasmtime-py's version (part of every key), read from the one ``wasmtime-VERSION.dist-info``
    folder beside the imported package, as a wheel installs it: importing ``importlib.metadata``
    would cost ~25 ms of every start. Any other layout asks ``importlib.metadata``."""
    found = list(Path(wasmtime.__file__).parent.parent.glob("wasmtime-*.dist-info"))
    if len(found) == 1:
        return found[0].name.removeprefix("wasmtime-").removesuffix(".dist-info")
    from importlib.metadata import version

    return version("wasmtime")


def _outside(secret_path: Path, directory: Path) -> Path:
    """The secret's path, refused when it lies in the cache folder (whoever fills one has the other)."""
    if secret_path.resolve().is_relative_to(directory.resolve()):
        raise CacheSecretError(f"the cache key {secret_path} must not be inside the cache folder {directory}")
    return secret_path


def _max_bytes_from_env() -> int:
    text = os.environ.get(MAX_BYTES_ENV)
    if not text:
        return _DEFAULT_MAX_BYTES
    try:
        return parse_size(text)
    except UnitError as exc:
        raise ValueError(f"${MAX_BYTES_ENV}={text!r} is not a size: {exc}") from None


#: From this size on, an entry's MAC is computed on every core. Below it one thread does it: the
#: thread pool would cost more than it saves, and a small module (every ``sandrun exec`` of a
#: tool) leaves the process without threads, so its worker can be forked directly.
_MAC_THREADS_FROM = 8 << 20


def _entry_mac(secret: CacheSecret, key: str, size: int, blocks: Iterable[memoryview]) -> str:
    """A MAC under the user's secret over a header (format, secret id, key, size), then the bytes.

    BLAKE3 in its keyed mode (a PRF keyed by the 32-byte secret, made to be used as a MAC): it
    reads a large entry about twice as fast as HMAC-SHA256 with SHA-NI (66 MB: ~17 ms, not ~45),
    and on every core for an entry of :data:`_MAC_THREADS_FROM` bytes or more (~9.5 ms on two:
    BLAKE3 is a tree, so the MAC is the same however many threads compute it). Checking it is
    most of a large module's warm start (bench/bench_executor.py (d)). The header is JSON, so no
    two different (key, size) pairs share one header.
    """
    from blake3 import blake3  # a compiled extension; only a disk cache entry needs it

    header = json.dumps([CACHE_FORMAT, secret.key_id, key, size]).encode() + b"\n"
    threads = blake3.AUTO if size >= _MAC_THREADS_FROM else 1
    mac = blake3(header, key=secret.key, max_threads=threads)
    for block in blocks:
        mac.update(block)
    return mac.hexdigest()


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
