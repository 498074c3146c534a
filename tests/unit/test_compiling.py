"""Bounded compilation (runner.compiling) and the Runtime's use of it: what a module can make the
compiler do, and which rule says so. The CPU-time and memory bounds themselves are exercised
end to end with hostile modules in tests/cli/test_cli_compile.py."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import pytest
import wasmtime
from conftest import make_job

from runner.compiling import CompileBounds, CompileFailed, _failure, compile_bounded, new_config
from runner.errors import InputError, PolicyDenied
from runner.plan import ModuleLimits
from runner.sandbox import Runtime

ANSWER = wasmtime.wat2wasm('(module (func (export "answer") (result i32) (i32.const 42)))')
BOUNDS = CompileBounds(cpu_ms=30_000, memory=1 << 30)


def test_compiled_code_loads_only_into_an_engine_of_the_same_configuration() -> None:
    compiled = compile_bounded(ANSWER, fuel=True, stack=1 << 20, bounds=BOUNDS)
    engine = wasmtime.Engine(new_config(fuel=True, stack=1 << 20))
    store = wasmtime.Store(engine)
    store.set_fuel(1000)
    store.set_epoch_deadline(1)
    answer = wasmtime.Instance(store, compiled.load(engine), []).exports(store)["answer"]
    assert isinstance(answer, wasmtime.Func) and answer(store) == 42
    with pytest.raises(wasmtime.WasmtimeError):  # serialized code is tied to the engine config
        compiled.load(wasmtime.Engine(new_config(fuel=False, stack=1 << 20)))


def test_bytes_wasmtime_refuses_are_invalid_with_its_reason() -> None:
    with pytest.raises(CompileFailed) as caught:
        compile_bounded(b"\0asm\x01\0\0\0\x01\xff", fuel=False, stack=1 << 20, bounds=BOUNDS)
    assert caught.value.kind == "invalid" and "offset" in caught.value.message


def test_a_set_cancel_event_stops_the_compile_without_a_verdict() -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(CompileFailed) as caught:
        compile_bounded(ANSWER, fuel=False, stack=1 << 20, bounds=BOUNDS, cancel=cancel)
    assert caught.value.kind == "cancelled"


@pytest.mark.parametrize(
    ("exitcode", "stderr", "stopped", "kind", "words"),
    [
        (-signal.SIGXCPU, b"", None, "timeout", "compile_timeout of 2s of CPU time"),
        (-signal.SIGKILL, b"", "deadline", "timeout", "wall-clock"),
        (-signal.SIGABRT, b"memory allocation of 16777216 bytes failed\n", None, "memory", "64MiB"),
        (86, b"", None, "memory", "compile_memory"),
        (-signal.SIGSEGV, b"", None, "crashed", "SIGSEGV"),
        (-signal.SIGABRT, b"thread panicked", None, "crashed", "SIGABRT"),
        (1, b"", None, "crashed", "exit code 1"),
    ],
)
def test_how_the_child_ended_names_the_bound(
    exitcode: int, stderr: bytes, stopped: str | None, kind: str, words: str
) -> None:
    failure = _failure(exitcode, stderr, CompileBounds(cpu_ms=2000, memory=64 << 20), stopped=stopped)
    assert failure.kind == kind and words in failure.message


def test_the_cpu_bound_is_enforced_in_whole_seconds_rounded_up() -> None:
    assert CompileBounds(cpu_ms=1, memory=1).cpu_seconds == 1
    assert CompileBounds(cpu_ms=1001, memory=1).cpu_seconds == 2
    with pytest.raises(ValueError):
        CompileBounds(cpu_ms=0, memory=1)


def test_runtime_reads_no_more_than_the_size_cap_of_a_module_that_grew(tmp_path: Path) -> None:
    job = make_job(tmp_path, ANSWER)
    (tmp_path / job.module).write_bytes(ANSWER + b"\0" * 4096)  # swapped after the plan was made
    limits = ModuleLimits(max_size=1024)
    with (
        Runtime(cache_dir=tmp_path / "cache", modules=limits) as runtime,
        pytest.raises(PolicyDenied) as caught,
    ):
        runtime.load_module(job, tmp_path)
    assert caught.value.rule_id == "modules.max-size"


def test_runtime_compiles_in_the_child_and_caches_what_it_returned(tmp_path: Path) -> None:
    job = make_job(tmp_path, ANSWER)
    with Runtime(cache_dir=tmp_path / "cache") as runtime:
        assert runtime.load_module(job, tmp_path) == "compiled"
        assert runtime.load_module(job, tmp_path) == "memory"
    with Runtime(cache_dir=tmp_path / "cache") as runtime:
        assert runtime.load_module(job, tmp_path) == "disk"


def test_runtime_turns_an_invalid_module_into_module_invalid(tmp_path: Path) -> None:
    job = make_job(tmp_path, b"\0asm\x01\0\0\0\x01\xff")
    with Runtime(cache_dir=tmp_path / "cache") as runtime, pytest.raises(InputError) as caught:
        runtime.load_module(job, tmp_path)
    assert caught.value.rule_id == "module.invalid"


def test_a_compiler_process_that_cannot_start_is_a_crash_not_an_exception(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import multiprocessing

    class NoProcesses:
        pid = None

        def __init__(self, **_: object) -> None:
            pass

        def start(self) -> None:
            raise OSError(11, "Resource temporarily unavailable")

    class Context:
        Pipe = staticmethod(multiprocessing.Pipe)
        Process = NoProcesses

    monkeypatch.setattr("runner.forkserver.start", Context)
    with pytest.raises(CompileFailed) as caught:
        compile_bounded(ANSWER, fuel=False, stack=1 << 20, bounds=BOUNDS)
    assert caught.value.kind == "crashed" and "cannot start" in caught.value.message
