"""Module signatures: the exact statement, binding to the digest, key files."""

from __future__ import annotations

import base64
import hashlib
import stat

import pytest

from runner import signing

DIGEST = hashlib.sha256(b"module one").hexdigest()
OTHER = hashlib.sha256(b"module two").hexdigest()


def test_statement_is_the_documented_bytes() -> None:
    assert (
        signing.module_statement(DIGEST) == b"sandrun/module-signature/v1\nsha256:" + DIGEST.encode() + b"\n"
    )


@pytest.mark.parametrize("bad", ["", DIGEST.upper(), DIGEST[:-1], DIGEST + "0", "g" * 64])
def test_statement_refuses_anything_but_a_lowercase_digest(bad: str) -> None:
    with pytest.raises(ValueError):
        signing.module_statement(bad)


def test_signature_verifies_only_for_its_own_digest_and_key() -> None:
    key = signing.generate_keypair()
    sig = signing.sign_module_digest(key, DIGEST)
    assert signing.verify_module_digest(key.public_key(), DIGEST, sig)
    assert not signing.verify_module_digest(key.public_key(), OTHER, sig)
    assert not signing.verify_module_digest(signing.generate_keypair().public_key(), DIGEST, sig)


def test_signature_over_the_raw_digest_from_another_protocol_is_refused() -> None:
    key = signing.generate_keypair()
    raw = base64.b64encode(key.sign(bytes.fromhex(DIGEST))).decode()
    plain = base64.b64encode(key.sign(DIGEST.encode())).decode()
    assert not signing.verify_module_digest(key.public_key(), DIGEST, raw)
    assert not signing.verify_module_digest(key.public_key(), DIGEST, plain)


@pytest.mark.parametrize("sig", ["", "not base64!", base64.b64encode(b"x" * 63).decode(), "A" * 88])
def test_malformed_signatures_fail_without_raising(sig: str) -> None:
    key = signing.generate_keypair()
    assert not signing.verify_module_digest(key.public_key(), DIGEST, sig)


def test_keypair_files(tmp_path) -> None:
    pair = signing.write_keypair("release-2026", tmp_path)
    assert stat.S_IMODE(pair.private_path.stat().st_mode) == 0o600
    private = signing.load_private_key(pair.private_path)
    public = signing.parse_public_key(pair.public_path.read_text())
    assert signing.public_key_b64(private.public_key()) == signing.public_key_b64(public) == pair.public_b64
    with pytest.raises(signing.KeyFileError):
        signing.write_keypair("release-2026", tmp_path)


@pytest.mark.parametrize("key_id", ["", "../evil", "a/b", "x" * 65, "-dash"])
def test_key_ids_are_safe_file_names(tmp_path, key_id: str) -> None:
    with pytest.raises(signing.KeyFileError):
        signing.write_keypair(key_id, tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "text",
    [
        "",
        "AAAA",
        base64.b64encode(b"x" * 31).decode(),
        "-----BEGIN PUBLIC KEY-----\nxx\n-----END PUBLIC KEY-----",
    ],
)
def test_bad_public_keys_raise_key_file_error(text: str) -> None:
    with pytest.raises(signing.KeyFileError):
        signing.parse_public_key(text)


def test_pem_public_key_is_accepted() -> None:
    from cryptography.hazmat.primitives import serialization

    key = signing.generate_keypair()
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert signing.public_key_b64(signing.parse_public_key(pem.decode())) == signing.public_key_b64(
        key.public_key()
    )
