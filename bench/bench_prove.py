"""Benchmark: Merkle proofs over a 100,000-record audit log, and `policy prove` on the shipped policies.

Prints, per record, the time to build an inclusion proof and to verify it as ratios to one SHA-256
of a record (the baseline, measured in the same run), and against what a hash chain needs for the
same question (re-hashing every record before it: on average half the log); then a consistency
proof, the tlog-tiles export and the scan a run does when it opens a log that does not end in a
seal holding the tree (an old log, or after an unsealed run), per record as ratios to the same
baseline; and the time of a containment proof between the
shipped policies against the time of loading the two policies.

Run: ``python bench/bench_prove.py [--records 100000] [--samples 2000]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from runner.api import load_policy  # noqa: E402
from runner.audit.chain import _tree_of  # noqa: E402
from runner.audit.checkpoint import Checkpoint  # noqa: E402
from runner.audit.merkle import MerkleTree, leaf_hash, verify_consistency, verify_inclusion  # noqa: E402
from runner.audit.tiles import tile_files  # noqa: E402
from runner.prove import prove  # noqa: E402


def _records(n: int) -> list[bytes]:
    """~700-byte canonical JSON lines shaped like ``job.finished`` records."""
    return [
        json.dumps(
            {
                "seq": i,
                "kind": "job.finished",
                "data": {"name": f"lint-{i:06d}", "stdout_sha256": "0" * 64},
                "pad": "x" * 560,
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        for i in range(n)
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=2_000)
    args = parser.parse_args()
    records = _records(args.records)
    rng = random.Random(6962)

    start = time.perf_counter()
    for line in records:
        hashlib.sha256(line).digest()
    sha = (time.perf_counter() - start) / args.records
    print(f"baseline: one SHA-256 of a record, {sha * 1e6:.2f} µs")

    start = time.perf_counter()
    tree = MerkleTree([leaf_hash(r) for r in records])
    build = time.perf_counter() - start
    print(
        f"tree over {args.records:,} records: {build:.2f} s ({build / args.records * 1e6:.1f} µs per record)"
    )

    picks = [rng.randrange(args.records) for _ in range(args.samples)]
    start = time.perf_counter()
    proofs = [tree.inclusion_proof(i) for i in picks]
    generate = (time.perf_counter() - start) / args.samples
    start = time.perf_counter()
    ok = all(
        verify_inclusion(leaf_hash(records[i]), i, tree.size, p, tree.root)
        for i, p in zip(picks, proofs, strict=True)
    )
    verify = (time.perf_counter() - start) / args.samples
    assert ok

    # Baseline: what a hash chain needs to show the same record, on average half the log re-hashed.
    chain_picks = picks[: max(1, args.samples // 100)]
    start = time.perf_counter()
    for i in chain_picks:
        for line in records[: i + 1]:
            hashlib.sha256(line).digest()
    chain = (time.perf_counter() - start) / len(chain_picks)
    print(f"inclusion proof, per record: generate {generate / sha:.0f}x, verify {verify / sha:.0f}x "
          f"the baseline ({len(proofs[0])} hashes); chain re-hash to the same record "
          f"{chain / sha:,.0f}x: verify is {chain / verify:,.0f}x cheaper")  # fmt: skip

    old = args.records // 3
    start = time.perf_counter()
    proof = tree.consistency_proof(old)
    consistency = time.perf_counter() - start
    old_root = MerkleTree(tree.levels[0][:old]).root
    start = time.perf_counter()
    assert verify_consistency(old, tree.size, old_root, tree.root, proof)
    check = time.perf_counter() - start
    print(
        f"consistency proof {old:,} -> {tree.size:,}: "
        f"generate {consistency / sha:.0f}x, verify {check / sha:.0f}x the baseline"
    )

    note = Checkpoint.of_tree("bench", tree.size, tree.root.hex(), "0" * 64)
    start = time.perf_counter()
    files = tile_files(records, note)
    export = (time.perf_counter() - start) / args.records
    print(f"tlog tiles ({len(files):,} files): {export / sha:.1f}x the baseline per record")
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "audit.jsonl"
        log.write_bytes(b"".join(line + b"\n" for line in records))
        start = time.perf_counter()
        assert _tree_of(log, log.stat().st_size).root == tree.root
        scan = time.perf_counter() - start
    print(f"re-reading a log without a resumable seal: {scan / args.records / sha:.1f}x the baseline "
          f"per record ({scan:.2f} s for {args.records:,})")  # fmt: skip

    rounds = 20
    start = time.perf_counter()
    for _ in range(rounds):
        default = load_policy(REPO / "policies" / "default.yaml", REPO)
        ci = load_policy(REPO / "policies" / "ci-example.yaml", REPO)
    loading = (time.perf_counter() - start) / rounds
    start = time.perf_counter()
    for _ in range(rounds):
        prove(default, ci, REPO)
        prove(ci, default, REPO)
    proving = (time.perf_counter() - start) / rounds / 2
    print(f"policy prove on the shipped policies: {proving * 1e3:.1f} ms per direction, "
          f"{proving / loading:.2f}x loading both policies ({loading * 1e3:.1f} ms)")  # fmt: skip


if __name__ == "__main__":
    main()
