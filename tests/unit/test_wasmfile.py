"""A module file is a WebAssembly binary or nothing: wasmtime never gets to read text as WAT."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_job
from wasmtime import wat2wasm

from runner.errors import InputError
from runner.sandbox import Runtime
from runner.wasmfile import WASM_HEADER, core_modules, export_signature, not_wasm_reason, wasm_kind

COMPONENT = """(component
  (core module $a (memory 1))
  (component $inner (core module $b (func)))
  (core instance (instantiate $a)))"""


def test_a_binary_module_passes() -> None:
    assert not_wasm_reason(wat2wasm("(module)")) is None


def test_the_header_layer_tells_a_component_from_a_module() -> None:
    module, component = wat2wasm("(module)"), wat2wasm(COMPONENT)
    assert component[4:8] == b"\x0d\x00\x01\x00"
    assert (wasm_kind(module), wasm_kind(component)) == ("module", "component")
    assert not_wasm_reason(component) is None
    assert wasm_kind(b"\0asm\x0d\x00\x00\x00") is None  # layer 0 of another version: neither


def test_core_modules_finds_every_embedded_module_nested_ones_too() -> None:
    found = list(core_modules(wat2wasm(COMPONENT)))
    assert [wasm_kind(m) for m in found] == ["module", "module"]
    assert [b"\x05" in m for m in found] == [True, False]  # $a has a memory section, $b none
    with pytest.raises(ValueError, match="runs past the end"):
        list(core_modules(wat2wasm(COMPONENT)[:-3]))


@pytest.mark.parametrize(
    ("data", "shown"),
    [
        (b'(module (func (export "_start")))\n', "b'(module (func (e'..."),
        (b"\x7fELF\x02\x01\x01\x00", "b'\\x7fELF\\x02\\x01\\x01\\x00'"),
        (b"\x1b[2J\x1b]0;pwned\x07", "b'\\x1b[2J\\x1b]0;pwned\\x07'"),  # no raw escape reaches a terminal
        (b"\0asm\x02\x00\x00\x00", "b'\\x00asm\\x02\\x00\\x00\\x00'"),  # a future version
    ],
)
def test_anything_else_is_named_by_its_escaped_first_bytes(data: bytes, shown: str) -> None:
    reason = not_wasm_reason(data)
    assert reason is not None and shown in reason
    assert "\x1b" not in reason and "\x07" not in reason


def test_text_gets_a_hint_and_empty_is_said() -> None:
    assert "WAT" in (not_wasm_reason(b"(module)") or "")
    assert "empty" in (not_wasm_reason(b"") or "")
    assert not_wasm_reason(WASM_HEADER) is None


def test_the_runtime_never_compiles_text_from_a_plan(runtime: Runtime, tmp_path: Path) -> None:
    job = make_job(tmp_path, b'(module (func (export "_start")))')  # a plan naming a WAT file
    with pytest.raises(InputError) as caught:
        runtime.load_module(job, tmp_path)
    assert caught.value.rule_id == "module.invalid"
    assert "b'(module" in caught.value.violations[0].message


def test_export_signatures_are_read_from_the_bytes_through_every_kind_of_type_and_import() -> None:
    """Recursion groups, sub types, struct and array types, imports of every kind (memory64 limits,
    tables of typed references, v128 globals, tags) are stepped over to the export's own type."""
    module = wat2wasm(
        """(module
          (rec (type $a (struct (field (mut i8)) (field (ref null $b)))) (type $b (sub (array (mut i16)))))
          (type $f (sub final (func (param i64 (ref null $a)) (result f32))))
          (import "m" "g" (global (mut v128)))
          (import "m" "t" (table 2 10 (ref null $b)))
          (import "m" "mem" (memory i64 1 2))
          (import "m" "f" (func (param i32)))
          (import "m" "tag" (tag (param i32)))
          (func $x (type $f) (f32.const 1))
          (func (export "y") (param i32) (result i64 f64) (i64.const 1) (f64.const 2))
          (export "x" (func $x))
          (export "imported" (func 0))
          (export "table" (table 0)))"""
    )
    assert export_signature(module, "x") == (("i64", "reference"), ("f32",))
    assert export_signature(module, "y") == (("i32",), ("i64", "f64"))
    assert export_signature(module, "imported") == (("i32",), ())
    assert export_signature(module, "table") is None  # not a function
    assert export_signature(module, "missing") is None
    with pytest.raises(ValueError):
        export_signature(module[:30], "x")  # cut inside the type section
