"""Ed25519 keys, the signed module statement, and verification: the only ``cryptography`` import.

A module signature is an Ed25519 signature over this exact statement (ASCII, LF line ends)::

    sandrun/module-signature/v1\\n
    sha256:<64 lowercase hex digits of the module's SHA-256>\\n

The first line separates the domain (no other protocol signs bytes that begin with it) and the
second binds the digest, so a signature made for one module never verifies for another. Other
signatures Sandrun makes (audit seals) sign their own, differently prefixed, bytes through
:func:`sign_bytes`.

Key files: a private key is PKCS#8 PEM written ``0600``; a public key is the base64 of the raw 32
bytes on one line (PEM ``SubjectPublicKeyInfo`` is accepted too).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "MODULE_STATEMENT_PREFIX",
    "KeyFileError",
    "KeyPair",
    "PrivateKey",
    "PublicKey",
    "module_statement",
    "generate_keypair",
    "write_keypair",
    "load_private_key",
    "load_private_key_text",
    "parse_public_key",
    "public_key_b64",
    "public_key_raw",
    "sign_bytes",
    "verify_bytes",
    "sign_module_digest",
    "verify_module_digest",
]

MODULE_STATEMENT_PREFIX = b"sandrun/module-signature/v1\n"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

PrivateKey = Ed25519PrivateKey
PublicKey = Ed25519PublicKey


class KeyFileError(ValueError):
    """A key that cannot be read or parsed; the message says why (never the key itself)."""


@dataclass(frozen=True, slots=True)
class KeyPair:
    key_id: str
    private_path: Path
    public_path: Path
    public_b64: str


def module_statement(sha256_hex: str) -> bytes:
    """The exact bytes a module signature covers."""
    if not _HEX64.fullmatch(sha256_hex):
        raise ValueError("a module digest is 64 lowercase hex digits")
    return MODULE_STATEMENT_PREFIX + b"sha256:" + sha256_hex.encode("ascii") + b"\n"


def generate_keypair() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_key_raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_b64(key: Ed25519PublicKey) -> str:
    return base64.b64encode(public_key_raw(key)).decode("ascii")


def write_keypair(key_id: str, out_dir: Path) -> KeyPair:
    """Write ``ID.key`` (PEM, 0600, created exclusively) and ``ID.pub`` (base64) into ``out_dir``."""
    if not _KEY_ID.fullmatch(key_id):
        raise KeyFileError(f"key id {key_id!r} must match {_KEY_ID.pattern}")
    out_dir.mkdir(parents=True, exist_ok=True)
    private_path = out_dir / f"{key_id}.key"
    public_path = out_dir / f"{key_id}.pub"
    for path in (private_path, public_path):
        if path.exists():
            raise KeyFileError(f"{path} already exists; refusing to overwrite a key")
    key = generate_keypair()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public_b64 = public_key_b64(key.public_key())
    public_path.write_text(public_b64 + "\n", encoding="ascii")
    return KeyPair(key_id, private_path, public_path, public_b64)


def load_private_key_text(text: str | bytes) -> Ed25519PrivateKey:
    """Parse a PKCS#8 PEM Ed25519 private key (for keys passed through environment variables)."""
    data = text.encode("ascii", "replace") if isinstance(text, str) else text
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError("not an unencrypted PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError("the private key is not an Ed25519 key")
    return key


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read private key {path}: {exc.strerror}") from exc
    return load_private_key_text(data)


def parse_public_key(text: str) -> Ed25519PublicKey:
    """Parse base64 of the raw 32 bytes, or a PEM ``SubjectPublicKeyInfo``."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text.encode("ascii", "replace"))
        except UnsupportedAlgorithm as exc:  # a curve or key type OpenSSL here does not know
            raise KeyFileError("the public key is not an Ed25519 key") from exc
        except (ValueError, TypeError) as exc:
            raise KeyFileError("not a PEM public key") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError("the public key is not an Ed25519 key")
        return key
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyFileError("a public key is base64 of 32 raw bytes, or PEM") from exc
    if len(raw) != 32:
        raise KeyFileError(f"an Ed25519 public key is 32 bytes, this one is {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def sign_bytes(key: Ed25519PrivateKey, data: bytes) -> bytes:
    return key.sign(data)


def verify_bytes(key: Ed25519PublicKey, data: bytes, signature: bytes) -> bool:
    try:
        key.verify(signature, data)
    except InvalidSignature:
        return False
    return True


def sign_module_digest(key: Ed25519PrivateKey, sha256_hex: str) -> str:
    """The base64 signature to paste into a manifest's ``signature.sig``."""
    return base64.b64encode(sign_bytes(key, module_statement(sha256_hex))).decode("ascii")


def verify_module_digest(key: Ed25519PublicKey, sha256_hex: str, signature_b64: str) -> bool:
    """True only when ``signature_b64`` is a valid signature of this digest's statement."""
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        return False
    if len(signature) != 64:
        return False
    return verify_bytes(key, module_statement(sha256_hex), signature)
