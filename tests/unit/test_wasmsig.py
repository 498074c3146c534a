"""Modules signed in the tool-conventions ``signature`` section format, built here from the spec
(WebAssembly/tool-conventions Signatures.md), compiled under a policy that requires signatures."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from runner.api import compile_documents
from runner.errors import PolicyDenied
from runner.signing import generate_keypair, public_key_b64
from runner.source import load_yaml_bytes
from runner.wasmsig import WasmSignatureError, embedded_signers

HELLO = Path(__file__).resolve().parents[1] / "cases" / "_shared" / "hello.wasm"
TRUSTED = generate_keypair()
STRANGER = generate_keypair()


def _leb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _custom(name: str, payload: bytes) -> bytes:
    body = _leb(len(name)) + name.encode() + payload
    return b"\x00" + _leb(len(body)) + body


def _signed(module: bytes, key: object, *, delimiters: int = 0, key_id: bytes = b"") -> bytes:
    """Sign ``module`` as the spec says: rolling SHA-256 of the sections after the signature section,
    taken at each delimiter; Ed25519 over "wasmsig" | 1 | 1 | 1 | hashes."""
    header, sections = module[:8], module[8:]
    parts = [sections] + [b""] * max(0, delimiters - 1)
    rolling, hashes, body = hashlib.sha256(), b"", b""
    for part in parts[: max(1, delimiters)]:
        chunk = part + (_custom("signature_delimiter", bytes(16)) if delimiters else b"")
        rolling.update(chunk)
        body += chunk
        hashes += rolling.digest()
    signature = key.sign(b"wasmsig\x01\x01\x01" + hashes)  # type: ignore[attr-defined]
    entry = _leb(len(key_id)) + key_id + b"\x01" + _leb(64) + signature
    data = b"\x01\x01\x01" + _leb(1) + _leb(len(hashes) // 32) + hashes + _leb(1) + entry
    return header + _custom("signature", data) + body


def _compile(tmp_path: Path, module: bytes, *, required: bool = True) -> str | None:
    """Compile one tool under a policy trusting key ``release``; the tool's verified signer."""
    (tmp_path / "tool.wasm").write_bytes(module)
    (tmp_path / "policy.yaml").write_text(
        "apiVersion: sandrun/v1\nkind: Policy\nmetadata: {name: p}\n"
        f"signatures:\n  required: {'true' if required else 'false'}\n"
        f"  trusted_keys: [{{id: release, public_key: {public_key_b64(TRUSTED.public_key())}}}]\n"
    )
    text = (
        "apiVersion: sandrun/v1\nkind: Manifest\nmetadata: {name: m}\n"
        f"tools:\n  t: {{module: tool.wasm, sha256: {hashlib.sha256(module).hexdigest()}}}\n"
        "jobs:\n  - {name: j, tool: t}\n"
    )
    manifest = tmp_path / "m.yaml"
    manifest.write_text(text)
    plan = compile_documents(
        [load_yaml_bytes(text.encode(), str(manifest))], tmp_path / "policy.yaml", root=tmp_path
    )
    assert plan.tools[0].signature_verified == (plan.tools[0].signer is not None)
    return plan.tools[0].signer


def test_a_module_signed_in_its_signature_section_is_allowed(tmp_path: Path) -> None:
    assert _compile(tmp_path, _signed(HELLO.read_bytes(), TRUSTED, key_id=b"release")) == "release"


def test_delimited_parts_verify_too(tmp_path: Path) -> None:
    assert _compile(tmp_path, _signed(HELLO.read_bytes(), TRUSTED, delimiters=1)) == "release"


def test_a_byte_flipped_after_signing_is_denied(tmp_path: Path) -> None:
    signed = bytearray(_signed(HELLO.read_bytes(), TRUSTED))
    signed[-1] ^= 0x01  # inside the last section, after the signature section
    with pytest.raises(PolicyDenied) as caught:
        _compile(tmp_path, bytes(signed))
    assert caught.value.rule_id == "signature.embedded"
    assert caught.value.location is not None and caught.value.location.pointer == "/tools/t"
    # where signatures are optional, a section that does not verify makes the tool unsigned
    assert _compile(tmp_path, bytes(signed), required=False) is None


def test_a_signature_by_an_untrusted_key_is_denied(tmp_path: Path) -> None:
    with pytest.raises(PolicyDenied) as caught:
        _compile(tmp_path, _signed(HELLO.read_bytes(), STRANGER))
    assert caught.value.rule_id == "signature.embedded"


def test_sections_appended_after_signing_are_not_covered(tmp_path: Path) -> None:
    extended = _signed(HELLO.read_bytes(), TRUSTED) + _custom("extra", b"unsigned")
    assert embedded_signers(extended, {"release": TRUSTED.public_key()}) == []


def test_malformed_sections_are_refused_not_crashed() -> None:
    good = _signed(HELLO.read_bytes(), TRUSTED)
    for cut in (12, 20, 40, 60, 100):
        broken = good[:8] + _custom("signature", good[8:][3:cut])
        with pytest.raises(WasmSignatureError):
            embedded_signers(broken, {"release": TRUSTED.public_key()})
    with pytest.raises(WasmSignatureError):
        embedded_signers(HELLO.read_bytes(), {"release": TRUSTED.public_key()})
