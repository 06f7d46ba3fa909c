"""Least privilege on lnd, on the real regtest network: the macaroons the harness bakes
(p2pep.lnd.macaroons) let each service do what it needs, and lnd refuses the rest."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from p2pep.anchor import opreturn
from p2pep.anchor.lnd_wallet import LndAnchorWallet
from p2pep.lnd.client import LndClient, LndConnection, LndError, PaymentFailed
from p2pep.lnd.macaroons import METER
from p2pep.lndrpc import lightning_pb2 as ln
from p2pep.regtest import RegtestNetwork, wait_for
from p2pep.regtest.lnd_node import LndInfo

pytestmark = pytest.mark.regtest


def service_client(info: LndInfo, service: str, on: LndInfo | None = None) -> LndClient:
    """A client holding ``service``'s macaroon of node ``info`` (sent to node ``on``)."""
    target = on or info
    return LndClient(LndConnection(f"{service}@{info.name}", target.rpcserver, target.tls_cert,
                                   info.service_macaroon(service)))


@pytest.fixture
async def clients(regtest: RegtestNetwork) -> AsyncIterator[dict[str, LndClient]]:
    n = {k: regtest.nodes[k].info for k in ("hub", "meter-1", "meter-2")}
    made = {"meter-1": service_client(n["meter-1"], "meter"), "meter-2": service_client(n["meter-2"], "meter"),
            "anchor": service_client(n["hub"], "anchor"),
            # meter-1's macaroon presented to meter-2's node
            "meter-1@meter-2": service_client(n["meter-1"], "meter", on=n["meter-2"])}
    yield made
    for c in made.values():
        await c.close()


async def refused(call: Callable[[], Awaitable[Any]], why: str = "permission denied") -> LndError:
    """lnd answers ``call`` with a macaroon refusal (lnd's status is UNKNOWN, its message
    says why): ``permission denied`` for an RPC the macaroon does not grant,
    ``verification failed`` for a macaroon of another node, the missing root key for a
    revoked one."""
    with pytest.raises(LndError) as info:
        await call()
    assert info.value.detail == f"UNKNOWN: {why}" or info.value.detail.startswith(f"UNKNOWN: {why}:"), info.value
    return info.value


def test_each_node_has_only_its_services_macaroons_private(regtest: RegtestNetwork) -> None:
    for name in ("hub", "meter-1", "meter-2", "meter-3"):
        info = regtest.nodes[name].info
        baked = sorted(p.name for p in info.macaroon_dir.glob("p2pep-*"))
        assert baked == (["p2pep-anchor.macaroon"] if name == "hub" else ["p2pep-meter.macaroon"])
        for service in info.services:
            assert stat.S_IMODE(Path(info.service_macaroon(service)).stat().st_mode) == 0o600


async def test_a_meters_macaroon_does_what_the_meter_needs_and_no_more(
        regtest: RegtestNetwork, clients: dict[str, LndClient]) -> None:
    m1, m2 = clients["meter-1"], clients["meter-2"]
    hub = regtest.nodes["hub"].info.pubkey
    # what the meter needs: its node, invoices (supplier), paying them (consumer), channels, balances
    assert await m1.pubkey() == regtest.nodes["meter-1"].info.pubkey
    inv = await m2.add_invoice(3_500, memo="macaroon test: one increment")
    decoded = await m1.decode_pay_req(inv.payment_request)
    assert decoded.destination == regtest.nodes["meter-2"].info.pubkey and decoded.num_msat == 3_500
    assert await m1.can_send(decoded.destination, 3_500)
    paid = await m1.pay(inv.payment_request)
    assert paid.status == "SUCCEEDED" and paid.value_msat == 3_500
    found = await m1.track_payment(paid.payment_hash)  # the outcome of a payment, by its hash
    assert found is not None and found.status == ln.Payment.SUCCEEDED and found.payment_preimage == paid.preimage

    async def settled() -> bool:
        return (await m2.lookup_invoice(inv.r_hash)).state == ln.Invoice.SETTLED

    await wait_for(settled, 30, what="the invoice settled at meter-2")
    # a supplier cancels an unpaid invoice (its payment stuck in flight): lnd refuses to pay it
    # after that, and refuses to cancel one that is paid
    stuck = await m2.add_invoice(2_000, memo="macaroon test: cancelled before it is paid")
    await m2.cancel_invoice(stuck.r_hash)
    assert (await m2.lookup_invoice(stuck.r_hash)).state == ln.Invoice.CANCELED
    with pytest.raises(PaymentFailed, match="INCORRECT_PAYMENT_DETAILS"):
        await m1.pay(stuck.payment_request)
    with pytest.raises(LndError, match="settled"):
        await m2.cancel_invoice(inv.r_hash)
    assert (await m2.lookup_invoice(inv.r_hash)).state == ln.Invoice.SETTLED
    assert any(c.remote_pubkey == hub and c.active for c in await m1.list_channels(peer=hub))
    await m1.pending_channels()
    wallet = (await m1.wallet_balance()).confirmed_balance
    await m1.channel_balance()
    await m1.connect(hub, regtest.nodes["hub"].info.p2p_host)  # already connected: fine

    # what it may not: move the household's coins on-chain, close channels, read other
    # invoices, sign as the node, bake itself more rights
    hub_addr = await regtest.nodes["hub"].client.new_address()
    await refused(lambda: m1._call("SendCoins", m1.ln.SendCoins, ln.SendCoinsRequest(addr=hub_addr, amount=10_000)))
    assert (await m1.new_address()).startswith("bcrt1")  # to receive to, shown in the household app
    await refused(lambda: m1.send_op_return(opreturn.encode_payload(b"\x01" * 32), 1))
    (chan,) = [c for c in await m1.list_channels(peer=hub)]
    await refused(lambda: m1.close_channel(chan.channel_point))
    await refused(lambda: m2.list_invoices())
    await refused(lambda: m1.list_payments())  # one payment by its hash, not the household's history
    await refused(lambda: m1.sign_message(b"I am meter-1's node"))
    await refused(lambda: m1.bake_macaroon([("onchain", "write")], 1101))
    # ... and nothing moved
    assert (await m1.wallet_balance()).confirmed_balance == wallet
    assert any(c.channel_point == chan.channel_point and c.active for c in await m1.list_channels(peer=hub))
    # a meter's macaroon is good on its own node only
    await refused(lambda: clients["meter-1@meter-2"].get_info(), "verification failed")


async def test_the_anchors_macaroon_anchors_and_cannot_pay(
        regtest: RegtestNetwork, clients: dict[str, LndClient]) -> None:
    anchor, m2 = clients["anchor"], clients["meter-2"]
    inv = await m2.add_invoice(5_000, memo="macaroon test: the anchor may not pay this")
    await refused(lambda: anchor.pay(inv.payment_request))
    await refused(lambda: anchor.keysend(regtest.nodes["meter-2"].info.pubkey, 5_000))
    await refused(lambda: anchor.add_invoice(1_000))
    await refused(lambda: anchor.open_channel(regtest.nodes["meter-3"].info.pubkey, 100_000))
    await refused(lambda: anchor.get_info())
    await refused(lambda: anchor.new_address())
    assert (await m2.lookup_invoice(inv.r_hash)).state == ln.Invoice.OPEN
    # ... what it is for: one anchoring transaction from the hub's wallet
    assert regtest.btcd is not None
    txid = await LndAnchorWallet(anchor).send_op_return(opreturn.encode_payload(b"\x42" * 32), 1)

    async def in_mempool() -> bool:
        return txid in await regtest.btcd.call("getrawmempool")  # type: ignore[union-attr]

    await wait_for(in_mempool, 30, what="the anchoring transaction in btcd's mempool")
    await regtest.mine(1)


async def test_baking_again_and_revoking_a_services_macaroons(regtest: RegtestNetwork) -> None:
    """A network brought up before a macaroon existed gets it from ``bake_service_macaroons``
    (``scenario run --reuse-network`` calls it); macaroons baked earlier stay valid. The
    service's own root key revokes its macaroons (``lncli deletemacaroonid``), not admin's."""
    node = regtest.nodes["meter-3"]
    path = Path(node.info.service_macaroon("meter"))
    before = service_client(node.info, "meter")  # holds the macaroon baked at start-up
    try:
        path.unlink()
        await regtest.bake_service_macaroons()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        again = service_client(node.info, "meter")
        try:
            assert await before.pubkey() == await again.pubkey() == node.info.pubkey
            admin = node.client
            await admin._call("DeleteMacaroonID", admin.ln.DeleteMacaroonID,
                              ln.DeleteMacaroonIDRequest(root_key_id=METER.root_key_id))
            gone = f"cannot retrieve macaroon: cannot get macaroon: root key with id {METER.root_key_id} doesn't exist"
            await refused(lambda: again.get_info(), gone)
            await refused(lambda: before.get_info(), gone)
            assert (await admin.get_info()).identity_pubkey == node.info.pubkey  # admin's untouched
        finally:
            await again.close()
        await node.bake_service_macaroons()  # a new one for the tests that follow
        fresh = service_client(node.info, "meter")
        try:
            assert await fresh.pubkey() == node.info.pubkey
        finally:
            await fresh.close()
    finally:
        await before.close()
