"""The matcher over gRPC, in-process on port 0: matching, events, tiers, errors, metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from matcher_helpers import Client, demand, order, settings, subscribed, supply

from p2pep.market import terms_hash
from p2pep.v1 import common_pb2, matcher_pb2

# the matcher's own behaviour: who may call it is tested in tests/test_access_services.py
pytestmark = pytest.mark.usefixtures("operator_writes")

E = matcher_pb2.MatchEvent


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    c = await Client.start(settings(tmp_path))
    try:
        yield c
    finally:
        await c.close()


async def test_health_and_metrics(client: Client) -> None:
    health = health_pb2_grpc.HealthStub(client.channel)
    r = await health.Check(health_pb2.HealthCheckRequest(service="p2pep.v1.MatcherService"))
    assert r.status == health_pb2.HealthCheckResponse.SERVING
    await client.stub.SubmitSupply(supply("s1", "A", 100, 100))
    async with aiohttp.ClientSession() as http, http.get(client.app.host.http_url + "/metrics") as resp:
        text = await resp.text()
    assert 'p2pep_matcher_orders_total{side="supply"}' in text
    assert 'p2pep_matcher_book_orders{side="supply"} 1.0' in text
    assert "p2pep_matcher_request_seconds_bucket" in text


async def test_split_demand_contracts_and_events(client: Client) -> None:
    stub = client.stub
    events = await subscribed(stub, ["C"])
    all_events = await subscribed(stub, [])
    await stub.SubmitSupply(supply("s1", "A", 300, 130_000))
    await stub.SubmitSupply(supply("s2", "B", 200, 110_000))
    r = await stub.SubmitDemand(demand("d1", "C", 600, 150_000))
    assert r.status == matcher_pb2.ORDER_STATUS_PARTIALLY_FILLED and r.order.remaining_wh == 100
    got = [(c.supplier, c.energy_wh, c.price_msat_per_kwh, c.tier) for c in r.contracts]
    assert got == [("B", 200, 110_000, common_pb2.TIER_SPLIT), ("A", 300, 130_000, common_pb2.TIER_SPLIT)]
    for c in r.contracts:
        assert c.consumer == "C" and c.end.ToMilliseconds() - c.start.ToMilliseconds() == 900_000
        assert c.hash == b"" and c.match_hash == terms_hash(
            contract_id=c.contract_id, consumer=c.consumer, supplier=c.supplier, energy_wh=c.energy_wh,
            price_msat_per_kwh=c.price_msat_per_kwh, start_ms=c.start.ToMilliseconds(),
            end_ms=c.end.ToMilliseconds(), tier=c.tier,
        )
    evs = await events.take(3)
    assert [(e.kind, e.remaining_wh, e.contract.supplier) for e in evs] == [
        (E.KIND_PARTIALLY_MATCHED, 400, "B"), (E.KIND_PARTIALLY_MATCHED, 100, "A"), (E.KIND_UNCOVERED, 100, "")
    ]
    # supply appears: the uncovered demand is matched at once
    r2 = await stub.SubmitSupply(supply("s3", "D", 500, 140_000))
    assert r2.status == matcher_pb2.ORDER_STATUS_PARTIALLY_FILLED and r2.contracts[0].energy_wh == 100
    e = await events.next()
    assert (e.kind, e.order_id, e.remaining_wh) == (E.KIND_MATCHED, "d1", 0)
    everything = await all_events.take(7)
    assert [e.seq for e in everything] == sorted(e.seq for e in everything)
    assert {e.meter_id for e in everything} == {"A", "B", "C", "D"}
    book = await stub.GetBook(matcher_pb2.GetBookRequest(meter_ids=["D"]))
    assert (book.supply_wh, book.demand_wh, book.supply_orders) == (400, 0, 1)
    assert [(lv.price_msat_per_kwh, lv.energy_wh) for lv in book.supply] == [(140_000, 400)]
    assert [o.order_id for o in book.orders] == ["s3"]
    listed = await stub.ListContracts(matcher_pb2.ListContractsRequest(meter_id="C"))
    assert len(listed.contracts) == 3
    events.cancel()
    all_events.cancel()


async def test_power_window_sets_energy_and_contract_length(client: Client) -> None:
    o = common_pb2.Order(order_id="d1", meter_id="C", side=common_pb2.SIDE_DEMAND, price_msat_per_kwh=100,
                         power=common_pb2.PowerWindow(power_w=2000, window=Duration(seconds=1800)))
    await client.stub.SubmitSupply(supply("s1", "A", 5000, 100))
    r = await client.stub.SubmitDemand(matcher_pb2.SubmitOrderRequest(order=o))
    assert r.order.energy_wh == 1000 and r.status == matcher_pb2.ORDER_STATUS_FILLED
    c = r.contracts[0]
    assert c.energy_wh == 1000 and c.end.ToMilliseconds() - c.start.ToMilliseconds() == 1_800_000


async def test_extend_contract_is_tier_1(client: Client) -> None:
    stub = client.stub
    await stub.SubmitSupply(supply("cheap", "B", 1000, 90))
    await stub.SubmitSupply(supply("mine", "A", 100, 100))
    first = (await stub.SubmitDemand(demand("d1", "C", 100, 100, partners=["A"]))).contracts[0]
    assert (first.supplier, first.tier) == ("A", common_pb2.TIER_NOMINATED)
    await stub.SubmitSupply(supply("more", "A", 100, 120))
    r = await stub.ExtendContract(matcher_pb2.ExtendContractRequest(
        contract_id=first.contract_id, order_id="d2", energy_wh=50, price_msat_per_kwh=130))
    c = r.contracts[0]
    assert (c.supplier, c.tier, c.renews_contract_id, c.price_msat_per_kwh) == (
        "A", common_pb2.TIER_CONTINUING, first.contract_id, 120)
    # any later demand of C also goes to its continuing supplier first
    r = await stub.SubmitDemand(demand("d3", "C", 10, 130))
    assert (r.contracts[0].supplier, r.contracts[0].tier) == ("A", common_pb2.TIER_CONTINUING)


async def test_consumer_default_releases_the_supplier(client: Client) -> None:
    stub = client.stub
    await stub.SubmitSupply(supply("s1", "A", 100, 100))
    c = (await stub.SubmitDemand(demand("d1", "C", 100, 120))).contracts[0]
    events = await subscribed(stub, ["A"])
    await stub.SubmitDemand(demand("d2", "D", 500, 110))  # waiting, uncovered
    r = await stub.ReportContractEnd(matcher_pb2.ReportContractEndRequest(
        contract_id=c.contract_id, outcome=matcher_pb2.CONTRACT_OUTCOME_CONSUMER_DEFAULTED, delivered_wh=30))
    assert not r.already_ended
    assert r.released_order.meter_id == "A" and r.released_order.energy_wh == 70
    assert r.released_order.price_msat_per_kwh == 100
    assert [(x.consumer, x.energy_wh) for x in r.contracts] == [("D", 70)]
    evs = await events.take(2)
    assert [e.kind for e in evs] == [E.KIND_CONTRACT_ENDED, E.KIND_MATCHED]
    again = await stub.ReportContractEnd(matcher_pb2.ReportContractEndRequest(
        contract_id=c.contract_id, outcome=matcher_pb2.CONTRACT_OUTCOME_COMPLETED, delivered_wh=100))
    assert again.already_ended
    active = await stub.ListContracts(matcher_pb2.ListContractsRequest(meter_id="C", active_only=True))
    assert list(active.contracts) == []
    events.cancel()


async def test_supplier_default_reopens_the_demand(client: Client) -> None:
    stub = client.stub
    await stub.SubmitSupply(supply("s1", "A", 100, 100))
    c = (await stub.SubmitDemand(demand("d1", "C", 100, 120))).contracts[0]
    r = await stub.ReportContractEnd(matcher_pb2.ReportContractEndRequest(
        contract_id=c.contract_id, outcome=matcher_pb2.CONTRACT_OUTCOME_SUPPLIER_DEFAULTED, delivered_wh=40))
    assert (r.released_order.meter_id, r.released_order.side, r.released_order.remaining_wh) == (
        "C", common_pb2.SIDE_DEMAND, 60)
    book = await stub.GetBook(matcher_pb2.GetBookRequest())
    assert book.demand_wh == 60


async def test_cancel_and_expiry_events(client: Client) -> None:
    stub = client.stub
    events = await subscribed(stub, ["A"])
    await stub.SubmitSupply(supply("s1", "A", 100, 100))
    r = await stub.Cancel(matcher_pb2.CancelRequest(order_id="s1", meter_id="A"))
    assert r.order.remaining_wh == 100
    soon = Timestamp()
    soon.FromMilliseconds(client.app.matcher.clock() + 150)
    await stub.SubmitSupply(supply("s2", "A", 100, 100, expiry=soon))
    evs = await events.take(2)
    assert [(e.kind, e.order_id) for e in evs] == [(E.KIND_CANCELLED, "s1"), (E.KIND_EXPIRED, "s2")]
    book = await stub.GetBook(matcher_pb2.GetBookRequest())
    assert book.supply_orders == 0
    events.cancel()


async def _book_totals(client: Client) -> tuple[int, int, int, int]:
    b = await client.stub.GetBook(matcher_pb2.GetBookRequest())
    return b.supply_wh, b.demand_wh, b.supply_orders, b.demand_orders


BAD = [
    ("neg energy", "SubmitSupply", supply("x", "A", -5, 100), grpc.StatusCode.INVALID_ARGUMENT, "order.energy_wh"),
    ("zero energy", "SubmitDemand", demand("x", "A", 0, 100), grpc.StatusCode.INVALID_ARGUMENT, "order.energy_wh"),
    ("zero price", "SubmitSupply", supply("x", "A", 5, 0), grpc.StatusCode.INVALID_ARGUMENT,
     "order.price_msat_per_kwh"),
    ("neg price", "SubmitDemand", demand("x", "A", 5, -1), grpc.StatusCode.INVALID_ARGUMENT,
     "order.price_msat_per_kwh"),
    ("wrong side", "SubmitSupply", demand("x", "A", 5, 1), grpc.StatusCode.INVALID_ARGUMENT, "order.side"),
    ("unknown side", "SubmitBatch", matcher_pb2.SubmitBatchRequest(orders=[order("x", "A", 7, 5, 1)]),
     grpc.StatusCode.INVALID_ARGUMENT, "orders[0].side"),
    ("unset side", "SubmitBatch", matcher_pb2.SubmitBatchRequest(orders=[order("x", "A", 0, 5, 1)]),
     grpc.StatusCode.INVALID_ARGUMENT, "orders[0].side"),
    ("no energy", "SubmitSupply", matcher_pb2.SubmitOrderRequest(order=common_pb2.Order(
        order_id="x", meter_id="A", price_msat_per_kwh=1)), grpc.StatusCode.INVALID_ARGUMENT, "order.energy_wh"),
    ("past expiry", "SubmitSupply", supply("x", "A", 5, 1, expiry=Timestamp(seconds=1)),
     grpc.StatusCode.INVALID_ARGUMENT, "order.expiry"),
    ("empty id", "SubmitSupply", supply("", "A", 5, 1), grpc.StatusCode.INVALID_ARGUMENT, "order.order_id"),
    ("bad meter", "SubmitSupply", supply("x", "A B", 5, 1), grpc.StatusCode.INVALID_ARGUMENT, "order.meter_id"),
    ("self partner", "SubmitSupply", supply("x", "A", 5, 1, partners=["A"]), grpc.StatusCode.INVALID_ARGUMENT,
     "order.partners[0]"),
    ("duplicate", "SubmitDemand", demand("keep", "Z", 5, 1), grpc.StatusCode.ALREADY_EXISTS, "order.order_id"),
    ("dup in batch", "SubmitBatch", matcher_pb2.SubmitBatchRequest(orders=[
        order("y1", "A", common_pb2.SIDE_SUPPLY, 5, 1), order("y1", "B", common_pb2.SIDE_SUPPLY, 5, 1)]),
     grpc.StatusCode.ALREADY_EXISTS, "orders[1].order_id"),
    ("bad in batch", "SubmitBatch", matcher_pb2.SubmitBatchRequest(orders=[
        order("y2", "A", common_pb2.SIDE_SUPPLY, 5, 1), order("y3", "B", common_pb2.SIDE_DEMAND, -5, 1)]),
     grpc.StatusCode.INVALID_ARGUMENT, "orders[1].energy_wh"),
    ("oversized batch", "SubmitBatch", matcher_pb2.SubmitBatchRequest(orders=[
        order(f"z{i}", "A", common_pb2.SIDE_SUPPLY, 5, 1) for i in range(4)]),
     grpc.StatusCode.INVALID_ARGUMENT, "orders: at most 3"),
    ("empty batch", "SubmitBatch", matcher_pb2.SubmitBatchRequest(), grpc.StatusCode.INVALID_ARGUMENT, "orders"),
    ("renew unknown", "SubmitDemand", demand("x", "A", 5, 1, renews_contract_id="c-nope"),
     grpc.StatusCode.NOT_FOUND, "order.renews_contract_id"),
    ("renew by supply", "SubmitSupply", supply("x", "A", 5, 1, renews_contract_id="c-nope"),
     grpc.StatusCode.INVALID_ARGUMENT, "order.renews_contract_id"),
    ("cancel unknown", "Cancel", matcher_pb2.CancelRequest(order_id="nope"), grpc.StatusCode.NOT_FOUND, "order_id"),
    ("cancel other's", "Cancel", matcher_pb2.CancelRequest(order_id="keep", meter_id="Y"),
     grpc.StatusCode.NOT_FOUND, "order_id"),
    ("extend unknown", "ExtendContract", matcher_pb2.ExtendContractRequest(
        contract_id="c-nope", order_id="x", energy_wh=5, price_msat_per_kwh=5),
     grpc.StatusCode.NOT_FOUND, "contract_id"),
    ("end unknown", "ReportContractEnd", matcher_pb2.ReportContractEndRequest(
        contract_id="c-nope", outcome=matcher_pb2.CONTRACT_OUTCOME_COMPLETED), grpc.StatusCode.NOT_FOUND,
     "contract_id"),
    ("end no outcome", "ReportContractEnd", matcher_pb2.ReportContractEndRequest(contract_id="c-nope"),
     grpc.StatusCode.INVALID_ARGUMENT, "outcome"),
]


@pytest.mark.parametrize("name,method,request_msg,code,field", BAD, ids=[b[0] for b in BAD])
async def test_bad_input_is_refused_and_book_unchanged(
    tmp_path: Path, name: str, method: str, request_msg: object, code: grpc.StatusCode, field: str
) -> None:
    c = await Client.start(settings(tmp_path, max_batch=3))
    try:
        await c.stub.SubmitDemand(demand("keep", "Z", 50, 10))
        await c.stub.SubmitSupply(supply("other", "Q", 20, 99))
        before = await _book_totals(c)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await getattr(c.stub, method)(request_msg)
        assert err.value.code() == code, err.value.details()
        assert err.value.details().startswith(field), err.value.details()
        assert await _book_totals(c) == before
    finally:
        await c.close()


async def test_delivered_out_of_range(client: Client) -> None:
    await client.stub.SubmitSupply(supply("s1", "A", 100, 100))
    c = (await client.stub.SubmitDemand(demand("d1", "C", 100, 120))).contracts[0]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.ReportContractEnd(matcher_pb2.ReportContractEndRequest(
            contract_id=c.contract_id, outcome=matcher_pb2.CONTRACT_OUTCOME_COMPLETED, delivered_wh=101))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("delivered_wh: must be within 0..100")


async def test_batch_is_all_or_nothing_and_matches_in_order(client: Client) -> None:
    r = await client.stub.SubmitBatch(matcher_pb2.SubmitBatchRequest(orders=[
        order("s1", "A", common_pb2.SIDE_SUPPLY, 50, 100),
        order("d1", "B", common_pb2.SIDE_DEMAND, 80, 100),
    ]))
    assert [x.status for x in r.results] == [matcher_pb2.ORDER_STATUS_RESTING,
                                             matcher_pb2.ORDER_STATUS_PARTIALLY_FILLED]
    assert r.results[1].contracts[0].energy_wh == 50


async def test_contracts_are_listed_in_pages_newest_first(client: Client) -> None:
    from p2pep.paging import follow

    stub = client.stub
    for i in range(5):
        await stub.SubmitSupply(supply(f"s{i}", f"P{i}", 100, 100_000))
        await stub.SubmitDemand(demand(f"d{i}", "C", 100, 150_000))
    every = await follow(stub.ListContracts, matcher_pb2.ListContractsRequest(meter_id="C", limit=2), "contracts", 10)
    assert [c.supplier for c in every] == [f"P{i}" for i in reversed(range(5))]
    first = await stub.ListContracts(matcher_pb2.ListContractsRequest(limit=2))
    assert [c.supplier for c in first.contracts] == ["P4", "P3"] and first.next_page_token
    await stub.SubmitSupply(supply("s9", "P9", 100, 100_000))  # matched meanwhile: not on the later pages
    await stub.SubmitDemand(demand("d9", "C", 100, 150_000))
    rest = await follow(stub.ListContracts, matcher_pb2.ListContractsRequest(limit=2, page_token=first.next_page_token),
                        "contracts", 10)
    assert [c.supplier for c in rest] == ["P2", "P1", "P0"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListContracts(matcher_pb2.ListContractsRequest(page_token="forged"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in (err.value.details() or "")
