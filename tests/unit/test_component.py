"""Components in the sandbox, in-process: what differs from core modules (runner/component.py).

The escape and limit tests run against both kinds (tests/unit/test_escape.py); the CLI tests run
components in worker processes (tests/cli/test_cli_components.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import make_job
from wasmtime import wat2wasm

from runner.errors import InputError
from runner.hermetic import settings
from runner.sandbox import Runtime

# A component whose core module asks for random bytes through wasi:random (a huge count from argv
# would be the guest's choice): it stores the first byte of get-random-bytes(len) in its memory.
RANDOM = """(component
  (import "wasi:random/random@0.2.3" (instance $r
    (export "get-random-bytes" (func (param "len" u64) (result (list u8))))))
  (core module $libc (memory (export "memory") 1)
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) (i32.const 64)))
  (core instance $libc (instantiate $libc))
  (core func $bytes (canon lower (func $r "get-random-bytes") (memory (core memory $libc "memory"))
    (realloc (core func $libc "realloc"))))
  (core module $main
    (import "libc" "memory" (memory 1))
    (import "r" "bytes" (func $bytes (param i64 i32)))
    (func (export "run") (param i64) (result i32)
      (call $bytes (local.get 0) (i32.const 8))
      (i32.load8_u (i32.const 64))))
  (core instance $main (instantiate $main (with "libc" (instance $libc))
    (with "r" (instance (export "bytes" (func $bytes))))))
  (func (export "first") (param "len" u64) (result u8) (canon lift (core func $main "run"))))"""


def test_an_initial_memory_above_the_cap_is_a_memory_trap(
    runtime: Runtime, tmp_path: Path, probe_component: bytes
) -> None:
    outcome = runtime.run(make_job(tmp_path, probe_component, memory=64 << 10), tmp_path)
    assert outcome.trap == "memory", outcome
    assert "exceeds memory limits" in (outcome.trap_message or "")


def test_the_runtime_loads_a_file_only_as_the_kind_the_plan_says(
    runtime: Runtime, tmp_path: Path, probe_component: bytes
) -> None:
    job = dataclasses.replace(make_job(tmp_path, probe_component), kind="module")
    with pytest.raises(InputError) as caught:
        runtime.run(job, tmp_path)
    assert caught.value.rule_id == "module.invalid"
    assert "is a component, but the plan says module" in caught.value.violations[0].message


def test_stdin_args_and_env_reach_a_component_exactly(
    runtime: Runtime, tmp_path: Path, probe_component: bytes
) -> None:
    (tmp_path / "in.txt").write_text("from the plan")
    job = make_job(
        tmp_path, probe_component, args=("argv", "env", "stdin"), env=(("A", "1"),), stdin="in.txt"
    )
    outcome = runtime.run(job, tmp_path)
    assert outcome.exit_code == 0, outcome
    assert outcome.stdout.decode().splitlines() == [
        "argv[0]=tool",
        "argv[1]=argv",
        "argv[2]=env",
        "argv[3]=stdin",
        "env A=1",
        "stdin 13 bytes: from the plan",
    ]


def test_hermetic_random_is_seeded_and_bounded(tmp_path: Path) -> None:
    from wasmtime import Engine, Store, WasiConfig, WasmtimeError
    from wasmtime.component import Component

    from runner import component
    from runner.hermetic import VirtualWorld

    engine = Engine()
    guest = Component(engine, wat2wasm(RANDOM))
    interfaces = component.virtual_imports(guest, engine)
    assert interfaces == ("wasi:random/random@0.2.3",)
    world = VirtualWorld(settings("t/j", {"seed": 5}))
    linker = component.hermetic_linker(engine, interfaces, lambda: world)

    def first(length: int) -> object:
        store = Store(engine)
        store.set_wasi(WasiConfig())
        instance = linker.instantiate(store, guest)
        func = instance.get_func(store, "first")
        assert func is not None
        return func(store, length)

    expected = VirtualWorld(settings("t/j", {"seed": 5})).random_bytes(4)[0]
    assert first(4) == expected  # the seeded stream, not the host's randomness
    with pytest.raises(WasmtimeError, match="at most"):  # a huge request traps; nothing is allocated
        first(1 << 40)
