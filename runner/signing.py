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

Every key is read in one canonical form, and refused (:class:`KeyFileError` with a rule id) otherwise:

- PEM is exactly one block of the expected label and nothing else but surrounding whitespace
  (``key.pem-shape``): cryptography reads the first block and ignores what follows, so a file
  could show one key to a reviewer and hold another;
- a PEM key of another type or curve is ``key.unsupported`` (cryptography raises
  ``UnsupportedAlgorithm`` for curves it does not know, which is not a ``ValueError``);
- a public key that is one of the 8 small-order points, in any of its 14 encodings
  (``key.small-order``): for such a key one fixed signature verifies for many modules (for the
  identity point, every module). The list is libsodium's ``ge25519_has_small_order`` blocklist,
  compared with the sign bit cleared, not curve arithmetic of our own;
- a public key whose y coordinate is not reduced mod p (``key.non-canonical``): each point then
  has one encoding, so comparing raw bytes compares keys (``key.duplicate-material``).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
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
    "public_key_pem",
    "private_key_pem",
    "public_key_raw",
    "sign_bytes",
    "verify_bytes",
    "sign_module_digest",
    "verify_module_digest",
]

MODULE_STATEMENT_PREFIX = b"sandrun/module-signature/v1\n"
_HEX64 = re.compile(r"[0-9a-f]{64}")
#: As the schemas' keyId: never 64 hex digits, which ``signatures.revoked`` would read as a digest.
_KEY_ID = re.compile(r"(?![0-9A-Fa-f]{64}\Z)[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: One PEM block: the label, then base64 lines, then the matching END line; nothing else.
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]{1,40})-----\r?\n([A-Za-z0-9+/=\r\n]*)-----END \1-----")
_FIELD_PRIME = 2**255 - 19
#: y coordinates (little-endian, sign bit cleared) of the small-order points, as in libsodium's
#: ``ge25519_has_small_order``: 0 (order 4), 1 (order 1), two of order 8, p-1 (order 2), and the
#: non-canonical p (= 0) and p+1 (= 1). With either sign bit: all 14 weak encodings.
_SMALL_ORDER_Y = frozenset(
    bytes.fromhex(text)
    for text in (
        "00" * 32,
        "01" + "00" * 31,
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "ec" + "ff" * 30 + "7f",
        "ed" + "ff" * 30 + "7f",
        "ee" + "ff" * 30 + "7f",
    )
)

# Names for annotations only: ``cryptography`` (~20 ms to import) is imported by the functions
# that use it, so a command that signs and verifies nothing (``check``, an unsigned ``exec``)
# never loads it.
PrivateKey: TypeAlias = "Ed25519PrivateKey"
PublicKey: TypeAlias = "Ed25519PublicKey"


class KeyFileError(ValueError):
    """A key that cannot be read or parsed; the message says why (never the key itself).

    ``rule_id`` names a refused canonical-form problem (``key.small-order``, ``key.pem-shape``,
    ...); it is None for a key that is merely unreadable, which the caller names in its context.
    """

    def __init__(self, message: str, rule_id: str | None = None) -> None:
        super().__init__(message)
        self.rule_id = rule_id


@dataclass(frozen=True, slots=True)
class KeyPair:
    """Where ``keys generate`` wrote a key pair, and its public half as base64."""

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
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


def public_key_raw(key: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_b64(key: Ed25519PublicKey) -> str:
    return base64.b64encode(public_key_raw(key)).decode("ascii")


def public_key_pem(key: Ed25519PublicKey) -> str:
    """The PEM ``SubjectPublicKeyInfo`` form (one block) that policies also accept."""
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    """The unencrypted PKCS#8 PEM that ``keys generate`` writes and :func:`load_private_key` reads."""
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_keypair(key_id: str, out_dir: Path) -> KeyPair:
    """Write ``ID.key`` (PEM, 0600, created exclusively) and ``ID.pub`` (base64) into ``out_dir``."""
    if not _KEY_ID.fullmatch(key_id):
        raise KeyFileError(
            f"key id {key_id!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit, and not 64 hex digits (that reads as a digest)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    private_path = out_dir / f"{key_id}.key"
    public_path = out_dir / f"{key_id}.pub"
    for path in (private_path, public_path):
        if path.exists():
            raise KeyFileError(f"{path} already exists; refusing to overwrite a key")
    key = generate_keypair()
    pem = private_key_pem(key)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public_b64 = public_key_b64(key.public_key())
    public_path.write_text(public_b64 + "\n", encoding="ascii")
    return KeyPair(key_id, private_path, public_path, public_b64)


def load_private_key_text(text: str | bytes) -> Ed25519PrivateKey:
    """Parse a PKCS#8 PEM Ed25519 private key (for keys passed through environment variables)."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = text.encode("ascii", "replace") if isinstance(text, str) else text
    der = _pem_body(data, "PRIVATE KEY", "an unencrypted PKCS#8 PEM private key")
    try:
        key = serialization.load_der_private_key(der, password=None)
    except UnsupportedAlgorithm as exc:
        raise KeyFileError(f"unsupported private key type: {exc}", "key.unsupported") from exc
    except (ValueError, TypeError) as exc:
        raise KeyFileError("not an unencrypted PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError("the private key is not an Ed25519 key", "key.unsupported")
    return key


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read private key {path}: {exc.strerror}") from exc
    return load_private_key_text(data)


def parse_public_key(text: str) -> Ed25519PublicKey:
    """Parse base64 of the raw 32 bytes, or a PEM ``SubjectPublicKeyInfo``."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    text = text.strip()
    if "-----BEGIN" in text:
        der = _pem_body(text.encode("ascii", "replace"), "PUBLIC KEY", "a PEM public key")
        try:
            key = serialization.load_der_public_key(der)
        except UnsupportedAlgorithm as exc:
            raise KeyFileError(f"unsupported public key type: {exc}", "key.unsupported") from exc
        except (ValueError, TypeError) as exc:
            raise KeyFileError("not a PEM public key") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError("the public key is not an Ed25519 key", "key.unsupported")
        raw = public_key_raw(key)
    else:
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise KeyFileError("a public key is base64 of 32 raw bytes, or PEM") from exc
        if len(raw) != 32:
            raise KeyFileError(f"an Ed25519 public key is 32 bytes, this one is {len(raw)}")
    _refuse_weak_encoding(raw)
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise KeyFileError("not a valid Ed25519 public key") from exc


def _pem_body(data: bytes, label: str, what: str) -> bytes:
    """The DER inside ``data`` when it is exactly one PEM block labelled ``label``, else refuse."""
    data = data.strip()
    blocks = data.count(b"-----BEGIN ")
    if blocks == 0:
        raise KeyFileError(f"not {what}")
    match = _PEM_BLOCK.fullmatch(data) if blocks == 1 else None
    if match is None:
        found = f"{blocks} PEM blocks" if blocks != 1 else "text around the PEM block"
        raise KeyFileError(
            f"{what} is exactly one PEM block and nothing else; found {found}", "key.pem-shape"
        )
    if match.group(1).decode() != label:
        raise KeyFileError(
            f"PEM block {match.group(1).decode()!r} is not {label!r}: expected {what}", "key.unsupported"
        )
    try:
        return base64.b64decode(re.sub(rb"\r?\n", b"", match.group(2)), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyFileError(f"the PEM body of {what} is not base64", "key.pem-shape") from exc


def _refuse_weak_encoding(raw: bytes) -> None:
    """Refuse the small-order points and non-canonical encodings (see the module docstring)."""
    y = raw[:31] + bytes([raw[31] & 0x7F])
    if y in _SMALL_ORDER_Y:
        raise KeyFileError(
            "a small-order (weak) Ed25519 public key: one signature would verify for many modules",
            "key.small-order",
        )
    if int.from_bytes(y, "little") >= _FIELD_PRIME:
        raise KeyFileError(
            "a non-canonical Ed25519 public key encoding (y is not below p)", "key.non-canonical"
        )


def sign_bytes(key: Ed25519PrivateKey, data: bytes) -> bytes:
    return key.sign(data)


def verify_bytes(key: Ed25519PublicKey, data: bytes, signature: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature

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
