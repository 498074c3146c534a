"""The worker's answers: a binary form the parent decodes into fresh values, never a pickle.

A worker runs hostile guests; were one to take the worker over, what it writes to the parent (which
holds the audit chain and the signing key) must stay data: malformed, oversized or pickled answers
fail that job as a crash and the worker is killed.
"""

from __future__ import annotations

import os
import pickle
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
from test_executor import EXIT, job, plan_of, wat

from runner import forkserver
from runner.errors import InputError, Location, PolicyDenied, Violation
from runner.results import Outcome
from runner.sandbox import Runtime
from runner.worker import (
    STALL_S,
    _Channel,
    _dumps,
    _Malformed,
    _Pool,
    _WorkerRunner,
    decode_answer,
    encode_answer,
    encode_refusal,
)

FULL = Outcome(
    exit_code=None,
    trap="memory",
    trap_message="linear memory reached the cap \udcff \u202e",
    fuel_used=2**64 - 1,
    memory_peak=64 << 20,
    wall_ms=12,
    stdout=b"\x00out\xff",
    stderr=b"err",
    stdout_dropped=5,
    stderr_dropped=7,
    invoke_results=("1", "x"),
    invoke={"export": "add", "wave": '(1, "x")', "json": [1, "x"]},
    net_hops=({"url": "https://example.test/", "status": 200, "bytes": 3},),
    rss_peak=None,
)


@pytest.mark.parametrize("rss", [None, 0, 123 << 20])
def test_an_outcome_survives_the_trip_exactly(rss: int | None) -> None:
    assert decode_answer(encode_answer(FULL, rss)) == Outcome(**{**_fields(FULL), "rss_peak": rss})
    plain = Outcome(
        exit_code=255,  # the largest exit status
        trap=None,
        trap_message=None,
        fuel_used=None,
        memory_peak=None,  # a component's: not measured
        wall_ms=0,
        stdout=b"",
        stderr=b"",
    )
    assert decode_answer(encode_answer(plain, rss)) == Outcome(**{**_fields(plain), "rss_peak": rss})


def test_an_answer_in_lower_case_is_the_same_answer_from_a_worker_that_then_exits() -> None:
    answer = encode_answer(FULL, None)
    assert decode_answer(answer[:1].lower() + answer[1:]) == decode_answer(answer)


def test_the_full_outcome_sets_every_field_so_the_trip_covers_them_all() -> None:
    """A field added to Outcome but not to the answer's encoding fails the trip above."""
    unset = [
        name
        for name, spec in Outcome.__dataclass_fields__.items()
        if name not in ("exit_code", "rss_peak") and getattr(FULL, name) in (None, (), 0, spec.default)
    ]
    assert unset == []


def _fields(outcome: Outcome) -> dict[str, object]:
    return {name: getattr(outcome, name) for name in outcome.__dataclass_fields__}


def _exited(code: int, tail: bytes = b"") -> bytes:
    """An answer saying the guest exited with ``code``, and the JSON tail ``tail``."""
    return b"O" + struct.pack("!BBqQQQQQQQQ", 1, 0, code, 0, 0, 0, 0, 0, 0, 0, 0) + tail


@pytest.mark.parametrize("kind", [PolicyDenied, InputError])
def test_a_refusal_is_raised_again_in_the_parent(kind: type[InputError]) -> None:
    violation = Violation(
        "module.digest-changed", "changed", Location("m.yaml", 3, 4, "/module"), "a" * 64, "b"
    )
    with pytest.raises(kind) as caught:
        decode_answer(encode_refusal(kind(violations=(violation,))))
    assert caught.value.violations == (violation,)


@pytest.mark.parametrize(
    "answer",
    [
        b"",
        b"Z",
        b"O" + b"\x00" * 10,  # a header cut short
        encode_answer(FULL, None)[:-3],  # its JSON tail cut
        encode_answer(FULL, None)[:40],  # output past the end
        b"O" + struct.pack("!BBqQQQQQQQQ", 0, 99, 0, 0, 0, 0, 0, 0, 0, 0, 0),  # unknown trap kind
        b"O" + struct.pack("!BBqQQQQQQQQ", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),  # neither exit nor trap
        b"O" + struct.pack("!BBqQQQQQQQQ", 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0) + b'{"results": [1]}',
        b"D[]",
        b'D[{"rule_id": "x"}]',
        pickle.dumps(("ok", FULL, None)),  # what the parent read before: never unpickled now
        # what a worker taken over could send to make the parent exit 0 or stop the whole run:
        _exited(256),  # `sandrun exec` exits with the guest's code: 256 would read as 0
        _exited(-1),
        _exited(0, b'{"invoke": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),  # RecursionError
        _exited(0, b'{"invoke": {"json": ' + b"[" * 201 + b"]" * 201 + b"}}"),  # too deep to log
        _exited(0, b'{"invoke": {"export": "f", "wave": "1.5", "json": [1.5]}}'),  # no floats in a log
        _exited(0, b'{"hops": [{"id": "other-job", "verdict": "allowed"}]}'),  # a hop names its job
    ],
)
def test_a_malformed_answer_is_refused(answer: bytes) -> None:
    with pytest.raises(_Malformed):
        decode_answer(answer)


def _posing_worker(
    tmp_path: Path, answer: bytes, stall_s: float = STALL_S, pace_s: float | None = None
) -> tuple[Outcome, bool]:
    """A job whose 'worker' writes ``answer`` (``pace_s``: a byte at a time, that far apart, from
    a thread): what the parent makes of it, and whether the process it took for the worker is
    gone (killed and reaped)."""
    root = tmp_path
    plan = plan_of(job(root, wat(EXIT.format(code=0)), "posed"))
    with Runtime(cache_dir=root / "cache") as runtime:
        runner = _WorkerRunner(_Pool(runtime, plan, root, passthrough=False))
        ours, theirs = socket.socketpair()
        process = forkserver.start().Process(target=time.sleep, args=(60,), daemon=True)
        process.start()
        pid = process.pid
        ours.settimeout(stall_s)  # as _WorkerRunner._start sets it (STALL_S)
        runner.process, runner.conn = process, _Channel(ours)
        runner.poller.register(ours.fileno(), 1)  # POLLIN
        if pace_s is None:
            theirs.sendall(answer)
        else:
            threading.Thread(target=_trickle, args=(theirs, answer, pace_s), daemon=True).start()
        outcome = runner._answer(plan.jobs[0], runner.conn, time.monotonic(), threading.Event())
        theirs.close()
        gone = runner.process is None and not _alive(pid)
        runner.close()
        return outcome, gone


def _trickle(sock: socket.socket, data: bytes, pace_s: float) -> None:
    for index in range(len(data)):
        try:
            sock.sendall(data[index : index + 1])
        except OSError:  # the parent closed its end: it gave up on the answer
            return
        time.sleep(pace_s)


def _alive(pid: int | None) -> bool:
    try:
        os.kill(pid or 0, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_worker_answering_garbage_is_killed_and_its_job_crashes(tmp_path: Path) -> None:
    payload = pickle.dumps(os.system)
    outcome, gone = _posing_worker(tmp_path, struct.pack("!Q", len(payload)) + payload)
    assert outcome.trap == "crash" and "unknown kind" in (outcome.trap_message or "")
    assert gone


def test_an_answer_longer_than_the_job_may_produce_is_not_read(tmp_path: Path) -> None:
    outcome, gone = _posing_worker(tmp_path, struct.pack("!Q", 1 << 40) + b"O" * 1000)
    assert outcome.trap == "crash" and "larger than" in (outcome.trap_message or "")
    assert gone


def test_the_setup_reaches_the_worker_unchanged(tmp_path: Path) -> None:
    # the plan's dataclasses go as (class, field values): the same objects come out
    plan = plan_of(job(tmp_path, wat(EXIT.format(code=3)), "a"), job(tmp_path, wat(EXIT.format(code=0)), "b"))
    message = ("setup", plan.jobs, FULL)  # FULL: not a plan dataclass, pickled as usual
    assert pickle.loads(_dumps(message)) == message


def test_a_worker_stalling_mid_answer_is_killed_within_its_bound(tmp_path: Path) -> None:
    started = time.monotonic()
    outcome, gone = _posing_worker(tmp_path, struct.pack("!Q", 100) + b"O" * 10, stall_s=0.5)
    assert outcome.trap == "crash" and "unfinished" in (outcome.trap_message or "")
    assert gone and time.monotonic() - started < 30  # generous: the bound here is 0.5 s


def test_a_worker_trickling_its_answer_is_killed_when_the_whole_answer_is_late(tmp_path: Path) -> None:
    """Each byte comes well within the stall bound; the answer as a whole does not: the bound is
    the whole message's (a byte per 0.1 s of a 4 MiB answer would otherwise take 5 days)."""
    started = time.monotonic()
    answer = _exited(0, b'{"message": "' + b"x" * 200 + b'"}')
    framed = struct.pack("!Q", len(answer)) + answer
    outcome, gone = _posing_worker(tmp_path, framed, stall_s=0.5, pace_s=0.05)
    assert outcome.trap == "crash" and "unfinished" in (outcome.trap_message or "")
    assert gone and time.monotonic() - started < 10  # generous: the bound is 0.5 s; unbounded it took 12 s
