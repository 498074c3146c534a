"""The direct C API calls behave as the wasmtime-py calls they replace: same results, same errors."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from wasmtime import (
    Engine,
    ExitTrap,
    FuncType,
    Linker,
    Module,
    Store,
    Trap,
    TrapCode,
    WasiConfig,
    WasmtimeError,
    wat2wasm,
)

from runner import capi

PRINT_ENV = """
(module
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $asizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $aget (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; writes the argv strings, then the environment strings, each NUL-terminated, to stdout
  (func $dump (param $count i32) (param $size i32) (param $fill i32)
    (drop (call_indirect (type $fill_t) (i32.const 1024) (i32.const 4096) (local.get $fill)))
    (i32.store (i32.const 0) (i32.const 4096))
    (i32.store (i32.const 4) (local.get $size))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (type $fill_t (func (param i32 i32) (result i32)))
  (table 2 funcref)
  (elem (i32.const 0) $aget $get)
  (func (export "_start")
    (drop (call $asizes (i32.const 16) (i32.const 20)))
    (call $dump (i32.load (i32.const 16)) (i32.load (i32.const 20)) (i32.const 0))
    (drop (call $sizes (i32.const 16) (i32.const 20)))
    (call $dump (i32.load (i32.const 16)) (i32.load (i32.const 20)) (i32.const 1))))
"""

EXIT_7 = """
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32.const 7))))
"""


UNREACHABLE = '(module (func (export "_start") unreachable))'


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine()


@pytest.fixture(scope="module")
def linker(engine: Engine) -> Linker:
    linker = Linker(engine)
    linker.define_wasi()
    return linker


@pytest.fixture
def memfd() -> Iterator[int]:
    fd = os.memfd_create("capi-test")
    yield fd
    os.close(fd)


def _store(engine: Engine, wasi: WasiConfig | None = None) -> Store:
    store = Store(engine)
    store.set_wasi(wasi if wasi is not None else WasiConfig())
    return store


def _module(engine: Engine, wat: str) -> Module:
    return Module(engine, wat2wasm(wat))


def test_argv_env_and_stdout_file_are_exactly_what_was_given(
    engine: Engine, linker: Linker, memfd: int
) -> None:
    wasi = WasiConfig()
    path = f"/proc/self/fd/{memfd}".encode()
    capi.configure_wasi(wasi, ("tool", "a b", "ü"), (("A", "1"), ("B", "x=y")), stdout=path, stderr=path)
    store = _store(engine, wasi)
    instance = capi.instantiate(store, linker, _module(engine, PRINT_ENV))
    assert capi.call_start(store, instance) == 0
    del store, instance
    written = os.pread(memfd, 4096, 0)
    assert written == "tool\0a b\0ü\0A=1\0B=x=y\0".encode()


def test_no_env_means_an_empty_environment(engine: Engine, linker: Linker, memfd: int) -> None:
    wasi = WasiConfig()
    path = f"/proc/self/fd/{memfd}".encode()
    capi.configure_wasi(wasi, ("tool",), (), stdout=path)
    store = _store(engine, wasi)
    assert capi.call_start(store, capi.instantiate(store, linker, _module(engine, PRINT_ENV))) == 0
    del store
    assert os.pread(memfd, 4096, 0) == b"tool\0"


def test_exit_code_returned_like_wasmtime_py_exit_trap(engine: Engine, linker: Linker) -> None:
    module = _module(engine, EXIT_7)
    store = _store(engine)
    assert capi.call_start(store, capi.instantiate(store, linker, module)) == 7
    reference = _store(engine)
    with pytest.raises(ExitTrap) as exc:
        linker.instantiate(reference, module).exports(reference)["_start"](reference)  # type: ignore[operator]
    assert exc.value.code == 7


def test_trap_raises_the_same_trap(engine: Engine, linker: Linker) -> None:
    store = _store(engine)
    instance = capi.instantiate(store, linker, _module(engine, UNREACHABLE))
    with pytest.raises(Trap) as exc:
        capi.call_start(store, instance)
    assert exc.value.trap_code == TrapCode.UNREACHABLE


def test_no_start_function_is_none(engine: Engine, linker: Linker) -> None:
    store = _store(engine)
    instance = capi.instantiate(
        store, linker, _module(engine, '(module (global (export "_start") i32 (i32.const 0)))')
    )
    assert capi.call_start(store, instance) is None
    assert capi.memory_size(store, instance) is None


def test_instantiation_errors_raise_like_the_linker(engine: Engine, linker: Linker) -> None:
    module = _module(engine, '(module (import "nowhere" "f" (func)))')
    with pytest.raises(WasmtimeError, match="unknown import"):
        capi.instantiate(_store(engine), linker, module)
    start_traps = _module(engine, "(module (func $s unreachable) (start $s))")
    with pytest.raises(Trap):
        capi.instantiate(_store(engine), linker, start_traps)


def test_memory_size_follows_growth(engine: Engine, linker: Linker) -> None:
    wat = '(module (memory (export "memory") 2) (func (export "_start") (drop (memory.grow (i32.const 3)))))'
    store = _store(engine)
    instance = capi.instantiate(store, linker, _module(engine, wat))
    assert capi.memory_size(store, instance) == 2 * 65536
    assert capi.call_start(store, instance) == 0
    assert capi.memory_size(store, instance) == 5 * 65536
    assert capi.as_instance(instance).exports(store)["memory"].data_len(store) == 5 * 65536  # type: ignore[union-attr]


class _HostStop(BaseException):
    """What a Ctrl-C in a host function looks like to wasmtime-py's trampoline."""


def test_an_exception_in_a_host_function_is_raised_not_turned_into_a_trap(engine: Engine) -> None:
    linker = Linker(engine)

    def stop() -> None:
        raise _HostStop

    linker.define_func("host", "stop", FuncType([], []), stop)
    module = _module(engine, '(module (import "host" "stop" (func $s)) (func (export "_start") (call $s)))')
    store = Store(engine)
    instance = capi.instantiate(store, linker, module)
    with pytest.raises(_HostStop):
        capi.call_start(store, instance)
    # nothing left behind: the next trap is that trap, not the old exception
    with pytest.raises(Trap):
        capi.call_start(store, capi.instantiate(store, Linker(engine), _module(engine, UNREACHABLE)))


HOST_I32 = """
(module
  (import "host" "f" (func $f (param i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $got (mut i32) (i32.const 0))
  (func (export "_start") (global.set $got (call $f (i32.const -1) (i32.const 42))))
  (func (export "got") (result i32) (global.get $got)))
"""


def test_a_host_function_gets_raw_i32s_and_the_callers_memory(engine: Engine) -> None:
    seen: list[tuple[int, int, tuple[int, int]]] = []

    def function(caller: int, a: int, b: int) -> int:
        memory = capi.memory_export(caller)
        seen.append((a, b, capi.memory_span(caller, memory)))
        return -5

    linker = Linker(engine)
    capi.define_host_function(linker, "host", "f", 2, function)
    store = Store(engine)
    instance = capi.instantiate(store, linker, _module(engine, HOST_I32))
    assert capi.call_start(store, instance) == 0
    ((a, b, (base, size)),) = seen
    assert (a, b) == (-1, 42)  # signed, as an i32 arrives; callers mask to u32 themselves
    assert base != 0 and size == 2 * 65536
    assert capi.as_instance(instance).exports(store)["got"](store) == -5


def test_no_memory_export_is_none(engine: Engine) -> None:
    seen: list[object] = []

    def function(caller: int, a: int, b: int) -> int:
        seen.append(capi.memory_export(caller))
        return 0

    linker = Linker(engine)
    capi.define_host_function(linker, "host", "f", 2, function)
    wat = (
        '(module (import "host" "f" (func $f (param i32 i32) (result i32)))'
        ' (func (export "_start") (drop (call $f (i32.const 0) (i32.const 0)))))'
    )
    store = Store(engine)
    capi.call_start(store, capi.instantiate(store, linker, _module(engine, wat)))
    assert seen == [None]


def test_an_exception_in_a_raw_host_function_is_raised_not_turned_into_a_trap(engine: Engine) -> None:
    def function(caller: object, a: int, b: int) -> int:
        raise _HostStop

    linker = Linker(engine)
    capi.define_host_function(linker, "host", "f", 2, function)
    store = Store(engine)
    with pytest.raises(_HostStop):
        capi.call_start(store, capi.instantiate(store, linker, _module(engine, HOST_I32)))
    with pytest.raises(Trap):  # nothing left behind for the next call
        capi.call_start(store, capi.instantiate(store, Linker(engine), _module(engine, UNREACHABLE)))


def test_a_kept_memory_export_follows_growth(engine: Engine) -> None:
    # the sandbox keeps the export for a job's later calls; the span is read afresh at each call
    wat = """
    (module
      (import "host" "f" (func $f (param i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "_start")
        (drop (call $f (i32.const 0) (i32.const 0)))
        (drop (memory.grow (i32.const 2)))
        (drop (call $f (i32.const 0) (i32.const 0)))))
    """
    kept: list[object] = []
    sizes: list[int] = []

    def function(caller: int, a: int, b: int) -> int:
        if not kept:
            kept.append(capi.memory_export(caller))
        sizes.append(capi.memory_span(caller, kept[0])[1])
        return 0

    linker = Linker(engine)
    capi.define_host_function(linker, "host", "f", 2, function)
    store = Store(engine)
    capi.call_start(store, capi.instantiate(store, linker, _module(engine, wat)))
    assert sizes == [65536, 3 * 65536]
