"""When an anchoring batch closes: every N blocks or M leaves, whichever comes first.

Stateless on purpose: the caller (the Anchorer) keeps pending leaves in its store, so a
restart loses nothing; :func:`close_batches` only says which of them form closed batches.
A batch *opens* at the height its oldest pending leaf joined it.  It closes

* ``full``: as soon as it holds ``max_leaves`` leaves (checked on every leaf and block), or
* ``age``: at the first block with ``height >= opened_at + every_blocks``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

K = TypeVar("K")


@dataclass(frozen=True)
class BatchPolicy:
    every_blocks: int = 1  # N
    max_leaves: int = 1000  # M

    def __post_init__(self) -> None:
        if self.every_blocks < 1:
            raise ValueError(f"every_blocks must be >= 1, got {self.every_blocks}")
        if self.max_leaves < 1:
            raise ValueError(f"max_leaves must be >= 1, got {self.max_leaves}")


@dataclass(frozen=True)
class PendingLeaf(Generic[K]):
    key: K  # whatever identifies the leaf for the caller (a row id)
    added_height: int  # best height when the leaf joined


@dataclass(frozen=True)
class ClosedBatch(Generic[K]):
    keys: tuple[K, ...]  # in leaf order: position i is Merkle leaf index i
    reason: Literal["full", "age"]


def close_batches(
    pending: Sequence[PendingLeaf[K]], height: int, policy: BatchPolicy
) -> list[ClosedBatch[K]]:
    """Closed batches formed from ``pending`` (in arrival order) at best ``height``.

    Leaves not returned stay in the open batch.
    """
    out: list[ClosedBatch[K]] = []
    i = 0
    m = policy.max_leaves
    while len(pending) - i >= m:
        out.append(ClosedBatch(tuple(p.key for p in pending[i : i + m]), "full"))
        i += m
    rest = pending[i:]
    if rest:
        opened_at = min(p.added_height for p in rest)
        if height >= opened_at + policy.every_blocks:
            out.append(ClosedBatch(tuple(p.key for p in rest), "age"))
    return out
