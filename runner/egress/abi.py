"""The guest side of ``sandrun:http``: five host functions over a guest's linear memory.

Pure Python: the sandbox wraps a wasmtime ``Caller`` into :class:`GuestMemory` and links
:data:`FUNCTIONS`; everything else (JSON, pointers, handles, error codes) is here. The contract,
with the C header ``include/sandrun_http.h``, is ``docs/http.md``. Rules every function keeps:

- never raise (an exception in a host function crosses threads through a wasmtime-py global):
  every failure is a negative code, and :func:`last_error` gives its text ``[rule] message``;
- every pointer is masked to u32 (an ``i32`` arrives signed) and bounds-checked against the memory's
  size *at this call* (``memory.grow`` may have moved or grown it since the last one);
- a simple request costs three host calls: ``request`` (status and sizes written to ``out``),
  ``read_body`` into a buffer that fits, ``close``.
"""

from __future__ import annotations

import json
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # the client (httptools, ssl) is imported when a guest first calls out
    from runner.egress.client import Bounds, Egress, EgressError, Request, Response

__all__ = [
    "MODULE",
    "ERRORS",
    "GuestMemory",
    "Session",
    "FUNCTIONS",
    "bound",
    "current",
    "parse_request",
    "check_body",
]

MODULE = "sandrun:http"

#: Error codes (negative returns) by the egress layer's error kind; ``docs/http.md`` lists them.
ERRORS: dict[str, int] = {
    "invalid": -1,
    "fault": -2,
    "denied": -3,
    "dns": -4,
    "connect": -5,
    "tls": -6,
    "timeout": -7,
    "too-large": -8,
    "limit": -9,
    "protocol": -10,
    "handle": -11,
}

_U32 = 0xFFFFFFFF
_MAX_JSON = 64 << 10
_OUT = struct.Struct("<III")  # status, headers length, body length
_REQUEST_KEYS = frozenset({"url", "method", "headers", "redirects", "timeout_ms"})


class GuestMemory(Protocol):
    """The calling instance's exported ``memory``, looked up afresh for each host call."""

    def size(self) -> int: ...

    def read(self, start: int, stop: int) -> bytes: ...

    def write(self, data: bytes, start: int) -> None: ...


class _Fault(Exception):
    """A pointer outside the guest's memory, or a guest mistake: becomes an error code."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(slots=True)
class _Open:
    """A response a guest reads: its headers and body, and how far it has read each."""

    headers: bytes
    body: bytes
    header_offset: int = 0
    body_offset: int = 0


class Session:
    """One job's handles and last error, around its :class:`Egress`, built on the first call (most
    jobs never make one, and building the grant is not free)."""

    def __init__(self, make_egress: Callable[[], Egress]) -> None:
        self._make_egress = make_egress
        self._egress: Egress | None = None
        self.handles: dict[int, _Open] = {}
        self.last_error = ""
        self.host_memory: object = None  # the host adapter's handle on the job's guest memory
        self._next = 1

    @property
    def egress(self) -> Egress:
        if self._egress is None:
            self._egress = self._make_egress()
        return self._egress

    @property
    def hops(self) -> tuple[dict[str, Any], ...]:
        """The audit record of every hop so far (``net.request``)."""
        return () if self._egress is None else tuple(self._egress.hops)

    def fail(self, kind: str, text: str) -> int:
        self.last_error = text
        return ERRORS[kind]

    def open(self, response: Response) -> int:
        if len(self.handles) >= self.egress.bounds.max_handles:
            raise _Fault("limit", f"[net.handles] more than {self.egress.bounds.max_handles} open handles")
        handle = self._next
        self._next += 1
        headers = "".join(f"{k}: {v}\r\n" for k, v in response.headers).encode("latin-1", "replace")
        self.handles[handle] = _Open(headers=headers, body=response.body)
        return handle


_current = threading.local()


def current() -> Session | None:
    """The session bound to this thread (the running job's), if any."""
    return getattr(_current, "session", None)


@contextmanager
def bound(session: Session) -> Iterator[Session]:
    """Make ``session`` the one the host functions on this thread serve (the job's thread)."""
    previous = getattr(_current, "session", None)
    _current.session = session
    try:
        yield session
    finally:
        _current.session = previous


def _span(memory: GuestMemory, pointer: int, length: int) -> tuple[int, int]:
    start, length = pointer & _U32, length & _U32
    if start + length > memory.size():
        raise _Fault("fault", f"[net.fault] {length} bytes at {start} lie outside the guest's memory")
    return start, start + length


class _Object(list[tuple[str, Any]]):
    """A JSON object as its (key, value) pairs in order, so duplicate keys stay visible."""


_DECODER = json.JSONDecoder(object_pairs_hook=_Object)


def _invalid(message: str) -> EgressError:
    from runner.egress.client import EgressError

    return EgressError("invalid", "net.request", message)


def check_body(length: int, bounds: Bounds) -> None:
    """Refuse a request body over the job's cap before it is copied out of the guest."""
    if length > bounds.max_body:
        from runner.egress.client import EgressError

        raise EgressError("too-large", "net.body", f"the request body exceeds {bounds.max_body} bytes")


def _members(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, _Object):
        raise _invalid(f"{what} must be a JSON object")
    members = dict(value)
    if len(members) != len(value):
        raise _invalid(f"duplicate key in {what}")
    return members


def parse_request(raw: bytes, body: bytes) -> Request:
    """The guest's strict request JSON (UTF-8, no duplicate or unknown keys) and body, as a
    :class:`Request`; :class:`EgressError` (``invalid``, rule ``net.request``) when it is not."""
    if len(raw) > _MAX_JSON:
        raise _invalid(f"the request JSON is longer than {_MAX_JSON} bytes")
    try:
        data = _DECODER.decode(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _invalid(f"the request is not strict JSON: {exc}") from None
    request = _members(data, "the request")
    if not isinstance(request.get("url"), str):
        raise _invalid('expected an object with "url"')
    if not request.keys() <= _REQUEST_KEYS:
        raise _invalid(f"unknown keys {sorted(request.keys() - _REQUEST_KEYS)}")
    method = request.get("method", "GET")
    headers = _members(request.get("headers", _Object()), "headers")
    redirects, timeout = request.get("redirects", 0), request.get("timeout_ms")
    if not isinstance(method, str):
        raise _invalid("method is a string")
    if not all(isinstance(v, str) for v in headers.values()):
        raise _invalid("header values are strings")
    for name, value in (("redirects", redirects), ("timeout_ms", timeout)):
        if value is not None and (type(value) is not int or value < 0):
            raise _invalid(f"{name} is a non-negative integer")
    if timeout == 0:
        raise _invalid("timeout_ms must be positive")
    from runner.egress.client import Request

    return Request(
        url=request["url"],
        method=method,
        headers=tuple(headers.items()),
        body=body,
        redirects=redirects,
        timeout_s=None if timeout is None else timeout / 1000,
    )


def _guarded(function: Callable[..., int]) -> Callable[..., int]:
    """Run a host function for the bound session; any failure becomes a code, never an exception."""

    def host(memory: GuestMemory, *args: int) -> int:
        session: Session | None = getattr(_current, "session", None)
        if session is None:
            return ERRORS["denied"]
        try:
            return function(session, memory, *args)
        except _Fault as fault:
            return session.fail(fault.kind, str(fault))
        except Exception as exc:  # a bug of ours must not trap the guest or unwind into wasmtime
            from runner.egress.client import EgressError

            if isinstance(exc, EgressError):
                return session.fail(exc.kind, f"[{exc.rule}] {exc.message}")
            return session.fail("protocol", f"[net.internal] {type(exc).__name__}: {exc}")

    host.__name__ = function.__name__
    host.__doc__ = function.__doc__
    return host


@_guarded
def request(
    session: Session,
    memory: GuestMemory,
    json_ptr: int,
    json_len: int,
    body_ptr: int,
    body_len: int,
    out_ptr: int,
) -> int:
    """Perform a request; write (status, headers length, body length) at ``out``; return a handle."""
    if json_len & _U32 > _MAX_JSON:  # refused before it is copied out of the guest
        raise _invalid(f"the request JSON is longer than {_MAX_JSON} bytes")
    check_body(body_len & _U32, session.egress.bounds)
    json_span, body_span, out_span = (
        _span(memory, json_ptr, json_len),
        _span(memory, body_ptr, body_len),
        _span(memory, out_ptr, _OUT.size),
    )
    raw = memory.read(*json_span)
    body = memory.read(*body_span) if body_len & _U32 else b""
    response = session.egress.request(parse_request(raw, body))
    handle = session.open(response)
    opened = session.handles[handle]
    # a memory only grows, so the span checked before the request still fits
    memory.write(_OUT.pack(response.status, len(opened.headers), len(opened.body)), out_span[0])
    return handle


def _read(session: Session, memory: GuestMemory, handle: int, pointer: int, capacity: int, part: str) -> int:
    opened = session.handles.get(handle & _U32)
    if opened is None:
        raise _Fault("handle", f"[net.handle] no open response with handle {handle & _U32}")
    start, stop = _span(memory, pointer, capacity)
    data = opened.headers if part == "headers" else opened.body
    offset = opened.header_offset if part == "headers" else opened.body_offset
    chunk = data[offset : offset + (stop - start)]
    if chunk:
        memory.write(chunk, start)
    if part == "headers":
        opened.header_offset += len(chunk)
    else:
        opened.body_offset += len(chunk)
    return len(chunk)


@_guarded
def read_headers(session: Session, memory: GuestMemory, handle: int, pointer: int, capacity: int) -> int:
    """Copy the next bytes of the ``Name: value\\r\\n`` header block; 0 at its end."""
    return _read(session, memory, handle, pointer, capacity, "headers")


@_guarded
def read_body(session: Session, memory: GuestMemory, handle: int, pointer: int, capacity: int) -> int:
    """Copy the next bytes of the body; 0 at its end."""
    return _read(session, memory, handle, pointer, capacity, "body")


@_guarded
def close(session: Session, memory: GuestMemory, handle: int) -> int:
    """Free a response; 0, or the handle error."""
    if session.handles.pop(handle & _U32, None) is None:
        raise _Fault("handle", f"[net.handle] no open response with handle {handle & _U32}")
    return 0


@_guarded
def last_error(session: Session, memory: GuestMemory, pointer: int, capacity: int) -> int:
    """Copy the last error's UTF-8 text (cut to ``capacity``); return its full length."""
    text = session.last_error.encode("utf-8")
    start, stop = _span(memory, pointer, capacity)
    if text and stop > start:
        memory.write(text[: stop - start], start)
    return len(text)


#: (name, parameter count, implementation): every parameter and result is an ``i32``.
FUNCTIONS: tuple[tuple[str, int, Callable[..., int]], ...] = (
    ("request", 5, request),
    ("read_headers", 3, read_headers),
    ("read_body", 3, read_body),
    ("close", 1, close),
    ("last_error", 2, last_error),
)
