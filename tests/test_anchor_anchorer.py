"""Anchorer with a fake chain and wallet: batching, confirmation, reorgs, privacy."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fakes.chain import FakeChain, FakeWallet

from p2pep.anchor import opreturn
from p2pep.anchor.batching import BatchPolicy
from p2pep.anchor.document import build_document
from p2pep.anchor.merkle import MerkleTree
from p2pep.anchor.verify import verify_document
from p2pep.canonical import contract_hash
from p2pep.lnd.client import LndError
from services.anchor.anchorer import Anchorer, AnchorerConfig


def terms(i: int) -> dict[str, Any]:
    return {"v": 1, "contract_id": f"c-{i}", "meter_id": f"meter-{i:04d}", "energy_wh": 1234 + i,
            "price_msat_per_kwh": 98_765}


def config(k: int = 3, every: int = 2, m: int = 1000) -> AnchorerConfig:
    return AnchorerConfig(policy=BatchPolicy(every_blocks=every, max_leaves=m), min_confirmations=k,
                          watch_depth=50)


class Rig:
    def __init__(self, tmp: Path, cfg: AnchorerConfig) -> None:
        self.chain = FakeChain()
        self.chain.mine(100)
        self.wallet = FakeWallet(self.chain)
        self.path = str(tmp / "anchor.sqlite")
        self.cfg = cfg
        self.anchorer = Anchorer(self.path, self.wallet, self.chain, cfg, relay=self.chain)

    async def add(self, ids: range) -> None:
        await self.anchorer.add_leaves([("contract", f"c-{i}", contract_hash(terms(i))) for i in ids])

    async def block(self, n: int = 1) -> None:
        """Mine n blocks, telling the anchorer about each one."""
        for _ in range(n):
            await self.anchorer.on_block(self.chain.mine())

    async def verify(self, i: int, k: int = 1) -> Any:
        proofs = await self.anchorer.proofs_for(f"c-{i}")
        doc = build_document(terms(i), None, [p.proof for p in proofs]).to_json()
        return await verify_document(doc, self.chain, min_confirmations=k, signed=False)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    r = Rig(tmp_path, config())
    await r.anchorer.open()
    yield r
    await r.anchorer.close()


async def test_batch_closes_after_n_blocks_and_proofs_confirm(rig: Rig) -> None:
    await rig.add(range(5))
    await rig.block()  # one block: batch still open (N=2)
    assert rig.wallet.payloads == []
    await rig.block()
    assert len(rig.wallet.payloads) == 1
    assert await rig.anchorer.proofs_for("c-0") == []  # not mined yet
    await rig.block()
    (p,) = await rig.anchorer.proofs_for("c-0")
    assert (p.confirmations, p.confirmed) == (1, False)
    assert (p.proof.leaf_index, p.proof.tree_size, p.proof.vout) == (0, 5, 1)
    await rig.block(2)
    (p,) = await rig.anchorer.proofs_for("c-0")
    assert (p.confirmations, p.confirmed) == (3, True)
    assert [b.state for b in await rig.anchorer.batches()] == ["confirmed"]
    for i in range(5):
        report = await rig.verify(i, k=3)
        assert report.ok, report.render()


async def test_a_mined_batch_records_its_vsize_and_contracts_newest_first(rig: Rig) -> None:
    await rig.add(range(3))
    await rig.anchorer.add_leaves([("settlement", "c-0", b"s" * 32)])  # c-0's summary: still one contract
    await rig.block(2)
    (sent,) = await rig.anchorer.batches()
    assert (sent.state, sent.vsize, sent.size, sent.contracts) == ("broadcast", None, 4, 3)
    await rig.block()
    (mined,) = await rig.anchorer.batches()
    raw = await rig.chain.get_raw_transaction(mined.txid or "")
    assert mined.vsize == raw["vsize"] > 0
    await rig.add(range(3, 5))
    await rig.block(3)
    newest = await rig.anchorer.batches(limit=1)
    assert [b.id for b in newest] == [mined.id + 1] and newest[0].contracts == 2


async def test_a_version_1_store_gains_vsize_and_keeps_its_batches(tmp_path: Path) -> None:
    import sqlite3

    r = Rig(tmp_path, config())
    await r.anchorer.open()
    await r.add(range(2))
    await r.block(3)
    await r.anchorer.close()
    with sqlite3.connect(r.path) as conn:  # as version 1 wrote it: no vsize column (nor raw_hex, version 3's)
        conn.execute("ALTER TABLE anchor_batches DROP COLUMN vsize")
        conn.execute("ALTER TABLE anchor_txs DROP COLUMN raw_hex")
        conn.execute("PRAGMA user_version = 1")
    again = Anchorer(r.path, r.wallet, r.chain, r.cfg)
    await again.open()
    try:
        (b,) = await again.batches()
        assert (b.state, b.size, b.vsize) == ("mined", 2, None)  # mined before the column: unknown, not made up
        with sqlite3.connect(r.path) as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
            assert conn.execute("SELECT raw_hex FROM anchor_txs").fetchall() == [(None,)]  # sent before: not kept
    finally:
        await again.close()


async def test_batch_closes_at_m_leaves_immediately(tmp_path: Path) -> None:
    r = Rig(tmp_path, config(every=100, m=3))
    async with r.anchorer:
        await r.add(range(7))
        assert len(r.wallet.payloads) == 2  # two full batches sent, one leaf waiting
        batches = await r.anchorer.batches()
        assert [b.size for b in batches] == [3, 3] and all(b.state == "broadcast" for b in batches)
        await r.block()
        assert len(await r.anchorer.proofs_for("c-5")) == 1
        assert await r.anchorer.proofs_for("c-6") == []


async def test_thousand_contracts_one_transaction_one_op_return(tmp_path: Path) -> None:
    r = Rig(tmp_path, config(every=10, m=1000))
    async with r.anchorer:
        await r.add(range(1000))
        assert len(r.wallet.payloads) == 1
        (txid,) = r.chain.mempool
        await r.block()
        outs = (await r.chain.get_raw_transaction(txid))["vout"]
        anchors = [o for o in outs if o["scriptPubKey"]["hex"].startswith("6a")]
        assert len(anchors) == 1
        root = opreturn.decode_script(bytes.fromhex(anchors[0]["scriptPubKey"]["hex"]))
        assert root == MerkleTree([contract_hash(terms(i)) for i in range(1000)]).root
        for i in range(0, 1000, 37):
            assert (await r.verify(i)).ok


async def test_payload_is_only_tag_version_root(rig: Rig) -> None:
    await rig.add(range(4))
    await rig.block(2)
    (payload,) = rig.wallet.payloads
    (batch,) = await rig.anchorer.batches()
    assert payload == b"P2PEP\x01" + batch.root and len(payload) == 38
    for i in range(4):
        t = terms(i)
        for secret in (t["meter_id"].encode(), t["contract_id"].encode(), t["energy_wh"].to_bytes(2, "big"),
                       str(t["energy_wh"]).encode(), contract_hash(t)):
            assert secret not in payload
    assert rig.wallet.fee_rates == [1]


async def test_reorg_reanchors_same_root_in_new_tx(rig: Rig) -> None:
    await rig.add(range(6))
    await rig.block(2)
    await rig.block(3)
    (before,) = await rig.anchorer.proofs_for("c-2")
    assert before.confirmed
    old_block, old_tx = before.proof.block_hash, before.proof.txid

    rig.chain.reorg(3, drop={old_tx})  # like a competing chain that never saw our tx
    await rig.anchorer.on_block(rig.chain.mine(4))  # a longer chain: the anchoring block is gone
    (batch,) = await rig.anchorer.batches()
    assert batch.reanchors == 1 and batch.state == "broadcast"
    assert await rig.anchorer.proofs_for("c-2") == []  # stale proofs withdrawn
    assert len(rig.wallet.payloads) == 2 and rig.wallet.payloads[0] == rig.wallet.payloads[1]

    await rig.block()
    (after,) = await rig.anchorer.proofs_for("c-2")
    assert after.proof.txid != old_tx and after.proof.block_hash != old_block
    assert after.proof.root == before.proof.root
    assert batch.txids == (old_tx, after.proof.txid)
    for i in range(6):
        assert (await rig.verify(i)).ok
    stale = build_document(terms(2), None, [before.proof]).to_json()
    assert not (await verify_document(stale, rig.chain, signed=False)).ok


async def test_reorg_with_tx_back_in_mempool_reanchors_and_new_proofs_verify(rig: Rig) -> None:
    """btcd invalidateblock: the tip drops, the anchor tx returns to the mempool."""
    await rig.add(range(3))
    await rig.block(2)
    await rig.block()
    (before,) = await rig.anchorer.proofs_for("c-0")
    rig.chain.reorg(1)
    await rig.anchorer.on_block(rig.chain.height)
    assert (await rig.anchorer.batches())[0].reanchors == 1
    await rig.block()  # both the old and the new tx are mined; the batch tracks the new one
    (after,) = await rig.anchorer.proofs_for("c-0")
    assert after.proof.txid != before.proof.txid
    assert (await rig.verify(0)).ok


async def test_old_tx_remined_in_new_chain_just_moves_proofs(rig: Rig) -> None:
    await rig.add(range(3))
    await rig.block(2)
    await rig.block()
    (before,) = await rig.anchorer.proofs_for("c-1")
    rig.chain.reorg(1)
    rig.chain.mine(2)  # the competing chain includes our tx before we look
    await rig.anchorer.on_block(rig.chain.height)
    (after,) = await rig.anchorer.proofs_for("c-1")
    assert after.proof.txid == before.proof.txid and after.proof.block_hash != before.proof.block_hash
    assert len(rig.wallet.payloads) == 1
    assert (await rig.verify(1)).ok


async def test_btcd_restarted_empty_and_resyncing_is_not_a_reorg(rig: Rig) -> None:
    """A regtest btcd SIGKILLed and started again has only genesis and fetches the chain back
    from its peer: while it is behind, the anchoring block is unknown to it and the tx not
    found. That is a node catching up, not a reorg: nothing is withdrawn or sent again."""
    await rig.add(range(3))
    await rig.block(2)
    await rig.block(3)
    (before,) = await rig.anchorer.proofs_for("c-1")
    assert before.confirmed
    mined_at = before.proof.height
    rig.chain.restart_empty()
    await rig.anchorer.on_block(rig.chain.height)  # the tip seen at genesis
    rig.chain.resync(upto=mined_at - 1)
    await rig.anchorer.on_block(rig.chain.height)  # part of the way back
    assert len(rig.wallet.payloads) == 1
    assert [(b.reanchors, b.state) for b in await rig.anchorer.batches()] == [(0, "confirmed")]
    rig.chain.resync()
    await rig.block()
    (after,) = await rig.anchorer.proofs_for("c-1")
    assert after.proof == before.proof and after.confirmed
    assert len(rig.wallet.payloads) == 1
    assert (await rig.verify(1, k=3)).ok


async def test_btcd_catching_up_between_two_questions_is_not_a_reorg(rig: Rig) -> None:
    """The tip the watcher saw is a moment old, and a btcd catching up connects hundreds of
    blocks a second: the tx is not found, then (the next question) its block is in the best
    chain after all. Not a reorg either."""
    await rig.add(range(3))
    await rig.block(2)
    await rig.block(3)
    (before,) = await rig.anchorer.proofs_for("c-0")
    rig.chain.restart_empty()
    rig.chain.after_tx_lookup = rig.chain.resync  # caught up right after the tx was not found
    await rig.anchorer.on_block(0)
    rig.chain.after_tx_lookup = None
    assert len(rig.wallet.payloads) == 1
    assert [(b.reanchors, b.state) for b in await rig.anchorer.batches()] == [(0, "confirmed")]
    await rig.block()
    (after,) = await rig.anchorer.proofs_for("c-0")
    assert after.proof == before.proof and len(rig.wallet.payloads) == 1


async def test_unmined_tx_lost_with_btcds_mempool_is_published_again_not_replaced(rig: Rig) -> None:
    """btcd SIGKILLed (or restarted) forgets its mempool: the anchoring tx it held is gone from
    it but still the wallet's (its coins are spent by it: a new tx may find none). The same tx is
    published again from the store; no second anchor, no wallet call."""
    await rig.add(range(2))
    await rig.block(2)
    (sent,) = await rig.anchorer.batches()
    rig.chain.mempool.clear()  # btcd restarted: its mempool is lost
    rig.wallet.fail = True  # the wallet's coins are in the lost tx: it could not fund another
    await rig.block()
    assert rig.chain.mempool == [sent.txid]
    (b,) = await rig.anchorer.batches()
    assert (b.state, b.txid, b.reanchors) == ("broadcast", sent.txid, 0)
    await rig.block()
    (b,) = await rig.anchorer.batches()
    assert (b.state, b.txid, b.txids) == ("mined", sent.txid, (sent.txid,))
    assert len(rig.wallet.payloads) == 1
    assert (await rig.verify(0)).ok


async def test_dropped_unmined_tx_is_resent(rig: Rig) -> None:
    await rig.add(range(2))
    await rig.block(2)
    (sent,) = await rig.anchorer.batches()
    assert sent.txid is not None
    rig.chain.mempool.clear()  # evicted before being mined, and btcd will not take it again
    rig.chain.refused.add(sent.txid)
    await rig.block()
    assert len(rig.wallet.payloads) == 2
    await rig.block()
    assert (await rig.verify(0)).ok


async def test_coins_all_in_an_unconfirmed_anchor_tx_wait_for_its_change(tmp_path: Path) -> None:
    """lnd spends confirmed coins only: while the hub's one coin is the change of an anchoring
    tx not yet mined (published again after a btcd restart, or a batch closed at once at M
    leaves), the next batch cannot be funded. That passes with the next block: a warning and a
    retry, not an operator's error (a wallet that cannot pay with nothing of ours in flight still
    is one: test_wallet_failure_is_retried_next_block)."""
    r = Rig(tmp_path, config(every=2, m=2))
    await r.anchorer.open()
    try:
        await r.add(range(2))  # closes at M leaves and is sent at once
        (first,) = await r.anchorer.batches()
        assert first.state == "broadcast"
        r.wallet.error = LndError("hub", "SendOutputs", "UNKNOWN: insufficient funds available to construct transaction")
        await r.add(range(2, 4))  # the next batch: the wallet's coin is the first tx's unconfirmed change
        assert [b.state for b in await r.anchorer.batches()] == ["broadcast", "closed"]
        r.wallet.error = None
        await r.block()  # the first tx mined: its change is spendable, the second batch goes out
        assert [b.state for b in await r.anchorer.batches()] == ["mined", "broadcast"]
        await r.block()
        assert [b.state for b in await r.anchorer.batches()] == ["mined", "mined"]
    finally:
        await r.anchorer.close()


@pytest.mark.expected_log_errors(r"^anchor\.send_failed .*wallet has no funds")
async def test_wallet_failure_is_retried_next_block(rig: Rig) -> None:
    await rig.add(range(2))
    rig.wallet.fail = True
    await rig.block(2)
    assert [b.state for b in await rig.anchorer.batches()] == ["closed"]
    rig.wallet.fail = False
    await rig.block()
    assert [b.state for b in await rig.anchorer.batches()] == ["broadcast"]


async def test_duplicates_ignored_and_bad_input_named(rig: Rig) -> None:
    h = hashlib.sha256(b"x").digest()
    assert await rig.anchorer.add_leaf("contract", "c-x", h)
    assert not await rig.anchorer.add_leaf("contract", "c-x", h)
    with pytest.raises(ValueError, match="kind"):
        await rig.anchorer.add_leaf("meter", "c-x", h)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="leaf_hash"):
        await rig.anchorer.add_leaf("contract", "c-x", h[:31])
    with pytest.raises(ValueError, match="contract_id"):
        await rig.anchorer.add_leaf("settlement", "", h)


async def test_pending_leaves_survive_restart(tmp_path: Path) -> None:
    r = Rig(tmp_path, config())
    async with r.anchorer:
        await r.add(range(3))
    again = Anchorer(r.path, r.wallet, r.chain, r.cfg)
    async with again:
        await again.on_block(r.chain.mine(2))
        (batch,) = await again.batches()
        assert batch.size == 3 and len(r.wallet.payloads) == 1


async def test_settlement_leaf_gets_its_own_proof(rig: Rig) -> None:
    await rig.add(range(2))
    s = {"v": 1, "contract_id": "c-0", "delivered_wh": 1000, "paid_msat": 98_765}
    from p2pep.canonical import settlement_hash
    await rig.anchorer.add_leaf("settlement", "c-0", settlement_hash(s))
    await rig.block(2)
    await rig.block()
    proofs = await rig.anchorer.proofs_for("c-0")
    assert [p.proof.leaf for p in proofs] == ["contract", "settlement"]
    doc = build_document(terms(0), s, [p.proof for p in proofs]).to_json()
    assert (await verify_document(doc, rig.chain, signed=False)).ok


async def test_chain_outage_is_survived(rig: Rig) -> None:
    await rig.add(range(2))
    await rig.block(2)
    rig.chain.unavailable = True
    await rig.anchorer.on_block(rig.chain.mine())  # must not raise, nothing is lost
    assert [b.state for b in await rig.anchorer.batches()] == ["broadcast"]
    rig.chain.unavailable = False
    await rig.block()
    assert [b.state for b in await rig.anchorer.batches()] == ["mined"]
    assert (await rig.verify(1)).ok
