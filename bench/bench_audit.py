"""Benchmark: append 100,000 audit records under the default fsync policy, then verify them.

Prints records per second for each, the ratio against the targets (append >= 20,000/s, verify >=
200,000/s), and against baselines measured in the same run on the same records, so the figures
compare rather than time on a noisy machine:

* append baseline: ``json.dumps(sort_keys=True)`` of the record and one ``os.write`` per line, no
  hashing, no fsync: the cheapest way to write the same JSON Lines;
* verify baseline: read the file and ``json.loads`` every line: the cheapest way to read it back.

Run: ``python bench/bench_audit.py [--records 100000] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runner.audit import AuditLog, verify_log  # noqa: E402
from runner.signing import generate_keypair  # noqa: E402

APPEND_TARGET = 20_000
VERIFY_TARGET = 200_000


def job_finished(i: int) -> dict[str, Any]:
    """A realistic ``job.finished`` payload: a JobResult dict plus the plan index (~700-byte line)."""
    return {
        "manifest": "manifests/docs-checks.yaml",
        "name": f"lint-readme-{i:05d}",
        "tool": "mdlint",
        "module_sha256": hashlib.sha256(b"mdlint").hexdigest(),
        "status": "passed" if i % 17 else "failed",
        "exit_code": 0 if i % 17 else 1,
        "trap": None,
        "fuel_used": 123_456_789 + i,
        "memory_peak": 1_179_648,
        "wall_ms": 42 + i % 100,
        "stdout_sha256": hashlib.sha256(b"out%d" % i).hexdigest(),
        "stderr_sha256": hashlib.sha256(b"").hexdigest(),
        "stdout_truncated": False,
        "stderr_truncated": False,
        "reason": None if i % 17 else "exit code 1, expected 0",
        "index": i,
    }


def append_audit(folder: Path, payloads: list[dict[str, Any]]) -> float:
    start = time.perf_counter()
    with AuditLog.open(folder, run_id="bench") as log:  # the documented defaults: 0.2 s / 256 records
        for data in payloads:
            log.append("job.finished", data)
        log.seal(generate_keypair(), "bench")
    return time.perf_counter() - start


def append_baseline(path: Path, payloads: list[dict[str, Any]]) -> float:
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        for seq, data in enumerate(payloads):
            record = {
                "data": data,
                "kind": "job.finished",
                "run": "bench",
                "seq": seq,
                "ts": "2026-11-21T18:00:00.000Z",
            }
            os.write(fd, json.dumps(record, sort_keys=True, separators=(",", ":")).encode() + b"\n")
    finally:
        os.close(fd)
    return time.perf_counter() - start


def verify_audit(path: Path, strict: bool) -> float:
    start = time.perf_counter()
    report = verify_log(path, strict=strict)
    elapsed = time.perf_counter() - start
    assert report.status == "intact", report.problems
    return elapsed


def verify_baseline(path: Path) -> float:
    start = time.perf_counter()
    for line in path.read_bytes().split(b"\n")[:-1]:
        json.loads(line)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    payloads = [job_finished(i) for i in range(args.records)]
    times: dict[str, list[float]] = {k: [] for k in ("append", "append0", "verify", "strict", "verify0")}
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            times["append"].append(append_audit(folder / "log", payloads))
            times["append0"].append(append_baseline(folder / "plain.jsonl", payloads))
            path = folder / "log" / "audit.jsonl"
            times["verify"].append(verify_audit(path, strict=False))
            times["strict"].append(verify_audit(path, strict=True))
            times["verify0"].append(verify_baseline(path))
    n = args.records + 1  # the seal
    rate = {k: n / statistics.median(v) for k, v in times.items()}
    print(f"{args.records:,} job.finished records, median of {args.rounds} rounds")
    rows = (
        ("append", APPEND_TARGET, "append0", "json.dumps + write"),
        ("verify", VERIFY_TARGET, "verify0", "json.loads"),
        ("strict", None, "verify0", "json.loads"),
    )
    for name, target, base, label in rows:
        against = f"target {target:,}: x{rate[name] / target:.2f}" if target else "(verify --strict)"
        print(
            f"{name:<7} {rate[name]:>10,.0f} rec/s  {against}  baseline ({label}) "
            f"{rate[base]:,.0f}: x{rate[name] / rate[base]:.2f}"
        )


if __name__ == "__main__":
    main()
