"""Escape attempts: each asserts the tool was contained AND the host is unchanged.

The guest is ``tests/fixtures/probe.wasm`` (source in ``tests/fixtures/src/probe.c``): every
command prints ``CMD ok`` or ``CMD denied errno=N`` and the program exits 1 on the first denial.
Every test runs twice: against that core module, and against the same program adapted to a WASI
preview-2 component (``tests/fixtures/components/probe.wasm``).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from conftest import make_job

from runner.errors import PolicyDenied
from runner.results import Outcome
from runner.sandbox import Runtime, check_mounts

SECRET = "top secret\n"
SOURCE = "original source\n"


def snapshot(top: Path) -> dict[str, tuple[str, bytes]]:
    """Every entry under ``top``: kind and content (file) or target (symlink); links not followed."""
    entries: dict[str, tuple[str, bytes]] = {}
    for folder, dirs, files in os.walk(top):
        for name in dirs + files:
            path = Path(folder, name)
            key = path.relative_to(top).as_posix()
            if path.is_symlink():
                entries[key] = ("link", os.readlink(path).encode())
            elif path.is_dir():
                entries[key] = ("dir", b"")
            else:
                entries[key] = ("file", path.read_bytes())
    return entries


@pytest.fixture(params=["module", "component"])
def probe_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def probe_wasm(probe_kind: str, probe_wasm: bytes, probe_component: bytes) -> bytes:
    """The core probe, or the same probe as a component (this file's tests run with both)."""
    return probe_component if probe_kind == "component" else probe_wasm


@pytest.fixture
def world(tmp_path: Path) -> Path:
    """``tmp/root`` (src ro content, out rw, secret.txt outside the mounts) and ``tmp/outside``."""
    root = tmp_path / "root"
    (root / "src" / "sub").mkdir(parents=True)
    (root / "src" / "a.txt").write_text(SOURCE)
    (root / "src" / "sub" / "b.txt").write_text(SOURCE)
    (root / "out").mkdir()
    (root / "secret.txt").write_text(SECRET)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text(SECRET)
    return root


RO = ("src", "/src", "ro")
RW = ("out", "/out", "rw")


def run_probe(runtime: Runtime, root: Path, wasm: bytes, *args: str, **kw: object) -> Outcome:
    return runtime.run(make_job(root, wasm, args=args, **kw), root)  # type: ignore[arg-type]


def contained(
    runtime: Runtime,
    world: Path,
    wasm: bytes,
    *args: str,
    mounts: tuple[tuple[str, str, str], ...] = (RO, RW),
) -> Outcome:
    """Run the probe; assert the OS refused the last command and nothing changed on the host."""
    (world / "modules").mkdir(exist_ok=True)
    make_job(world, wasm)  # writes the module file, so the snapshot below already has it
    before = snapshot(world.parent)
    outcome = run_probe(runtime, world, wasm, *args, mounts=mounts)
    assert outcome.exit_code == 1, outcome
    assert b" denied errno=" in outcome.stdout.splitlines()[-1], outcome.stdout
    assert snapshot(world.parent) == before
    return outcome


# --- paths out of a mount -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/src/../secret.txt",
        "/src/../../outside/secret.txt",
        "/src/sub/../../secret.txt",
        "/out/../secret.txt",
        "/secret.txt",
        "/etc/passwd",
        "../secret.txt",
        "secret.txt",
    ],
)
def test_read_outside_mounts_is_refused(runtime: Runtime, world: Path, probe_wasm: bytes, path: str) -> None:
    outcome = contained(runtime, world, probe_wasm, "read", path)
    assert SECRET.encode() not in outcome.stdout


@pytest.mark.parametrize("path", ["/out/../secret.txt", "/out/../../outside/secret.txt", "/src/../out/x"])
def test_write_outside_mounts_is_refused(runtime: Runtime, world: Path, probe_wasm: bytes, path: str) -> None:
    contained(runtime, world, probe_wasm, "write", path, "pwned")


def test_symlink_inside_mount_pointing_outside_is_not_followed(
    runtime: Runtime, world: Path, probe_wasm: bytes
) -> None:
    (world / "src" / "rel").symlink_to("../secret.txt")
    (world / "src" / "abs").symlink_to(world / "secret.txt")
    (world / "out" / "up").symlink_to("../../outside")
    for args in (
        ("read", "/src/rel"),
        ("read", "/src/abs"),
        ("read", "/out/up/secret.txt"),
        ("write", "/out/up/secret.txt", "pwned"),
    ):
        outcome = contained(runtime, world, probe_wasm, *args)
        assert SECRET.encode() not in outcome.stdout


def test_no_mounts_means_no_filesystem(runtime: Runtime, world: Path, probe_wasm: bytes) -> None:
    for args in (("read", "/etc/passwd"), ("readdir", "/"), ("readdir", "."), ("creat", "/tmp/x")):
        contained(runtime, world, probe_wasm, *args, mounts=())


# --- a read-only mount stays read-only ----------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("write", "/src/a.txt", "pwned"),
        ("append", "/src/a.txt", "pwned"),
        ("creat", "/src/new.txt"),
        ("unlink", "/src/a.txt"),
        ("rename", "/src/a.txt", "/src/b.txt"),
        ("rename", "/src/sub", "/src/moved"),
        ("mkdir", "/src/newdir"),
        ("rmdir", "/src/sub"),
        ("symlink", "a.txt", "/src/link"),
        ("link", "/src/a.txt", "/src/hard"),
        ("touch", "/src/a.txt"),
        ("ftrunc", "/src/a.txt"),
    ],
    ids=lambda args: args[0] + ("-dir" if "sub" in " ".join(args) else ""),
)
def test_ro_mount_refuses_changes(
    runtime: Runtime, world: Path, probe_wasm: bytes, args: tuple[str, ...]
) -> None:
    contained(runtime, world, probe_wasm, *args)


# --- known Wasmtime filesystem advisories, as regression tests -------------------------------------


@pytest.mark.parametrize("command", ["trunc", "trunc-ro"])
def test_advisory_open_with_o_trunc_on_ro_mount(
    runtime: Runtime, world: Path, probe_wasm: bytes, command: str
) -> None:
    contained(runtime, world, probe_wasm, command, "/src/a.txt")
    assert (world / "src" / "a.txt").read_text() == SOURCE


@pytest.mark.parametrize("command", ["link", "rename"])
def test_advisory_link_or_rename_from_ro_into_rw_then_write(
    runtime: Runtime, world: Path, probe_wasm: bytes, command: str
) -> None:
    contained(runtime, world, probe_wasm, command, "/src/a.txt", "/out/a.txt", "write", "/out/a.txt", "pwned")
    assert not (world / "out" / "a.txt").exists()
    assert (world / "src" / "a.txt").read_text() == SOURCE


@pytest.mark.parametrize(
    "args",
    [
        ("write", "/src/a.txt/", "pwned"),
        ("trunc", "/src/a.txt/"),
        ("creat", "/src/new/"),
        ("mkdir", "/src/newdir/"),
        ("unlink", "/src/a.txt/"),
        ("rmdir", "/src/sub/"),
        ("rename", "/src/a.txt/", "/out/a.txt"),
        ("creat", "/out/new.txt/"),
        ("read", "/src/../secret.txt/"),
    ],
    ids=lambda args: f"{args[0]}:{args[1]}",
)
def test_advisory_trailing_slash_paths(
    runtime: Runtime, world: Path, probe_wasm: bytes, args: tuple[str, ...]
) -> None:
    contained(runtime, world, probe_wasm, *args)


@pytest.mark.parametrize(
    "args",
    [
        ("symlink", "/etc/passwd", "/out/abs"),
        ("symlink", "../src/a.txt", "/out/l", "write", "/out/l", "pwned"),
        ("symlink", "../src/a.txt", "/out/l", "trunc", "/out/l"),
        ("symlink", "../../secret.txt", "/out/l", "read", "/out/l"),
        ("symlink", "../../secret.txt", "/out/l", "read", "/out/l/"),
    ],
    ids=lambda args: f"{args[1]}->{args[2]}:{args[3] if len(args) > 3 else 'create'}",
)
def test_advisory_symlink_paths(
    runtime: Runtime, world: Path, probe_wasm: bytes, args: tuple[str, ...]
) -> None:
    (world / "modules").mkdir(exist_ok=True)
    make_job(world, probe_wasm)
    before = snapshot(world.parent)
    outcome = run_probe(runtime, world, probe_wasm, *args, mounts=(RO, RW))
    assert outcome.exit_code == 1, outcome.stdout
    assert SECRET.encode() not in outcome.stdout
    assert (world / "src" / "a.txt").read_text() == SOURCE
    after = snapshot(world.parent)
    # The only change allowed is the guest's own symlink inside the rw mount.
    assert {k: v for k, v in after.items() if k != "root/out/l"} == before


def test_planted_symlink_in_rw_mount_is_refused_as_a_later_mount(
    runtime: Runtime, world: Path, probe_wasm: bytes
) -> None:
    first = run_probe(runtime, world, probe_wasm, "symlink", "../../etc", "/out/link", mounts=(RW,))
    assert first.exit_code == 0, first.stdout
    assert os.readlink(world / "out" / "link") == "../../etc"  # it lands on the host: hence the check
    later = make_job(world, probe_wasm, args=("readdir", "/etc"), mounts=(("out/link", "/etc", "ro"),))
    with pytest.raises(PolicyDenied) as caught:
        check_mounts(later, world)
    assert caught.value.rule_id == "mount.changed"
    assert caught.value.location is not None and caught.value.location.pointer == "/fs/0/host"
    with pytest.raises(PolicyDenied) as again:
        runtime.run(later, world)
    assert again.value.rule_id == "mount.changed"


# --- environment ------------------------------------------------------------------------------


def test_host_environment_is_not_inherited(
    runtime: Runtime, world: Path, probe_wasm: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANDRUN_TEST_SECRET", "leaked")
    outcome = run_probe(
        runtime, world, probe_wasm, "env", "getenv", "SANDRUN_TEST_SECRET", env=(("LANG", "C"),)
    )
    assert outcome.exit_code == 1
    assert outcome.stdout.splitlines() == [b"env LANG=C", b"getenv (unset)"]


# --- resource limits --------------------------------------------------------------------------


def test_infinite_loop_times_out(runtime: Runtime, world: Path, probe_wasm: bytes) -> None:
    started = time.monotonic()
    outcome = run_probe(runtime, world, probe_wasm, "spin", timeout_ms=300)
    assert (outcome.trap, outcome.exit_code) == ("timeout", None)
    assert time.monotonic() - started < 5  # generous: the machine is shared


# Modules only: a component's preview-2 sleep is a host call that nothing in-process cuts short;
# the worker's hard kill ends it (tests/cli/test_cli_components.py runs that in a worker).
@pytest.mark.parametrize("probe_kind", ["module"])
def test_sleeping_an_hour_stops_at_the_timeout(runtime: Runtime, world: Path, probe_wasm: bytes) -> None:
    started = time.monotonic()
    outcome = run_probe(
        runtime, world, probe_wasm, "sleep", "3600", "write", "/out/after", "x", mounts=(RW,), timeout_ms=1000
    )
    elapsed = time.monotonic() - started
    assert outcome.trap == "timeout", outcome
    assert 0.9 < elapsed < 10, elapsed  # a 1 s timeout (~1.02 s); generous: the machine is shared
    assert not (world / "out" / "after").exists()


def test_fuel_exhaustion(runtime: Runtime, world: Path, probe_wasm: bytes) -> None:
    outcome = run_probe(runtime, world, probe_wasm, "spin", fuel=5_000_000)
    assert outcome.trap == "out_of_fuel"
    assert outcome.fuel_used == 5_000_000


def test_memory_growth_past_the_cap(
    runtime: Runtime, world: Path, probe_wasm: bytes, probe_kind: str
) -> None:
    outcome = run_probe(runtime, world, probe_wasm, "alloc", "64", memory=8 << 20)
    assert b"alloc failed" in outcome.stdout
    failed_after_kib = int(outcome.stdout.split()[3])
    assert failed_after_kib < 8 << 10
    if probe_kind == "component":  # its memory is out of reach: the guest's own failure, no peak
        assert (outcome.exit_code, outcome.memory_peak) == (1, None), outcome
    else:
        assert outcome.trap == "memory", outcome
        assert outcome.memory_peak is not None and outcome.memory_peak <= 8 << 20


def test_deep_recursion_overflows_the_stack(runtime: Runtime, world: Path, probe_wasm: bytes) -> None:
    outcome = run_probe(runtime, world, probe_wasm, "recurse", stack=256 << 10)
    assert outcome.trap == "stack_overflow"


def test_stdout_flood_is_capped_and_memory_stays_bounded(
    runtime: Runtime, world: Path, probe_wasm: bytes
) -> None:
    from runner.sandbox import _thread_captures

    flood = 1 << 30
    stdout_capture = _thread_captures()[0]  # the memfd this thread's jobs write stdout to
    peak = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, os.fstat(stdout_capture.fd).st_blocks * 512)
            time.sleep(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        outcome = run_probe(runtime, world, probe_wasm, "flood", str(flood), output=4096, timeout_ms=60_000)
    finally:
        done.set()
        watcher.join()
    assert outcome.exit_code == 0
    assert outcome.stdout == b"x" * 4096
    assert (outcome.stdout_dropped, outcome.stdout_truncated) == (flood - 4096, True)
    assert peak < 256 << 20, f"the capture held {peak} bytes at once"


def test_non_zero_exit(runtime: Runtime, world: Path, probe_wasm: bytes, probe_kind: str) -> None:
    outcome = run_probe(runtime, world, probe_wasm, "exit", "7")
    # the preview-1 adapter collapses a component's exit code to 1 (docs/components.md)
    assert (outcome.exit_code, outcome.trap) == (1 if probe_kind == "component" else 7, None)
