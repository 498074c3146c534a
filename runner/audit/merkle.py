"""The audit records as leaves of an RFC 6962 (RFC 9162 §2.1) Merkle tree: inclusion and consistency.

A hash chain proves a record only to someone who re-reads every record before it; a Merkle tree
proves one record to someone holding just a tree head, with log2(n) hashes, and proves that a
later log extends an earlier one (an append-only log) the same way. Leaf ``i`` is record ``i``'s
line as stored in ``audit.jsonl``, without its LF; hashes are SHA-256 with RFC 6962's domain
separation (``0x00`` before a leaf, ``0x01`` before two child hashes), so any verifier written from
the RFC (or Go's ``golang.org/x/mod/sumdb/tlog``) checks these proofs.

Generation follows RFC 6962 §2.1.1-2.1.2 (``PATH``, ``PROOF``/``SUBPROOF``); verification follows
RFC 9162 §2.1.3.2 and §2.1.4.2 step by step. Both raise :class:`ValueError` for impossible input
(an index outside the tree, an old size above the new one); a proof that does not verify is False.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = [
    "EMPTY_ROOT",
    "CompactRange",
    "MerkleTree",
    "leaf_hash",
    "node_hash",
    "root",
    "inclusion_proof",
    "consistency_proof",
    "verify_inclusion",
    "verify_consistency",
]


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


EMPTY_ROOT = hashlib.sha256(b"").digest()
_sha256 = hashlib.sha256


class CompactRange:
    """The root of a growing tree from O(log n) state: what a log's writer and a single pass of
    its verifier keep instead of every leaf.

    ``nodes`` are the heads of the perfect subtrees the leaves so far split into (largest first,
    one per set bit of ``size``); appending merges equal-sized heads like a binary counter, and the
    root folds them smallest first, which is RFC 6962's split at the largest power of two.
    """

    __slots__ = ("size", "nodes")

    def __init__(self, size: int = 0, nodes: Sequence[bytes] = ()) -> None:
        """The empty tree, or one resumed from its ``size`` and ``nodes`` (``ValueError`` unless
        there is one 32-byte node per set bit of ``size``)."""
        if size < 0 or len(nodes) != size.bit_count() or any(len(n) != 32 for n in nodes):
            raise ValueError(f"a tree of {size} leaves has {size.bit_count()} subtree heads of 32 bytes")
        self.size = size
        self.nodes: list[bytes] = list(nodes)

    def append(self, leaf: bytes) -> None:
        """Add leaf hash ``leaf`` as leaf number ``size`` (on ``audit verify``'s hot path)."""
        node, carry = leaf, self.size
        nodes = self.nodes
        while carry & 1:
            node = _sha256(b"\x01" + nodes.pop() + node).digest()  # node_hash, inlined
            carry >>= 1
        nodes.append(node)
        self.size += 1

    @property
    def root(self) -> bytes:
        """MTH of the leaves appended so far."""
        if not self.nodes:
            return EMPTY_ROOT
        head = self.nodes[-1]
        for node in reversed(self.nodes[:-1]):
            head = node_hash(node, head)
        return head


def _split(n: int) -> int:
    """The largest power of two strictly below ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


class MerkleTree:
    """The tree over ``leaves`` (leaf *hashes*), every level kept: each proof then costs log2(n).

    Level ``L`` pairs level ``L-1`` left to right and carries an odd last node up unchanged; its
    node ``j`` is the head of leaves ``[j*2**L, min((j+1)*2**L, n))``, which are exactly the
    subtrees RFC 6962's split at the largest power of two produces.
    """

    def __init__(self, leaves: Sequence[bytes]) -> None:
        self.size = len(leaves)
        self.levels: list[list[bytes]] = [list(leaves)]
        while len(self.levels[-1]) > 1:
            level = self.levels[-1]
            paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                paired.append(level[-1])
            self.levels.append(paired)

    @property
    def root(self) -> bytes:
        """MTH(D[n]); the empty tree's head is SHA-256 of nothing."""
        return self.levels[-1][0] if self.size else EMPTY_ROOT

    def _head(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) for a subtree of the RFC's recursion (aligned, as described above)."""
        height = (end - start - 1).bit_length()
        return self.levels[height][start >> height]

    def inclusion_proof(self, index: int) -> list[bytes]:
        """PATH(index, D[n]): the audit path of leaf ``index``, nearest sibling first."""
        if not 0 <= index < self.size:
            raise ValueError(f"leaf {index} is outside a tree of {self.size}")
        proof = []
        for level in self.levels[:-1]:
            if index ^ 1 < len(level):  # a carried node has no sibling at this level
                proof.append(level[index ^ 1])
            index >>= 1
        return proof

    def consistency_proof(self, old_size: int) -> list[bytes]:
        """PROOF(m, D[n]) for 0 < m <= n (the empty proof when m == n)."""
        if not 0 < old_size <= self.size:
            raise ValueError(f"old size {old_size} is not within 1..{self.size}")
        return self._subproof(old_size, 0, self.size, True)

    def _subproof(self, m: int, start: int, end: int, complete: bool) -> list[bytes]:
        """SUBPROOF(m, D[start:end], complete) of RFC 6962 §2.1.2."""
        if m == end - start:
            return [] if complete else [self._head(start, end)]
        k = _split(end - start)
        if m <= k:
            return [*self._subproof(m, start, start + k, complete), self._head(start + k, end)]
        return [*self._subproof(m - k, start + k, end, False), self._head(start, start + k)]


def root(leaves: Sequence[bytes]) -> bytes:
    return MerkleTree(leaves).root


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    return MerkleTree(leaves).inclusion_proof(index)


def consistency_proof(leaves: Sequence[bytes], old_size: int) -> list[bytes]:
    return MerkleTree(leaves).consistency_proof(old_size)


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], expected_root: bytes
) -> bool:
    """RFC 9162 §2.1.3.2: does ``proof`` put leaf hash ``leaf`` at ``index`` of ``expected_root``'s tree?"""
    if not 0 <= index < size:
        return False
    fn, sn = index, size - 1  # (1) the leaf's index and the last index
    r = leaf  # (2)
    for p in proof:  # (3)
        if sn == 0:  # (3a)
            return False
        if fn & 1 or fn == sn:  # (3b)
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:  # (3c)
            r = node_hash(r, p)
        fn >>= 1  # (3d)
        sn >>= 1
    return sn == 0 and r == expected_root  # (4)


def verify_consistency(
    old_size: int, size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 §2.1.4.2: does ``proof`` show the tree ``old_root`` of ``old_size`` is a prefix of
    the tree ``new_root`` of ``size``?"""
    if not 0 < old_size <= size:
        return False
    if old_size == size:  # (1) the same tree: the proof must be empty and the heads equal
        return not proof and old_root == new_root
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # (2) a power of two: the old root starts the path
        path.insert(0, old_root)
    if not path:  # (3)
        return False
    fn, sn = old_size - 1, size - 1  # (4)
    while fn & 1:  # (5)
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]  # (6)
    for c in path[1:]:  # (7)
        if sn == 0:  # (7a)
            return False
        if fn & 1 or fn == sn:  # (7b)
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:  # (7c)
            sr = node_hash(sr, c)
        fn >>= 1  # (7d)
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0  # (8)
