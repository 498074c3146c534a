"""How the egress layer looks names up and opens sockets, and the seam tests replace.

:class:`Seam` is the documented test seam (issue 11): a resolver, a connector and extra trust
anchors, passed through the library API only (``BatchOptions(egress=Seam(...))``). No environment
variable or file switches it: a switch CI could flip would itself be an SSRF hole. A seam is
picklable when its resolver and connector are, so it can reach jobs in worker processes.

Neither side reads proxies from the environment: the connector dials the checked address itself.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "CANCEL_POLL_S",
    "Resolver",
    "Connector",
    "SystemResolver",
    "SystemConnector",
    "Seam",
    "LookupFailed",
    "resolve_within",
    "Watchdog",
    "WATCHDOG",
]


#: How often a request in flight looks at its job's cancel event (fail-fast, Ctrl-C).
CANCEL_POLL_S = 0.05


class Resolver(Protocol):
    """Turns a host name into IP address texts; raise ``OSError`` when it cannot."""

    def resolve(self, host: str, port: int) -> Sequence[str]: ...


class Connector(Protocol):
    """Opens a TCP connection to an already checked IP address (never a name)."""

    def connect(self, address: str, port: int, timeout: float) -> socket.socket: ...


class SystemResolver:
    """The operating system's resolver (``getaddrinfo``), every TCP answer."""

    def resolve(self, host: str, port: int) -> Sequence[str]:
        answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        return [str(info[4][0]) for info in answers]


class SystemConnector:
    """A plain TCP connection to the address, a literal: no lookup, so no resolver is consulted."""

    def connect(self, address: str, port: int, timeout: float) -> socket.socket:
        sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect((address, port))
        except BaseException:
            sock.close()
            raise
        return sock


@dataclass(frozen=True, slots=True)
class Seam:
    """Where the egress layer resolves and dials, and which extra CA certificates (PEM) it trusts."""

    resolver: Resolver = field(default_factory=SystemResolver)
    connector: Connector = field(default_factory=SystemConnector)
    extra_ca_pem: bytes = b""


class LookupFailed(Exception):
    """The resolver raised, answered nothing, or did not answer in time (``timed_out``)."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


def resolve_within(
    resolver: Resolver, host: str, port: int, timeout: float, cancel: threading.Event | None = None
) -> list[str]:
    """Ask ``resolver`` on a daemon thread and wait at most ``timeout`` seconds (less once
    ``cancel`` is set).

    A lookup that hangs is abandoned (its thread ends whenever the resolver returns): a request
    must end at its deadline even while DNS hangs, and ``getaddrinfo`` cannot be interrupted.
    """
    answer: list[Sequence[str] | BaseException] = []
    done = threading.Event()

    def lookup() -> None:
        try:
            answer.append(resolver.resolve(host, port))
        except BaseException as exc:  # handed to the caller's thread
            answer.append(exc)
        done.set()

    threading.Thread(target=lookup, name="sandrun-dns", daemon=True).start()
    deadline = time.monotonic() + timeout
    while not done.wait(max(0.0, min(deadline - time.monotonic(), CANCEL_POLL_S))):
        if time.monotonic() >= deadline or (cancel is not None and cancel.is_set()):
            raise LookupFailed(f"resolving {host} did not finish in time", timed_out=True)
    result = answer[0]
    if isinstance(result, BaseException):
        raise LookupFailed(f"cannot resolve {host}: {result}")
    if isinstance(result, str) or not result:
        raise LookupFailed(f"{host} has no address")
    return [str(item) for item in result]


class Watchdog:
    """One thread that cuts requests off at their deadlines (``cut`` shuts the socket down).

    A socket timeout bounds each read, not a request: a server that sends one byte per second
    keeps a read alive forever. Shutting the socket down ends whatever read is in progress.
    """

    def __init__(self) -> None:
        self._reset()
        # A forked child inherits this object but not its thread, and perhaps a held lock.
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._heap: list[tuple[float, int]] = []
        self._armed: dict[int, Callable[[], None]] = {}
        self._cancels: dict[int, threading.Event] = {}  # armed requests that a cancel also cuts
        self._fired: set[int] = set()
        self._ids = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def arm(self, deadline: float, cut: Callable[[], None], cancel: threading.Event | None = None) -> int:
        """Call ``cut`` at ``deadline`` (``time.monotonic``), or soon after ``cancel`` is set (it is
        looked at every ``CANCEL_POLL_S``), unless disarmed first."""
        with self._cond:
            token = next(self._ids)
            self._armed[token] = cut
            if cancel is not None:
                self._cancels[token] = cancel
            # Wake the thread only when it sleeps past this deadline: a wake-up per request would
            # cost a GIL hand-off each time. Stale (disarmed) entries are dropped when they surface.
            earliest = not self._heap or deadline < self._heap[0][0]
            heapq.heappush(self._heap, (deadline, token))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sandrun-watchdog", daemon=True)
                self._thread.start()
            elif earliest:
                self._cond.notify()
            return token

    def disarm(self, token: int) -> bool:
        """Stop watching; True when the deadline had already cut the request off."""
        with self._cond:
            self._armed.pop(token, None)
            self._cancels.pop(token, None)
            if token in self._fired:
                self._fired.discard(token)
                return True
            return False

    def _run(self) -> None:
        with self._cond:
            while True:
                for token in [t for t, event in self._cancels.items() if event.is_set()]:
                    self._fire(token)
                while self._heap and self._heap[0][1] not in self._armed:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, token = self._heap[0]
                delay = deadline - time.monotonic()
                if delay > 0:
                    # while anything is queued, look at cancel events every CANCEL_POLL_S (no
                    # wake-up per request needed: stale entries keep the queue busy a while)
                    self._cond.wait(min(delay, CANCEL_POLL_S))
                    continue
                heapq.heappop(self._heap)
                self._fire(token)

    def _fire(self, token: int) -> None:
        cut = self._armed.pop(token)
        self._cancels.pop(token, None)
        self._fired.add(token)
        with contextlib.suppress(Exception):  # the watchdog must outlive any one request
            cut()


#: The process's watchdog (one thread, started on first use).
WATCHDOG = Watchdog()
