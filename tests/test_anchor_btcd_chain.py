"""BtcdChain maps btcd's JSON-RPC answers and error codes onto the ChainView contract."""

from __future__ import annotations

from typing import Any

import pytest

from p2pep.anchor.btcd_chain import BtcdChain
from p2pep.anchor.chain import ChainNotFound, ChainRejected, ChainUnavailable
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


@pytest.mark.parametrize("message", [
    "Failed to obtain block height: block not in main chain",
    "block dd is not in the main chain",  # the pinned btcd (v0.25.1-...), e.g. after invalidateblock
])
async def test_side_chain_header_reports_minus_one_confirmations(message: str) -> None:
    err = BtcdRpcError("getblockheader", -32603, message)
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


async def test_a_tx_published_again_that_btcd_has_counts_as_published() -> None:
    assert await BtcdChain(FakeRpc({"sendrawtransaction": "ab" * 32})).send_raw_transaction("00") == "ab" * 32
    for err in (BtcdRpcError("sendrawtransaction", -27, "TX rejected: transaction already exists"),
                BtcdRpcError("sendrawtransaction", -26, "TX rejected: already have transaction ab")):
        await BtcdChain(FakeRpc({"sendrawtransaction": err})).send_raw_transaction("00")


@pytest.mark.parametrize(("code", "message"), [
    (-26, "TX rejected: output already spent by transaction cd in the memory pool"),
    (-25, "TX rejected: orphan transaction ab references outputs of unknown or fully-spent transaction cd"),
    (-22, "TX decode failed: unexpected EOF"),
])
async def test_a_refused_tx_is_rejected(code: int, message: str) -> None:
    with pytest.raises(ChainRejected):
        await BtcdChain(FakeRpc({"sendrawtransaction": BtcdRpcError("sendrawtransaction", code, message)})
                        ).send_raw_transaction("00")


async def test_publishing_to_an_unreachable_node_is_unavailable() -> None:
    err = BtcdRpcError("sendrawtransaction", None, "cannot reach btcd at 127.0.0.1:1")
    with pytest.raises(ChainUnavailable):
        await BtcdChain(FakeRpc({"sendrawtransaction": err})).send_raw_transaction("00")
