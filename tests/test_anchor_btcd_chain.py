"""BtcdChain maps btcd's JSON-RPC answers and error codes onto the ChainView contract."""

from __future__ import annotations

from typing import Any

import pytest

from p2pep.anchor.btcd_chain import BtcdChain
from p2pep.anchor.chain import ChainNotFound, ChainUnavailable
from p2pep.chain.btcd_rpc import BtcdRpcError


class FakeRpc:
    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    async def call(self, method: str, *params: Any) -> Any:
        self.calls.append((method, params))
        a = self.answers[method]
        if isinstance(a, Exception):
            raise a
        return a


async def test_methods_and_params_match_btcd() -> None:
    rpc = FakeRpc({"getrawtransaction": {"txid": "aa", "vout": []}, "getblockheader": {"height": 5},
                   "getblockhash": "bb" * 32, "getblockcount": 7})
    chain = BtcdChain(rpc)
    assert (await chain.get_raw_transaction("aa"))["txid"] == "aa"
    assert (await chain.get_block_header("cc"))["height"] == 5
    assert await chain.get_block_hash(5) == "bb" * 32
    assert await chain.get_best_height() == 7
    assert rpc.calls == [("getrawtransaction", ("aa", 1)), ("getblockheader", ("cc", True)),
                         ("getblockhash", (5,)), ("getblockcount", ())]


async def test_unknown_tx_is_not_found() -> None:
    err = BtcdRpcError("getrawtransaction", -5, "No information available about transaction aa")
    with pytest.raises(ChainNotFound):
        await BtcdChain(FakeRpc({"getrawtransaction": err})).get_raw_transaction("aa")


async def test_missing_txindex_is_a_node_problem_not_a_missing_tx() -> None:
    err = BtcdRpcError("getrawtransaction", -5, "The transaction index must be enabled to query "
                                                "the blockchain (specify --txindex)")
    with pytest.raises(ChainUnavailable, match="--txindex"):
        await BtcdChain(FakeRpc({"getrawtransaction": err})).get_raw_transaction("aa")


async def test_side_chain_header_reports_minus_one_confirmations() -> None:
    err = BtcdRpcError("getblockheader", -32603, "Failed to obtain block height: block not in main chain")
    h = await BtcdChain(FakeRpc({"getblockheader": err})).get_block_header("dd")
    assert h == {"hash": "dd", "confirmations": -1}


async def test_unknown_block_and_height_are_not_found() -> None:
    chain = BtcdChain(FakeRpc({
        "getblockheader": BtcdRpcError("getblockheader", -5, "Block not found"),
        "getblockhash": BtcdRpcError("getblockhash", -1, "Block number out of range"),
    }))
    with pytest.raises(ChainNotFound):
        await chain.get_block_header("ee")
    with pytest.raises(ChainNotFound):
        await chain.get_block_hash(10**6)


async def test_unreachable_node_is_unavailable() -> None:
    err = BtcdRpcError("getblockcount", None, "cannot reach btcd at 127.0.0.1:1")
    with pytest.raises(ChainUnavailable, match="cannot reach"):
        await BtcdChain(FakeRpc({"getblockcount": err})).get_best_height()
