"""What the anchor service reports: a contract's proofs with their depth, a batch's progress.

Kept by the service (:mod:`services.anchor.anchorer`), carried by its gRPC API
(:mod:`p2pep.anchor.wire`) and returned by :class:`p2pep.anchor.client.AnchorClient`.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pep.anchor.document import AnchorProof


@dataclass(frozen=True)
class StoredProof:
    """A leaf's proof with how deep its block is; ``confirmed`` once that is at least the
    service's ``min_confirmations``."""

    contract_id: str
    proof: AnchorProof
    confirmations: int
    confirmed: bool


@dataclass(frozen=True)
class BatchInfo:
    """A batch of leaves and its root on its way to the chain: closed, broadcast, mined, confirmed."""

    id: int
    root: bytes
    size: int
    state: str
    txid: str | None
    block_hash: str | None
    height: int | None
    reanchors: int
    txids: tuple[str, ...]  # every tx that ever anchored this root, oldest first
    vsize: int | None = None  # the mined anchoring tx's virtual size (vbytes); None until mined
    contracts: int = 0  # distinct contracts among its leaves (a contract's terms and its summary are two)
