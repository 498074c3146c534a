"""One job in one sandbox: a fresh Wasmtime ``Store`` per job, everything the guest does becomes data.

A :class:`Runtime` owns one ``Engine`` per engine configuration (:class:`EngineKey`: fuel metering
on/off and ``max_wasm_stack``), one shared ``Linker`` per engine, one epoch ticker thread per engine
and the compiled-module cache (:mod:`runner.cache`). :meth:`Runtime.run` builds the job's WASI
preview-1 context from the plan alone (argv, env, stdin, mounts: nothing is inherited from the host),
applies the limits and turns whatever the guest does into an :class:`~runner.results.Outcome`.
A component (``job.kind == "component"``, WASI preview 2) gets the same context, limits and
ticker; :mod:`runner.component` links and starts it (docs/components.md).

How each limit is enforced (docs/sandbox.md has the user-facing version):

- ``fuel``: ``Store.set_fuel`` on an engine with fuel metering, used only by jobs that set a fuel
  limit (metering slows every instruction).
- ``timeout`` and ``cancel``: epoch interruption. The engine's ticker increments the epoch every
  ``tick_ms``; every few ticks the store's epoch-deadline callback compares the wall clock with the
  job's deadline and looks at its cancel event, and stops the guest (``timeout``, or ``timeout`` /
  ``cancelled``). Epochs only interrupt WASM code, so the one WASI call that blocks
  (``poll_oneoff``: sleeps) is shadowed by a host function that sleeps no longer than the job's
  deadline or its cancellation; once back in WASM, the callback stops the guest.
- ``memory``: ``Store.set_limits``; ``memory.grow`` beyond the cap returns -1 (Wasmtime's C API
  cannot make it trap), so a guest that then exits non-zero or traps with its memory within 1/16
  of the cap (at least 1 MiB) is classified ``memory``; a module whose initial memory exceeds the
  cap fails to instantiate, also ``memory``.
- ``stack``: ``Config.max_wasm_stack`` (one engine per distinct value).
- ``output``: stdout and stderr go to memfds; the ticker cuts each back to the cap every tick (the
  guest's later writes land past the end, as holes that take no memory), so memory stays bounded
  by the cap plus what a guest writes in one tick; bytes beyond the cap are counted as dropped.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from wasmtime import (
    Caller,
    Engine,
    ExitTrap,
    Func,
    FuncType,
    Instance,
    Linker,
    Memory,
    MemoryType,
    Module,
    Store,
    Trap,
    TrapCode,
    ValType,
    WasiConfig,
    WasmtimeError,
)

from runner import capi, catalog
from runner.cache import Code, ModuleCache, Source, default_cache_dir, deserialize_file
from runner.canonical import sha256_hex
from runner.compiling import CompileBounds, CompileFailed, compile_bounded, new_config
from runner.egress import abi as http_abi
from runner.errors import InputError, Location, PolicyDenied, SandrunError
from runner.features import enabled
from runner.fileio import read_regular
from runner.hermetic import VirtualWorld
from runner.hostpaths import fixed_places, mount_table, overlaps, place
from runner.plan import JobSpec, Limits, ModuleLimits, is_invoke_call, work_dir_mount
from runner.results import Outcome, TrapKind
from runner.sealed import Sealed, fd_path, require_sealed
from runner.virtual_wasi import define_shadows, events, subscriptions
from runner.wasmfile import Signature, WasmKind, export_signature, not_wasm_reason, wasm_kind

if TYPE_CHECKING:
    from wasmtime import component as wasm_component

    from runner.egress.client import Egress
    from runner.egress.transport import Seam
    from runner.invoke import ExportTypes, InvokeError, InvokeResult

__all__ = [
    "EngineKey",
    "ModuleKey",
    "Runtime",
    "module_key",
    "check_mounts",
    "required_thread_stack",
    "table_caps",
]

_WASM_PAGE = 65536
_MEMORY_SLACK = 1 << 20
_MESSAGE_MAX = 200
_PROC_FD = "/proc/self/fd"
_HAVE_PROC_FD = os.path.isdir(_PROC_FD)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_THREAD_STACK_MARGIN = 1 << 20


_FEATURES_TAG = ".".join(enabled())  # the engine's proposals: compiled code is valid for these only


@dataclass(frozen=True, slots=True)
class EngineKey:
    """What makes compiled code and engines differ: fuel metering and the WASM stack limit."""

    fuel: bool
    stack: int

    @classmethod
    def for_limits(cls, limits: Limits) -> EngineKey:
        return cls(fuel=limits.fuel is not None, stack=limits.stack)

    @property
    def tag(self) -> str:
        """A stable text form, part of the module cache key."""
        return f"epoch=1,fuel={int(self.fuel)},stack={self.stack},wasm={_FEATURES_TAG}"


ModuleKey = tuple[str, bool, int, WasmKind]  # module sha256, fuel metering, max_wasm_stack, kind


def module_key(job: JobSpec) -> ModuleKey:
    """What tells compiled modules apart: the module's digest, its engine configuration and
    whether it is a core module or a component (they load differently)."""
    return (job.module_sha256, job.limits.fuel is not None, job.limits.stack, job.kind)


def required_thread_stack(limits: Limits) -> int:
    """Native stack a thread needs to run a job with ``limits`` (WASM runs on the caller's stack).

    Pass the largest value to ``threading.stack_size`` before starting worker threads: a native
    stack smaller than ``max_wasm_stack`` would overflow before Wasmtime's own check fires.
    """
    return limits.stack + _THREAD_STACK_MARGIN


# --- mounts -----------------------------------------------------------------------------------


def _location(job: JobSpec, pointer: str) -> Location:
    return Location(file=f"job {job.id}", pointer=pointer)


def _open_beneath(root_fd: int, relative: str, *, directory: bool) -> int:
    """Open ``relative`` under ``root_fd`` one component at a time without following symlinks.

    Raises ``OSError`` (ELOOP for a symlink, ENOENT, ENOTDIR); the returned fd names exactly the
    object the check saw, so nothing can be swapped between checking and mounting.
    """
    parts = [part for part in relative.split("/") if part not in ("", ".")]
    fd = os.dup(root_fd)
    try:
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            flags = _DIR_FLAGS if directory or not last else _FILE_FLAGS
            next_fd = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _why_unopenable(root: Path, relative: str, exc: OSError) -> Literal["changed", "missing"]:
    """Tell a planted symlink (``changed``) from a path that is gone or not a directory."""
    path = root
    for part in (p for p in relative.split("/") if p not in ("", ".")):
        path = path / part
        if path.is_symlink():
            return "changed"
    return "missing" if exc.errno in (errno.ENOENT, errno.ENOTDIR) else "changed"


@contextmanager
def _open_root(root: Path) -> Iterator[tuple[Path, int]]:
    resolved = root.resolve()
    try:
        fd = os.open(resolved, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise InputError.one("root.missing", f"cannot open the root folder {root}: {exc.strerror}") from exc
    try:
        yield resolved, fd
    finally:
        os.close(fd)


def _open_mounts(job: JobSpec, root: Path, root_fd: int, stack: ExitStack) -> list[tuple[int, Path]]:
    """An fd and the absolute path of each mount, in order; PolicyDenied when a mount moved."""
    opened: list[tuple[int, Path]] = []
    for index, mount in enumerate(job.mounts):
        target = Path(os.path.normpath(root / mount.host))
        try:
            fd = _open_beneath(root_fd, mount.host, directory=True)
        except OSError as exc:
            why = _why_unopenable(root, mount.host, exc)
            detail = (
                "now leads through a symlink: a job may have planted it; refusing to follow it"
                if why == "changed"
                else f"is not a directory any more ({exc.strerror})"
            )
            raise PolicyDenied.one(
                f"mount.{why}",
                f"mount {mount.host!r} ({target}) {detail}",
                _location(job, f"/fs/{index}/host"),
            ) from exc
        stack.callback(os.close, fd)
        opened.append((fd, target))
    return opened


def _check_protected(
    job: JobSpec, targets: list[Path], protected: Iterable[Path], secrets: Iterable[Path] = ()
) -> None:
    """No ``rw`` mount may overlap a ``protected`` folder, and no mount at all, not even ``ro``,
    may hold one of the runner's ``secrets`` (its cache key, its signing key: a guest that read one
    could forge cache entries or seals). Compared by name, by identity and by where each lies in
    its filesystem (:mod:`runner.hostpaths`): a bind mount or a case-insensitive folder shows one
    folder under two names."""
    if not job.mounts:
        return
    table = mount_table()
    secrets, protected = tuple(secrets), tuple(protected)
    secret_places = list(zip(secrets, fixed_places(secrets, table), strict=True))
    protected_places = list(zip(protected, fixed_places(protected, table), strict=True))
    for index, (mount, target) in enumerate(zip(job.mounts, targets, strict=True)):
        here = place(target, table)
        for secret, where in secret_places:
            if overlaps(here, where):
                raise PolicyDenied.one(
                    "mount.protected",
                    f"mount {mount.host!r} holds {secret}, a secret of the runner no job may read",
                    _location(job, f"/fs/{index}/host"),
                )
        if mount.mode != "rw":
            continue
        for folder, where in protected_places:
            if overlaps(here, where):
                raise PolicyDenied.one(
                    "mount.protected",
                    f"rw mount {mount.host!r} overlaps {folder}, which a job must never write",
                    _location(job, f"/fs/{index}/host"),
                )


def check_mounts(
    job: JobSpec, root: Path, *, protected: Iterable[Path] = (), secrets: Iterable[Path] = ()
) -> list[tuple[Path, str, str]]:
    """(absolute host dir, guest path, mode) of each mount, checked right before the job runs.

    A mount must still be exactly ``root / host``: a directory reached without following any
    symlink (rule ``mount.changed`` otherwise: an earlier job may have planted a link in a rw
    mount) that exists (``mount.missing``). No rw mount may contain a ``protected`` folder such as
    the module cache or the audit log, and no mount may hold one of the runner's ``secrets`` files
    (``mount.protected``).
    """
    with _open_root(root) as (resolved, root_fd), ExitStack() as stack:
        opened = _open_mounts(job, resolved, root_fd, stack)
        targets = [target for _, target in opened]
        _check_protected(
            job, targets, [folder.resolve() for folder in protected], [file.resolve() for file in secrets]
        )
        return [(target, m.guest, m.mode) for target, m in zip(targets, job.mounts, strict=True)]


def _fd_path(fd: int, fallback: Path) -> str:
    """A path naming exactly the open fd (Linux), so Wasmtime opens the object we checked."""
    return f"{_PROC_FD}/{fd}" if _HAVE_PROC_FD else str(fallback)


# --- output capture ---------------------------------------------------------------------------


class _Capture:
    """One captured stream (stdout or stderr) in a memfd, kept to ``cap`` bytes.

    Wasmtime writes to the memfd through its own descriptor (``/proc/self/fd/N``): no Python
    callback per write (``stdout_custom`` costs ~250 µs per job). Each worker thread reuses its
    pair of memfds from job to job, which saves creating and closing them.

    What lies past the cap is freed by punching a hole (the size stays, so the size is always how
    far the guest wrote): cutting the file back instead would lose a write that lands between
    reading the size and the cut, and with it the count of dropped bytes.
    """

    def __init__(self, name: str) -> None:
        self.fd = os.memfd_create(f"sandrun-{name}", os.MFD_CLOEXEC)
        self.path = f"{_PROC_FD}/{self.fd}".encode()
        self.cap = 0
        self.freed = 0  # bytes below this offset and past the cap are holes already

    def reset(self, cap: int) -> _Capture:
        # Empty already (result() truncates), and Wasmtime opens the path with O_TRUNC.
        self.cap = cap
        self.freed = cap
        return self

    def trim(self) -> None:
        """Free what the guest wrote past the cap since the last trim (ticker thread)."""
        size = os.fstat(self.fd).st_size
        if size > self.freed:
            _punch_hole(self.fd, self.freed, size - self.freed)
            self.freed = size

    def result(self) -> tuple[bytes, int]:
        """(captured bytes, dropped byte count); the guest writes sequentially, so size = total."""
        total = os.fstat(self.fd).st_size
        if total == 0:
            return b"", 0
        data = os.pread(self.fd, min(total, self.cap), 0)
        os.ftruncate(self.fd, 0)  # free the memory now, not at the next job
        return data, max(0, total - self.cap)

    def __del__(self) -> None:
        os.close(self.fd)


_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_FALLOC_PUNCH_HOLE = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE (linux/falloc.h)


def _punch_hole(fd: int, offset: int, length: int) -> None:
    """Free ``length`` bytes at ``offset`` of ``fd`` without changing its size (memfds allow it)."""
    if _LIBC.fallocate(fd, _FALLOC_PUNCH_HOLE, offset, length) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"fallocate(PUNCH_HOLE): {os.strerror(code)}")


def _thread_captures() -> tuple[_Capture, _Capture]:
    captures: tuple[_Capture, _Capture] | None = getattr(_captures, "pair", None)
    if captures is None:
        captures = _captures.pair = (_Capture("stdout"), _Capture("stderr"))
    return captures


_captures = threading.local()


class _Tee:
    """Passthrough capture (``sandrun exec``): write through to ``sink`` and keep up to ``cap``."""

    def __init__(self, sink: int, cap: int) -> None:
        self.sink = sink
        self.cap = cap
        self.data = bytearray()
        self.dropped = 0

    def __call__(self, chunk: bytes) -> int:
        # Called by Wasmtime: must never raise (it would print and report EIO to the guest).
        with suppress(OSError):
            os.write(self.sink, chunk)
        room = self.cap - len(self.data)
        self.data += chunk[:room]
        self.dropped += max(0, len(chunk) - max(room, 0))
        return len(chunk)

    def trim(self) -> None:
        return None

    def result(self) -> tuple[bytes, int]:
        return bytes(self.data), self.dropped


# --- per-job state shared with the ticker and host functions --------------------------------


@dataclass(eq=False, slots=True)
class _JobState:
    """What the ticker, the epoch callback and the ``poll_oneoff`` shadow know of a running job."""

    deadline_ns: int
    cancel: threading.Event | None
    clock_origin_ns: int
    outputs: tuple[_Capture | _Tee, ...]
    tick_ns: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    live: bool = True
    interrupted: Literal["timeout", "cancelled"] | None = None
    raised: BaseException | None = None  # e.g. KeyboardInterrupt caught in the epoch callback
    world: VirtualWorld | None = None  # a hermetic job's clocks and random stream (runner.hermetic)

    def next_check(self, now: int) -> int | None:
        """Ticks until the next look at this job, or None (and why, in ``interrupted``) to stop it."""
        if self.cancel is not None and self.cancel.is_set():
            self.interrupted = "cancelled"
            return None
        remaining = self.deadline_ns - now
        if remaining <= 0:
            self.interrupted = "timeout"
            return None
        return max(1, min(_CHECK_TICKS, -(-remaining // self.tick_ns)))

    @property
    def grace_s(self) -> float:
        """Long enough for the epoch to reach the store's deadline (and the callback to stop it)."""
        return (_CHECK_TICKS + 1) * self.tick_ns / 1e9

    def on_tick(self) -> None:
        with self.lock:
            if self.live:
                for output in self.outputs:
                    output.trim()

    def finish(self) -> None:
        with self.lock:
            self.live = False


_current = threading.local()
_CHECK_TICKS = 3
_UPDATE_DEADLINE_CONTINUE = 0


@capi.epoch_callback
def _on_epoch_deadline(_context: object, _data: object, delta: Any, kind: Any) -> int:
    """Called by Wasmtime (on the job's thread) when the store's epoch deadline is reached:
    extend it by a few ticks, or stop the guest with an error once it is cancelled or late.

    The deadline is re-armed every few ticks instead of once for the whole timeout because
    compiled code caches it: a deadline changed from another thread would go unnoticed.
    """
    state: _JobState | None = getattr(_current, "job", None)
    try:
        ticks = None if state is None else state.next_check(time.monotonic_ns())
        if ticks is not None:
            delta[0] = ticks
            kind[0] = _UPDATE_DEADLINE_CONTINUE
            return 0
    except BaseException as exc:  # never unwind into Wasmtime; Ctrl-C is re-raised by run()
        if state is not None:
            state.interrupted = "cancelled"
            state.raised = exc
    return capi.interrupt_error(b"sandrun: job interrupted")


# --- the poll_oneoff shadow -------------------------------------------------------------------

_ERRNO_SUCCESS = 0
_ERRNO_FAULT = 21
_ERRNO_INVAL = 28
_SUBSCRIPTION = 48
_EVENT = 32
_CLOCK_REALTIME = 0
_CLOCK_MONOTONIC = 1
_EVENTTYPE_CLOCK = 0
_SUBCLOCK_ABSTIME = 1
_SLICE_S = 0.05
_U32 = 0xFFFFFFFF


def _clock_due(state: _JobState | None, clock: int, timeout: int, flags: int, now: int) -> int | None:
    """The monotonic time (ns) a clock subscription fires, or None for an unsupported clock."""
    if not flags & _SUBCLOCK_ABSTIME:
        return now + timeout if clock in (_CLOCK_REALTIME, _CLOCK_MONOTONIC) else None
    if clock == _CLOCK_REALTIME:
        return now + timeout - time.time_ns()
    if clock == _CLOCK_MONOTONIC:
        origin = state.clock_origin_ns if state is not None else now
        return origin + timeout
    return None


def _sleep_until(state: _JobState | None, due: int) -> bool:
    """Sleep until ``due``; True when the job's deadline or cancel event cut the sleep short."""
    while True:
        limit = due if state is None else min(due, state.deadline_ns)
        remaining = (limit - time.monotonic_ns()) / 1e9
        if remaining <= 0:
            return state is not None and due > state.deadline_ns
        if state is not None and state.cancel is not None:
            if state.cancel.wait(min(remaining, _SLICE_S)):
                return True
        else:
            time.sleep(min(remaining, _SLICE_S))


def _poll(caller: Caller, in_ptr: int, out_ptr: int, count: int, nevents_ptr: int) -> int:
    memory = caller.get("memory")
    if not isinstance(memory, Memory):
        return _ERRNO_INVAL
    size = memory.data_len(caller)
    if count == 0:
        return _ERRNO_INVAL
    if in_ptr + count * _SUBSCRIPTION > size or out_ptr + count * _EVENT > size or nevents_ptr + 4 > size:
        return _ERRNO_FAULT
    raw = memory.read(caller, in_ptr, in_ptr + count * _SUBSCRIPTION)
    state: _JobState | None = getattr(_current, "job", None)
    now = time.monotonic_ns()
    parsed = subscriptions(raw, count)  # fd subscriptions are always ready
    if parsed is None:
        return _ERRNO_INVAL
    clocks: list[tuple[int, int]] = []  # (due, userdata)
    for clock, timeout, flags, userdata in parsed[0]:
        due = _clock_due(state, clock, timeout, flags, now)
        if due is None:
            return _ERRNO_INVAL
        clocks.append((due, userdata))
    ready = parsed[1]
    if not ready and _sleep_until(state, min(clocks)[0]) and state is not None:
        # Cut short: the guest would outlive its deadline. Mark it, and give the ticker time to
        # arm the epoch trap, which fires as soon as the guest is back in WASM.
        state.interrupted = "cancelled" if state.cancel is not None and state.cancel.is_set() else "timeout"
        time.sleep(state.grace_s)
    now = time.monotonic_ns()
    fired = [(userdata, _EVENTTYPE_CLOCK) for due, userdata in clocks if due <= now]
    if not ready and not fired:
        fired = [(min(clocks)[1], _EVENTTYPE_CLOCK)]
    memory.write(caller, events(ready + fired), out_ptr)
    memory.write(caller, struct.pack("<I", len(ready + fired)), nevents_ptr)
    return _ERRNO_SUCCESS


def _current_world() -> VirtualWorld | None:
    state: _JobState | None = getattr(_current, "job", None)
    return None if state is None else state.world


def _poll_oneoff(caller: Caller, in_ptr: int, out_ptr: int, count: int, nevents_ptr: int) -> int:
    """WASI ``poll_oneoff`` whose sleeps end at the job's deadline or cancellation.

    Clock subscriptions sleep (in slices) until they are due; fd subscriptions are reported ready
    at once (files always are). Never raises: an exception in a host function travels through a
    module global of wasmtime-py, which is racy across threads; errors are WASI errno values.
    """
    try:
        return _poll(caller, in_ptr & _U32, out_ptr & _U32, count & _U32, nevents_ptr & _U32)
    except Exception:
        return _ERRNO_FAULT


# --- sandrun:http ---------------------------------------------------------------------------


class _CallerMemory:
    """``http_abi.GuestMemory`` over the calling instance's ``memory`` (a job has one instance).
    Within one call the guest cannot run, so its memory cannot grow or move: base and size are
    read once per call that touches memory, and copies go through ``ctypes`` after an explicit
    bounds check."""

    __slots__ = ("_caller", "_base", "_size")

    def __init__(self, caller: Any) -> None:
        self._caller = caller  # the raw ``wasmtime_caller_t`` of this call
        self._base = -1  # not looked up yet
        self._size = 0

    def size(self) -> int:
        if self._base < 0:
            # The export is found once per job (the session's; a job has one store and instance).
            session = http_abi.current()
            memory = None if session is None else session.host_memory
            if memory is None:
                memory = capi.memory_export(self._caller)
                if session is not None:
                    session.host_memory = memory
            self._base, self._size = (0, 0) if memory is None else capi.memory_span(self._caller, memory)
        return self._size

    def _check(self, start: int, length: int) -> None:
        if not (start >= 0 and start + length <= self.size() and self._base):
            raise ValueError(f"{length} bytes at {start} lie outside the guest's memory")

    def read(self, start: int, stop: int) -> bytes:
        self._check(start, stop - start)
        return ctypes.string_at(self._base + start, stop - start)

    def write(self, data: bytes, start: int) -> None:
        self._check(start, len(data))
        ctypes.memmove(self._base + start, data, len(data))


def _define_http(linker: Linker) -> None:
    """Link ``sandrun:http`` (docs/http.md); per-job state is the session bound to the job's thread.
    The functions take and return ``i32`` only, so they skip wasmtime-py's generic trampoline."""
    for name, arity, function in http_abi.FUNCTIONS:

        def host(caller: Any, *args: int, _function: Any = function) -> int:
            return int(_function(_CallerMemory(caller), *args))

        capi.define_host_function(linker, http_abi.MODULE, name, arity, host)


# --- engines ----------------------------------------------------------------------------------


class _EngineHost:
    """One engine, its shared linker, and the ticker thread driving epochs for its jobs."""

    def __init__(self, key: EngineKey, tick_ms: int) -> None:
        self.key = key
        self.engine = Engine(new_config(fuel=key.fuel, stack=key.stack))
        self.linker = Linker(self.engine)
        self.linker.define_wasi()
        self.linker.allow_shadowing = True
        i32 = ValType.i32()
        self.linker.define_func(
            "wasi_snapshot_preview1",
            "poll_oneoff",
            FuncType([i32, i32, i32, i32], [i32]),
            _poll_oneoff,
            access_caller=True,
        )
        _define_http(self.linker)
        self._hermetic: Linker | None = None
        self._components: wasm_component.Linker | None = None
        self._hermetic_components: dict[tuple[str, ...], wasm_component.Linker] = {}
        self.tick_ms = tick_ms
        self._jobs: set[_JobState] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, name=f"sandrun-epoch-{key.tag}", daemon=True)
        self._thread.start()

    def _tick(self) -> None:
        # Ticks are scheduled against the clock, not slept one after another, so the epoch does
        # not drift behind wall time: a late tick is caught up at once.
        period = self.tick_ms / 1000
        start = time.monotonic()
        ticks = 0
        while True:
            ticks += 1
            delay = start + ticks * period - time.monotonic()
            if self._stop.wait(delay) if delay > 0 else self._stop.is_set():
                return
            self.engine.increment_epoch()
            with self._lock:
                jobs = list(self._jobs)
            for job in jobs:
                job.on_tick()

    def linker_for(self, job: JobSpec) -> Linker:
        """The shared linker, or for a hermetic job the one whose clocks, random and polls are
        virtual (made on first use; other jobs keep Wasmtime's native WASI functions)."""
        if job.hermetic is None:
            return self.linker
        with self._lock:
            if self._hermetic is None:
                self._hermetic = Linker(self.engine)
                self._hermetic.define_wasi()
                define_shadows(self._hermetic, _current_world)
                _define_http(self._hermetic)  # linked like everywhere; a hermetic job has no grant
            return self._hermetic

    def component_linker(self, job: JobSpec, component: wasm_component.Component) -> wasm_component.Linker:
        """The linker of component jobs (WASI preview 2: :mod:`runner.component`), made on first
        use; for a hermetic job, one whose clocks and random are virtual at the versions this
        component imports (one per distinct set: a linker is never changed once in use)."""
        from runner import component as components  # component jobs only: ~10 ms of every start

        if job.hermetic is None:
            with self._lock:
                if self._components is None:
                    self._components = components.new_linker(self.engine)
                return self._components
        interfaces = components.virtual_imports(component, self.engine)
        with self._lock:
            linker = self._hermetic_components.get(interfaces)
            if linker is None:
                linker = components.hermetic_linker(self.engine, interfaces, _current_world)
                self._hermetic_components[interfaces] = linker
            return linker

    def register(self, job: _JobState) -> None:
        with self._lock:
            self._jobs.add(job)

    def unregister(self, job: _JobState) -> None:
        job.finish()
        with self._lock:
            self._jobs.discard(job)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


# --- running one job --------------------------------------------------------------------------


@dataclass(slots=True)
class _Ending:
    """How the guest's run ended, before the memory rule and the accounting are applied."""

    exit_code: int | None = None
    trap: TrapKind | None = None
    message: str | None = None
    invoked: InvokeResult | None = None
    refused: InvokeError | None = None


def _first_line(text: str) -> str:
    """The line that says what happened: the first after Wasmtime's ``Caused by:``, else the first."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    causes = lines[lines.index("Caused by:") + 1 :] if "Caused by:" in lines else []
    line = causes[0] if causes else lines[0] if lines else "trap"
    return line if len(line) <= _MESSAGE_MAX else line[: _MESSAGE_MAX - 1] + "…"


def _from_trap(exc: Trap | WasmtimeError) -> _Ending:
    if isinstance(exc, ExitTrap):
        return _Ending(exit_code=exc.code)
    code = exc.trap_code if isinstance(exc, Trap) else None
    kinds: dict[TrapCode, TrapKind] = {
        TrapCode.OUT_OF_FUEL: "out_of_fuel",
        TrapCode.INTERRUPT: "timeout",
        TrapCode.STACK_OVERFLOW: "stack_overflow",
    }
    kind = kinds.get(code, "trap") if code is not None else "trap"
    return _Ending(trap=kind, message=_first_line(exc.message if isinstance(exc, Trap) else str(exc)))


def _invoke(job: JobSpec, store: Store, instance: Instance, types: ExportTypes) -> _Ending:
    """Call the export ``invoke`` names (after ``_initialize``, as a WASI reactor needs): a WAVE
    call expression, or an export name whose arguments are the job's ``args`` (runner.invoke).
    ``types`` reads an export's types from the module's bytes."""
    from runner.invoke import InvokeError, invoke_core, invoke_core_args  # invoke jobs only

    assert job.invoke is not None
    initialize = instance.exports(store).get("_initialize")

    def setup() -> None:  # runs once the arguments are checked, before the call
        if isinstance(initialize, Func):
            initialize(store)

    try:
        if is_invoke_call(job.invoke):
            invoked = invoke_core(store, instance, job.invoke, setup=setup, types=types)
        else:
            invoked = invoke_core_args(store, instance, job.invoke, job.args, setup=setup, types=types)
    except InvokeError as exc:
        return _Ending(trap="trap", message=exc.message, refused=exc)
    return _Ending(exit_code=0, invoked=invoked)


def _invoke_record(ending: _Ending) -> dict[str, Any] | None:
    """What ``report.json`` and the log keep of an ``invoke``: the results (WAVE and JSON), or the
    rule that refused the call."""
    if ending.invoked is not None:
        return ending.invoked.record()
    return None if ending.refused is None else ending.refused.record()


_NO_START = "the module exports no _start function (set invoke to call another export)"


def _execute(
    job: JobSpec, store: Store, linker: Linker, module: Module, types: ExportTypes
) -> tuple[_Ending, int]:
    """Instantiate and call the entry point: how the guest ended (every guest behaviour becomes an
    :class:`_Ending`) and the size of its linear memory at the end.

    The common case (``_start``) goes through :mod:`runner.capi`: wasmtime-py's wrappers would
    cost more than a tiny job's own work."""
    try:
        instance = capi.instantiate(store, linker, module)
    except (Trap, WasmtimeError) as exc:
        ending = _from_trap(exc)
        if ending.trap == "trap" and _initial_memory(module) > job.limits.memory:
            ending.trap = "memory"
        elif ending.trap == "trap" and not isinstance(exc, Trap):
            ending.message = f"cannot instantiate: {ending.message}"
        return ending, 0
    try:
        if job.invoke is not None:
            ending = _invoke(job, store, capi.as_instance(instance), types)
        else:
            code = capi.call_start(store, instance)
            ending = _Ending(exit_code=code) if code is not None else _Ending(trap="trap", message=_NO_START)
    except (Trap, WasmtimeError) as exc:
        ending = _from_trap(exc)
    return ending, capi.memory_size(store, instance) or 0


def _execute_component(
    job: JobSpec, store: Store, linker: wasm_component.Linker, component: wasm_component.Component
) -> tuple[_Ending, None]:
    """A component's run (:mod:`runner.component`) as an :class:`_Ending`. Its linear memory is
    inside the component, out of the API's reach: no peak is measured (None), so a refused grow
    shows as the guest's own failure, not as ``memory``."""
    from runner import component as components

    ended = components.run(store, linker, component, job.invoke)
    message = None if ended.text is None else _first_line(ended.text)
    if ended.instantiating and ended.trap == "trap":
        message = f"cannot instantiate: {message}"
    ending = _Ending(ended.exit_code, ended.trap, message, invoked=ended.invoked, refused=ended.refused)
    return ending, None


def _initial_memory(module: Module) -> int:
    """The largest initial linear memory the module declares or imports, in bytes."""
    types = [item.type for item in module.imports] + [item.type for item in module.exports]
    return max([t.limits.min * _WASM_PAGE for t in types if isinstance(t, MemoryType)], default=0)


def _apply_memory_rule(ending: _Ending, peak: int, cap: int) -> None:
    """A guest that failed with its memory within 1/16 of the cap (at least 1 MiB) hit the cap.

    ``memory.grow`` past the cap returns -1 instead of trapping (the C API has no
    ``trap_on_grow_failure``), and allocators grow in chunks, so a refused grow leaves the memory
    somewhat below the cap; the guest then reports failure its own way (exit code or trap).
    """
    failed = ending.trap == "trap" or (ending.exit_code not in (None, 0))
    if not failed or peak + max(_MEMORY_SLACK, cap // 16) <= cap:
        return
    how = f"exited with code {ending.exit_code}" if ending.trap is None else f"trapped: {ending.message}"
    ending.message = _first_line(f"linear memory reached the cap of {cap} bytes, then the guest {how}")
    ending.exit_code, ending.trap = None, "memory"


_MAX_TABLES = 4
_TABLE_ELEMENT_BYTES = 8  # a funcref or externref slot on the host


def table_caps(memory: int) -> tuple[int, int]:
    """(tables, elements per table) a job with linear-memory cap ``memory`` may have.

    Tables live in host memory that ``memory_size`` does not count; capped so that all of a
    store's tables together take at most ``memory`` bytes (at least 10,000 elements each, what
    large C programs need for their function table).
    """
    return _MAX_TABLES, max(10_000, memory // (_MAX_TABLES * _TABLE_ELEMENT_BYTES))


#: Core instances a component's store may hold: the adapter-built command has 4 (the program, the
#: WASI adapter and two shims); composed components have a few more. Still one linear memory.
_COMPONENT_INSTANCES = 16


def _store(engine: Engine, wasi: WasiConfig, limits: Limits, kind: WasmKind = "module") -> Store:
    """A fresh store for one job: its WASI context and its memory, table and fuel limits."""
    store = Store(engine)
    store.set_wasi(wasi)
    tables, elements = table_caps(limits.memory)
    store.set_limits(
        memory_size=limits.memory,
        table_elements=elements,
        tables=tables,
        instances=_COMPONENT_INSTANCES if kind == "component" else 1,
        memories=1,
    )
    if limits.fuel is not None:
        store.set_fuel(limits.fuel)
    return store


class Runtime:
    """Owns one wasmtime Engine per distinct engine configuration (EngineKey: fuel metering on/off,
    max_wasm_stack), one shared Linker per engine (define_wasi once; ``poll_oneoff`` shadowed so
    sleeps obey the job's deadline), one epoch ticker thread per engine, and the module cache.

    Thread-safe: the executor runs one job per thread. Use as a context manager, or call
    :meth:`close` before the interpreter exits (stores alive at exit can make Wasmtime panic).
    """

    def __init__(
        self,
        *,
        cache_dir: Path | None = None,
        memory_cache_entries: int = 64,
        tick_ms: int = 10,
        egress_seam: Seam | None = None,
        modules: ModuleLimits | None = None,
    ) -> None:
        if tick_ms <= 0:
            raise ValueError("tick_ms must be positive")
        self.modules = modules or ModuleLimits()  # the plan's bounds on module size and compilation
        self.cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
        self.cache = ModuleCache(self.cache_dir, memory_entries=memory_cache_entries)
        self._protected = (self.cache_dir.resolve(),)
        self.secrets = (self.cache.secret_path,)  # files no mount may hold (check_mounts)
        self._tick_ms = tick_ms
        self.egress_seam = egress_seam  # where sandrun:http resolves and dials (tests inject one)
        self._engines: dict[EngineKey, _EngineHost] = {}
        self._lock = threading.Lock()
        self._closed = False
        # The module the last job ran, found again without the cache's lock and key building (it
        # stays alive even if the LRU evicts it meanwhile). Replaced as a whole tuple, so
        # concurrent workers never see half of it.
        self._last: tuple[ModuleKey, _EngineHost, Code] | None = None
        self._adopted: dict[ModuleKey, Code] = {}  # handed over by a parent process (worker.py)

    def __enter__(self) -> Runtime:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the tickers and drop engines and cached modules."""
        with self._lock:
            self._closed = True
            engines, self._engines = list(self._engines.values()), {}
        for host in engines:
            host.close()

    @property
    def engine_count(self) -> int:
        """Engines made so far (each with its ticker thread): a worker counts them as its own."""
        return len(self._engines)

    def _engine(self, key: EngineKey) -> _EngineHost:
        with self._lock:
            if self._closed:
                raise RuntimeError("the runtime is closed")
            host = self._engines.get(key)
            if host is None:
                host = self._engines[key] = _EngineHost(key, self._tick_ms)
            return host

    def _module(
        self, job: JobSpec, root: Path, cancel: threading.Event | None = None
    ) -> tuple[_EngineHost, Code, Source]:
        host = self._engine(EngineKey.for_limits(job.limits))
        key = self.cache.key(job.module_sha256, host.key.tag, job.kind)
        module = self.cache.cached(key)
        if module is not None:
            return host, module, "memory"
        path = _module_path(job, root)
        if not path.is_file():
            raise InputError.one(
                "module.missing", f"module file {path} is missing", _location(job, "/module")
            )
        try:
            compile_for_key = partial(self._compile, host.key, job.kind, cancel)
            fetch = partial(self._read_module, job, path)
            module, source = self.cache.load(host.engine, key, fetch, compile_for_key, kind=job.kind)
        except CompileFailed as exc:
            location = _location(job, "/module")
            if exc.kind == "invalid":
                raise InputError.one(
                    "module.invalid", f"{path} is not a valid module: {_first_line(exc.message)}", location
                ) from exc
            if exc.kind == "cancelled":
                raise InputError.one("compile.cancelled", exc.message, location) from exc
            raise PolicyDenied.one(f"compile.{exc.kind}", exc.message, location) from exc
        except WasmtimeError as exc:  # compiled code this engine refuses to load
            raise InputError.one(
                "module.invalid",
                f"{path} cannot be loaded: {_first_line(str(exc))}",
                _location(job, "/module"),
            ) from exc
        return host, module, source

    def _read_module(self, job: JobSpec, path: Path) -> bytes:
        """The module's bytes: at most ``modules.max_size``, with the digest the plan approved.

        Read only from a regular file, opened without waiting: the file checked a moment ago may
        have been swapped for a FIFO (whose open blocks until a writer comes) or a device."""
        try:
            data = read_regular(path, self.modules.max_size + 1)
        except OSError as exc:
            raise InputError.one(
                "module.missing",
                f"module file {path} cannot be read: {exc.strerror}",
                _location(job, "/module"),
            ) from None
        if len(data) > self.modules.max_size:  # never read all of a file swapped for a huge one
            raise PolicyDenied.one(
                "modules.max-size",
                f"{path} is larger than the plan's modules.max_size ({self.modules.max_size} bytes)",
                _location(job, "/module"),
            )
        if sha256_hex(data) != job.module_sha256:
            raise PolicyDenied.one(
                "module.digest-changed",
                f"{path} no longer has the sha256 the plan approved ({job.module_sha256})",
                _location(job, "/module"),
                expected=job.module_sha256,
                actual=sha256_hex(data),
            )
        reason = not_wasm_reason(data)  # wasmtime would parse text as WAT: never from a plan
        if reason is None and wasm_kind(data) != job.kind:
            reason = f"is a {wasm_kind(data)}, but the plan says {job.kind}"
        if reason is not None:
            raise InputError.one("module.invalid", f"{path} {reason}", _location(job, "/module"))
        return data

    def _export_types(self, job: JobSpec, root: Path, name: str) -> Signature | None:
        """An export's types read from the module's bytes (:func:`runner.wasmfile.export_signature`);
        None when the file is gone or changed (a replay from the cache): Wasmtime is asked then."""
        try:
            data = self._read_module(job, _module_path(job, root))
        except (SandrunError, OSError):
            return None
        return export_signature(data, name)

    def _compile(
        self, key: EngineKey, kind: WasmKind, cancel: threading.Event | None, engine: Engine, data: bytes
    ) -> Code:
        """Compile in a child process under the plan's bounds (:mod:`runner.compiling`); the
        serialized code it returns is ours, so deserializing it into ``engine`` (made for ``key``)
        is safe."""
        bounds = CompileBounds(cpu_ms=self.modules.compile_timeout_ms, memory=self.modules.compile_memory)
        compiled = compile_bounded(
            data, fuel=key.fuel, stack=key.stack, bounds=bounds, cancel=cancel, kind=kind
        )
        return compiled.load(engine)

    def load_module(self, job: JobSpec, root: Path, *, cancel: threading.Event | None = None) -> Source:
        """Compile or fetch the job's module into the caches: ``compiled``, ``memory`` or ``disk``.

        Checked in order: (1) the file is at most the plan's ``modules.max_size`` (only that much
        is read); (2) its bytes have ``job.module_sha256`` (rule ``module.digest-changed``); (3) it
        compiles in a child process within the plan's CPU-time and memory bounds (rules
        ``compile.timeout``, ``compile.memory``, ``compile.crashed``; ``module.invalid``). A
        compilation stops early when ``cancel`` is set (``compile.cancelled``).
        """
        return self._module(job, root, cancel)[2]

    def sealed_code(self, job: JobSpec, root: Path) -> Sealed:
        """The job's compiled module in a sealed memfd another process can :meth:`adopt` (a
        worker): the copy the disk cache authenticated, or serialized once per module."""
        host, module, _ = self._module(job, root)
        return self.cache.sealed(self.cache.key(job.module_sha256, host.key.tag, job.kind), module)

    def adopt(self, key: ModuleKey, fd: int) -> None:
        """Take a module the parent process handed over as :meth:`sealed_code`'s descriptor.

        Deserializing maps the bytes as machine code unchecked, so ``fd`` must come from a trusted
        process over a private channel (the worker's socket), never from a file or a guest; it
        must carry every seal (:func:`runner.sealed.require_sealed`), so nobody can change the
        bytes the parent checked. Wasmtime maps the file directly (no copy); ``fd`` stays the
        caller's.
        """
        require_sealed(fd)
        engine = self._engine(EngineKey(fuel=key[1], stack=key[2])).engine
        self._adopted[key] = deserialize_file(engine, fd_path(fd), key[3])

    def run(
        self,
        job: JobSpec,
        root: Path,
        *,
        cancel: threading.Event | None = None,
        passthrough: bool = False,
        stdin_data: bytes | None = None,
    ) -> Outcome:
        """Run one job in a fresh store. Raises only for the host's side (mounts, module file);
        whatever the guest does is in the returned :class:`Outcome`.

        ``passthrough`` (``sandrun exec``): the guest's stdin is this process's stdin and its
        output is also written to this process's stdout/stderr as it comes. ``stdin_data``
        (``sandrun serve``: the request body) is the guest's stdin instead of ``job.stdin``.
        """
        wanted = module_key(job)
        last = self._last
        if last is not None and last[0] == wanted:  # a batch runs one tool many times in a row
            host, module = last[1], last[2]
        else:
            adopted = self._adopted.get(wanted)
            if adopted is not None:
                host, module = self._engine(EngineKey.for_limits(job.limits)), adopted
            else:
                host, module, _ = self._module(job, root)
            self._last = (wanted, host, module)
        limits = job.limits
        argv = (job.program_name, *job.args)
        wasi = WasiConfig()  # WASI's default environment is empty: nothing of the host's
        outputs: tuple[_Capture | _Tee, _Capture | _Tee]
        if passthrough:
            outputs = _passthrough(wasi, limits.output)
            capi.configure_wasi(wasi, argv, job.env)
        else:
            out, err = (capture.reset(limits.output) for capture in _thread_captures())
            outputs = (out, err)
            capi.configure_wasi(wasi, argv, job.env, stdout=out.path, stderr=err.path)
        stdin_file = job.stdin is not None and not passthrough and stdin_data is None
        if job.mounts or stdin_file or stdin_data is not None:
            # The fds that name the granted files must stay open until set_wasi has opened them.
            with ExitStack() as stack:
                if stdin_data is not None:
                    wasi.stdin_file = _bytes_file(stdin_data, stack)
                if job.mounts or stdin_file:
                    self._grant_files(job, root, wasi, stack, stdin=stdin_file)
                store = _store(host.engine, wasi, limits, job.kind)
        else:
            store = _store(host.engine, wasi, limits, job.kind)
        started = time.monotonic_ns()
        state = _JobState(
            deadline_ns=started + limits.timeout_ms * 1_000_000,
            cancel=cancel,
            clock_origin_ns=started,
            outputs=outputs,
            tick_ns=self._tick_ms * 1_000_000,
            world=None if job.hermetic is None else VirtualWorld(job.hermetic),
        )
        store.set_epoch_deadline(state.next_check(started) or 1)
        capi.set_epoch_callback(store, _on_epoch_deadline)
        host.register(state)
        _current.job = state
        deadline_s = state.deadline_ns / 1e9

        def egress() -> Egress:  # on the job's first request: the HTTP layer loads sockets and TLS
            from runner.egress.job import egress_for

            return egress_for(job, self.egress_seam, deadline=deadline_s, cancel=cancel)

        net = http_abi.Session(egress)
        try:
            peak: int | None
            with http_abi.bound(net):
                if isinstance(module, Module):
                    types = partial(self._export_types, job, root)
                    ending, peak = _execute(job, store, host.linker_for(job), module, types)
                else:
                    ending, peak = _execute_component(job, store, host.component_linker(job, module), module)
        finally:
            _current.job = None
            host.unregister(state)
        if state.raised is not None:
            raise state.raised
        wall_ms = (time.monotonic_ns() - started) // 1_000_000
        if ending.trap == "timeout" or state.interrupted is not None:
            # An interrupted sleep counts even when the guest exited before the epoch trap.
            reason = "cancelled" if state.interrupted == "cancelled" else None
            ending = _Ending(
                trap="timeout", message=reason or f"exceeded the timeout of {limits.timeout_ms} ms"
            )
        if peak is not None:
            _apply_memory_rule(ending, peak, limits.memory)
        fuel_used = None if limits.fuel is None else limits.fuel - store.get_fuel()
        del state, store  # closes Wasmtime's descriptors before the memfds are read
        (stdout, stdout_dropped), (stderr, stderr_dropped) = (o.result() for o in outputs)
        return Outcome(
            exit_code=ending.exit_code,
            trap=ending.trap,
            trap_message=ending.message,
            fuel_used=fuel_used,
            memory_peak=peak,
            wall_ms=int(wall_ms),
            stdout=stdout,
            stderr=stderr,
            stdout_dropped=stdout_dropped,
            stderr_dropped=stderr_dropped,
            invoke_results=None if ending.invoked is None else ending.invoked.lines,
            invoke=_invoke_record(ending),
            net_hops=net.hops,
        )

    def _grant_files(
        self, job: JobSpec, root: Path, wasi: WasiConfig, stack: ExitStack, *, stdin: bool
    ) -> None:
        """Preopen the mounts and open stdin, each through an fd opened without following links."""
        resolved, root_fd = stack.enter_context(_open_root(root))
        opened = _open_mounts(job, resolved, root_fd, stack)
        _check_protected(job, [target for _, target in opened], self._protected, self.secrets)
        for (fd, target), mount in zip(opened, job.mounts, strict=True):
            wasi.preopen_dir(_fd_path(fd, target), mount.guest, fs_mutable=mount.mode == "rw")
        if job.work_dir is not None:
            _preopen_work_dir(job, opened, wasi, stack)
        if stdin and job.stdin is not None:
            stdin_fd = _open_stdin(job, resolved, root_fd)
            stack.callback(os.close, stdin_fd)
            wasi.stdin_file = _fd_path(stdin_fd, resolved / job.stdin)


def _preopen_work_dir(
    job: JobSpec, opened: list[tuple[int, Path]], wasi: WasiConfig, stack: ExitStack
) -> None:
    """Preopen the job's ``work_dir`` once more, as ``.``: WASI libc resolves a relative path
    against the preopen named ``.`` (its own cwd stays ``/``: the host cannot set it). The folder
    is opened below its mount's descriptor without following symlinks, with the mount's mode; a
    ``..`` leaving it is refused by Wasmtime like any escape from a preopen. Nothing is needed
    when it is ``/`` (relative paths resolve there already)."""
    assert job.work_dir is not None
    found = work_dir_mount(job.mounts, job.work_dir)
    if found is None or job.work_dir == "/":
        return
    mount, below = found
    mount_fd, target = opened[job.mounts.index(mount)]
    try:
        fd = _open_beneath(mount_fd, below, directory=True)
    except OSError as exc:
        raise PolicyDenied.one(
            "mount.changed" if exc.errno not in (errno.ENOENT, errno.ENOTDIR) else "mount.missing",
            f"work_dir {job.work_dir!r} is not a folder below its mount any more, or leads through "
            f"a symlink ({exc.strerror}); refusing to follow it",
            _location(job, "/work_dir"),
        ) from exc
    stack.callback(os.close, fd)
    wasi.preopen_dir(_fd_path(fd, target / below), ".", fs_mutable=mount.mode == "rw")


def _bytes_file(data: bytes, stack: ExitStack) -> str:
    """A path to an anonymous file holding ``data`` (a memfd where there is one), open until
    ``stack`` closes: the guest's stdin, never a name in the filesystem anyone else could open."""
    if hasattr(os, "memfd_create") and _HAVE_PROC_FD:
        fd = os.memfd_create("sandrun-stdin", os.MFD_CLOEXEC)
        stack.callback(os.close, fd)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        return f"{_PROC_FD}/{fd}"
    import tempfile

    handle = stack.enter_context(tempfile.NamedTemporaryFile(prefix="sandrun-stdin-"))  # noqa: SIM115
    handle.write(data)
    handle.flush()
    return handle.name


def _passthrough(wasi: WasiConfig, cap: int) -> tuple[_Tee, _Tee]:
    """``sandrun exec``: the guest reads this process's stdin; its output is also written through."""
    wasi.inherit_stdin()
    stdout, stderr = _Tee(sys.stdout.fileno(), cap), _Tee(sys.stderr.fileno(), cap)
    wasi.stdout_custom = stdout
    wasi.stderr_custom = stderr
    return stdout, stderr


def _module_path(job: JobSpec, root: Path) -> Path:
    """The module file; a built-in's is the package's own (its digest is checked when it is read)."""
    if job.module.startswith(catalog.PREFIX):
        builtin = catalog.lookup(job.module)
        if builtin is None:
            raise InputError.one(
                "module.builtin-unknown", f"no built-in module {job.module!r}", _location(job, "/module")
            )
        return catalog.module_path(builtin)
    return root / job.module


def _open_stdin(job: JobSpec, root: Path, root_fd: int) -> int:
    assert job.stdin is not None
    try:
        fd = _open_beneath(root_fd, job.stdin, directory=False)
    except OSError as exc:
        why = _why_unopenable(root, job.stdin, exc)
        if why == "changed":
            raise PolicyDenied.one(
                "stdin.changed",
                f"stdin file {job.stdin!r} now leads through a symlink; refusing to follow it",
                _location(job, "/stdin"),
            ) from exc
        raise InputError.one(
            "stdin.missing",
            f"stdin file {job.stdin!r} cannot be opened: {exc.strerror}",
            _location(job, "/stdin"),
        ) from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or device could block the guest forever
        os.close(fd)
        raise InputError.one(
            "stdin.missing", f"stdin {job.stdin!r} is not a regular file", _location(job, "/stdin")
        )
    return fd
