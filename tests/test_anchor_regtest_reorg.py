"""Issue 5 acceptance: a reorg orphans the anchoring block (btcd ``invalidateblock``).

Runs on its own small network (btcd + hub, no channels) so rewinding the chain cannot
disturb the session network's other tests.

btcd puts the transactions of a disconnected block back into its mempool, so the old
anchoring transaction comes back. Two outcomes follow, both tested:

* **re-anchored**: the anchorer sees the block gone before anything else is mined; it
  withdraws the proofs and publishes the same root in a new transaction; proofs are rewritten
  for the block that mines the new transaction (the old one gets mined as well: harmless).
* **moved**: the longer chain is mined before the anchorer looks; the old transaction is
  already in a new block, so the proofs move to that block, no new transaction.

Either way, every proof verifies against the new best chain and the old ones no longer do.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from anchor_regtest_helpers import AnchorStack, contract_terms, failed

from p2pep.anchor.batching import BatchPolicy
from p2pep.anchor.document import AnchorProof
from p2pep.anchor.records import BatchInfo
from p2pep.regtest import NetworkSpec, RegtestNetwork, wait_for
from services.anchor.anchorer import AnchorerConfig

pytestmark = pytest.mark.regtest
N = 200
K = 2


async def in_mempool(net: RegtestNetwork, *txids: str) -> bool:
    assert net.btcd is not None
    return set(txids) <= set(await net.btcd.call("getrawmempool"))


async def invalidate(net: RegtestNetwork, block_hash: str) -> int:
    """``invalidateblock``; returns the new tip height once the hub's LND has followed."""
    assert net.btcd is not None
    await net.btcd.call("invalidateblock", block_hash)
    tip = await net.btcd.height()
    hub = net.nodes["hub"].client

    async def followed() -> bool:
        return (await hub.get_info()).block_height == tip

    await wait_for(followed, 30, what=f"hub lnd back at height {tip}")
    return tip


async def test_reorg_reanchors_or_moves_the_batch(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    # no relay peer: it would stay on the invalidated branch (see RegtestNetwork.start_btcd)
    net = await RegtestNetwork.up(NetworkSpec(meters=0, btcd_peer=False), tmp_path / "net")
    up_s = time.perf_counter() - t0
    stack: AnchorStack | None = None
    try:
        assert net.btcd is not None
        # a second UTXO, so the hub can re-anchor while its first anchor tx is still unconfirmed
        await net.fund([net.nodes["hub"]], 10_000_000)
        config = AnchorerConfig(policy=BatchPolicy(every_blocks=1, max_leaves=1000), min_confirmations=K,
                                watch_depth=10)
        stack = await AnchorStack.open(net, tmp_path / "anchor.sqlite", config)
        terms = contract_terms(N, "reorg")
        await stack.anchorer.add_leaves([("contract", t.contract_id, t.hash()) for t in terms])

        async def batch() -> BatchInfo:
            [b] = await stack.anchorer.batches()  # type: ignore[union-attr]
            return b

        async def all_verify() -> dict[str, list[AnchorProof]]:
            proofs = {t.contract_id: await stack.proofs(t.contract_id) for t in terms}  # type: ignore[union-attr]
            assert all(len(p) == 1 for p in proofs.values())
            reports = await stack.verify_all(terms, K, proofs)  # type: ignore[union-attr]
            bad = [(t.contract_id, failed(r)) for t, r in zip(terms, reports) if not r.ok]
            assert not bad, bad[:3]
            return proofs

        # --- anchored and confirmed in block B1 ---------------------------------------------
        await net.mine(1)
        await stack.tip()  # the batch is a block old: closed and published
        first_tx = (await batch()).txid
        assert first_tx
        await wait_for(lambda: in_mempool(net, first_tx), 30, what="anchor tx in mempool")
        [b1] = await net.mine(1)
        await net.mine(K - 1)
        await stack.tip()
        b = await batch()
        assert (b.state, b.block_hash, b.txid, b.reanchors) == ("confirmed", b1, first_tx, 0)
        old = await all_verify()

        # --- reorg 1, seen before anything is mined: the root is anchored again -------------
        old_tip = await net.btcd.height()
        await invalidate(net, b1)  # B1 and the block on top of it leave the best chain
        await wait_for(lambda: in_mempool(net, first_tx), 30, what="orphaned anchor tx back in mempool")
        await stack.tip()
        b = await batch()
        assert b.state == "broadcast" and b.reanchors == 1 and b.txid and b.txid != first_tx
        assert b.txids == (first_tx, b.txid) and b.block_hash is None
        assert await stack.proofs(terms[0].contract_id) == []  # withdrawn until the new tx is mined
        second_tx = b.txid
        await wait_for(lambda: in_mempool(net, second_tx), 30, what="re-anchor tx in mempool")
        hashes = await net.mine(K + 1)  # a longer chain than the one B1 was on
        assert await net.btcd.height() > old_tip
        await stack.tip()
        b = await batch()
        assert (b.state, b.txid, b.reanchors) == ("confirmed", second_tx, 1)
        assert b.block_hash in hashes and b.block_hash != b1
        new = await all_verify()
        assert {p[0].txid for p in new.values()} == {second_tx}
        # the documents issued before the reorg no longer verify, and say why
        stale = await stack.verify_all(terms[:5], K, old)
        assert all(failed(r) == ["proofs[0].block"] for r in stale), stale[0].render()
        # (B1's tx was re-mined from the mempool too, so its proof fails on the block, not the tx)

        # --- reorg 2, longer chain mined before the anchorer looks: the proofs move ---------
        b2 = b.block_hash
        assert b2 is not None
        await invalidate(net, b2)
        await wait_for(lambda: in_mempool(net, second_tx), 30, what="anchor tx back in mempool")
        hashes = await net.mine(K + 1)
        await stack.tip()
        b = await batch()
        assert (b.state, b.txid, b.reanchors) == ("confirmed", second_tx, 1)  # same tx, no new one
        assert b.block_hash in hashes and b.block_hash != b2
        moved = await all_verify()
        assert {(p[0].txid, p[0].block_hash) for p in moved.values()} == {(second_tx, b.block_hash)}
        print(f"\nreorg test: network up in {up_s:.1f}s, total {time.perf_counter() - t0:.1f}s; "
              f"txs {b.txids}")
    finally:
        if stack is not None:
            await stack.close()
        await net.down()

