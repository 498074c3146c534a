"""The writer: exact line format, continuation across runs, lock, group commit, crash safety."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner.audit import AuditLog, load_runner_key, read_records, repair_torn_tail, verify_log
from runner.audit import chain as chain_module
from runner.audit.record import GENESIS, encode_record, format_ts, parse_line
from runner.canonical import canonical_json, sha256_hex
from runner.errors import AuditError, InputError, Location
from runner.signing import generate_keypair

REPO = Path(__file__).resolve().parents[2]


def _python(script: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_each_line_is_the_canonical_record_and_hashes_as_documented(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path, run_id="r1") as log:
        first = log.append("run.started", {"kind": "nested keys named like the envelope", "hash": "x"})
        second = log.append("job.finished", {"name": "ünïcode", "n": 2**62})
        log.seal(None)
    lines = (tmp_path / "audit.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 4
    assert lines[0] == canonical_json(first) and lines[1] == canonical_json(second)
    assert first["hash"] == sha256_hex(canonical_json({k: v for k, v in first.items() if k != "hash"}))
    assert (first["seq"], first["prev"], second["seq"], second["prev"]) == (0, GENESIS, 1, first["hash"])
    assert first["ts"].endswith("Z") and len(first["ts"]) == len("2026-11-21T18:00:00.123Z")


def test_the_chain_continues_across_runs_in_the_same_folder(tmp_path: Path) -> None:
    heads = []
    for run in ("r1", "r2", "r3"):
        with AuditLog.open(tmp_path, run_id=run) as log:
            record = log.append("run.started", {})
            heads.append(record)
            log.seal(None)
    assert [h["seq"] for h in heads] == [0, 2, 4]
    records = read_records(tmp_path / "audit.jsonl")
    assert heads[1]["prev"] == records[1]["hash"] and heads[2]["prev"] == records[3]["hash"]
    report = verify_log(tmp_path / "audit.jsonl")
    assert report.status == "intact" and [r.run for r in report.runs] == ["r1", "r2", "r3"]


def test_every_checkpoint_of_one_log_carries_the_log_s_origin(tmp_path: Path) -> None:
    """The default origin names the log (its first run), not the sealing run: a tlog client or
    witness pins one origin per log."""
    key = generate_keypair()
    origins = []
    for run in ("first-run", "second-run", "third-run"):
        with AuditLog.open(tmp_path, run_id=run) as log:
            log.append("run.started", {})
            origins.append(log.seal(key, "ci").origin)
    assert origins == ["sandrun.dev/audit/first-run"] * 3
    with AuditLog.open(tmp_path / "other", run_id="second-run") as log:
        log.append("run.started", {})
        assert log.seal(key, "ci").origin == "sandrun.dev/audit/second-run"


def test_seal_checkpoint_signs_the_merkle_root_head_and_size(tmp_path: Path) -> None:
    key = generate_keypair()
    with AuditLog.open(tmp_path, run_id="r1", origin="example.org/ci/audit") as log:
        last = log.append("run.started", {})
        checkpoint = log.seal(key, "ci")
        with pytest.raises(AuditError) as caught:
            log.append("job.started", {})
        assert caught.value.rule_id == "audit.closed"
    assert (checkpoint.origin, checkpoint.size, checkpoint.chain_head) == (
        "example.org/ci/audit",
        1,
        last["hash"],
    )
    line = (tmp_path / "audit.jsonl").read_bytes().split(b"\n")[0]
    assert checkpoint.root_hash == checkpoint.merkle_root == hashlib.sha256(b"\x00" + line).hexdigest()
    assert str(checkpoint).startswith("example.org/ci/audit\n1\n") and "\n\n\u2014 ci " in str(checkpoint)
    seal = read_records(tmp_path / "audit.jsonl")[-1]
    assert seal["kind"] == "run.sealed" and seal["data"]["checkpoint"] == str(checkpoint)
    with pytest.raises(ValueError):
        AuditLog.open(tmp_path, run_id="r2", origin="has space")


def test_bad_input_to_append_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path, run_id="r1") as log:
        for kind, data in (("job.finished", {"wall_s": 0.5}), ("NotAKind", {}), ("job.finished", [1])):
            with pytest.raises((TypeError, ValueError)):
                log.append(kind, data)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            log.append("run.sealed", {})
        log.append("run.started", {})
    assert [r["seq"] for r in read_records(tmp_path / "audit.jsonl")] == [0]


def test_concurrent_appends_from_threads_keep_one_chain(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path, run_id="r1") as log:
        workers = [
            threading.Thread(target=lambda: [log.append("job.finished", {"i": i}) for i in range(200)])
            for _ in range(4)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        log.seal(None)
    report = verify_log(tmp_path / "audit.jsonl")
    assert report.status == "intact" and report.records == 801


def test_fsync_is_a_group_commit_and_always_runs_at_seal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced_sizes: list[int] = []
    real_sync = chain_module._sync

    def counting_sync(fd: int) -> None:
        real_sync(fd)
        synced_sizes.append(os.fstat(fd).st_size)

    monkeypatch.setattr(chain_module, "_sync", counting_sync)
    with AuditLog.open(tmp_path, run_id="r1", fsync_interval_s=3600, fsync_every=10) as log:
        for i in range(9):
            log.append("job.finished", {"i": i})
        assert synced_sizes == []  # below the count, long before the interval: no fsync yet
        log.append("job.finished", {"i": 9})  # the 10th pending record wakes the flusher
        deadline = time.monotonic() + 30
        while not synced_sizes and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(synced_sizes) == 1
        log.seal(None)
        assert synced_sizes[-1] == (tmp_path / "audit.jsonl").stat().st_size  # the seal is durable
    synced_sizes.clear()
    with AuditLog.open(tmp_path, run_id="r2", fsync_interval_s=0) as log:  # synchronous mode
        for i in range(3):
            log.append("job.finished", {"i": i})
    assert len(synced_sizes) == 3


def test_the_interval_bounds_what_a_power_loss_can_cost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced = threading.Event()
    real_sync = chain_module._sync

    def signalling_sync(fd: int) -> None:
        real_sync(fd)
        synced.set()

    monkeypatch.setattr(chain_module, "_sync", signalling_sync)
    with AuditLog.open(tmp_path, run_id="r1", fsync_interval_s=0.05, fsync_every=10_000) as log:
        log.append("run.started", {})
        assert synced.wait(30)  # generous: only that it happens without more records or a seal


def test_a_torn_tail_is_refused_then_repaired_explicitly(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path, run_id="r1") as log:
        log.append("run.started", {})
        log.append("job.started", {})
    path = tmp_path / "audit.jsonl"
    intact = path.read_bytes()
    path.write_bytes(intact + b'{"data":{"half a rec')
    with pytest.raises(AuditError) as caught:
        AuditLog.open(tmp_path, run_id="r2")
    assert caught.value.rule_id == "audit.torn-line" and caught.value.location.line == 3  # type: ignore[union-attr]
    assert path.read_bytes().endswith(b"half a rec")  # refusing changed nothing
    side = repair_torn_tail(tmp_path)
    assert side is not None and side.read_bytes() == b'{"data":{"half a rec'
    assert path.read_bytes() == intact and repair_torn_tail(tmp_path) is None
    with pytest.raises(AuditError) as caught:  # cut back: the last run is unsealed
        AuditLog.open(tmp_path, run_id="r2")
    assert caught.value.rule_id == "audit.unsealed"
    with AuditLog.open(tmp_path, run_id="r2", continue_unsealed=True) as log:
        log.seal(None)
    assert verify_log(path).status == "intact"
    continued = read_records(path)[2]
    assert continued["kind"] == "run.continued" and continued["run"] == "r2"
    assert continued["data"]["after"] == {"run": "r1", "seq": 1, "hash": read_records(path)[1]["hash"]}
    acknowledged = tmp_path / side.name.replace(".torn-", ".cut-")
    assert not side.exists() and acknowledged.read_bytes() == b'{"data":{"half a rec'
    assert continued["data"]["cut"] == [
        {
            "file": acknowledged.name,
            "bytes": 20,
            "sha256": hashlib.sha256(acknowledged.read_bytes()).hexdigest(),
        }
    ]
    with AuditLog.open(tmp_path, run_id="r3") as log:  # acknowledged once: not asked again
        log.seal(None)


def _two_records(folder: Path, value: int) -> list[bytes]:
    with AuditLog.open(folder, run_id="r1") as log:
        log.append("run.started", {"v": value})
        log.append("job.started", {"x": 1})
    return (folder / "audit.jsonl").read_bytes().split(b"\n")[:-1]


@pytest.mark.parametrize("damage", ["edit-last", "unlinked-last"])
def test_open_refuses_to_append_to_a_broken_tail(tmp_path: Path, damage: str) -> None:
    lines = _two_records(tmp_path / "a", 1)
    if damage == "edit-last":
        lines[-1] = lines[-1].replace(b'"x":1', b'"x":2')
    else:  # a valid record from another log: it does not follow the line before it
        lines[-1] = _two_records(tmp_path / "b", 2)[-1]
    (tmp_path / "a" / "audit.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))
    with pytest.raises(AuditError) as caught:
        AuditLog.open(tmp_path / "a", run_id="r2")
    assert caught.value.rule_id == "audit.edited"


def test_open_refuses_a_reused_run_id(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path, run_id="r1") as log:
        log.append("run.started", {})
    with pytest.raises(AuditError) as caught:
        AuditLog.open(tmp_path, run_id="r1", continue_unsealed=True)
    assert caught.value.rule_id == "audit.run-reused"


def test_a_second_writer_times_out_with_audit_locked(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path, run_id="r1"):
        with pytest.raises(AuditError) as caught:
            AuditLog.open(tmp_path, run_id="r2", lock_timeout_s=0.1)
        assert caught.value.rule_id == "audit.locked"
    with AuditLog.open(tmp_path, run_id="r2") as log:  # released on close
        log.seal(None)


WRITER = """
    import sys, time
    from pathlib import Path
    from runner.audit import AuditLog
    with AuditLog.open(Path(sys.argv[1]), run_id=sys.argv[2], lock_timeout_s=60) as log:
        print("locked", flush=True)
        for i in range(100):
            log.append("job.finished", {"i": i})
            time.sleep(0.001)
        log.seal(None)
"""


def test_two_processes_writing_one_folder_are_serialised(tmp_path: Path) -> None:
    writers = [_python(WRITER, str(tmp_path), run) for run in ("run-a", "run-b")]
    for writer in writers:
        assert writer.wait(120) == 0, writer.stderr.read() if writer.stderr else ""
    report = verify_log(tmp_path / "audit.jsonl")
    assert report.status == "intact", report.problems
    assert sorted(r.run for r in report.runs) == ["run-a", "run-b"]
    assert [r.records for r in report.runs] == [101, 101]  # each run contiguous, never interleaved


KILLED = """
    import sys
    from pathlib import Path
    from runner.audit import AuditLog
    log = AuditLog.open(Path(sys.argv[1]), run_id="doomed")
    log.append("run.started", {})
    i = 0
    while True:
        log.append("job.finished", {"i": i, "pad": "x" * 500})
        i += 1
        if i == 300:
            print("ready", flush=True)
"""


def test_a_sigkilled_run_leaves_a_log_that_verifies_as_unsealed(tmp_path: Path) -> None:
    writer = _python(KILLED, str(tmp_path))
    assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
    time.sleep(0.05)
    writer.send_signal(signal.SIGKILL)
    writer.wait(60)
    path = tmp_path / "audit.jsonl"
    if not path.read_bytes().endswith(b"\n"):
        # the kernel copies a write page by page and checks for SIGKILL in between: a line that
        # crosses a page boundary can be cut; that is a torn tail, named as such and repairable
        assert verify_log(path).problems[0].rule_id == "audit.torn-line"
        assert repair_torn_tail(tmp_path) is not None
    report = verify_log(path)
    assert (report.ok, report.sealed, report.status) == (True, False, "unsealed")
    assert report.records > 300
    [problem] = report.problems
    assert problem.rule_id == "audit.unsealed"
    assert problem.message.startswith(f"unsealed: interrupted after seq {report.records - 1}")
    # the next run continues the chain after the interrupted one, once the operator says so
    with pytest.raises(AuditError) as caught:
        AuditLog.open(tmp_path, run_id="next")
    assert caught.value.rule_id in ("audit.unsealed", "audit.cut-back")
    with AuditLog.open(tmp_path, run_id="next", continue_unsealed=True) as log:
        assert log.append("run.started", {})["seq"] == report.records + 1  # after run.continued
        log.seal(None)
    report = verify_log(path)
    assert report.status == "intact" and [r.sealed for r in report.runs] == [False, True]


def test_load_runner_key_from_a_file_or_the_environment(tmp_path: Path) -> None:
    from runner.signing import public_key_raw, write_keypair

    pair = write_keypair("runner", tmp_path)
    pem = pair.private_path.read_text()
    from_file = load_runner_key(pair.private_path, {})
    from_env = load_runner_key(None, {"SANDRUN_SIGNING_KEY": pem})
    assert from_file is not None and from_env is not None
    assert public_key_raw(from_file.public_key()) == public_key_raw(from_env.public_key())
    assert load_runner_key(None, {}) is None
    with pytest.raises(InputError) as caught:
        load_runner_key(None, {"SANDRUN_SIGNING_KEY": "not a key"})
    assert caught.value.rule_id == "input.signing-key"
    assert caught.value.location == Location(file="$SANDRUN_SIGNING_KEY")
    assert "not a key" not in str(caught.value)
    with pytest.raises(InputError):
        load_runner_key(tmp_path / "missing.key", {})


def test_versioned_tools_compares_with_the_latest_earlier_registration(tmp_path: Path) -> None:
    def tool(version: str, digest: str, name: str = "mdlint") -> dict[str, str]:
        return {"manifest": "m.yaml", "name": name, "version": version, "module_sha256": digest * 64}

    for run, tools in (("r1", [tool("1.0", "a"), tool("2.0", "c", "fmt")]), ("r2", [tool("1.1", "b")])):
        with AuditLog.open(tmp_path, run_id=run) as log:
            for t in tools:
                log.append("tool.registered", t)
            log.seal(None)
    with AuditLog.open(tmp_path, run_id="r3") as log:
        current = [tool("1.1", "b"), tool("2.1", "d", "fmt"), tool("0.1", "e", "new")]
        for t in current:
            log.append("tool.registered", t)  # the current run's own records are not "earlier"
        changes = log.versioned_tools(current)
    assert [(c["name"], c["previous"]["version"], c["previous"]["run"], c["version"]) for c in changes] == [
        ("fmt", "2.0", "r1", "2.1")
    ]


def test_parse_line_matches_what_append_wrote(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path, run_id="r1") as log:
        record = log.append("run.started", {"a": [1, "two", None, True]})
    head = parse_line((tmp_path / "audit.jsonl").read_bytes()[:-1])
    assert head == (record["hash"], "run.started", GENESIS, "r1", 0)


def test_the_worked_example_in_the_docs_is_exact(tmp_path: Path) -> None:
    moment = 1795284000_123_000_000  # 2026-11-21T18:00:00.123Z in nanoseconds
    with AuditLog.open(tmp_path, run_id="20261121T180000Z-3f9a1c2b", clock=lambda: moment) as log:
        log.append("run.started", {"sandrun": "0.1.0"})
    line = (tmp_path / "audit.jsonl").read_bytes().split(b"\n")[0]
    docs = (REPO / "docs" / "audit.md").read_text(encoding="utf-8")
    assert "\n" + line.decode() + "\n" in docs
    cut = line.rfind(b',"hash":"')
    hashed = line[:cut] + line[cut + 74 :]
    assert "\n" + hashed.decode() + "\n" in docs and f"{len(hashed)} bytes" in docs
    assert sha256_hex(hashed) == parse_line(line).hash and parse_line(line).hash in docs


_data = st.dictionaries(
    st.text(max_size=6),
    st.none() | st.booleans() | st.integers() | st.text() | st.lists(st.integers(), max_size=3),
    max_size=6,
)


@given(
    data=_data,
    seq=st.integers(min_value=0, max_value=10**18 - 1),
    kind=st.sampled_from(["job.finished", "data.kind", "a.b-c.d0"]),
    run=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,20}", fullmatch=True),
    ms=st.integers(min_value=0, max_value=253402300799999),  # up to 9999-12-31T23:59:59.999Z
    prev=st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
)
def test_encoded_record_is_the_canonical_json_of_the_record(
    data: dict[str, object], seq: int, kind: str, run: str, ms: int, prev: str
) -> None:
    # encode_record writes everything but ``data`` by hand: it must still be exactly canonical
    ts = format_ts(ms * 1_000_000)
    record, line = encode_record(seq=seq, ts=ts, kind=kind, run=run, data=data, prev=prev)
    unhashed = {"data": data, "kind": kind, "prev": prev, "run": run, "seq": seq, "ts": ts}
    assert record == {**unhashed, "hash": sha256_hex(canonical_json(unhashed))}
    assert line == canonical_json(record) + b"\n"
    assert parse_line(line[:-1]).hash == record["hash"]


@pytest.mark.parametrize(
    "field, value",
    [
        ("kind", "Job.Finished"),
        ("kind", 'job.x","seq":0'),
        ("run", 'r1","seq'),
        ("prev", "A" * 64),
        ("prev", "0" * 63),
        ("ts", "2026-11-21T18:00:00Z"),
        ("seq", -1),
        ("seq", 10**18),
        ("seq", True),
    ],
)
def test_encode_record_refuses_fields_it_would_have_to_escape(field: str, value: object) -> None:
    fields: dict[str, object] = {
        "seq": 0,
        "ts": "2026-11-21T18:00:00.000Z",
        "kind": "job.started",
        "run": "r1",
        "data": {},
        "prev": GENESIS,
    }
    with pytest.raises(ValueError):
        encode_record(**{**fields, field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "ms, text",
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (1795284000123, "2026-11-21T18:00:00.123Z"),
        (1795284000999, "2026-11-21T18:00:00.999Z"),
        (1795284001000, "2026-11-21T18:00:01.000Z"),  # the cached second must roll over
        (1795284000001, "2026-11-21T18:00:00.001Z"),  # and back
    ],
)
def test_format_ts_is_rfc3339_utc_milliseconds(ms: int, text: str) -> None:
    assert format_ts(ms * 1_000_000 + 999_999) == text  # sub-millisecond digits are cut, not rounded


def _mth(lines: list[bytes]) -> bytes:
    """RFC 6962 MTH written out here, over the lines as leaves."""
    if not lines:
        return hashlib.sha256(b"").digest()
    if len(lines) == 1:
        return hashlib.sha256(b"\x00" + lines[0]).digest()
    k = 1 << ((len(lines) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + _mth(lines[:k]) + _mth(lines[k:])).digest()


def test_each_run_resumes_the_tree_from_the_last_seal_and_signs_the_right_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_scan(path: Path, size: int) -> None:
        raise AssertionError("a log ending in a seal is not re-read")

    for run in range(5):
        with AuditLog.open(tmp_path, run_id=f"r{run}") as log:
            for i in range(run * 3):
                log.append("job.started", {"i": i})
            checkpoint = log.seal(None)
        lines = (tmp_path / "audit.jsonl").read_bytes().splitlines()
        assert checkpoint.merkle_root == _mth(lines[:-1]).hex()
        monkeypatch.setattr(chain_module, "_tree_of", no_scan)
    assert verify_log(tmp_path / "audit.jsonl").status == "intact"


def test_after_an_unsealed_run_the_log_is_read_to_resume_the_tree(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path, run_id="r1") as log:
        log.append("run.started", {})
        log.seal(None)
    with AuditLog.open(tmp_path, run_id="r2") as log:
        log.append("run.started", {})  # killed before its seal
    with AuditLog.open(tmp_path, run_id="r3", continue_unsealed=True) as log:
        checkpoint = log.seal(None)
    lines = (tmp_path / "audit.jsonl").read_bytes().splitlines()
    assert checkpoint.merkle_root == _mth(lines[:-1]).hex()
    assert verify_log(tmp_path / "audit.jsonl").status == "intact"


def test_a_seal_whose_stored_tree_was_edited_is_refused(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path, run_id="r1") as log:
        for i in range(5):
            log.append("job.started", {"i": i})
        log.seal(None)
    path = tmp_path / "audit.jsonl"
    lines = path.read_bytes().splitlines()
    seal = read_records(path)[-1]
    seal["data"]["tree"][0] = "00" * 32  # rehashed: the chain alone cannot tell
    _, line = encode_record(
        seq=seal["seq"],
        ts=seal["ts"],
        kind=seal["kind"],
        run=seal["run"],
        data=seal["data"],
        prev=seal["prev"],
    )
    path.write_bytes(b"".join(x + b"\n" for x in lines[:-1]) + line)
    report = verify_log(path)
    assert report.problems[0].rule_id == "audit.seal-mismatch" and report.problems[0].location.line == len(
        lines
    )


def test_a_run_never_signs_a_root_its_last_seal_does_not(tmp_path: Path) -> None:
    """Someone who can write the folder but holds no key edits a record and stores the subtree
    heads of that forged history in the last seal (rehashed): the next run must not resume from
    them, or its key signs a Merkle root over records the file does not hold, against which the
    forged record has a valid inclusion proof."""
    from runner.audit.merkle import CompactRange, leaf_hash

    with AuditLog.open(tmp_path, run_id="r1") as log:
        for i in range(5):
            log.append("job.finished", {"i": i, "status": "passed"})
        log.seal(None)
    path = tmp_path / "audit.jsonl"
    original = path.read_bytes()
    lines = original.splitlines()
    forged = list(lines[:-1])
    forged[2] = forged[2].replace(b'"passed"', b'"failed"')
    heads = CompactRange()
    for line in forged:
        heads.append(leaf_hash(line))
    seal = read_records(path)[-1]
    for tree in ([n.hex() for n in heads.nodes], ["zz"], None, "not a list"):
        data = {**seal["data"], "tree": tree}
        _, line = encode_record(
            seq=seal["seq"], ts=seal["ts"], kind=seal["kind"], run=seal["run"], data=data, prev=seal["prev"]
        )
        path.write_bytes(b"".join(x + b"\n" for x in lines[:-1]) + line)
        with pytest.raises(AuditError) as caught:
            AuditLog.open(tmp_path, run_id="r2")
        assert caught.value.violations[0].rule_id == "audit.seal-mismatch", tree
        assert caught.value.violations[0].location.line == len(lines)
    path.write_bytes(original)  # the untouched log still resumes from its seal
    with AuditLog.open(tmp_path, run_id="r2") as log:
        checkpoint = log.seal(None)
    assert checkpoint.merkle_root == _mth(path.read_bytes().splitlines()[:-1]).hex()


def _rewrite_history(path: Path, index: int, *, reroot: bool) -> None:
    """Whoever can write the log but holds no key: record ``index`` says ``failed``, every hash
    after it is recomputed, and with ``reroot`` every seal is re-rooted over the forged history
    (size, root, chain head and stored tree consistent again) keeping its old signature lines."""
    import dataclasses

    from runner.audit.checkpoint import Checkpoint, parse_checkpoint
    from runner.audit.merkle import CompactRange, leaf_hash
    from runner.audit.record import seal_extension

    records = read_records(path)
    records[index]["data"]["status"] = "failed"
    prev, tree, lines = GENESIS, CompactRange(), []
    for record in records:
        data = record["data"]
        if record["kind"] == "run.sealed" and reroot:
            old = parse_checkpoint(data["checkpoint"])
            extension = seal_extension(record["run"], record["ts"], data["run_records"])
            fresh = Checkpoint.of_tree(old.origin, tree.size, tree.root.hex(), prev, (extension,))
            resealed = dataclasses.replace(fresh, signatures=old.signatures)  # the old lines kept
            data = {**data, "head": prev, "checkpoint": resealed.text, "tree": [n.hex() for n in tree.nodes]}
        written, line = encode_record(
            seq=record["seq"], ts=record["ts"], kind=record["kind"], run=record["run"], data=data, prev=prev
        )
        prev = written["hash"]
        tree.append(leaf_hash(line[:-1]))
        lines.append(line)
    path.write_bytes(b"".join(lines))


def _signed_runs(folder: Path, key: Any, runs: int) -> Path:
    for run in range(runs):
        with AuditLog.open(folder, run_id=f"r{run}") as log:
            for i in range(4):
                log.append("job.finished", {"i": i, "status": "passed"})
            log.seal(key, "runner")
    return folder / "audit.jsonl"


def test_a_run_does_not_sign_over_a_last_seal_whose_signature_by_its_key_broke(tmp_path: Path) -> None:
    """A record edited and every hash recomputed, the last seal re-rooted over the forged history
    (its tree, root and chain head consistent again) but still carrying the runner's signature
    line, which no longer verifies: the runner's key must not sign that history in the next seal."""
    private = generate_keypair()
    public = private.public_key()
    path = _signed_runs(tmp_path, private, 1)
    _rewrite_history(path, 2, reroot=True)
    with pytest.raises(AuditError) as caught:
        AuditLog.open(tmp_path, run_id="r9", signer=public)
    assert caught.value.violations[0].rule_id == "audit.bad-seal-signature"
    assert verify_log(path, public_keys=[public]).problems[0].rule_id == "audit.bad-seal-signature"
    other = generate_keypair()  # a run sealing with another key (or none) cannot tell
    with AuditLog.open(tmp_path, run_id="r9", signer=other.public_key()) as log:
        log.seal(None)


@pytest.mark.parametrize(
    ("reroot", "rule"), [(False, "audit.seal-mismatch"), (True, "audit.bad-seal-signature")]
)
def test_continuing_after_an_unsealed_run_checks_every_seal_it_reads(
    tmp_path: Path, reroot: bool, rule: str
) -> None:
    """The same rewrite, then the last seal cut off so the log ends unsealed: the operator's
    ``--continue-unsealed`` reads the whole log to resume the tree, and must not sign the forged
    history either. A seal left as it was no longer describes the records before it; a re-rooted
    one carries the run's broken signature."""
    private = generate_keypair()
    path = _signed_runs(tmp_path, private, 2)
    _rewrite_history(path, 2, reroot=reroot)
    path.write_bytes(b"".join(line + b"\n" for line in path.read_bytes().splitlines()[:-1]))
    with pytest.raises(AuditError) as caught:
        AuditLog.open(tmp_path, run_id="r9", continue_unsealed=True, signer=private.public_key())
    assert caught.value.violations[0].rule_id == rule
    assert caught.value.violations[0].location.line == 5  # the first seal, after its four records


def test_a_log_whose_last_line_is_huge_opens_in_linear_time(tmp_path: Path) -> None:
    """The tail was read backwards by prepending 64 KiB pieces: quadratic, so a 30 MB last line
    (a big plan's ``plan.compiled`` before a crash, or a planted one) took ~30 s to open here.
    Linear, it takes well under a second; 10 s is a generous bound on a loaded machine."""
    with AuditLog.open(tmp_path, run_id="r1") as log:
        log.append("plan.compiled", {"grants": "g" * 40_000_000})  # killed before its seal
    started = time.monotonic()
    with pytest.raises(AuditError) as caught:
        AuditLog.open(tmp_path, run_id="r2")
    assert caught.value.violations[0].rule_id == "audit.unsealed"
    assert time.monotonic() - started < 10
