"""The seal's checkpoint: byte-compatible with C2SP signed-note (Go's sumdb/note test vector)."""

from __future__ import annotations

import base64

import pytest

from runner.audit.checkpoint import (
    Checkpoint,
    NoteSignature,
    key_hash,
    parse_checkpoint,
    sign_checkpoint,
    verifier_key,
    verify_signatures,
)
from runner.signing import generate_keypair, load_private_key_text, sign_bytes

# golang.org/x/mod/sumdb/note, note_test.go / the package documentation.
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
)
GO_SIG_LINE = (
    "\u2014 PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
)
ROOT = "ab" * 32


def _go_key():  # type: ignore[no-untyped-def]
    seed = base64.b64decode(GO_SKEY.split("+", 4)[4])[1:]
    der = bytes.fromhex("302e020100300506032b657004220420") + seed
    pem = "-----BEGIN PRIVATE KEY-----\n" + base64.b64encode(der).decode() + "\n-----END PRIVATE KEY-----\n"
    return load_private_key_text(pem)


def test_key_hash_signature_line_and_verifier_key_match_the_go_implementation() -> None:
    key = _go_key()
    assert key_hash("PeterNeumann", key.public_key()).hex() == "c74f20a3"
    assert verifier_key("PeterNeumann", key.public_key()) == GO_VKEY
    line = NoteSignature(
        "PeterNeumann", key_hash("PeterNeumann", key.public_key()), sign_bytes(key, GO_TEXT.encode())
    )
    assert line.line() == GO_SIG_LINE


def test_a_signed_checkpoint_round_trips_and_verifies() -> None:
    key = generate_keypair()
    checkpoint = sign_checkpoint(Checkpoint("sandrun.dev/audit/r1", 41, ROOT), key, "ci")
    text = str(checkpoint)
    root_b64 = base64.b64encode(bytes.fromhex(ROOT)).decode()
    assert text.startswith(f"sandrun.dev/audit/r1\n41\n{root_b64}\n\n\u2014 ci ")
    assert parse_checkpoint(text) == checkpoint
    verdict = verify_signatures(parse_checkpoint(text), [generate_keypair().public_key(), key.public_key()])
    assert (verdict.verified, verdict.bad, verdict.unknown) == (("ci",), (), ())
    assert verify_signatures(checkpoint, [generate_keypair().public_key()]).unknown == ("ci",)
    tampered = parse_checkpoint(text.replace("\n41\n", "\n42\n"))
    assert verify_signatures(tampered, [key.public_key()]).bad == ("ci",)
    unsigned = Checkpoint("o", 0, ROOT)
    assert parse_checkpoint(str(unsigned)) == unsigned and str(unsigned).count("\n") == 3


@pytest.mark.parametrize(
    "text",
    [
        "o\n1\n",  # no root
        "o\n01\n" + base64.b64encode(bytes(32)).decode() + "\n",  # leading zero
        "o\n1\n" + base64.b64encode(bytes(31)).decode() + "\n",  # short root
        "o\n1\n" + base64.b64encode(bytes(32)).decode(),  # no final newline
        "o\n1\n" + base64.b64encode(bytes(32)).decode() + "\n\n",  # blank line, no signature
        "o\n1\n" + base64.b64encode(bytes(32)).decode() + "\n\n- ci AAAA\n",  # not an em dash
        "o\n1\n" + base64.b64encode(bytes(32)).decode() + "\n\n\u2014 ci AAAA\n",  # short signature
        "o o\n1\n" + base64.b64encode(bytes(32)).decode() + "\n",  # space in origin
        "o\t\n1\n" + base64.b64encode(bytes(32)).decode() + "\n",  # control character
    ],
)
def test_malformed_notes_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_checkpoint(text)


def test_key_names_follow_signed_note_rules() -> None:
    with pytest.raises(ValueError):
        sign_checkpoint(Checkpoint("o", 1, ROOT), generate_keypair(), "a+b")
