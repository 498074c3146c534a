"""Bounded compilation: Cranelift runs on hostile bytes in a child process with its own limits.

Compiling is the one step that works on an untrusted module before any job limit applies, and
Cranelift's cost is not proportional to the module's size: a few hundred kilobytes can make it
run for minutes and ask for gigabytes (and an allocation failure inside Wasmtime aborts the
whole process). So :func:`compile_bounded` never compiles in the calling process:

1. a fresh child comes from a forkserver (the caller has threads: forking it directly is unsafe);
2. before it reads a byte of the module, the child clears its environment, points its stdin and
   stdout at ``/dev/null`` and its stderr at the parent, turns core dumps off and lowers its own
   limits: ``RLIMIT_CPU`` (CPU time of all of Cranelift's threads together; ``SIGXCPU`` ends it)
   and ``RLIMIT_DATA`` (heap and private writable mappings, which is what Cranelift allocates;
   measured to stop it, like ``RLIMIT_AS``, but without counting shared libraries and reserved
   address space);
3. the parent sends the module bytes over a pipe and waits at most the wall-clock deadline
   (:attr:`CompileBounds.wall_s`), then kills the child;
4. the child answers with the bytes ``Module.serialize()`` (``Component.serialize()`` for a
   component) produced, or Wasmtime's reason for refusing the module; the parent never unpickles
   anything the child sends.

**Invariant**: :class:`Compiled` holds serialized machine code. Deserializing maps it as code
without validation, so it is safe only for bytes *our own* compile child produced from bytes
whose digest the caller checked; :func:`compile_bounded` is the only place that makes one.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import signal
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Literal

from wasmtime import Config, Engine, Module, WasmtimeError

from runner import forkserver
from runner.features import ENGINE_FEATURES
from runner.units import format_duration, format_size
from runner.wasmfile import WasmKind

if TYPE_CHECKING:
    from wasmtime.component import Component

__all__ = ["CompileBounds", "CompileFailed", "Compiled", "compile_bounded", "new_config"]

FailureKind = Literal["invalid", "timeout", "memory", "crashed", "cancelled"]

#: Wall-clock allowance on top of the CPU bound: starting the child, and a machine so busy that
#: the child gets less than one core (its CPU time then grows slower than the clock).
_WALL_GRACE_S = 5.0
_STDERR_KEEP = 4096
_POLL_S = 0.05  # how often a compile with a cancel event looks at it
_EXIT_MEMORY = 86  # the child's own MemoryError
_OK, _INVALID = b"K", b"E"
# What Rust's allocator prints before it aborts the process (the usual end under RLIMIT_DATA).
_RUST_OOM = b"memory allocation of"


def new_config(*, fuel: bool, stack: int) -> Config:
    """The Wasmtime configuration of one engine key; compiled code is valid only for the same one."""
    config = Config()
    config.epoch_interruption = True
    config.consume_fuel = fuel
    config.max_wasm_stack = stack
    for name, on in ENGINE_FEATURES.items():  # explicit: never whatever wasmtime-py defaults to
        setattr(config, f"wasm_{name}", on)
    return config


@dataclass(frozen=True, slots=True, kw_only=True)
class CompileBounds:
    """Limits of one compilation: CPU time (whole seconds are enforced, rounded up) and memory."""

    cpu_ms: int
    memory: int

    def __post_init__(self) -> None:
        if self.cpu_ms <= 0 or self.memory <= 0:
            raise ValueError("compile bounds must be positive")

    @property
    def cpu_seconds(self) -> int:
        """``RLIMIT_CPU`` counts whole seconds."""
        return -(-self.cpu_ms // 1000)

    @property
    def wall_s(self) -> float:
        """When the parent kills the child whatever its CPU time: twice the bound plus a grace."""
        return 2 * self.cpu_ms / 1000 + _WALL_GRACE_S


class CompileFailed(Exception):
    """The module did not compile within its bounds; ``kind`` says how, ``message`` for people
    (for ``invalid``, Wasmtime's whole error text, at most 4 KiB)."""

    def __init__(self, kind: FailureKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True, slots=True)
class Compiled:
    """Serialized code from our own compile child (see the module's invariant); load it with
    :meth:`load` into an engine made from the same :func:`new_config`."""

    data: bytes
    kind: WasmKind = "module"

    def load(self, engine: Engine) -> Module | Component:
        if self.kind == "component":
            from wasmtime.component import Component  # component jobs only: ~10 ms of every start

            return Component.deserialize(engine, self.data)
        return Module.deserialize(engine, self.data)


def compile_bounded(
    data: bytes,
    *,
    fuel: bool,
    stack: int,
    bounds: CompileBounds,
    cancel: threading.Event | None = None,
    kind: WasmKind = "module",
) -> Compiled:
    """Compile ``data`` (a core module or a component, as ``kind`` says) for the engine
    ``new_config(fuel=, stack=)`` in a bounded child process.

    Raises :class:`CompileFailed`: ``invalid`` (Wasmtime refused the bytes), ``timeout`` (CPU
    time or wall clock), ``memory``, ``crashed`` (any other death, the signal named), or
    ``cancelled`` (``cancel`` was set: Ctrl-C need not wait for the compile bound).
    """
    context = forkserver.start()  # shared with the job workers (runner.forkserver)
    try:
        ours, theirs = context.Pipe(duplex=True)
        errors_in, errors_out = context.Pipe(duplex=False)
    except OSError as exc:
        raise CompileFailed("crashed", f"cannot start a compiler process: {exc}") from exc
    child = context.Process(
        target=_child,
        args=(theirs, errors_out, fuel, stack, bounds.cpu_seconds, bounds.memory, kind),
        name="sandrun-compile",
        daemon=True,
    )
    waiter = _Waiter(child, ours, errors_in, limit=max(bounds.memory, 1 << 20))
    try:
        try:
            child.start()
        except (OSError, AssertionError) as exc:  # no processes left; or we are a daemonic worker
            raise CompileFailed("crashed", f"cannot start a compiler process: {exc}") from exc
        theirs.close()
        errors_out.close()
        deadline = time.monotonic() + bounds.wall_s
        with suppress(OSError):  # the child died before reading: its exit code says why
            ours.send_bytes(data)
        reply = waiter.reply(deadline, cancel)
    finally:
        if child.pid is not None:
            if child.is_alive():
                child.kill()
            child.join()
        for connection in (ours, theirs, errors_in, errors_out):
            connection.close()
    if reply is not None and reply[:1] == _OK:
        return Compiled(reply[1:], kind)
    if reply is not None and reply[:1] == _INVALID:
        raise CompileFailed("invalid", reply[1:].decode("utf-8", "replace"))
    raise _failure(child.exitcode, bytes(waiter.stderr), bounds, stopped=waiter.stopped)


@dataclass(eq=False)
class _Waiter:
    """Waits for the child's reply, draining its stderr meanwhile (so it never blocks on it)."""

    child: multiprocessing.process.BaseProcess
    channel: Connection
    errors: Connection
    limit: int
    stderr: bytearray = field(default_factory=bytearray)
    stopped: Literal["deadline", "cancelled"] | None = None

    def reply(self, deadline: float, cancel: threading.Event | None) -> bytes | None:
        """The reply; None when the child died without one or we killed it (see ``stopped``)."""
        watched: list[Connection | int] = [self.channel, self.errors, self.child.sentinel]
        while True:
            remaining = deadline - time.monotonic()
            if cancel is not None and cancel.is_set():
                self.stopped = "cancelled"
            elif remaining <= 0:
                self.stopped = "deadline"
            if self.stopped is not None:
                self.child.kill()
                return None
            ready = wait(watched, timeout=remaining if cancel is None else min(remaining, _POLL_S))
            if self.errors in ready:
                chunk = os.read(self.errors.fileno(), 65536)
                if not chunk:
                    watched.remove(self.errors)
                self.stderr += chunk[: max(0, _STDERR_KEEP - len(self.stderr))]
            if self.channel in ready or self.child.sentinel in ready:
                try:  # after the child ended, a reply it wrote just before is still in the pipe
                    if self.channel.poll(0):
                        return self.channel.recv_bytes(self.limit)
                except (EOFError, OSError):
                    pass
                if self.child.sentinel in ready:
                    return None
                watched.remove(self.channel)


def _failure(
    exitcode: int | None, stderr: bytes, bounds: CompileBounds, *, stopped: str | None
) -> CompileFailed:
    timeout = format_duration(bounds.cpu_ms)
    if stopped == "cancelled":
        return CompileFailed("cancelled", "compiling was cancelled")
    if stopped == "deadline":
        return CompileFailed(
            "timeout",
            f"compiling did not end within {bounds.wall_s:g} s of wall-clock time "
            f"(twice the policy's compile_timeout {timeout}, plus {_WALL_GRACE_S:g} s)",
        )
    if exitcode == -signal.SIGXCPU:
        return CompileFailed(
            "timeout", f"compiling took more than the policy's compile_timeout of {timeout} of CPU time"
        )
    if exitcode == _EXIT_MEMORY or _RUST_OOM in stderr:
        return CompileFailed(
            "memory",
            f"compiling needed more memory than the policy's compile_memory of {format_size(bounds.memory)}",
        )
    if exitcode is not None and exitcode < 0:
        try:
            how = f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            how = f"signal {-exitcode}"
    else:
        how = f"exit code {exitcode}"
    return CompileFailed("crashed", f"the compiler process died ({how}) without a result")


# -- the child -----------------------------------------------------------------------------------


def _lower_limit(which: int, value: int) -> None:
    """Set soft and hard limits to ``value``, never above the hard limit we inherited."""
    _soft, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))


def _child(
    channel: Connection, errors: Connection, fuel: bool, stack: int, cpu_s: int, memory: int, kind: WasmKind
) -> None:
    """Runs in the compile child: limit ourselves first, then read, compile and answer."""
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)  # the forkserver handed down the runner's stdin and stdout: not ours to use
    os.dup2(devnull, 1)
    os.close(devnull)
    os.dup2(errors.fileno(), 2)  # Wasmtime's abort message goes to the parent, not the terminal
    os.environ.clear()  # nothing of the runner's environment (a signing key) is left to read
    _lower_limit(resource.RLIMIT_CORE, 0)
    soft_hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    hard = cpu_s + 1 if soft_hard == resource.RLIM_INFINITY else min(cpu_s + 1, soft_hard)
    resource.setrlimit(resource.RLIMIT_CPU, (min(cpu_s, hard), hard))  # SIGXCPU, then SIGKILL
    _lower_limit(resource.RLIMIT_DATA, memory)
    try:
        data = channel.recv_bytes()
        try:
            engine = Engine(new_config(fuel=fuel, stack=stack))
            if kind == "component":
                from wasmtime.component import Component

                code: Module | Component = Component(engine, data)
            else:
                code = Module(engine, data)
            serialized = code.serialize()
        except WasmtimeError as exc:
            channel.send_bytes(_INVALID + str(exc).encode("utf-8", "replace")[:_STDERR_KEEP])
            return
        del data
        channel.send_bytes(_OK + serialized)
    except MemoryError:
        os._exit(_EXIT_MEMORY)
