"""Modules that are cheap to write and expensive to compile: Cranelift's cost is not their size.

Each function keeps ``depth`` values live on the operand stack (``local.get``, a distinct
``i64.const``, ``i64.add``) and then sums them, so register allocation and the e-graph pass work
on ``depth`` simultaneously live values. Measured with wasmtime-py 50 on a 2-core machine:

- :func:`slow_module` (300 functions of depth 3000, 6 MB): ~28 s of CPU time, ~85 MB at peak;
- :func:`huge_module` (one function of depth 150000, 1.2 MB): ~11 s of CPU and ~1 GB at peak.

Tests bound them far below that (1 s of CPU; 128 MiB), so a machine many times faster still
exceeds the bound. Written as binary directly: generating the text form and ``wat2wasm`` would
take longer than the test.
"""

from __future__ import annotations

__all__ = ["huge_module", "slow_module"]

_I64 = 0x7E
_LOCALS = 10


def _leb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


def _section(section_id: int, payload: bytes) -> bytes:
    return bytes([section_id]) + _leb(len(payload)) + payload


def _vector(items: list[bytes]) -> bytes:
    return _leb(len(items)) + b"".join(items)


def _deep_stack_module(functions: int, depth: int) -> bytes:
    """``functions`` copies of ``(func (param i64) (result i64) (local i64 x10) ...)``."""
    pushes = b"".join(b"\x20" + _leb(i % _LOCALS) + b"\x42" + _leb(i) + b"\x7c" for i in range(depth))
    body = b"\x01" + _leb(_LOCALS) + bytes([_I64]) + pushes + b"\x7c" * (depth - 1) + b"\x0b"
    code = _leb(len(body)) + body
    types = _section(1, _vector([bytes([0x60, 1, _I64, 1, _I64])]))
    declared = _section(3, _vector([b"\x00"] * functions))
    bodies = _section(10, _vector([code] * functions))
    return b"\0asm\x01\0\0\0" + types + declared + bodies


def slow_module() -> bytes:
    """Tens of seconds of CPU time to compile, with modest memory."""
    return _deep_stack_module(functions=300, depth=3000)


def huge_module() -> bytes:
    """About a gigabyte to compile."""
    return _deep_stack_module(functions=1, depth=150_000)
