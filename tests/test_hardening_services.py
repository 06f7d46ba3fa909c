"""Hostile input at the services' gRPC edges (issue 11, "Hardening that belongs here"):
message size limits, integers and times beyond 64 bits, registration inputs, and a meter's
liveness, each refused with a status (never UNKNOWN) and changing nothing."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from matcher_helpers import Client, demand, order, settings, supply
from prometheus_client import REGISTRY
from test_settlement_service import FakeMeter, Harness, reading, register, send
from tls_helpers import OPERATOR, tls_as

from p2pep.access import ACCESS, Rule
from p2pep.metering.signing import MeterKey
from p2pep.servicekit import BaseServiceSettings, ServiceHost
from p2pep.servicekit.channels import channel
from p2pep.servicekit.limits import MAX_REQUEST_BYTES
from p2pep.servicekit.settings import settings_env, settings_from_env
from p2pep.v1 import common_pb2, matcher_pb2
from p2pep.v1 import settlement_pb2 as pb

pytestmark = pytest.mark.usefixtures("operator_writes")  # these test what services accept, not who calls

HUGE_SECONDS = 2**62  # far beyond year 9999; seconds * 1000 does not fit 64 bits

# -- message size limits -------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _echo_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The echo test service's one method, in the authorization table for these tests."""
    monkeypatch.setitem(ACCESS, "/test.Echo/Echo", Rule(operators=True))


def _echo_host(settings: BaseServiceSettings) -> ServiceHost:
    host = ServiceHost(settings, name="echo")

    async def echo(request: bytes, context: Any) -> bytes:
        return request[:16]

    handler = grpc.unary_unary_rpc_method_handler(echo)  # raw bytes in and out
    host.grpc_server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", {"Echo": handler}),))
    return host


async def _echo(target: str, size: int) -> bytes:
    # a channel that would send anything: the server's limit is what is tested
    creds = tls_as(OPERATOR).channel_credentials()
    options = [("grpc.max_send_message_length", -1), ("grpc.ssl_target_name_override", "echo")]
    async with grpc.aio.secure_channel(target, creds, options=options) as ch:
        result: bytes = await ch.unary_unary("/test.Echo/Echo")(b"x" * size, timeout=10)
        return result


async def test_servers_refuse_requests_over_their_limit() -> None:
    host = _echo_host(BaseServiceSettings())
    await host.start()
    try:
        assert await _echo(host.grpc_target, 1000) == b"x" * 16
        assert await _echo(host.grpc_target, MAX_REQUEST_BYTES - 100) == b"x" * 16
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _echo(host.grpc_target, 2 * MAX_REQUEST_BYTES)  # under gRPC's own default (4 MiB)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await host.stop(0)


async def test_the_request_limit_is_a_setting() -> None:
    env = settings_env(BaseServiceSettings, grpc_max_request_bytes=4096)
    assert env == {"P2PEP_GRPC_MAX_REQUEST_BYTES": "4096"}
    host = _echo_host(settings_from_env(BaseServiceSettings, env))
    await host.start()
    try:
        assert await _echo(host.grpc_target, 2000) == b"x" * 16
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _echo(host.grpc_target, 8192)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await host.stop(0)


async def test_p2pep_channels_do_not_send_oversized_requests() -> None:
    host = _echo_host(BaseServiceSettings(grpc_max_request_bytes=1 << 30))  # a server that would take it
    await host.start()
    try:
        ch = channel(host.grpc_target, peer="echo", tls=tls_as(OPERATOR))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ch.unary_unary("/test.Echo/Echo")(b"x" * (2 * MAX_REQUEST_BYTES), timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        await ch.close()
    finally:
        await host.stop(0)


# -- the matcher: times and numbers beyond 64 bits ------------------------------------------------


@pytest.fixture
async def matcher(tmp_path: Path) -> AsyncIterator[Client]:
    c = await Client.start(settings(tmp_path))
    try:
        yield c
    finally:
        await c.close()


async def _refused(call: Any, code: grpc.StatusCode, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, err.value.details()
    assert (err.value.details() or "").startswith(field + ":"), err.value.details()


@pytest.mark.parametrize("what, request_", [
    ("expiry far beyond year 9999", supply("s9", "A", 100, 100, expiry=Timestamp(seconds=HUGE_SECONDS))),
    ("expiry with bad nanos", supply("s9", "A", 100, 100, expiry=Timestamp(seconds=2_000_000_000, nanos=-5))),
    ("window beyond 64 bits", matcher_pb2.SubmitOrderRequest(order=common_pb2.Order(
        order_id="s9", meter_id="A", side=common_pb2.SIDE_SUPPLY, price_msat_per_kwh=100,
        power=common_pb2.PowerWindow(power_w=1, window=Duration(seconds=HUGE_SECONDS))))),
    ("window of a century", matcher_pb2.SubmitOrderRequest(order=common_pb2.Order(
        order_id="s9", meter_id="A", side=common_pb2.SIDE_SUPPLY, price_msat_per_kwh=100,
        power=common_pb2.PowerWindow(power_w=1, window=Duration(seconds=100 * 365 * 86400))))),
])
async def test_matcher_refuses_times_beyond_its_range_and_keeps_its_book(matcher: Client, what: str,
                                                                         request_: Any) -> None:
    loads = []
    original = matcher.app.matcher.load

    async def counting_load() -> None:
        loads.append(1)
        await original()

    matcher.app.matcher.load = counting_load  # type: ignore[method-assign]
    await matcher.stub.SubmitSupply(supply("s1", "A", 100, 100))
    before = await matcher.stub.GetBook(matcher_pb2.GetBookRequest())
    field = "order.expiry" if "expiry" in what else "order.power.window"
    await _refused(matcher.stub.SubmitSupply(request_), grpc.StatusCode.INVALID_ARGUMENT, field)
    assert loads == [], "the book was reloaded from the database"
    assert await matcher.stub.GetBook(matcher_pb2.GetBookRequest()) == before
    # and the matcher still works
    r = await matcher.stub.SubmitDemand(demand("d1", "B", 50, 200))
    assert r.contracts and r.contracts[0].energy_wh == 50


async def test_matcher_refuses_a_huge_expiry_in_a_batch_and_extension(matcher: Client) -> None:
    bad = order("b2", "A", common_pb2.SIDE_SUPPLY, 5, 1, expiry=Timestamp(seconds=HUGE_SECONDS))
    await _refused(matcher.stub.SubmitBatch(matcher_pb2.SubmitBatchRequest(orders=[order(
        "b1", "A", common_pb2.SIDE_SUPPLY, 5, 1), bad])), grpc.StatusCode.INVALID_ARGUMENT, "orders[1].expiry")
    await matcher.stub.SubmitSupply(supply("s1", "A", 100, 100))
    r = await matcher.stub.SubmitDemand(demand("d1", "B", 50, 200))
    cid = r.contracts[0].contract_id
    await _refused(matcher.stub.ExtendContract(matcher_pb2.ExtendContractRequest(
        contract_id=cid, order_id="x1", energy_wh=10, price_msat_per_kwh=200,
        expiry=Timestamp(seconds=HUGE_SECONDS))), grpc.StatusCode.INVALID_ARGUMENT, "expiry")
    book = await matcher.stub.GetBook(matcher_pb2.GetBookRequest())
    assert book.supply_wh == 50 and book.demand_wh == 0


async def test_matcher_refuses_an_event_sequence_beyond_64_bits(matcher: Client) -> None:
    call = matcher.stub.StreamEvents(matcher_pb2.StreamEventsRequest(meter_ids=["A"], from_seq=2**64 - 1))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in call:
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "from_seq" in (err.value.details() or "")


# -- settlement: readings, queries and registrations ----------------------------------------------


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[Harness, FakeMeter, FakeMeter]]:
    h = Harness(tmp_path)
    cons, sup = FakeMeter("consumer"), FakeMeter("supplier")
    cons.addr = await h.start_meter(cons)  # type: ignore[attr-defined]
    sup.addr = await h.start_meter(sup)  # type: ignore[attr-defined]
    yield h, cons, sup
    await h.close()


async def test_settlement_judges_readings_beyond_64_bits_malformed(world: Any) -> None:
    h, cons, _ = world
    engine, stub, _ = await h.start_settlement()
    await register(stub, cons)
    t = time.time_ns() // 1_000_000
    huge_seq = reading(cons, 1, 0, 0, t)
    huge_seq.seq = 2**64 - 1  # uint64 on the wire: fits the message, not the store
    far = reading(cons, 1, 0, 0, t)
    far.timestamp.seconds = HUGE_SECONDS
    acks = await send(stub, huge_seq, far, reading(cons, 1, 5, 0, t))
    S = pb.ReadingAck
    assert [(a.status, a.reason) for a in acks] == [
        (S.STATUS_REJECTED, "MALFORMED"), (S.STATUS_REJECTED, "MALFORMED"), (S.STATUS_ACCEPTED, "")]
    stored = await engine.store.last_reading("consumer")
    assert stored is not None and (stored.seq, stored.import_wh) == (1, 5)


async def test_settlement_refuses_energy_queries_beyond_its_range(world: Any) -> None:
    h, cons, _ = world
    _, stub, _ = await h.start_settlement()
    await register(stub, cons)
    q = pb.EnergyQuery(meter_id="consumer", to=Timestamp(seconds=HUGE_SECONDS))
    await _refused(stub.GetUsage(q), grpc.StatusCode.INVALID_ARGUMENT, "to")


GOOD = dict(node_pubkey="02" + "ab" * 32, address="127.0.0.1:7000", role="consumer")


@pytest.mark.parametrize("field, value", [
    ("meter_id", ""), ("meter_id", "m" * 65), ("meter_id", "meter 1"), ("meter_id", "meter/1"),
    ("meter_id", "-meter"), ("meter_id", "m\u00e9ter"),
    ("node_pubkey", ""), ("node_pubkey", "02" + "ab" * 31), ("node_pubkey", "04" + "ab" * 32),
    ("node_pubkey", "02" + "zz" * 32),
    ("address", ""), ("address", "127.0.0.1"), ("address", "127.0.0.1:0"), ("address", "127.0.0.1:65536"),
    ("address", "127.0.0.1:http"), ("address", "127.0.0.1:\u00b2"), ("address", "0.0.0.0:7000"),
    ("address", "169.254.169.254:80"), ("address", "224.0.0.1:7000"), ("address", "[::]:7000"),
    ("address", "::1:7000"), ("address", "bad_host:7000"), ("address", "-x.example:7000"),
    ("address", "h\u00f6st:7000"), ("address", "999.1.1.1:7000"), ("address", "a" * 300 + ":1"),
    ("node_address", "0.0.0.0:9735"), ("node_address", "host"),
    ("role", "admin"), ("role", ""),
])
async def test_settlement_refuses_registrations_not_of_their_form(world: Any, field: str, value: str) -> None:
    h, _, _ = world
    engine, stub, _ = await h.start_settlement()
    fields = {"meter_id": "meter-1", **GOOD, field: value}
    req = pb.RegisterMeterRequest(pubkey=MeterKey.generate().pubkey_hex, **fields)
    await _refused(stub.RegisterMeter(req), grpc.StatusCode.INVALID_ARGUMENT, field)
    assert len(engine.meters) == 0 and await engine.store.meters() == []


@pytest.mark.parametrize("address", ["127.0.0.1:7000", "localhost:1", "meter-7.p2pep.svc.cluster.local:50051",
                                     "[::1]:7000", "10.1.2.3:65535"])
async def test_settlement_registers_addresses_it_can_dial(world: Any, address: str) -> None:
    h, _, _ = world
    engine, stub, _ = await h.start_settlement()
    await stub.RegisterMeter(pb.RegisterMeterRequest(meter_id="Meter_7.a", pubkey=MeterKey.generate().pubkey_hex,
                                                     **{**GOOD, "address": address, "node_address": address}))
    assert engine.meters["Meter_7.a"].row.address == address


async def test_a_duplicate_or_replayed_reading_does_not_refresh_liveness(world: Any) -> None:
    h, cons, _ = world
    engine, stub, _ = await h.start_settlement()
    await register(stub, cons)
    t = time.time_ns() // 1_000_000
    first = reading(cons, 1, 5, 0, t)
    assert [a.status for a in await send(stub, first)] == [pb.ReadingAck.STATUS_ACCEPTED]
    link = engine.meters["consumer"]
    link.last_seen = stale = time.monotonic() - 3600  # silent for an hour
    replayed = reading(cons, 1, 6, 0, t)  # seq 1 again, other content
    acks = await send(stub, first, replayed)
    assert [a.status for a in acks] == [pb.ReadingAck.STATUS_DUPLICATE, pb.ReadingAck.STATUS_REJECTED]
    assert link.last_seen == stale, "a resent or replayed reading made a silent meter look alive"
    await register(stub, cons)  # registering again (anyone could, with its public key) is no sign of life
    assert link.last_seen == stale
    before = REGISTRY.get_sample_value("p2pep_settlement_readings_total", {"status": "accepted"})
    assert [a.status for a in await send(stub, reading(cons, 2, 7, 0, t + 1))] == [pb.ReadingAck.STATUS_ACCEPTED]
    assert link.last_seen > stale + 3000
    assert before is None or REGISTRY.get_sample_value("p2pep_settlement_readings_total",
                                                       {"status": "accepted"}) == before + 1
