"""The batch executor: statuses, needs, fail-fast, Ctrl-C, rw serialisation, parallelism, mount checks."""

from __future__ import annotations

import dataclasses
import gc
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from conftest import make_job

from runner.errors import InputError
from runner.executor import BatchOptions, BatchResult, run_plan, status_for
from runner.plan import JobSpec, Plan, PolicyRef
from runner.progress import ProgressEvent
from runner.results import Outcome

EXIT = """(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32.const {code}))))"""

# Counts to N: a CPU-bound guest with no host calls at all.
LOOP = """(module
  (memory (export "memory") 1)
  (func (export "_start") (local i64)
    (loop $l
      (local.set 0 (i64.add (local.get 0) (i64.const 1)))
      (br_if $l (i64.lt_u (local.get 0) (i64.const {n}))))))"""

SPIN = """(module (memory (export "memory") 1) (func (export "_start") (loop $l (br $l))))"""

TRAP = (
    """(module (memory (export "memory") 1) (func $boom unreachable) (func (export "_start") (call $boom)))"""
)

POLICY = PolicyRef(name="test", path="policy.yaml", sha256="0" * 64, git_commit=None)


def wat(text: str, **values: Any) -> bytes:
    return bytes(wasmtime.wat2wasm(text.format(**values)))


def job(
    root: Path, wasm: bytes, name: str, *, needs: Iterable[str] = (), expect: int = 0, **kw: Any
) -> JobSpec:
    spec = make_job(root, wasm, name=name, **kw)
    return dataclasses.replace(spec, needs=tuple(f"tests/{n}" for n in needs), expect_exit_code=expect)


def plan_of(*jobs: JobSpec) -> Plan:
    return Plan(policy=POLICY, inputs=(), tools=(), jobs=tuple(jobs))


class Recorder:
    """An event sink that keeps (time, kind, data) and can act on an event."""

    def __init__(self, action: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.events: list[tuple[float, str, dict[str, Any]]] = []
        self.action = action

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        self.events.append((time.monotonic(), kind, data))
        if self.action is not None:
            self.action(kind, data)

    def order(self) -> list[tuple[str, str]]:
        """(kind, job id) of the job events, in the order they were recorded."""
        out = []
        for _, kind, data in self.events:
            if kind == "job.started":
                out.append((kind, data["id"]))
            elif kind == "job.finished":
                out.append((kind, f"{data['manifest']}/{data['name']}"))
        return out

    def at(self, kind: str, job_id: str) -> float:
        return next(t for t, k, _ in self.events if k == kind and _event_id(k, _) == job_id)

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [d for _, k, d in self.events if k == kind]


def _event_id(kind: str, data: dict[str, Any]) -> str:
    return data["id"] if kind == "job.started" else f"{data['manifest']}/{data['name']}"


def run(
    root: Path,
    plan: Plan,
    *,
    sink: Recorder | None = None,
    cancel: threading.Event | None = None,
    outputs: dict[str, Outcome] | None = None,
    **options: Any,
) -> BatchResult:
    """Run ``plan``; each job's outcome lands in ``outputs`` (by job id) as the job ends."""
    opts = BatchOptions(**{"jobs": 2, "cache_dir": root / "cache", **options})

    def keep(job: JobSpec, outcome: Outcome) -> None:
        if outputs is not None:
            outputs[job.id] = outcome

    return run_plan(plan, root, opts, on_event=sink or Recorder(), on_output=keep, cancel=cancel)


def by_name(result: BatchResult) -> dict[str, Any]:
    return {r.name: r for r in result.results}


# -- status_for -------------------------------------------------------------------------------


def _outcome(**kw: Any) -> Outcome:
    base: dict[str, Any] = dict(exit_code=None, trap=None, trap_message=None, fuel_used=None, memory_peak=0,
                                wall_ms=1, stdout=b"", stderr=b"")  # fmt: skip
    return Outcome(**{**base, **kw})


def test_status_for_passes_on_the_expected_exit_code(tmp_path: Path) -> None:
    spec = job(tmp_path, wat(EXIT, code=0), "a", expect=3)
    assert status_for(spec, _outcome(exit_code=3)) == ("passed", None)
    assert status_for(spec, _outcome(exit_code=0)) == ("failed", "exit code 0, expected 3")


def test_status_for_a_trap_never_passes_and_its_message_is_sanitised(tmp_path: Path) -> None:
    spec = job(tmp_path, wat(EXIT, code=0), "a")
    status, reason = status_for(spec, _outcome(trap="trap", trap_message="\x1b[31m::error::pwned\nx"))
    assert status == "failed"
    assert reason is not None and reason.startswith("trap: trap (")
    assert "\x1b" not in reason and "::" not in reason and "\n" not in reason
    assert status_for(spec, _outcome(trap="out_of_fuel")) == ("failed", "trap: out_of_fuel")


# -- results ----------------------------------------------------------------------------------


def test_results_in_plan_order_with_exit_codes_traps_and_outputs(tmp_path: Path) -> None:
    sink = Recorder()
    plan = plan_of(
        job(tmp_path, wat(EXIT, code=0), "ok"),
        job(tmp_path, wat(EXIT, code=3), "three"),
        job(tmp_path, wat(EXIT, code=3), "expected-three", expect=3),
        job(tmp_path, wat(TRAP), "trap"),
        job(tmp_path, wat(LOOP, n=10**9), "fuel", fuel=10_000),
    )
    outputs: dict[str, Outcome] = {}
    result = run(tmp_path, plan, sink=sink, outputs=outputs)
    assert [r.name for r in result.results] == ["ok", "three", "expected-three", "trap", "fuel"]
    rows = by_name(result)
    assert (rows["ok"].status, rows["ok"].exit_code, rows["ok"].reason) == ("passed", 0, None)
    assert (rows["three"].status, rows["three"].reason) == ("failed", "exit code 3, expected 0")
    assert rows["expected-three"].status == "passed"
    assert (rows["trap"].status, rows["trap"].trap) == ("failed", "trap")
    assert (rows["fuel"].trap, rows["fuel"].fuel_used) == ("out_of_fuel", 10_000)
    assert rows["ok"].stdout_sha256 == outputs["tests/ok"].stdout_sha256
    assert set(outputs) == {r.id for r in result.results}
    assert not result.interrupted
    finished = sink.kinds("job.finished")
    assert sorted(d["index"] for d in finished) == [0, 1, 2, 3, 4]
    assert {"trap_message", "invoke_results", "stdout_dropped", "stderr_dropped"} <= set(finished[0])
    started = sink.kinds("job.started")[0]
    assert set(started) == {"id", "index", "module_sha256", "limits", "mounts", "fs_scope"}
    deployed = sink.kinds("tool.deployed")
    assert len(deployed) == 4 and {d["source"] for d in deployed} <= {"compiled", "memory", "disk"}


def test_the_heap_is_frozen_during_the_batch_only_and_a_hosts_freeze_is_kept(tmp_path: Path) -> None:
    """run_plan freezes the long-lived heap while jobs run, then gives the collector it back; a
    host process that froze objects itself (before forking, say) finds them still frozen."""
    counts: list[int] = []
    sink = Recorder(
        lambda kind, data: counts.append(gc.get_freeze_count()) if kind == "job.started" else None
    )
    plan = plan_of(job(tmp_path, wat(EXIT, code=0), "ok"))
    assert gc.get_freeze_count() == 0
    run(tmp_path, plan, sink=sink)
    assert counts[0] > 0 and gc.get_freeze_count() == 0
    gc.freeze()
    try:
        run(tmp_path, plan, sink=Recorder())
        assert gc.get_freeze_count() > 0  # unfreeze() would have emptied it
    finally:
        gc.unfreeze()


def test_modules_are_loaded_before_any_job_starts(tmp_path: Path) -> None:
    sink = Recorder()
    run(
        tmp_path,
        plan_of(job(tmp_path, wat(EXIT, code=0), "a"), job(tmp_path, wat(EXIT, code=1), "b")),
        sink=sink,
    )
    kinds = [k for _, k, _ in sink.events]
    assert kinds[:2] == ["tool.deployed", "tool.deployed"]
    # a second batch finds the compiled modules in the disk cache
    again = Recorder()
    run(tmp_path, plan_of(job(tmp_path, wat(EXIT, code=0), "a")), sink=again)
    assert again.kinds("tool.deployed")[0]["source"] == "disk"


def test_a_module_whose_bytes_changed_is_denied_and_the_others_run(tmp_path: Path) -> None:
    changed = job(tmp_path, wat(EXIT, code=0), "changed")
    (tmp_path / changed.module).write_bytes(wat(EXIT, code=1))
    sink = Recorder()
    result = by_name(
        run(tmp_path, plan_of(changed, job(tmp_path, wat(EXIT, code=7), "other", expect=7)), sink=sink)
    )
    assert result["changed"].status == "denied"
    assert result["changed"].reason.startswith("[module.digest-changed]")
    assert result["other"].status == "passed"
    assert [d["rule_id"] for d in sink.kinds("tool.denied")] == ["module.digest-changed"]


def test_an_internal_error_is_that_jobs_result_not_an_exception(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runner import sandbox

    real = sandbox.Runtime.run

    def flaky(self: Any, spec: JobSpec, root: Path, **kw: Any) -> Outcome:
        if spec.name == "broken":
            raise RuntimeError("boom")
        if spec.name == "input":
            raise InputError.one("stdin.missing", "gone")
        return real(self, spec, root, **kw)

    monkeypatch.setattr(sandbox.Runtime, "run", flaky)
    plan = plan_of(*(job(tmp_path, wat(EXIT, code=0), n) for n in ("broken", "input", "fine")))
    rows = by_name(run(tmp_path, plan, isolation="threads"))  # the patch lives in this process only
    assert (rows["broken"].status, rows["broken"].reason) == ("failed", "internal error: RuntimeError: boom")
    assert (rows["input"].status, rows["input"].reason) == ("failed", "[stdin.missing] gone")
    assert rows["fine"].status == "passed"


def test_looking_for_a_job_to_queue_costs_the_same_whatever_the_number_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread that cannot queue (isolation ``threads``) asks about a few ready jobs per pick, not
    every ready one: 300 jobs once cost 45,000 checks, quadratic in the batch."""
    from runner import worker

    asked: list[int] = []
    monkeypatch.setattr(worker._ThreadRunner, "can_queue", lambda self, index: asked.append(index) or False)
    wasm = wat(EXIT, code=0)
    plan = plan_of(*(job(tmp_path, wasm, f"j{i}") for i in range(300)))
    rows = by_name(run(tmp_path, plan, isolation="threads", jobs=1))
    assert {row.status for row in rows.values()} == {"passed"} and len(rows) == 300
    assert 0 < len(asked) <= 8 * 300


def test_a_failing_event_sink_stops_the_batch_and_is_raised(tmp_path: Path) -> None:
    def explode(kind: str, data: dict[str, Any]) -> None:
        if kind == "job.started":
            raise OSError("disk full")

    plan = plan_of(*(job(tmp_path, wat(EXIT, code=0), f"j{i}") for i in range(4)))
    with pytest.raises(OSError, match="disk full"):
        run(tmp_path, plan, sink=Recorder(explode), jobs=1)


def test_a_failing_output_sink_stops_the_batch_and_is_raised(tmp_path: Path) -> None:
    ran: list[str] = []

    def full_disk(job: JobSpec, outcome: Outcome) -> None:
        ran.append(job.name)
        raise OSError("no space for logs")

    plan = plan_of(*(job(tmp_path, wat(EXIT, code=0), f"j{i}") for i in range(4)))
    sink = Recorder()
    with pytest.raises(OSError, match="no space for logs"):
        run_plan(
            plan,
            tmp_path,
            BatchOptions(jobs=1, cache_dir=tmp_path / "cache"),
            on_event=sink,
            on_output=full_disk,
        )
    assert ran == ["j0"]  # no other output was taken once one could not be kept
    # nothing started after: only j1, queued behind j0 (pipelined), may have begun already
    started = [data["id"] for data in sink.kinds("job.started")]
    assert started in (["tests/j0"], ["tests/j0", "tests/j1"])


def test_batch_options_refuse_zero_workers() -> None:
    with pytest.raises(ValueError):
        BatchOptions(jobs=0)


def test_an_empty_plan_is_an_empty_result(tmp_path: Path) -> None:
    outputs: dict[str, Outcome] = {}
    result = run(tmp_path, plan_of(), outputs=outputs)
    assert result.results == () and outputs == {} and not result.interrupted


# -- needs ------------------------------------------------------------------------------------


def test_a_job_starts_only_after_its_needs_passed(tmp_path: Path) -> None:
    sink = Recorder()
    plan = plan_of(
        job(tmp_path, wat(EXIT, code=0), "last", needs=["first", "middle"]),
        job(tmp_path, wat(LOOP, n=20_000_000), "first"),
        job(tmp_path, wat(EXIT, code=0), "middle", needs=["first"]),
    )
    result = run(tmp_path, plan, sink=sink)
    assert all(r.status == "passed" for r in result.results)
    order = sink.order()
    assert order.index(("job.finished", "tests/first")) < order.index(("job.started", "tests/middle"))
    assert order.index(("job.finished", "tests/middle")) < order.index(("job.started", "tests/last"))


def test_failure_propagates_as_skips_naming_the_need(tmp_path: Path) -> None:
    sink = Recorder()
    plan = plan_of(
        job(tmp_path, wat(EXIT, code=1), "build"),
        job(tmp_path, wat(EXIT, code=0), "test", needs=["build"]),
        job(tmp_path, wat(EXIT, code=0), "deploy", needs=["test"]),
        job(tmp_path, wat(EXIT, code=0), "lint"),
    )
    rows = by_name(run(tmp_path, plan, sink=sink))
    assert rows["build"].status == "failed"
    assert (rows["test"].status, rows["test"].reason) == ("skipped", "needs tests/build (failed)")
    assert (rows["deploy"].status, rows["deploy"].reason) == ("skipped", "needs tests/test (skipped)")
    assert rows["lint"].status == "passed"
    assert {d["id"] for d in sink.kinds("job.started")} == {"tests/build", "tests/lint"}
    assert len(sink.kinds("job.finished")) == 4  # skipped jobs are recorded too


def test_a_plan_with_an_unknown_need_cannot_be_built(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown job"):
        plan_of(job(tmp_path, wat(EXIT, code=0), "a", needs=["ghost"]))


def test_a_hand_made_needs_cycle_is_skipped_not_hung(tmp_path: Path) -> None:
    plan = plan_of(
        job(tmp_path, wat(EXIT, code=0), "a", needs=["b"]),
        job(tmp_path, wat(EXIT, code=0), "b", needs=["a"]),
        job(tmp_path, wat(EXIT, code=0), "c"),
    )
    rows = by_name(run(tmp_path, plan))
    assert rows["a"].status == rows["b"].status == "skipped"
    assert rows["a"].reason is not None and "cycle" in rows["a"].reason
    assert rows["c"].status == "passed"


# -- fail-fast and Ctrl-C ---------------------------------------------------------------------


def test_by_default_every_job_runs_after_a_failure(tmp_path: Path) -> None:
    plan = plan_of(*(job(tmp_path, wat(EXIT, code=i % 2), f"j{i}") for i in range(4)))
    rows = run(tmp_path, plan, jobs=1).results
    assert [r.status for r in rows] == ["passed", "failed", "passed", "failed"]


def test_fail_fast_skips_pending_jobs(tmp_path: Path) -> None:
    plan = plan_of(
        job(tmp_path, wat(EXIT, code=1), "bad"),
        job(tmp_path, wat(EXIT, code=0), "after"),
        job(tmp_path, wat(EXIT, code=0), "later"),
    )
    rows = by_name(run(tmp_path, plan, jobs=1, fail_fast=True))
    assert rows["bad"].status == "failed"
    for name in ("after", "later"):
        assert (rows[name].status, rows[name].reason) == ("skipped", "fail-fast: tests/bad failed")


def test_fail_fast_cancels_running_jobs(tmp_path: Path) -> None:
    started = time.monotonic()
    plan = plan_of(
        job(tmp_path, wat(SPIN), "spinner", timeout_ms=60_000),
        job(tmp_path, wat(EXIT, code=2), "bad"),
    )
    rows = by_name(run(tmp_path, plan, jobs=2, fail_fast=True))
    assert time.monotonic() - started < 30  # nowhere near the spinner's 60 s timeout
    assert rows["bad"].status == "failed"
    assert rows["spinner"].status == "failed"
    assert rows["spinner"].trap == "timeout"
    assert rows["spinner"].reason.startswith("fail-fast: tests/bad failed (trap: timeout")


def test_ctrl_c_interrupts_running_jobs_and_skips_the_rest(tmp_path: Path) -> None:
    cancel = threading.Event()

    def press_ctrl_c(kind: str, data: dict[str, Any]) -> None:
        if kind == "job.started" and data["id"] == "tests/spinner":
            threading.Timer(0.2, cancel.set).start()

    plan = plan_of(
        job(tmp_path, wat(EXIT, code=0), "done-before"),
        job(tmp_path, wat(SPIN), "spinner", timeout_ms=60_000, needs=["done-before"]),
        job(tmp_path, wat(EXIT, code=0), "pending", needs=["spinner"]),
        job(tmp_path, wat(EXIT, code=0), "queued"),
    )
    began = time.monotonic()
    outputs: dict[str, Outcome] = {}
    result = run(tmp_path, plan, sink=Recorder(press_ctrl_c), cancel=cancel, jobs=1, outputs=outputs)
    assert time.monotonic() - began < 30
    rows = by_name(result)
    assert result.interrupted
    assert rows["done-before"].status == "passed"  # results so far are kept
    assert (rows["spinner"].status, rows["spinner"].trap) == ("failed", "timeout")
    assert rows["spinner"].reason.startswith("interrupted")
    assert "tests/spinner" in outputs
    # "queued" ran before the spinner (plan order, no needs) or was skipped: never lost
    assert rows["queued"].status in ("passed", "skipped")
    assert (rows["pending"].status, rows["pending"].reason) == ("skipped", "interrupted")


def test_cancel_before_the_start_skips_everything(tmp_path: Path) -> None:
    cancel = threading.Event()
    cancel.set()
    result = run(tmp_path, plan_of(job(tmp_path, wat(EXIT, code=0), "a")), cancel=cancel)
    assert result.interrupted
    assert [(r.status, r.reason) for r in result.results] == [("skipped", "interrupted")]


# -- mounts -----------------------------------------------------------------------------------

LOCK = ("creat", "/w/lock", "sleep", "1", "unlink", "/w/lock")


def test_jobs_sharing_a_rw_folder_never_overlap(tmp_path: Path, probe_wasm: bytes) -> None:
    """Each guest holds an O_EXCL lock file for a second: overlapping runs would make one fail."""
    (tmp_path / "data" / "sub").mkdir(parents=True)
    sink = Recorder()
    plan = plan_of(
        job(tmp_path, probe_wasm, "a", args=LOCK, mounts=(("data/sub", "/w", "rw"),)),
        job(tmp_path, probe_wasm, "b", args=LOCK, mounts=(("data/sub", "/w", "rw"),)),
        # the parent folder, read-only: it may see the lock, so it must not run beside a writer either
        job(tmp_path, probe_wasm, "c", args=("creat", "/w/sub/lock", "unlink", "/w/sub/lock"),
            mounts=(("data", "/w", "rw"),)),
    )  # fmt: skip
    result = run(tmp_path, plan, sink=sink, jobs=3)
    assert [r.status for r in result.results] == ["passed", "passed", "passed"], [
        r.reason for r in result.results
    ]
    spans = sorted(
        (sink.at("job.started", i), sink.at("job.finished", i)) for i in ("tests/a", "tests/b", "tests/c")
    )
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert end <= start


def test_a_ro_mount_inside_a_rw_one_is_serialised_too(tmp_path: Path, probe_wasm: bytes) -> None:
    (tmp_path / "data" / "sub").mkdir(parents=True)
    sink = Recorder()
    plan = plan_of(
        job(tmp_path, probe_wasm, "writer", args=("sleep", "1"), mounts=(("data", "/w", "rw"),)),
        job(tmp_path, probe_wasm, "reader", args=("sleep", "1"), mounts=(("data/sub", "/r", "ro"),)),
    )
    run(tmp_path, plan, sink=sink, jobs=2)
    assert sink.order() == [
        ("job.started", "tests/writer"),
        ("job.finished", "tests/writer"),
        ("job.started", "tests/reader"),
        ("job.finished", "tests/reader"),
    ]


def test_disjoint_or_read_only_mounts_run_side_by_side(tmp_path: Path, probe_wasm: bytes) -> None:
    for folder in ("a", "b", "shared"):
        (tmp_path / folder).mkdir()
    sink = Recorder()
    plan = plan_of(
        job(
            tmp_path,
            probe_wasm,
            "one",
            args=("sleep", "1"),
            mounts=(("a", "/w", "rw"), ("shared", "/s", "ro")),
        ),
        job(
            tmp_path,
            probe_wasm,
            "two",
            args=("sleep", "1"),
            mounts=(("b", "/w", "rw"), ("shared", "/s", "ro")),
        ),
    )
    run(tmp_path, plan, sink=sink, jobs=2)
    order = sink.order()
    assert [kind for kind, _ in order[:2]] == ["job.started", "job.started"]


def test_a_symlink_planted_by_an_earlier_job_denies_the_later_mount(
    tmp_path: Path, probe_wasm: bytes
) -> None:
    (tmp_path / "work").mkdir()
    secret = tmp_path.parent / f"{tmp_path.name}-outside"
    secret.mkdir()
    plan = plan_of(
        job(tmp_path, probe_wasm, "planter", args=("symlink", f"../../{secret.name}", "/w/link"),
            mounts=(("work", "/w", "rw"),)),
        job(tmp_path, probe_wasm, "victim", args=("creat", "/v/pwned"), mounts=(("work/link", "/v", "rw"),),
            needs=["planter"]),
        job(tmp_path, probe_wasm, "bystander", args=("argv",), needs=["planter"]),
    )  # fmt: skip
    rows = by_name(run(tmp_path, plan, jobs=1))
    assert rows["planter"].status == "passed"
    assert (tmp_path / "work" / "link").is_symlink()  # Wasmtime lets a guest leave one behind
    assert rows["victim"].status == "denied"
    assert rows["victim"].reason.startswith("[mount.changed]")
    assert rows["bystander"].status == "passed"
    assert list(secret.iterdir()) == []


def test_a_rw_mount_holding_a_protected_folder_is_denied(tmp_path: Path, probe_wasm: bytes) -> None:
    (tmp_path / "ws" / "out").mkdir(parents=True)
    plan = plan_of(
        job(
            tmp_path, probe_wasm, "around", args=("creat", "/w/out/audit.jsonl"), mounts=(("ws", "/w", "rw"),)
        ),
        job(tmp_path, probe_wasm, "exact", args=("argv",), mounts=(("ws/out", "/o", "rw"),)),
        job(tmp_path, probe_wasm, "reader", args=("readdir", "/w"), mounts=(("ws", "/w", "ro"),)),
    )
    rows = by_name(run(tmp_path, plan, protected_dirs=(tmp_path / "ws" / "out",)))
    for name in ("around", "exact"):
        assert rows[name].status == "denied"
        assert rows[name].reason.startswith("[mount.protected]")
    assert rows["reader"].status == "passed"
    assert not (tmp_path / "ws" / "out" / "audit.jsonl").exists()


# -- parallelism ------------------------------------------------------------------------------


def test_python_keeps_running_while_a_guest_computes(tmp_path: Path) -> None:
    """Wasmtime releases the GIL while WASM runs; this is what lets worker threads run in parallel.

    A Python thread samples the clock while a guest spins for a second: with the GIL held for the
    whole call it could not take a single sample in the middle of the run. Unlike a speed-up
    measurement, this holds on a loaded machine (the throughput figure is bench/'s job).
    """
    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(time.monotonic())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    sink = Recorder()
    try:
        run(tmp_path, plan_of(job(tmp_path, wat(SPIN), "spin", timeout_ms=1000)), sink=sink)
    finally:
        done.set()
        sampler.join()
    start, end = sink.at("job.started", "tests/spin") + 0.25, sink.at("job.finished", "tests/spin") - 0.25
    assert end - start > 0.3
    assert sum(start < t < end for t in samples) >= 5


def test_two_cpu_bound_jobs_on_two_workers_overlap(tmp_path: Path) -> None:
    sink = Recorder()
    spin = wat(SPIN)
    plan = plan_of(job(tmp_path, spin, "x", timeout_ms=1000), job(tmp_path, spin, "y", timeout_ms=1000))
    rows = run(tmp_path, plan, sink=sink, jobs=2).results
    assert [r.trap for r in rows] == ["timeout", "timeout"]
    spans = [(sink.at("job.started", i), sink.at("job.finished", i)) for i in ("tests/x", "tests/y")]
    overlap = min(end for _, end in spans) - max(start for start, _ in spans)
    assert overlap > 0.5  # each runs ~1 s; one after the other they would not overlap at all


# -- progress -----------------------------------------------------------------------------------


def test_progress_events_for_every_job(tmp_path: Path) -> None:
    events: list[ProgressEvent] = []
    plan = plan_of(job(tmp_path, wat(EXIT, code=1), "a"), job(tmp_path, wat(EXIT, code=0), "b", needs=["a"]))
    run_plan(plan, tmp_path, BatchOptions(jobs=1, cache_dir=tmp_path / "cache"), on_progress=events.append)
    assert [(e.kind, e.job_id, e.status) for e in events] == [
        ("started", "tests/a", None),
        ("finished", "tests/a", "failed"),
        ("finished", "tests/b", "skipped"),
    ]
    assert {e.total for e in events} == {2}


def test_a_failure_at_the_head_of_a_long_chain_skips_it_all(tmp_path: Path) -> None:
    ok, bad = wat(EXIT, code=0), wat(EXIT, code=1)
    chain = [job(tmp_path, bad, "j0")] + [
        job(tmp_path, ok, f"j{i}", needs=[f"j{i - 1}"]) for i in range(1, 3000)
    ]
    rows = run(tmp_path, plan_of(*reversed(chain))).results  # deeper than Python's recursion limit
    assert sum(r.status == "skipped" for r in rows) == 2999
    assert by_name(run(tmp_path, plan_of(*chain)))["j2999"].reason == "needs tests/j2998 (skipped)"
