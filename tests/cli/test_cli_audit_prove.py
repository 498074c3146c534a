"""`sandrun audit prove`: inclusion and consistency proofs over a real, verified log, checked offline
by the independent verifier of tests/unit/test_audit_merkle.py."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import sys
from pathlib import Path

from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from test_cli_attest import ran  # noqa: F401  (the module-scoped fixture: a signed run)

from runner.canonical import canonical_json
from runner.cli import cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_audit_merkle import _independent_consistency, _root_from_path  # noqa: E402

from runner.audit.merkle import leaf_hash  # noqa: E402


def _invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def _two_runs(project: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The fixture's log, its first checkpoint kept aside, then a second run appended to it."""
    out = tmp_path / "out"
    shutil.copytree(project / "out", out)
    old = tmp_path / "old-checkpoint.txt"
    shutil.copyfile(out / "checkpoint.txt", old)
    code, stdout, stderr = _invoke(
        "run", str(project / "manifests"), "--policy", str(project / "policy.yaml"), "--root", str(project),
        "--out", str(out), "--signing-key", str(project / "keys" / "runner.key"),
    )  # fmt: skip
    assert code == 0, stdout + stderr
    return out, old


def _signed_root(note: str, project: Path) -> tuple[int, bytes]:
    """The size and root a checkpoint signs, its Ed25519 signed-note signature checked here with
    `cryptography` directly (key ID = SHA-256(name || LF || 0x01 || key)[:4])."""
    public = base64.b64decode((project / "keys" / "runner.pub").read_text())
    body, _, signature = note.partition("\n\n")
    name, encoded = signature.removeprefix("\u2014 ").split()
    raw = base64.b64decode(encoded)
    assert raw[:4] == hashlib.sha256(name.encode() + b"\n\x01" + public).digest()[:4]
    Ed25519PublicKey.from_public_bytes(public).verify(raw[4:], (body + "\n").encode())
    _, size, root = body.split("\n")[:3]
    return int(size), base64.b64decode(root)


def test_inclusion_proof_of_each_record_verifies_offline(ran: Path, tmp_path: Path) -> None:  # noqa: F811
    out, _ = _two_runs(ran, tmp_path)
    lines = (out / "audit.jsonl").read_bytes().splitlines()
    size = len(lines) - 1  # the last seal's checkpoint covers every record before it
    for seq in (0, len(lines) // 2, size - 1):
        code, stdout, stderr = _invoke("audit", "prove", str(out), "--record", str(seq))
        assert code == 0, stderr
        proof = json.loads(stdout)
        assert proof["tree_size"] == size
        leaf = leaf_hash(canonical_json(json.loads(lines[seq])))
        assert proof["leaf_hash"] == leaf.hex()
        path = [bytes.fromhex(p) for p in proof["proof"]]
        assert _root_from_path(seq, size, leaf, path) == bytes.fromhex(proof["root"])
        assert _signed_root(proof["checkpoint"], ran) == (size, bytes.fromhex(proof["root"]))
        assert proof["checkpoint"] == json.loads(lines[-1])["data"]["checkpoint"]
    code, _, err = _invoke("audit", "prove", str(out), "--record", str(size))
    assert code == 2 and "[audit.no-record]" in err  # the seal itself: the next checkpoint's


def test_consistency_from_an_earlier_checkpoint_verifies_offline(ran: Path, tmp_path: Path) -> None:  # noqa: F811
    out, old = _two_runs(ran, tmp_path)
    code, stdout, stderr = _invoke(
        "audit", "prove", str(out), "--consistency", str(old), "--pub", str(ran / "keys" / "runner.pub")
    )
    assert code == 0, stderr
    proof = json.loads(stdout)
    assert proof["old_size"] < proof["tree_size"]
    assert _signed_root(old.read_text(), ran) == (proof["old_size"], bytes.fromhex(proof["old_root"]))
    assert _signed_root(proof["checkpoint"], ran) == (proof["tree_size"], bytes.fromhex(proof["root"]))
    assert _independent_consistency(
        proof["old_size"],
        proof["tree_size"],
        bytes.fromhex(proof["old_root"]),
        bytes.fromhex(proof["root"]),
        [bytes.fromhex(p) for p in proof["proof"]],
    )


def test_a_checkpoint_of_another_history_is_refused(ran: Path, tmp_path: Path) -> None:  # noqa: F811
    out, old = _two_runs(ran, tmp_path)
    text = old.read_text().split("\n")
    text[2] = "A" * 43 + "="  # another head for the same size
    forged = tmp_path / "forged.txt"
    forged.write_text("\n".join(text[:3]) + "\n")
    code, _, err = _invoke("audit", "prove", str(out), "--consistency", str(forged))
    assert code == 4 and "[audit.not-a-prefix]" in err
    code, _, err = _invoke("audit", "prove", str(out), "--consistency", str(old), "--pub", str(forged))
    assert code == 2


def test_a_checkpoint_with_the_right_head_but_another_root_is_refused(ran: Path, tmp_path: Path) -> None:  # noqa: F811
    out, old = _two_runs(ran, tmp_path)
    text = old.read_text().split("\n")
    text[2] = "A" * 43 + "="  # the chain-head line still names this log's record: only the root lies
    forged = tmp_path / "forged.txt"
    forged.write_text("\n".join(text[:5]) + "\n")
    code, _, err = _invoke("audit", "prove", str(out), "--consistency", str(forged))
    assert code == 4 and "[audit.not-a-prefix]" in err


def test_a_tampered_log_gives_no_proof(ran: Path, tmp_path: Path) -> None:  # noqa: F811
    out, _ = _two_runs(ran, tmp_path)
    log = out / "audit.jsonl"
    log.write_text(log.read_text().replace('"status":"passed"', '"status":"failed"', 1))
    code, stdout, err = _invoke("audit", "prove", str(out), "--record", "0")
    assert code == 4 and stdout == ""


def test_flags_and_range(ran: Path) -> None:  # noqa: F811
    assert _invoke("audit", "prove", str(ran / "out"))[0] == 2
    code, _, err = _invoke("audit", "prove", str(ran / "out"), "--record", "100000")
    assert code == 2 and "[audit.no-record]" in err
