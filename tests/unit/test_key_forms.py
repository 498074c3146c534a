"""Keys and digests in one canonical form: weak keys, PEM shapes, duplicated key material, case.

Each refusal is pinned by its rule id; the weak-key tests also show, with cryptography itself, the
forgery such a key would allow if it were accepted.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from runner import signing
from runner.api import compile_manifests
from runner.audit import AuditLog, verify_log
from runner.canonical import canonical_digest
from runner.errors import InputError, PolicyDenied
from runner.plan import InputFile, PolicyRef

REPO = Path(__file__).resolve().parents[2]
CASES = REPO / "tests" / "cases"
SHARED_POLICY = (CASES / "_shared" / "policy.yaml").read_text(encoding="utf-8")
EXAMPLES_2026 = "u0ArpydXjVcTF/PGplvPldoDy4g7sM1CHn/qP1UbbLQ="
TODAY = dt.date(2026, 11, 21)

#: The blocklist's y coordinates with either sign bit: the 14 weak encodings (each shown weak below).
WEAK_KEYS = sorted(y[:31] + bytes([y[31] | sign]) for y in signing._SMALL_ORDER_Y for sign in (0, 0x80))
IDENTITY = bytes([1]) + bytes(31)
#: R = the identity point, S = 0: valid under a small-order key A whenever [k]A is the identity.
FIXED_SIGNATURE = IDENTITY + bytes(32)
STATEMENTS = [signing.module_statement(hashlib.sha256(b"%d" % i).hexdigest()) for i in range(200)]

#: A test-only secp112r1 key pair (made with openssl; not a secret): a curve cryptography lacks.
P112_PUBLIC = """-----BEGIN PUBLIC KEY-----
MDIwEAYHKoZIzj0CAQYFK4EEAAYDHgAE0WewwlVSrmqdXQszOQo6Ua/0cOFs0xkc
jLH65A==
-----END PUBLIC KEY-----
"""
P112_PRIVATE = """-----BEGIN PRIVATE KEY-----
ME4CAQAwEAYHKoZIzj0CAQYFK4EEAAYENzA1AgEBBA5fBYkwHxENSODuin/oNqEg
Ax4ABLjZZ9Qcy+6+Q2voYpoqGZvbH3e185/J3DFuatg=
-----END PRIVATE KEY-----
"""


def _pem(key: Ed25519PublicKey) -> str:
    return signing.public_key_pem(key)


def _private_pem() -> str:
    return signing.private_key_pem(signing.generate_keypair()).decode()


def _refusal(text: str) -> str | None:
    with pytest.raises(signing.KeyFileError) as caught:
        signing.parse_public_key(text)
    return caught.value.rule_id


# --- weak keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", WEAK_KEYS, ids=lambda raw: raw.hex()[:8] + ("-neg" if raw[31] & 0x80 else ""))
def test_every_small_order_encoding_is_weak_under_cryptography_and_refused(raw: bytes) -> None:
    # (1) the forgery: cryptography accepts the key, and one fixed signature verifies many modules
    accepted = Ed25519PublicKey.from_public_bytes(raw)
    forged = [s for s in STATEMENTS if signing.verify_bytes(accepted, s, FIXED_SIGNATURE)]
    assert len(forged) >= 2
    # (2) Sandrun refuses the key, in base64 and in PEM
    assert _refusal(base64.b64encode(raw).decode()) == "key.small-order"
    assert _refusal(_pem(accepted)) == "key.small-order"


def test_the_blocklist_is_the_14_encodings_of_the_8_small_order_points() -> None:
    assert len(set(WEAK_KEYS)) == 14 and IDENTITY in WEAK_KEYS


def test_identity_key_would_verify_every_module_with_one_signature() -> None:
    identity = Ed25519PublicKey.from_public_bytes(IDENTITY)
    signature = base64.b64encode(FIXED_SIGNATURE).decode()
    one, two = hashlib.sha256(b"one").hexdigest(), hashlib.sha256(b"two").hexdigest()
    assert signing.verify_module_digest(identity, one, signature)
    assert signing.verify_module_digest(identity, two, signature)


def test_non_canonical_encoding_is_refused() -> None:
    # y = p + 2 (not reduced): not small order, but a second encoding of a point
    raw = (2**255 - 19 + 2).to_bytes(32, "little")
    assert _refusal(base64.b64encode(raw).decode()) == "key.non-canonical"


def test_ordinary_keys_are_accepted_in_both_forms() -> None:
    key = signing.generate_keypair().public_key()
    raw = signing.public_key_raw(key)
    assert signing.public_key_raw(signing.parse_public_key(signing.public_key_b64(key))) == raw
    assert signing.public_key_raw(signing.parse_public_key(_pem(key))) == raw
    assert signing.public_key_raw(signing.parse_public_key("\n  " + _pem(key) + "\n\n")) == raw


# --- PEM shape and key types -------------------------------------------------------------------


def test_two_block_public_pem_is_refused_whichever_key_comes_first() -> None:
    a, b = (signing.generate_keypair().public_key() for _ in range(2))
    # cryptography alone reads the first block and ignores the second
    first = serialization.load_pem_public_key((_pem(a) + _pem(b)).encode())
    assert signing.public_key_raw(first) == signing.public_key_raw(a)  # type: ignore[arg-type]
    assert _refusal(_pem(a) + _pem(b)) == "key.pem-shape"


@pytest.mark.parametrize(
    "extra",
    ["trailing text\n", "-----END PUBLIC KEY-----\n", "AAAA\n", "# comment\n"],
)
def test_public_pem_with_trailing_data_is_refused(extra: str) -> None:
    pem = _pem(signing.generate_keypair().public_key())
    serialization.load_pem_public_key((pem + extra).encode())  # cryptography alone takes it
    assert _refusal(pem + extra) == "key.pem-shape"
    assert _refusal(extra + pem) == "key.pem-shape"


def test_private_pem_with_an_extra_block_or_trailing_data_is_refused() -> None:
    pem = _private_pem()
    assert signing.load_private_key_text(pem) is not None
    for bad in (pem + _private_pem(), pem + "tail\n", "head\n" + pem):
        with pytest.raises(signing.KeyFileError) as caught:
            signing.load_private_key_text(bad)
        assert caught.value.rule_id == "key.pem-shape"


@pytest.mark.parametrize(
    ("text", "loader"),
    [
        (P112_PUBLIC, signing.parse_public_key),
        (P112_PRIVATE, signing.load_private_key_text),
        (P112_PUBLIC.replace("PUBLIC KEY", "RSA PUBLIC KEY"), signing.parse_public_key),
    ],
)
def test_pem_of_an_unsupported_type_or_curve_is_a_clean_refusal(text: str, loader: object) -> None:
    with pytest.raises(signing.KeyFileError) as caught:
        loader(text)  # type: ignore[operator]
    assert caught.value.rule_id == "key.unsupported"


def test_a_supported_key_of_another_type_is_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert _refusal(pem.decode()) == "key.unsupported"


# --- policies ----------------------------------------------------------------------------------


def _compile_under(tmp_path: Path, policy_text: str, manifest: str = "valid") -> object:
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text, encoding="utf-8")
    return compile_manifests([CASES / manifest / "manifest.yaml"], policy, root=CASES, today=TODAY)


def _with_keys(*lines: str) -> str:
    head, tail = SHARED_POLICY.split("  revoked:\n", 1)
    return head + "".join(f"    - {line}\n" for line in lines) + "  revoked:\n" + tail


@pytest.mark.parametrize(
    "alias",
    [EXAMPLES_2026, _pem(signing.parse_public_key(EXAMPLES_2026)).replace("\n", "\\n")],
    ids=["base64", "pem"],
)
def test_same_key_material_under_two_ids_is_refused(tmp_path: Path, alias: str) -> None:
    policy = _with_keys(f'{{id: alias-of-examples, public_key: "{alias}", not_after: 2030-01-01}}')
    with pytest.raises(InputError) as caught:
        _compile_under(tmp_path, policy)
    [violation] = caught.value.violations
    assert violation.rule_id == "key.duplicate-material"
    assert violation.location is not None
    assert violation.location.pointer == "/signatures/trusted_keys/3/public_key"
    assert violation.location.line == 11


def test_revoking_one_id_cannot_leave_its_twin_trusted(tmp_path: Path) -> None:
    """The attack the refusal stops: revoked-2025's key re-listed under a fresh id."""
    twin = "9MNRLAg5hAeZfm9DuMZcBOMFAtbWnn4DQIMGmdyTdZA="
    with pytest.raises(InputError) as caught:
        _compile_under(tmp_path, _with_keys(f"{{id: fresh-2026, public_key: {twin}}}"))
    assert [v.rule_id for v in caught.value.violations] == ["key.duplicate-material"]


def test_weak_key_in_a_policy_is_refused_with_its_line(tmp_path: Path) -> None:
    weak = base64.b64encode(IDENTITY).decode()
    with pytest.raises(InputError) as caught:
        _compile_under(tmp_path, _with_keys(f"{{id: weak, public_key: {weak}}}"))
    [violation] = caught.value.violations
    assert violation.rule_id == "key.small-order"
    assert violation.location is not None and violation.location.line == 11


def test_two_block_pem_in_a_policy_is_refused(tmp_path: Path) -> None:
    a, b = (_pem(signing.generate_keypair().public_key()).replace("\n", "\\n") for _ in range(2))
    with pytest.raises(InputError) as caught:
        _compile_under(tmp_path, _with_keys(f'{{id: two, public_key: "{a}{b}"}}'))
    assert [v.rule_id for v in caught.value.violations] == ["key.pem-shape"]


def test_upper_case_revoked_digest_revokes(tmp_path: Path) -> None:
    digest = "8fdc465e8de57d46606a6e8f6b29beef6231beb46a63578d47703ee5cc94c068"
    policy = SHARED_POLICY.replace(f"    - {digest}", f"    - {digest.upper()}")
    assert digest.upper() in policy
    with pytest.raises(PolicyDenied) as caught:
        _compile_under(tmp_path, policy, manifest="digest-revoked")
    assert [v.rule_id for v in caught.value.violations] == ["tool.revoked"]


# --- digests elsewhere -------------------------------------------------------------------------


def test_canonical_digest_lowers_hex_and_rejects_the_rest() -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    assert canonical_digest(digest.upper()) == digest
    assert canonical_digest(digest) == digest
    for bad in (digest[:-1], digest + "0", "g" * 64, digest + "\n", "release-2026"):
        assert canonical_digest(bad) is None


def test_plans_hold_lower_case_digests_only() -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    InputFile(path="m.yaml", sha256=digest)
    with pytest.raises(ValueError):
        InputFile(path="m.yaml", sha256=digest.upper())
    with pytest.raises(ValueError):
        PolicyRef(name="p", path="p.yaml", sha256=digest.upper(), git_commit=None)


def test_expect_head_in_upper_case_names_the_same_head(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path, run_id="20261121T180000Z-00000000") as log:
        log.append("run.started", {"sandrun": "0.1.0", "sources": []})
        log.seal(None, "test")
    path = tmp_path / "audit.jsonl"
    head = verify_log(path).head
    assert head is not None
    assert verify_log(path, expect_head=head.upper()).status == "intact"
    assert verify_log(path, expect_head=("ab" * 32).upper()).status != "intact"


def test_runner_signing_key_with_two_blocks_is_refused(tmp_path: Path) -> None:
    from runner.audit.checkpoint import SIGNING_KEY_ENV, load_runner_key

    two = _private_pem() + _private_pem()
    (tmp_path / "runner.key").write_text(two)
    for path, env in ((tmp_path / "runner.key", {}), (None, {SIGNING_KEY_ENV: two})):
        with pytest.raises(InputError) as caught:
            load_runner_key(path, env)
        assert caught.value.rule_id == "key.pem-shape"


def test_keys_generate_refuses_an_id_that_reads_as_a_digest(tmp_path: Path) -> None:
    with pytest.raises(signing.KeyFileError):
        signing.write_keypair(hashlib.sha256(b"x").hexdigest(), tmp_path)
    assert signing.write_keypair(hashlib.sha256(b"x").hexdigest()[:63], tmp_path).public_path.exists()
