"""The WASI preview-1 functions a hermetic job sees: clocks, random bytes and polls, all virtual.

:func:`define_shadows` redefines ``clock_time_get``, ``clock_res_get``, ``random_get`` and
``poll_oneoff`` in a linker (after ``define_wasi``). The definitions take no store, so one linker
serves every hermetic job of an engine; each call finds its job's :class:`~runner.hermetic.VirtualWorld`
through ``world_of`` (the sandbox keeps it per thread, in the worker process running the job).
Host functions never raise (an exception crosses threads through a wasmtime-py global): every
failure is a WASI errno. Pointers arrive as signed i32: masked, then bounds-checked.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable
from typing import Any

from wasmtime import Caller, FuncType, Linker, Memory, ValType

from runner.hermetic import VirtualWorld

__all__ = ["WorldOf", "ClockSubscription", "define_shadows", "subscriptions", "events"]

_ERRNO_SUCCESS = 0
_ERRNO_FAULT = 21
_ERRNO_INVAL = 28
_CLOCKS = 4  # realtime, monotonic, process and thread CPU time
_SUBSCRIPTION = 48
_EVENT = 32
_EVENTTYPE_CLOCK = 0
_SUBCLOCK_ABSTIME = 1
_U32 = 0xFFFFFFFF

WorldOf = Callable[[], VirtualWorld | None]


def _write(caller: Caller, ptr: int, data: bytes) -> int:
    memory = caller.get("memory")
    if not isinstance(memory, Memory):
        return _ERRNO_INVAL
    ptr &= _U32
    if ptr + len(data) > memory.data_len(caller):
        return _ERRNO_FAULT
    memory.write(caller, data, ptr)
    return _ERRNO_SUCCESS


def _guarded(body: Callable[..., int]) -> Callable[..., int]:
    def host(*args: Any) -> int:
        try:
            return body(*args)
        except Exception:
            return _ERRNO_FAULT

    return host


def _clock_time_get(world_of: WorldOf, caller: Caller, clock: int, _precision: int, out: int) -> int:
    world = world_of()
    clock &= _U32
    if world is None or clock >= _CLOCKS:
        return _ERRNO_INVAL
    return _write(caller, out, struct.pack("<Q", world.read(realtime=clock == 0)))


def _clock_res_get(world_of: WorldOf, caller: Caller, clock: int, out: int) -> int:
    world = world_of()
    if world is None or clock & _U32 >= _CLOCKS:
        return _ERRNO_INVAL
    return _write(caller, out, struct.pack("<Q", world.hermetic.tick_ns))


def _random_get(world_of: WorldOf, caller: Caller, buf: int, size: int) -> int:
    world = world_of()
    memory = caller.get("memory")
    if world is None or not isinstance(memory, Memory):
        return _ERRNO_INVAL
    buf, size = buf & _U32, size & _U32
    if buf + size > memory.data_len(caller):  # checked before drawing: no huge allocation
        return _ERRNO_FAULT
    return _write(caller, buf, world.random_bytes(size))


ClockSubscription = tuple[int, int, int, int]  # clock id, timeout, flags, userdata


def subscriptions(
    raw: bytes | bytearray, count: int
) -> tuple[list[ClockSubscription], list[tuple[int, int]]] | None:
    """The clock subscriptions and the (userdata, event type) of the fd ones in ``poll_oneoff``'s
    input; None for an unknown event type. Shared with the sandbox's real-time ``poll_oneoff``."""
    clocks: list[ClockSubscription] = []
    ready: list[tuple[int, int]] = []
    for index in range(count):
        base = index * _SUBSCRIPTION
        userdata, tag = struct.unpack_from("<QB", raw, base)
        if tag == _EVENTTYPE_CLOCK:
            clock, timeout, _precision, flags = struct.unpack_from("<I4xQQH", raw, base + 16)
            clocks.append((clock, timeout, flags, userdata))
        elif tag in (1, 2):
            ready.append((userdata, tag))
        else:
            return None
    return clocks, ready


def events(fired: list[tuple[int, int]]) -> bytes:
    """``poll_oneoff``'s output: one successful event per (userdata, event type)."""
    out = bytearray(len(fired) * _EVENT)
    for index, (userdata, kind) in enumerate(fired):
        struct.pack_into("<QHB5xQH6x", out, index * _EVENT, userdata, 0, kind, 0, 0)
    return bytes(out)


def _due(world: VirtualWorld, clock: int, timeout: int, flags: int) -> int | None:
    """When a clock subscription fires, on the virtual monotonic clock."""
    if clock >= _CLOCKS:
        return None
    if not flags & _SUBCLOCK_ABSTIME:
        return world.elapsed_ns + timeout
    return timeout - world.hermetic.epoch_ns if clock == 0 else timeout


def _poll_oneoff(
    world_of: WorldOf, caller: Caller, in_ptr: int, out_ptr: int, count: int, nevents: int
) -> int:
    """Deterministic ``poll_oneoff``: fd subscriptions are ready at once (files always are); with
    none, the clock jumps to the earliest due subscription, so every sleep completes instantly."""
    world = world_of()
    memory = caller.get("memory")
    in_ptr, count = in_ptr & _U32, count & _U32
    if world is None or not isinstance(memory, Memory) or count == 0:
        return _ERRNO_INVAL
    if in_ptr + count * _SUBSCRIPTION > memory.data_len(caller):
        return _ERRNO_FAULT
    parsed = subscriptions(memory.read(caller, in_ptr, in_ptr + count * _SUBSCRIPTION), count)
    if parsed is None:
        return _ERRNO_INVAL
    subscribed, ready = parsed
    clocks: list[tuple[int, int]] = []
    for clock, timeout, flags, userdata in subscribed:
        due = _due(world, clock, timeout, flags)
        if due is None:
            return _ERRNO_INVAL
        clocks.append((due, userdata))
    if not ready:
        world.sleep_until(min(clocks)[0])
    fired = ready + [(userdata, _EVENTTYPE_CLOCK) for due, userdata in clocks if due <= world.elapsed_ns]
    status = _write(caller, out_ptr, events(fired))
    return status or _write(caller, nevents, struct.pack("<I", len(fired)))


def define_shadows(linker: Linker, world_of: WorldOf) -> None:
    """Shadow the WASI clock, random and poll functions of ``linker`` (after ``define_wasi``) with
    the virtual world ``world_of()`` returns for the calling job (None: the call fails, EINVAL)."""
    i32, i64 = ValType.i32(), ValType.i64()
    linker.allow_shadowing = True
    for name, params, body in (
        ("clock_time_get", [i32, i64, i32], _clock_time_get),
        ("clock_res_get", [i32, i32], _clock_res_get),
        ("random_get", [i32, i32], _random_get),
        ("poll_oneoff", [i32, i32, i32, i32], _poll_oneoff),
    ):
        bound = _guarded(functools.partial(body, world_of))
        linker.define_func("wasi_snapshot_preview1", name, FuncType(params, [i32]), bound, access_caller=True)
