"""Finding an old payment on the real network: a few increments paid, then the oldest looked up
by its hash with the meter's own (least-privilege) macaroon, and the node's whole payment list
read in pages forced small, so paging is exercised without 10,000 real payments."""

from __future__ import annotations

import pytest

from p2pep.lnd.client import LndClient, LndConnection
from p2pep.lndrpc import lightning_pb2 as ln
from p2pep.regtest import RegtestNetwork

pytestmark = pytest.mark.regtest


async def test_an_old_payment_is_found_by_hash_and_in_small_pages(regtest: RegtestNetwork) -> None:
    payer, payee = regtest.nodes["meter-1"], regtest.nodes["meter-2"]
    paid = []
    for i in range(5):
        inv = await payee.client.add_invoice(2_000 + i, memo=f"paging test: increment {i + 1}")
        paid.append(await payer.client.pay(inv.payment_request))
    info = payer.info
    meter = LndClient(LndConnection("meter@meter-1", info.rpcserver, info.tls_cert, info.service_macaroon("meter")))
    try:
        oldest = await meter.track_payment(paid[0].payment_hash)
        assert oldest is not None and oldest.status == ln.Payment.SUCCEEDED
        assert oldest.payment_preimage == paid[0].preimage and oldest.value_msat == 2_000
        assert await meter.track_payment("ab" * 32) is None  # never paid here
    finally:
        await meter.close()
    every = await payer.client.list_payments(page_size=2)
    hashes = [p.payment_hash for p in every]
    assert len(set(hashes)) == len(hashes)  # no page read twice
    assert [p.payment_index for p in every] == sorted(p.payment_index for p in every)
    ours = [h for h in hashes if h in {r.payment_hash for r in paid}]
    assert ours == [r.payment_hash for r in paid]  # all five, oldest first
    assert every == await payer.client.list_payments()  # the same as in one page
