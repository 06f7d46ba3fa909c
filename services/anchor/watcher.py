"""Polls btcd's best tip and hands every change to the anchorer (``Anchorer.on_block``).

A tip change is noticed by height *or* hash, so a reorg to a chain of the same length
(a changed hash at a known height) is seen as well as one that shortens the chain
(``invalidateblock``).  The anchorer re-checks its recent batches on every call; the
watcher only decides *when* to call it and counts what kind of change it saw.

Polling rather than btcd's websocket notifications: one code path that also recovers by
itself after btcd restarts, at the cost of ``poll_s`` latency, which is nothing against
block intervals.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import structlog

from p2pep.anchor.chain import ChainError
from services.anchor.metrics import CHAIN_REORGS, CHAIN_UP, POLL_ERRORS, TIP_HEIGHT

log = structlog.get_logger(__name__)

Change = Literal["first", "extended", "reorg"]


@dataclass(frozen=True)
class Tip:
    height: int
    hash: str


class TipSource(Protocol):
    async def get_best_height(self) -> int: ...

    async def get_block_hash(self, height: int) -> str: ...


def classify(old: Tip | None, new: Tip, hash_now_at_old_height: str | None) -> Change | None:
    """What happened between two polls (pure).

    ``hash_now_at_old_height`` is the best chain's block at ``old.height`` as of the new poll
    (None if that height no longer exists).  None means "nothing changed".
    """
    if old is None:
        return "first"
    if new == old:
        return None
    if new.height > old.height and hash_now_at_old_height == old.hash:
        return "extended"
    return "reorg"  # shorter, same height with another hash, or the old tip left the chain


class BlockWatcher:
    def __init__(self, chain: TipSource, on_block: Callable[[int], Awaitable[None]], poll_s: float) -> None:
        self.chain = chain
        self.on_block = on_block
        self.poll_s = poll_s
        self.tip: Tip | None = None
        self._stop = asyncio.Event()

    async def poll_once(self) -> Change | None:
        """Look at the tip once; on a change call ``on_block`` and return what kind it was.

        The tip is remembered only after ``on_block`` succeeded, so a failure is retried on
        the next poll.  Raises ChainError if btcd cannot be read.
        """
        height = await self.chain.get_best_height()
        new = Tip(height, await self.chain.get_block_hash(height))
        old = self.tip
        at_old: str | None = None
        if old is not None and new != old and new.height > old.height:
            at_old = await self.chain.get_block_hash(old.height)
        change = classify(old, new, at_old)
        if change is None:
            return None
        if change == "reorg":
            CHAIN_REORGS.inc()
            log.warning("anchor.chain_reorg", old_height=old.height if old else None,
                        old_hash=old.hash if old else None, height=new.height, hash=new.hash)
        await self.on_block(new.height)
        self.tip = new
        TIP_HEIGHT.set(new.height)
        return change

    async def run(self) -> None:
        """Poll every ``poll_s`` until :meth:`stop`; never raises for chain or handler errors."""
        while not self._stop.is_set():
            try:
                await self.poll_once()
                CHAIN_UP.set(1)
            except ChainError as exc:
                CHAIN_UP.set(0)
                POLL_ERRORS.inc()
                log.warning("anchor.poll_failed", error=str(exc))
            except Exception:  # a bug or a store error must not kill the watcher; retried next poll
                POLL_ERRORS.inc()
                log.exception("anchor.block_handling_failed")
            try:
                await asyncio.wait_for(self._stop.wait(), self.poll_s)
            except TimeoutError:
                pass

    def stop(self) -> None:
        """Ask :meth:`run` to return after the block it is handling (if any)."""
        self._stop.set()
