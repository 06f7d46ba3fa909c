"""Finding a payment on a node with more payments than lnd returns at once.

Before, ``LndClient.list_payments`` asked ListPayments for ``max_payments=10000`` from the
start of lnd's payment index: on a node past 10,000 payments the newest were cut off, and
the meter recorded an increment it had paid (lnd: "already paid") as failed. Now a payment
is looked up by its hash (routerrpc TrackPaymentV2) and a full listing follows the pages.
"""

from __future__ import annotations

from unittest.mock import MagicMock

import pytest
from fakes.lnd_rpc import FakePaymentRpc, many_payments, payment_hash

from p2pep.lnd.client import LndClient, LndConnection
from p2pep.lndrpc import lightning_pb2 as ln

N = 10_050


def client_over(rpc: FakePaymentRpc) -> LndClient:
    c = LndClient(LndConnection("home", "127.0.0.1:1", "/none", "/none"), channel=MagicMock())
    c.ln = c.router = rpc  # type: ignore[assignment]
    return c


async def test_the_fake_answers_as_lnd_does_a_first_page_of_10000_misses_the_newest() -> None:
    rpc = FakePaymentRpc(many_payments(N))
    first = await rpc.ListPayments(ln.ListPaymentsRequest(max_payments=10_000, include_incomplete=True))
    assert len(first.payments) == 10_000 and first.payments[-1].payment_index == 10_000
    assert payment_hash(N) not in {p.payment_hash for p in first.payments}
    newest = await rpc.ListPayments(ln.ListPaymentsRequest(max_payments=3, reversed=True))
    assert [p.payment_index for p in newest.payments] == [N - 2, N - 1, N]


async def test_a_payment_is_found_by_its_hash_on_a_node_with_more_than_10000() -> None:
    c = client_over(FakePaymentRpc(many_payments(N)))
    for i in (N, 1, 10_001, 5_000):
        found = await c.track_payment(payment_hash(i))
        assert found is not None and found.payment_index == i and found.status == ln.Payment.SUCCEEDED
    assert await c.track_payment("ab" * 32) is None  # never paid: lnd's NOT_FOUND


async def test_listing_follows_the_pages_to_the_newest() -> None:
    rpc = FakePaymentRpc(many_payments(N))
    every = await client_over(rpc).list_payments()
    assert [p.payment_index for p in every] == list(range(1, N + 1))
    rpc = FakePaymentRpc(many_payments(23))
    assert [p.payment_index for p in await client_over(rpc).list_payments(page_size=5)] == list(range(1, 24))
    assert [r.index_offset for r in rpc.pages] == [0, 5, 10, 15, 20]
    assert all(r.include_incomplete and r.max_payments == 5 for r in rpc.pages)
    with pytest.raises(ValueError, match="page_size"):
        await client_over(rpc).list_payments(page_size=0)
