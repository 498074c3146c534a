"""Proofs about a verified log against its signed checkpoints: inclusion of a record, consistency
with an earlier checkpoint, and the entries a tile export publishes.

Everything is proved against the log's *latest checkpoint*, the one its last seal holds: its size
``n`` is the number of records before that seal, and (for a log sealed since checkpoints sign the
Merkle root) its hash line is the RFC 6962 root of those ``n`` records, which is recomputed here
and must match. A checkpoint of an older log signs only the chain head; its tree is then computed
from the records alone, and the next seal signs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from runner.audit.checkpoint import Checkpoint, parse_checkpoint
from runner.audit.merkle import MerkleTree, leaf_hash, verify_consistency, verify_inclusion
from runner.audit.record import RUN_SEALED
from runner.canonical import canonical_json
from runner.errors import AuditError, InputError, Location

__all__ = ["LogTree", "log_tree"]


@dataclass(frozen=True, slots=True)
class LogTree:
    """The records a log's latest checkpoint covers (as Merkle leaves) and that checkpoint."""

    records: Sequence[dict[str, Any]]
    entries: list[bytes]
    checkpoint: Checkpoint
    tree: MerkleTree

    def inclusion(self, index: int) -> dict[str, Any]:
        """The inclusion proof of record ``index`` in the checkpoint's tree, checked before it is given."""
        size = self.tree.size
        if not 0 <= index < size:
            raise InputError.one(
                "audit.no-record",
                f"no record {index} under the log's latest checkpoint, which covers records 0..{size - 1}"
                " (a seal, and any record after it, is covered by the next run's checkpoint)",
            )
        leaf = self.tree.levels[0][index]
        proof = self.tree.inclusion_proof(index)
        _checked(verify_inclusion(leaf, index, size, proof, self.tree.root))
        return {"leaf_index": index, "leaf_hash": leaf.hex()} | self._tail(proof)

    def consistency(self, old: Checkpoint, where: Location) -> dict[str, Any]:
        """The consistency proof from ``old``, an earlier checkpoint that must be of this log."""
        size = old.size
        old_root = MerkleTree(self.tree.levels[0][:size]).root
        prefix = 0 < size <= self.tree.size and self.records[size - 1]["hash"] == old.chain_head
        if not prefix or old.merkle_root not in (None, old_root.hex()):
            raise AuditError.one(
                "audit.not-a-prefix", f"the checkpoint's {size} records are not the start of this log", where
            )
        proof = self.tree.consistency_proof(size)
        _checked(verify_consistency(size, self.tree.size, old_root, self.tree.root, proof))
        return {"old_size": size, "old_root": old_root.hex()} | self._tail(proof)

    def _tail(self, proof: Sequence[bytes]) -> dict[str, Any]:
        return {
            "tree_size": self.tree.size,
            "root": self.tree.root.hex(),
            "proof": [p.hex() for p in proof],
            "checkpoint": self.checkpoint.text,
        }


def _checked(proved: bool) -> None:
    if not proved:  # fail closed: never hand out a proof that does not verify
        raise RuntimeError("the generated Merkle proof does not verify")


def log_tree(records: Sequence[dict[str, Any]], where: Location) -> LogTree:
    """The tree under the latest checkpoint of a *verified* log's records (``AuditError`` if the
    log has no seal, or its records do not hash to the root the checkpoint signs)."""
    seals = [r for r in records if r["kind"] == RUN_SEALED]
    if not seals:
        raise AuditError.one(
            "audit.unsealed", "the log has no sealed run, so no checkpoint to prove against", where
        )
    checkpoint = parse_checkpoint(seals[-1]["data"]["checkpoint"])
    entries = [canonical_json(r) for r in records[: checkpoint.size]]
    tree = MerkleTree([leaf_hash(e) for e in entries])
    if checkpoint.merkle_root not in (None, tree.root.hex()):
        message = "the records are not the canonical JSON the latest checkpoint's Merkle root signs"
        raise AuditError.one("audit.seal-mismatch", message, where)
    return LogTree(records, entries, checkpoint, tree)
