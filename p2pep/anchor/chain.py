"""What anchoring needs from a Bitcoin node: a small async protocol, btcd-verbose shaped.

Implemented for real by :class:`p2pep.anchor.btcd_chain.BtcdChain`; tests use ``tests/fakes/chain.py``.
"""

from __future__ import annotations

from typing import Any, Protocol


class ChainError(RuntimeError):
    """Base of the errors a chain view raises."""


class ChainNotFound(ChainError):
    """The node does not know the transaction / block / height asked for."""


class ChainUnavailable(ChainError):
    """The node cannot answer (unreachable, misconfigured, no tx index...)."""


class ChainRejected(ChainError):
    """The node refused a transaction (a conflict, an input spent or missing...)."""


class ChainView(Protocol):
    async def get_raw_transaction(self, txid: str) -> dict[str, Any]:
        """btcd ``getrawtransaction txid 1``: needs ``vout[].n``, ``vout[].scriptPubKey.hex``,
        and, when mined in a best-chain block, ``blockhash`` and ``confirmations``.
        Raises ChainNotFound if the node has no such transaction."""
        ...

    async def get_block_header(self, block_hash: str) -> dict[str, Any]:
        """btcd ``getblockheader hash true``: ``height``, ``confirmations`` (-1 if the block is
        known but not in the best chain). Raises ChainNotFound for an unknown block."""
        ...

    async def get_block_hash(self, height: int) -> str:
        """Hash of the best-chain block at ``height``; ChainNotFound above the tip."""
        ...

    async def get_best_height(self) -> int:
        """Height of the best chain's tip."""
        ...


class AnchorWallet(Protocol):
    async def send_op_return(self, payload: bytes, sat_per_vbyte: int) -> str:
        """Publish a transaction with one OP_RETURN output carrying ``payload`` (plus change),
        paid from the operator's wallet; return its txid (RPC byte order)."""
        ...


class TxRelay(Protocol):
    async def send_raw_transaction(self, raw_hex: str) -> str:
        """btcd ``sendrawtransaction``: publish a signed transaction (again); its txid. A
        transaction the node already has counts as published. Raises ChainRejected if the
        node refuses it, ChainUnavailable if it cannot answer."""
        ...
