"""AnchorService messages <-> anchoring types (``anchor.proto`` <-> :mod:`p2pep.anchor.document`).

Shared by the service (``services/anchor``) and its client (:mod:`p2pep.anchor.client`) so
both sides agree on one mapping. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

from p2pep.anchor.document import LEAF_KINDS, AnchorProof, LeafKind
from p2pep.anchor.records import BatchInfo, StoredProof
from p2pep.refusals import InvalidArgument
from p2pep.v1 import anchor_pb2 as pb

KIND_TO_PB: dict[LeafKind, pb.LeafKind.ValueType] = {
    "contract": pb.LEAF_KIND_CONTRACT,
    "settlement": pb.LEAF_KIND_SETTLEMENT,
}
PB_TO_KIND: dict[pb.LeafKind.ValueType, LeafKind] = {v: k for k, v in KIND_TO_PB.items()}


class WireError(InvalidArgument, ValueError):
    """A message field that cannot be mapped; ``field`` names it (INVALID_ARGUMENT)."""


def leaf_to_pb(kind: LeafKind, contract_id: str, leaf_hash: bytes) -> pb.Leaf:
    if kind not in LEAF_KINDS:
        raise WireError("kind", f"expected one of {list(LEAF_KINDS)}, got {kind!r}")
    return pb.Leaf(kind=KIND_TO_PB[kind], contract_id=contract_id, leaf_hash=leaf_hash)


def leaves_from_pb(leaves: Iterable[pb.Leaf]) -> list[tuple[LeafKind, str, bytes]]:
    """Validated ``(kind, contract_id, leaf_hash)`` tuples; WireError names the first bad field."""
    out: list[tuple[LeafKind, str, bytes]] = []
    for i, leaf in enumerate(leaves):
        where = f"leaves[{i}]"
        kind = PB_TO_KIND.get(leaf.kind)
        if kind is None:
            raise WireError(f"{where}.kind", "must be LEAF_KIND_CONTRACT or LEAF_KIND_SETTLEMENT")
        if not leaf.contract_id:
            raise WireError(f"{where}.contract_id", "must not be empty")
        if len(leaf.leaf_hash) != 32:
            raise WireError(f"{where}.leaf_hash", f"expected 32 bytes, got {len(leaf.leaf_hash)}")
        out.append((kind, leaf.contract_id, bytes(leaf.leaf_hash)))
    return out


def proof_to_pb(p: AnchorProof) -> pb.AnchorProof:
    return pb.AnchorProof(
        leaf=KIND_TO_PB[p.leaf], leaf_hash=p.leaf_hash, leaf_index=p.leaf_index,
        tree_size=p.tree_size, path=list(p.path), root=p.root, txid=p.txid,
        block_hash=p.block_hash, height=p.height, vout=p.vout)


def proof_from_pb(m: pb.AnchorProof) -> AnchorProof:
    kind = PB_TO_KIND.get(m.leaf)
    if kind is None:
        raise WireError("proof.leaf", f"unknown leaf kind {m.leaf}")
    return AnchorProof(kind, bytes(m.leaf_hash), m.leaf_index, m.tree_size, tuple(bytes(x) for x in m.path),
                       bytes(m.root), m.txid, m.block_hash, m.height, m.vout)


def proof_status_to_pb(s: StoredProof) -> pb.ProofStatus:
    return pb.ProofStatus(proof=proof_to_pb(s.proof), confirmations=s.confirmations, confirmed=s.confirmed)


def batch_to_pb(b: BatchInfo, best_height: int) -> pb.Batch:
    confs = max(0, best_height - b.height + 1) if b.height is not None else 0
    return pb.Batch(id=b.id, root=b.root, size=b.size, state=b.state, txid=b.txid or "",
                    block_hash=b.block_hash or "", height=b.height or 0, reanchors=b.reanchors,
                    txids=list(b.txids), confirmations=confs, vbytes=b.vsize or 0, contracts=b.contracts)
