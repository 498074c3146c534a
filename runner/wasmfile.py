"""What a module file must start with before anything parses it: the WebAssembly binary header.

wasmtime also accepts the text format (WAT) and would parse a text file handed to it as a module;
a manifest's module is always a binary, so anything else is refused first, naming its first bytes
(escaped: a hostile file must not write to the terminal) instead of leaving wasmtime to guess.

The header also says what the binary is: ``\\0asm`` then a 16-bit version and a 16-bit *layer*.
A core module is version 1, layer 0 (``01 00 00 00``); a component (the component model, WASI
preview 2) is layer 1 (``0d 00 01 00`` today: the version is the component binary format's).
:func:`wasm_kind` tells them apart without parsing anything else, so ``check`` and ``compile`` can
record the kind in the plan and the executor can load each the way it needs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

__all__ = [
    "WASM_HEADER",
    "COMPONENT_LAYER",
    "WasmKind",
    "Signature",
    "wasm_kind",
    "not_wasm_reason",
    "core_modules",
    "export_signature",
]

#: ``\0asm`` and binary format version 1: a core module.
WASM_HEADER = b"\0asm\x01\x00\x00\x00"
#: The layer field (header bytes 6 and 7) of a component.
COMPONENT_LAYER = b"\x01\x00"
_MAGIC = b"\0asm"
_SHOWN = 16
_CORE_MODULE_SECTION = 1  # a component section holding a whole core module binary
_COMPONENT_SECTION = 4  # a component section holding a whole nested component binary

WasmKind = Literal["module", "component"]


def _shown(data: bytes) -> str:
    """The first bytes as an escaped bytes literal, e.g. ``b'(module\\n  (func'``."""
    head = repr(data[:_SHOWN])
    return head + ("..." if len(data) > _SHOWN else "")


def wasm_kind(data: bytes) -> WasmKind | None:
    """``module`` or ``component`` by the header; None when the bytes are neither."""
    if data.startswith(WASM_HEADER):
        return "module"
    if len(data) >= 8 and data.startswith(_MAGIC) and data[6:8] == COMPONENT_LAYER:
        return "component"
    return None


def not_wasm_reason(data: bytes) -> str | None:
    """None for a core module or a component binary; otherwise why not, with the first bytes named."""
    if wasm_kind(data) is not None:
        return None
    if not data:
        return "the file is empty, not a WebAssembly module"
    if data.startswith(_MAGIC):
        return f"starts with {_shown(data)}: WebAssembly, but neither a version 1 core module nor a component"
    hint = "; a text file (WAT?) must be compiled to a binary .wasm first" if _looks_like_text(data) else ""
    return f"starts with {_shown(data)}, not the WebAssembly header {WASM_HEADER!r}{hint}"


def core_modules(component: bytes) -> Iterator[bytes]:
    """Every core module binary a component embeds, nested components included, in file order.

    The compiler validates these against the policy's WebAssembly proposals (a component's code is
    its core modules). Raises ``ValueError`` for a section that runs past its parent's end.
    """
    pos = 8
    while pos < len(component):
        section = component[pos]
        size, body = _leb128(component, pos + 1)
        end = body + size
        if end > len(component):
            raise ValueError(f"section at byte {pos} runs past the end of the component")
        if section == _CORE_MODULE_SECTION:
            yield component[body:end]
        elif section == _COMPONENT_SECTION:
            yield from core_modules(component[body:end])
        pos = end


def _leb128(data: bytes, pos: int) -> tuple[int, int]:
    """An unsigned LEB128 number (at most 32 bits) at ``pos``, and where the next field starts."""
    value = 0
    for index in range(5):
        if pos + index >= len(data):
            raise ValueError("truncated LEB128 number")
        byte = data[pos + index]
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return value, pos + index + 1
    raise ValueError("a LEB128 number longer than 5 bytes")


def _looks_like_text(data: bytes) -> bool:
    head = data[:512]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\t\r\n" for ch in text)


# --- a core module's export signatures, read from its bytes ------------------------------------
#
# Wasmtime's C API aborts the whole process (a Rust panic: "support for v128 is not implemented")
# when asked the kind of a value type it cannot express: v128 and every reference type but funcref
# and externref. An export's type is therefore read here, from the module's own bytes, before
# anything asks Wasmtime (runner.invoke).

_TYPE_SECTION, _IMPORT_SECTION, _FUNCTION_SECTION, _EXPORT_SECTION = 1, 2, 3, 7
_NUMERIC = {0x7F: "i32", 0x7E: "i64", 0x7D: "f32", 0x7C: "f64", 0x7B: "v128"}
_REF_SHORTHANDS = range(0x69, 0x75)  # funcref 0x70, externref 0x6F, anyref ... nullexnref 0x74
_REF, _REF_NULL = 0x64, 0x63
_PACKED = (0x78, 0x77)  # i8, i16 (struct and array fields)
_FUNC, _STRUCT, _ARRAY, _SUB, _SUB_FINAL, _REC = 0x60, 0x5F, 0x5E, 0x50, 0x4F, 0x4E

Signature = tuple[tuple[str, ...], tuple[str, ...]]


class _Reader:
    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def peek(self) -> int | None:
        return self.data[self.pos] if self.pos < len(self.data) else None

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise ValueError("truncated module")
        self.pos += 1
        return self.data[self.pos - 1]

    def uleb(self, max_bytes: int = 5) -> int:
        value = 0
        for index in range(max_bytes):
            byte = self.byte()
            value |= (byte & 0x7F) << (7 * index)
            if not byte & 0x80:
                return value
        raise ValueError("a LEB128 number too long")

    def name(self) -> bytes:
        size = self.uleb()
        self.pos += size
        if self.pos > len(self.data):
            raise ValueError("truncated name")
        return self.data[self.pos - size : self.pos]

    def value_type(self) -> str:
        """``i32`` … ``v128``, or ``reference`` for any reference type."""
        code = self.byte()
        if code in _NUMERIC:
            return _NUMERIC[code]
        if code in (_REF, _REF_NULL):
            self.uleb()  # the heap type (an s33: its bytes read like an unsigned LEB128)
            return "reference"
        if code in _REF_SHORTHANDS:
            return "reference"
        raise ValueError(f"unknown value type 0x{code:02x}")

    def field(self) -> None:
        if self.peek() in _PACKED:
            self.pos += 1
        else:
            self.value_type()
        self.byte()  # mutability

    def types(self) -> list[Signature | None]:
        """The type section: each type index's function signature (None: a struct or array)."""
        types: list[Signature | None] = []
        for _ in range(self.uleb()):
            group = 1
            if self.peek() == _REC:  # a recursion group of several types
                self.pos += 1
                group = self.uleb()
            for _ in range(group):
                types.append(self._sub_type())
        return types

    def _sub_type(self) -> Signature | None:
        form = self.byte()
        if form in (_SUB, _SUB_FINAL):
            for _ in range(self.uleb()):
                self.uleb()
            form = self.byte()
        if form == _FUNC:
            params = tuple(self.value_type() for _ in range(self.uleb()))
            return params, tuple(self.value_type() for _ in range(self.uleb()))
        if form == _STRUCT:
            for _ in range(self.uleb()):
                self.field()
            return None
        if form == _ARRAY:
            self.field()
            return None
        raise ValueError(f"unknown type form 0x{form:02x}")

    def limits(self) -> None:
        flags = self.byte()
        wide = 10 if flags & 0x04 else 5  # memory64
        self.uleb(wide)
        if flags & 0x01:
            self.uleb(wide)
        if flags & 0x08:  # custom page size
            self.uleb()

    def imported_functions(self) -> list[int]:
        """The import section: the type index of each imported function, in order."""
        functions = []
        for _ in range(self.uleb()):
            self.name()
            self.name()
            kind = self.byte()
            if kind == 0x00:
                functions.append(self.uleb())
            elif kind == 0x01:
                self.value_type()
                self.limits()
            elif kind == 0x02:
                self.limits()
            elif kind == 0x03:
                self.value_type()
                self.byte()
            elif kind == 0x04:
                self.byte()
                self.uleb()
            else:
                raise ValueError(f"unknown import kind 0x{kind:02x}")
        return functions


def export_signature(module: bytes, name: str) -> Signature | None:
    """The parameter and result types of the function a core module exports as ``name``, by
    name (``i32``, ``i64``, ``f32``, ``f64``, ``v128``, ``reference``); None when it exports no
    function of that name. Raises ``ValueError`` for bytes it cannot read."""
    types: list[Signature | None] = []
    functions: list[int] = []
    wanted = name.encode()
    reader = _Reader(module, len(WASM_HEADER))
    while reader.pos < len(module):
        section = reader.byte()
        size = reader.uleb()
        end = reader.pos + size
        if end > len(module):
            raise ValueError("a section runs past the end of the module")
        body = _Reader(module[:end], reader.pos)
        if section == _TYPE_SECTION:
            types = body.types()
        elif section == _IMPORT_SECTION:
            functions = body.imported_functions()
        elif section == _FUNCTION_SECTION:
            functions += [body.uleb() for _ in range(body.uleb())]
        elif section == _EXPORT_SECTION:
            for _ in range(body.uleb()):
                export, kind, index = body.name(), body.byte(), body.uleb()
                if export == wanted and kind == 0x00:
                    signature = types[functions[index]]
                    if signature is None:
                        raise ValueError("an exported function whose type is not a function type")
                    return signature
            return None
        reader.pos = end
    return None
