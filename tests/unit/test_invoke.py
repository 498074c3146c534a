"""Typed invoke on components (wasmtime.component) and core modules, called directly: arguments
checked against the export's type before the call, results back as WAVE and JSON."""

from __future__ import annotations

from typing import Any

import pytest
import wasmtime
import wasmtime.component as wc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.invoke import InvokeError, invoke_component, invoke_core

# Identity functions lifted at many WIT types: each returns what it was given, so a call shows
# both directions of the conversion (Python values to the guest and back).
COMPONENT = """(component
  (core module $m
    (memory (export "mem") 1)
    (global $next (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      global.get $next
      local.get 2
      i32.add
      i32.const -8
      i32.and
      i32.const 8
      i32.add
      local.tee $p
      local.get 3
      i32.add
      global.set $next
      local.get $p)
    (func (export "id") (param i32) (result i32) local.get 0)
    (func (export "nop"))
    (func (export "id64") (param i64) (result i64) local.get 0)
    (func (export "idf64") (param f64) (result f64) local.get 0)
    (func (export "idf32") (param f32) (result f32) local.get 0)
    (func (export "echo2") (param i32 i32) (result i32)
      (i32.store (i32.const 16) (local.get 0))
      (i32.store (i32.const 20) (local.get 1))
      i32.const 16)
    (func (export "echo3") (param i32 i32 i32) (result i32)
      (i32.store (i32.const 16) (local.get 0))
      (i32.store (i32.const 20) (local.get 1))
      (i32.store (i32.const 24) (local.get 2))
      i32.const 16)
  )
  (core instance $i (instantiate $m))
  (alias core export $i "mem" (core memory $mem))
  (alias core export $i "realloc" (core func $realloc))
  (type $pair0 (record (field "a" u32) (field "b" string)))
  (export $pair "pair" (type $pair0))
  (type $shape0 (variant (case "none-yet") (case "circle" u32) (case "label" string)))
  (export $shape "shape" (type $shape0))
  (type $color0 (enum "red" "green" "ok"))
  (export $color "color" (type $color0))
  (func (export "echo-string") (param "s" string) (result string)
    (canon lift (core func $i "echo2") (memory $mem) (realloc $realloc)))
  (func (export "echo-list") (param "l" (list u32)) (result (list u32))
    (canon lift (core func $i "echo2") (memory $mem) (realloc $realloc)))
  (func (export "echo-bytes") (param "l" (list u8)) (result (list u8))
    (canon lift (core func $i "echo2") (memory $mem) (realloc $realloc)))
  (func (export "echo-pair") (param "p" $pair) (result $pair)
    (canon lift (core func $i "echo3") (memory $mem) (realloc $realloc)))
  (type $res0 (result string (error string)))
  (func (export "echo-result") (param "r" $res0) (result $res0)
    (canon lift (core func $i "echo3") (memory $mem) (realloc $realloc)))
  (func (export "echo-shape") (param "s" $shape) (result $shape)
    (canon lift (core func $i "echo3") (memory $mem) (realloc $realloc)))
  (func (export "echo-opt") (param "o" (option string)) (result (option string))
    (canon lift (core func $i "echo3") (memory $mem) (realloc $realloc)))
  (func (export "echo-tuple") (param "t" (tuple u32 string)) (result (tuple u32 string))
    (canon lift (core func $i "echo3") (memory $mem) (realloc $realloc)))
  (func (export "echo-char") (param "c" char) (result char) (canon lift (core func $i "id")))
  (func (export "echo-bool") (param "b" bool) (result bool) (canon lift (core func $i "id")))
  (func (export "echo-s8") (param "b" s8) (result s8) (canon lift (core func $i "id")))
  (func (export "echo-color") (param "c" $color) (result $color) (canon lift (core func $i "id")))
  (func (export "echo-s64") (param "x" s64) (result s64) (canon lift (core func $i "id64")))
  (func (export "echo-u64") (param "x" u64) (result u64) (canon lift (core func $i "id64")))
  (func (export "echo-f64") (param "x" f64) (result f64) (canon lift (core func $i "idf64")))
  (func (export "echo-f32") (param "x" f32) (result f32) (canon lift (core func $i "idf32")))
  (type $either0 (variant (case "num" u32) (case "flag" bool)))
  (export $either "either" (type $either0))
  (func (export "echo-either") (param "e" $either) (result $either)
    (canon lift (core func $i "echo2") (memory $mem)))
  (type $perms0 (flags "read" "write" "exec"))
  (export $perms "perms" (type $perms0))
  (func (export "echo-perms") (param "p" $perms) (result $perms) (canon lift (core func $i "id")))
  (func (export "nothing") (canon lift (core func $i "nop")))
  (func (export "opt-u32") (param "x" (option u32)) (result (option u32))
    (canon lift (core func $i "echo2") (memory $mem)))
)"""


@pytest.fixture(scope="module")
def component() -> tuple[wasmtime.Store, wc.Instance]:
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    return store, wc.Linker(engine).instantiate(store, wc.Component(engine, wasmtime.wat2wasm(COMPONENT)))


@pytest.mark.parametrize(
    ("call", "wave", "json"),
    [
        ('echo-string("h\\u{e9}llo\\n\\u{1b}[31m")', '"h\u00e9llo\\n\\u{1b}[31m"', "h\u00e9llo\n\x1b[31m"),
        ("echo-list([1, 2, 3,])", "[1, 2, 3]", [1, 2, 3]),
        ("echo-bytes([0, 255])", "[0, 255]", [0, 255]),
        ('echo-pair({b: "x", a: 7})', '{a: 7, b: "x"}', {"a": 7, "b": "x"}),
        ('echo-result(ok("yes"))', 'ok("yes")', {"ok": "yes"}),
        ('echo-result(err("no"))', 'err("no")', {"err": "no"}),
        ('echo-result("flat")', 'ok("flat")', {"ok": "flat"}),
        ("echo-shape(circle(5))", "circle(5)", {"circle": 5}),
        ('echo-shape(label("l"))', 'label("l")', {"label": "l"}),
        ("echo-shape(none-yet)", "none-yet", {"none-yet": None}),
        ('echo-opt(some("x"))', 'some("x")', "x"),
        ('echo-opt("flat")', 'some("flat")', "flat"),
        ("echo-opt(none)", "none", None),
        ("echo-opt()", "none", None),  # a trailing option argument may be left out
        ('echo-tuple((1, "a"))', '(1, "a")', [1, "a"]),
        ("echo-char('\u2603')", "'\u2603'", "\u2603"),
        ("echo-char('\\u{10ffff}')", "'\\u{10ffff}'", "\U0010ffff"),
        ("echo-bool(true)", "true", True),
        ("echo-s8(-128)", "-128", -128),
        ("echo-color(%ok)", "%ok", "ok"),
        ("echo-color(green)", "green", "green"),
        ("echo-perms({exec, read})", "{read, exec}", ["read", "exec"]),
        ("echo-s64(-9223372036854775808)", "-9223372036854775808", -(2**63)),
        ("echo-u64(18446744073709551615)", "18446744073709551615", 2**64 - 1),
        ("echo-f64(nan)", "nan", "nan"),
        ("echo-f64(-inf)", "-inf", "-inf"),
        ("echo-f32(0.1)", "0.1", "0.1"),
        ("opt-u32(5)", "some(5)", 5),
        ("opt-u32(none)", "none", None),
    ],
)
def test_component_round_trips(
    component: tuple[wasmtime.Store, wc.Instance], call: str, wave: str, json: Any
) -> None:
    result = invoke_component(*component, call)
    assert (result.export, result.wave, result.json, result.lines) == (
        call.split("(")[0],
        wave,
        (json,),
        (wave,),
    )


def test_no_results_render_as_an_empty_tuple(component: tuple[wasmtime.Store, wc.Instance]) -> None:
    result = invoke_component(*component, "nothing()")
    assert (result.wave, result.json, result.lines) == ("()", (), ("()",))


@pytest.mark.parametrize(
    ("call", "rule", "message"),
    [
        ("echo-s8(128)", "invoke.out-of-range", "argument 0 (b): 128 does not fit s8 (-128 to 127)"),
        ("echo-u64(-1)", "invoke.out-of-range", "argument 0 (x): -1 does not fit u64"),
        ("echo-bytes([256])", "invoke.out-of-range", "argument 0 (l): 256 does not fit u8"),
        ("echo-f32(1e39)", "invoke.out-of-range", "argument 0 (x): 1e39 does not fit f32"),
        ("echo-pair({a: 1})", "invoke.type", "argument 0 (p): the record lacks field 'b'"),
        ("echo-color(ok)", "invoke.type", "argument 0 (c): 'ok' is not a case of enum"),
        ("echo-string(1)", "invoke.type", "argument 0 (s): expected string, found 1"),
        ("echo-string()", "invoke.arity", "'echo-string' takes 1 argument(s), the call gives 0"),
        ('echo-string("a", "b")', "invoke.arity", "'echo-string' takes 1 argument(s), the call gives 2"),
        ("nope()", "invoke.export", "the component exports no function named 'nope'"),
        ("echo-string(", "invoke.malformed", "invoke: expected a value, found the end"),
        # bool is an int to Python: wasmtime-py would pass flag(true) as num(1), so it is refused
        ("echo-either(flag(true))", "invoke.type", "wasmtime-py cannot tell the cases of variant"),
    ],
)
def test_component_refusals(
    component: tuple[wasmtime.Store, wc.Instance], call: str, rule: str, message: str
) -> None:
    with pytest.raises(InvokeError) as caught:
        invoke_component(*component, call)
    assert caught.value.rule_id == rule
    assert caught.value.message.startswith(message)


def test_out_of_range_is_refused_where_wasmtime_py_would_truncate(
    component: tuple[wasmtime.Store, wc.Instance],
) -> None:
    store, instance = component
    func = instance.get_func(store, "echo-s8")
    assert func is not None
    assert func(store, 128 + 256 * 3) != 128 + 256 * 3  # the hazard: passed through silently
    func.post_return(store)
    with pytest.raises(InvokeError):
        invoke_component(store, instance, f"echo-s8({128 + 256 * 3})")


CORE = wasmtime.wat2wasm(
    """(module
      (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
      (func (export "mix") (param i64 f32 f64) (result i64 f32 f64) local.get 0 local.get 1 local.get 2)
      (func (export "none"))
      (func (export "ref") (param externref)))"""
)


@pytest.fixture(scope="module")
def core() -> tuple[wasmtime.Store, wasmtime.Instance]:
    store = wasmtime.Store()
    return store, wasmtime.Instance(store, wasmtime.Module(store.engine, CORE), [])


def test_core_results_print_as_wasmtime_prints_them(core: tuple[wasmtime.Store, wasmtime.Instance]) -> None:
    result = invoke_core(*core, "mix(-1, 0.1, 1e21)")
    assert result.lines == ("-1", "0.1", "1000000000000000000000")
    assert (result.wave, result.json) == (
        "(-1, 0.1, 1000000000000000000000)",
        (-1, "0.1", "1000000000000000000000"),
    )
    assert invoke_core(*core, "add(2, 40)").lines == ("42",)
    assert invoke_core(*core, "none()").lines == ()


@pytest.mark.parametrize(
    ("call", "rule"),
    [
        ("add(1, 1099511627776)", "invoke.out-of-range"),  # wasmtime-py would return 1
        ("add(1, 2147483648)", "invoke.out-of-range"),
        ("add(1)", "invoke.arity"),
        ("ref(1)", "invoke.type"),
        ("add(1, none)", "invoke.type"),
    ],
)
def test_core_refusals(core: tuple[wasmtime.Store, wasmtime.Instance], call: str, rule: str) -> None:
    with pytest.raises(InvokeError) as caught:
        invoke_core(*core, call)
    assert caught.value.rule_id == rule


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(-(2**70), 2**70))
def test_an_integer_is_passed_exactly_or_refused(
    core: tuple[wasmtime.Store, wasmtime.Instance], n: int
) -> None:
    try:
        result = invoke_core(*core, f"add({n}, 0)")
    except InvokeError as exc:
        assert exc.rule_id == "invoke.out-of-range" and not -(2**31) <= n < 2**31
    else:
        assert result.json == (n,)  # never a truncated value
