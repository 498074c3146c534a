"""Wasmtime's C API called directly, where wasmtime-py has no wrapper or its wrapper costs more
than the work it wraps.

Two reasons, both measured (docs/sandbox.md):

- the epoch-deadline callback that enforces timeouts and cancellation is in the C API only;
- a tiny job spends about 50 µs in wasmtime-py's generic wrappers (building every export of the
  instance, a ``FuncType`` per call, an ``ExitTrap`` exception per exit), against about 80 µs of
  real work. The calls below do the same with one C call each, and return what wasmtime-py would
  (its ``Trap``/``WasmtimeError`` objects for failures), so callers classify endings the same way.

This reaches into wasmtime-py's private ``_bindings``, which is why ``wasmtime`` is pinned to one
major version; the tests run every function here against the real library.
"""

from __future__ import annotations

import ctypes
import functools
import struct
from collections.abc import Callable, Sequence
from typing import Any

import wasmtime._func
from wasmtime import FuncType, Instance, Linker, Module, Store, Trap, ValType, WasiConfig, WasmtimeError
from wasmtime import _bindings as ffi
from wasmtime._ffi import WASMTIME_EXTERN_FUNC, WASMTIME_EXTERN_MEMORY, dll
from wasmtime._func import maybe_raise_last_exn

__all__ = [
    "EpochCallback",
    "epoch_callback",
    "set_epoch_callback",
    "interrupt_error",
    "configure_wasi",
    "instantiate",
    "as_instance",
    "call_start",
    "memory_size",
    "HostFunction",
    "define_host_function",
    "memory_export",
    "memory_span",
]

EpochCallback = Callable[[object, object, Any, Any], int]
epoch_callback: Callable[[EpochCallback], Any] = ffi._wasmtime_store_epoch_deadline_callback.argtypes[1]
"""Decorator making a Python function the C callback :func:`set_epoch_callback` takes. It runs
on the job's thread; it sets ``delta[0]`` and ``kind[0]`` and returns 0 to go on, or returns
:func:`interrupt_error` to stop the guest."""

_NO_FINALIZER = ffi._wasmtime_store_epoch_deadline_callback.argtypes[3]()  # a NULL function pointer
_EXTERN_FUNC = WASMTIME_EXTERN_FUNC.value
_EXTERN_MEMORY = WASMTIME_EXTERN_MEMORY.value
_byref = ctypes.byref


def set_epoch_callback(store: Store, callback: Any) -> None:
    """Call ``callback`` (made with :func:`epoch_callback`) whenever the store's epoch deadline is
    reached, instead of trapping."""
    ffi._wasmtime_store_epoch_deadline_callback(store.ptr(), callback, None, _NO_FINALIZER)


def interrupt_error(message: bytes) -> int:
    """A new Wasmtime error, as the address an epoch callback returns to stop the guest."""
    return ctypes.cast(ffi._wasmtime_error_new(message), ctypes.c_void_p).value or 0


def _prototype(name: str, *argtypes: Any, restype: Any = ctypes.c_bool) -> Any:
    """The C function ``name`` declared with the types the calls here pass (the bindings declare
    ``char **`` of another ctypes type, or typed pointers that cost an object per call)."""
    function = dll[name]  # a new function object: the bindings' own declaration is left alone
    function.argtypes, function.restype = argtypes, restype
    return function


_STRINGS = ctypes.POINTER(ctypes.c_char_p)
_set_argv = _prototype("wasi_config_set_argv", ctypes.c_void_p, ctypes.c_size_t, _STRINGS)
_set_env = _prototype("wasi_config_set_env", ctypes.c_void_p, ctypes.c_size_t, _STRINGS, _STRINGS)


def _strings(values: Sequence[str]) -> Any:
    return (ctypes.c_char_p * len(values))(*[value.encode() for value in values])


@functools.lru_cache(maxsize=64)
def _env_arrays(env: tuple[tuple[str, str], ...]) -> tuple[Any, Any]:
    """Names and values as C arrays, built once per distinct environment (jobs of a batch share it)."""
    return _strings([name for name, _ in env]), _strings([value for _, value in env])


def configure_wasi(
    wasi: WasiConfig,
    argv: Sequence[str],
    env: Sequence[tuple[str, str]],
    *,
    stdout: bytes | None = None,
    stderr: bytes | None = None,
) -> None:
    """Set exactly this argv and environment (WASI copies the strings), and the files stdout and
    stderr go to (opened for writing, truncated, when the store takes the configuration)."""
    config = wasi.ptr()
    if not _set_argv(config, len(argv), _strings(argv)):
        raise WasmtimeError("failed to configure argv")
    if env and not _set_env(config, len(env), *_env_arrays(tuple(env))):
        raise WasmtimeError("failed to configure environment")
    if stdout is not None and not ffi._wasi_config_set_stdout_file(config, stdout):
        raise WasmtimeError("failed to set stdout file")
    if stderr is not None and not ffi._wasi_config_set_stderr_file(config, stderr):
        raise WasmtimeError("failed to set stderr file")


def _raise_for(error: Any, trap: Any) -> None:
    """Raise what wasmtime-py would for an error or trap pointer the C API returned (owned).

    Like wasmtime-py's ``enter_wasm``: when a Python host function raised (its trampoline keeps
    the exception in a module global and reports a trap), that exception is raised instead, so a
    ``KeyboardInterrupt`` in a host call is neither turned into a trap nor left behind for the
    next call to raise."""
    if not error and not trap:
        return
    failure = WasmtimeError._from_ptr(error) if error else Trap._from_ptr(trap)  # owns the pointer
    maybe_raise_last_exn()
    raise failure


def instantiate(store: Store, linker: Linker, module: Module) -> Any:
    """``linker.instantiate`` returning the raw instance (``wasmtime_instance_t``)."""
    instance = ffi.wasmtime_instance_t()
    trap = ctypes.POINTER(ffi.wasm_trap_t)()
    error = ffi._wasmtime_linker_instantiate(
        linker.ptr(), store._context(), module.ptr(), _byref(instance), _byref(trap)
    )
    _raise_for(error, trap)
    return instance


def as_instance(instance: Any) -> Instance:
    """The wasmtime-py object for a raw instance, for the uncommon paths (``invoke``)."""
    return Instance._from_raw(instance)


def _export(store: Store, instance: Any, name: bytes, kind: int) -> Any:
    item = ffi.wasmtime_extern_t()
    found = ffi._wasmtime_instance_export_get(
        store._context(), _byref(instance), name, len(name), _byref(item)
    )
    return item if found and item.kind == kind else None


def call_start(store: Store, instance: Any) -> int | None:
    """Call the instance's ``_start``: the exit code (0 when it returns), or None when there is no
    ``_start`` function. A trap raises ``Trap`` or ``WasmtimeError`` as wasmtime-py would."""
    item = _export(store, instance, b"_start", _EXTERN_FUNC)
    if item is None:
        return None
    trap = ctypes.POINTER(ffi.wasm_trap_t)()
    error = ffi._wasmtime_func_call(store._context(), _byref(item.of.func), None, 0, None, 0, _byref(trap))
    if error:
        code = ctypes.c_int(0)
        if ffi._wasmtime_error_exit_status(error, _byref(code)):  # proc_exit: not a failure
            ffi._wasmtime_error_delete(error)
            return code.value
    _raise_for(error, trap)
    return 0


def memory_size(store: Store, instance: Any) -> int | None:
    """Bytes of the linear memory the instance exports as ``memory`` (None without one)."""
    item = _export(store, instance, b"memory", _EXTERN_MEMORY)
    return (
        None
        if item is None
        else int(ffi._wasmtime_memory_data_size(store._context(), _byref(item.of.memory)))
    )


#: A host function over ``i32`` values: ``function(caller, *args) -> int``; ``caller`` is the raw
#: ``wasmtime_caller_t`` address, for :func:`memory_export` and :func:`memory_span`.
HostFunction = Callable[..., int]
_VOID = ctypes.c_void_p
_RawCallback = ctypes.CFUNCTYPE(ctypes.c_size_t, _VOID, _VOID, _VOID, ctypes.c_size_t)
_define_unchecked = _prototype(
    "wasmtime_linker_define_func_unchecked",
    *(_VOID, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t, _VOID, _RawCallback),
    *(_VOID, _VOID),
    restype=_VOID,
)
_export_get = _prototype("wasmtime_caller_export_get", _VOID, ctypes.c_char_p, ctypes.c_size_t, _VOID)
_caller_context = _prototype("wasmtime_caller_context", _VOID, restype=_VOID)
_memory_data = _prototype("wasmtime_memory_data", _VOID, _VOID, restype=_VOID)
_memory_data_size = _prototype("wasmtime_memory_data_size", _VOID, _VOID, restype=ctypes.c_size_t)
_RAW_SIZE = ctypes.sizeof(ffi.wasmtime_val_raw_t)  # one argument slot; an i32 is its first 4 bytes
_CALLBACKS: list[Any] = []  # C callbacks must outlive every linker that holds them


def define_host_function(linker: Linker, module: str, name: str, arity: int, function: HostFunction) -> None:
    """Define ``module.name`` as ``(i32 x arity) -> i32`` calling ``function``, without
    wasmtime-py's generic trampoline (about 9 µs a call: a ``Caller``, a ``Val`` per argument and
    a ``ValType`` per comparison) through Wasmtime's unchecked callback (about 1 µs): the
    arguments are read from their slots in one copy, the result written into the first.

    Like the trampoline, an exception escaping ``function`` (Ctrl-C in a host call) becomes a trap
    and is kept where :func:`call_start` re-raises it; a plain ``Exception`` should not escape
    (host functions return error codes)."""
    slots = struct.Struct("=" + "i12x" * arity)  # native order, as the union holds it

    @_RawCallback
    def callback(_env: Any, caller: int, values: int, _count: int) -> int:
        try:
            result = function(caller, *slots.unpack(ctypes.string_at(values, _RAW_SIZE * arity)))
            ctypes.c_int32.from_address(values).value = result
        except BaseException as exc:
            wasmtime._func.LAST_EXCEPTION = exc  # type: ignore[assignment]  # as its trampoline does
            message = b"python exception"
            return ctypes.cast(ffi.wasmtime_trap_new(message, len(message)), ctypes.c_void_p).value or 0
        return 0

    _CALLBACKS.append(callback)
    i32 = ValType.i32()
    kind = FuncType([i32] * arity, [i32])
    module_name, field_name = module.encode(), name.encode()
    error = _define_unchecked(
        linker.ptr(),
        module_name,
        len(module_name),
        field_name,
        len(field_name),
        kind.ptr(),
        callback,
        None,
        None,
    )
    if error:
        raise WasmtimeError._from_ptr(ctypes.cast(error, ctypes.POINTER(ffi.wasmtime_error_t)))


def memory_export(caller: int) -> Any | None:
    """The calling instance's ``memory`` export (a ``wasmtime_memory_t``), None without one. It names
    that memory for the life of its store, so a host may keep it for the instance's later calls."""
    item = ffi.wasmtime_extern_t()
    if not _export_get(caller, b"memory", 6, _byref(item)) or item.kind != _EXTERN_MEMORY:
        return None
    return item.of.memory


def memory_span(caller: int, memory: Any) -> tuple[int, int]:
    """Address and size in bytes of ``memory`` (the caller's store's) now; valid only during this
    host call: a later ``memory.grow`` may move it."""
    context = _caller_context(caller)
    base = _memory_data(context, _byref(memory))
    return (base, int(_memory_data_size(context, _byref(memory)))) if base else (0, 0)
