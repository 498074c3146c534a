"""Typed ``invoke``: call one export with arguments parsed against its type, render what it returns.

Two entry points, one per kind of WebAssembly:

* :func:`invoke_core` for a core module's function export (parameters and results ``i32``, ``i64``,
  ``f32``, ``f64``; read in WAVE as ``s32``, ``s64``, ``f32``, ``f64``). :func:`invoke_core_args`
  keeps the older form (an export name and its arguments as strings, ``0x`` hex and the unsigned
  range accepted, as ``wasmtime run --invoke NAME ARGS`` reads them).
* :func:`invoke_component` for a component's function export, any WIT value type but resources.

Every argument is checked before the call: wasmtime-py truncates integers to the parameter's
width without a word (``add(1, 2**40)`` would return 1). A refusal is an :class:`InvokeError` with
a rule id; a trap in the guest propagates as wasmtime's own exception for the caller to classify.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import wasmtime
import wasmtime.component as wc

from runner import wave
from runner.wasmfile import Signature
from runner.wave import Case, WaveError, WaveType

__all__ = ["InvokeError", "InvokeResult", "invoke_component", "invoke_core", "invoke_core_args"]


Setup = Callable[[], None]
ExportTypes = Callable[[str], Signature | None]
"""An export's parameter and result types read from the module's bytes (None: not known)."""
MAX_RESULT_TEXT = 64 * 1024  # characters of WAVE text a call's results may take


class InvokeError(Exception):
    """The call cannot be made as asked: ``rule_id`` says why (``invoke.malformed``,
    ``invoke.type``, ``invoke.out-of-range``, ``invoke.export``, ``invoke.arity``)."""

    def __init__(self, rule_id: str, message: str) -> None:
        super().__init__(message)
        self.rule_id = rule_id
        self.message = message

    def record(self) -> dict[str, Any]:
        """The ``invoke`` field of ``report.json`` and ``job.finished`` for a refused call."""
        return {"rule": self.rule_id, "error": self.message}


@dataclass(frozen=True, slots=True)
class InvokeResult:
    """What the export returned: ``lines`` as ``wasmtime run --invoke`` prints them (a core module:
    one line per result; a component: one WAVE line), ``wave`` the results in WAVE (one value, or a
    parenthesized list when there are zero or several) and ``json`` one JSON value per result."""

    export: str
    lines: tuple[str, ...]
    wave: str
    json: tuple[Any, ...]

    def record(self) -> dict[str, Any]:
        """The ``invoke`` field of ``report.json`` and ``job.finished`` (docs/invoke.md)."""
        return {"export": self.export, "wave": self.wave, "json": list(self.json)}


def _wave_error(exc: WaveError, what: str) -> InvokeError:
    return InvokeError(exc.rule_id, f"{what}: {exc.message}")


def _typed_args(call: wave.Call, params: Sequence[tuple[str, WaveType]]) -> list[Any]:
    """The call's arguments read against ``params``; trailing ``option`` parameters may be left out."""
    if len(call.args) > len(params) or any(
        not isinstance(t, wave.OptionT) for _, t in params[len(call.args) :]
    ):
        raise InvokeError(
            "invoke.arity", f"{call.name!r} takes {len(params)} argument(s), the call gives {len(call.args)}"
        )
    values: list[Any] = []
    for index, (name, ty) in enumerate(params):
        if index >= len(call.args):
            values.append(Case("none"))
            continue
        try:
            values.append(wave.from_node(call.args[index], ty))
        except WaveError as exc:
            raise _wave_error(exc, f"argument {index}" + (f" ({name})" if name else "")) from None
    return values


def _parse_call(text: str) -> wave.Call:
    try:
        return wave.parse_call(text)
    except WaveError as exc:
        raise _wave_error(exc, "invoke") from None


def _results(
    export: str, values: Sequence[Any], types: Sequence[WaveType], lines: tuple[str, ...] | None
) -> InvokeResult:
    """``lines`` None: printed as one WAVE line (a component, as ``wasmtime run --invoke`` does)."""
    rendered = [wave.render(v, t) for v, t in zip(values, types, strict=True)]
    text = rendered[0] if len(rendered) == 1 else "(" + ", ".join(rendered) + ")"
    if len(text) > MAX_RESULT_TEXT:  # the report and the log keep results whole, so they are capped
        raise InvokeError(
            "invoke.result-size",
            f"{export!r} returned {len(text)} characters of WAVE text, more than {MAX_RESULT_TEXT}",
        )
    json = tuple(wave.to_json(v, t) for v, t in zip(values, types, strict=True))
    return InvokeResult(export=export, lines=(text,) if lines is None else lines, wave=text, json=json)


# --- core modules ------------------------------------------------------------------------------

_CORE_TYPES: dict[str, WaveType] = {
    "i32": wave.Prim("s32"),
    "i64": wave.Prim("s64"),
    "f32": wave.Prim("f32"),
    "f64": wave.Prim("f64"),
}


def _core_func(store: wasmtime.Store, instance: wasmtime.Instance, name: str) -> wasmtime.Func:
    func = instance.exports(store).get(name)
    if not isinstance(func, wasmtime.Func):
        raise InvokeError("invoke.export", f"the module exports no function named {name!r}")
    return func


def _screen(name: str, types: ExportTypes | None) -> None:
    """Refuse an export whose types Wasmtime's C API cannot name, from the module's own bytes,
    before anything asks Wasmtime: asking it the kind of a ``v128`` or of a reference type other
    than ``funcref``/``externref`` aborts the process (a Rust panic), not a Python exception."""
    try:
        signature = None if types is None else types(name)
    except ValueError as exc:
        raise InvokeError("invoke.type", f"the types of {name!r} cannot be read: {exc}") from None
    if signature is None:
        return
    for what, kinds in zip(("parameter", "result"), signature, strict=True):
        for index, kind in enumerate(kinds):
            if kind not in _CORE_TYPES:
                raise InvokeError("invoke.type", f"{what} {index} has type {kind}, which invoke cannot pass")


def _core_types(kinds: Sequence[wasmtime.ValType], what: str) -> list[WaveType]:
    types = []
    for index, kind in enumerate(kinds):
        if str(kind) not in _CORE_TYPES:
            raise InvokeError("invoke.type", f"{what} {index} has type {kind}, which invoke cannot pass")
        types.append(_CORE_TYPES[str(kind)])
    return types


def _core_line(value: Any, ty: WaveType) -> str:
    """One result as ``wasmtime run --invoke`` prints it (Rust's ``Display``: ``NaN``, ``1``, ``0.1``)."""
    if isinstance(ty, wave.Prim) and ty.name in ("f32", "f64"):
        return wave.render_float(value, 32 if ty.name == "f32" else 64, nan="NaN")
    return str(value)


def _call_core(
    store: wasmtime.Store, func: wasmtime.Func, name: str, args: list[Any], setup: Setup | None
) -> InvokeResult:
    result_types = _core_types(func.type(store).results, "result")
    if setup is not None:
        setup()
    value = func(store, *args)
    values = [] if value is None else value if isinstance(value, list) else [value]
    lines = tuple(_core_line(v, t) for v, t in zip(values, result_types, strict=True))
    return _results(name, values, result_types, lines)


def invoke_core(
    store: wasmtime.Store,
    instance: wasmtime.Instance,
    text: str,
    *,
    setup: Setup | None = None,
    types: ExportTypes | None = None,
) -> InvokeResult:
    """Call a core module's export as the WAVE call ``text`` (``add(1, 2)``) says; ``setup`` runs
    once everything is checked, just before the call (a WASI reactor's ``_initialize``); ``types``
    gives the export's types from the module's bytes (checked before Wasmtime is asked)."""
    call = _parse_call(text)
    func = _core_func(store, instance, call.name)
    _screen(call.name, types)
    params = _core_types(func.type(store).params, "parameter")
    args = _typed_args(call, [("", t) for t in params])
    return _call_core(store, func, call.name, args, setup)


_INT_BITS = {"i32": 32, "i64": 64}


def _legacy_arg(kind: str, text: str, index: int) -> int | float:
    """One argument from its string: decimal or ``0x`` hex, the signed or the unsigned range."""
    try:
        if kind in _INT_BITS:
            bits = _INT_BITS[kind]
            value = int(text, 0) if text.strip().lower().lstrip("+-").startswith("0x") else int(text)
            if not -(1 << (bits - 1)) <= value < (1 << bits):
                raise InvokeError("invoke.out-of-range", f"argument {index} ({text!r}) does not fit {kind}")
            return value - (1 << bits) if value >= 1 << (bits - 1) else value
        number = float(text)
        if kind == "f32" and math.isfinite(number) and abs(number) > 3.4028234663852886e38:
            raise InvokeError("invoke.out-of-range", f"argument {index} ({text!r}) does not fit f32")
        return number
    except ValueError:
        raise InvokeError("invoke.malformed", f"argument {index} ({text!r}) is not a valid {kind}") from None


def invoke_core_args(
    store: wasmtime.Store,
    instance: wasmtime.Instance,
    name: str,
    args: Sequence[str],
    *,
    setup: Setup | None = None,
    types: ExportTypes | None = None,
) -> InvokeResult:
    """Call a core module's export ``name`` with ``args`` as strings (the form before WAVE)."""
    func = _core_func(store, instance, name)
    _screen(name, types)
    kinds = [str(p) for p in func.type(store).params]
    if len(kinds) != len(args):
        raise InvokeError(
            "invoke.arity", f"{name!r} takes {len(kinds)} argument(s), the job gives {len(args)}"
        )
    _core_types(func.type(store).params, "parameter")
    values = [_legacy_arg(k, t, i) for i, (k, t) in enumerate(zip(kinds, args, strict=True))]
    return _call_core(store, func, name, values, setup)


# --- components --------------------------------------------------------------------------------

_COMPONENT_PRIMS: dict[type, str] = {
    wc.Bool: "bool",
    wc.S8: "s8",
    wc.S16: "s16",
    wc.S32: "s32",
    wc.S64: "s64",
    wc.U8: "u8",
    wc.U16: "u16",
    wc.U32: "u32",
    wc.U64: "u64",
    wc.F32: "f32",
    wc.F64: "f64",
    wc.Char: "char",
    wc.String: "string",
}


def wave_type(ty: wc.ValType, depth: int = 0) -> WaveType:
    """The WAVE type of a wasmtime-py component value type; resources and async types are refused,
    and so are types nested deeper than WAVE text may nest (rendering recurses on the type)."""
    if depth > wave.MAX_DEPTH:
        raise InvokeError("invoke.type", f"the export's types nest deeper than {wave.MAX_DEPTH} levels")
    inner = depth + 1
    if type(ty) in _COMPONENT_PRIMS:
        return wave.Prim(_COMPONENT_PRIMS[type(ty)])
    if isinstance(ty, wc.ListType):
        return wave.ListT(wave_type(ty.element, inner))
    if isinstance(ty, wc.TupleType):
        return wave.TupleT(tuple(wave_type(t, inner) for t in ty.elements))
    if isinstance(ty, wc.RecordType):
        return wave.RecordT(tuple((n, wave_type(t, inner)) for n, t in ty.fields))
    if isinstance(ty, wc.VariantType):
        return wave.VariantT(tuple((n, None if t is None else wave_type(t, inner)) for n, t in ty.cases))
    if isinstance(ty, wc.EnumType):
        return wave.EnumT(tuple(ty.names))
    if isinstance(ty, wc.OptionType):
        return wave.OptionT(wave_type(ty.payload, inner))
    if isinstance(ty, wc.ResultType):
        ok, err = ty.ok, ty.err
        return wave.ResultT(
            None if ok is None else wave_type(ok, inner), None if err is None else wave_type(err, inner)
        )
    if isinstance(ty, wc.FlagsType):
        return wave.FlagsT(tuple(ty.names))
    raise InvokeError(
        "invoke.type", f"values of type {type(ty).__name__} (resources, futures, streams) are not supported"
    )


def _cases(ty: wc.ValType) -> list[tuple[str, wc.ValType | None]]:
    if isinstance(ty, wc.VariantType):
        return list(ty.cases)
    if isinstance(ty, wc.OptionType):
        return [("none", None), ("some", ty.payload)]
    assert isinstance(ty, wc.ResultType)
    return [("ok", ty.ok), ("err", ty.err)]


def _classes(ty: wc.ValType | None) -> set[type]:
    found: set[type] = set()
    if ty is None:
        found.add(object)
    else:
        ty.add_classes(found)
    return found


def _tagged(ty: wc.ValType) -> bool:
    """Whether wasmtime-py passes this variant as :class:`wc.Variant` (its cases' Python classes
    overlap) or as the bare payload (its rule, restated with public methods)."""
    seen: set[type] = set()
    for _, case in _cases(ty):
        classes = _classes(case)
        if classes & seen:
            return True
        seen |= classes
    return False


def _untagged_case(ty: wc.ValType, value: Any) -> str:
    """Which case a bare payload (or None) stands for, refusing types where wasmtime-py's own
    ``isinstance`` matching could pick the wrong case (``bool`` is an ``int``; a nested ``none``)."""
    payload_cases = [(n, _classes(t)) for n, t in _cases(ty) if t is not None]
    pairs = [
        (mine, other) for i, (_, mine) in enumerate(payload_cases) for _, other in payload_cases[i + 1 :]
    ]
    if any(object in classes for _, classes in payload_cases) or any(
        issubclass(a, b) or issubclass(b, a) for mine, other in pairs for a in mine for b in other
    ):
        raise InvokeError("invoke.type", f"wasmtime-py cannot tell the cases of {_name(ty)} apart")
    if value is None:
        return next(n for n, t in _cases(ty) if t is None)
    return next(n for n, classes in payload_cases if isinstance(value, tuple(classes)))


def _name(ty: wc.ValType) -> str:
    return wave.type_name(wave_type(ty))


def _lower(value: Any, ty: wc.ValType) -> Any:
    """A WAVE value as the Python value wasmtime-py takes for ``ty``."""
    if isinstance(ty, wc.ListType):
        if isinstance(ty.element, wc.U8):
            return bytes(value)
        return [_lower(v, ty.element) for v in value]
    if isinstance(ty, wc.TupleType):
        return tuple(_lower(v, t) for v, t in zip(value, ty.elements, strict=True))
    if isinstance(ty, wc.RecordType):
        record = wc.Record()
        for name, field in ty.fields:
            setattr(record, name, _lower(value[name], field))
        return record
    if isinstance(ty, wc.FlagsType):
        return set(value)
    if isinstance(ty, (wc.VariantType, wc.OptionType, wc.ResultType)):
        payload_type = dict(_cases(ty))[value.tag]
        payload = None if payload_type is None else _lower(value.payload, payload_type)
        if _tagged(ty):
            return wc.Variant(value.tag, payload)
        _untagged_case(ty, payload)  # refuses the ambiguous types before anything is passed
        return payload
    return value


def _lift(value: Any, ty: wc.ValType) -> Any:
    """What wasmtime-py returned for ``ty`` as a WAVE value."""
    if isinstance(ty, wc.ListType):
        return [_lift(v, ty.element) for v in value]
    if isinstance(ty, wc.TupleType):
        return tuple(_lift(v, t) for v, t in zip(value, ty.elements, strict=True))
    if isinstance(ty, wc.RecordType):
        return {name: _lift(getattr(value, name), field) for name, field in ty.fields}
    if isinstance(ty, wc.FlagsType):
        return frozenset(value)
    if isinstance(ty, (wc.VariantType, wc.OptionType, wc.ResultType)):
        if _tagged(ty):
            tag, payload = value.tag, value.payload
        else:
            tag, payload = _untagged_case(ty, value), value
        payload_type = dict(_cases(ty))[tag]
        return Case(tag, None if payload_type is None else _lift(payload, payload_type))
    return value


def invoke_component(store: wasmtime.Store, instance: wc.Instance, text: str) -> InvokeResult:
    """Call a component's exported function as the WAVE call ``text`` says."""
    call = _parse_call(text)
    func = instance.get_func(store, call.name)
    if func is None:
        raise InvokeError("invoke.export", f"the component exports no function named {call.name!r}")
    ftype = func.type(store)
    params = [(name, ty) for name, ty in ftype.params]
    args = _typed_args(call, [(name, wave_type(ty)) for name, ty in params])
    lowered = [_lower(v, ty) for v, (_, ty) in zip(args, params, strict=True)]
    result_type = ftype.result
    result_wave = None if result_type is None else wave_type(result_type)
    value = func(store, *lowered)
    func.post_return(store)
    if result_type is None or result_wave is None:
        return _results(call.name, [], [], None)
    return _results(call.name, [_lift(value, result_type)], [result_wave], None)
