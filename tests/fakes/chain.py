"""In-memory chain and wallet with btcd-like behaviour, for tests (no I/O).

:class:`FakeChain` keeps a best chain of blocks, a mempool and orphaned blocks.  Like btcd,
disconnecting blocks (:meth:`FakeChain.reorg`) puts their transactions back in the mempool
(unless dropped), and a transaction is only reported with ``blockhash`` while its block is
in the best chain.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from p2pep.anchor.chain import ChainNotFound, ChainRejected, ChainUnavailable

_counter = itertools.count()


def _fresh_hash(kind: str) -> str:
    return hashlib.sha256(f"{kind}-{next(_counter)}".encode()).hexdigest()


@dataclass
class FakeBlock:
    hash: str
    height: int
    txids: list[str]


@dataclass
class FakeChain:
    blocks: list[FakeBlock] = field(default_factory=list)  # best chain, index == height
    mempool: list[str] = field(default_factory=list)
    txs: dict[str, list[str]] = field(default_factory=dict)  # txid -> output scripts (hex)
    orphaned: dict[str, FakeBlock] = field(default_factory=dict)
    unavailable: bool = False
    calls: int = 0
    after_tx_lookup: Callable[[], None] | None = None  # runs after each get_raw_transaction (races)
    refused: set[str] = field(default_factory=set)  # txids send_raw_transaction refuses (a conflict...)
    _peer_chain: list[FakeBlock] = field(default_factory=list)  # what a restarted node resyncs from

    def __post_init__(self) -> None:
        if not self.blocks:
            self.blocks.append(FakeBlock(_fresh_hash("block"), 0, []))

    # -- test controls --------------------------------------------------------------
    @property
    def height(self) -> int:
        return len(self.blocks) - 1

    def add_tx(self, scripts_hex: list[str], txid: str | None = None) -> str:
        txid = txid or _fresh_hash("tx")
        self.txs[txid] = scripts_hex
        self.mempool.append(txid)
        return txid

    def mine(self, n: int = 1) -> int:
        for _ in range(n):
            block = FakeBlock(_fresh_hash("block"), len(self.blocks), list(self.mempool))
            self.mempool.clear()
            self.blocks.append(block)
        return self.height

    def reorg(self, depth: int, drop: set[str] | None = None) -> None:
        """Disconnect the top ``depth`` blocks; their txs return to the mempool unless in ``drop``."""
        for _ in range(depth):
            block = self.blocks.pop()
            self.orphaned[block.hash] = block
            self.mempool[:0] = [t for t in block.txids if t not in (drop or set())]

    def restart_empty(self) -> None:
        """btcd SIGKILLed and started again in regtest mode: its block database deleted, its
        mempool lost; only genesis is left until :meth:`resync` fetches the chain from a peer."""
        self._peer_chain = list(self.blocks)
        del self.blocks[1:]
        self.mempool.clear()

    def resync(self, upto: int | None = None) -> None:
        """Fetch the chain back from the peer (up to height ``upto``, else all of it)."""
        peer = self._peer_chain
        end = len(peer) if upto is None else upto + 1
        self.blocks[len(self.blocks):] = peer[len(self.blocks):end]

    def block_of(self, txid: str) -> FakeBlock | None:
        return next((b for b in self.blocks if txid in b.txids), None)

    def _io(self) -> None:
        self.calls += 1
        if self.unavailable:
            raise ChainUnavailable("fake chain is down")

    # -- ChainView --------------------------------------------------------------------
    async def get_raw_transaction(self, txid: str) -> dict[str, Any]:
        try:
            return await self._raw_transaction(txid)
        finally:
            if self.after_tx_lookup is not None:
                self.after_tx_lookup()

    async def _raw_transaction(self, txid: str) -> dict[str, Any]:
        self._io()
        if txid not in self.txs or (txid not in self.mempool and self.block_of(txid) is None):
            raise ChainNotFound(txid)
        result: dict[str, Any] = {
            "txid": txid,
            "hex": f"raw:{txid}",  # what send_raw_transaction takes back
            "vsize": 94 + 8 * len(self.txs[txid]),  # btcd gives the virtual size; any stable positive number here
            "vout": [
                {"n": n, "value": 0, "scriptPubKey": {"hex": s}} for n, s in enumerate(self.txs[txid])
            ],
        }
        block = self.block_of(txid)
        if block is not None:
            result["blockhash"] = block.hash
            result["confirmations"] = self.height - block.height + 1
        return result

    async def get_block_header(self, block_hash: str) -> dict[str, Any]:
        self._io()
        for b in self.blocks:
            if b.hash == block_hash:
                return {"hash": b.hash, "height": b.height, "confirmations": self.height - b.height + 1}
        if block_hash in self.orphaned:
            return {"hash": block_hash, "confirmations": -1}
        raise ChainNotFound(block_hash)

    async def get_block_hash(self, height: int) -> str:
        self._io()
        if 0 <= height <= self.height:
            return self.blocks[height].hash
        raise ChainNotFound(str(height))

    async def get_best_height(self) -> int:
        self._io()
        return self.height

    # -- TxRelay -------------------------------------------------------------------------
    async def send_raw_transaction(self, raw_hex: str) -> str:
        self._io()
        txid = raw_hex.removeprefix("raw:")
        if txid in self.refused or txid not in self.txs:
            raise ChainRejected(f"TX rejected: {txid}")
        if txid not in self.mempool and self.block_of(txid) is None:
            self.mempool.append(txid)
        return txid


P2WPKH_CHANGE = "0014" + "11" * 20


@dataclass
class FakeWallet:
    """Publishes [change, OP_RETURN] transactions (anchor at vout 1) into a FakeChain."""

    chain: FakeChain
    payloads: list[bytes] = field(default_factory=list)
    fee_rates: list[int] = field(default_factory=list)
    fail: bool = False
    error: Exception | None = None  # raised by send_op_return instead (an lnd error, say)

    async def send_op_return(self, payload: bytes, sat_per_vbyte: int) -> str:
        if self.error is not None:
            raise self.error
        if self.fail:
            raise RuntimeError("wallet has no funds")
        self.payloads.append(payload)
        self.fee_rates.append(sat_per_vbyte)
        script = bytes([0x6A, len(payload)]) + payload
        return self.chain.add_tx([P2WPKH_CHANGE, script.hex()])
