"""WAVE text: a table of round trips per type, refusals with their rule, and properties (hypothesis):
render then parse gives the value back for generated values of generated types, and no text at all
makes the parser raise anything but WaveError."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner import wave
from runner.wave import (
    Case,
    EnumT,
    FlagsT,
    ListT,
    OptionT,
    Prim,
    RecordT,
    ResultT,
    TupleT,
    VariantT,
    WaveError,
    WaveType,
)

SHAPE = VariantT((("none-yet", None), ("circle", Prim("u32")), ("label", Prim("string")), ("ok", None)))
COLOR = EnumT(("red", "green", "nan"))
PERMS = FlagsT(("read", "write", "exec"))
PAIR = RecordT((("a", Prim("u32")), ("b-c", Prim("string")), ("maybe", OptionT(Prim("u8")))))

# (type, text as written, the value, the text as rendered back, the JSON value)
ROUND_TRIPS: list[tuple[WaveType, str, Any, str, Any]] = [
    (Prim("bool"), "true", True, "true", True),
    (Prim("bool"), " false ", False, "false", False),
    (Prim("s8"), "-128", -128, "-128", -128),
    (Prim("u8"), "255", 255, "255", 255),
    (Prim("s16"), "-32768", -32768, "-32768", -32768),
    (Prim("u16"), "65535", 65535, "65535", 65535),
    (Prim("s32"), "-2147483648", -(2**31), "-2147483648", -(2**31)),
    (Prim("u32"), "4294967295", 2**32 - 1, "4294967295", 2**32 - 1),
    (Prim("s64"), "-9223372036854775808", -(2**63), "-9223372036854775808", -(2**63)),
    (Prim("u64"), "18446744073709551615", 2**64 - 1, "18446744073709551615", 2**64 - 1),
    (Prim("f64"), "3.25", 3.25, "3.25", "3.25"),
    (Prim("f64"), "6.022e+23", 6.022e23, "602200000000000000000000", "602200000000000000000000"),
    (Prim("f64"), "-0", -0.0, "-0", "-0"),
    (Prim("f64"), "-inf", -math.inf, "-inf", "-inf"),
    (Prim("f32"), "0.1", struct.unpack("<f", struct.pack("<f", 0.1))[0], "0.1", "0.1"),
    (Prim("f32"), "inf", math.inf, "inf", "inf"),
    (Prim("char"), "'x'", "x", "'x'", "x"),
    (Prim("char"), "'\\''", "'", "'\\''", "'"),
    (Prim("char"), "'\\u{1F44B}'", "\U0001f44b", "'\U0001f44b'", "\U0001f44b"),
    (Prim("char"), "'☃'", "☃", "'☃'", "☃"),
    (Prim("string"), '"abc\\t123"', "abc\t123", '"abc\\t123"', "abc\t123"),
    (Prim("string"), '"\\u{1b}[31m red"', "\x1b[31m red", '"\\u{1b}[31m red"', "\x1b[31m red"),
    (
        Prim("string"),
        '"say \\"hi\\" // not a comment"',
        'say "hi" // not a comment',
        '"say \\"hi\\" // not a comment"',
        'say "hi" // not a comment',
    ),
    (Prim("string"), '"\u202e"', "\u202e", '"\\u{202e}"', "\u202e"),  # a bidi override never goes out raw
    (ListT(Prim("u8")), "[1, 2, 3,]", [1, 2, 3], "[1, 2, 3]", [1, 2, 3]),
    (ListT(Prim("char")), "[]", [], "[]", []),
    (TupleT((Prim("u8"), Prim("string"))), '(123, "abc")', (123, "abc"), '(123, "abc")', [123, "abc"]),
    (
        PAIR,
        '{b-c: "x", a: 1}',
        {"a": 1, "b-c": "x", "maybe": Case("none")},
        '{a: 1, b-c: "x"}',
        {"a": 1, "b-c": "x", "maybe": None},
    ),
    (
        PAIR,
        '{a: 1, b-c: "", maybe: 7}',
        {"a": 1, "b-c": "", "maybe": Case("some", 7)},
        '{a: 1, b-c: "", maybe: some(7)}',
        {"a": 1, "b-c": "", "maybe": 7},
    ),
    (RecordT((("o", OptionT(Prim("u8"))),)), "{:}", {"o": Case("none")}, "{:}", {"o": None}),
    (SHAPE, "circle(30)", Case("circle", 30), "circle(30)", {"circle": 30}),
    (SHAPE, "none-yet", Case("none-yet"), "none-yet", {"none-yet": None}),
    (SHAPE, "%ok", Case("ok"), "%ok", {"ok": None}),
    (COLOR, "green", "green", "green", "green"),
    (COLOR, "%nan", "nan", "%nan", "nan"),
    (OptionT(Prim("string")), '"flat some"', Case("some", "flat some"), 'some("flat some")', "flat some"),
    (OptionT(Prim("string")), 'some("explicit")', Case("some", "explicit"), 'some("explicit")', "explicit"),
    (OptionT(Prim("string")), "none", Case("none"), "none", None),
    (OptionT(OptionT(Prim("u8"))), "some(none)", Case("some", Case("none")), "some(none)", {"some": None}),
    (ResultT(Prim("u8"), Prim("string")), "123", Case("ok", 123), "ok(123)", {"ok": 123}),
    (ResultT(Prim("u8"), Prim("string")), 'err("oops")', Case("err", "oops"), 'err("oops")', {"err": "oops"}),
    (ResultT(None, Prim("string")), "ok", Case("ok"), "ok", {"ok": None}),
    (ResultT(None, None), "err", Case("err"), "err", {"err": None}),
    (PERMS, "{write, read,}", frozenset({"read", "write"}), "{read, write}", ["read", "write"]),
    (PERMS, "{}", frozenset(), "{}", []),
    (ListT(Prim("u8")), "[1, // one\n 2]", [1, 2], "[1, 2]", [1, 2]),
]


@pytest.mark.parametrize(("ty", "text", "value", "rendered", "json"), ROUND_TRIPS)
def test_round_trip_table(ty: WaveType, text: str, value: Any, rendered: str, json: Any) -> None:
    parsed = wave.parse_value(text, ty)
    assert parsed == value and type(parsed) is type(value)
    assert wave.render(parsed, ty) == rendered
    assert wave.parse_value(rendered, ty) == value
    assert wave.to_json(parsed, ty) == json


def test_nan_renders_as_wave_and_as_wasmtime_prints_it() -> None:
    value = wave.parse_value("nan", Prim("f64"))
    assert math.isnan(value)
    assert wave.render(value, Prim("f64")) == "nan" and wave.to_json(value, Prim("f64")) == "nan"
    assert wave.render_float(value, 64, nan="NaN") == "NaN"


@pytest.mark.parametrize(
    ("ty", "text", "rule"),
    [
        (Prim("u32"), "1099511627776", "invoke.out-of-range"),  # 2**40: wasmtime-py would pass 0
        (Prim("u32"), "-1", "invoke.out-of-range"),
        (Prim("s8"), "128", "invoke.out-of-range"),
        (Prim("u64"), "18446744073709551616", "invoke.out-of-range"),
        (Prim("s64"), "-9223372036854775809", "invoke.out-of-range"),
        (Prim("f32"), "1e39", "invoke.out-of-range"),
        (Prim("f64"), "1e400", "invoke.out-of-range"),
        (Prim("u8"), "1" * 401, "invoke.out-of-range"),
        (Prim("u8"), "1.5", "invoke.type"),
        (Prim("u8"), "1e2", "invoke.type"),
        (Prim("u8"), '"1"', "invoke.type"),
        (Prim("bool"), "yes", "invoke.type"),
        (Prim("char"), '"x"', "invoke.type"),
        (PAIR, "{a: 1}", "invoke.type"),  # b-c missing (only option fields may be left out)
        (PAIR, '{a: 1, b-c: "", z: 2}', "invoke.type"),
        (SHAPE, "circle", "invoke.type"),  # a case with a payload needs it
        (SHAPE, "none-yet(1)", "invoke.type"),
        (SHAPE, "ok", "invoke.type"),  # a keyword case must be written %ok
        (SHAPE, "square(1)", "invoke.type"),
        (COLOR, "nan", "invoke.type"),
        (PERMS, "{read, admin}", "invoke.type"),
        (TupleT((Prim("u8"), Prim("u8"))), "(1)", "invoke.type"),
        (OptionT(OptionT(Prim("u8"))), "5", "invoke.type"),  # no flat form for a nested option
        (ResultT(None, Prim("string")), '"x"', "invoke.type"),
        (Prim("u8"), "01", "invoke.malformed"),
        (Prim("u8"), "0x10", "invoke.malformed"),
        (Prim("u8"), "1 2", "invoke.malformed"),
        (Prim("u8"), "", "invoke.malformed"),
        (Prim("string"), '"abc', "invoke.malformed"),
        (Prim("string"), '"a\nb"', "invoke.malformed"),
        (Prim("string"), '"\\q"', "invoke.malformed"),
        (Prim("string"), '"\\u{d800}"', "invoke.malformed"),  # a surrogate is no scalar value
        (Prim("string"), '"\\u{110000}"', "invoke.malformed"),
        (Prim("string"), '"""\nmulti\n"""', "invoke.malformed"),
        (Prim("char"), "'ab'", "invoke.malformed"),
        (Prim("char"), "''", "invoke.malformed"),
        (PERMS, "{read, read}", "invoke.malformed"),
        (PAIR, "{a: 1, b-c}", "invoke.malformed"),
        (ListT(Prim("u8")), "[1,,2]", "invoke.malformed"),
        (ListT(Prim("u8")), "[" * 100 + "]" * 100, "invoke.malformed"),  # nesting is bounded
        (SHAPE, "snake_case", "invoke.malformed"),
        (SHAPE, "mIxed", "invoke.malformed"),
    ],
)
def test_refusals_carry_their_rule(ty: WaveType, text: str, rule: str) -> None:
    with pytest.raises(WaveError) as caught:
        wave.parse_value(text, ty)
    assert caught.value.rule_id == rule
    assert "\n" not in caught.value.message


@pytest.mark.parametrize(
    ("text", "name", "count"),
    [
        ("add(1, 2)", "add", 2),
        (" add ( 1 , 2 , ) ", "add", 2),
        ("ready()", "ready", 0),
        ('my_export("x")', "my_export", 1),  # a core export's name need not be a kebab label
        ("f(some(1), none)", "f", 2),
    ],
)
def test_call_expressions(text: str, name: str, count: int) -> None:
    call = wave.parse_call(text)
    assert (call.name, len(call.args)) == (name, count)


@pytest.mark.parametrize("text", ["add", "add(1, 2", "add(1, 2))", "(1, 2)", "", "add(1) extra", 'a"b(1)'])
def test_malformed_calls(text: str) -> None:
    with pytest.raises(WaveError) as caught:
        wave.parse_call(text)
    assert caught.value.rule_id == "invoke.malformed"


# --- properties --------------------------------------------------------------------------------

_WORD = r"(?:[a-z][a-z0-9]{0,3}|[A-Z][A-Z0-9]{0,3})"
labels = st.from_regex(rf"\A{_WORD}(?:-{_WORD}){{0,2}}\Z") | st.sampled_from(sorted(wave.KEYWORDS))
names = st.lists(labels, min_size=1, max_size=4, unique=True).map(tuple)
primitives = st.sampled_from(wave.PRIMITIVES).map(Prim)


def _compound(inner: st.SearchStrategy[WaveType]) -> st.SearchStrategy[WaveType]:
    payloads = st.none() | inner
    return st.one_of(
        inner.map(ListT),
        st.lists(inner, min_size=1, max_size=3).map(lambda ts: TupleT(tuple(ts))),
        names.flatmap(
            lambda ns: st.tuples(*[inner] * len(ns)).map(lambda ts: RecordT(tuple(zip(ns, ts, strict=True))))
        ),
        names.flatmap(
            lambda ns: st.tuples(*[payloads] * len(ns)).map(
                lambda ts: VariantT(tuple(zip(ns, ts, strict=True)))
            )
        ),
        inner.map(OptionT),
        st.tuples(payloads, payloads).map(lambda pair: ResultT(*pair)),
    )


types = st.recursive(
    primitives
    | names.map(EnumT)
    | st.lists(labels, max_size=4, unique=True).map(lambda ns: FlagsT(tuple(ns))),
    _compound,
    max_leaves=8,
)
scalar_chars = st.characters(blacklist_categories=("Cs",))


def values(ty: WaveType) -> st.SearchStrategy[Any]:
    match ty:
        case Prim("bool"):
            return st.booleans()
        case Prim("f32"):
            return st.floats(width=32)
        case Prim("f64"):
            return st.floats()
        case Prim("char"):
            return scalar_chars
        case Prim("string"):
            return st.text(scalar_chars, max_size=8)
        case Prim(name):
            low, high = wave._INT_BOUNDS[name]
            return st.integers(low, high)
        case ListT(element):
            return st.lists(values(element), max_size=3)
        case TupleT(elements):
            return st.tuples(*[values(t) for t in elements])
        case RecordT(fields):
            return st.fixed_dictionaries({n: values(t) for n, t in fields})
        case FlagsT(flag_names):
            return st.frozensets(st.sampled_from(flag_names)) if flag_names else st.just(frozenset())
        case EnumT(cases):
            return st.sampled_from(cases)
        case VariantT(cases):
            return st.one_of(*[_case(n, t) for n, t in cases])
        case OptionT(some):
            return _case("none", None) | _case("some", some)
        case ResultT(ok, err):
            return _case("ok", ok) | _case("err", err)
    raise AssertionError(ty)


def _case(tag: str, payload: WaveType | None) -> st.SearchStrategy[Case]:
    return st.just(Case(tag)) if payload is None else values(payload).map(lambda v: Case(tag, v))


def _has_nan(value: Any) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, (list, tuple, frozenset)):
        return any(_has_nan(v) for v in value)
    if isinstance(value, dict):
        return any(_has_nan(v) for v in value.values())
    return isinstance(value, Case) and _has_nan(value.payload)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_render_then_parse_gives_the_value_back(data: st.DataObject) -> None:
    ty = data.draw(types)
    value = data.draw(values(ty))
    text = wave.render(value, ty)
    parsed = wave.parse_value(text, ty)
    assert wave.render(parsed, ty) == text
    if not _has_nan(value):
        assert parsed == value
    call = wave.parse_call(f"f({text}, {text})")
    assert [wave.from_node(arg, ty) == parsed or _has_nan(value) for arg in call.args] == [True, True]


_WAVE_ALPHABET = st.sampled_from(
    list("()[]{}:,%'\"\\-.eE+0123456789 \n/abcnoksmuftrl{}") + ["\\u{", "none", "some"]
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(), st.lists(_WAVE_ALPHABET, max_size=40).map("".join)), types)
def test_no_text_raises_anything_but_wave_error(text: str, ty: WaveType) -> None:
    for attempt in (lambda: wave.parse_call("f(" + text + ")"), lambda: wave.parse_value(text, ty)):
        try:
            attempt()
        except WaveError as exc:
            assert exc.rule_id in ("invoke.malformed", "invoke.type", "invoke.out-of-range")
            assert "\n" not in exc.message
