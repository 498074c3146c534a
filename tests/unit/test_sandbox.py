"""One job in one sandbox: WASI context from the plan only, limits, classification, invoke, cancel."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from conftest import make_job
from wasmtime import wat2wasm

from runner.errors import InputError, PolicyDenied
from runner.results import Outcome
from runner.sandbox import EngineKey, Runtime, check_mounts

CALC = bytes(
    wat2wasm(
        """
    (module
      (global $ready (mut i32) (i32.const 0))
      (func (export "_initialize") (global.set $ready (i32.const 1)))
      (func (export "ready") (result i32) (global.get $ready))
      (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
      (func (export "wide") (param i64) (result i64) (i64.add (local.get 0) (i64.const 1)))
      (func (export "half") (param f32 f64) (result f32 f64)
        (f32.div (local.get 0) (f32.const 2)) (f64.div (local.get 1) (f64.const 2)))
      (func (export "crash") unreachable)
      (memory (export "memory") 1)
      (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0))))
    """
    )
)


def test_argv_env_and_nothing_else(runtime: Runtime, tmp_path: Path, probe_wasm: bytes) -> None:
    job = make_job(tmp_path, probe_wasm, args=("argv", "env"), env=(("A", "1"), ("B", "x=y")))
    outcome = runtime.run(job, tmp_path)
    assert outcome.exit_code == 0
    assert outcome.stdout.splitlines() == [
        b"argv[0]=tool",
        b"argv[1]=argv",
        b"argv[2]=env",
        b"env A=1",
        b"env B=x=y",
    ]
    assert outcome.stderr == b""


def test_stdin_comes_from_the_job_file_only(runtime: Runtime, tmp_path: Path, probe_wasm: bytes) -> None:
    (tmp_path / "in.txt").write_text("hello stdin")
    assert runtime.run(make_job(tmp_path, probe_wasm, args=("stdin",), stdin="in.txt"), tmp_path).stdout == (
        b"stdin 11 bytes: hello stdin\n"
    )
    assert (
        runtime.run(make_job(tmp_path, probe_wasm, args=("stdin",)), tmp_path).stdout == b"stdin 0 bytes: \n"
    )


def test_stdin_replaced_by_a_symlink_is_refused(runtime: Runtime, tmp_path: Path, probe_wasm: bytes) -> None:
    (tmp_path / "secret").write_text("secret")
    (tmp_path / "in.txt").symlink_to(tmp_path / "secret")
    with pytest.raises(PolicyDenied) as caught:
        runtime.run(make_job(tmp_path, probe_wasm, args=("stdin",), stdin="in.txt"), tmp_path)
    assert caught.value.rule_id == "stdin.changed"


def test_stdin_missing(runtime: Runtime, tmp_path: Path, probe_wasm: bytes) -> None:
    with pytest.raises(InputError) as caught:
        runtime.run(make_job(tmp_path, probe_wasm, args=("stdin",), stdin="gone.txt"), tmp_path)
    assert caught.value.rule_id == "stdin.missing"
    assert caught.value.location is not None and caught.value.location.pointer == "/stdin"


@pytest.mark.parametrize(
    ("args", "exit_code", "trap"),
    [
        ((), 0, None),
        (("exit", "0"), 0, None),
        (("exit", "3"), 3, None),
        (("exit", "125"), 125, None),
        (("exit", "126"), None, "trap"),  # WASI preview 1 exit codes stop at 125, as in `wasmtime run`
        (("abort",), None, "trap"),
    ],
)
def test_exit_codes_and_traps(
    runtime: Runtime,
    tmp_path: Path,
    probe_wasm: bytes,
    args: tuple[str, ...],
    exit_code: int | None,
    trap: str | None,
) -> None:
    outcome = runtime.run(make_job(tmp_path, probe_wasm, args=args), tmp_path)
    assert (outcome.exit_code, outcome.trap) == (exit_code, trap)
    if args == ("abort",):
        assert outcome.trap_message == "wasm trap: wasm `unreachable` instruction executed"
    elif trap == "trap":
        assert outcome.trap_message == "exit with invalid exit status outside of [0..126)"


def test_outputs_are_capped_separately(runtime: Runtime, tmp_path: Path, probe_wasm: bytes) -> None:
    job = make_job(tmp_path, probe_wasm, args=("stderr", "e" * 99, "flood", "300"), output=100)
    outcome = runtime.run(job, tmp_path)
    assert outcome.stdout == b"x" * 100 and outcome.stdout_dropped == 200
    assert outcome.stderr == b"e" * 99 + b"\n" and not outcome.stderr_truncated


def test_fuel_used_and_memory_peak(runtime: Runtime, tmp_path: Path, probe_wasm: bytes) -> None:
    outcome = runtime.run(make_job(tmp_path, probe_wasm, args=("alloc", "4"), fuel=10**9), tmp_path)
    assert outcome.exit_code == 0
    assert outcome.fuel_used is not None and 0 < outcome.fuel_used < 10**9
    assert 4 << 20 < outcome.memory_peak < 16 << 20
    no_fuel = runtime.run(make_job(tmp_path, probe_wasm), tmp_path)
    assert no_fuel.fuel_used is None


def test_initial_memory_beyond_the_cap_is_a_memory_trap(runtime: Runtime, tmp_path: Path) -> None:
    big = bytes(wat2wasm('(module (memory (export "memory") 32) (func (export "_start")))'))
    outcome = runtime.run(make_job(tmp_path, big, memory=1 << 20), tmp_path)
    assert outcome.trap == "memory"
    assert outcome.memory_peak == 0


def test_a_refused_grow_far_from_the_cap_keeps_the_guests_answer(runtime: Runtime, tmp_path: Path) -> None:
    job = make_job(tmp_path, CALC, invoke="grow", args=("1000",), memory=8 << 20)
    outcome = runtime.run(job, tmp_path)
    assert (outcome.exit_code, outcome.invoke_results) == (0, ("-1",))
    assert outcome.memory_peak == 65536


@pytest.mark.parametrize(
    ("invoke", "args", "results"),
    [
        ("add", ("2", "40"), ("42",)),
        ("add", ("4294967295", "1"), ("0",)),
        ("add", ("-2147483648", "0x10"), ("-2147483632",)),
        ("wide", ("9223372036854775806",), ("9223372036854775807",)),
        ("half", ("3", "1e300"), ("1.5", "5" + "0" * 299)),  # Rust's Display, as wasmtime prints
        ("half(3, -0.2)", (), ("1.5", "-0.1")),
        ("half(nan, inf)", ("argv-only",), ("NaN", "inf")),
        ("add(-2147483648, 2147483647)", (), ("-1",)),
        ("wide(9223372036854775806)", (), ("9223372036854775807",)),
        ("ready()", (), ("1",)),
        ("ready", (), ("1",)),
        ("grow", ("1",), ("1",)),
    ],
)
def test_invoke_converts_arguments_and_records_results(
    runtime: Runtime, tmp_path: Path, invoke: str, args: tuple[str, ...], results: tuple[str, ...]
) -> None:
    outcome = runtime.run(make_job(tmp_path, CALC, invoke=invoke, args=args), tmp_path)
    assert (outcome.exit_code, outcome.trap, outcome.invoke_results) == (0, None, results)


@pytest.mark.parametrize(
    ("invoke", "args", "message"),
    [
        ("nope", (), "the module exports no function named 'nope'"),
        ("memory", (), "the module exports no function named 'memory'"),
        ("add", ("1",), "'add' takes 2 argument(s), the job gives 1"),
        ("add", ("1", "4294967296"), "argument 1 ('4294967296') does not fit i32"),
        ("add", ("1", "-2147483649"), "argument 1 ('-2147483649') does not fit i32"),
        ("add", ("1", "one"), "argument 1 ('one') is not a valid i32"),
        ("wide", ("18446744073709551616",), "argument 0 ('18446744073709551616') does not fit i64"),
        ("half", ("1e39", "0"), "argument 0 ('1e39') does not fit f32"),
        ("half", ("x", "0"), "argument 0 ('x') is not a valid f32"),
    ],
)
def test_bad_invoke_is_an_outcome(
    runtime: Runtime, tmp_path: Path, invoke: str, args: tuple[str, ...], message: str
) -> None:
    outcome = runtime.run(make_job(tmp_path, CALC, invoke=invoke, args=args), tmp_path)
    assert (outcome.trap, outcome.trap_message, outcome.invoke_results) == ("trap", message, None)


@pytest.mark.parametrize(
    ("invoke", "rule", "message"),
    [
        ("add(1, 1099511627776)", "invoke.out-of-range", "argument 1: 1099511627776 does not fit s32"),
        ("add(1, 4294967295)", "invoke.out-of-range", "argument 1: 4294967295 does not fit s32"),
        ("add(1)", "invoke.arity", "'add' takes 2 argument(s), the call gives 1"),
        ("add(1, 2, 3)", "invoke.arity", "'add' takes 2 argument(s), the call gives 3"),
        ("add(1, 2.5)", "invoke.type", "argument 1: expected s32, found 2.5"),
        ('add(1, "2")', "invoke.type", "argument 1: expected s32, found a string"),
        ("half(1e39, 0)", "invoke.out-of-range", "argument 0: 1e39 does not fit f32"),
        ("add(1 2)", "invoke.malformed", "invoke: expected ',' or ')' at column 7"),
        ("nope()", "invoke.export", "the module exports no function named 'nope'"),
    ],
)
def test_a_wave_call_is_checked_before_any_guest_code_runs(
    runtime: Runtime, tmp_path: Path, invoke: str, rule: str, message: str
) -> None:
    outcome = runtime.run(make_job(tmp_path, CALC, invoke=invoke), tmp_path)
    assert outcome.trap == "trap" and outcome.invoke_results is None
    assert outcome.trap_message is not None and outcome.trap_message.startswith(message)
    assert outcome.invoke == {"rule": rule, "error": outcome.trap_message}


def test_invoke_results_are_kept_as_wave_and_json(runtime: Runtime, tmp_path: Path) -> None:
    outcome = runtime.run(make_job(tmp_path, CALC, invoke="half(0.1, nan)"), tmp_path)
    assert outcome.invoke == {"export": "half", "wave": "(0.05, nan)", "json": ["0.05", "nan"]}
    single = runtime.run(make_job(tmp_path, CALC, invoke="add", args=("2", "40")), tmp_path)
    assert single.invoke == {"export": "add", "wave": "42", "json": [42]}


def test_invoke_that_traps(runtime: Runtime, tmp_path: Path) -> None:
    outcome = runtime.run(make_job(tmp_path, CALC, invoke="crash"), tmp_path)
    assert outcome.trap == "trap"
    assert outcome.trap_message is not None and "unreachable" in outcome.trap_message


def test_module_without_start(runtime: Runtime, tmp_path: Path) -> None:
    outcome = runtime.run(make_job(tmp_path, CALC), tmp_path)
    assert outcome.trap == "trap"
    assert outcome.trap_message is not None and "_start" in outcome.trap_message


def test_unknown_import_is_a_trap_outcome(runtime: Runtime, tmp_path: Path) -> None:
    wasm = bytes(wat2wasm('(module (import "env" "nope" (func)) (func (export "_start")))'))
    outcome = runtime.run(make_job(tmp_path, wasm), tmp_path)
    assert outcome.trap == "trap"
    assert outcome.trap_message is not None and outcome.trap_message.startswith("cannot instantiate")


@pytest.mark.parametrize("args", [("spin",), ("sleep", "3600")])
def test_cancel_interrupts_a_running_job(
    runtime: Runtime, tmp_path: Path, probe_wasm: bytes, args: tuple[str, ...]
) -> None:
    cancel = threading.Event()
    timer = threading.Timer(0.3, cancel.set)
    timer.start()
    started = time.monotonic()
    outcome = runtime.run(
        make_job(tmp_path, probe_wasm, args=args, timeout_ms=60_000), tmp_path, cancel=cancel
    )
    assert (outcome.trap, outcome.trap_message) == ("timeout", "cancelled")
    assert time.monotonic() - started < 5


def test_a_short_sleep_completes(runtime: Runtime, tmp_path: Path, probe_wasm: bytes) -> None:
    started = time.monotonic()
    outcome = runtime.run(make_job(tmp_path, probe_wasm, args=("sleep", "1")), tmp_path)
    assert outcome.exit_code == 0 and outcome.stdout == b"sleep ok\n"
    assert time.monotonic() - started >= 1.0


def test_jobs_in_parallel_time_out_independently(runtime: Runtime, tmp_path: Path, probe_wasm: bytes) -> None:
    spin = make_job(tmp_path, probe_wasm, args=("spin",), timeout_ms=300, name="spin")
    sleeper = make_job(
        tmp_path, probe_wasm, args=("sleep", "1", "exit", "4"), timeout_ms=20_000, name="sleep"
    )
    results: dict[str, Outcome] = {}
    threads = [
        threading.Thread(target=lambda j=job: results.__setitem__(j.name, runtime.run(j, tmp_path)))
        for job in (spin, sleeper)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results["spin"].trap == "timeout"
    assert results["sleep"].exit_code == 4


def test_passthrough_writes_through_and_still_captures(
    runtime: Runtime, tmp_path: Path, probe_wasm: bytes, capfd: pytest.CaptureFixture[str]
) -> None:
    job = make_job(tmp_path, probe_wasm, args=("argv", "stderr", "oops", "flood", "50"), output=30)
    outcome = runtime.run(job, tmp_path, passthrough=True)
    out, err = capfd.readouterr()
    assert out == "argv[0]=tool\n" + "".join(f"argv[{i}]={a}\n" for i, a in enumerate(job.args, 1)) + "x" * 50
    assert err == "oops\n"
    assert outcome.stdout == out.encode()[:30]
    assert outcome.stdout_dropped == len(out) - 30


def test_load_module_reports_where_it_came_from(runtime: Runtime, tmp_path: Path, probe_wasm: bytes) -> None:
    job = make_job(tmp_path, probe_wasm)
    assert runtime.load_module(job, tmp_path) == "compiled"
    assert runtime.load_module(job, tmp_path) == "memory"


def test_a_module_swapped_for_a_fifo_after_its_check_is_refused_without_waiting(
    runtime: Runtime, tmp_path: Path, probe_wasm: bytes
) -> None:
    """The file was a module when deploy looked (``is_file``); then, before the read, a FIFO took
    its place: opening it for reading would wait for a writer for ever."""
    job = make_job(tmp_path, probe_wasm)
    (tmp_path / job.module).unlink()
    os.mkfifo(tmp_path / job.module)
    refused: list[BaseException] = []

    def read() -> None:
        try:
            runtime._read_module(job, tmp_path / job.module)
        except BaseException as error:  # noqa: BLE001 - handed to the test's thread
            refused.append(error)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=30)
    if reader.is_alive():  # let the blocked open return, so no thread is left behind
        os.close(os.open(tmp_path / job.module, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(timeout=30)
        pytest.fail("the read waited for a writer")
    assert isinstance(refused[0], InputError) and refused[0].rule_id == "module.missing"


def test_changed_module_bytes_are_refused(runtime: Runtime, tmp_path: Path, probe_wasm: bytes) -> None:
    job = make_job(tmp_path, probe_wasm)
    (tmp_path / job.module).write_bytes(probe_wasm + b"\x00")
    with pytest.raises(PolicyDenied) as caught:
        runtime.load_module(job, tmp_path)
    assert caught.value.rule_id == "module.digest-changed"
    assert caught.value.violations[0].expected == job.module_sha256


def test_missing_module_file(runtime: Runtime, tmp_path: Path, probe_wasm: bytes) -> None:
    job = make_job(tmp_path, probe_wasm)
    (tmp_path / job.module).unlink()
    with pytest.raises(InputError) as caught:
        runtime.run(job, tmp_path)
    assert caught.value.rule_id == "module.missing"


def test_invalid_module_bytes(runtime: Runtime, tmp_path: Path) -> None:
    with pytest.raises(InputError) as caught:
        runtime.load_module(make_job(tmp_path, b"\x00asm\x01\x00\x00\x00\xff"), tmp_path)
    assert caught.value.rule_id == "module.invalid"


def test_check_mounts_resolves_exact_directories(tmp_path: Path, probe_wasm: bytes) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    job = make_job(tmp_path, probe_wasm, mounts=(("a/b", "/b", "ro"), ("a", "/a", "rw")))
    assert check_mounts(job, tmp_path) == [
        (tmp_path.resolve() / "a" / "b", "/b", "ro"),
        (tmp_path / "a", "/a", "rw"),
    ]


@pytest.mark.parametrize(
    ("setup", "rule"),
    [
        (lambda root: None, "mount.missing"),
        (lambda root: (root / "m").write_text("a file"), "mount.missing"),
        (lambda root: (root / "m").symlink_to(root / "real"), "mount.changed"),
        (lambda root: (root / "m").symlink_to("real"), "mount.changed"),
    ],
    ids=["missing", "file", "abs-link", "rel-link-inside-root"],
)
def test_check_mounts_denies(tmp_path: Path, probe_wasm: bytes, setup: object, rule: str) -> None:
    (tmp_path / "real").mkdir()
    setup(tmp_path)  # type: ignore[operator]
    job = make_job(tmp_path, probe_wasm, mounts=(("m", "/m", "ro"),))
    with pytest.raises(PolicyDenied) as caught:
        check_mounts(job, tmp_path)
    assert caught.value.rule_id == rule
    assert caught.value.location is not None and caught.value.location.pointer == "/fs/0/host"


def test_link_in_a_parent_component_is_denied(tmp_path: Path, probe_wasm: bytes) -> None:
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "via").symlink_to("real")
    job = make_job(tmp_path, probe_wasm, mounts=(("via/sub", "/m", "ro"),))
    with pytest.raises(PolicyDenied) as caught:
        check_mounts(job, tmp_path)
    assert caught.value.rule_id == "mount.changed"


def test_rw_mount_may_not_contain_the_module_cache(tmp_path: Path, probe_wasm: bytes) -> None:
    (tmp_path / "out").mkdir()
    with Runtime(cache_dir=tmp_path / "out" / "cache") as runtime:
        ro = make_job(tmp_path, probe_wasm, mounts=(("out", "/out", "ro"),))
        assert runtime.run(ro, tmp_path).exit_code == 0
        rw = make_job(tmp_path, probe_wasm, mounts=(("out", "/out", "rw"),))
        with pytest.raises(PolicyDenied) as caught:
            runtime.run(rw, tmp_path)
    assert caught.value.rule_id == "mount.protected"
    with pytest.raises(PolicyDenied):
        check_mounts(rw, tmp_path, protected=[tmp_path / "out" / "audit"])
    (tmp_path / "out" / "inner").mkdir()
    inside = make_job(tmp_path, probe_wasm, mounts=(("out/inner", "/in", "rw"),))
    with pytest.raises(PolicyDenied) as caught:  # a rw mount inside a protected folder is refused too
        check_mounts(inside, tmp_path, protected=[tmp_path / "out"])
    assert caught.value.rule_id == "mount.protected"
    assert check_mounts(inside, tmp_path, protected=[tmp_path / "elsewhere"])


def test_engines_per_configuration(runtime: Runtime, tmp_path: Path, probe_wasm: bytes) -> None:
    plain = make_job(tmp_path, probe_wasm)
    fueled = make_job(tmp_path, probe_wasm, fuel=10**9)
    deeper = make_job(tmp_path, probe_wasm, stack=1 << 20)
    assert [runtime.load_module(job, tmp_path) for job in (plain, fueled, deeper, fueled)] == [
        "compiled",
        "compiled",
        "compiled",
        "memory",
    ]
    assert EngineKey.for_limits(fueled.limits) == EngineKey(fuel=True, stack=512 << 10)


def test_closed_runtime_refuses_work(tmp_path: Path, probe_wasm: bytes) -> None:
    runtime = Runtime(cache_dir=tmp_path / "cache")
    runtime.close()
    with pytest.raises(RuntimeError):
        runtime.run(make_job(tmp_path, probe_wasm), tmp_path)
