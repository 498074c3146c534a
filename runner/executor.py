"""The batch: a plan's jobs on a pool of worker threads, in ``needs`` order, each in its own sandbox.

Each of the ``jobs`` threads runs its jobs through a :class:`~runner.worker.JobRunner`: in its own
worker process (the default: hard deadline, crash isolation, OS limits) or on the thread itself
(``isolation="threads"``; Wasmtime releases the GIL while WASM runs, so threads run at once too).
One dispatcher (the calling thread) decides what starts when:

- a job starts only after every job it ``needs`` finished and passed; otherwise it is ``skipped``
  and the reason names the need;
- while a job runs, its thread queues the next runnable job in the same worker (pipelining:
  :meth:`_Batch._work`); never with ``fail_fast``;
- two jobs whose mounts overlap (the same host folder, or one inside the other) never run at the
  same time when either may write there; a job's ``stdin`` file counts as a read-only mount;
- with ``fail_fast``, the first failed or denied job cancels the running ones and skips the rest;
- when the caller's ``cancel`` event is set (Ctrl-C), running jobs are interrupted, the rest are
  skipped and the result says ``interrupted``.

Right before a job starts its mounts are resolved again (``sandbox.check_mounts``): an earlier
job may have planted a symlink in a ``rw`` folder, and no ``rw`` mount may contain a protected
folder (the output and cache folders). Either makes that job ``denied``; the others go on. Every
failure of a job is a :class:`~runner.results.JobResult`, never an exception out of the batch.
"""

from __future__ import annotations

import bisect
import gc
import itertools
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from runner import hermetic
from runner.audit import record
from runner.errors import PolicyDenied, SandrunError
from runner.plan import JobSpec, Plan
from runner.progress import ProgressEvent
from runner.report import sanitize_text
from runner.results import JobResult, Outcome, Status
from runner.sandbox import EngineKey, Runtime, check_mounts, required_thread_stack
from runner.worker import ISOLATIONS, Isolation, JobRunner, job_runners

if TYPE_CHECKING:
    from runner.egress.transport import Seam

__all__ = ["EventSink", "OutputSink", "BatchOptions", "BatchResult", "run_plan", "status_for"]

EventSink = Callable[[str, dict[str, Any]], object]
ProgressSink = Callable[[ProgressEvent], None]
OutputSink = Callable[[JobSpec, Outcome], object]

_POLL_S = 0.05  # how often the dispatcher looks at the caller's cancel event while it waits
_MIN_THREAD_STACK = 8 << 20  # the usual Linux default; set explicitly (musl's is 128 KiB)


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchOptions:
    """How to run a batch. ``protected_dirs`` are folders no ``rw`` mount may contain (out, cache);
    ``secret_files`` are files no mount at all may hold (the signing key; the cache key is added).

    ``isolation``: ``"workers"`` runs each job in a worker process (hard deadline, crash
    isolation, OS memory and file-size limits: :mod:`runner.worker`); ``"threads"`` runs it on
    the scheduler thread, for benchmarks and tests only.
    """

    jobs: int = field(default_factory=lambda: os.cpu_count() or 1)
    fail_fast: bool = False
    passthrough: bool = False
    cache_dir: Path | None = None
    protected_dirs: tuple[Path, ...] = ()
    secret_files: tuple[Path, ...] = ()
    isolation: Isolation = "workers"
    egress: Seam | None = None  # sandrun:http's resolver and connector (a test seam; default: the OS)

    def __post_init__(self) -> None:
        if not isinstance(self.jobs, int) or self.jobs < 1:
            raise ValueError(f"jobs must be a positive integer, not {self.jobs!r}")
        if self.isolation not in ISOLATIONS:
            raise ValueError(f"isolation must be one of {ISOLATIONS}, not {self.isolation!r}")


@dataclass(frozen=True, slots=True)
class BatchResult:
    """Results in plan order (each job's output went to ``on_output`` as it ended)."""

    results: tuple[JobResult, ...]
    interrupted: bool


def status_for(job: JobSpec, outcome: Outcome) -> tuple[Status, str | None]:
    """``passed`` when the job met ``expect`` (its exit code, no trap); else ``failed`` and why."""
    rule = (outcome.invoke or {}).get("rule")
    if rule is not None and outcome.trap_message:  # bad input, not a guest trap (docs/invoke.md)
        return "failed", f"invoke refused: [{rule}] {sanitize_text(outcome.trap_message, limit=200)}"
    if outcome.trap is not None:
        detail = f" ({sanitize_text(outcome.trap_message, limit=200)})" if outcome.trap_message else ""
        return "failed", f"trap: {outcome.trap}{detail}"
    if outcome.exit_code != job.expect_exit_code:
        return "failed", f"exit code {outcome.exit_code}, expected {job.expect_exit_code}"
    return "passed", None


def _result(job: JobSpec, status: Status, reason: str | None, outcome: Outcome | None = None) -> JobResult:
    ran: dict[str, Any] = {}
    if outcome is not None:
        ran = {
            "exit_code": outcome.exit_code,
            "trap": outcome.trap,
            "fuel_used": outcome.fuel_used,
            "memory_peak": outcome.memory_peak,
            "rss_peak": outcome.rss_peak,
            "wall_ms": outcome.wall_ms,
            "stdout_sha256": outcome.stdout_sha256,
            "stderr_sha256": outcome.stderr_sha256,
            "stdout_truncated": outcome.stdout_dropped > 0,
            "stderr_truncated": outcome.stderr_dropped > 0,
            "invoke_results": None if outcome.invoke_results is None else list(outcome.invoke_results),
            "invoke": outcome.invoke,
        }
    return JobResult(
        manifest=job.manifest,
        name=job.name,
        tool=job.tool,
        module_sha256=job.module_sha256,
        status=status,
        reason=reason,
        **ran,
    )


def _refused(job: JobSpec, error: SandrunError) -> JobResult:
    """A job Sandrun would not (or could not) start: ``denied`` by policy, else ``failed``."""
    violation = error.violations[0]
    status: Status = "denied" if isinstance(error, PolicyDenied) else "failed"
    return _result(job, status, f"[{violation.rule_id}] {violation.message}")


# -- which jobs may not run together ----------------------------------------------------------

_Footprint = tuple[tuple[tuple[str, ...], bool], ...]  # (host path parts, may write) per mount


def _footprint(job: JobSpec) -> _Footprint:
    paths = [(PurePosixPath(m.host).parts, m.mode == "rw") for m in job.mounts]
    if job.stdin is not None:
        paths.append((PurePosixPath(job.stdin).parts, False))
    return tuple(paths)


def _nested(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    shorter = min(len(a), len(b))
    return a[:shorter] == b[:shorter]


def _clash(a: _Footprint, b: _Footprint) -> bool:
    """True when one job may write where the other reads or writes (paths are symlink-free)."""
    return any((wa or wb) and _nested(pa, pb) for pa, wa in a for pb, wb in b)


#: How many ready jobs a thread looks at for one to queue behind its running job. Queuing only
#: saves a hand-off, so a short look is enough; looking at every ready job made each pick cost
#: O(ready) (2,000 ready jobs a runner cannot queue: 2 million checks in a batch).
_QUEUE_LOOKAHEAD = 8

_ToolKey = tuple[str, str, str, EngineKey]  # manifest, tool, module digest, engine configuration


@dataclass(slots=True)
class _Begun:
    """A job handed to its runner: its index, a hermetic job's folders before it ran, and whether
    its ``job.started`` record was written (a queued job's is written once its worker took it)."""

    index: int
    before: dict[str, hermetic.Tree] | None
    recorded: bool = False


# -- the batch ---------------------------------------------------------------------------------


@dataclass(eq=False)
class _Batch:
    """State of one :func:`run_plan` call, shared by the worker threads (see ``cond``)."""

    plan: Plan
    root: Path
    options: BatchOptions
    runtime: Runtime
    on_event: EventSink
    on_progress: ProgressSink | None
    on_output: OutputSink | None
    cancel: threading.Event | None
    runners: Callable[[], JobRunner]
    stop: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)  # nothing pending any more
    sink_lock: threading.Lock = field(default_factory=threading.Lock)
    sink_error: BaseException | None = None
    stop_reason: str | None = None
    interrupted: bool = False
    load_errors: dict[_ToolKey, SandrunError] = field(default_factory=dict)
    results: dict[int, JobResult] = field(default_factory=dict)
    # scheduling state, filled by prepare(), guarded by cond
    cond: threading.Condition = field(default_factory=threading.Condition)
    footprints: list[_Footprint] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)  # needs not finished yet, per job
    dependents: list[list[int]] = field(default_factory=list)
    pending: set[int] = field(default_factory=set)  # not finished yet (running ones included)
    ready: list[int] = field(default_factory=list)  # needs met, not started, in plan order
    running: set[int] = field(default_factory=set)
    idle: int = 0  # scheduler threads holding no job (set to their number before they start)

    # -- callbacks: serialised, and a failing one (the audit log cannot be written) stops the batch

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        self._call(self.on_event, kind, data)

    def _call(self, sink: Callable[..., object], *args: Any) -> None:
        with self.sink_lock:
            if self.sink_error is not None:
                return
            try:
                sink(*args)
            except BaseException as exc:
                self.sink_error = exc
                self.halt("aborted: the run could not be recorded")

    # -- deployment

    @staticmethod
    def _tool_key(job: JobSpec) -> _ToolKey:
        return job.manifest, job.tool, job.module_sha256, EngineKey.for_limits(job.limits)

    def deploy(self) -> None:
        """Compile or fetch every tool's module once, before any job starts (plan order)."""
        seen: set[_ToolKey] = set()
        for job in self.plan.jobs:
            key = self._tool_key(job)
            if key in seen or self.stop.is_set():
                continue
            seen.add(key)
            self.check_cancel()
            try:
                source = self.runtime.load_module(job, self.root, cancel=self.cancel)
            except SandrunError as error:
                self.check_cancel()
                if self.interrupted:  # Ctrl-C stopped the compile: the tool was not judged
                    continue
                self.load_errors[key] = error
                first = error.violations[0]
                self.emit("tool.denied", record.tool_denied(job, first.rule_id, first.message))
                continue
            self.emit("tool.deployed", record.tool_deployed(job, source, key[3].tag))

    # -- one job, on a worker thread: begun (checked, recorded, handed to its runner), then ended

    def begin(self, index: int, runner: JobRunner, *, queued: bool = False) -> _Begun | None:
        """Check job ``index`` and submit it to ``runner`` (``queued``: behind its running job,
        recorded as started once that one ended); None when it ended without running (refused,
        or skipped: then recorded and settled here)."""
        job = self.plan.jobs[index]
        load_error = self.load_errors.get(self._tool_key(job)) if self.load_errors else None
        try:
            if load_error is not None:
                result = _refused(job, load_error)
            elif self.stop.is_set():
                result = _result(job, "skipped", self.stop_reason)
            else:
                if job.mounts:  # resolved again now: an earlier job may have planted a symlink
                    check_mounts(
                        job,
                        self.root,
                        protected=(*self.options.protected_dirs, self.runtime.cache_dir),
                        secrets=(*self.options.secret_files, *self.runtime.secrets),
                    )
                begun = _Begun(index, hermetic.snapshot(job, self.root) if job.hermetic is not None else None)
                if not queued:
                    self.record_start(begun)
                runner.submit(index)
                return begun
        except SandrunError as error:
            result = _refused(job, error)
        except Exception as error:  # a bug of ours must not take the batch down: it is this job's result
            result = _result(job, "failed", f"internal error: {type(error).__name__}: {error}")
        self.finish(index, result, None)
        self.conclude(index, result, None)
        return None

    def record_start(self, begun: _Begun) -> None:
        """Write a begun job's ``job.started`` record, once."""
        if not begun.recorded:
            begun.recorded = True
            self.started(begun.index, self.plan.jobs[begun.index], begun.before)

    def end(self, begun: _Begun, runner: JobRunner, queued: _Begun | None = None) -> None:
        """Wait for a begun job's outcome; record and settle it. ``queued``, the job queued behind
        it, is recorded as started as this one ends (its worker takes it then), unless the batch
        was stopped: then it is recorded when its own outcome shows it began."""
        index, before = begun.index, begun.before
        job = self.plan.jobs[index]
        outcome: Outcome | None = None
        written: list[dict[str, Any]] | None = None
        try:
            try:
                outcome = runner.wait(self.stop)
            finally:
                if queued is not None and not self.stop.is_set():
                    self.record_start(queued)
            if outcome is None:  # queued, and never begun: the batch stopped first
                result = _result(job, "skipped", self.stop_reason)
            else:
                self.record_start(begun)
                if before is not None:
                    written = hermetic.outputs(job, self.root, before)
                for hop in outcome.net_hops:
                    self.emit("net.request", record.net_request(job, hop))
                status, reason = status_for(job, outcome)
                if status != "passed" and self.stop.is_set():
                    reason = f"{self.stop_reason} ({reason})"
                result = _result(job, status, reason, outcome)
        except SandrunError as error:
            self.record_start(begun)
            result = _refused(job, error)
        except Exception as error:  # a bug of ours must not take the batch down: it is this job's result
            self.record_start(begun)
            result = _result(job, "failed", f"internal error: {type(error).__name__}: {error}")
        self.finish(index, result, outcome, written)
        self.conclude(index, result, outcome)

    def conclude(self, index: int, result: JobResult, outcome: Outcome | None) -> None:
        """Hand a finished job's output to the caller, then release (or skip) what needs it."""
        if outcome is not None and self.on_output is not None:
            self._call(self.on_output, self.plan.jobs[index], outcome)
        with self.cond:
            if result.status in ("failed", "denied") and self.options.fail_fast:
                self.halt(f"fail-fast: {result.id} {result.status}")
            self.settle(index, result)

    def started(self, index: int, job: JobSpec, before: dict[str, hermetic.Tree] | None = None) -> None:
        """Record a job's start, once its mounts passed the last check."""
        # a hermetic job: what a replay needs (docs/hermetic.md)
        inputs = None if before is None else hermetic.inputs_record(job, self.root, before)
        self.emit("job.started", record.job_started(job, index, inputs))
        if self.on_progress is not None:
            event = ProgressEvent(kind="started", job_id=job.id, index=index, total=len(self.plan.jobs))
            self._call(self.on_progress, event)

    def finish(
        self,
        index: int,
        result: JobResult,
        outcome: Outcome | None,
        written: list[dict[str, Any]] | None = None,
    ) -> None:
        """Record a job's end (ran, refused or skipped) in the audit log and the progress display;
        ``written``: a hermetic job's rw mounts after the run."""
        self.emit("job.finished", record.job_finished(result, index, outcome, written))
        if self.on_progress is not None:
            event = ProgressEvent(
                kind="finished",
                job_id=result.id,
                index=index,
                total=len(self.plan.jobs),
                status=result.status,
                wall_ms=result.wall_ms,
                reason=result.reason,
            )
            self._call(self.on_progress, event)

    # -- the dispatcher

    def halt(self, reason: str) -> None:
        """Stop the batch: running guests are cancelled, nothing else starts."""
        if not self.stop.is_set():
            self.stop_reason = reason
            self.stop.set()

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set() and not self.interrupted:
            self.interrupted = True
            self.halt("interrupted")

    # -- scheduling: workers pick their next job themselves, so a finished job hands over without
    # a thread switch

    def prepare(self) -> None:
        jobs = self.plan.jobs
        ids = {job.id: i for i, job in enumerate(jobs)}
        self.footprints = [_footprint(job) for job in jobs]
        self.waiting = [len(set(job.needs)) for job in jobs]
        self.dependents = [[] for _ in jobs]
        for i, job in enumerate(jobs):
            for need in set(job.needs):
                self.dependents[ids[need]].append(i)
        self.pending = set(range(len(jobs)))
        self.ready = [i for i in range(len(jobs)) if self.waiting[i] == 0]

    def settle(self, index: int, result: JobResult) -> None:
        """A job ended (ran, or was skipped): release what needs it, or skip it. Holds ``cond``.

        Iterative, not recursive: a failure at the head of a long ``needs`` chain skips it all.
        """
        ended = [(index, result)]
        while ended:
            index, result = ended.pop()
            self.results[index] = result
            self.pending.discard(index)
            self.running.discard(index)
            for dependent in self.dependents[index]:
                if dependent not in self.pending:
                    continue
                if self.stop.is_set():  # the batch is ending anyway: say why, rather than blame the need
                    reason = self.stop_reason
                elif result.status != "passed":
                    reason = f"needs {result.id} ({result.status})"
                else:
                    self.waiting[dependent] -= 1
                    if self.waiting[dependent] == 0:
                        bisect.insort(self.ready, dependent)
                    continue
                ended.append((dependent, self._skipped(dependent, reason)))
        if not self.pending:
            self.finished.set()
        self.cond.notify_all()

    def skip(self, index: int, reason: str | None) -> None:
        """Skip a job that has not started. Holds ``cond``."""
        if index in self.pending and index not in self.running:
            self.settle(index, self._skipped(index, reason))

    def _skipped(self, index: int, reason: str | None) -> JobResult:
        self.pending.discard(index)
        if index in self.ready:
            self.ready.remove(index)
        result = _result(self.plan.jobs[index], "skipped", reason)
        self.finish(index, result, None)
        return result

    def next_job(self) -> int | None:
        """The first ready job that clashes with no running one; None when the batch is over.

        Holds ``cond``; waits while every ready job must wait for a running one.
        """
        while self.pending:
            if self.stop.is_set():
                for index in sorted(self.pending - self.running):
                    self.skip(index, self.stop_reason)
            else:
                taken = self._take_ready()
                if taken is not None:
                    return taken
                if not self.running:  # nothing runs and nothing may start: only a needs cycle does that
                    for index in sorted(self.pending):
                        self.skip(index, "needs cycle: never runnable")
            if self.pending:
                self.cond.wait(_POLL_S)
        return None

    def next_to_queue(self, runner: JobRunner) -> int | None:
        """A ready job ``runner`` can queue behind its running one, clashing with no running job;
        None (at once, never waiting) when there is none. Holds ``cond``."""
        if self.stop.is_set() or self.options.fail_fast:  # fail-fast: no job may start after a failure
            return None
        if len(self.ready) <= self.idle:  # a thread with no job would start it at once: leave it one
            return None
        return self._take_ready(runner.can_queue, within=_QUEUE_LOOKAHEAD)

    def _take_ready(
        self, accept: Callable[[int], bool] = lambda index: True, within: int | None = None
    ) -> int | None:
        """Mark running and return the first ready job ``accept`` takes that clashes with no
        running one (the queued ones included), looking at the first ``within`` ready jobs (all by
        default). Holds ``cond``."""
        for position, index in enumerate(itertools.islice(self.ready, within)):
            footprint = self.footprints[index]
            if accept(index) and not any(_clash(footprint, self.footprints[r]) for r in self.running):
                del self.ready[position]
                self.running.add(index)
                return index
        return None

    def work(self) -> None:
        """A worker thread: take the next runnable job, run it, record it, until none is left."""
        runner = self.runners()
        try:
            self._work(runner)
        finally:
            runner.close()

    def _work(self, runner: JobRunner) -> None:
        """Pipelined: while a job runs, the next runnable one is already checked and queued behind
        it (where the runner can queue, and no other thread is idle), so this thread records one
        job's end while the worker runs the next."""
        begun: _Begun | None = None
        while True:
            if begun is None:
                with self.cond:
                    index = self.next_job()
                    self.idle -= 1
                if index is None:
                    return
                begun = self.begin(index, runner)
            else:
                with self.cond:
                    ahead = self.next_to_queue(runner)
                queued = None if ahead is None else self.begin(ahead, runner, queued=True)
                self.end(begun, runner, queued)
                begun = queued
            if begun is None:
                with self.cond:
                    self.idle += 1

    def dispatch(self) -> None:
        """Run the workers; this thread only watches the caller's cancel event (Ctrl-C)."""
        self.prepare()
        if not self.pending:
            self.finished.set()
        threads = self._start_workers(self.work)
        try:
            # its own event, not ``cond``: waking this thread at every finished job costs a GIL hand-off
            while not self.finished.wait(_POLL_S):
                with self.cond:
                    self.check_cancel()
                    if self.stop.is_set():
                        self.cond.notify_all()
        finally:
            if self.pending:  # only after a bug of ours: let no guest keep running
                self.halt("aborted")
            for thread in threads:
                thread.join()

    def _start_workers(self, target: Callable[[], None]) -> list[threading.Thread]:
        """Worker threads with a native stack big enough for the largest ``max_wasm_stack``."""
        count = self.idle = max(1, min(self.options.jobs, len(self.plan.jobs)))
        needed = max((required_thread_stack(job.limits) for job in self.plan.jobs), default=0)
        previous = threading.stack_size(max(needed, _MIN_THREAD_STACK))
        try:
            threads = [
                threading.Thread(target=target, name=f"sandrun-job-{i}", daemon=True) for i in range(count)
            ]
            for thread in threads:
                thread.start()
        finally:
            threading.stack_size(previous)
        return threads


@contextmanager
def _heap_frozen() -> Iterator[None]:
    """Keep the collector off what lives for the whole batch (the plan, engines, modules).

    A tiny job allocates enough for a collection every few jobs, and each one rescans the
    long-lived heap unless it was frozen (``gc.freeze``): about 5 µs a job. Undone afterwards,
    and left alone when the host process froze objects itself (it may rely on them staying so).
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def run_plan(
    plan: Plan,
    root: Path,
    options: BatchOptions,
    *,
    on_event: EventSink = lambda kind, data: None,
    on_progress: ProgressSink | None = None,
    on_output: OutputSink | None = None,
    cancel: threading.Event | None = None,
) -> BatchResult:
    """Run every job of ``plan`` under ``root``; results in plan order.

    ``on_event(kind, data)`` receives ``tool.deployed``/``tool.denied``, ``job.started`` and
    ``job.finished`` records (one per job, skipped ones too) and ``on_progress`` the progress
    events, ``on_output(job, outcome)`` each job's captured output as soon as it ran (so the caller
    can write it out rather than keep it); all are called from several threads but never at the
    same time. If one raises, the batch stops (running jobs cancelled, pending ones skipped) and
    the error is re-raised.
    """
    with Runtime(cache_dir=options.cache_dir, modules=plan.modules, egress_seam=options.egress) as runtime:
        runners = job_runners(options.isolation, runtime, plan, root, passthrough=options.passthrough)
        batch = _Batch(plan, root, options, runtime, on_event, on_progress, on_output, cancel, runners)
        try:
            if plan.jobs:
                # one worker per scheduler thread starts while deploy reads and checks the modules
                runners.start_early(max(1, min(options.jobs, len(plan.jobs))))
            batch.deploy()
            if plan.jobs:
                with _heap_frozen():
                    batch.dispatch()
        finally:
            runners.close()
    if batch.sink_error is not None:
        raise batch.sink_error
    return BatchResult(
        results=tuple(batch.results[i] for i in range(len(plan.jobs))),
        interrupted=batch.interrupted,
    )
