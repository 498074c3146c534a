"""The record survives a hostile or full disk, and reading a log verifies it (issue 9, items 8-9).

End to end through the CLI, as real subprocesses: a job that fills the disk holding ``--out`` (a
small tmpfs), edited logs given to ``report`` and ``audit show``, a seal whose own fields were
edited and rehashed, a wrong ``--pub``, a log whose last run is unsealed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import wasmtime
from cli_process import sandrun

from runner.audit import AuditLog, read_records, verify_log
from runner.audit.record import encode_record
from runner.errors import AuditError

# A guest that fills its rw mount: opens /w/fill and writes 64 KiB blocks until the disk is full.
FILL_WAT = """
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 0) "fill")
  (func (export "_start")
    (local $n i32)
    (i32.store (i32.const 16) (i32.const 1024))
    (i32.store (i32.const 20) (i32.const 65536))
    (if (call $path_open (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 4) (i32.const 9)
                         (i64.const 0x1fffffff) (i64.const 0x1fffffff) (i32.const 0) (i32.const 32))
      (then unreachable))
    (block $full
      (loop $more
        (br_if $full (call $fd_write (i32.load (i32.const 32)) (i32.const 16) (i32.const 1) (i32.const 40)))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br_if $more (i32.lt_u (local.get $n) (i32.const 4096)))))))
"""
OK_WAT = '(module (memory (export "memory") 1) (func (export "_start")))'
POLICY = """apiVersion: sandrun/v1
kind: Policy
metadata: {name: disk}
limits:
  max: {timeout: 1m}
fs:
  roots: [.]
  write: [./disk/work]
actions:
  allow: ["tool.fs.*"]
"""
REPORTS = ("report.json", "junit.xml", "summary.md")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs at ``tmp_path/disk``; skipped (with the reason) where mounting is not allowed."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = shutil.which("mount")
    if mount is None:
        pytest.skip("no mount(8) on this machine: cannot make a small disk to fill")
    made = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root/CAP_SYS_ADMIN): {made.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _project(folder: Path, *, fill: bool) -> None:
    """A manifest with one job: ``fill`` writes until its rw mount (on the small disk) is full."""
    module = wasmtime.wat2wasm(FILL_WAT if fill else OK_WAT)
    (folder / "tool.wasm").write_bytes(module)
    (folder / "policy.yaml").write_text(POLICY)
    mount = "fs: [{host: ./disk/work, guest: /w, mode: rw}], " if fill else ""
    (folder / "m.yaml").write_text(
        "apiVersion: sandrun/v1\nkind: Manifest\nmetadata: {name: disk}\n"
        f"tools:\n  t: {{module: tool.wasm, sha256: {hashlib.sha256(module).hexdigest()},"
        " actions: [tool.fs.write]}\n"
        f"jobs:\n  - {{name: j, tool: t, {mount}limits: {{timeout: 30s}}}}\n"
    )


def _run(folder: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return sandrun("run", "m.yaml", "--policy", "policy.yaml", "--out", "disk/out", *extra, cwd=folder)


def test_a_job_that_fills_the_disk_leaves_a_verifiable_unsealed_log_and_no_stale_report(
    tmp_path: Path, small_disk: Path
) -> None:
    (small_disk / "work").mkdir()
    out = small_disk / "out"
    _project(tmp_path, fill=False)
    assert _run(tmp_path).returncode == 0  # a passing run leaves its reports on the small disk
    assert all((out / name).is_file() for name in REPORTS)

    _project(tmp_path, fill=True)
    full = _run(tmp_path)
    assert full.returncode == 4, full.stderr
    [line] = [text for text in full.stderr.splitlines() if "[audit." in text]
    assert "[audit.write-failed]" in line and "No space left on device" in line and "unsealed" in line
    assert "junit.xml" in line or "audit.jsonl" in line  # the file that could not be written
    assert "Traceback" not in full.stderr
    for name in REPORTS:  # nothing of the previous, passing run is left to be mistaken for this one
        assert not (out / name).exists(), name
    report = verify_log(out / "audit.jsonl")
    assert report.status == "unsealed", report.problems  # whole records only: not torn, not damaged
    assert [r.sealed for r in report.runs] == [True, False]

    # The operator frees space. The log is not refused forever, but only when they say so.
    (small_disk / "work" / "fill").unlink()
    _project(tmp_path, fill=False)
    refused = _run(tmp_path)
    assert refused.returncode == 4 and "[audit.unsealed]" in refused.stderr
    resumed = _run(tmp_path, "--continue-unsealed")
    assert resumed.returncode == 0, resumed.stderr
    assert verify_log(out / "audit.jsonl").status == "intact"
    records = read_records(out / "audit.jsonl")
    continued = next(r for r in records if r["kind"] == "run.continued")
    assert continued["data"]["after"]["run"] == report.runs[-1].run


def test_a_write_that_fails_half_way_is_cut_back_to_the_last_whole_record(small_disk: Path) -> None:
    with AuditLog.open(small_disk, run_id="r1", fsync_interval_s=0) as log:
        log.append("run.started", {})
        ballast = os.open(small_disk / "ballast", os.O_WRONLY | os.O_CREAT)  # the disk fills up
        with contextlib.suppress(OSError):
            while True:
                os.write(ballast, b"\0" * 4096)
        os.close(ballast)
        with pytest.raises(AuditError) as caught:
            for _ in range(10_000):  # fills the log's last page, then a record fails half-written
                log.append("job.finished", {"reason": "x" * 3000})
        assert caught.value.rule_id == "audit.write-failed"
        assert "the run ends unsealed after seq" in caught.value.violations[0].message
        with pytest.raises(AuditError):  # the log stays poisoned: no record after a failed one
            log.append("job.finished", {})
    assert (small_disk / "audit.jsonl").read_bytes().endswith(b"}\n")
    assert verify_log(small_disk / "audit.jsonl").status == "unsealed"


# -- reading a log verifies it ---------------------------------------------------------------


def _demo(out: Path, *extra: str, env: dict[str, str] | None = None) -> None:
    result = sandrun(
        "run", "manifests/examples", "--policy", "policies/default.yaml", "--out", str(out), *extra, env=env
    )
    assert result.returncode == 0, result.stderr


def _rewrite(path: Path, edit: dict[int, dict[str, object]]) -> None:
    """Edit records (top-level fields or ``data`` fields) and recompute every hash after them."""
    lines = path.read_bytes().splitlines()
    out: list[bytes] = []
    prev = "0" * 64
    for index, line in enumerate(lines):
        record = json.loads(line)
        for key, value in edit.get(index, {}).items():
            if key in ("ts",):
                record[key] = value
            else:
                record["data"][key] = value
        record, encoded = encode_record(
            seq=record["seq"],
            ts=record["ts"],
            kind=record["kind"],
            run=record["run"],
            data=record["data"],
            prev=prev,
        )
        prev = record["hash"]
        out.append(encoded)
    path.write_bytes(b"".join(out))


def test_report_and_show_refuse_an_edited_log(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _demo(out)
    log = out / "audit.jsonl"
    text = log.read_text()
    index = next(i for i, line in enumerate(text.splitlines()) if '"job.finished"' in line)
    lines = text.splitlines(keepends=True)
    lines[index] = lines[index].replace('"status":"passed"', '"status":"failed"', 1)
    log.write_text("".join(lines))
    for command in (
        ["report", str(out)],
        ["report", str(out), "--format", "json"],
        ["audit", "show", str(out)],
    ):
        result = sandrun(*command)
        assert result.returncode == 4, (command, result.stdout)
        assert "[audit.edited]" in result.stderr and result.stdout == ""


def test_report_refuses_a_run_that_died_before_its_seal_and_show_marks_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _demo(out)
    with AuditLog.open(out, run_id="died-early") as log:  # started, then killed: no seal
        log.append("run.started", {"sandrun": "0", "sources": []})
    result = sandrun("report", str(out), "--format", "json")
    assert result.returncode == 4 and "[audit.unsealed]" in result.stderr and result.stdout == ""
    earlier = verify_log(out / "audit.jsonl").runs[0].run
    assert sandrun("report", str(out), "--run", earlier).returncode == 0  # a sealed run still reports
    shown = sandrun("audit", "show", str(out), "--run", "died-early")
    assert shown.returncode == 4 and shown.stdout.startswith("UNSEALED ")
    assert all(line.startswith("UNSEALED ") for line in shown.stdout.splitlines())
    as_json = sandrun("audit", "show", str(out), "--run", "died-early", "--format", "json")
    assert as_json.returncode == 4 and json.loads(as_json.stdout)["sealed"] is False
    sealed = sandrun("audit", "show", str(out), "--run", earlier)
    assert sealed.returncode == 0 and "UNSEALED" not in sealed.stdout


def test_every_field_of_the_last_seal_is_covered_by_its_signature(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert sandrun("keys", "generate", "--id", "runner", "--out", str(keys)).returncode == 0
    out = tmp_path / "out"
    _demo(out, env={"SANDRUN_SIGNING_KEY": (keys / "runner.key").read_text()})
    log = out / "audit.jsonl"
    original = log.read_bytes()
    last = len(original.splitlines()) - 1
    pub = ("--pub", str(keys / "runner.pub"), "--expect-head", str(out / "checkpoint.txt"))
    assert sandrun("audit", "verify", str(out), *pub).returncode == 0
    for edit in (
        {"ts": "2020-01-01T00:00:00.000Z"},
        {"signers": []},
        {"signers": ["runner", "auditor"]},
        {"extra": "unsigned field"},
        {"run_records": 1},
    ):
        log.write_bytes(original)
        _rewrite(log, {last: edit})
        result = sandrun("audit", "verify", str(out), *pub)
        assert result.returncode == 4 and "[audit.seal-mismatch]" in result.stderr, edit


def test_verify_says_what_it_checked_and_names_a_wrong_key(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    for name in ("runner", "other"):
        assert sandrun("keys", "generate", "--id", name, "--out", str(keys)).returncode == 0
    out = tmp_path / "out"
    _demo(out, env={"SANDRUN_SIGNING_KEY": (keys / "runner.key").read_text()})
    plain = sandrun("audit", "verify", str(out))
    assert plain.returncode == 0 and "seal signatures not checked (no --pub)" in plain.stdout
    assert "signatures verified" not in plain.stdout
    good = sandrun("audit", "verify", str(out), "--pub", str(keys / "runner.pub"))
    assert good.returncode == 0 and "1 seal signature(s) verified" in good.stdout
    wrong = sandrun("audit", "verify", str(out), "--pub", str(keys / "other.pub"))
    assert wrong.returncode == 4 and wrong.stdout.startswith("untrusted:")
    assert "signed by a different key" in wrong.stderr and "damaged" not in wrong.stdout
    assert "signatures verified" not in wrong.stdout
    # damage before any seal: nothing about signatures is claimed
    lines = (out / "audit.jsonl").read_text().splitlines(keepends=True)
    lines[0] = lines[0].replace('"run.started"', '"run.startet"')
    (out / "audit.jsonl").write_text("".join(lines))
    damaged = sandrun("audit", "verify", str(out), "--pub", str(keys / "runner.pub"))
    assert damaged.returncode == 4 and damaged.stdout.startswith("damaged:")
    assert "verified" not in damaged.stdout
    shown = sandrun("report", str(out), "--pub", str(keys / "other.pub"))
    assert shown.returncode == 4 and shown.stdout == ""


def test_a_denied_run_publishes_its_checkpoint_and_removes_stale_reports(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _demo(out)
    case = "tests/cases/sha256-mismatch/manifest.yaml"
    denied = sandrun(
        "run", case, "--policy", "tests/cases/_shared/policy.yaml", "--root", "tests/cases", "--out", str(out)
    )
    assert denied.returncode == 3
    for name in REPORTS:
        assert not (out / name).exists(), name
    report = verify_log(out / "audit.jsonl", expect_head=(out / "checkpoint.txt").read_text())
    assert report.status == "intact"
    assert (out / "checkpoint.txt").read_text() == report.runs[-1].checkpoint  # the head does not lag


def test_a_run_continued_record_must_name_the_unsealed_run_before_it(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path, run_id="r1") as log:
        log.append("run.started", {})
    with AuditLog.open(tmp_path, run_id="r2", continue_unsealed=True) as log:
        log.seal(None)
    path = tmp_path / "audit.jsonl"
    assert verify_log(path).status == "intact"
    _rewrite(path, {1: {"after": {"run": "r0", "seq": 0, "hash": "0" * 64}}})
    report = verify_log(path)
    assert (report.status, report.problems[0].rule_id) == ("damaged", "audit.inserted")


def test_a_run_after_an_unsealed_one_must_say_it_continued(tmp_path: Path) -> None:
    """What a writer that skips the check (or a forger) leaves: named, not accepted as intact."""
    prev, lines = "0" * 64, []
    for seq, run in enumerate(("r1", "r2")):
        record, line = encode_record(
            seq=seq, ts="2026-11-21T18:00:00.000Z", kind="run.started", run=run, data={}, prev=prev
        )
        prev = record["hash"]
        lines.append(line)
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"".join(lines))
    report = verify_log(path)
    assert (report.status, report.problems[0].rule_id, report.problems[0].location.line) == (  # type: ignore[union-attr]
        "damaged",
        "audit.inserted",
        2,
    )


def test_a_torn_log_is_repaired_then_continued_only_when_the_operator_says_so(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _demo(out)
    log = out / "audit.jsonl"
    with open(log, "ab") as handle:
        handle.write(b'{"data":{"half a rec')
    args = ("run", "manifests/examples", "--policy", "policies/default.yaml", "--out", str(out))
    torn = sandrun(*args)
    assert torn.returncode == 4 and "[audit.torn-line]" in torn.stderr and "audit repair" in torn.stderr
    repaired = sandrun("audit", "repair", str(out))
    assert repaired.returncode == 0 and "--continue-unsealed" in repaired.stdout
    assert sandrun("audit", "verify", str(out)).returncode == 0  # cut back to the last seal
    cut_back = sandrun(*args)  # sealed, but cut back: still the operator's call
    assert cut_back.returncode == 4 and "[audit.cut-back]" in cut_back.stderr
    assert sandrun(*args, "--continue-unsealed").returncode == 0
    records = read_records(log)
    [continued] = [r for r in records if r["kind"] == "run.continued"]
    assert continued["data"]["cut"][0]["bytes"] == len(b'{"data":{"half a rec')
    assert (out / continued["data"]["cut"][0]["file"]).read_bytes() == b'{"data":{"half a rec'
    assert sandrun("audit", "verify", str(out)).returncode == 0
    assert sandrun(*args).returncode == 0  # acknowledged: the next run is not asked again


def test_show_marks_a_continued_unsealed_run_but_only_fails_for_an_uncovered_one(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path, run_id="killed") as log:
        log.append("run.started", {})
    with AuditLog.open(tmp_path, run_id="after", continue_unsealed=True) as log:
        log.append("run.started", {})
        log.seal(None)
    shown = sandrun("audit", "show", str(tmp_path))
    assert shown.returncode == 0, shown.stderr  # the later seal covers the killed run's records
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("UNSEALED ") and not any(line.startswith("UNSEALED") for line in lines[1:])
    assert sandrun("report", str(tmp_path), "--run", "killed").returncode == 4


def test_a_run_refuses_to_sign_over_a_last_seal_whose_tree_was_forged(tmp_path: Path) -> None:
    """Write access to ``--out`` (no key): a record edited, the last seal's subtree heads replaced
    by those of the forged history and rehashed. The next signed run must not put its key on a
    root over that history (an inclusion proof of the forged record would then verify)."""
    from runner.audit.merkle import CompactRange, leaf_hash

    keys = tmp_path / "keys"
    assert sandrun("keys", "generate", "--id", "runner", "--out", str(keys)).returncode == 0
    env = {"SANDRUN_SIGNING_KEY": (keys / "runner.key").read_text()}
    out = tmp_path / "out"
    _demo(out, env=env)
    log = out / "audit.jsonl"
    lines = log.read_bytes().splitlines()
    forged = [line.replace(b'"status":"passed"', b'"status":"failed"') for line in lines[:-1]]
    heads = CompactRange()
    for line in forged:
        heads.append(leaf_hash(line))
    _rewrite(log, {len(lines) - 1: {"tree": [n.hex() for n in heads.nodes]}})
    published = (out / "checkpoint.txt").read_bytes()
    again = sandrun(
        "run", "manifests/examples", "--policy", "policies/default.yaml", "--out", str(out), env=env
    )
    assert again.returncode == 4 and "[audit.seal-mismatch]" in again.stderr, again.stderr
    assert (out / "checkpoint.txt").read_bytes() == published  # nothing new was signed
    assert len(log.read_bytes().splitlines()) == len(lines)


def _raw_record(data: bytes) -> bytes:
    """A first record whose hash is right over ``data`` exactly as given (any bytes: the hash
    covers them, no key is needed to write them)."""
    tail = (
        f',"kind":"run.started","prev":"{"0" * 64}","run":"r1","seq":0,"ts":"2026-11-21T18:00:00.123Z"}}'
    ).encode()
    head = b'{"data":' + data
    digest = hashlib.sha256(head + tail).hexdigest().encode()
    return head + b',"hash":"' + digest + b'"' + tail + b"\n"


@pytest.mark.parametrize(
    "data",
    [b'{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}", b'{"x":"\\ud800"}'],
    ids=["nested-too-deep", "lone-surrogate"],
)
def test_a_record_no_parser_can_hold_is_damage_not_an_internal_error(tmp_path: Path, data: bytes) -> None:
    (tmp_path / "audit.jsonl").write_bytes(_raw_record(data))
    for command in (
        ["audit", "verify", str(tmp_path)],
        ["audit", "verify", str(tmp_path), "--strict"],
        ["audit", "show", str(tmp_path)],
        ["report", str(tmp_path)],
    ):
        result = sandrun(*command)
        assert result.returncode == 4, (command, result.stderr)
        assert "[audit.edited]" in result.stderr and "internal error" not in result.stderr, command


def _one_job_run(out: Path, started: dict[str, object], finished: dict[str, object]) -> None:
    """A sealed run of one job, written by the runner's own writer with the data given."""
    from runner.results import JobResult

    row = JobResult(manifest="m", name="a", tool="t", module_sha256="2" * 64, status="passed", exit_code=0)
    policy = {"name": "p", "path": "p.yaml", "sha256": "0" * 64, "git_commit": None}
    with AuditLog.open(out, run_id="r1") as log:
        log.append("run.started", {"sandrun": "0", "sources": []})
        log.append(
            "plan.compiled", {"plan_sha256": "1" * 64, "policy": policy, "inputs": [], "jobs": ["m/a"]}
        )
        log.append("job.started", {"id": "m/a", "index": 0, **started})
        log.append("job.finished", {**row.to_dict(), "index": 0, **finished})
        log.seal(None)


@pytest.mark.parametrize(
    ("started", "finished", "code"),
    [
        ({}, {"memory_peak": 10**400}, 4),  # no float holds it: the sizes overflowed
        ({}, {"wall_ms": -(10**30), "fuel_used": 10**30}, 4),
        (
            {"limits": {"fuel": "x", "memory": [1], "timeout_ms": True}},
            {"fuel_used": 5, "memory_peak": 5, "wall_ms": 5},
            0,
        ),
    ],
    ids=["huge-size", "huge-time", "limits-not-numbers"],  # the last: no bars, no crash
)
def test_numbers_no_runner_writes_are_refused_not_a_crash_in_every_report(
    tmp_path: Path, started: dict[str, object], finished: dict[str, object], code: int
) -> None:
    _one_job_run(tmp_path, started, finished)
    for fmt in ("md", "html", "junit", "json", "github"):
        result = sandrun("report", str(tmp_path), "--format", fmt)
        assert result.returncode == code, (fmt, result.stderr)
        assert "internal error" not in result.stderr
        assert code == 0 or "[audit.bad-record]" in result.stderr


def test_verify_says_what_the_published_head_established(tmp_path: Path) -> None:
    """``--expect-head`` was checked silently: the line now says the published checkpoint is a
    prefix of the log, and whether its own signature was verified, not checked, or by no --pub."""
    keys = tmp_path / "keys"
    for name in ("runner", "other"):
        assert sandrun("keys", "generate", "--id", name, "--out", str(keys)).returncode == 0
    out = tmp_path / "out"
    _demo(out, env={"SANDRUN_SIGNING_KEY": (keys / "runner.key").read_text()})
    note = str(out / "checkpoint.txt")
    size = (out / "checkpoint.txt").read_text().splitlines()[1]
    prefix = f"the published checkpoint (size {size}) is a prefix of the log"
    for pub, code, said in (
        ((), 0, prefix + " (its signature not checked)"),
        (("--pub", str(keys / "runner.pub")), 0, prefix + ", its signature by sandrun verified"),
        (("--pub", str(keys / "other.pub")), 4, prefix + " (signed by none of the --pub keys)"),
    ):
        result = sandrun("audit", "verify", str(out), "--expect-head", note, *pub)
        assert result.returncode == code and result.stdout.rstrip().endswith(said), (pub, result.stdout)
    head = (out / "checkpoint.txt").read_text().splitlines()[3].split()[1]
    bare = sandrun("audit", "verify", str(out), "--expect-head", head)
    assert bare.stdout.rstrip().endswith("the published head hash is a record of the log")
    assert "published" not in sandrun("audit", "verify", str(out)).stdout


def test_a_crlf_or_bom_copy_of_a_log_is_damage_that_says_what_the_copy_did(tmp_path: Path) -> None:
    """A text-mode copy (CRLF line ends) or an editor's byte order mark changes every hashed byte
    after it: the log is damaged, and the line says which of the two it is."""
    with AuditLog.open(tmp_path, run_id="r1") as log:
        log.append("run.started", {})
        log.seal(None)
    data = (tmp_path / "audit.jsonl").read_bytes()
    for name, copy, said in (
        ("crlf", data.replace(b"\n", b"\r\n"), "the line ends in CR"),
        ("bom", b"\xef\xbb\xbf" + data, "byte order mark"),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "audit.jsonl").write_bytes(copy)
        result = sandrun("audit", "verify", str(tmp_path / name))
        assert result.returncode == 4 and result.stdout.startswith("damaged:")
        assert "audit.jsonl:1: [audit.edited]" in result.stderr and said in result.stderr, result.stderr
