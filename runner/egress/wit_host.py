"""``sandrun:http/client`` for components: the WIT interface ``wit/sandrun-http.wit`` over the same
egress layer as the core ABI (:mod:`runner.egress.abi`).

wasmtime-py's component linker can define host functions, so a component importing
``sandrun:http/client`` gets the job's :class:`~runner.egress.Egress`: the same strict JSON, grant,
blocks, pinning, secrets, bounds and ``net.request`` records. Every refusal or failure is an
``err`` value; nothing a guest or a server does makes a well-typed call trap.

The function is defined through Wasmtime's C API (``wasmtime_component_linker_instance_add_func``)
rather than wasmtime-py's ``LinkerInstance.add_func``, whose generic conversion moves a
``list<u8>`` one Python call per byte (about 2.4 s for a 1 MiB body, measured): here a body
crosses in one copy each way, and its length is checked against the job's cap before it is read.
A dynamically defined function takes the type the component imports it with, so the values are
checked here: a component importing ``request`` with another type gets a trap, not a misread.
"""

from __future__ import annotations

import ctypes
import itertools
from collections.abc import Callable
from typing import Any

import wasmtime.component._enter
from wasmtime import Engine, WasmtimeError
from wasmtime import _ffi as ffi
from wasmtime.component import (
    Component,
    ComponentInstanceType,
    EnumType,
    FuncType,
    Linker,
    ListType,
    RecordType,
    ResultType,
    TupleType,
)

from runner.egress import abi
from runner.egress.client import EgressError, Response

__all__ = [
    "INTERFACE",
    "ERROR_KINDS",
    "BODY_MAX",
    "SIGNATURE",
    "IMPORT_RULE",
    "define_client",
    "import_problem",
]

#: The import name a component uses: ``(import "sandrun:http/client" (instance ...))``.
INTERFACE = "sandrun:http/client"

#: The cases of the WIT ``error-kind`` enum, in order (the egress layer's error kinds).
ERROR_KINDS = ("invalid", "denied", "dns", "connect", "tls", "timeout", "too-large", "limit", "protocol")

#: The largest response body a component receives (a larger one is ``err(too-large)``): each byte
#: is a 32-byte value in Wasmtime's C API on its way into the guest.
BODY_MAX = 1 << 20

#: The rule id (runner/rules.py, a job failure) of a component whose import :func:`import_problem`
#: refuses.
IMPORT_RULE = "net.component-import"

#: ``request``'s type as :func:`_render` spells it, from ``wit/sandrun-http.wit``.
SIGNATURE = (
    "func(request: string, body: list<u8>) -> result<"
    "record{status: u16, headers: list<tuple<string, string>>, body: list<u8>}, "
    f"record{{kind: enum{{{', '.join(ERROR_KINDS)}}}, rule: string, message: string}}>"
)

_VALUE = ffi.wasmtime_component_val_t
_VALUE_SIZE = ctypes.sizeof(_VALUE)
_PAYLOAD = _VALUE.of.offset  # where a value's payload (a u8's byte) starts
_U8 = ffi.WASMTIME_COMPONENT_U8.value
_STRING = ffi.WASMTIME_COMPONENT_STRING.value
_LIST = ffi.WASMTIME_COMPONENT_LIST.value
_RECORD = ffi.WASMTIME_COMPONENT_RECORD.value
_TUPLE = ffi.WASMTIME_COMPONENT_TUPLE.value
_ENUM = ffi.WASMTIME_COMPONENT_ENUM.value
_RESULT = ffi.WASMTIME_COMPONENT_RESULT.value


class _WrongType(Exception):
    """The component imported ``request`` with a type other than the WIT file's."""


# -- component values, read and built through Wasmtime's C API


def _read_bytes(value: Any) -> bytes:
    """A ``list<u8>`` value's bytes in one copy (every element must be a ``u8``)."""
    count = value.of.list.size
    if not count:
        return b""
    raw = ctypes.string_at(value.of.list.data, count * _VALUE_SIZE)
    if raw[0::_VALUE_SIZE] != bytes([_U8]) * count:
        raise _WrongType("body is not a list<u8>")
    return raw[_PAYLOAD::_VALUE_SIZE]


def _set_string(target: Any, text: str) -> None:
    target.of.string = ffi.str_to_capi(text)
    target.kind = _STRING


def _set_bytes(target: Any, data: bytes) -> None:
    items = ffi.wasmtime_component_vallist_t()
    ffi.wasmtime_component_vallist_new_uninit(ctypes.byref(items), len(data))
    if data:
        layout = bytearray(len(data) * _VALUE_SIZE)
        layout[0::_VALUE_SIZE] = bytes([_U8]) * len(data)
        layout[_PAYLOAD::_VALUE_SIZE] = data
        ctypes.memmove(items.data, (ctypes.c_char * len(layout)).from_buffer(layout), len(layout))
    target.of.list = items
    target.kind = _LIST


def _set_pairs(target: Any, pairs: tuple[tuple[str, str], ...]) -> None:
    items = ffi.wasmtime_component_vallist_t()
    ffi.wasmtime_component_vallist_new_uninit(ctypes.byref(items), len(pairs))
    for index, (name, value) in enumerate(pairs):
        pair = ffi.wasmtime_component_valtuple_t()
        ffi.wasmtime_component_valtuple_new_uninit(ctypes.byref(pair), 2)
        _set_string(pair.data[0], name)
        _set_string(pair.data[1], value)
        items.data[index].of.tuple = pair
        items.data[index].kind = _TUPLE
    target.of.list = items
    target.kind = _LIST


def _set_record(target: Any, fields: list[tuple[str, Callable[[Any], None]]]) -> None:
    record = ffi.wasmtime_component_valrecord_t()
    ffi.wasmtime_component_valrecord_new_uninit(ctypes.byref(record), len(fields))
    for index, (name, fill) in enumerate(fields):
        record.data[index].name = ffi.str_to_capi(name)
        fill(record.data[index].val)
    target.of.record = record
    target.kind = _RECORD


def _set_result(target: Any, outcome: Response | EgressError) -> None:
    """``ok(response)`` or ``err(request-error)``, in the WIT file's field order."""
    inner = _VALUE()
    if isinstance(outcome, Response):
        status = outcome.status

        def set_status(value: Any) -> None:
            value.of.u16 = status
            value.kind = ffi.WASMTIME_COMPONENT_U16.value

        _set_record(
            inner,
            [
                ("status", set_status),
                ("headers", lambda value: _set_pairs(value, outcome.headers)),
                ("body", lambda value: _set_bytes(value, outcome.body)),
            ],
        )
    else:
        kind = outcome.kind if outcome.kind in ERROR_KINDS else "protocol"

        def set_kind(value: Any) -> None:
            value.of.enumeration = ffi.str_to_capi(kind)
            value.kind = _ENUM

        _set_record(
            inner,
            [
                ("kind", set_kind),
                ("rule", lambda value: _set_string(value, outcome.rule)),
                ("message", lambda value: _set_string(value, outcome.message)),
            ],
        )
    target.of.result.is_ok = isinstance(outcome, Response)
    target.of.result.val = ffi.wasmtime_component_val_new(ctypes.byref(inner))
    target.kind = _RESULT


# -- the host function


def _serve(session: abi.Session | None, request_json: str, body: Any) -> Response | EgressError:
    """One request, checked and recorded by the egress layer; a failure is returned, not raised."""
    if session is None:
        return EgressError("denied", "net.no-grant", "no job is running on this thread")
    try:
        egress = session.egress
        abi.check_body(body.of.list.size, egress.bounds)  # before a byte of it is copied
        response = egress.request(abi.parse_request(request_json.encode(), _read_bytes(body)))
        if len(response.body) > BODY_MAX:
            message = f"the response body exceeds the component cap of {BODY_MAX} bytes"
            return EgressError("too-large", "net.body", message)
        return response
    except EgressError as exc:
        return exc
    except _WrongType:
        raise
    except Exception as exc:  # a bug of ours must not trap the guest
        return EgressError("protocol", "net.internal", f"{type(exc).__name__}: {exc}")


_BINDINGS: dict[int, abi.Session | None] = {}  # per definition: its session (None: the thread's)
_KEYS = itertools.count(1)


def _error(message: str) -> int:
    return ctypes.cast(WasmtimeError(message)._consume(), ctypes.c_void_p).value or 0


@ffi.wasmtime_component_func_callback_t
def _request(key: Any, _context: Any, _type: Any, args: Any, nargs: int, results: Any, nresults: int) -> int:
    try:
        if nargs != 2 or nresults != 1 or args[0].kind != _STRING or args[1].kind != _LIST:
            raise _WrongType("expected (string, list<u8>) -> result")
        session = _BINDINGS.get(key or 0)
        outcome = _serve(
            abi.current() if session is None else session, ffi.to_str(args[0].of.string), args[1]
        )
        _set_result(results[0], outcome)
        return 0
    except _WrongType as exc:
        return _error(f"{INTERFACE}#request is imported with another type than wit/sandrun-http.wit's: {exc}")
    except BaseException as exc:  # Ctrl-C: re-raised by wasmtime-py once the call unwinds
        wasmtime.component._enter.LAST_EXCEPTION = exc  # type: ignore[assignment]
        return _error("python exception")
    finally:
        for index in range(nargs):  # the arguments are ours to free, as in wasmtime-py
            ffi.wasmtime_component_val_delete(ctypes.byref(args[index]))


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def _release(key: Any) -> None:
    _BINDINGS.pop(key or 0, None)


def define_client(linker: Linker, session: abi.Session | None = None) -> None:
    """Define ``sandrun:http/client`` in ``linker``: bound to ``session`` (a job's), or, when None,
    to the session bound to the calling thread (:func:`runner.egress.abi.bound`), as the core
    functions are, so one linker can serve every job of an engine."""
    key = next(_KEYS)
    _BINDINGS[key] = session
    name = ctypes.create_string_buffer(b"request")
    with linker.root() as root, root.add_instance(INTERFACE) as client:
        error = ffi.wasmtime_component_linker_instance_add_func(
            client.ptr(), name, len(b"request"), _request, key, _release
        )
    if error:
        _BINDINGS.pop(key, None)
        raise WasmtimeError._from_ptr(error)


# -- the import, checked before a component runs


def _render(kind: Any) -> str:
    """A component value type in WIT-like text (records and enums spelled out, not named)."""
    if isinstance(kind, ListType):
        return f"list<{_render(kind.element)}>"
    if isinstance(kind, TupleType):
        return f"tuple<{', '.join(_render(element) for element in kind.elements)}>"
    if isinstance(kind, RecordType):
        return f"record{{{', '.join(f'{name}: {_render(field)}' for name, field in kind.fields)}}}"
    if isinstance(kind, EnumType):
        return f"enum{{{', '.join(kind.names)}}}"
    if isinstance(kind, ResultType):
        return f"result<{_render(kind.ok)}, {_render(kind.err)}>"
    return type(kind).__name__.lower()  # string, u8, u16 ... (wasmtime-py's class names)


def import_problem(component: Component, engine: Engine) -> str | None:
    """Why ``component``'s import of ``sandrun:http/client`` does not match the WIT file, or None
    (also when it does not import it). A component runner calls this before instantiating: a
    dynamically defined host function would otherwise accept whatever type the import declares."""
    imported = component.type.imports(engine).get(INTERFACE)
    if imported is None:
        return None
    if not isinstance(imported.ty, ComponentInstanceType):
        return f"{INTERFACE} is imported as a {type(imported.ty).__name__}, not an instance"
    for name, item in imported.ty.exports(engine).items():
        kind = item.ty
        if name == "request":
            found = _render_func(kind) if isinstance(kind, FuncType) else type(kind).__name__
            if found != SIGNATURE:
                return f"{INTERFACE}: request is imported as {found}; the interface is {SIGNATURE}"
        elif isinstance(kind, FuncType):
            return f"{INTERFACE} has no function {name!r} (wit/sandrun-http.wit)"
    return None


def _render_func(kind: FuncType) -> str:
    params = ", ".join(f"{name}: {_render(param)}" for name, param in kind.params)
    return f"func({params}) -> {'()' if kind.result is None else _render(kind.result)}"
