"""The P2PEP Merkle tree: domain-separated, unambiguous, with explicit odd-count handling.

Construction (version 1, see ``docs/anchoring.md``)::

    leaf node  = tagged_hash("P2PEP/merkle-leaf/v1", leaf_hash)          # leaf_hash: 32 bytes
    inner node = tagged_hash("P2PEP/merkle-node/v1", left || right)
    level 0    = [leaf node of each leaf, in batch order]
    level k+1  = inner(level_k[0], level_k[1]), inner(level_k[2], level_k[3]), ...
                 and, when level k has an odd count, its last node is *promoted unchanged*
                 (never paired with a copy of itself: no CVE-2012-2459-style duplicate trees)
    top        = the single node of the last level
    root       = tagged_hash("P2PEP/merkle-root/v1", u64_be(tree_size) || top)

Why the extra root step: with promotion alone, a leaf promoted at the last position of an
odd level also verifies under a *different* (index, size) claim (index 2 of 3 and index 1
of 2 share a path).  Committing the size into the root makes ``(leaf, index, size, path)``
map to a root in exactly one way; the leaf/node tags make a node never pass as a leaf.

A proof is ``(leaf_index, tree_size, path)``: ``path`` lists the sibling nodes bottom-up,
*only for levels where a sibling exists*.  Whether a level has a sibling and on which side
is derived from ``(index, size)``, so the proof carries no direction bits to tamper with.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from p2pep.canonical import tagged_hash

LEAF_TAG = "P2PEP/merkle-leaf/v1"
NODE_TAG = "P2PEP/merkle-node/v1"
ROOT_TAG = "P2PEP/merkle-root/v1"
HASH_LEN = 32
MAX_TREE_SIZE = 2**32  # far above any batch; keeps sizes sane when parsed from documents


class MerkleError(ValueError):
    """A malformed tree input or proof (wrong lengths, index out of range...)."""


def _midstate(tag: str) -> hashlib._Hash:
    # SHA256(SHA256(tag) || SHA256(tag) || msg): the 64-byte prefix is one SHA-256 block, so
    # hashing it once and copying the state gives the same digest as canonical.tagged_hash
    # at a third of the cost (tests assert the equality).
    t = hashlib.sha256(tag.encode()).digest()
    return hashlib.sha256(t + t)


_LEAF = _midstate(LEAF_TAG)
_NODE = _midstate(NODE_TAG)
_ROOT = _midstate(ROOT_TAG)


def leaf_node(leaf_hash: bytes) -> bytes:
    """Level-0 node of a 32-byte leaf hash (``tagged_hash(LEAF_TAG, leaf_hash)``)."""
    h = _LEAF.copy()
    h.update(leaf_hash)
    return h.digest()


def inner_node(left: bytes, right: bytes) -> bytes:
    """Parent of two nodes (``tagged_hash(NODE_TAG, left || right)``)."""
    h = _NODE.copy()
    h.update(left)
    h.update(right)
    return h.digest()


def commit_root(tree_size: int, top: bytes) -> bytes:
    """The anchored root: ``tagged_hash(ROOT_TAG, u64_be(tree_size) || top)``."""
    h = _ROOT.copy()
    h.update(tree_size.to_bytes(8, "big"))
    h.update(top)
    return h.digest()


def reference_root(leaves: Sequence[bytes]) -> bytes:
    """Slow, obviously-correct recomputation with canonical.tagged_hash (for tests and readers)."""
    level = [tagged_hash(LEAF_TAG, x) for x in leaves]
    while len(level) > 1:
        nxt = [tagged_hash(NODE_TAG, level[i] + level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return tagged_hash(ROOT_TAG, len(leaves).to_bytes(8, "big") + level[0])


def _check_size(index: int, size: int) -> None:
    if not 1 <= size <= MAX_TREE_SIZE:
        raise MerkleError(f"tree_size {size} out of range 1..{MAX_TREE_SIZE}")
    if not 0 <= index < size:
        raise MerkleError(f"leaf_index {index} out of range 0..{size - 1}")


def path_length(index: int, size: int) -> int:
    """How many siblings a proof for leaf ``index`` of a ``size``-leaf tree has."""
    _check_size(index, size)
    n = 0
    while size > 1:
        if index ^ 1 < size:
            n += 1
        index >>= 1
        size = (size + 1) >> 1
    return n


class MerkleTree:
    """All levels of one batch's tree; O(N) hashes to build, O(log N) per proof."""

    def __init__(self, leaves: Sequence[bytes]) -> None:
        if not leaves:
            raise MerkleError("a Merkle tree needs at least one leaf")
        if len(leaves) > MAX_TREE_SIZE:
            raise MerkleError(f"too many leaves ({len(leaves)})")
        for i, leaf in enumerate(leaves):
            if len(leaf) != HASH_LEN:
                raise MerkleError(f"leaf {i} is {len(leaf)} bytes, expected {HASH_LEN}")
        level = [leaf_node(x) for x in leaves]
        self.levels: list[list[bytes]] = [level]
        while len(level) > 1:
            nxt = [inner_node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                nxt.append(level[-1])  # lone last node promoted unchanged
            self.levels.append(nxt)
            level = nxt
        self.size = len(leaves)
        self.root = commit_root(self.size, level[0])

    def proof(self, index: int) -> list[bytes]:
        """Sibling path (bottom-up, present levels only) for leaf ``index``."""
        _check_size(index, self.size)
        path: list[bytes] = []
        for level in self.levels[:-1]:
            sib = index ^ 1
            if sib < len(level):
                path.append(level[sib])
            index >>= 1
        return path

    def proofs(self) -> list[list[bytes]]:
        """Every leaf's path, in leaf order (N log N output, nothing recomputed)."""
        return [self.proof(i) for i in range(self.size)]


def root_from_path(leaf_hash: bytes, index: int, size: int, path: Sequence[bytes]) -> bytes:
    """The root a proof commits to; raises MerkleError if the proof is malformed."""
    _check_size(index, size)
    if len(leaf_hash) != HASH_LEN:
        raise MerkleError(f"leaf hash is {len(leaf_hash)} bytes, expected {HASH_LEN}")
    node = leaf_node(leaf_hash)
    k = 0
    idx, n = index, size
    while n > 1:
        if idx ^ 1 < n:
            if k >= len(path):
                raise MerkleError(
                    f"path has {len(path)} elements, index {index} of size {size} needs "
                    f"{path_length(index, size)}"
                )
            sib = path[k]
            if len(sib) != HASH_LEN:
                raise MerkleError(f"path[{k}] is {len(sib)} bytes, expected {HASH_LEN}")
            node = inner_node(node, sib) if idx & 1 == 0 else inner_node(sib, node)
            k += 1
        idx >>= 1
        n = (n + 1) >> 1
    if k != len(path):
        raise MerkleError(
            f"path has {len(path)} elements, index {index} of size {size} needs {k}"
        )
    return commit_root(size, node)


def verify_proof(
    leaf: bytes, index: int, size: int, path: Sequence[bytes], root: bytes
) -> bool:
    """True iff ``leaf`` is at ``index`` of the ``size``-leaf tree whose root is ``root``."""
    try:
        return root_from_path(leaf, index, size, path) == root
    except MerkleError:
        return False
