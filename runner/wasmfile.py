"""What a module file must start with before anything parses it: the WebAssembly binary header.

wasmtime also accepts the text format (WAT) and would parse a text file handed to it as a module;
a manifest's module is always a binary, so anything else is refused first, naming its first bytes
(escaped: a hostile file must not write to the terminal) instead of leaving wasmtime to guess.
"""

from __future__ import annotations

__all__ = ["WASM_HEADER", "not_wasm_reason"]

#: ``\0asm`` and binary format version 1: a core module (a component has another version).
WASM_HEADER = b"\0asm\x01\x00\x00\x00"
_SHOWN = 16


def _shown(data: bytes) -> str:
    """The first bytes as an escaped bytes literal, e.g. ``b'(module\\n  (func'``."""
    head = repr(data[:_SHOWN])
    return head + ("..." if len(data) > _SHOWN else "")


def not_wasm_reason(data: bytes) -> str | None:
    """None for a core WebAssembly binary; otherwise why not, with the first bytes named."""
    if data.startswith(WASM_HEADER):
        return None
    if not data:
        return "the file is empty, not a WebAssembly module"
    if data.startswith(b"\0asm"):
        return f"starts with {_shown(data)}: WebAssembly, but not a version 1 core module (a component?)"
    hint = "; a text file (WAT?) must be compiled to a binary .wasm first" if _looks_like_text(data) else ""
    return f"starts with {_shown(data)}, not the WebAssembly header {WASM_HEADER!r}{hint}"


def _looks_like_text(data: bytes) -> bool:
    head = data[:512]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\t\r\n" for ch in text)
