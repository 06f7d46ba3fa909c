"""ChainView over btcd's JSON-RPC (``p2pep.chain.btcd_rpc.BtcdRpc`` or anything with ``call``).

btcd quirks mapped here so the rest of anchoring sees bitcoind-like semantics:

* ``getrawtransaction`` needs btcd's ``--txindex`` for mined transactions; without it btcd
  answers code -5 for every non-mempool tx, which we report as ChainUnavailable (a node
  misconfiguration), not as "tx not found".  When a block is disconnected, btcd drops its
  txindex entries and puts its transactions back in the mempool, so a reorged anchor tx
  comes back without ``blockhash``.
* ``getblockheader hash true`` on a block known but not in the best chain fails with an
  internal error ("Failed to obtain block height", or in the pinned btcd "block <hash> is not
  in the main chain"); we return ``confirmations: -1``.
* ``getblockhash`` above the tip is code -1 (out of range): ChainNotFound.
* ``sendrawtransaction`` of a transaction btcd already has: code -27 (already in the chain) or
  -26 "already have transaction" (in its mempool); both count as published. Any other refusal
  (-25, -26, -22) is ChainRejected.
"""

from __future__ import annotations

from typing import Any, Protocol

from p2pep.anchor.chain import ChainNotFound, ChainRejected, ChainUnavailable
from p2pep.chain.btcd_rpc import BtcdRpcError

RPC_NOT_FOUND = -5  # btcjson.ErrRPCNoTxInfo / ErrRPCBlockNotFound
RPC_OUT_OF_RANGE = -1  # btcjson.ErrRPCOutOfRange
RPC_INTERNAL = -32603
RPC_TX_ALREADY_IN_CHAIN = -27  # btcjson.ErrRPCTxAlreadyInChain
RPC_TX_REFUSED = (-22, -25, -26)  # ErrRPCDeserialization, ErrRPCTxError (orphan...), ErrRPCTxRejected


class RpcCaller(Protocol):
    async def call(self, method: str, *params: Any) -> Any: ...


class BtcdChain:
    def __init__(self, rpc: RpcCaller) -> None:
        self.rpc = rpc

    async def _call(self, method: str, *params: Any) -> Any:
        try:
            return await self.rpc.call(method, *params)
        except BtcdRpcError as exc:
            if exc.code is None:
                raise ChainUnavailable(str(exc)) from exc
            raise

    async def get_raw_transaction(self, txid: str) -> dict[str, Any]:
        try:
            result = await self._call("getrawtransaction", txid, 1)
        except BtcdRpcError as exc:
            if exc.code == RPC_NOT_FOUND:
                if "index" in exc.message.lower():
                    raise ChainUnavailable(
                        "btcd has no transaction index: start btcd with --txindex"
                    ) from exc
                raise ChainNotFound(f"no transaction {txid}") from exc
            raise ChainUnavailable(str(exc)) from exc
        if not isinstance(result, dict):
            raise ChainUnavailable(f"getrawtransaction {txid}: unexpected answer {result!r}")
        return result

    async def get_block_header(self, block_hash: str) -> dict[str, Any]:
        try:
            result = await self._call("getblockheader", block_hash, True)
        except BtcdRpcError as exc:
            if exc.code == RPC_NOT_FOUND:
                raise ChainNotFound(f"no block {block_hash}") from exc
            if exc.code == RPC_INTERNAL and ("height" in exc.message.lower() or "main chain" in exc.message.lower()):
                return {"hash": block_hash, "confirmations": -1}
            raise ChainUnavailable(str(exc)) from exc
        if not isinstance(result, dict):
            raise ChainUnavailable(f"getblockheader {block_hash}: unexpected answer {result!r}")
        return result

    async def get_block_hash(self, height: int) -> str:
        try:
            return str(await self._call("getblockhash", height))
        except BtcdRpcError as exc:
            if exc.code == RPC_OUT_OF_RANGE:
                raise ChainNotFound(f"no block at height {height}") from exc
            raise ChainUnavailable(str(exc)) from exc

    async def get_best_height(self) -> int:
        try:
            return int(await self._call("getblockcount"))
        except BtcdRpcError as exc:
            raise ChainUnavailable(str(exc)) from exc

    async def send_raw_transaction(self, raw_hex: str) -> str:
        try:
            return str(await self._call("sendrawtransaction", raw_hex))
        except BtcdRpcError as exc:
            if exc.code == RPC_TX_ALREADY_IN_CHAIN or "already have transaction" in exc.message.lower():
                return ""
            if exc.code in RPC_TX_REFUSED:
                raise ChainRejected(exc.message) from exc
            raise ChainUnavailable(str(exc)) from exc
