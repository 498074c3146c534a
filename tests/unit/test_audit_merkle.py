"""RFC 6962 Merkle proofs over audit records, checked by a second verifier written here from the
RFC's recursive definitions (MTH, PATH, SUBPROOF), not from RFC 9162's iterative algorithms that
runner.audit.merkle uses."""

from __future__ import annotations

import hashlib

import pytest

from runner.audit.merkle import (
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root,
    verify_consistency,
    verify_inclusion,
)


def _h(*parts: bytes) -> bytes:
    return hashlib.sha256(b"".join(parts)).digest()


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def _mth(data: list[bytes]) -> bytes:
    """RFC 6962 §2.1: MTH over the *entries* (not leaf hashes)."""
    if not data:
        return _h()
    if len(data) == 1:
        return _h(b"\x00", data[0])
    k = _k(len(data))
    return _h(b"\x01", _mth(data[:k]), _mth(data[k:]))


def _root_from_path(index: int, size: int, leaf: bytes, proof: list[bytes]) -> bytes | None:
    """Undo PATH(m, D[n]) = PATH(m, D[0:k]) : MTH(D[k:n]) (or its mirror), last element first."""
    if size == 1:
        return None if proof else leaf
    if not proof:
        return None
    *rest, sibling = proof
    k = _k(size)
    if index < k:
        left = _root_from_path(index, k, leaf, rest)
        return None if left is None else _h(b"\x01", left, sibling)
    right = _root_from_path(index - k, size - k, leaf, rest)
    return None if right is None else _h(b"\x01", sibling, right)


def _heads_from_subproof(
    m: int, n: int, proof: list[bytes], complete: bool, old: bytes
) -> tuple[bytes, bytes]:
    """Undo SUBPROOF(m, D[n], b): the (old subtree, new subtree) hashes it commits to."""
    if m == n:
        if complete:
            return old, old
        node = proof.pop()
        return node, node
    k = _k(n)
    sibling = proof.pop()
    if m <= k:
        old_part, new_part = _heads_from_subproof(m, k, proof, complete, old)
        return old_part, _h(b"\x01", new_part, sibling)
    old_part, new_part = _heads_from_subproof(m - k, n - k, proof, False, old)
    return _h(b"\x01", sibling, old_part), _h(b"\x01", sibling, new_part)


def _independent_consistency(m: int, n: int, old: bytes, new: bytes, proof: list[bytes]) -> bool:
    pending = list(proof)
    try:
        got_old, got_new = _heads_from_subproof(m, n, pending, True, old)
    except IndexError:
        return False
    return not pending and got_old == old and got_new == new


RECORDS = [f'{{"seq":{i},"data":{{"n":{i * i}}}}}'.encode() for i in range(300)]
LEAVES = [leaf_hash(r) for r in RECORDS]


def _indices(n: int) -> set[int]:
    return {0, n - 1, n // 2, (n * 7) // 11, max(0, n - 2)} & set(range(n))


@pytest.mark.parametrize("n", range(1, 301))
def test_inclusion_proofs_verify_independently(n: int) -> None:
    head = root(LEAVES[:n])
    assert head == _mth(RECORDS[:n])
    for index in _indices(n):
        proof = inclusion_proof(LEAVES[:n], index)
        assert _root_from_path(index, n, LEAVES[index], proof) == head
        assert verify_inclusion(LEAVES[index], index, n, proof, head)
        # a wrong leaf, index, size or path element is refused by both verifiers
        assert not verify_inclusion(leaf_hash(b"forged"), index, n, proof, head)
        assert _root_from_path(index, n, leaf_hash(b"forged"), proof) != head
        if n > 1:
            assert not verify_inclusion(LEAVES[index], (index + 1) % n, n, proof, head)
            flipped = [proof[0][:-1] + bytes([proof[0][-1] ^ 1]), *proof[1:]]
            assert not verify_inclusion(LEAVES[index], index, n, flipped, head)
            assert _root_from_path(index, n, LEAVES[index], flipped) != head
        assert not verify_inclusion(LEAVES[index], index, index, proof, head)  # size must exceed index


@pytest.mark.parametrize("n", range(1, 301))
def test_consistency_proofs_verify_independently_after_appends(n: int) -> None:
    new = root(LEAVES[:n])
    sizes = {1, n, n // 2 or 1, max(1, n - 1), max(1, (n * 3) // 5)} | {2**i for i in range(9) if 2**i <= n}
    for m in sizes:
        old = root(LEAVES[:m])
        proof = consistency_proof(LEAVES[:n], m)
        assert _independent_consistency(m, n, old, new, proof), (m, n)
        assert verify_consistency(m, n, old, new, proof), (m, n)
        if m < n:
            # a rewritten old tree (one record changed) is not consistent with the new head
            forged_old = root([leaf_hash(b"edited"), *LEAVES[1:m]])
            assert not verify_consistency(m, n, forged_old, new, proof)
            assert not _independent_consistency(m, n, forged_old, new, proof)
            assert not verify_consistency(m, n, old, new, proof[:-1])


def test_impossible_requests_are_refused() -> None:
    with pytest.raises(ValueError):
        inclusion_proof(LEAVES[:3], 3)
    with pytest.raises(ValueError):
        consistency_proof(LEAVES[:3], 0)
    assert root([]) == hashlib.sha256(b"").digest()
    assert not verify_consistency(4, 3, root(LEAVES[:4]), root(LEAVES[:3]), [])


def test_compact_range_root_and_resume_match_the_rfc_definition() -> None:
    from runner.audit.merkle import CompactRange

    data = [b"record %d" % i for i in range(300)]
    grown = CompactRange()
    assert grown.root == _h()
    for n in range(1, 301):
        grown.append(leaf_hash(data[n - 1]))
        assert grown.root == _mth(data[:n])
        resumed = CompactRange(grown.size, grown.nodes)  # what a seal stores, read back
        resumed.append(leaf_hash(b"next"))
        assert resumed.root == _mth(data[:n] + [b"next"])
    with pytest.raises(ValueError):
        CompactRange(5, grown.nodes[:1])  # 5 leaves are two subtrees
    with pytest.raises(ValueError):
        CompactRange(1, [b"short"])
