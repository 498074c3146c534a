"""``sandrun serve``: a plan's routed jobs answer HTTP requests, WAGI-style, one fresh sandbox each.

A job with ``route: /api/x`` answers every request whose path is ``/api/x`` or lies under it (the
longest route wins). Each request runs the job once, in a fresh store, under the job's limits:

- the request is the guest's CGI context: ``REQUEST_METHOD``, ``SCRIPT_NAME`` (the route),
  ``PATH_INFO`` (the rest), ``QUERY_STRING``, ``CONTENT_TYPE`` (the real header, never a default),
  ``CONTENT_LENGTH`` (the body's real size), ``HTTP_*`` for the other headers, ``SERVER_*``,
  ``REMOTE_ADDR``; the manifest's own ``env`` wins over all of them; the body is the guest's stdin;
- the guest answers on stdout with CGI headers (``Status:`` among them), a blank line, the body.
  Output that is not that, a header value carrying CR or LF, or a header the server owns
  (``Content-Length``, ``Transfer-Encoding``, ``Connection``…) is refused with 500, never passed
  on; repeated headers (``Set-Cookie``) are kept;
- what can go wrong is a status, never a hung connection: body over ``max_body`` 413, every
  thread busy and the queue full 503, the job's timeout (plus a grace) 504, a trap or a failed
  exit 500, output over the job's cap 502;
- every request to a route is one ``request.served`` audit record; SIGTERM (or SIGINT) stops
  accepting, lets the requests in flight finish, then seals the log.

Starlette and uvicorn are imported here only (the ``serve`` extra): a plain install never needs them.
Guests run through :class:`GuestRunner`, the smallest seam that fits both a thread and a worker
process: one job, the request's stdin and environment, a cancel event, back an Outcome; each guest
thread of the server gets its own runner from a :data:`GuestRunners` factory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import math
import os
import queue
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import uvicorn
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from runner import __version__
from runner.audit import AuditLog
from runner.errors import InputError, SandrunError
from runner.plan import JobSpec, Plan
from runner.results import Outcome
from runner.sandbox import Runtime, required_thread_stack
from runner.textsafe import sanitize_text
from runner.worker import GRACE_S as WORKER_GRACE_S
from runner.worker import Isolation, JobRunner, job_runners

__all__ = [
    "REQUEST_SERVED",
    "GRACE_S",
    "GuestRunner",
    "GuestRunners",
    "GuestOutputError",
    "ServeOptions",
    "Service",
    "cgi_environ",
    "parse_cgi",
    "match_route",
    "thread_runners",
    "worker_runners",
    "is_loopback",
    "serve",
]

REQUEST_SERVED = "request.served"
GRACE_S = WORKER_GRACE_S + 0.5
"""How long past a job's timeout a request may wait for its guest before it is answered 504: past
the worker's own kill deadline, so the guest's outcome (``timeout``) is normally what is recorded."""


class GuestRunner(Protocol):
    """Runs guests for one server thread, one at a time."""

    def run(
        self, job: JobSpec, stdin: bytes, env: tuple[tuple[str, str], ...], cancel: threading.Event
    ) -> Outcome:
        """Run ``job`` with ``stdin`` as its stdin and exactly ``env``; whatever the guest does is in
        the Outcome, only the host's side raises (:class:`~runner.errors.SandrunError`)."""
        ...

    def close(self) -> None: ...


GuestRunners = Callable[[Runtime, Plan, Path], Callable[[], GuestRunner]]
"""Given the runtime (the served modules deployed), the plan and the root: a factory of runners."""

_MIN_THREAD_STACK = 8 << 20
_HEADER_BYTES_MAX = 64 * 1024  # request headers, all together (they all become guest env)
_HEAD_BYTES_MAX = _HEADER_BYTES_MAX + 16 * 1024  # the whole head on the wire: request line, framing
_CGI_HEADERS_MAX = 64 * 1024  # the guest's header block
_CGI_HEADER_COUNT_MAX = 100
_RECORD_PATH_MAX = 512
_SPARE_CONNECTIONS = 32  # beyond guests + queue: health checks, keep-alive clients between requests
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # controls but HTAB: CR and LF above all
_HEADER_NAME = re.compile(r"[A-Za-z0-9-]+")
#: Headers the server owns: the guest may not set them (framing, connection management, identity).
FORBIDDEN_HEADERS = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"keep-alive",
        b"upgrade",
        b"te",
        b"trailer",
        b"proxy-connection",
        b"proxy-authenticate",
        b"host",
        b"date",
        b"server",
        b"http2-settings",
        b"alt-svc",
    }
)


# -- options and routes -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ServeOptions:
    """How to serve. ``concurrency`` guests run at once; ``queue`` more requests may wait."""

    host: str = "127.0.0.1"
    port: int = 8080
    concurrency: int = field(default_factory=lambda: os.cpu_count() or 1)
    queue: int = 64
    max_body: int = 1 << 20
    cache_dir: Path | None = None
    #: from a connection's start (or a kept-alive request's first byte) to the end of its head
    head_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.queue < 0 or self.max_body < 0 or not self.head_timeout_s > 0:
            raise ValueError("concurrency must be >= 1, queue and max_body >= 0, head_timeout_s > 0")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, not {self.port}")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses: the only ones served without a warning."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _routes(plan: Plan) -> tuple[tuple[str, JobSpec], ...]:
    """The plan's routed jobs, longest route first (so the first match is the longest)."""
    routed = [(job.route, job) for job in plan.jobs if job.route is not None]
    if not routed:
        raise InputError.one("serve.no-routes", "no job has a route: give the jobs to serve a `route: /path`")
    return tuple(sorted(routed, key=lambda item: -len(item[0])))


def match_route(routes: Sequence[tuple[str, JobSpec]], path: str) -> tuple[JobSpec, str, str] | None:
    """``(job, SCRIPT_NAME, PATH_INFO)`` of the longest route that is ``path`` or a folder of it."""
    for prefix, job in routes:
        if prefix == "/":
            return job, "", path
        if path == prefix or path.startswith(prefix + "/"):
            return job, prefix, path[len(prefix) :]
    return None


def _bad_path(path: str) -> bool:
    """A path with a NUL or a ``.``/``..`` segment: routes never hold one, clients normalise them."""
    return "\x00" in path or any(part in (".", "..") for part in path.split("/"))


# -- CGI in ------------------------------------------------------------------------------------


def cgi_environ(
    *,
    method: str,
    script_name: str,
    path_info: str,
    query: str,
    headers: Sequence[tuple[bytes, bytes]],
    body_length: int,
    client: tuple[str, int] | None,
    server: tuple[str, int],
    scheme: str,
) -> dict[str, str]:
    """The request as CGI/1.1 variables (RFC 3875), without any of the host's environment.

    ``CONTENT_TYPE`` only when the request has that header; ``CONTENT_LENGTH`` is the size of the
    body the guest will read. Other headers become ``HTTP_*``, repeated ones joined with ``, ``;
    a header named with ``_`` is dropped (``X_A`` and ``X-A`` would both be ``HTTP_X_A``) and so
    is ``Proxy`` (httpoxy: ``HTTP_PROXY`` is a proxy setting to many programs).
    """
    env = {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_SOFTWARE": f"sandrun/{__version__}",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": server[0],
        "SERVER_PORT": str(server[1]),
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": script_name,
        "PATH_INFO": path_info,
        "QUERY_STRING": query,
        "CONTENT_LENGTH": str(body_length),
        "REQUEST_SCHEME": scheme,
    }
    if client is not None:
        env["REMOTE_ADDR"], env["REMOTE_PORT"] = client[0], str(client[1])
    joined: dict[str, list[str]] = {}
    for raw_name, raw_value in headers:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        if name == "content-type":
            env["CONTENT_TYPE"] = value
        elif name != "content-length" and name != "proxy" and _HEADER_NAME.fullmatch(name):
            joined.setdefault("HTTP_" + name.upper().replace("-", "_"), []).append(value)
    for key, values in joined.items():
        env[key] = ("; " if key == "HTTP_COOKIE" else ", ").join(values)
    return env


# -- CGI out -----------------------------------------------------------------------------------


class GuestOutputError(ValueError):
    """The guest's stdout is not a CGI response the server may pass on (the reason says why)."""


@dataclass(frozen=True, slots=True)
class CgiResponse:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


def parse_cgi(output: bytes) -> CgiResponse:
    """Split a guest's stdout into status, headers and body; refuse anything that could smuggle.

    Lines end in LF or CRLF; a CR anywhere else in the header block, a control character in a
    value, a folded (continued) line, a name that is not an HTTP token or a header the server
    owns is refused. ``Status: NNN reason`` sets the status (200..599); ``Location`` without a
    status is a 302.
    """
    end = _header_end(output)
    lines = output[:end].split(b"\n")
    body = output[end:]
    if len(lines) > _CGI_HEADER_COUNT_MAX:
        raise GuestOutputError(f"more than {_CGI_HEADER_COUNT_MAX} headers")
    status: int | None = None
    headers: list[tuple[bytes, bytes]] = []
    for raw in lines:
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if not line:
            continue  # the blank line that ends the block
        if line[:1] in (b" ", b"\t"):
            raise GuestOutputError("a folded header line (obsolete line folding)")
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise GuestOutputError(f"not a header line: {line[:40]!r}")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            raise GuestOutputError(f"a control character (CR, LF, NUL…) in the value of {name.decode()}")
        lower = name.lower()
        if lower == b"status":
            status = _status(value)
        elif lower in FORBIDDEN_HEADERS:
            raise GuestOutputError(f"the guest may not set {name.decode()} (the server owns it)")
        else:
            headers.append((lower, value))
    if status is None:
        status = 302 if any(name == b"location" for name, _ in headers) else 200
    return CgiResponse(status, tuple(headers), body)


def _header_end(output: bytes) -> int:
    """Where the body starts: after the first empty line (LF LF or CRLF CRLF or a mix)."""
    position = 0
    while True:
        newline = output.find(b"\n", position, _CGI_HEADERS_MAX)
        if newline < 0:
            raise GuestOutputError("no blank line after the headers (or a header block over 64 KiB)")
        if newline == position or (newline == position + 1 and output[position] == 0x0D):
            return newline + 1
        position = newline + 1


def _status(value: bytes) -> int:
    code = value[:3]
    if len(code) != 3 or not code.isdigit() or value[3:4] not in (b"", b" "):
        raise GuestOutputError(f"Status is not 'NNN reason': {value[:40]!r}")
    number = int(code)
    if not 200 <= number <= 599:
        raise GuestOutputError(f"Status {number} is not a final status (200..599)")
    return number


# -- running guests ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _PlanGuest:
    """A :class:`GuestRunner` over one of the executor's job runners (a job is its plan index)."""

    runner: JobRunner
    indices: Mapping[str, int]

    def run(
        self, job: JobSpec, stdin: bytes, env: tuple[tuple[str, str], ...], cancel: threading.Event
    ) -> Outcome:
        return self.runner.run(self.indices[job.id], cancel, stdin=stdin, env=env)

    def close(self) -> None:
        self.runner.close()


def _isolated(isolation: Isolation) -> GuestRunners:
    def runners(runtime: Runtime, plan: Plan, root: Path) -> Callable[[], GuestRunner]:
        make = job_runners(isolation, runtime, plan, root, passthrough=False)
        indices = {job.id: index for index, job in enumerate(plan.jobs)}
        return lambda: _PlanGuest(make(), indices)

    return runners


worker_runners = _isolated("workers")
"""Guests in the executor's worker processes (the default): one worker per guest thread, killed and
replaced when its guest overruns its deadline even inside a host call, or crashes."""
thread_runners = _isolated("threads")
"""Guests on the server's own threads: a guest in WASM code or asleep stops at its deadline, one
blocked in another host call keeps its thread until the call returns. For tests and benchmarks."""


@dataclass(eq=False)
class _Work:
    job: JobSpec
    stdin: bytes
    env: tuple[tuple[str, str], ...]
    cancel: threading.Event
    future: Future[Outcome] = field(default_factory=Future)


class _Pool:
    """``size`` threads running guests, at most ``size + waiting`` requests admitted at once.

    A slot is freed when its guest really ended, not when its request was answered: a guest that
    overran its deadline still counts until it stops, so the bound on guests running holds.
    """

    def __init__(
        self, runners: Callable[[], GuestRunner], size: int, waiting: int, thread_stack: int
    ) -> None:
        self._runners = runners
        self._capacity = size + waiting
        self._admitted = 0
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        previous = threading.stack_size(max(thread_stack, _MIN_THREAD_STACK))
        try:
            self._threads = [
                threading.Thread(target=self._loop, name=f"sandrun-serve-{i}", daemon=True)
                for i in range(size)
            ]
            for thread in self._threads:
                thread.start()
        finally:
            threading.stack_size(previous)

    @property
    def admitted(self) -> int:
        return self._admitted

    def admit(self, job: JobSpec, stdin: bytes, env: tuple[tuple[str, str], ...]) -> _Work | None:
        """Queue one guest run, or None when every thread is busy and the queue is full."""
        with self._lock:
            if self._admitted >= self._capacity:
                return None
            self._admitted += 1
        work = _Work(job, stdin, env, threading.Event())
        self._queue.put(work)
        return work

    def _loop(self) -> None:
        runner = self._runners()
        try:
            while (work := self._queue.get()) is not None:
                try:
                    if work.future.set_running_or_notify_cancel():  # False: its request gave up
                        try:
                            work.future.set_result(runner.run(work.job, work.stdin, work.env, work.cancel))
                        except BaseException as exc:
                            work.future.set_exception(exc)
                finally:
                    with self._lock:
                        self._admitted -= 1
        finally:
            runner.close()

    def close(self, timeout_s: float) -> None:
        """Stop the threads once the queue is empty; wait for running guests up to ``timeout_s``."""
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))


# -- the HTTP side -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Exchange:
    """What one request was and how it ended: the audit record's content."""

    route: str
    job: JobSpec
    method: str
    path: str
    query: str
    client: str | None
    status: int = 500
    reason: str | None = None
    body: bytes = b""
    response_bytes: int = 0
    outcome: Outcome | None = None

    def record(self) -> dict[str, Any]:
        outcome = self.outcome
        return {
            "route": self.route,
            "job": self.job.id,
            "module_sha256": self.job.module_sha256,
            "method": sanitize_text(self.method, limit=32),
            "path": sanitize_text(self.path, limit=_RECORD_PATH_MAX),
            "query_sha256": hashlib.sha256(self.query.encode("latin-1")).hexdigest(),
            "client": self.client,
            "status": self.status,
            "reason": self.reason,
            "request_bytes": len(self.body),
            "request_sha256": hashlib.sha256(self.body).hexdigest(),
            "response_bytes": self.response_bytes,
            "exit_code": None if outcome is None else outcome.exit_code,
            "trap": None if outcome is None else outcome.trap,
            "fuel_used": None if outcome is None else outcome.fuel_used,
            "wall_ms": None if outcome is None else outcome.wall_ms,
            "rss_peak": None if outcome is None else outcome.rss_peak,
            "stdout_sha256": None if outcome is None else outcome.stdout_sha256,
            "stderr_sha256": None if outcome is None else outcome.stderr_sha256,
            "stdout_dropped": 0 if outcome is None else outcome.stdout_dropped,
        }


class _TooLarge(Exception):
    pass


class _App:
    """The ASGI application: ``/healthz``, then the routes; each request ends in one audit record."""

    def __init__(
        self,
        routes: tuple[tuple[str, JobSpec], ...],
        pool: _Pool,
        log: AuditLog,
        options: ServeOptions,
        on_audit_failure: Callable[[], None],
    ) -> None:
        self.routes = routes
        self.pool = pool
        self.log = log
        self.options = options
        self.on_audit_failure = on_audit_failure
        self.served = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # websockets, lifespan: not served
            return
        request = Request(scope, receive)
        response = await self.handle(request)
        await response(scope, receive, send)

    async def handle(self, request: Request) -> Response:
        # from the ASGI scope itself: a URL rebuilt with the client's Host header could say otherwise
        path: str = request.scope["path"]
        if path == "/healthz":
            return JSONResponse({"status": "ok", "in_flight": self.pool.admitted, "served": self.served})
        found = None if _bad_path(path) else match_route(self.routes, path)
        if found is None:
            return PlainTextResponse("404 no such route\n", status_code=404)
        job, script_name, path_info = found
        client = request.client
        exchange = _Exchange(
            route=job.route or "/",
            job=job,
            method=request.method,
            path=path,
            query=request.scope["query_string"].decode("latin-1"),
            client=None if client is None else client.host,
        )
        response = await self.run(request, exchange, script_name, path_info)
        exchange.status = response.status_code
        exchange.response_bytes = len(response.body)
        try:
            self.log.append(REQUEST_SERVED, exchange.record())
        except Exception:  # the request cannot be recorded: it is not answered, and serving stops
            self.on_audit_failure()
            return PlainTextResponse("500 the request could not be recorded\n", status_code=500)
        self.served += 1
        return response

    async def run(self, request: Request, exchange: _Exchange, script_name: str, path_info: str) -> Response:
        job = exchange.job
        timeout_s = job.limits.timeout_ms / 1000 + GRACE_S
        raw_headers = request.scope["headers"]
        if sum(len(name) + len(value) for name, value in raw_headers) > _HEADER_BYTES_MAX:
            return _refusal(exchange, 431, "request headers over 64 KiB")
        try:
            exchange.body = await asyncio.wait_for(self.read_body(request), timeout_s)
        except _TooLarge:
            return _refusal(exchange, 413, f"request body over {self.options.max_body} bytes")
        except asyncio.TimeoutError:
            return _refusal(exchange, 408, "request body not received in time")
        except ClientDisconnect:
            return _refusal(exchange, 400, "client disconnected")
        server = request.scope.get("server") or (self.options.host, self.options.port)
        client = request.scope.get("client")
        env = cgi_environ(
            method=request.method,
            script_name=script_name,
            path_info=path_info,
            query=exchange.query,
            headers=raw_headers,
            body_length=len(exchange.body),
            client=None if client is None else (client[0], client[1]),
            server=(str(server[0]), int(server[1])),
            scheme=request.scope["scheme"],
        )
        env.update(job.env)  # the manifest's own variables win over anything a request sends
        work = self.pool.admit(job, exchange.body, tuple(env.items()))
        if work is None:
            return _refusal(exchange, 503, "every worker is busy and the queue is full", retry=True)
        try:
            exchange.outcome = await asyncio.wait_for(asyncio.wrap_future(work.future), timeout_s)
        except asyncio.TimeoutError:
            work.cancel.set()  # stops a running guest at its next check; a queued one never starts
            return _refusal(
                exchange, 504, f"no answer within the job's timeout of {job.limits.timeout_ms} ms"
            )
        except SandrunError as error:
            first = error.violations[0]
            return _refusal(exchange, 500, f"[{first.rule_id}] {first.message}")
        except Exception as error:  # a bug of ours: this request's 500, recorded, not the server's end
            return _refusal(exchange, 500, f"internal error: {type(error).__name__}")
        return _answer(exchange)

    async def read_body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.options.max_body:
            raise _TooLarge
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.options.max_body:
                raise _TooLarge
            chunks.append(chunk)
        return b"".join(chunks)


def _refusal(exchange: _Exchange, status: int, reason: str, *, retry: bool = False) -> Response:
    exchange.reason = reason
    headers = {"Retry-After": "1"} if retry else None
    return PlainTextResponse(f"{status} {reason}\n", status_code=status, headers=headers)


def _answer(exchange: _Exchange) -> Response:
    """The guest's answer, or the status that says why it has none."""
    outcome = exchange.outcome
    assert outcome is not None
    job = exchange.job
    if outcome.trap == "timeout":
        return _refusal(exchange, 504, f"the guest ran past its timeout of {job.limits.timeout_ms} ms")
    if outcome.trap is not None:
        return _refusal(exchange, 500, f"the guest trapped ({outcome.trap})")
    if outcome.stdout_dropped:
        return _refusal(exchange, 502, f"the guest's output exceeded its cap of {job.limits.output} bytes")
    if outcome.exit_code != job.expect_exit_code:
        return _refusal(exchange, 500, f"the guest exited with {outcome.exit_code}")
    try:
        cgi = parse_cgi(outcome.stdout)
    except GuestOutputError as error:
        return _refusal(exchange, 500, f"refused the guest's response: {error}")
    response = Response(cgi.body, status_code=cgi.status)
    if not any(name == b"content-type" for name, _ in cgi.headers):
        response.raw_headers.append((b"content-type", b"application/octet-stream"))
    response.raw_headers.extend(cgi.headers)
    response.raw_headers.append((b"x-content-type-options", b"nosniff"))
    return response


# -- the service -------------------------------------------------------------------------------


class _BoundedHead(HttpToolsProtocol):
    """uvicorn's httptools protocol with the two bounds it lacks on a request's *head*.

    Size: llhttp and uvicorn keep every header line until the head ends, without a limit (one
    connection sending 200 MB of headers made the server hold 200 MB); past ``_HEAD_BYTES_MAX``
    the connection gets 431 and is closed. Time: a connection sending nothing, or its head a byte
    at a time, held a connection slot forever (a hundred of them and every client got 503); a head
    not complete ``head_timeout_s`` after the connection opened (or, on a kept-alive connection,
    after the request's first byte) gets 408 and is closed. The body has its own bounds
    (``max_body``, and the job's timeout in :meth:`_App.run`).
    """

    head_timeout_s = 10.0  # a server's own subclass sets its ServeOptions.head_timeout_s

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._in_head:  # the next request of a kept-alive connection
            self._start_head()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._stop_head_timer()
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > _HEAD_BYTES_MAX:
                self._refuse(431, f"request head over {_HEAD_BYTES_MAX} bytes")

    def _start_head(self) -> None:
        self._in_head, self._head_bytes = True, 0
        self._stop_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_too_slow)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._refuse(408, f"request head not received within {self.head_timeout_s:g} s")

    def _refuse(self, status: int, reason: str) -> None:
        self._stop_head_timer()
        body = f"{status} {reason}\n".encode()
        head = b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
        length = b"content-length: %d\r\n\r\n" % len(body)
        self.transport.write(STATUS_LINE[status] + head + length + body)
        self.transport.close()


class _Server(uvicorn.Server):
    """uvicorn's server without its own signal handling: :func:`serve` decides what a signal does
    (uvicorn re-raises the signal after shutdown, which would end the process before the seal)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Service:
    """A bound, ready server: its address, and :meth:`stop` (what SIGTERM does: drain, then end)."""

    def __init__(self, server: _Server, sock: socket.socket, app: _App) -> None:
        self._server = server
        self.app = app
        self.address: tuple[str, int] = sock.getsockname()[:2]
        self.stopped_by: str | None = None

    def stop(self, reason: str = "stopped") -> None:
        """Stop accepting, let the requests in flight finish, then end :func:`serve`."""
        if self.stopped_by is None:
            self.stopped_by = reason
        self._server.should_exit = True

    def stop_now(self) -> None:
        """End without waiting for the requests in flight (a second Ctrl-C)."""
        self._server.force_exit = True
        self._server.should_exit = True


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto given explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # without it a keep-alive client waits ~40 ms (Nagle + delayed ACK) for each response body
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InputError.one("serve.bind", f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def serve(
    plan: Plan,
    *,
    root: Path,
    log: AuditLog,
    options: ServeOptions,
    on_ready: Callable[[Service], None] = lambda service: None,
    runners: GuestRunners = worker_runners,
) -> Service:
    """Serve the plan's routed jobs until :meth:`Service.stop` or SIGTERM/SIGINT, then return the
    stopped service. ``log`` is open (its plan records written); the caller seals it.

    Every routed job's module is compiled (or fetched) before the socket accepts anything, each
    as a ``tool.deployed`` record; a module that fails refuses the whole service.
    """
    routes = _routes(plan)
    jobs = [job for _, job in routes]
    with Runtime(cache_dir=options.cache_dir) as runtime:
        for job in jobs:
            source = runtime.load_module(job, root)
            log.append("tool.deployed", {"tool": job.tool, "manifest": job.manifest, "source": source})
        stack = max(required_thread_stack(job.limits) for job in jobs)
        pool = _Pool(runners(runtime, plan, root), options.concurrency, options.queue, stack)
        sock = _bind(options.host, options.port)
        drain_s = math.ceil(max(job.limits.timeout_ms for job in jobs) / 1000 + GRACE_S + 1)
        stopper: list[Service] = []
        app = _App(routes, pool, log, options, lambda: stopper[0].stop("audit log failure"))
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_level="warning",
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=drain_s,
            # bounds the bodies held in memory at once (each up to max_body); uvicorn answers 503 past it
            limit_concurrency=options.concurrency + options.queue + _SPARE_CONNECTIONS,
            # bounds a request head's size and time (uvicorn bounds neither)
            http=type("BoundedHead", (_BoundedHead,), {"head_timeout_s": options.head_timeout_s}),
        )
        server = _Server(config)
        service = Service(server, sock, app)
        stopper.append(service)
        try:
            with _signals_stop(service):
                on_ready(service)
                server.run(sockets=[sock])
        finally:
            sock.close()
            pool.close(drain_s)
    return service


@contextlib.contextmanager
def _signals_stop(service: Service) -> Iterator[None]:
    """On the main thread, SIGTERM and SIGINT stop the service gracefully (a second SIGINT: now)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        if service.stopped_by is not None and signum == signal.SIGINT:
            service.stop_now()
        service.stop(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
