"""Where a job runs: in a worker process (the default) or on the scheduler's own thread.

The batch scheduler (:mod:`runner.executor`) stays in the parent: the plan, ``needs``, mount
clashes, fail-fast, cancellation and the audit log. Each scheduler thread takes one
:class:`JobRunner` and runs its jobs through it; two implementations sit behind that seam:

- ``isolation="workers"`` (:class:`_WorkerRunner`): one long-lived worker process per scheduler
  thread, started from a forkserver that has already imported this module and wasmtime (the
  parent has threads, so a plain ``fork`` is unsafe). The worker gets the plan's jobs once, each
  compiled module once (a sealed memfd passed over its private socket, :mod:`runner.sealed`, which
  it maps), then only job indices; it answers with the job's :class:`~runner.results.Outcome` in
  a compact binary form the parent decodes without unpickling anything (a worker runs hostile
  code). The parent may queue a second job behind the running one (:meth:`JobRunner.submit`):
  the worker takes it as soon as it has answered, while the parent records that answer. This
  gives what threads cannot:

  - a hard wall-clock bound: the parent waits for the answer until the job's timeout plus
    :data:`GRACE_S` (a queued job's counted from the answer before it); a worker still busy then
    (a guest blocked in a host call: opening a FIFO, reading a pipe) is killed with SIGKILL and
    replaced, and the job is ``timeout``;
  - crash isolation: a worker that dies (an abort, a segfault, the OOM killer) fails only its
    job, with trap ``crash`` and the signal named; the next job gets a new worker (a job queued
    behind the one that died never began: it is sent to the new worker);
  - an OS-enforced budget per job: ``RLIMIT_DATA`` (the worker's private writable memory may grow
    by the job's ``memory`` + twice its ``output`` + :data:`DATA_SLACK` while it runs: linear
    memories, tables, the GC heap, instantiation) and ``RLIMIT_FSIZE`` = ``limits.disk`` with
    SIGXFSZ ignored, so a write past it fails with EFBIG instead of killing the worker. A worker
    that keeps more than :data:`KEPT_SLACK` of what its jobs freed is replaced after its answer.

- ``isolation="threads"`` (:class:`_ThreadRunner`): :meth:`Runtime.run` on the scheduler thread,
  for benchmarks and tests. No hard deadline, no crash isolation, no OS budget, no disk limit.

Workers ignore SIGINT and SIGTERM (Ctrl-C reaches the whole process group; the parent decides):
the parent cancels a job with SIGUSR1, which sets that job's cancel event, and kills the worker
when the job does not end within :data:`CANCEL_GRACE_S`. A queued job the worker has not begun
when the signal comes is withdrawn (answered ``W``, never run). A worker exits as soon as the
parent's end of its pipe closes, also mid-job (the parent died), so no worker outlives its run.
"""

from __future__ import annotations

import atexit
import collections
import ctypes
import functools
import gc
import io
import json
import multiprocessing
import os
import pickle
import resource
import select
import signal
import socket
import struct
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, replace
from multiprocessing.reduction import recv_handle, send_handle
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from runner import forkserver
from runner.errors import InputError, Location, PolicyDenied, SandrunError, Violation
from runner.plan import JobSpec, Limits, Plan
from runner.results import TRAP_KINDS, Outcome
from runner.sandbox import ModuleKey, Runtime, module_key, required_thread_stack
from runner.sealed import Sealed

if TYPE_CHECKING:
    from runner.egress.transport import Seam

__all__ = [
    "Isolation",
    "ISOLATIONS",
    "JobRunner",
    "GRACE_S",
    "STALL_S",
    "CANCEL_GRACE_S",
    "ADOPT_TIMEOUT_S",
    "DATA_SLACK",
    "KEPT_SLACK",
    "JobRunners",
    "job_runners",
    "fork_spare_worker",
    "drop_spare_worker",
]

Isolation = Literal["workers", "threads"]
ISOLATIONS: tuple[str, ...] = ("workers", "threads")

GRACE_S = 0.5
"""How long past its timeout a job's worker may take to answer before it is killed. The worker
stops a guest in WASM code within ~30 ms of its deadline by itself; only a guest blocked in a host
call needs the kill."""
CANCEL_GRACE_S = 1.0
"""How long a cancelled job's worker may take to answer before it is killed."""
STALL_S = 5.0
"""How long the parent waits for the whole of a message a worker began to send (an answer comes in
one write): a worker stalling or trickling mid-answer is killed like one that does not answer."""
ADOPT_TIMEOUT_S = 300
"""How long a worker may take to load a compiled module handed over by the parent."""
DATA_SLACK = 32 << 20
"""Private memory a job may make the worker allocate besides its linear memory and output:
Wasmtime's per-store structures, tables within their caps, the answer being built."""
KEPT_SLACK = 32 << 20
"""Private memory a worker may keep after a job beyond its own size (its modules, engines and
setup) before it is replaced. An allocator keeps much of what a job freed (glibc's arenas); the
next job reuses it without counting against its own budget, which is relative to the worker's size
when it starts: without this bound a series of jobs ratchets the worker up by a budget each time."""

_POLL_MS = 50  # how often a waiting scheduler thread looks at the cancel event
_MIN_THREAD_STACK = 8 << 20


Env = tuple[tuple[str, str], ...]  # a guest's whole environment, as a job's ``env``


class JobRunner(Protocol):
    """Runs jobs of one plan, one at a time; each scheduler thread has its own.

    :meth:`run` is :meth:`submit` then :meth:`wait`. A runner that :meth:`can_queue` takes a
    second job while one is in flight: it starts when the first one ended, and :meth:`wait`
    returns the outcomes in the order the jobs were submitted.
    """

    def run(
        self, index: int, cancel: threading.Event, *, stdin: bytes | None = None, env: Env | None = None
    ) -> Outcome:
        """Run ``plan.jobs[index]``: whatever the guest does is in the Outcome; raises
        :class:`SandrunError` for the host's side (a mount that moved, a missing module).
        ``stdin`` and ``env`` (``sandrun serve``: the request) replace the job's own."""
        ...

    def can_queue(self, index: int) -> bool:
        """Whether :meth:`submit` may take ``plan.jobs[index]`` now, behind the job in flight."""
        ...

    def submit(self, index: int) -> None:
        """Start ``plan.jobs[index]``, or queue it behind the one job in flight."""
        ...

    def wait(self, cancel: threading.Event) -> Outcome | None:
        """The outcome of the oldest job submitted (as :meth:`run`'s); ``cancel`` stops it. None
        when that job was queued and ``cancel`` was set before it began: it never ran."""
        ...

    def close(self) -> None: ...


def _with_env(job: JobSpec, env: Env | None) -> JobSpec:
    return job if env is None else replace(job, env=env)


class JobRunners(Protocol):
    """Makes the :class:`JobRunner` of each scheduler thread of one batch."""

    def __call__(self) -> JobRunner: ...

    def start_early(self, count: int) -> None:
        """Start what the first ``count`` jobs (one per scheduler thread) will need while the
        caller deploys the plan's modules."""
        ...

    def close(self) -> None:
        """End whatever :meth:`start_early` started and no runner took."""
        ...


def job_runners(
    isolation: Isolation, runtime: Runtime, plan: Plan, root: Path, *, passthrough: bool
) -> JobRunners:
    """A factory of :class:`JobRunner` for one batch; ``runtime`` deploys the plan's modules
    before the first runner runs a job."""
    if isolation == "threads":
        return _Threads(runtime, plan, root, passthrough)
    if isolation == "workers":
        return _Pool(runtime, plan, root, passthrough)
    raise ValueError(f"isolation must be one of {ISOLATIONS}, not {isolation!r}")


@dataclass(frozen=True, slots=True)
class _Threads:
    """Isolation ``threads``: each job runs in a thread of this process."""

    runtime: Runtime
    plan: Plan
    root: Path
    passthrough: bool

    def __call__(self) -> JobRunner:
        return _ThreadRunner(self.runtime, self.plan, self.root, self.passthrough)

    def start_early(self, count: int) -> None:
        return None

    def close(self) -> None:
        return None


@dataclass(slots=True)
class _ThreadRunner:
    """Runs one job in the calling thread (isolation ``threads``)."""

    runtime: Runtime
    plan: Plan
    root: Path
    passthrough: bool
    submitted: int | None = None  # runs in wait(): the scheduler's own thread is the job's

    def run(
        self, index: int, cancel: threading.Event, *, stdin: bytes | None = None, env: Env | None = None
    ) -> Outcome:
        job = _with_env(self.plan.jobs[index], env)
        return self.runtime.run(job, self.root, cancel=cancel, passthrough=self.passthrough, stdin_data=stdin)

    def can_queue(self, index: int) -> bool:
        return False

    def submit(self, index: int) -> None:
        self.submitted = index

    def wait(self, cancel: threading.Event) -> Outcome:
        index, self.submitted = self.submitted, None
        assert index is not None, "wait() without submit()"
        return self.run(index, cancel)

    def close(self) -> None:
        return None


# --- the parent's side ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Setup:
    """What a worker gets once: the jobs (then only their indices), where to run them."""

    jobs: tuple[JobSpec, ...]
    root: str
    cache_dir: str
    thread_stack: int
    passthrough: bool
    egress: Seam | None = None  # sandrun:http's test seam (picklable resolver and connector)


class _Pool:
    """What the workers of one batch share: their setup and each module's compiled bytes."""

    def __init__(self, runtime: Runtime, plan: Plan, root: Path, passthrough: bool) -> None:
        self.runtime = runtime
        self.plan = plan
        self.root = root
        stack = max((required_thread_stack(job.limits) for job in plan.jobs), default=0)
        self.setup = _Setup(
            jobs=plan.jobs,
            root=str(root),
            cache_dir=str(runtime.cache_dir),
            thread_stack=max(stack, _MIN_THREAD_STACK),
            passthrough=passthrough,
            egress=runtime.egress_seam,
        )
        self._modules: dict[ModuleKey, Sealed] = {}
        self._lock = threading.Lock()
        self._early: list[tuple[Any, socket.socket]] = []

    def __call__(self) -> JobRunner:
        return _WorkerRunner(self)

    def start_early(self, count: int) -> None:
        """Start a worker for each of the first ``count`` scheduler threads now: their processes
        start while the parent reads and checks the modules (a large module's warm start is mostly
        those two, bench/bench_executor.py (d)), not on the critical path of each thread's first
        job (bench (c): ``--jobs 2``). They hold nothing until a runner takes one and sends it the
        setup."""
        if _spare is None:
            self._early.extend(_spawn(self.setup.passthrough) for _ in range(count - len(self._early)))

    def take_early(self) -> tuple[Any, socket.socket] | None:
        try:
            return self._early.pop()  # atomic: two scheduler threads may ask at once
        except IndexError:
            return None

    def close(self) -> None:
        while (early := self.take_early()) is not None:
            _end(*early)

    @functools.cached_property
    def setup_message(self) -> bytes:
        """The setup as every worker of the batch gets it, pickled once."""
        return _dumps(self.setup)

    def module(self, job: JobSpec) -> Sealed:
        """The job's compiled module in a sealed memfd, held for the batch (it was compiled, or
        read and authenticated, at deploy)."""
        key = module_key(job)
        with self._lock:
            sealed = self._modules.get(key)
            if sealed is None:
                sealed = self._modules[key] = self.runtime.sealed_code(job, self.root)
            return sealed


_spare: tuple[Any, socket.socket, bool] | None = None  # sandrun exec's worker, forked ahead


def fork_spare_worker(*, passthrough: bool) -> bool:
    """Fork ``sandrun exec``'s one worker now, straight from this process, instead of starting the
    forkserver for one job (a second interpreter importing this module and wasmtime, plus
    multiprocessing's resource tracker: most of a tiny ``exec``'s time, bench/bench_startup.py).

    Only while this process has a single thread (the child then inherits no lock another thread
    held) and has imported this module (so the child imports nothing). The child is a worker like
    any other: its own process, killed at the hard deadline, crash-isolated, under the same OS
    limits; it holds only what this process held at the fork (no key, no log, no module yet).
    False, forking nothing, when the process has threads or its environment holds the signing key
    (:mod:`runner.keyguard`): the first job then starts its worker from the forkserver as usual.
    """
    global _spare
    from runner.keyguard import environment_holds_key

    if environment_holds_key():  # the child would inherit it: its worker comes from the forkserver
        return False
    try:
        native_threads = len(os.listdir("/proc/self/task"))
    except OSError:  # no procfs: threads started by native code cannot be counted
        return False
    if _spare is not None or native_threads != 1 or threading.active_count() != 1:
        return False
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    process = multiprocessing.get_context("fork").Process(
        target=_serve_forked, args=(theirs, ours.fileno(), passthrough), name="sandrun-worker", daemon=True
    )
    process.start()
    theirs.close()
    _spare = (process, ours, passthrough)
    atexit.register(drop_spare_worker)  # runs before multiprocessing's own exit handler joins it
    return True


def start_forkserver_early() -> None:
    """Start the forkserver now, before the plan is read and checked: its interpreter imports
    wasmtime and this module (a few hundred ms) while the parent does that work, instead of after.
    Nothing when ``sandrun exec`` forked its spare worker (it needs no server)."""
    if _spare is None:
        forkserver.start()


def _spawn(passthrough: bool) -> tuple[Any, socket.socket]:
    """A new worker from the forkserver, and the parent's end of its socket."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    process = forkserver.start().Process(
        target=_serve, args=(theirs, passthrough), name="sandrun-worker", daemon=True
    )
    process.start()
    theirs.close()
    return process, ours


def _end(process: Any, ours: socket.socket) -> None:
    """End a worker that got no job: closing its end ends it."""
    ours.close()
    process.join(2.0)
    if process.exitcode is None:
        process.kill()
        process.join()


def _take_spare(passthrough: bool) -> tuple[Any, socket.socket] | None:
    global _spare
    if _spare is None or _spare[2] != passthrough:
        return None
    process, ours, _ = _spare
    _spare = None
    return process, ours


def drop_spare_worker() -> None:
    """End the spare no job took (the job was refused): closing its end ends it. The CLI calls it
    when ``exec`` ends, and at exit; a no-op when there is none."""
    spare = _take_spare(True) or _take_spare(False)
    if spare is not None:
        _end(*spare)


def _serve_forked(sock: socket.socket, parent_end: int, passthrough: bool) -> None:
    os.close(parent_end)  # only the parent may hold its end: closing it must end this worker
    _serve(sock, passthrough)


@dataclass(slots=True)
class _Sent:
    """A job sent to the worker (or to be sent again to a new one), until its answer is read."""

    index: int
    stdin: bytes | None
    env: Env | None
    started: float = 0.0  # when its deadline started counting (the worker took it)
    queued: bool = False  # sent behind another job, to the same worker
    unsent: bool = False  # queued, but its message never reached the worker
    lost: bool = False  # the worker died before the job could be sent: a crash of this job
    withdrawn: bool = False  # queued, never begun: the batch was cancelled first
    error: Exception | None = None  # sending it to a new worker failed: raised by wait()


class _WorkerRunner:
    """One worker process, started on first use and replaced after it was killed or died.

    Pipelined: :meth:`submit` may send a second job while one runs (queue depth 2), so the worker
    starts it the moment it has answered the first, while this thread records that answer. The
    worker still runs one job at a time; the queued job's deadline counts from the first one's
    answer. When the first job's worker is killed or dies, the queued job never started: it is
    sent again to a new worker, never failed.
    """

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.process: Any = None
        self.conn: _Channel | None = None
        self.poller = select.poll()
        self.modules: set[ModuleKey] = set()
        self.sent: collections.deque[_Sent] = collections.deque()

    def _start(self) -> _Channel:
        passthrough = self.pool.setup.passthrough
        process, ours = _take_spare(passthrough) or self.pool.take_early() or _spawn(passthrough)
        assert process.pid is not None  # started
        ours.settimeout(STALL_S)  # waits for an answer go through poll(); this bounds the rest
        parent_end = _Channel(ours)
        self.process, self.conn = process, parent_end
        self.poller = select.poll()
        self.poller.register(parent_end.fileno(), select.POLLIN)
        self.modules = set()
        if passthrough:  # sandrun exec: the guest's stdio is the runner's own; before any message,
            for fd in (0, 1, 2):  # which the worker's buffered reads could otherwise run into
                _send_stdio(parent_end, fd, process.pid)
        parent_end.send_bytes(self.pool.setup_message)
        return parent_end

    def run(
        self, index: int, cancel: threading.Event, *, stdin: bytes | None = None, env: Env | None = None
    ) -> Outcome:
        self._submit(_Sent(index, stdin, env))
        outcome = self.wait(cancel)
        assert outcome is not None, "only a queued job is withdrawn"
        return outcome

    def can_queue(self, index: int) -> bool:
        """One job in flight on a live worker that holds this job's module already (handing a
        module over waits for the worker, which is busy)."""
        return (
            len(self.sent) == 1
            and self.conn is not None
            and module_key(self.pool.plan.jobs[index]) in self.modules
        )

    def submit(self, index: int) -> None:
        self._submit(_Sent(index, None, None))

    def _submit(self, sent: _Sent) -> None:
        if not self.sent:
            self._dispatch(sent)
        else:
            sent.queued = True
            assert self.conn is not None and len(self.sent) == 1, "queue one job behind a running one"
            try:
                self.conn.send(("run", sent.index, sent.stdin, sent.env, True))
            except OSError:  # the worker is dying: the job in flight will say how
                sent.unsent = True
        self.sent.append(sent)

    def _dispatch(self, sent: _Sent) -> None:
        """Send a job to an idle worker (started, and handed the job's module, first)."""
        job = self.pool.plan.jobs[sent.index]
        key = module_key(job)
        sent.started = time.monotonic()
        conn = self.conn or self._start()
        try:
            if key not in self.modules:  # once per worker and module, outside the job's time
                self._hand_over(conn, key, self.pool.module(job))
                sent.started = time.monotonic()
            conn.send(("run", sent.index, sent.stdin, sent.env, False))
        except (EOFError, OSError):
            sent.lost = True

    def wait(self, cancel: threading.Event) -> Outcome | None:
        """The oldest job's outcome; None when it was queued and the worker never began it
        because ``cancel`` was set first (it did not run at all)."""
        sent = self.sent[0]
        job = _with_env(self.pool.plan.jobs[sent.index], sent.env)
        try:
            if sent.error is not None:
                raise sent.error
            if sent.withdrawn:
                return None
            if sent.lost or self.conn is None:
                return self._died(job, sent.started)
            return self._answer(job, self.conn, sent.started, cancel, queued=sent.queued)
        finally:
            self.sent.popleft()
            if self.sent:
                self._next_starts(self.sent[0], cancel)

    def _next_starts(self, queued: _Sent, cancel: threading.Event) -> None:
        """The job before ``queued`` ended: the worker took ``queued`` now; unless it was killed
        or died, then ``queued`` (which never started) goes to a new worker, if not cancelled."""
        if self.conn is not None and not queued.unsent:
            queued.started = time.monotonic()
            return
        self._stop_worker()
        queued.unsent = queued.queued = False
        if cancel.is_set():
            queued.withdrawn = True
            return
        try:
            self._dispatch(queued)
        except Exception as error:  # raised by wait(), as run() would have raised it
            queued.error = error

    def _hand_over(self, conn: _Channel, key: ModuleKey, sealed: Sealed) -> None:
        """Give the worker a compiled module (the sealed memfd's descriptor, which it maps: no copy
        through the socket) and wait until it has loaded it (a large module takes a while, which
        must not count against the job's deadline)."""
        conn.send(("module", key), fd=sealed.fileno())
        if not self.poller.poll(ADOPT_TIMEOUT_S * 1000):
            self._stop_worker()
            raise RuntimeError(f"the worker did not load the module within {ADOPT_TIMEOUT_S} s")
        problem = conn.recv_bytes(_MAX_PROBLEM)
        if problem:
            text = problem.decode("utf-8", "replace")
            raise RuntimeError(f"the worker could not load the module: {text}")
        self.modules.add(key)

    def _answer(
        self, job: JobSpec, conn: _Channel, started: float, cancel: threading.Event, *, queued: bool = False
    ) -> Outcome | None:
        """Wait for the worker's answer until the job's deadline plus the grace; else kill it.
        None: a queued job the worker did not begin (it saw the cancel signal first)."""
        deadline = started + job.limits.timeout_ms / 1000 + GRACE_S
        signalled = False
        while True:
            remaining_ms = (deadline - time.monotonic()) * 1000
            if conn.has_message() or self.poller.poll(max(0, min(remaining_ms, _POLL_MS))):
                try:
                    reply = conn.recv_bytes(_answer_limit(job.limits))
                except TimeoutError:
                    return self._malformed(job, started, f"part of an answer, unfinished after {STALL_S:g} s")
                except (EOFError, OSError):
                    return self._died(job, started)
                except _Oversized:
                    return self._malformed(job, started, "an answer larger than the job's output allows")
                if queued and reply == _WITHDRAWN:
                    return None
                if reply[:1].islower():  # the worker exits after this answer (it kept memory: KEPT_SLACK)
                    self._stop_worker()  # what was queued behind it goes to a new worker
                try:
                    return decode_answer(reply)
                except _Malformed as error:
                    return self._malformed(job, started, str(error))
            if cancel.is_set():  # again at every poll: a queued job may not have begun at the first
                os.kill(self.process.pid, signal.SIGUSR1)
                if not signalled:
                    signalled = True
                    deadline = min(deadline, time.monotonic() + CANCEL_GRACE_S)
            if time.monotonic() >= deadline:
                self._stop_worker()
                message = (
                    "cancelled (the worker did not stop: killed)"
                    if cancel.is_set()
                    else f"exceeded the timeout of {job.limits.timeout_ms} ms "
                    "(still blocked in a host call: worker killed)"
                )
                return _ended(job, started, "timeout", message)

    def _died(self, job: JobSpec, started: float) -> Outcome:
        """The worker's pipe closed mid-job: it died; name how."""
        code = None
        if self.process is not None:
            self.process.join(1.0)
            code = self.process.exitcode
        self._stop_worker()
        if code is not None and code < 0:
            how = f"worker killed by {signal.Signals(-code).name}"
        else:
            how = f"worker exited with status {code}"
        return _ended(job, started, "crash", how)

    def _malformed(self, job: JobSpec, started: float, what: str) -> Outcome:
        """The worker answered what no worker of ours sends: treat it as compromised."""
        self._stop_worker()
        return _ended(job, started, "crash", f"the worker sent {what}: killed")

    def _stop_worker(self) -> None:
        if self.process is None:
            return
        if self.process.exitcode is None:
            self.process.kill()
        self.process.join()
        self.process.close()
        if self.conn is not None:
            self.conn.close()
        self.process, self.conn = None, None

    def close(self) -> None:
        """Close the pipe (the worker exits at once) and reap the worker."""
        if self.process is None:
            return
        assert self.conn is not None
        self.conn.close()
        self.conn = None
        self.process.join(2.0)
        self._stop_worker()


def _send_stdio(conn: _Channel, fd: int, pid: int) -> None:
    """Hand one of the runner's stdio descriptors to the worker; /dev/null when it is closed."""
    try:
        os.fstat(fd)
    except OSError:
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        try:
            send_handle(conn, null, pid)
        finally:
            os.close(null)
        return
    send_handle(conn, fd, pid)


def _ended(job: JobSpec, started: float, trap: Literal["timeout", "crash"], message: str) -> Outcome:
    return Outcome(
        exit_code=None,
        trap=trap,
        trap_message=message,
        fuel_used=None,
        memory_peak=0,
        wall_ms=int((time.monotonic() - started) * 1000),
        stdout=b"",
        stderr=b"",
    )


# --- answers: the worker's side of the pipe speaks no pickle ---------------------------------
#
# The worker runs hostile guests: were one to escape Wasmtime, whatever it sends the parent (which
# holds the plan, the audit chain and the signing key) must stay data. So answers are a fixed
# binary header, the captured output and a JSON tail, decoded into fresh values; never a pickle.
# It is also cheaper: unpickling a frozen dataclass costs the parent ~20 us per job.

_OK, _DENIED, _INVALID, _ERROR = b"O", b"D", b"I", b"E"
_WITHDRAWN = b"W"  # a queued job not begun: the parent cancelled the batch before it could start
_FIELDS = struct.Struct("!BBqQQQQQQQQ")
"""flags (exit code, fuel, rss, memory peak present), trap kind (0: none), exit code, fuel used,
memory peak, wall ms, stdout dropped, stderr dropped, rss peak, stdout length, stderr length"""
_HAS_EXIT, _HAS_FUEL, _HAS_RSS, _HAS_MEMORY = 1, 2, 4, 8
_MAX_PROBLEM = 1 << 20  # a module hand-over's or an error's text
_ANSWER_SLACK = 4 << 20  # an answer's header and JSON tail (trap message, invoke results, hops)
_MAX_EXIT = 255  # a process exit status: a larger one would wrap (sandrun exec exits with it)
_MAX_DEPTH = 200  # nesting of the JSON tail: beyond any result, within the log's JSON encoders


class _Malformed(Exception):
    """An answer no worker of ours sends."""


def _answer_limit(limits: Limits) -> int:
    return 2 * limits.output + _ANSWER_SLACK


def encode_answer(outcome: Outcome, rss_peak: int | None) -> bytes:
    """A job's :class:`Outcome` and the worker's peak RSS, as the worker sends them."""
    flags = (
        (_HAS_EXIT if outcome.exit_code is not None else 0)
        | (_HAS_FUEL if outcome.fuel_used is not None else 0)
        | (_HAS_RSS if rss_peak is not None else 0)
        | (_HAS_MEMORY if outcome.memory_peak is not None else 0)
    )
    extras: dict[str, Any] = {}
    if outcome.trap_message is not None:
        extras["message"] = outcome.trap_message
    if outcome.invoke_results is not None:
        extras["results"] = list(outcome.invoke_results)
    if outcome.invoke is not None:
        extras["invoke"] = outcome.invoke
    if outcome.net_hops:
        extras["hops"] = list(outcome.net_hops)
    head = _FIELDS.pack(
        flags,
        0 if outcome.trap is None else TRAP_KINDS.index(outcome.trap) + 1,
        outcome.exit_code or 0,
        outcome.fuel_used or 0,
        outcome.memory_peak or 0,
        outcome.wall_ms,
        outcome.stdout_dropped,
        outcome.stderr_dropped,
        rss_peak or 0,
        len(outcome.stdout),
        len(outcome.stderr),
    )
    tail = json.dumps(extras).encode() if extras else b""
    return b"".join((_OK, head, outcome.stdout, outcome.stderr, tail))


def encode_refusal(error: SandrunError) -> bytes:
    """Why the worker would not run a job (a mount that moved, a missing module)."""
    violations = [
        {
            "rule_id": v.rule_id,
            "message": v.message,
            "location": None if v.location is None else v.location.to_dict(),
            "expected": v.expected,
            "actual": v.actual,
        }
        for v in error.violations
    ]
    kind = _DENIED if isinstance(error, PolicyDenied) else _INVALID
    return kind + json.dumps(violations, default=str).encode()


def decode_answer(data: bytes) -> Outcome:
    """The parent's reading of an answer: an Outcome; raises the refusal or error it carries, or
    :class:`_Malformed`. A kind in lower case is the same answer from a worker that then exits."""
    kind, body = data[:1].upper(), data[1:]
    try:
        if kind == _OK:
            return _decode_outcome(body)
        if kind in (_DENIED, _INVALID):
            violations = tuple(_violation(item) for item in json.loads(body))
            if not violations:
                raise _Malformed("a refusal without a reason")
            raise (PolicyDenied if kind == _DENIED else InputError)(violations=violations)
        if kind == _ERROR:
            raise RuntimeError(f"in the worker: {body.decode('utf-8', 'replace')}")
    except (ValueError, TypeError, KeyError, IndexError, struct.error, RecursionError) as error:
        raise _Malformed(f"a malformed answer ({type(error).__name__})") from None
    raise _Malformed("an answer of unknown kind")


def _decode_outcome(body: bytes) -> Outcome:
    flags, trap, exit_code, fuel, memory, wall, out_dropped, err_dropped, rss, out_size, err_size = (
        _FIELDS.unpack_from(body)
    )
    start = _FIELDS.size
    middle = start + out_size
    end = middle + err_size
    if end > len(body):
        raise ValueError("output past the end")
    extras = json.loads(body[end:]) if end < len(body) else {}
    message, results, hops = extras.get("message"), extras.get("results"), extras.get("hops", [])
    invoke = extras.get("invoke")
    if not (
        (message is None or isinstance(message, str))
        and (invoke is None or isinstance(invoke, dict))
        and (results is None or (isinstance(results, list) and all(isinstance(r, str) for r in results)))
        and isinstance(hops, list)
        and all(isinstance(h, dict) and "id" not in h for h in hops)  # a hop's record has the job's id
        and (flags & _HAS_EXIT == 0 or 0 <= exit_code <= _MAX_EXIT)
        and _loggable(extras, _MAX_DEPTH)
    ):
        raise TypeError("extras")
    return Outcome(
        exit_code=exit_code if flags & _HAS_EXIT else None,
        trap=None if trap == 0 else TRAP_KINDS[trap - 1],  # type: ignore[arg-type]
        trap_message=message,
        fuel_used=fuel if flags & _HAS_FUEL else None,
        memory_peak=memory if flags & _HAS_MEMORY else None,
        wall_ms=wall,
        stdout=body[start:middle],
        stderr=body[middle:end],
        stdout_dropped=out_dropped,
        stderr_dropped=err_dropped,
        invoke_results=None if results is None else tuple(results),
        invoke=invoke,
        net_hops=tuple(hops),
        rss_peak=rss if flags & _HAS_RSS else None,
    )


def _loggable(value: object, depth: int) -> bool:
    """Whether ``value`` can go into an audit record as it is: JSON without floats (canonical JSON
    has none), nested at most ``depth`` levels. What a worker reports ends up in the log, and a
    record that cannot be written stops the whole run."""
    if value is None or isinstance(value, (str, int)):
        return True
    if depth == 0:
        return False
    if isinstance(value, list):
        return all(_loggable(item, depth - 1) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and _loggable(item, depth - 1) for key, item in value.items())
    return False


def _violation(item: dict[str, Any]) -> Violation:
    where = item["location"]
    location = None if where is None else Location(**where)
    return Violation(str(item["rule_id"]), str(item["message"]), location, item["expected"], item["actual"])


def _dumps(message: object) -> bytes:
    buffer = io.BytesIO()
    _PlanPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(message)
    return buffer.getvalue()


class _PlanPickler(pickle.Pickler):
    """Pickles the plan's frozen dataclasses as (class, field values): the worker then unpickles a
    plan's 2,000 jobs in ~25 ms instead of ~180 ms (a dataclass's own ``__setstate__`` looks its
    fields up again for every object). Parent to worker only: the worker trusts the parent."""

    def reducer_override(self, obj: Any) -> Any:
        cls: type = type(obj)
        if cls.__module__ != "runner.plan" or not hasattr(cls, "__dataclass_fields__"):
            return NotImplemented
        return _rebuild, (cls, tuple([getattr(obj, name) for name in _field_names(cls)]))


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(cls.__dataclass_fields__)  # type: ignore[attr-defined]


def _rebuild(cls: type, values: tuple[Any, ...]) -> Any:
    """A plan dataclass from its field values, as pickled by :class:`_PlanPickler` (from a valid
    object: no validation to repeat)."""
    obj: Any = object.__new__(cls)
    for name, value in zip(_field_names(cls), values, strict=True):
        object.__setattr__(obj, name, value)
    return obj


class _Oversized(Exception):
    """A message longer than its reader allows."""


class _Channel:
    """Length-prefixed messages over a Unix socket pair: a pickle, or raw bytes (a module).

    ``multiprocessing.connection`` reads each message in two system calls (its length, then its
    body); here the common small message costs one, which is a measurable part of a tiny job.
    """

    _LENGTH = struct.Struct("!Q")

    def __init__(self, sock: socket.socket, *, take_fds: bool = False) -> None:
        self.sock = sock
        self._buffer = bytearray()
        # Descriptors that came with the messages read so far: only a worker takes any (from its
        # parent); the parent's plain reads make the kernel drop whatever a worker might send.
        self.fds: list[int] | None = [] if take_fds else None

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: object, *, fd: int | None = None) -> None:
        """Send a pickle; ``fd`` rides along with its first byte (``SCM_RIGHTS``)."""
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        if fd is None:
            self.send_bytes(data)
            return
        framed = self._LENGTH.pack(len(data)) + data
        sent = socket.send_fds(self.sock, [framed], [fd])
        self.sock.sendall(framed[sent:])

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(self._LENGTH.pack(len(data)) + data)

    def recv(self) -> Any:
        """The next pickled message: only the worker reads these (they come from the parent)."""
        return pickle.loads(self.recv_bytes())

    def recv_bytes(self, limit: int | None = None) -> bytes:
        """The next message; EOFError when the other end closed, :class:`_Oversized` when it says
        it is longer than ``limit`` (nothing is read past its length then).

        On a socket with a timeout (the parent's end: :data:`STALL_S`), the timeout bounds the
        whole message, not each read: a worker trickling an answer a byte at a time, each just
        within the timeout, would otherwise hold the parent for days (TimeoutError).
        """
        header = self._LENGTH.size
        timeout = self.sock.gettimeout()
        until = None if timeout is None else time.monotonic() + timeout
        reads = 0
        try:
            while len(self._buffer) < header or len(self._buffer) < header + self._size():
                if limit is not None and len(self._buffer) >= header and self._size() > limit:
                    raise _Oversized
                if reads and until is not None:  # what is left of the whole message's time
                    left = until - time.monotonic()
                    if left <= 0:
                        raise TimeoutError
                    self.sock.settimeout(left)
                reads += 1
                if self.fds is None:
                    chunk = self.sock.recv(1 << 16)
                else:
                    chunk, fds, _, _ = socket.recv_fds(self.sock, 1 << 16, 1)
                    self.fds += fds
                if not chunk:
                    raise EOFError
                self._buffer += chunk
        finally:
            if reads > 1 and until is not None:
                self.sock.settimeout(timeout)
        end = header + self._size()
        data = bytes(self._buffer[header:end])
        del self._buffer[:end]
        return data

    def _size(self) -> int:
        size: int = self._LENGTH.unpack_from(self._buffer)[0]
        return size

    def has_message(self) -> bool:
        """A whole message was read already (with the one before it): poll() would not say so."""
        header = self._LENGTH.size
        return len(self._buffer) >= header and len(self._buffer) >= header + self._size()

    def close(self) -> None:
        self.sock.close()


# --- the worker's side ------------------------------------------------------------------------

_active_cancel: threading.Event | None = None  # the running job's, set by SIGUSR1
_cancel_asked = False  # SIGUSR1 came since the last job sent to an idle worker began


def _on_cancel(_signum: int, _frame: object) -> None:
    global _cancel_asked
    _cancel_asked = True
    event = _active_cancel
    if event is not None:
        event.set()


def _serve(sock: socket.socket, passthrough: bool) -> None:
    """A worker's main thread: jobs run on a second thread (with the stack WASM needs), so this
    one is free to take SIGUSR1 at once, and to exit the moment the parent's end closes."""
    _name_process(b"sandrun-worker")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past RLIMIT_FSIZE fails with EFBIG
    signal.signal(signal.SIGUSR1, _on_cancel)
    conn = _Channel(sock, take_fds=True)
    try:
        if passthrough:
            for target in (0, 1, 2):
                fd = recv_handle(conn)
                os.dup2(fd, target)
                os.close(fd)
        setup: _Setup = conn.recv()
    except (EOFError, OSError):
        return
    previous = threading.stack_size(setup.thread_stack)
    jobs = threading.Thread(target=_job_loop, args=(conn, setup), name="sandrun-worker-jobs", daemon=True)
    jobs.start()
    threading.stack_size(previous)
    watch = select.poll()
    watch.register(conn.fileno(), select.POLLRDHUP)
    while jobs.is_alive():
        if watch.poll(1000):  # the parent closed its end, or died: stop now, even mid-job
            os._exit(0)


def _name_process(name: bytes) -> None:
    """``sandrun-worker`` in ps/top and /proc/PID/comm (prctl PR_SET_NAME), where libc allows."""
    with suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(15, name, 0, 0, 0)


def _job_loop(conn: _Channel, setup: _Setup) -> None:
    global _active_cancel, _cancel_asked
    runtime = Runtime(cache_dir=Path(setup.cache_dir), egress_seam=setup.egress)
    bounds = _Bounds()
    root = Path(setup.root)
    gc.freeze()  # what the worker imported lives as long as it does: no collection rescans it
    try:
        while True:
            message = conn.recv()
            if message[0] == "module":
                bounds.release()
                try:
                    _adopt(runtime, message[1], conn)
                except Exception as error:  # WasmtimeError, OSError, MemoryError: that job's failure
                    conn.send_bytes(f"{type(error).__name__}: {error}".encode("utf-8", "replace"))
                else:
                    bounds.settle()  # the module is the worker's own from now on
                    conn.send_bytes(b"")
                continue
            _, index, stdin, env, queued = message
            job = _with_env(setup.jobs[index], env)
            cancel = threading.Event()
            if not queued:  # a signal meant for the job before (it ended meanwhile) is not this one's
                _cancel_asked = False
            _active_cancel = cancel
            if queued and _cancel_asked:  # the parent stopped the batch before this job began
                _active_cancel = None
                conn.send_bytes(_WITHDRAWN)
                continue
            engines = runtime.engine_count
            try:
                bounds.apply(job.limits)
                try:
                    outcome = runtime.run(
                        job, root, cancel=cancel, passthrough=setup.passthrough, stdin_data=stdin
                    )
                finally:
                    bounds.end_job()
                reply = encode_answer(outcome, bounds.peak)
            except SandrunError as error:
                reply = encode_refusal(error)
            except Exception as error:  # a bug of ours, or MemoryError past the budget: this job's
                reply = _ERROR + f"{type(error).__name__}: {error}".encode("utf-8", "replace")
            finally:
                _active_cancel = None
            if runtime.engine_count != engines:  # the job's engine is the worker's own from now on
                bounds.settle()
            elif bounds.kept(job.limits):  # answer, then exit: what the parent queued goes to a new worker
                conn.send_bytes(reply[:1].lower() + reply[1:])
                return
            conn.send_bytes(reply)
    except (EOFError, OSError):
        return
    finally:
        runtime.close()


def _adopt(runtime: Runtime, key: ModuleKey, conn: _Channel) -> None:
    """Load the module whose sealed memfd came with the ``module`` message, then close it."""
    assert conn.fds is not None  # a worker's channel
    if len(conn.fds) != 1:
        raise OSError(f"a module message must carry one descriptor, not {len(conn.fds)}")
    fd = conn.fds.pop()
    try:
        runtime.adopt(key, fd)
    finally:
        os.close(fd)


class _Bounds:
    """The OS limits of the job running in this worker, and what it really used.

    ``RLIMIT_DATA`` counts private writable memory only: Wasmtime's reserved-but-inaccessible
    address space (``PROT_NONE``: the 4 GiB reservation and guard pages of each linear memory)
    is not counted until pages become accessible, so the bound is the worker's current data size
    plus the job's budget; it is lifted again after the job (the answer is built outside it).
    ``RLIMIT_FSIZE`` stays at the last job's ``disk`` until a job needs another value (the worker
    itself writes no files) or a module is handed over. Peak resident memory is measured from a
    reset high-water mark (``/proc/self/clear_refs`` 5, then ``ru_maxrss``); what the worker kept
    is read after the job (:meth:`kept`). Six system calls per job, each about a microsecond.
    """

    def __init__(self) -> None:
        self.peak: int | None = None
        self.own: int | None = None  # the worker's own data size: setup, modules, engines
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._data_hard = resource.getrlimit(resource.RLIMIT_DATA)
        self._fsize_hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        self._fsize: int | None = None  # the soft RLIMIT_FSIZE a job set, while it stays
        try:
            self._statm: int | None = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
            self._clear: int | None = os.open("/proc/self/clear_refs", os.O_WRONLY | os.O_CLOEXEC)
        except OSError:  # no procfs: the budget is then counted from zero, the peak not reported
            self._statm = self._clear = None

    def _data_now(self) -> int:
        if self._statm is None:
            return 0
        return int(os.pread(self._statm, 256, 0).split()[5]) * self._page

    def settle(self) -> None:
        """The worker's own size changed for good (a module loaded, an engine made): measure it."""
        self.own = self._data_now()

    def kept(self, limits: Limits) -> bool:
        """After a job: whether the worker holds more than :data:`KEPT_SLACK` above its own size,
        besides four times the job's ``output`` (its captured output and the answer made of it,
        which the allocator may keep for the next answer as it keeps any freed memory)."""
        return self.own is not None and self._data_now() > self.own + KEPT_SLACK + 4 * limits.output

    def apply(self, limits: Limits) -> None:
        """Lower the limits to the job's; reset the RSS high-water mark."""
        if self.own is None:  # the first job: the worker as it was set up
            self.settle()
        budget = self._data_now() + limits.memory + 2 * limits.output + DATA_SLACK
        _lower(resource.RLIMIT_DATA, budget, self._data_hard)
        if limits.disk != self._fsize:
            _lower(resource.RLIMIT_FSIZE, limits.disk, self._fsize_hard)
            self._fsize = limits.disk
        if self._clear is not None:
            os.write(self._clear, b"5")

    def end_job(self) -> None:
        """Read the job's peak RSS and lift the memory budget."""
        self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 if self._clear else None
        resource.setrlimit(resource.RLIMIT_DATA, self._data_hard)

    def release(self) -> None:
        """Back to the limits the worker started with (before loading a module)."""
        resource.setrlimit(resource.RLIMIT_DATA, self._data_hard)
        resource.setrlimit(resource.RLIMIT_FSIZE, self._fsize_hard)
        self._fsize = None


def _lower(which: int, soft: int, original: tuple[int, int]) -> None:
    """Set the soft limit to ``soft``, never above the hard limit the worker was started with."""
    hard = original[1]
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(which, (soft, hard))
