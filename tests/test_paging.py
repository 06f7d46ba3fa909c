"""Paged list RPCs (p2pep.paging): bounded pages in a stable order, tokens, and clients that
follow them; settlement's ListContracts and ListPayments against fake meters."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
import test_settlement_service
from test_settlement_service import match, reading, register, send

from p2pep.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, all_pages, cut, decode_token, encode_token, follow
from p2pep.refusals import InvalidArgument
from p2pep.regtest import wait_for
from p2pep.v1 import settlement_pb2 as pb

pytestmark = pytest.mark.usefixtures("operator_writes")
world = test_settlement_service.world  # the harness: settlement in-process, two fake meters


def test_pages_are_bounded_and_tokens_checked() -> None:
    items = list(range(2500))
    page, token = cut(items, 0, "")
    assert page == list(range(DEFAULT_PAGE_SIZE)) and decode_token(token) == DEFAULT_PAGE_SIZE
    page, token = cut(items, 10**6, token)
    assert len(page) == MAX_PAGE_SIZE and page[0] == DEFAULT_PAGE_SIZE
    assert cut(items, 7, encode_token(2496)) == ([2496, 2497, 2498, 2499], "")
    assert cut([], 5, "") == ([], "")
    for bad in ("nonsense", encode_token(0)[:-2] + "!!", "cDJwZXAtcGFnZTotMQ"):  # the last: offset -1
        with pytest.raises(InvalidArgument, match="page_token"):
            decode_token(bad)


async def test_all_pages_follows_the_tokens() -> None:
    items = list(range(23))

    async def fetch(token: str) -> tuple[list[int], str]:
        return cut(items, 5, token)

    assert await all_pages(fetch) == items


async def test_settlement_lists_in_pages(world: Any) -> None:
    h, cons, sup = world
    engine, stub, _ = await h.start_settlement()
    await register(stub, cons, sup)
    await send(stub, reading(cons, 1, 0, 0), reading(sup, 1, 0, 0))
    ids = [f"c{i}" for i in range(7)]
    for cid in ids:
        await engine.propose(match(cid, energy_wh=1000, price=1_000_000))
    first = await stub.ListContracts(pb.ListSettlementContractsRequest(page_size=3))
    assert [c.contract.contract_id for c in first.contracts] == ids[:3] and first.next_page_token
    second = await stub.ListContracts(pb.ListSettlementContractsRequest(page_size=3, page_token=first.next_page_token))
    assert [c.contract.contract_id for c in second.contracts] == ids[3:6]
    every = await follow(stub.ListContracts, pb.ListSettlementContractsRequest(page_size=2), "contracts", 10)
    assert [c.contract.contract_id for c in every] == ids
    only = await follow(stub.ListContracts, pb.ListSettlementContractsRequest(meter_id="supplier", page_size=4),
                        "contracts", 10)
    assert len(only) == 7
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListContracts(pb.ListSettlementContractsRequest(page_token="forged"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in (err.value.details() or "")

    await send(stub, reading(cons, 2, 30, 0), reading(sup, 2, 0, 30))  # c0 takes it all: three increments
    await wait_for(lambda: engine.contracts["c0"].ledger.increments_paid == 3, 10, what="3 increments paid")
    one = await stub.ListPayments(pb.ListPaymentsRequest(page_size=1))
    assert len(one.payments) == 1 and one.payments[0].increment == 1 and one.next_page_token
    pays = await follow(stub.ListPayments, pb.ListPaymentsRequest(contract_id="c0", page_size=2), "payments", 10)
    assert [p.increment for p in pays] == [1, 2, 3]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListPayments(pb.ListPaymentsRequest(page_token="forged"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
