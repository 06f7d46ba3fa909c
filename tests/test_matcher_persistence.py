"""The matcher's book, contracts and events survive a restart; periodic clearing over gRPC."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from matcher_helpers import Client, demand, settings, subscribed, supply, wait_until

from p2pep.v1 import common_pb2, matcher_pb2

# the matcher's own behaviour: who may call it is tested in tests/test_access_services.py
pytestmark = pytest.mark.usefixtures("operator_writes")

E = matcher_pb2.MatchEvent


async def test_restart_serves_the_same_book_and_remembers_everything(tmp_path: Path) -> None:
    s = settings(tmp_path)
    c = await Client.start(s)
    stub = c.stub
    await stub.SubmitSupply(supply("s1", "A", 100, 100, partners=["C"]))
    await stub.SubmitSupply(supply("s2", "B", 100, 120))
    first = await stub.SubmitDemand(demand("d1", "C", 150, 130))
    await stub.SubmitDemand(demand("d2", "D", 40, 90))
    await stub.SubmitSupply(supply("gone", "E", 10, 500))
    await stub.Cancel(matcher_pb2.CancelRequest(order_id="gone"))
    book_before = await stub.GetBook(matcher_pb2.GetBookRequest(meter_ids=["A", "B", "C", "D"]))
    contracts_before = await stub.ListContracts(matcher_pb2.ListContractsRequest())
    last_seq = c.app.matcher.last_event_seq
    await c.close()

    c = await Client.start(s)
    stub = c.stub
    try:
        book_after = await stub.GetBook(matcher_pb2.GetBookRequest(meter_ids=["A", "B", "C", "D"]))
        assert book_after == book_before
        assert await stub.ListContracts(matcher_pb2.ListContractsRequest()) == contracts_before
        for oid in ("s1", "d1", "gone"):  # filled, cancelled: ids are never reused
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.SubmitSupply(supply(oid, "A", 1, 1))
            assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        # the continuing contract C<-B is still known (tier 1), and time priority is kept
        await stub.SubmitSupply(supply("s3", "F", 100, 110))
        r = await stub.SubmitDemand(demand("d3", "C", 30, 130))
        assert (r.contracts[0].supplier, r.contracts[0].tier) == ("B", common_pb2.TIER_CONTINUING)
        assert r.contracts[0].contract_id not in {x.contract_id for x in first.contracts}
        # events go on from where they were, and the old ones can be replayed
        replay = await subscribed(stub, [], from_seq=1)
        evs = await replay.take(last_seq + 2)
        assert [e.seq for e in evs] == list(range(1, last_seq + 3))
        assert evs[0].kind == E.KIND_PARTIALLY_MATCHED and evs[0].contract.tier == common_pb2.TIER_NOMINATED
        replay.cancel()
        c_only = await subscribed(stub, ["C"], from_seq=1)
        mine = await c_only.take(3)
        assert {e.meter_id for e in mine} == {"C"}
        c_only.cancel()
    finally:
        await c.close()


async def test_acknowledged_orders_are_on_disk_before_the_answer(tmp_path: Path) -> None:
    """A second matcher opened on the same file (as after a crash) sees what was acknowledged."""
    s = settings(tmp_path)
    c = await Client.start(s)
    try:
        await c.stub.SubmitSupply(supply("s1", "A", 100, 100))
        await c.stub.SubmitDemand(demand("d1", "C", 30, 120))
        other = await Client.start(settings(tmp_path, db_path=s.db_path))
        try:
            b = await other.stub.GetBook(matcher_pb2.GetBookRequest())
            assert (b.supply_wh, b.demand_wh) == (70, 0)
        finally:
            await other.close()
    finally:
        await c.close()


async def test_periodic_mode_clears_at_one_price(tmp_path: Path) -> None:
    c = await Client.start(settings(tmp_path, mode="periodic", clearing_interval_s=0.2))
    stub = c.stub
    try:
        events = await subscribed(stub, [])
        r = await stub.SubmitSupply(supply("s1", "A", 100, 100))
        assert r.status == matcher_pb2.ORDER_STATUS_RESTING
        await stub.SubmitSupply(supply("s2", "B", 100, 300))
        await stub.SubmitDemand(demand("d1", "C", 150, 250))
        await stub.SubmitDemand(demand("d2", "D", 100, 50))

        async def cleared() -> bool:
            return (await stub.GetBook(matcher_pb2.GetBookRequest())).last_clearing_price_msat_per_kwh != 0

        await wait_until(cleared, what="a clearing")
        evs = await events.take(4)
        matched = [e for e in evs if e.kind in (E.KIND_MATCHED, E.KIND_PARTIALLY_MATCHED)]
        assert {e.contract.price_msat_per_kwh for e in matched} == {175}  # midpoint of [100, 250]
        assert {(e.order_id, e.remaining_wh) for e in matched} == {("s1", 0), ("d1", 50)}
        assert {(e.kind, e.order_id) for e in evs if e.kind == E.KIND_UNCOVERED} == {
            (E.KIND_UNCOVERED, "d1"), (E.KIND_UNCOVERED, "d2")}
        book = await stub.GetBook(matcher_pb2.GetBookRequest())
        assert book.mode == matcher_pb2.MARKET_MODE_PERIODIC and book.HasField("next_clearing")
        assert (book.supply_wh, book.demand_wh) == (100, 150)
        events.cancel()
    finally:
        await c.close()
