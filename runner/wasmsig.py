"""Signatures that modules already carry: the WebAssembly tool-conventions ``signature`` section.

Tools signed with ``wasmsign2`` (or anything following ``tool-conventions/Signatures.md``) hold
their signature in a custom section named ``signature``, the module's first section::

    spec_version (0x01) | content_type (0x01) | hash_fn (0x01 = SHA-256) | varuint32 count |
    count x ( varuint32 n | n x 32-byte hash | varuint32 m |
              m x ( varuint32 len | key_id | alg (0x01 = Ed25519) | varuint32 len | signature ) )

The hashes are a rolling SHA-256 over the sections that follow it, exactly as they are in the
file, taken after each ``signature_delimiter`` section and at the end; each signature is Ed25519
over ``"wasmsig" | spec_version | content_type | hash_fn | hashes``. Only a signature over the
*whole* module counts (a partial signature must be ignored by runtimes, says the spec): its hashes
must be exactly the checkpoints of these bytes. The compiler checks this over the same bytes whose
SHA-256 the plan pins, so the verified bytes are the compiled bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runner.signing import PublicKey

__all__ = ["SECTION", "DELIMITER", "WasmSignatureError", "has_signature_section", "embedded_signers"]

SECTION = "signature"
DELIMITER = "signature_delimiter"
_HEADER = b"\x00asm"
_VERSION = _CONTENT_TYPE = _SHA256 = _ED25519 = 0x01
_LIMIT = 256  # at most this many hash sets, hashes per set, or signatures per set


class WasmSignatureError(ValueError):
    """A ``signature`` section that cannot be read; the message says where and why."""


def _varuint32(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    for index in range(5):
        if pos + index >= len(data):
            raise WasmSignatureError("truncated LEB128 number")
        byte = data[pos + index]
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            if value >= 1 << 32:
                raise WasmSignatureError("a varuint32 above 2**32 - 1")
            return value, pos + index + 1
    raise WasmSignatureError("a LEB128 number longer than 5 bytes")


def _sections(module: bytes) -> list[tuple[int, int, int, str | None]]:
    """(start, payload start, end, custom section name) of each section after the 8-byte header."""
    if len(module) < 8 or module[:4] != _HEADER:
        raise WasmSignatureError("not a WebAssembly binary")
    found = []
    pos = 8
    while pos < len(module):
        start = pos
        size, body = _varuint32(module, pos + 1)
        end = body + size
        if end > len(module):
            raise WasmSignatureError(f"section at byte {start} runs past the end")
        name = None
        if module[start] == 0:
            length, name_at = _varuint32(module, body)
            if name_at + length > end:
                raise WasmSignatureError(f"custom section name at byte {start} runs past its section")
            name = module[name_at : name_at + length].decode("utf-8", "replace")
        found.append((start, body, end, name))
        pos = end
    return found


def has_signature_section(module: bytes) -> bool:
    try:
        sections = _sections(module)
    except WasmSignatureError:
        return False
    return bool(sections) and sections[0][3] == SECTION


def _payload(module: bytes, body: int, end: int) -> bytes:
    length, name_at = _varuint32(module, body)
    return module[name_at + length : end]


def _checkpoints(module: bytes, sections: list[tuple[int, int, int, str | None]]) -> list[bytes]:
    """The rolling SHA-256 after each delimiter, and at the end when the last section is not one."""
    rolling = hashlib.sha256()
    points = []
    for start, _body, end, name in sections[1:]:
        rolling.update(module[start:end])
        if name == DELIMITER:
            points.append(rolling.digest())
    if len(sections) < 2 or sections[-1][3] != DELIMITER:
        points.append(rolling.digest())
    return points


def embedded_signers(module: bytes, keys: Mapping[str, PublicKey]) -> list[str]:
    """The ids of ``keys`` with a valid whole-module signature in the module's ``signature`` section.

    Raises :class:`WasmSignatureError` when there is no such section or it is malformed.
    """
    sections = _sections(module)
    if not sections or sections[0][3] != SECTION:
        raise WasmSignatureError("the module has no signature section (it must be the first section)")
    data = _payload(module, sections[0][1], sections[0][2])
    if len(data) < 3 or tuple(data[:3]) != (_VERSION, _CONTENT_TYPE, _SHA256):
        raise WasmSignatureError("unsupported signature format (want version 1, a module, SHA-256)")
    expected = b"".join(_checkpoints(module, sections))
    count, pos = _varuint32(data, 3)
    if count > _LIMIT:
        raise WasmSignatureError(f"{count} hash sets is above {_LIMIT}")
    from runner.signing import verify_bytes  # cryptography: only when a module carries a section

    signers: list[str] = []
    for _ in range(count):
        hashes_count, pos = _varuint32(data, pos)
        if hashes_count > _LIMIT or pos + 32 * hashes_count > len(data):
            raise WasmSignatureError("a hash set runs past the section")
        hashes = data[pos : pos + 32 * hashes_count]
        pos += 32 * hashes_count
        signature_count, pos = _varuint32(data, pos)
        if signature_count > _LIMIT:
            raise WasmSignatureError(f"{signature_count} signatures is above {_LIMIT}")
        message = b"wasmsig" + bytes((_VERSION, _CONTENT_TYPE, _SHA256)) + hashes
        for _ in range(signature_count):
            key_id_length, pos = _varuint32(data, pos)
            pos += key_id_length  # a hint only: every trusted key is tried
            if pos >= len(data):
                raise WasmSignatureError("a signature runs past the section")
            algorithm = data[pos]
            length, pos = _varuint32(data, pos + 1)
            signature = data[pos : pos + length]
            if len(signature) != length:
                raise WasmSignatureError("a signature runs past the section")
            pos += length
            if algorithm != _ED25519 or length != 64 or hashes != expected:
                continue  # another algorithm, or a partial signature: never counted
            signers.extend(
                k for k, key in keys.items() if k not in signers and verify_bytes(key, message, signature)
            )
    if pos != len(data):
        raise WasmSignatureError("bytes after the last signature")
    return signers
