"""Refused keys through the CLI: one line with the rule id, exit 2, never a traceback.

Covers every place a key is read: `verify --pub`, `audit verify --pub`, `sign --key`,
`run --signing-key` (through the same loader) and a policy's trusted_keys under `check`.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from cli_process import REPO, sandrun
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from runner import signing

CASES = REPO / "tests" / "cases"
IDENTITY = bytes([1]) + bytes(31)
FORGED_SIG = base64.b64encode(IDENTITY + bytes(32)).decode()  # R = identity, S = 0
P112_PUBLIC = (
    "-----BEGIN PUBLIC KEY-----\n"
    "MDIwEAYHKoZIzj0CAQYFK4EEAAYDHgAE0WewwlVSrmqdXQszOQo6Ua/0cOFs0xkc\n"
    "jLH65A==\n"
    "-----END PUBLIC KEY-----\n"
)
P112_PRIVATE = (  # test-only (openssl, secp112r1), not a secret
    "-----BEGIN PRIVATE KEY-----\n"
    "ME4CAQAwEAYHKoZIzj0CAQYFK4EEAAYENzA1AgEBBA5fBYkwHxENSODuin/oNqEg\n"
    "Ax4ABLjZZ9Qcy+6+Q2voYpoqGZvbH3e185/J3DFuatg=\n"
    "-----END PRIVATE KEY-----\n"
)


def _public_pem() -> str:
    return signing.public_key_pem(signing.generate_keypair().public_key())


def _private_pem() -> str:
    return signing.private_key_pem(signing.generate_keypair()).decode()


def _one_line(result: object, rule: str) -> None:
    stderr: str = result.stderr  # type: ignore[attr-defined]
    assert result.returncode == 2, stderr  # type: ignore[attr-defined]
    assert "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1 and f"[{rule}]" in stderr, stderr


@pytest.fixture
def module(tmp_path: Path) -> Path:
    path = tmp_path / "tool.wasm"
    path.write_bytes(b"\0asm\1\0\0\0")
    return path


def test_weak_pub_is_refused_although_the_forged_signature_would_verify(tmp_path: Path, module: Path) -> None:
    digest = hashlib.sha256(module.read_bytes()).hexdigest()
    other = hashlib.sha256(b"any other module").hexdigest()
    weak = Ed25519PublicKey.from_public_bytes(IDENTITY)  # what cryptography alone would accept
    assert signing.verify_module_digest(weak, digest, FORGED_SIG)
    assert signing.verify_module_digest(weak, other, FORGED_SIG)
    pub = tmp_path / "weak.pub"
    pub.write_text(base64.b64encode(IDENTITY).decode() + "\n")
    _one_line(sandrun("verify", str(module), "--sig", FORGED_SIG, "--pub", str(pub)), "key.small-order")


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        (_public_pem() + _public_pem(), "key.pem-shape"),
        (_public_pem() + "trailing data\n", "key.pem-shape"),
        (P112_PUBLIC, "key.unsupported"),
        (base64.b64encode(IDENTITY).decode(), "key.small-order"),
    ],
    ids=["two-blocks", "trailing", "secp112r1", "small-order"],
)
def test_bad_pub_files_for_verify_and_audit_verify(
    tmp_path: Path, module: Path, text: str, rule: str
) -> None:
    pub = tmp_path / "key.pub"
    pub.write_text(text)
    _one_line(sandrun("verify", str(module), "--sig", FORGED_SIG, "--pub", str(pub)), rule)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "audit.jsonl").write_text("")
    _one_line(sandrun("audit", "verify", str(tmp_path / "out"), "--pub", str(pub)), rule)


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        (_private_pem() + _private_pem(), "key.pem-shape"),
        (_private_pem() + "trailing data\n", "key.pem-shape"),
        (P112_PRIVATE, "key.unsupported"),
        (P112_PUBLIC, "key.unsupported"),  # a public key where the private one belongs
    ],
    ids=["two-blocks", "trailing", "secp112r1", "public-as-private"],
)
def test_bad_private_keys_for_sign(tmp_path: Path, module: Path, text: str, rule: str) -> None:
    key = tmp_path / "bad.key"
    key.write_text(text)
    _one_line(sandrun("sign", str(module), "--key", str(key)), rule)


def test_policy_with_one_key_under_two_ids_fails_check(tmp_path: Path) -> None:
    shared = (CASES / "_shared" / "policy.yaml").read_text(encoding="utf-8")
    twin = "    - {id: fresh-2026, public_key: 9MNRLAg5hAeZfm9DuMZcBOMFAtbWnn4DQIMGmdyTdZA=}\n"
    policy = tmp_path / "policy.yaml"
    policy.write_text(shared.replace("  revoked:\n", twin + "  revoked:\n"))
    result = sandrun(
        "check", str(CASES / "valid" / "manifest.yaml"), "--policy", str(policy), "--root", str(CASES)
    )
    _one_line(result, "key.duplicate-material")
    assert f"{policy}:11:" in result.stderr


@pytest.mark.parametrize(
    ("old", "new", "line"),
    [
        # revoked in another case than trusted: exact comparison would leave the key working
        ("    - revoked-2025\n", "    - Revoked-2025\n", 12),
        ("    - revoked-2025\n", "    - REVOKED-2025\n", 12),
        # two trusted ids a reviewer cannot tell apart
        (
            "  revoked:\n",
            "    - {id: Examples-2026, public_key: NEW}\n  revoked:\n",
            11,
        ),
    ],
    ids=["revoked-capitalised", "revoked-upper", "trusted-twin-in-case"],
)
def test_a_key_id_differing_from_a_trusted_one_only_in_case_fails_check(
    tmp_path: Path, old: str, new: str, line: int
) -> None:
    shared = (CASES / "_shared" / "policy.yaml").read_text(encoding="utf-8")
    assert old in shared
    policy = tmp_path / "policy.yaml"
    fresh = base64.b64encode(signing.public_key_raw(signing.generate_keypair().public_key())).decode()
    policy.write_text(shared.replace(old, new.replace("NEW", fresh)))
    manifest = CASES / "signature-revoked-key" / "manifest.yaml"  # signed by revoked-2025
    result = sandrun("check", str(manifest), "--policy", str(policy), "--root", str(CASES))
    _one_line(result, "policy.key-case")
    assert f"{policy}:{line}:" in result.stderr
