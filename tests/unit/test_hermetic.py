"""Hermetic mode: the virtual WASI functions (hostile pointers included), the world, mount digests."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from conftest import make_job
from wasmtime import wat2wasm

from runner import hermetic
from runner.errors import InputError
from runner.plan import Hermetic
from runner.sandbox import Runtime

WORLD = Hermetic(epoch_ns=5_000_000_000, tick_ns=1000, seed=42)

# Each export calls one WASI function with the arguments a hostile guest picks and returns its errno.
CALLS = wat2wasm(
    """
(module
  (import "wasi_snapshot_preview1" "clock_time_get" (func $time (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_res_get" (func $res (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "time") (param i32) (result i32 i64)
    (call $time (local.get 0) (i64.const 0) (i32.const 64)) (i64.load (i32.const 64)))
  (func (export "time_at") (param i32) (result i32) (call $time (i32.const 0) (i64.const 0) (local.get 0)))
  (func (export "res") (param i32) (result i32) (call $res (local.get 0) (i32.const 64)))
  (func (export "random") (param i32 i32) (result i32) (call $random (local.get 0) (local.get 1)))
  (func (export "random_word") (result i64)
    (drop (call $random (i32.const 64) (i32.const 8))) (i64.load (i32.const 64)))
  ;; one relative clock subscription of $1 ns at 128; events at 256; count at 512
  (func (export "sleep") (param i64) (result i32 i64)
    (i32.store8 (i32.const 136) (i32.const 0))
    (i32.store (i32.const 144) (i32.const 1))
    (i64.store (i32.const 152) (local.get 0))
    (call $poll (i32.const 128) (i32.const 256) (i32.const 1) (i32.const 512))
    (drop (call $time (i32.const 1) (i64.const 0) (i32.const 64)))
    (i64.load (i32.const 64)))
  (func (export "poll_many") (param i32) (result i32)
    (call $poll (i32.const 128) (i32.const 256) (local.get 0) (i32.const 512))))
"""
)


def _call(runtime: Runtime, root: Path, export: str, *args: str) -> tuple[str, ...]:
    job = dataclasses.replace(make_job(root, bytes(CALLS), invoke=export, args=args), hermetic=WORLD)
    outcome = runtime.run(job, root)
    assert outcome.invoke_results is not None, outcome.trap_message
    return outcome.invoke_results


def test_clocks_start_at_the_plan_epoch_and_tick_per_read(runtime: Runtime, tmp_path: Path) -> None:
    assert _call(runtime, tmp_path, "time", "0") == ("0", str(5_000_000_000 + 1000))
    assert _call(runtime, tmp_path, "time", "1") == ("0", "1000")  # monotonic: a fresh world per job
    assert _call(runtime, tmp_path, "res", "1") == ("0",)


def test_sleep_is_instant_and_moves_the_clock(runtime: Runtime, tmp_path: Path) -> None:
    hour = str(3600 * 10**9)
    assert _call(runtime, tmp_path, "sleep", hour) == ("0", str(3600 * 10**9 + 1000))


def test_random_stream_is_the_seeds(runtime: Runtime, tmp_path: Path) -> None:
    first = _call(runtime, tmp_path, "random_word")
    assert first == _call(runtime, tmp_path, "random_word")
    expected = int.from_bytes(hermetic.VirtualWorld(WORLD).random_bytes(8), "little", signed=True)
    assert first == (str(expected),)


@pytest.mark.parametrize(
    ("export", "args", "errno"),
    [
        ("time", ("9",), "28"),  # no such clock
        ("time", ("-1",), "28"),
        ("time_at", ("-4",), "21"),  # a pointer past the end of memory (signed i32)
        ("time_at", ("65532",), "21"),  # 8 bytes from 4 before the end
        ("res", ("7",), "28"),
        ("random", ("-16", "32"), "21"),
        ("random", ("0", "-1"), "21"),  # 4 GiB asked: refused before drawing a byte
        ("random", ("65535", "2"), "21"),
        ("poll_many", ("0",), "28"),
        ("poll_many", ("100000",), "21"),
    ],
)
def test_hostile_arguments_get_an_errno(
    runtime: Runtime, tmp_path: Path, export: str, args: tuple[str, ...], errno: str
) -> None:
    assert _call(runtime, tmp_path, export, *args)[0] == errno


def test_a_plain_job_keeps_the_native_clock(runtime: Runtime, tmp_path: Path) -> None:
    outcome = runtime.run(make_job(tmp_path, bytes(CALLS), invoke="time", args=("0",)), tmp_path)
    assert outcome.invoke_results is not None
    assert int(outcome.invoke_results[1]) > 1_600_000_000 * 10**9  # the real time


def test_settings_seed_and_epoch() -> None:
    assert hermetic.settings("a/b", True, {}).seed == hermetic.settings("a/b", True, {}).seed
    assert hermetic.settings("a/b", True, {}).seed != hermetic.settings("a/c", True, {}).seed
    assert hermetic.settings("a/b", {"seed": 9}, {}).seed == 9
    assert hermetic.settings("a/b", True, {"SOURCE_DATE_EPOCH": "10"}).epoch_ns == 10**10
    assert hermetic.settings("a/b", True, {}).epoch_ns == hermetic.DEFAULT_EPOCH_S * 10**9
    for bad in ("-1", "1e9", "", "١٢"):
        with pytest.raises(ValueError):
            hermetic.settings("a/b", True, {"SOURCE_DATE_EPOCH": bad})


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_tree_digest_depends_on_content_not_on_creation_order(tmp_path: Path) -> None:
    one = hermetic.digest_tree(_tree(tmp_path / "a", {"x": "1", "d/y": "2"}))
    two = hermetic.digest_tree(_tree(tmp_path / "b", {"d/y": "2", "x": "1"}))
    assert one == two and set(one.files) == {"x", "d/y"}
    (tmp_path / "b" / "d" / "y").write_text("3")
    assert hermetic.digest_tree(tmp_path / "b").sha256 != one.sha256
    (tmp_path / "b" / "d" / "y").write_text("2")
    (tmp_path / "b" / "d" / "empty").mkdir()
    assert hermetic.digest_tree(tmp_path / "b").sha256 != one.sha256  # an empty folder counts


def test_symlinks_are_recorded_not_followed_and_fifos_not_opened(tmp_path: Path) -> None:
    outside = _tree(tmp_path / "outside", {"secret": "s"})
    mount = _tree(tmp_path / "m", {"f": "1"})
    (mount / "link").symlink_to(outside / "secret")
    os.mkfifo(mount / "pipe")  # opening it would block
    tree = hermetic.digest_tree(mount)
    assert tree.files["link"].startswith("link:") and tree.files["pipe"].startswith("other:")
    (outside / "secret").write_text("changed")
    assert hermetic.digest_tree(mount) == tree
    link_root = tmp_path / "linked"
    link_root.symlink_to(mount)
    with pytest.raises(OSError):
        hermetic.digest_tree(link_root)


def test_digests_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mount = _tree(tmp_path / "m", {f"f{i}": "x" for i in range(5)})
    monkeypatch.setattr(hermetic, "MAX_FILES", 4)
    with pytest.raises(InputError) as caught:
        hermetic.digest_tree(mount)
    assert caught.value.violations[0].rule_id == "hermetic.tree-too-large"
    monkeypatch.setattr(hermetic, "MAX_FILES", 100)
    monkeypatch.setattr(hermetic, "MAX_BYTES", 4)
    with pytest.raises(InputError):
        hermetic.digest_tree(mount)
