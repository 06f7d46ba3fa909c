"""Acceptance tests of issue 2 on the real regtest network (btcd + lnd)."""

from __future__ import annotations

import os
import secrets

import pytest

from p2pep.regtest import RegtestNetwork, wait_for

pytestmark = pytest.mark.regtest


async def test_network_is_up(regtest: RegtestNetwork) -> None:
    st = await regtest.status()
    names = [n["name"] for n in st["nodes"]]
    assert names[:4] == ["hub", "meter-1", "meter-2", "meter-3"]
    for n in st["nodes"][1:4]:
        assert any(c["active"] and c["local"] > 0 and c["remote"] > 0 for c in n["channels"])
    assert os.path.exists(st["binaries"]["lncli"]) and os.path.exists(st["binaries"]["btcctl"])


async def test_sub_satoshi_increment_pays_through_hub_for_a_proportional_fee(regtest: RegtestNetwork) -> None:
    """A contract's last partial increment can be worth less than 1 sat (750 msat here)."""
    m1, m2 = regtest.nodes["meter-1"].client, regtest.nodes["meter-2"].client
    inv = await m2.add_invoice(750, memo="acceptance: 3 Wh at 250 sat/kWh")
    res = await m1.pay(inv.payment_request)
    assert res.status == "SUCCEEDED" and res.hops == 2 and res.value_msat == 750
    assert res.fee_msat == 0  # 0.1 % of 750 msat, which lnd rounds down; no base fee
    big = await m2.add_invoice(10_000_000, memo="acceptance: 10,000 sat")
    assert (await m1.pay(big.payment_request, fee_limit_msat=100_000)).fee_msat == 10_000
    nodes = [regtest.nodes[n].client for n in ("meter-1", "hub", "meter-2")]

    async def settled() -> bool:  # leave no HTLC in flight for the tests that follow
        for c in nodes:
            if any(ch.pending_htlcs for ch in await c.list_channels()):
                return False
        states = [(await m2.lookup_invoice(i.r_hash)).state for i in (inv, big)]
        return states == [1, 1]  # SETTLED

    await wait_for(settled, 30, what="both invoices settled, no HTLC in flight")


async def test_can_send_sees_what_the_channel_balance_does_not(regtest: RegtestNetwork) -> None:
    """lnd's pathfinding knows the real bandwidth: the balance above the reserve is not all
    sendable (the opener keeps a commitment fee buffer); the meter's conservative estimate is."""
    from services.meter.lightning import spendable_sat

    m1, hub = regtest.nodes["meter-1"], regtest.nodes["hub"]
    (ch,) = [c for c in await m1.client.list_channels(active_only=True) if c.remote_pubkey == hub.info.pubkey]
    above_reserve = ch.local_balance - ch.local_constraints.chan_reserve_sat
    estimate = spendable_sat(ch)
    assert ch.initiator and 0 < estimate < above_reserve
    assert await m1.client.can_send(hub.info.pubkey, estimate * 1000)
    assert not await m1.client.can_send(hub.info.pubkey, above_reserve * 1000)
    assert await m1.client.can_send(regtest.nodes["meter-2"].info.pubkey, 10_000)


async def test_pay_invoice_through_hub(regtest: RegtestNetwork) -> None:
    m1, m2, hub = regtest.nodes["meter-1"].client, regtest.nodes["meter-2"].client, regtest.nodes["hub"].client
    amount = 12_345
    b1, b2, bh = [(await c.channel_balance()).local_balance.sat for c in (m1, m2, hub)]
    inv = await m2.add_invoice(amount * 1000, memo="acceptance: pay through hub")
    res = await m1.pay(inv.payment_request, fee_limit_msat=amount * 10)  # 1 %; the hub takes 0.1 %
    assert res.status == "SUCCEEDED" and res.hops == 2 and res.value_msat == amount * 1000

    async def settled() -> bool:
        return (await m2.lookup_invoice(inv.r_hash)).state == 1  # SETTLED

    await wait_for(settled, 30, what="invoice settled at meter-2")

    async def moved() -> bool:
        n2 = (await m2.channel_balance()).local_balance.sat
        n1 = (await m1.channel_balance()).local_balance.sat
        return n2 - b2 == amount and b1 - n1 >= amount

    await wait_for(moved, 30, what="channel balances updated")
    n1 = (await m1.channel_balance()).local_balance.sat
    fee_sat = res.fee_msat // 1000
    assert res.fee_msat > 0  # the hub charges its routing fee
    assert b1 - n1 in (amount + fee_sat, amount + fee_sat + 1)

    async def hub_earned() -> bool:
        # the hub's outgoing HTLC (to meter-2) can settle before its incoming one (from meter-1):
        # its balance is down by the amount until both commitments are updated
        nh = (await hub.channel_balance()).local_balance.sat
        return nh - bh in (fee_sat, fee_sat + 1, fee_sat - 1)

    await wait_for(hub_earned, 30, what="the hub's balance up by its fee")


async def test_keysend_with_custom_record(regtest: RegtestNetwork) -> None:
    m1, m2 = regtest.nodes["meter-1"].client, regtest.nodes["meter-3"].client
    record_type, payload = 65_537 + 1000, secrets.token_bytes(48)
    dest = regtest.nodes["meter-3"].info.pubkey
    res = await m1.keysend(dest, 5_000_000, {record_type: payload})
    assert res.status == "SUCCEEDED"

    async def received() -> bytes | None:
        for inv in await m2.list_invoices():
            if inv.r_hash.hex() == res.payment_hash and inv.state == 1:
                for h in inv.htlcs:
                    if record_type in h.custom_records:
                        return h.custom_records[record_type]
        return None

    got = await wait_for(received, 30, what="keysend invoice with custom record at meter-3")
    assert got == payload


async def test_op_return_transaction_is_mined(regtest: RegtestNetwork) -> None:
    hub = regtest.nodes["hub"].client
    payload = secrets.token_bytes(32)
    txid = await hub.send_op_return(payload, sat_per_vbyte=5, label="acceptance op_return")
    btcd = regtest.btcd
    assert btcd is not None

    async def in_mempool() -> bool:
        return txid in await btcd.call("getrawmempool")

    await wait_for(in_mempool, 30, what="op_return tx in mempool")
    [block_hash] = await regtest.mine(1)
    block = await btcd.call("getblock", block_hash)
    assert txid in block["tx"]
    tx = await btcd.call("getrawtransaction", txid, 1)
    assert tx["blockhash"] == block_hash
    nulldata = [o for o in tx["vout"] if o["scriptPubKey"]["type"] == "nulldata"]
    assert len(nulldata) == 1
    assert nulldata[0]["scriptPubKey"]["hex"] == "6a20" + payload.hex()
    assert nulldata[0]["value"] == 0
    spent = 0
    for vin in tx["vin"]:
        prev = await btcd.call("getrawtransaction", vin["txid"], 1)
        spent += round(prev["vout"][vin["vout"]]["value"] * 1e8)
    fee = spent - sum(round(o["value"] * 1e8) for o in tx["vout"])
    assert 4 <= fee / tx["vsize"] <= 7  # the 5 sat/vB we asked for, within estimation slack


async def test_sigkill_restart_keeps_channels_and_balance(regtest: RegtestNetwork) -> None:
    node = regtest.nodes["meter-3"]
    before_wallet = (await node.client.wallet_balance()).confirmed_balance
    before_chan = (await node.client.channel_balance()).local_balance.sat
    points = {c.channel_point for c in await node.client.list_channels()}
    await regtest.restart("meter-3", kill=True)
    for p in points:
        await regtest.wait_channel_active("meter-3", p, timeout=90)
    assert (await node.client.wallet_balance()).confirmed_balance == before_wallet
    assert (await node.client.channel_balance()).local_balance.sat == before_chan
