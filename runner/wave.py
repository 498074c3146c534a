"""WAVE (WebAssembly Value Encoding): the text of ``wasmtime run --invoke 'add(1, 2)'``.

There is no Python WAVE library, so this is ours, kept small and total: any text either parses or
raises :class:`WaveError` (never another exception), and every value renders back to text that
parses to the same value (property-tested). Parsing is in two steps, as in the ``wasm-wave`` crate:

1. :func:`parse_call` / :func:`parse_node` read the syntax into :class:`Node` trees without any
   type (so ``check`` can refuse malformed text without loading the module);
2. :func:`from_node` reads a tree against a :data:`WaveType`: integers are range-checked (Wasmtime
   truncates silently), labels must name a case, field or flag of the type, records must be complete.

Values use a tagged Python model that keeps every distinction WAVE makes: ``bool``, ``int``,
``float``, ``str`` (char, string and enum), ``list``, ``tuple``, ``dict`` (record), ``frozenset``
(flags) and :class:`Case` (variant, option, result). :func:`render` writes WAVE as ``wasmtime`` does
(floats in Rust's ``Display`` form) and :func:`to_json` gives the documented JSON mapping
(docs/invoke.md). Not supported: resources (handles), multiline strings, futures and streams.
"""

from __future__ import annotations

import math
import re
import struct
import unicodedata
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Union

__all__ = [
    "Call",
    "Case",
    "EnumT",
    "FlagsT",
    "ListT",
    "Node",
    "OptionT",
    "Prim",
    "RecordT",
    "ResultT",
    "TupleT",
    "VariantT",
    "WaveError",
    "WaveType",
    "from_node",
    "parse_call",
    "parse_node",
    "parse_value",
    "render",
    "render_float",
    "to_json",
    "type_name",
]

MAX_TEXT = 1 << 20  # characters of one call expression
MAX_DEPTH = 64  # nesting of lists, tuples, records, payloads
_MAX_NUMBER = 400  # characters of one number token (beyond any u64 or f64 text)


class WaveError(Exception):
    """Text that is not a valid WAVE value of the expected type: ``rule_id`` is ``invoke.malformed``
    (syntax), ``invoke.type`` (the wrong kind of value) or ``invoke.out-of-range``."""

    def __init__(self, rule_id: str, message: str, offset: int = 0) -> None:
        super().__init__(message)
        self.rule_id = rule_id
        self.message = message
        self.offset = offset


# --- types -------------------------------------------------------------------------------------

_INT_BOUNDS = {
    "s8": (-(1 << 7), (1 << 7) - 1),
    "s16": (-(1 << 15), (1 << 15) - 1),
    "s32": (-(1 << 31), (1 << 31) - 1),
    "s64": (-(1 << 63), (1 << 63) - 1),
    "u8": (0, (1 << 8) - 1),
    "u16": (0, (1 << 16) - 1),
    "u32": (0, (1 << 32) - 1),
    "u64": (0, (1 << 64) - 1),
}
PRIMITIVES = ("bool", *_INT_BOUNDS, "f32", "f64", "char", "string")


@dataclass(frozen=True, slots=True)
class Prim:
    name: str  # one of PRIMITIVES

    def __post_init__(self) -> None:
        if self.name not in PRIMITIVES:
            raise ValueError(f"unknown primitive type {self.name!r}")


@dataclass(frozen=True, slots=True)
class ListT:
    element: WaveType


@dataclass(frozen=True, slots=True)
class TupleT:
    elements: tuple[WaveType, ...]


@dataclass(frozen=True, slots=True)
class RecordT:
    fields: tuple[tuple[str, WaveType], ...]


@dataclass(frozen=True, slots=True)
class VariantT:
    cases: tuple[tuple[str, WaveType | None], ...]


@dataclass(frozen=True, slots=True)
class EnumT:
    cases: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class OptionT:
    some: WaveType


@dataclass(frozen=True, slots=True)
class ResultT:
    ok: WaveType | None
    err: WaveType | None


@dataclass(frozen=True, slots=True)
class FlagsT:
    names: tuple[str, ...]


WaveType = Union[Prim, ListT, TupleT, RecordT, VariantT, EnumT, OptionT, ResultT, FlagsT]


@dataclass(frozen=True, slots=True)
class Case:
    """A variant case, ``some``/``none`` of an option or ``ok``/``err`` of a result, with its payload
    (None when the case has none)."""

    tag: str
    payload: Any = None


def type_name(ty: WaveType | None) -> str:
    """The type as WIT writes it, for messages: ``list<u32>``, ``result<_, string>``."""
    match ty:
        case None:
            return "_"
        case Prim(name):
            return name
        case ListT(element):
            return f"list<{type_name(element)}>"
        case TupleT(elements):
            return f"tuple<{', '.join(type_name(e) for e in elements)}>"
        case RecordT(fields):
            return "record { " + ", ".join(f"{n}: {type_name(t)}" for n, t in fields) + " }"
        case VariantT(cases):
            return "variant { " + ", ".join(n + (f"({type_name(t)})" if t else "") for n, t in cases) + " }"
        case EnumT(cases):
            return "enum { " + ", ".join(cases) + " }"
        case OptionT(some):
            return f"option<{type_name(some)}>"
        case ResultT(ok, err):
            return "result" + ("" if ok is None and err is None else f"<{type_name(ok)}, {type_name(err)}>")
        case FlagsT(names):
            return "flags { " + ", ".join(names) + " }"
    raise AssertionError(ty)


# --- syntax ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Node:
    """One parsed value before typing. ``kind`` is ``number``, ``char``, ``string``, ``label``
    (bools, cases, keywords; ``text`` the label, ``items`` its payload if any, ``raw`` when written
    with ``%``), ``tuple``, ``list``, ``flags`` (``{a, b}`` and ``{}``), ``record`` (``items`` the
    values, ``names`` their labels; ``{:}`` is the empty one)."""

    kind: str
    offset: int
    text: str = ""
    items: tuple[Node, ...] = ()
    names: tuple[str, ...] = ()
    raw: bool = False


@dataclass(frozen=True, slots=True)
class Call:
    """``name(arg, ...)``: the export named and its arguments, still untyped."""

    name: str
    args: tuple[Node, ...]


_WORD = r"(?:[a-z][a-z0-9]*|[A-Z][A-Z0-9]*)"
_LABEL = re.compile(rf"%?{_WORD}(?:-{_WORD})*")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_FUNC_NAME = re.compile(r"[^\s()\[\]{},\"'%]+")  # core export names need not be kebab labels
KEYWORDS = frozenset({"true", "false", "inf", "nan", "some", "none", "ok", "err"})
_ESCAPES = {"'": "'", '"': '"', "\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


class _Parser:
    def __init__(self, text: str) -> None:
        if len(text) > MAX_TEXT:
            raise WaveError("invoke.malformed", f"the text is longer than {MAX_TEXT} characters")
        self.text = text
        self.pos = 0

    def fail(self, message: str, offset: int | None = None) -> WaveError:
        return WaveError("invoke.malformed", message, self.pos if offset is None else offset)

    def ws(self) -> None:
        while self.pos < len(self.text):
            if self.text[self.pos] in " \t\n\r":
                self.pos += 1
            elif self.text.startswith("//", self.pos):
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            else:
                return

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, char: str) -> None:
        self.ws()
        if self.peek() != char:
            found = f"{self.peek()!r}" if self.peek() else "the end"
            raise self.fail(f"expected {char!r} at column {self.pos + 1}, found {found}")
        self.pos += 1

    def end(self) -> None:
        self.ws()
        if self.pos < len(self.text):
            raise self.fail(f"unexpected {self.peek()!r} at column {self.pos + 1} after the value")

    def value(self, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise self.fail(f"values nest deeper than {MAX_DEPTH} levels")
        self.ws()
        start, char = self.pos, self.peek()
        if char == "":
            raise self.fail("expected a value, found the end")
        if char in "'\"":
            return self.quoted(char)
        if char == "(":
            items = self.sequence("(", ")", depth)
            if not items:
                raise self.fail("a tuple needs at least one value", start)
            return Node("tuple", start, items=items)
        if char == "[":
            return Node("list", start, items=self.sequence("[", "]", depth))
        if char == "{":
            return self.braces(depth)
        if char == "-" or char.isdigit():
            if self.text.startswith("-inf", self.pos) and not self._label_continues(self.pos + 4):
                self.pos += 4
                return Node("number", start, text="-inf")
            match = _NUMBER.match(self.text, self.pos)
            after = self.peek_at(match.end()) if match else ""
            if match is None or self._label_continues(match.end()) or (after and after in ".eE"):
                raise self.fail(f"malformed number at column {start + 1}")
            if len(match.group()) > _MAX_NUMBER:
                raise WaveError("invoke.out-of-range", "a number with more than 400 characters", start)
            self.pos = match.end()
            return Node("number", start, text=match.group())
        label, raw = self.label()
        if not raw and label in ("inf", "nan"):
            return Node("number", start, text=label)
        self.ws()
        if self.peek() == "(":
            self.pos += 1
            payload = self.value(depth + 1)
            self.expect(")")
            return Node("label", start, text=label, items=(payload,), raw=raw)
        return Node("label", start, text=label, raw=raw)

    def peek_at(self, pos: int) -> str:
        return self.text[pos] if pos < len(self.text) else ""

    def _label_continues(self, pos: int) -> bool:
        char = self.peek_at(pos)
        return bool(char) and char.isascii() and (char.isalnum() or char in "-_")

    def label(self) -> tuple[str, bool]:
        match = _LABEL.match(self.text, self.pos)
        if match is None or self._label_continues(match.end()):
            raise self.fail(f"unexpected {self.peek()!r} at column {self.pos + 1}: not a value")
        self.pos = match.end()
        text = match.group()
        return text.removeprefix("%"), text.startswith("%")

    def sequence(self, open_: str, close: str, depth: int) -> tuple[Node, ...]:
        self.expect(open_)
        items: list[Node] = []
        while True:
            self.ws()
            if self.peek() == close:
                self.pos += 1
                return tuple(items)
            items.append(self.value(depth + 1))
            self.ws()
            if self.peek() == ",":
                self.pos += 1
            elif self.peek() != close:
                raise self.fail(f"expected ',' or {close!r} at column {self.pos + 1}")

    def braces(self, depth: int) -> Node:
        start = self.pos
        self.expect("{")
        self.ws()
        if self.peek() == "}":
            self.pos += 1
            return Node("flags", start)
        if self.peek() == ":":
            self.pos += 1
            self.expect("}")
            return Node("record", start)
        names: list[str] = []
        items: list[Node] = []
        kind = ""
        while True:
            self.ws()
            if self.peek() == "}" and names:
                self.pos += 1
                return Node(kind, start, items=tuple(items), names=tuple(names))
            at = self.pos
            name, _raw = self.label()
            self.ws()
            this = "record" if self.peek() == ":" else "flags"
            if kind and this != kind:
                raise self.fail(f"mixed record fields and flags at column {at + 1}", at)
            kind = this
            if name in names:
                raise self.fail(f"{name!r} appears twice", at)
            names.append(name)
            if kind == "record":
                self.pos += 1
                items.append(self.value(depth + 1))
                self.ws()
            if self.peek() == ",":
                self.pos += 1
            elif self.peek() != "}":
                raise self.fail(f"expected ',' or '}}' at column {self.pos + 1}")

    def quoted(self, quote: str) -> Node:
        start = self.pos
        if self.text.startswith('"""', self.pos):
            raise self.fail("multiline strings are not supported")
        self.pos += 1
        chars: list[str] = []
        while True:
            char = self.peek()
            if char == "" or char == "\n":
                raise self.fail("unterminated " + ("string" if quote == '"' else "char"), start)
            self.pos += 1
            if char == quote:
                break
            if char == "\\":
                chars.append(self.escape())
            elif 0xD800 <= ord(char) <= 0xDFFF:
                raise self.fail("a lone surrogate is not a Unicode scalar value", self.pos - 1)
            else:
                chars.append(char)
        text = "".join(chars)
        if quote == "'" and len(text) != 1:
            raise self.fail("a char holds exactly one character", start)
        return Node("char" if quote == "'" else "string", start, text=text)

    def escape(self) -> str:
        at = self.pos - 1
        char = self.peek()
        self.pos += 1
        if char in _ESCAPES:
            return _ESCAPES[char]
        if char == "u" and self.peek() == "{":
            end = self.text.find("}", self.pos)
            digits = self.text[self.pos + 1 : end] if end > 0 else ""
            if not re.fullmatch(r"[0-9a-fA-F]{1,6}", digits):
                raise self.fail(r"malformed \u{...} escape", at)
            code = int(digits, 16)
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise self.fail(rf"\u{{{digits}}} is not a Unicode scalar value", at)
            self.pos = end + 1
            return chr(code)
        raise self.fail(f"unknown escape at column {at + 1}", at)


def parse_node(text: str) -> Node:
    """One untyped WAVE value (whitespace and comments around it allowed)."""
    parser = _Parser(text)
    node = parser.value(0)
    parser.end()
    return node


def parse_call(text: str) -> Call:
    """``name(arg, ...)`` with trailing comma allowed; raises ``invoke.malformed``."""
    parser = _Parser(text)
    parser.ws()
    match = _FUNC_NAME.match(text, parser.pos)
    if match is None:
        raise parser.fail("expected a function name, as in add(1, 2)")
    parser.pos = match.end()
    parser.ws()
    if parser.peek() != "(":
        raise parser.fail(f"expected '(' after the function name {match.group()!r}, as in add(1, 2)")
    args = parser.sequence("(", ")", 0)
    parser.end()
    return Call(match.group(), args)


# --- typing ------------------------------------------------------------------------------------


def parse_value(text: str, ty: WaveType) -> Any:
    """One WAVE value of type ``ty``."""
    return from_node(parse_node(text), ty)


def _type_error(node: Node, ty: WaveType) -> WaveError:
    shown = {"label": node.text, "number": node.text}.get(node.kind, "a " + node.kind)
    return WaveError("invoke.type", f"expected {type_name(ty)}, found {shown}", node.offset)


def _is_case(node: Node, tag: str) -> bool:
    return node.kind == "label" and not node.raw and node.text == tag


def from_node(node: Node, ty: WaveType) -> Any:
    """The value ``node`` stands for as a value of ``ty``, or :class:`WaveError`."""
    match ty:
        case Prim(name):
            return _primitive(node, name, ty)
        case ListT(element) if node.kind == "list":
            return [from_node(item, element) for item in node.items]
        case TupleT(elements) if node.kind == "tuple":
            if len(node.items) != len(elements):
                raise WaveError(
                    "invoke.type",
                    f"expected {len(elements)} values in the tuple, found {len(node.items)}",
                    node.offset,
                )
            return tuple(from_node(item, t) for item, t in zip(node.items, elements, strict=True))
        case RecordT(fields) if node.kind == "record" or (node.kind == "flags" and not node.names):
            return _record(node, fields)
        case FlagsT(names) if node.kind == "flags":
            unknown = [n for n in node.names if n not in names]
            if unknown:
                raise WaveError(
                    "invoke.type", f"{unknown[0]!r} is not a flag of {type_name(ty)}", node.offset
                )
            return frozenset(node.names)
        case EnumT(cases) if node.kind == "label" and not node.items:
            if node.text not in cases or (node.text in KEYWORDS and not node.raw):
                raise WaveError("invoke.type", f"{node.text!r} is not a case of {type_name(ty)}", node.offset)
            return node.text
        case VariantT(cases) if node.kind == "label":
            return _case(node, dict(cases), ty, keywords=True)
        case OptionT(some):
            if _is_case(node, "none") or _is_case(node, "some"):
                return _case(node, {"none": None, "some": some}, ty, keywords=False)
            if isinstance(some, (OptionT, ResultT)):
                raise _type_error(node, ty)
            return Case("some", from_node(node, some))
        case ResultT(ok, err):
            if _is_case(node, "ok") or _is_case(node, "err"):
                return _case(node, {"ok": ok, "err": err}, ty, keywords=False)
            if ok is None or isinstance(ok, (OptionT, ResultT)):
                raise _type_error(node, ty)
            return Case("ok", from_node(node, ok))
    raise _type_error(node, ty)


def _case(node: Node, cases: dict[str, WaveType | None], ty: WaveType, *, keywords: bool) -> Case:
    if node.text not in cases or (keywords and node.text in KEYWORDS and not node.raw):
        raise WaveError("invoke.type", f"{node.text!r} is not a case of {type_name(ty)}", node.offset)
    payload = cases[node.text]
    if payload is None:
        if node.items:
            raise WaveError("invoke.type", f"case {node.text!r} takes no payload", node.offset)
        return Case(node.text)
    if not node.items:
        raise WaveError(
            "invoke.type", f"case {node.text!r} needs a payload of type {type_name(payload)}", node.offset
        )
    return Case(node.text, from_node(node.items[0], payload))


def _record(node: Node, fields: tuple[tuple[str, WaveType], ...]) -> dict[str, Any]:
    given = dict(zip(node.names, node.items, strict=True))
    types = dict(fields)
    unknown = [name for name in given if name not in types]
    if unknown:
        raise WaveError("invoke.type", f"the record has no field {unknown[0]!r}", node.offset)
    value: dict[str, Any] = {}
    for name, field_type in fields:
        if name in given:
            value[name] = from_node(given[name], field_type)
        elif isinstance(field_type, OptionT):
            value[name] = Case("none")
        else:
            raise WaveError("invoke.type", f"the record lacks field {name!r}", node.offset)
    return value


def _primitive(node: Node, name: str, ty: WaveType) -> Any:
    if name == "bool":
        if _is_case(node, "true") or _is_case(node, "false"):
            if node.items:
                raise _type_error(node, ty)
            return node.text == "true"
    elif name in _INT_BOUNDS:
        if node.kind == "number" and re.fullmatch(r"-?[0-9]+", node.text):
            low, high = _INT_BOUNDS[name]
            value = int(node.text)
            if not low <= value <= high:
                raise WaveError(
                    "invoke.out-of-range", f"{node.text} does not fit {name} ({low} to {high})", node.offset
                )
            return value
    elif name in ("f32", "f64"):
        if node.kind == "number":
            number = float(node.text)
            if name == "f32":
                try:
                    number = struct.unpack("<f", struct.pack("<f", number))[0]
                except OverflowError:
                    raise WaveError(
                        "invoke.out-of-range", f"{node.text} does not fit f32", node.offset
                    ) from None
            elif math.isinf(number) and "inf" not in node.text:
                raise WaveError("invoke.out-of-range", f"{node.text} does not fit f64", node.offset)
            return number
    elif node.kind == name and name in ("char", "string"):
        return node.text
    raise _type_error(node, ty)


# --- rendering ---------------------------------------------------------------------------------


def render_float(value: float, bits: int, *, nan: str = "nan") -> str:
    """``value`` as Rust's ``Display`` writes an f32/f64 (what ``wasmtime`` prints): the shortest
    digits that read back to the same value, positional (no exponent), ``-0``, ``inf``, ``-inf``."""
    if math.isnan(value):
        return nan
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if bits == 64:
        shortest = repr(value)
    else:
        single = struct.unpack("<f", struct.pack("<f", value))[0]
        shortest = next(
            text
            for digits in range(1, 10)
            if struct.unpack("<f", struct.pack("<f", float(text := f"{single:.{digits}g}")))[0] == single
        )
    return format(Decimal(shortest).normalize(), "f")


def _escape(char: str, quote: str) -> str:
    if char in "\\\t\r\n" or char == quote:
        return {"\\": "\\\\", "\t": "\\t", "\r": "\\r", "\n": "\\n"}.get(char, "\\" + char)
    if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
        return f"\\u{{{ord(char):x}}}"  # controls never reach a terminal raw
    return char


def _label(name: str) -> str:
    return "%" + name if name in KEYWORDS else name


def render(value: Any, ty: WaveType) -> str:
    """``value`` (of ``ty``) as WAVE, in the form the ``wasm-wave`` writer uses."""
    match ty:
        case Prim("bool"):
            return "true" if value else "false"
        case Prim("f32" | "f64" as name):
            return render_float(value, 32 if name == "f32" else 64)
        case Prim("char"):
            return "'" + _escape(value, "'") + "'"
        case Prim("string"):
            return '"' + "".join(_escape(c, '"') for c in value) + '"'
        case Prim(_):
            return str(value)
        case ListT(element):
            return "[" + ", ".join(render(v, element) for v in value) + "]"
        case TupleT(elements):
            return "(" + ", ".join(render(v, t) for v, t in zip(value, elements, strict=True)) + ")"
        case RecordT(fields):
            shown = [
                f"{name}: {render(value[name], t)}"
                for name, t in fields
                if not (isinstance(t, OptionT) and value[name] == Case("none"))
            ]
            return "{" + (", ".join(shown) if shown else ":") + "}"
        case FlagsT(names):
            return "{" + ", ".join(n for n in names if n in value) + "}"
        case EnumT(_):
            return _label(value)
        case VariantT(cases):
            return _render_case(value, dict(cases), keyword_prefix=True)
        case OptionT(some):
            return _render_case(value, {"none": None, "some": some}, keyword_prefix=False)
        case ResultT(ok, err):
            return _render_case(value, {"ok": ok, "err": err}, keyword_prefix=False)
    raise AssertionError(ty)


def _render_case(value: Case, cases: dict[str, WaveType | None], *, keyword_prefix: bool) -> str:
    payload_type = cases[value.tag]
    name = _label(value.tag) if keyword_prefix else value.tag
    return name if payload_type is None else f"{name}({render(value.payload, payload_type)})"


def to_json(value: Any, ty: WaveType) -> Any:
    """``value`` (of ``ty``) as a JSON value, per the mapping in docs/invoke.md."""
    match ty:
        case Prim("f32" | "f64" as name):  # a string: JSON has no nan/inf, canonical JSON no floats
            return render_float(value, 32 if name == "f32" else 64)
        case Prim(_):
            return value
        case ListT(element):
            return [to_json(v, element) for v in value]
        case TupleT(elements):
            return [to_json(v, t) for v, t in zip(value, elements, strict=True)]
        case RecordT(fields):
            return {name: to_json(value[name], t) for name, t in fields}
        case FlagsT(names):
            return [n for n in names if n in value]
        case EnumT(_):
            return value
        case OptionT(some):
            if value.tag == "none":
                return None
            inner = to_json(value.payload, some)
            return {"some": inner} if isinstance(some, OptionT) else inner
        case VariantT(cases):
            return _case_json(value, dict(cases))
        case ResultT(ok, err):
            return _case_json(value, {"ok": ok, "err": err})
    raise AssertionError(ty)


def _case_json(value: Case, cases: dict[str, WaveType | None]) -> dict[str, Any]:
    payload_type = cases[value.tag]
    return {value.tag: None if payload_type is None else to_json(value.payload, payload_type)}
