"""Tampering with a real log: every edit, deletion, swap, insertion and rewrite is found and named."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from runner.audit import AuditLog, verify_log
from runner.audit.checkpoint import Checkpoint, parse_checkpoint, sign_checkpoint
from runner.audit.merkle import CompactRange, leaf_hash, root
from runner.audit.record import encode_record, parse_line
from runner.errors import EXIT_AUDIT_FAILED, EXIT_OK, InputError
from runner.signing import PrivateKey, generate_keypair

RUNS = 3
KEY = generate_keypair()
OTHER_KEY = generate_keypair()


def _clock() -> Any:
    ticks = itertools.count()
    start = int(dt.datetime(2026, 11, 21, 18, 0, tzinfo=dt.timezone.utc).timestamp()) * 10**9
    return lambda: start + next(ticks) * 7_000_000  # 7 ms apart, in nanoseconds


def _job(i: int, status: str = "passed") -> dict[str, Any]:
    return {
        "manifest": "manifests/docs.yaml",
        "name": f"job-{i}",
        "tool": "mdlint",
        "module_sha256": hashlib.sha256(b"mdlint").hexdigest(),
        "status": status,
        "exit_code": 0 if status == "passed" else 1,
        "trap": None,
        "fuel_used": 1234 + i,
        "memory_peak": 65536,
        "wall_ms": 3 + i,
        "stdout_sha256": hashlib.sha256(b"").hexdigest(),
        "stderr_sha256": hashlib.sha256(b"").hexdigest(),
        "stdout_truncated": False,
        "stderr_truncated": False,
        "reason": None if status == "passed" else "exit code 1",
        "index": i,
    }


def write_run(out: Path, run: int, key: PrivateKey | None = KEY, *, seal: bool = True) -> str | None:
    """One realistic run of 10 records (the seal included) through AuditLog (11 after an unsealed
    run: ``run.continued`` first)."""
    run_id = f"20261121T18000{run}Z-0000000{run}"
    with AuditLog.open(out, run_id=run_id, clock=_clock(), continue_unsealed=True) as log:
        log.append("run.started", {"sandrun": "0.1.0", "sources": ["manifests/"]})
        log.append(
            "plan.compiled",
            {
                "plan_sha256": hashlib.sha256(b"plan%d" % run).hexdigest(),
                "policy": {"name": "ci", "sha256": "ab" * 32, "git_commit": None},
            },
        )
        log.append(
            "tool.registered",
            {
                "manifest": "manifests/docs.yaml",
                "name": "mdlint",
                "version": f"1.{run}",
                "module_sha256": hashlib.sha256(b"mdlint").hexdigest(),
                "signer": "rel",
                "signature_verified": True,
            },
        )
        log.append(
            "tool.deployed", {"module_sha256": hashlib.sha256(b"mdlint").hexdigest(), "from": "compiled"}
        )
        for i in range(2):
            log.append("job.started", {"job": f"manifests/docs.yaml/job-{i}", "index": i})
            log.append("job.finished", _job(i, "passed" if i == 0 else "failed"))
        log.append("tool.revoked", {"tool": "old", "reason": "digest revoked"})
        return str(log.seal(key, "ci-runner")) if seal else None


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    for run in range(RUNS):
        write_run(tmp_path, run)
    return tmp_path


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def _write(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def _problem(path: Path, **kwargs: Any) -> tuple[str, int | None, str]:
    report = verify_log(path, **kwargs)
    assert len(report.problems) == 1, report.problems
    problem = report.problems[0]
    assert problem.location is not None
    return problem.rule_id, problem.location.line, problem.location.pointer


def _flip(line: bytes, at: int) -> bytes:
    old = line[at : at + 1]
    new = (
        b"1" if old == b"0" else b"0" if old.isdigit() or old in b"abcdef" else b"x" if old != b"x" else b"y"
    )
    return line[:at] + new + line[at + 1 :]


def test_an_untouched_log_is_intact_with_and_without_keys(log_dir: Path) -> None:
    path = log_dir / "audit.jsonl"
    for kwargs in ({}, {"public_keys": [KEY.public_key()]}, {"strict": True}):
        report = verify_log(path, **kwargs)  # type: ignore[arg-type]
        assert (report.status, report.ok, report.sealed, report.problems) == ("intact", True, True, [])
        assert report.records == 10 * RUNS and report.exit_code == EXIT_OK
        assert [r.records for r in report.runs] == [10] * RUNS
        assert [r.first_line for r in report.runs] == [1, 11, 21]
    assert verify_log(path, public_keys=[KEY.public_key()]).runs[0].verified_signers == ("ci-runner",)


def test_every_one_byte_edit_of_every_record_is_named_edited(log_dir: Path) -> None:
    path = log_dir / "audit.jsonl"
    original = _lines(path)
    for index, line in enumerate(original):
        cut = line.rfind(b',"hash":"')
        positions = {
            "data": cut - 3,  # inside the data object, before its closing brace
            "hash": cut + len(b',"hash":"') + 10,
            "prev": line.index(b'"prev":"') + len(b'"prev":"') + 5,
            "seq": line.index(b'"seq":') + len(b'"seq":'),
        }
        for field, at in positions.items():
            damaged = list(original)
            damaged[index] = _flip(line, at)
            assert damaged[index] != line
            _write(path, damaged)
            rule, number, _ = _problem(path)
            assert (rule, number) == ("audit.edited", index + 1), (field, index)
    _write(path, original)


def test_any_single_byte_change_anywhere_is_detected(log_dir: Path) -> None:
    path = log_dir / "audit.jsonl"
    original = _lines(path)
    line = original[13]
    for at in range(len(line)):
        damaged = list(original)
        damaged[13] = _flip(line, at)
        _write(path, damaged)
        rule, number, _ = _problem(path)
        assert (rule, number) == ("audit.edited", 14), at


def test_deleting_any_record_is_named_removed_or_unsealed(log_dir: Path) -> None:
    path = log_dir / "audit.jsonl"
    original = _lines(path)
    for index in range(len(original)):
        _write(path, original[:index] + original[index + 1 :])
        report = verify_log(path)
        if index == len(original) - 1:  # the final seal: indistinguishable from an interruption
            assert report.status == "unsealed" and report.problems[0].rule_id == "audit.unsealed"
            assert f"interrupted after seq {index - 1}" in report.problems[0].message
        else:
            assert _problem(path)[:2] == ("audit.removed", index + 1), index
            assert report.status == "damaged" and report.exit_code == EXIT_AUDIT_FAILED


def test_swapping_any_record_with_its_neighbour_is_named_reordered(log_dir: Path) -> None:
    path = log_dir / "audit.jsonl"
    original = _lines(path)
    for index in range(len(original) - 1):
        damaged = list(original)
        damaged[index], damaged[index + 1] = damaged[index + 1], damaged[index]
        _write(path, damaged)
        assert _problem(path)[:2] == ("audit.reordered", index + 1), index


def _forge(previous: bytes, kind: str, run: str | None = None, data: dict[str, Any] | None = None) -> bytes:
    head = parse_line(previous)
    _, line = encode_record(
        seq=head.seq + 1,
        ts="2026-11-21T19:00:00.000Z",
        kind=kind,
        run=run or head.run,
        data=data or {"forged": True},
        prev=head.hash,
    )
    return line[:-1]


def test_a_well_hashed_record_inserted_anywhere_is_named_inserted(log_dir: Path) -> None:
    path = log_dir / "audit.jsonl"
    original = _lines(path)
    for index in range(len(original)):
        forged = _forge(original[index], "job.finished")
        _write(path, original[: index + 1] + [forged] + original[index + 1 :])
        assert _problem(path)[:2] == ("audit.inserted", index + 2), index


def test_a_duplicated_line_is_named_inserted(log_dir: Path) -> None:
    path = log_dir / "audit.jsonl"
    original = _lines(path)
    _write(path, original[:15] + [original[3]] + original[15:])
    assert _problem(path)[:2] == ("audit.inserted", 16)
    _write(path, original[:15] + [b""] + original[15:])
    assert _problem(path)[:2] == ("audit.inserted", 16)


def test_appending_after_the_final_seal(log_dir: Path) -> None:
    path = log_dir / "audit.jsonl"
    original = _lines(path)
    # same run: nothing may follow a seal
    _write(path, original + [_forge(original[-1], "job.finished")])
    assert _problem(path)[:2] == ("audit.inserted", len(original) + 1)
    # a new, unsealed "run": not intact
    _write(path, original + [_forge(original[-1], "run.started", run="forged-run")])
    report = verify_log(path)
    assert report.status == "unsealed" and report.exit_code == EXIT_AUDIT_FAILED
    # a new run with a seal the attacker signed: unknown signer; unsigned: named so
    started = _forge(original[-1], "run.started", run="forged-run")
    for key, rule in ((OTHER_KEY, "audit.unknown-signer"), (None, "audit.unsigned")):
        _write(path, original + [started])
        with AuditLog.open(path.parent, run_id="forged-run-2", continue_unsealed=True) as log:
            log.seal(key, "ci-runner")
        assert _problem(path, public_keys=[KEY.public_key()])[:2] == (rule, len(original) + 3)
        assert verify_log(path, public_keys=[KEY.public_key()]).status == "untrusted"


def _rechain(lines: list[bytes], start: int, edit: dict[str, Any], *, fix_notes: bool) -> list[bytes]:
    """The attacker: edit record ``start``'s data, then recompute every later hash and link."""
    out = list(lines[:start])
    prev = parse_line(lines[start - 1]).hash if start else "0" * 64
    for index in range(start, len(lines)):
        record = json.loads(lines[index])
        data = record["data"]
        if index == start:
            data.update(edit)
        if record["kind"] == "run.sealed":
            data["head"] = prev
            if fix_notes:  # the chain head and the Merkle root of the rewritten records before it
                note = parse_checkpoint(data["checkpoint"])
                body = note.body().splitlines()
                tree = CompactRange()
                for line in out:
                    tree.append(leaf_hash(line))
                merkle = tree.root
                data["tree"] = [node.hex() for node in tree.nodes]
                data["checkpoint"] = (
                    data["checkpoint"]
                    .replace(body[2], base64.b64encode(merkle).decode())
                    .replace(note.chain_head, prev)
                )
        _, line = encode_record(
            seq=record["seq"], ts=record["ts"], kind=record["kind"], run=record["run"], data=data, prev=prev
        )
        out.append(line[:-1])
        prev = parse_line(line[:-1]).hash
    return out


def test_an_edit_with_every_later_hash_recomputed_is_caught_by_the_seal(log_dir: Path) -> None:
    path = log_dir / "audit.jsonl"
    original = _lines(path)
    published = verify_log(path).runs[-1].checkpoint
    assert published is not None
    seals = [i for i, line in enumerate(original) if b'"kind":"run.sealed"' in line]
    for index in range(len(original)):
        if index in seals:
            continue
        first_seal = next(s for s in seals if s > index) + 1
        rewritten = _rechain(original, index, {"status": "forged"}, fix_notes=True)
        _write(path, rewritten)
        # the chain itself is consistent again: only the signature (or the published head) tells
        assert verify_log(path).status == "intact"
        assert _problem(path, public_keys=[KEY.public_key()])[:2] == ("audit.bad-seal-signature", first_seal)
        assert _problem(path, expect_head=published)[:2] == ("audit.head-mismatch", len(original) - 1)
        # an attacker who leaves the checkpoints alone is caught without any key
        _write(path, _rechain(original, index, {"status": "forged"}, fix_notes=False))
        assert _problem(path)[:2] == ("audit.seal-mismatch", first_seal)


def test_a_seal_by_an_unknown_key_is_named(log_dir: Path) -> None:
    path = log_dir / "audit.jsonl"
    assert _problem(path, public_keys=[OTHER_KEY.public_key()])[:2] == ("audit.unknown-signer", 10)


def test_expect_head_accepts_the_note_or_a_hash_and_detects_truncation(log_dir: Path) -> None:
    path = log_dir / "audit.jsonl"
    report = verify_log(path)
    note = report.runs[-1].checkpoint
    assert note is not None
    assert verify_log(path, expect_head=note, public_keys=[KEY.public_key()]).status == "intact"
    assert verify_log(path, expect_head=report.runs[0].checkpoint).status == "intact"  # an older anchor
    assert verify_log(path, expect_head=parse_checkpoint(note).chain_head).status == "intact"
    assert _problem(path, expect_head="ab" * 32)[0] == "audit.head-mismatch"
    original = _lines(path)
    _write(path, original[:-5])  # cut to a record boundary: looks merely unsealed without the anchor
    assert verify_log(path).status == "unsealed"
    assert _problem(path, expect_head=note)[:2] == ("audit.truncated", len(original) - 5)
    forged_note = note.replace(note.splitlines()[2], "A" * 43 + "=")
    _write(path, original)
    assert _problem(path, expect_head=forged_note, public_keys=[KEY.public_key()])[0] == "audit.head-mismatch"
    with pytest.raises(InputError) as caught:
        verify_log(path, expect_head="not a head")
    assert caught.value.rule_id == "input.expect-head"


def test_a_torn_last_line_is_never_accepted(log_dir: Path) -> None:
    path = log_dir / "audit.jsonl"
    original = path.read_bytes()
    for tail in (b'{"data":{"x', b"\x00" * 300, original.split(b"\n")[-2][:-1]):
        path.write_bytes(original + tail)
        assert _problem(path)[:2] == ("audit.torn-line", 31)
    path.write_bytes(original[:-1])  # only the final newline is missing
    assert _problem(path)[:2] == ("audit.torn-line", 30)


def test_an_interrupted_run_in_the_middle_is_listed_not_failed(tmp_path: Path) -> None:
    write_run(tmp_path, 0)
    write_run(tmp_path, 1, seal=False)
    assert (
        verify_log(tmp_path / "audit.jsonl")
        .problems[0]
        .message.startswith("unsealed: interrupted after seq 18")
    )
    write_run(tmp_path, 2)
    report = verify_log(tmp_path / "audit.jsonl", public_keys=[KEY.public_key()])
    assert report.status == "intact"
    assert [r.sealed for r in report.runs] == [True, False, True]


def test_an_empty_or_missing_log(tmp_path: Path) -> None:
    (tmp_path / "audit.jsonl").write_bytes(b"")
    report = verify_log(tmp_path / "audit.jsonl")
    assert (report.status, report.problems[0].rule_id) == ("unsealed", "audit.unsealed")
    with pytest.raises(InputError) as caught:
        verify_log(tmp_path / "missing.jsonl")
    assert caught.value.rule_id == "input.read"


def test_strict_mode_rejects_a_well_hashed_but_non_canonical_line(tmp_path: Path) -> None:
    body = (
        b'{"data":{"b":1, "a":2},"kind":"run.started","prev":"'
        + b"0" * 64
        + b'","run":"r1","seq":0,"ts":"2026-11-21T18:00:00.000Z"}'
    )
    digest = hashlib.sha256(body).hexdigest().encode()
    cut = body.index(b',"kind"')
    line = body[:cut] + b',"hash":"' + digest + b'"' + body[cut:]
    (tmp_path / "audit.jsonl").write_bytes(line + b"\n")
    assert verify_log(tmp_path / "audit.jsonl").ok  # integrity holds: every byte is hashed
    assert _problem(tmp_path / "audit.jsonl", strict=True)[:2] == ("audit.edited", 1)


def _legacy(lines: list[bytes], runs: int) -> list[bytes]:
    """What Sandrun wrote before checkpoints signed the Merkle root: the first ``runs`` seals'
    checkpoints with the chain head as their hash line and no chain-head line, signed by KEY."""
    out: list[bytes] = []
    prev = "0" * 64
    seals = 0
    for line in lines:
        record = json.loads(line)
        if record["kind"] == "run.sealed" and seals < runs:
            seals += 1
            note = parse_checkpoint(record["data"]["checkpoint"])
            old = Checkpoint(note.origin, note.size, prev, note.own_extensions)
            signed = sign_checkpoint(old, KEY, note.signatures[0].name)
            record["data"] |= {"checkpoint": signed.text, "head": prev}
            del record["data"]["tree"]
        _, encoded = encode_record(
            seq=record["seq"],
            ts=record["ts"],
            kind=record["kind"],
            run=record["run"],
            data=record["data"],
            prev=prev,
        )
        out.append(encoded[:-1])
        prev = parse_line(encoded[:-1]).hash
    return out


def test_an_old_log_whose_checkpoints_sign_the_chain_head_still_verifies(log_dir: Path) -> None:
    path = log_dir / "audit.jsonl"
    _write(path, _legacy(_lines(path), RUNS))
    report = verify_log(path, public_keys=[KEY.public_key()])
    assert report.status == "intact" and report.seals_verified == RUNS
    note = parse_checkpoint(report.runs[-1].checkpoint or "")
    assert note.merkle_root is None and note.chain_head == note.root_hash
    assert verify_log(path, expect_head=report.runs[-1].checkpoint).status == "intact"
    write_run(log_dir, RUNS)  # the next run of today's Sandrun signs the root over old and new
    report = verify_log(path, public_keys=[KEY.public_key()])
    note = parse_checkpoint(report.runs[-1].checkpoint or "")
    assert (
        report.status == "intact"
        and note.merkle_root == root([leaf_hash(x) for x in _lines(path)[:-1]]).hex()
    )


def test_a_seal_without_a_root_after_one_with_is_refused(log_dir: Path) -> None:
    path = log_dir / "audit.jsonl"
    lines = _lines(path)
    # the key holder re-signs the last seal the old way: a downgrade a verifier must not accept
    seals = [i for i, line in enumerate(lines) if b'"kind":"run.sealed"' in line]
    last = json.loads(lines[seals[-1]])
    note = parse_checkpoint(last["data"]["checkpoint"])
    legacy = Checkpoint(note.origin, note.size, note.chain_head, note.own_extensions)
    old = sign_checkpoint(legacy, KEY, note.signatures[0].name)
    last["data"]["checkpoint"] = old.text
    _, encoded = encode_record(
        seq=last["seq"],
        ts=last["ts"],
        kind=last["kind"],
        run=last["run"],
        data=last["data"],
        prev=last["prev"],
    )
    _write(path, lines[: seals[-1]] + [encoded[:-1]])
    assert _problem(path)[:2] == ("audit.seal-mismatch", seals[-1] + 1)


def test_a_seal_or_published_checkpoint_with_a_wrong_root_is_refused(log_dir: Path) -> None:
    path = log_dir / "audit.jsonl"
    lines = _lines(path)
    seals = [i for i, line in enumerate(lines) if b'"kind":"run.sealed"' in line]
    last = json.loads(lines[seals[-1]])
    note = parse_checkpoint(last["data"]["checkpoint"])
    wrong = Checkpoint.of_tree(note.origin, note.size, "00" * 32, note.chain_head, note.own_extensions)
    last["data"]["checkpoint"] = sign_checkpoint(wrong, KEY, note.signatures[0].name).text
    _, encoded = encode_record(
        seq=last["seq"],
        ts=last["ts"],
        kind=last["kind"],
        run=last["run"],
        data=last["data"],
        prev=last["prev"],
    )
    _write(path, lines[: seals[-1]] + [encoded[:-1]])
    assert _problem(path)[:2] == ("audit.seal-mismatch", seals[-1] + 1)
    _write(path, lines)
    published = sign_checkpoint(wrong, KEY).text  # the right chain head, a root of another tree
    assert _problem(path, expect_head=published)[:2] == ("audit.head-mismatch", seals[-1])
