"""Run outputs (report.json, junit.xml, summary.md, logs/) and the progress display."""

from __future__ import annotations

import errno
import io
import json
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from runner import outputs
from runner.errors import AuditError
from runner.outputs import LogFolder, log_path
from runner.progress import ProgressDisplay, ProgressEvent, make_progress, wants_live
from runner.report import build_report
from runner.results import JobResult, Outcome

SHA = "c" * 64


def outcome(stdout: bytes, stderr: bytes = b"", exit_code: int = 0) -> Outcome:
    return Outcome(exit_code=exit_code, trap=None, trap_message=None, fuel_used=None, memory_peak=65536,
                   wall_ms=3, stdout=stdout, stderr=stderr, stdout_dropped=5)  # fmt: skip


def row(name: str, status: Any, manifest: str = "docs", ran: Outcome | None = None, **kw: Any) -> JobResult:
    extra: dict[str, Any] = {}
    if ran is not None:
        extra = {"exit_code": ran.exit_code, "wall_ms": ran.wall_ms, "stdout_sha256": ran.stdout_sha256,
                 "stderr_sha256": ran.stderr_sha256, "stdout_truncated": ran.stdout_truncated}  # fmt: skip
    return JobResult(manifest=manifest, name=name, tool="t", module_sha256=SHA, status=status, **extra, **kw)


def sample() -> tuple[dict[str, Any], dict[str, Outcome]]:
    ran = {
        "docs/lint": outcome(b"all good\n", b"warn\n"),
        "docs/bad": outcome(b"\x00\xffbinary", exit_code=1),
    }
    results = [
        row("lint", "passed", ran=ran["docs/lint"]),
        row("bad", "failed", ran=ran["docs/bad"], reason="exit code 1, expected 0"),
        row("later", "skipped", reason="needs docs/bad (failed)"),
    ]
    return build_report(run_id="r1", plan_sha256=SHA, policy="ci", results=results), ran


# -- write_outputs ----------------------------------------------------------------------------


def write_outputs(out: Path, report: dict[str, Any], ran: dict[str, Outcome]) -> None:
    """What api.run does: each job's logs as it ends, then the reports."""
    with LogFolder(out) as logs:
        for job in report["jobs"]:
            outcome = ran.get(f"{job['manifest']}/{job['name']}")
            if outcome is not None:
                logs.add(job["manifest"], job["name"], outcome)
        outputs.write_outputs(out, report, logs)


def test_logs_of_an_unfinished_run_never_replace_the_last_ones(tmp_path: Path) -> None:
    report, ran = sample()
    write_outputs(tmp_path, report, ran)
    with pytest.raises(KeyboardInterrupt), LogFolder(tmp_path) as logs:
        logs.add("docs", "lint", outcome(b"half a run\n"))
        raise KeyboardInterrupt
    assert (tmp_path / "logs/docs/lint.stdout").read_bytes() == b"all good\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_writes_every_output(tmp_path: Path) -> None:
    report, ran = sample()
    write_outputs(tmp_path / "out", report, ran)
    out = tmp_path / "out"
    assert json.loads((out / "report.json").read_text()) == report
    assert ET.parse(out / "junit.xml").getroot().get("tests") == "3"
    assert "docs/bad" in (out / "summary.md").read_text()
    assert (out / "logs/docs/lint.stdout").read_bytes() == b"all good\n"
    assert (out / "logs/docs/lint.stderr").read_bytes() == b"warn\n"
    assert (out / "logs/docs/bad.stdout").read_bytes() == b"\x00\xffbinary"  # as captured, byte for byte
    assert not (out / "logs/docs/later.stdout").exists()  # never ran: no log at all
    assert not (out / "logs/docs/bad.stderr").exists()  # ran, wrote nothing there: no empty file either
    assert sorted(p.name for p in out.iterdir()) == ["junit.xml", "logs", "report.json", "summary.md"]


def test_logs_of_an_earlier_run_do_not_linger(tmp_path: Path) -> None:
    report, ran = sample()
    write_outputs(tmp_path, report, ran)
    only_lint = build_report(run_id="r2", plan_sha256=SHA, policy="ci", results=[report_row(report, "lint")])
    write_outputs(tmp_path, only_lint, {"docs/lint": outcome(b"second\n")})
    assert (tmp_path / "logs/docs/lint.stdout").read_bytes() == b"second\n"
    assert not (tmp_path / "logs/docs/bad.stdout").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def report_row(report: dict[str, Any], name: str) -> JobResult:
    return JobResult.from_dict(next(j for j in report["jobs"] if j["name"] == name))


def test_hand_crafted_names_stay_inside_logs(tmp_path: Path) -> None:
    evil = row("../../escaped", "passed", manifest="..", ran=outcome(b"x"))
    report = build_report(run_id="r", plan_sha256=SHA, policy="ci", results=[evil])
    write_outputs(tmp_path / "out", report, {evil.id: outcome(b"x")})
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert all((tmp_path / "out") in p.parents for p in written)
    assert log_path("..", "../../escaped", "stdout") == Path("logs/__/______escaped.stdout")
    assert not any(p.name == "escaped.stdout" for p in tmp_path.rglob("*"))


def test_a_failure_while_writing_leaves_the_previous_files_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report, ran = sample()
    write_outputs(tmp_path, report, ran)
    before = (tmp_path / "report.json").read_bytes()

    def broken(_: Any) -> str:
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(outputs, "render_junit", broken)
    second = build_report(run_id="r2", plan_sha256=SHA, policy="ci", results=[report_row(report, "lint")])
    with pytest.raises(RuntimeError):
        write_outputs(tmp_path, second, ran)
    assert (tmp_path / "report.json").read_bytes() == before  # written last: still the previous run's
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


# -- progress ---------------------------------------------------------------------------------


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_live_only_on_a_terminal_outside_ci() -> None:
    assert wants_live(Tty(), {}) is True
    assert wants_live(io.StringIO(), {}) is False
    assert wants_live(Tty(), {"CI": "true"}) is False
    assert wants_live(Tty(), {"CI": "1"}) is False
    assert wants_live(Tty(), {"CI": "false"}) is True
    assert wants_live(Tty(), {"TERM": "dumb"}) is False
    assert make_progress(io.StringIO(), environ={})._live is False


def _events() -> list[ProgressEvent]:
    return [
        ProgressEvent(kind="started", job_id="docs/lint-readme", index=0, total=3),
        ProgressEvent(kind="started", job_id="docs/spell", index=1, total=3),
        ProgressEvent(kind="finished", job_id="docs/lint-readme", index=0, total=3, status="passed",
                      wall_ms=12),
        ProgressEvent(kind="finished", job_id="docs/spell", index=1, total=3, status="failed", wall_ms=5,
                      reason="trap: trap (\x1b[2J::error::boom\nnext)"),
        ProgressEvent(kind="finished", job_id="docs/after", index=2, total=3, status="skipped",
                      reason="needs docs/spell (failed)"),
    ]  # fmt: skip


def test_plain_lines() -> None:
    stream = io.StringIO()
    display = ProgressDisplay(stream, live=False)
    for event in _events():
        display(event)
    display.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[1/3] passed docs/lint-readme (12 ms)"
    assert lines[1].startswith("[2/3] failed docs/spell (5 ms): trap: trap (")
    assert "\x1b" not in lines[1] and "::" not in lines[1]
    assert lines[2] == "[3/3] skipped docs/after: needs docs/spell (failed)"
    assert len(lines) == 3


def test_live_line_updates_in_place_and_keeps_failures() -> None:
    stream = Tty()
    clock = iter([0.0, 0.01, 0.02, 0.03, 1.0, 1.1, 2.0])
    display = ProgressDisplay(stream, live=True, width=200, clock=lambda: next(clock))
    for event in _events():
        display(event)
    display.close()
    text = stream.getvalue()
    assert text.count("\n") == 3  # the failure, the skip, and the final line: nothing else scrolls
    assert "\r\x1b[2K[2/3] failed docs/spell" in text
    assert "0 running · 1 failed" in text
    final = text.rstrip("\n").split("\r\x1b[2K")[-1]
    assert final.startswith("sandrun [3/3] 0 running · 1 failed")
    assert "\x1b[2J" not in text  # the guest's escape did not reach the terminal


def test_live_redraws_are_throttled() -> None:
    stream = Tty()
    display = ProgressDisplay(stream, live=True, clock=lambda: 5.0)  # time stands still
    for i in range(50):
        display(ProgressEvent(kind="started", job_id=f"m/j{i}", index=i, total=100))
    assert stream.getvalue().count("\r") == 1


def test_a_failed_log_write_is_raised_not_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report, ran = sample()
    write_outputs(tmp_path, report, ran)

    def full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(outputs, "_write_new", full)
    with LogFolder(tmp_path) as logs:
        logs.add("docs", "lint", outcome(b"lost\n"))
        with pytest.raises(OSError, match="No space left"):
            logs.commit()
    assert (tmp_path / "logs/docs/lint.stdout").read_bytes() == b"all good\n"  # the last run's logs stay
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_queued_output_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer is held up; add() waits rather than queue more than max_pending bytes."""
    gate, peak = threading.Event(), []
    original = outputs._write_new

    def slow(path: Path, data: bytes) -> None:
        gate.wait(10)
        original(path, data)

    monkeypatch.setattr(outputs, "_write_new", slow)
    with LogFolder(tmp_path, max_pending=100) as logs:
        adder = threading.Thread(
            target=lambda: [logs.add("m", f"j{i}", outcome(b"x" * 60)) for i in range(5)]
        )
        adder.start()
        adder.join(0.5)
        peak.append(logs._pending)
        assert adder.is_alive()  # blocked: one 60-byte file queued, the next would pass 100
        gate.set()
        adder.join(10)
        logs.commit()
    assert peak == [60]
    assert sorted(p.name for p in (tmp_path / "logs/m").iterdir()) == [f"j{i}.stdout" for i in range(5)]


# -- a run that cannot write its outputs --------------------------------------------------------


class _FakeLog:
    def __init__(self, *, sealed: bool = False, run_records: int = 3) -> None:
        self.sealed = sealed
        self.run_records = run_records
        self.head = (10, "ab" * 32)


def _stale(out: Path) -> None:
    for name in outputs.REPORT_NAMES:
        (out / name).write_text("of another run")


@pytest.mark.parametrize(
    ("log", "state"),
    [
        (_FakeLog(), "the run ends unsealed after seq 9"),
        (_FakeLog(run_records=0), "nothing of this run was logged"),
        (_FakeLog(sealed=True), "sealed but its checkpoint was not published"),
    ],
)
def test_a_full_disk_is_one_audit_line_and_leaves_no_report(
    tmp_path: Path, log: _FakeLog, state: str
) -> None:
    _stale(tmp_path)
    with pytest.raises(AuditError) as caught, outputs.unsealed_on_failure(log, tmp_path):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "junit.xml"))
    assert caught.value.rule_id == "audit.write-failed" and caught.value.exit_code == 4
    message = caught.value.violations[0].message
    assert "junit.xml: No space left on device" in message and state in message
    assert not any((tmp_path / name).exists() for name in outputs.REPORT_NAMES)


def test_a_failed_log_write_removes_the_reports_and_other_errors_pass_through(tmp_path: Path) -> None:
    _stale(tmp_path)
    failed = AuditError.one("audit.write-failed", "writing the audit log failed")
    with pytest.raises(AuditError) as caught, outputs.unsealed_on_failure(_FakeLog(), tmp_path):
        raise failed
    assert caught.value is failed
    assert not any((tmp_path / name).exists() for name in outputs.REPORT_NAMES)
    _stale(tmp_path)
    with pytest.raises(AuditError), outputs.unsealed_on_failure(_FakeLog(), tmp_path):
        raise AuditError.one("audit.locked", "another writer")
    assert all((tmp_path / name).exists() for name in outputs.REPORT_NAMES)  # not a write failure
