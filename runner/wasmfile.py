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

__all__ = ["WASM_HEADER", "COMPONENT_LAYER", "WasmKind", "wasm_kind", "not_wasm_reason", "core_modules"]

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
