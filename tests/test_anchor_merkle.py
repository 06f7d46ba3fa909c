"""Merkle construction: every leaf of every size verifies, nothing else does."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pep.anchor.merkle import (
    LEAF_TAG,
    NODE_TAG,
    MerkleError,
    MerkleTree,
    inner_node,
    leaf_node,
    path_length,
    reference_root,
    root_from_path,
    verify_proof,
)
from p2pep.canonical import tagged_hash


def leaves(n: int, salt: str = "") -> list[bytes]:
    return [hashlib.sha256(f"{salt}{i}".encode()).digest() for i in range(n)]


def test_fast_hashes_equal_canonical_tagged_hash() -> None:
    a, b = leaves(2)
    assert leaf_node(a) == tagged_hash(LEAF_TAG, a)
    assert inner_node(a, b) == tagged_hash(NODE_TAG, a + b)


def test_every_leaf_of_every_size_up_to_70_verifies() -> None:
    for n in range(1, 71):
        xs = leaves(n)
        tree = MerkleTree(xs)
        assert tree.root == reference_root(xs)
        for i, path in enumerate(tree.proofs()):
            assert len(path) == path_length(i, n)
            assert verify_proof(xs[i], i, n, path, tree.root)


def test_single_leaf_tree_has_empty_path() -> None:
    (x,) = leaves(1)
    tree = MerkleTree([x])
    assert tree.proof(0) == []
    assert verify_proof(x, 0, 1, [], tree.root)


def test_odd_node_is_promoted_not_duplicated() -> None:
    # Bitcoin's duplicate-last rule makes [a, b, c] and [a, b, c, c] share a root
    # (CVE-2012-2459); here they must differ.
    a, b, c = leaves(3)
    assert MerkleTree([a, b, c]).root != MerkleTree([a, b, c, c]).root
    # and the lone node really is promoted unchanged one level up
    t = MerkleTree([a, b, c])
    assert t.levels[1] == [inner_node(leaf_node(a), leaf_node(b)), leaf_node(c)]


def test_size_is_committed_so_position_claims_are_unambiguous() -> None:
    # Without the size commitment, leaf 2 of 3 would also verify as leaf 1 of 2.
    xs = leaves(3)
    t = MerkleTree(xs)
    path = t.proof(2)
    assert verify_proof(xs[2], 2, 3, path, t.root)
    assert not verify_proof(xs[2], 1, 2, path, t.root)


def test_inner_node_cannot_pose_as_leaf() -> None:
    xs = leaves(4)
    t = MerkleTree(xs)
    left_pair = t.levels[1][0]
    assert not verify_proof(left_pair, 0, 2, [t.levels[1][1]], t.root)


def test_malformed_inputs_raise() -> None:
    with pytest.raises(MerkleError):
        MerkleTree([])
    with pytest.raises(MerkleError, match="leaf 0 is 31 bytes"):
        MerkleTree([b"x" * 31])
    t = MerkleTree(leaves(5))
    with pytest.raises(MerkleError, match="leaf_index 5 out of range"):
        t.proof(5)
    x = leaves(5)[0]
    with pytest.raises(MerkleError, match="path has 2 elements"):
        root_from_path(x, 0, 5, t.proof(0)[:2])
    with pytest.raises(MerkleError, match="path has 4 elements"):
        root_from_path(x, 0, 5, t.proof(0) + [x])
    assert not verify_proof(x, 0, 0, [], t.root)
    assert not verify_proof(x, -1, 5, t.proof(0), t.root)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), data=st.data())
def test_property_random_leaf_verifies(n: int, data: st.DataObject) -> None:
    xs = leaves(n, salt="p")
    t = MerkleTree(xs)
    i = data.draw(st.integers(0, n - 1))
    assert verify_proof(xs[i], i, n, t.proof(i), t.root)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 200), data=st.data(), stranger=st.binary(min_size=32, max_size=32))
def test_property_no_proof_for_leaf_not_in_tree(n: int, data: st.DataObject, stranger: bytes) -> None:
    xs = leaves(n, salt="q")
    if stranger in xs:
        return
    t = MerkleTree(xs)
    i = data.draw(st.integers(0, n - 1))
    # the stranger fails with every leaf's path, at every claimed position and size
    for j in (i, 0, n - 1):
        assert not verify_proof(stranger, j, n, t.proof(j), t.root)
    assert not verify_proof(stranger, i, n + 1, t.proof(i), t.root)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 200), data=st.data())
def test_property_tampered_proof_fails(n: int, data: st.DataObject) -> None:
    xs = leaves(n, salt="r")
    t = MerkleTree(xs)
    i = data.draw(st.integers(0, n - 1))
    path = t.proof(i)
    k = data.draw(st.integers(0, len(path) - 1))
    bit = data.draw(st.integers(0, 255))
    bad = list(path)
    bad[k] = bytes(b ^ (1 << (bit % 8)) if j == bit // 8 else b for j, b in enumerate(bad[k]))
    assert not verify_proof(xs[i], i, n, bad, t.root)
    other = data.draw(st.integers(0, n - 1).filter(lambda j: xs[j] != xs[i]))
    if other != i:
        assert not verify_proof(xs[i], other, n, path, t.root)
    assert not verify_proof(xs[i], i, n, path[::-1], t.root) or path == path[::-1]


def test_documented_test_vector() -> None:
    """The worked example in docs/anchoring.md (leaves = SHA256 of bytes 0x00, 0x01, 0x02)."""
    from p2pep.anchor import opreturn

    xs = [hashlib.sha256(bytes([i])).digest() for i in range(3)]
    t = MerkleTree(xs)
    assert t.levels[1][0].hex() == "ea453d06db4aff27afe08f8f59385f6943f46c4834eabb0a187f6d36bf6b0cc1"
    assert t.levels[1][1].hex() == "13936719352622295aec2715cc90cf9ed3f7fe200c080c41b294a2e22a08352a"
    assert t.levels[2][0].hex() == "1454b2a7b884b3aa08b9a8af244d3f808ff148c7e2e8672ef4cb0e6c277523eb"
    assert t.root.hex() == "fa6ffa7648aef9c87976964c498877f498fabcb8d17d6bee88b8880f06553ebb"
    assert [p.hex() for p in t.proof(2)] == ["ea453d06db4aff27afe08f8f59385f6943f46c4834eabb0a187f6d36bf6b0cc1"]
    assert opreturn.encode_script(t.root).hex() == (
        "6a26" + "5032504550" + "01" + "fa6ffa7648aef9c87976964c498877f498fabcb8d17d6bee88b8880f06553ebb")
