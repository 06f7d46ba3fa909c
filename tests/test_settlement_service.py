"""Settlement against fake meters (in-process gRPC): contract flow, bad readings, restart.

The real-network runs (real meters, real LND) are in tests/test_e2e_*.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY
from tls_helpers import dial

from p2pep.anchor.verify import verify_offline
from p2pep.identity import Identity
from p2pep.metering.readings import Reading
from p2pep.metering.request_checks import STILL_IN_FLIGHT
from p2pep.metering.signing import MeterKey
from p2pep.regtest import wait_for
from p2pep.servicekit import BaseServiceSettings, ServiceHost
from p2pep.settings.settlement import SettlementSettings
from p2pep.settling.contracts import ContractTerms, sign_contract, verify_contract_signature
from p2pep.v1 import common_pb2, meter_pb2, meter_pb2_grpc, settlement_pb2_grpc
from p2pep.v1 import settlement_pb2 as pb
from services.settlement.engine import Engine
from services.settlement.server import SettlementServicer
from services.settlement.store import Store

# settlement's own behaviour: who may call it is tested in tests/test_access_services.py
pytestmark = pytest.mark.usefixtures("operator_writes")


class FakeMeter(meter_pb2_grpc.MeterServiceServicer):
    """Signs whatever it is asked to, invoices and 'pays' with real preimages."""

    def __init__(self, meter_id: str) -> None:
        self.meter_id = meter_id
        self.key = MeterKey.generate()
        self.preimages: dict[str, bytes] = {}
        self.paid: list[tuple[str, int]] = []
        self.refuse_pay = False
        self.unreachable = False  # PayInvoice answers UNAVAILABLE (its lnd down, the hub down: it passes)
        self.invoice_delay_s = 0.0  # CreateInvoice takes this long
        self.stuck_in_flight = False  # PayInvoice: its lnd holds the payment in flight, neither paid nor failed
        self.stuck: list[str] = []  # payment hashes left in flight that way
        self.settled_at_node: set[str] = set()  # supplier: invoices its node says are paid
        self.canceled: list[str] = []  # supplier: invoices cancelled on ResolveInvoice
        self.updates: list[pb.ContractRecord] = []
        self.asked_to_sign: list[str] = []

    async def SignContract(self, req: meter_pb2.SignContractRequest, ctx: Any) -> meter_pb2.SignContractResponse:
        terms = ContractTerms.from_canonical(json.loads(req.terms_json))
        self.asked_to_sign.append(terms.contract_id)
        return meter_pb2.SignContractResponse(signature=sign_contract(terms, self.key), node_pubkey="02" + "11" * 32)

    async def CreateInvoice(self, req: meter_pb2.CreateInvoiceRequest, ctx: Any) -> meter_pb2.CreateInvoiceResponse:
        await asyncio.sleep(self.invoice_delay_s)
        pre = secrets.token_bytes(32)
        h = hashlib.sha256(pre).hexdigest()
        self.preimages[h] = pre
        return meter_pb2.CreateInvoiceResponse(payment_request=f"lnbcrt-fake-{h}", payment_hash=h)

    async def PayInvoice(self, req: meter_pb2.PayInvoiceRequest, ctx: Any) -> meter_pb2.PayInvoiceResponse:
        if self.refuse_pay:
            await ctx.abort(grpc.StatusCode.FAILED_PRECONDITION, "insufficient local balance")
        if self.unreachable:
            await ctx.abort(grpc.StatusCode.UNAVAILABLE, "payment failed: FAILED: FAILURE_REASON_NO_ROUTE")
        h = req.payment_request.rsplit("-", 1)[1]
        if self.stuck_in_flight or h in self.stuck:  # once stuck, that payment stays in flight
            self.stuck.append(h)
            await ctx.abort(grpc.StatusCode.UNAVAILABLE, f"{STILL_IN_FLIGHT}; ask again")
        assert h not in SUPPLIER.canceled, "a cancelled invoice was paid"
        self.paid.append((req.contract_id, req.increment))
        return meter_pb2.PayInvoiceResponse(preimage=SUPPLIER.preimages[h].hex(), payment_hash=h)

    async def ResolveInvoice(self, req: meter_pb2.ResolveInvoiceRequest, ctx: Any) -> meter_pb2.ResolveInvoiceResponse:
        R = meter_pb2.ResolveInvoiceResponse
        if req.payment_hash in self.settled_at_node:
            return R(state=R.SETTLED, preimage=self.preimages[req.payment_hash].hex())
        if req.cancel:
            self.canceled.append(req.payment_hash)
            return R(state=R.CANCELED)
        return R(state=R.OPEN)

    async def UpdateContract(self, req: pb.ContractRecord, ctx: Any) -> meter_pb2.UpdateContractResponse:
        self.updates.append(req)
        return meter_pb2.UpdateContractResponse()


SUPPLIER: FakeMeter


class Harness:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.hosts: list[ServiceHost] = []

    async def start_meter(self, m: FakeMeter) -> str:
        host = ServiceHost(BaseServiceSettings(), name=m.meter_id, identity=Identity("meter", m.meter_id))
        meter_pb2_grpc.add_MeterServiceServicer_to_server(m, host.grpc_server)
        await host.start()
        self.hosts.append(host)
        return host.grpc_target

    async def start_settlement(self, matcher: Any = None, anchor: Any = None, **settings: Any) -> \
            tuple[Engine, settlement_pb2_grpc.SettlementServiceStub, ServiceHost]:
        s = SettlementSettings(db_path=str(self.tmp / "s.sqlite"), increment_wh=10, sweep_interval_s=0.05,
                               party_silence_s=30, **settings)
        store = await Store.open(s.db_path)
        engine = Engine(s, store, matcher, anchor)
        await engine.load()
        host = ServiceHost(s, name="settlement")
        settlement_pb2_grpc.add_SettlementServiceServicer_to_server(SettlementServicer(engine), host.grpc_server)
        await host.start()
        engine.spawn(engine.sweep_forever())

        async def close() -> None:
            await engine.stop()
            await store.close()

        host.add_shutdown_hook(close)
        self.hosts.append(host)
        ch = dial(host.grpc_target, "settlement")
        return engine, settlement_pb2_grpc.SettlementServiceStub(ch), host

    async def close(self) -> None:
        for h in self.hosts:
            await h.stop(0)


def reading(m: FakeMeter, seq: int, imp: int, exp: int, t_ms: int | None = None) -> common_pb2.Reading:
    t_ms = t_ms or time.time_ns() // 1_000_000
    signed = m.key.sign_reading(Reading(m.meter_id, seq, imp, exp, t_ms))
    msg = common_pb2.Reading(meter_id=m.meter_id, seq=seq, import_wh=imp, export_wh=exp,
                             signature=signed.signature, pubkey=bytes.fromhex(m.key.pubkey_hex))
    msg.timestamp.FromMilliseconds(t_ms)
    return msg


async def send(stub: settlement_pb2_grpc.SettlementServiceStub, *msgs: common_pb2.Reading) -> list[pb.ReadingAck]:
    async def gen() -> AsyncIterator[common_pb2.Reading]:
        for m in msgs:
            yield m

    return [a async for a in stub.StreamReadings(gen())]


def match(cid: str, energy_wh: int, price: int, seconds: float = 60) -> common_pb2.Contract:
    c = common_pb2.Contract(contract_id=cid, consumer="consumer", supplier="supplier", energy_wh=energy_wh,
                            price_msat_per_kwh=price, tier=common_pb2.TIER_PRICE_TIME)
    now = time.time_ns() // 1_000_000
    c.start.FromMilliseconds(now)
    c.end.FromMilliseconds(now + int(seconds * 1000))
    return c


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[Harness, FakeMeter, FakeMeter]]:
    global SUPPLIER
    h = Harness(tmp_path)
    cons, sup = FakeMeter("consumer"), FakeMeter("supplier")
    SUPPLIER = sup
    cons.addr = await h.start_meter(cons)  # type: ignore[attr-defined]
    sup.addr = await h.start_meter(sup)  # type: ignore[attr-defined]
    yield h, cons, sup
    await h.close()


def node_of(meter_id: str) -> str:
    return "02" + hashlib.sha256(meter_id.encode()).hexdigest()


async def register(stub: settlement_pb2_grpc.SettlementServiceStub, *meters: FakeMeter) -> None:
    for m in meters:
        await stub.RegisterMeter(pb.RegisterMeterRequest(
            meter_id=m.meter_id, pubkey=m.key.pubkey_hex, node_pubkey=node_of(m.meter_id),
            address=m.addr, role="consumer" if m.meter_id == "consumer" else "producer"))  # type: ignore[attr-defined]


async def first_increment_paid(world: Any, cid: str, energy_wh: int, **settings: Any) -> \
        tuple[Engine, settlement_pb2_grpc.SettlementServiceStub]:
    """Settlement started with ``settings``, both meters registered, contract ``cid`` proposed
    at 1,000,000 msat/kWh, its first 10 Wh delivered and paid."""
    h, cons, sup = world
    engine, stub, _ = await h.start_settlement(**settings)
    await register(stub, cons, sup)
    await send(stub, reading(cons, 1, 0, 0), reading(sup, 1, 0, 0))
    await engine.propose(match(cid, energy_wh=energy_wh, price=1_000_000))
    await send(stub, reading(cons, 2, 10, 0), reading(sup, 2, 0, 10))
    await wait_for(lambda: engine.contracts[cid].ledger.increments_paid == 1, 10, what="first increment paid")
    return engine, stub


async def test_bad_readings_are_refused_stored_nowhere_and_counted(world: Any) -> None:
    h, cons, sup = world
    engine, stub, _ = await h.start_settlement()
    await register(stub, cons)
    forged = reading(cons, 1, 0, 0)
    forged.signature = sup.key.sign_reading(Reading("consumer", 1, 0, 0, 1)).signature
    before = REGISTRY.get_sample_value("p2pep_settlement_readings_rejected_total",
                                       {"reason": "FORGED_SIGNATURE"}) or 0
    t = time.time_ns() // 1_000_000
    acks = await send(stub, forged, reading(cons, 1, 5, 0, t), reading(cons, 2, 9, 0, t + 1),
                      reading(cons, 2, 9, 0, t + 1), reading(cons, 2, 10, 0, t + 1), reading(cons, 3, 8, 0, t + 2),
                      reading(FakeMeter("stranger"), 1, 0, 0))
    S = pb.ReadingAck
    assert [(a.status, a.reason) for a in acks] == [
        (S.STATUS_REJECTED, "FORGED_SIGNATURE"), (S.STATUS_ACCEPTED, ""), (S.STATUS_ACCEPTED, ""),
        (S.STATUS_DUPLICATE, ""), (S.STATUS_REJECTED, "REPLAYED_SEQUENCE"),
        (S.STATUS_REJECTED, "REGISTER_BACKWARDS"), (S.STATUS_REJECTED, "UNKNOWN_METER"),
    ]
    assert all(a.message for a in acks if a.status == S.STATUS_REJECTED)
    stored = await engine.store.last_reading("consumer")
    assert stored is not None and (stored.seq, stored.import_wh) == (2, 9)
    assert REGISTRY.get_sample_value("p2pep_settlement_readings_rejected_total",
                                     {"reason": "FORGED_SIGNATURE"}) == before + 1


async def test_register_refuses_bad_input(world: Any) -> None:
    h, cons, _ = world
    _, stub, _ = await h.start_settlement()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RegisterMeter(pb.RegisterMeterRequest(meter_id="x", pubkey="zz", address="a:1", role="consumer"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "pubkey" in (err.value.details() or "")
    await register(stub, cons)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RegisterMeter(pb.RegisterMeterRequest(meter_id="consumer", pubkey=MeterKey.generate().pubkey_hex,
                                                         node_pubkey="02" + "22" * 32, address="a:1", role="consumer"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_register_keeps_the_meters_location_and_refuses_an_impossible_one(world: Any) -> None:
    """A meter tells where it is installed as it registers: settlement keeps it (across a
    restart) and lists it; registering again with another place moves it, without one keeps
    it; a meter that never told has none. A place off the globe is INVALID_ARGUMENT naming
    the coordinate, and changes nothing."""
    h, cons, sup = world
    _, stub, host = await h.start_settlement()

    def req(m: FakeMeter, loc: pb.Location | None = None, role: str = "producer") -> pb.RegisterMeterRequest:
        return pb.RegisterMeterRequest(meter_id=m.meter_id, pubkey=m.key.pubkey_hex, node_pubkey=node_of(m.meter_id),
                                       address=m.addr, role=role, location=loc)  # type: ignore[attr-defined]

    async def places() -> dict[str, tuple[float, float] | None]:
        return {m.meter_id: (m.location.latitude, m.location.longitude) if m.HasField("location") else None
                for m in (await stub.ListMeters(pb.ListMetersRequest())).meters}

    await stub.RegisterMeter(req(sup, pb.Location(latitude=52.53, longitude=13.41)))
    await stub.RegisterMeter(req(cons, role="consumer"))  # (as a meter from before locations)
    assert await places() == {"consumer": None, "supplier": (52.53, 13.41)}
    for lat, lon, field in ((90.5, 13.0, "location.latitude"), (-91.0, 0.0, "location.latitude"),
                            (52.0, 180.01, "location.longitude"), (52.0, -200.0, "location.longitude"),
                            (float("nan"), 13.0, "location.latitude"), (52.0, float("inf"), "location.longitude")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RegisterMeter(req(sup, pb.Location(latitude=lat, longitude=lon)))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (lat, lon)
        assert (err.value.details() or "").startswith(f"{field}: must be"), err.value.details()
    assert await places() == {"consumer": None, "supplier": (52.53, 13.41)}
    # the edges of the globe are places; the household corrects its place; leaving it out keeps it
    await stub.RegisterMeter(req(sup, pb.Location(latitude=-90.0, longitude=180.0)))
    await stub.RegisterMeter(req(sup, pb.Location(latitude=52.5301, longitude=13.4102)))
    await stub.RegisterMeter(req(sup))
    assert await places() == {"consumer": None, "supplier": (52.5301, 13.4102)}
    # (0, 0) is a place too, not "none"
    await stub.RegisterMeter(req(cons, pb.Location(latitude=0.0, longitude=0.0), role="consumer"))
    assert await places() == {"consumer": (0.0, 0.0), "supplier": (52.5301, 13.4102)}
    # settlement restarts: the places come back from its store
    await host.stop(0)
    _, stub, _ = await h.start_settlement()
    assert await places() == {"consumer": (0.0, 0.0), "supplier": (52.5301, 13.4102)}


async def test_contract_paid_per_increment_and_survives_restart(world: Any) -> None:
    h, cons, sup = world
    engine, stub, host = await h.start_settlement()
    await register(stub, cons, sup)
    await send(stub, reading(cons, 1, 0, 0), reading(sup, 1, 0, 0))
    await engine.propose(match("c1", energy_wh=55, price=2_000_000))
    assert engine.contracts["c1"].contract.state.value == "active"
    # 25 Wh delivered: two increments due and paid, the third (partial) not yet
    await send(stub, reading(cons, 2, 25, 0), reading(sup, 2, 0, 30))
    await wait_for(lambda: engine.contracts["c1"].ledger.increments_paid == 2, 10, what="2 increments paid")
    assert cons.paid == [("c1", 1), ("c1", 2)]
    # the terms name both meters' nodes as registered; both meters' signatures are in the record
    terms = engine.contracts["c1"].terms
    assert (terms.consumer_node, terms.supplier_node) == (node_of("consumer"), node_of("supplier"))
    active = await stub.GetContract(pb.GetContractRequest(contract_id="c1"))
    assert verify_contract_signature(terms, active.consumer_signature, cons.key.pubkey_hex)
    assert verify_contract_signature(terms, active.supplier_signature, sup.key.pubkey_hex)
    assert sup.updates[-1].supplier_signature == active.supplier_signature
    # a re-registration (same key, another node) re-points no signed contract
    await stub.RegisterMeter(pb.RegisterMeterRequest(meter_id="supplier", pubkey=sup.key.pubkey_hex,
                                                     node_pubkey=node_of("mallory"), address=sup.addr, role="producer"))
    assert (await stub.GetContract(pb.GetContractRequest(contract_id="c1"))).supplier_node == node_of("supplier")
    # settlement dies and comes back: nothing is paid twice, the contract goes on
    await host.stop(0)
    engine, stub, host = await h.start_settlement()
    assert engine.contracts["c1"].ledger.increments_paid == 2
    await send(stub, reading(cons, 3, 47, 0), reading(sup, 3, 0, 60))
    await wait_for(lambda: engine.contracts["c1"].ledger.increments_paid == 4, 10, what="4 increments paid")
    # the consumer ends it early: the final 7 Wh (partial increment) is paid, nothing more
    rec = await stub.EndContract(pb.EndContractRequest(contract_id="c1", meter_id="consumer", reason="leaving"))
    assert rec.state == pb.CONTRACT_STATE_ENDED_EARLY
    await wait_for(lambda: settled(engine, "c1"), 10, what="contract settled")
    rec = await stub.GetContract(pb.GetContractRequest(contract_id="c1"))
    assert (rec.delivered_wh, rec.paid_wh, rec.increments_paid) == (47, 47, 5)
    assert rec.paid_msat == 47 * 2_000_000 // 1000
    assert cons.paid == [("c1", i) for i in range(1, 6)]
    pays = (await stub.ListPayments(pb.ListPaymentsRequest(contract_id="c1"))).payments
    assert [p.increment for p in pays] == [1, 2, 3, 4, 5] and sum(p.amount_msat for p in pays) == rec.paid_msat
    for p in pays:
        assert hashlib.sha256(bytes.fromhex(p.preimage)).hexdigest() == p.payment_hash
    doc = json.loads((await stub.ExportContract(pb.GetContractRequest(contract_id="c1"))).json)
    assert doc["settlement"]["wh_delivered"] == 47 and doc["contract_hash"] == rec.contract.hash.hex()
    # the document carries both meters' signatures and the summary signed by settlement's key:
    # everything but the (absent) anchoring proofs verifies
    report = verify_offline(doc, settlement_pubkey=engine.summary_key.pubkey_hex)
    assert {c.name for c in report.failures} == {"proofs.contract", "proofs.settlement"}, report.render()
    assert doc["signatures"]["supplier"] == rec.supplier_signature.hex()
    assert (h.tmp / "settlement.key").stat().st_mode & 0o777 == 0o600
    # Contract.hash is the signed terms' hash; the matcher's match_hash is not settlement's to fill
    assert rec.contract.hash == ContractTerms.from_canonical(json.loads(rec.terms_json)).hash()
    assert rec.contract.match_hash == b""


async def test_match_without_usable_nodes_is_rejected_unsigned(world: Any) -> None:
    """Terms must name two distinct LND nodes: a match whose meters' registered nodes do not
    give that is rejected at once (the matcher told), and no meter is asked to sign."""
    h, cons, sup = world
    engine, stub, _ = await h.start_settlement()
    await register(stub, cons, sup)
    link = engine.meters["supplier"]
    link.row = replace(link.row, node_pubkey="")
    await engine.propose(match("n1", energy_wh=50, price=1_000_000))
    link.row = replace(link.row, node_pubkey=node_of("consumer"))  # the consumer's node as payee
    await engine.propose(match("n2", energy_wh=50, price=1_000_000))
    assert "n1" not in engine.contracts and "n2" not in engine.contracts
    assert cons.asked_to_sign == sup.asked_to_sign == []


async def test_failed_payment_defaults_within_one_increment(world: Any) -> None:
    h, cons, sup = world
    engine, stub = await first_increment_paid(world, "c2", 100)
    cons.refuse_pay = True
    await send(stub, reading(cons, 3, 20, 0), reading(sup, 3, 0, 20))
    await wait_for(lambda: settled(engine, "c2"), 10, what="contract defaulted")
    rec = await stub.GetContract(pb.GetContractRequest(contract_id="c2"))
    assert rec.state == pb.CONTRACT_STATE_DEFAULTED and rec.end_reason == "PAYMENT_FAILED"
    assert rec.delivered_wh - rec.paid_wh <= rec.increment_wh  # owed at most one increment
    assert any(u.state == pb.CONTRACT_STATE_DEFAULTED for u in cons.updates)


async def test_a_payment_failure_that_passes_defaults_then_collects_what_was_delivered(world: Any) -> None:
    """The consumer's payment fails with UNAVAILABLE (its lnd or the hub down): the contract
    ends DEFAULTED at once (delivery stops), then, once the consumer can pay again, settlement
    collects the owed increment with the same invoice: paid equals delivered value, exactly."""
    h, cons, sup = world
    engine, stub = await first_increment_paid(world, "c4", 100, worker_backoff_initial_s=0.05,
                                              worker_backoff_max_s=0.2)
    before = metric("p2pep_settlement_debts_total", {"outcome": "collected"})
    cons.unreachable = True
    await send(stub, reading(cons, 3, 27, 0), reading(sup, 3, 0, 27))
    rec = await wait_for_record(stub, "c4", lambda r: r.state == pb.CONTRACT_STATE_DEFAULTED)
    assert rec.end_reason == "PAYMENT_FAILED" and rec.paid_wh == 10
    invoices = len(sup.preimages)
    cons.unreachable = False
    await wait_for(lambda: settled(engine, "c4"), 10, what="the debt collected and the contract settled")
    rec = await stub.GetContract(pb.GetContractRequest(contract_id="c4"))
    assert rec.state == pb.CONTRACT_STATE_DEFAULTED and rec.end_reason == "PAYMENT_FAILED"
    # everything delivered when it ended is paid, not a msat less (the partial last increment too)
    assert rec.delivered_wh >= 20 and (rec.paid_wh, rec.paid_msat) == (rec.delivered_wh, rec.delivered_wh * 1_000)
    # the failed increment's invoice asked again: one invoice per increment, never a second one
    assert len(sup.preimages) == invoices + (1 if rec.delivered_wh > 20 else 0)
    assert sorted(set(cons.paid)) == [("c4", n) for n in range(1, rec.increments_paid + 1)]
    assert metric("p2pep_settlement_debts_total", {"outcome": "collected"}) >= before + 1
    summary = json.loads((await engine.store.contract("c4"))["summary_json"])  # type: ignore[index]
    assert summary["msat_paid"] == rec.paid_msat and summary["wh_paid"] == summary["wh_delivered"]


@pytest.mark.parametrize("reached_supplier", [False, True], ids=["cancelled-and-invoiced-anew", "paid-at-supplier"])
async def test_a_payment_stuck_in_flight_is_resolved_at_the_supplier(world: Any, reached_supplier: bool) -> None:
    """The consumer's lnd holds a payment in flight (an HTLC stuck after a crash on the route)
    longer than in_flight_resolve_s: settlement asks the supplier's node. Not paid there: the
    supplier cancels that invoice (it can never be paid now) and the increment is invoiced anew
    and paid. Paid there: recorded paid with the supplier's preimage, nothing paid again."""
    h, cons, sup = world
    engine, stub = await first_increment_paid(world, "c7", 20, worker_backoff_initial_s=0.05,
                                              worker_backoff_max_s=0.2, in_flight_resolve_s=0.5)
    outcome = "paid" if reached_supplier else "reinvoiced"
    before = metric("p2pep_settlement_stuck_payments_total", {"outcome": outcome})
    cons.stuck_in_flight = True
    await send(stub, reading(cons, 3, 20, 0), reading(sup, 3, 0, 20))
    await wait_for(lambda: len(cons.stuck) >= 2, 10, what="the consumer says: still in flight, asked again")
    stuck = cons.stuck[0]
    assert set(cons.stuck) == {stuck}  # asked again with the same invoice while it may still land
    cons.stuck_in_flight = False  # new payments go through; the stuck one stays stuck
    if reached_supplier:
        sup.settled_at_node.add(stuck)
    await wait_for(lambda: settled(engine, "c7"), 10, what="resolved and settled")
    rec = await stub.GetContract(pb.GetContractRequest(contract_id="c7"))
    assert (rec.delivered_wh, rec.paid_wh, rec.paid_msat) == (20, 20, 20_000)
    assert metric("p2pep_settlement_stuck_payments_total", {"outcome": outcome}) == before + 1
    row = await engine.store.payment("c7", 2)
    assert row is not None and row["preimage"]
    if reached_supplier:
        assert sup.canceled == [] and row["payment_hash"] == stuck
        assert ("c7", 2) not in cons.paid  # recorded from the supplier's node, never paid a second time
    else:
        assert sup.canceled == [stuck] and row["payment_hash"] != stuck
        assert cons.paid.count(("c7", 2)) == 1


async def test_a_registering_meter_is_connected_before_its_first_contract(world: Any) -> None:
    """Settlement dials a meter when it registers and starts the connection (mutual-TLS
    handshake included) at once, so the first contract's SignContract does not wait for it."""
    h, cons, sup = world
    engine, stub, _ = await h.start_settlement()
    await register(stub, cons, sup)

    def connected(link: Any) -> bool:
        return link._channel is not None and link._channel.get_state() == grpc.ChannelConnectivity.READY

    for meter_id in ("consumer", "supplier"):
        await wait_for(partial(connected, engine.meters[meter_id]), 5,
                       what=f"{meter_id}'s channel connected without a call on it")


async def test_a_meter_registering_again_does_not_cancel_calls_in_flight_to_it(world: Any) -> None:
    """A supplier that re-registers while settlement waits on its CreateInvoice: the old channel
    is closed with grace, so the call completes and the contract's worker goes on (closed at
    once, the call was cancelled and the worker ended silently, its contract never settled)."""
    h, cons, sup = world
    engine, stub, _ = await h.start_settlement()
    await register(stub, cons, sup)
    await send(stub, reading(cons, 1, 0, 0), reading(sup, 1, 0, 0))
    await engine.propose(match("c6", energy_wh=20, price=1_000_000))
    sup.invoice_delay_s = 1.0
    await send(stub, reading(cons, 2, 10, 0), reading(sup, 2, 0, 10))
    link = engine.meters["supplier"]
    await asyncio.sleep(0.3)  # the worker is inside CreateInvoice now
    await link.reconnect(link.row)
    sup.invoice_delay_s = 0.0
    await send(stub, reading(cons, 3, 20, 0), reading(sup, 3, 0, 20))
    await wait_for(lambda: settled(engine, "c6"), 10, what="the contract paid out and settled")
    rec = await stub.GetContract(pb.GetContractRequest(contract_id="c6"))
    assert (rec.state, rec.paid_wh) == (pb.CONTRACT_STATE_COMPLETED, 20)


async def test_a_debt_not_collected_in_time_is_settled_unpaid(world: Any) -> None:
    h, cons, sup = world
    engine, stub, _ = await h.start_settlement(debt_collect_s=0.5, worker_backoff_initial_s=0.05,
                                               worker_backoff_max_s=0.1)
    await register(stub, cons, sup)
    await send(stub, reading(cons, 1, 0, 0), reading(sup, 1, 0, 0))
    await engine.propose(match("c5", energy_wh=100, price=1_000_000))
    before = metric("p2pep_settlement_debts_total", {"outcome": "given_up"})
    cons.unreachable = True
    await send(stub, reading(cons, 2, 10, 0), reading(sup, 2, 0, 10))
    await wait_for(lambda: settled(engine, "c5"), 10, what="given up and settled")
    rec = await stub.GetContract(pb.GetContractRequest(contract_id="c5"))
    assert rec.state == pb.CONTRACT_STATE_DEFAULTED and (rec.delivered_wh, rec.paid_wh) == (10, 0)
    assert len([p for p in cons.paid if p[0] == "c5"]) == 0
    assert metric("p2pep_settlement_debts_total", {"outcome": "given_up"}) == before + 1
    assert (await engine.store.payment("c5", 1)) is None  # its invoice dropped with the debt


async def test_contract_ends_at_its_end_time_paying_what_was_delivered(world: Any) -> None:
    h, cons, sup = world
    engine, stub, _ = await h.start_settlement()
    await register(stub, cons, sup)
    await send(stub, reading(cons, 1, 0, 0), reading(sup, 1, 0, 0))
    await engine.propose(match("c3", energy_wh=1000, price=1_500_000, seconds=1.0))
    await send(stub, reading(cons, 2, 13, 0), reading(sup, 2, 0, 13))
    await wait_for(lambda: settled(engine, "c3"), 15, what="contract completed at end time")
    rec = await stub.GetContract(pb.GetContractRequest(contract_id="c3"))
    assert rec.state == pb.CONTRACT_STATE_COMPLETED and rec.end_reason == "END_TIME"
    assert (rec.delivered_wh, rec.paid_wh, rec.paid_msat) == (13, 13, 13 * 1_500_000 // 1000)


async def settled(engine: Engine, contract_id: str) -> bool:
    """The contract is settled: stored with its summary (or rejected) and no longer in memory."""
    row = await engine.store.contract(contract_id)
    return row is not None and contract_id not in engine.contracts and (
        row["summary_json"] is not None or row["state"] == "rejected")


def metric(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


@pytest.mark.expected_log_errors(r"^contract worker failed .*ValueError: dictionary update sequence")
async def test_worker_failure_is_shown_counted_and_retried_without_paying_twice(world: Any) -> None:
    """The store fails between the consumer's payment and its record (as the shared-connection
    race did): the worker is not lost; it retries, the consumer's idempotent PayInvoice answers
    the same preimage, and every increment is paid exactly once."""
    h, cons, sup = world
    engine, stub, _ = await h.start_settlement(worker_backoff_initial_s=0.3, worker_backoff_max_s=0.3)
    await register(stub, cons, sup)
    await send(stub, reading(cons, 1, 0, 0), reading(sup, 1, 0, 0))
    real = engine.store.payment_settled
    failures = {"left": 3}

    async def flaky(*args: Any) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise ValueError("dictionary update sequence element #0 has length 19; 2 is required")
        await real(*args)

    engine.store.payment_settled = flaky  # type: ignore[method-assign]
    before = metric("p2pep_settlement_task_failures_total", {"task": "contract_worker"})
    await engine.propose(match("c9", energy_wh=40, price=1_000_000))
    await send(stub, reading(cons, 2, 25, 0), reading(sup, 2, 0, 25))
    # the fault is on the contract at once, for the live view and the console
    rec = await wait_for_record(stub, "c9", lambda r: r.fault != "")
    assert "ValueError" in rec.fault and rec.state == pb.CONTRACT_STATE_ACTIVE
    assert metric("p2pep_settlement_contracts_faulted") == 1
    await wait_for(lambda: engine.contracts["c9"].ledger.increments_paid == 2, 10, what="paid after the retries")
    rec = await stub.GetContract(pb.GetContractRequest(contract_id="c9"))
    assert rec.fault == "" and metric("p2pep_settlement_contracts_faulted") == 0
    assert metric("p2pep_settlement_task_failures_total", {"task": "contract_worker"}) == before + 3
    # the retried increment asked the consumer again for the *same* invoice (one lnd pays an invoice
    # once; the real meter answers a repeated PayInvoice with the stored preimage): no new invoice
    assert sorted(set(cons.paid)) == [("c9", 1), ("c9", 2)] and len(cons.paid) == 2 + 3
    assert len(sup.preimages) == 2
    pays = (await stub.ListPayments(pb.ListPaymentsRequest(contract_id="c9"))).payments
    assert [p.increment for p in pays] == [1, 2] and all(p.preimage for p in pays)


@pytest.mark.expected_log_errors(r"^contract worker failed .*OSError: disk I/O error",
                                 r"^contract worker gave up; ending the contract .*OSError: disk I/O error")
async def test_worker_that_cannot_go_on_ends_its_contract_cleanly(world: Any) -> None:
    h, cons, sup = world
    engine, stub = await first_increment_paid(world, "c10", 100, worker_attempts=3, worker_backoff_initial_s=0.05,
                                              worker_backoff_max_s=0.05)

    async def broken(*args: Any) -> None:
        raise OSError("disk I/O error")

    engine.store.payment_intent = broken  # type: ignore[method-assign]
    abandoned = metric("p2pep_settlement_contracts_abandoned_total")
    await send(stub, reading(cons, 3, 25, 0), reading(sup, 3, 0, 25))
    await wait_for(lambda: settled(engine, "c10"), 10, what="contract ended after 3 failures")
    rec = await stub.GetContract(pb.GetContractRequest(contract_id="c10"))
    assert rec.state == pb.CONTRACT_STATE_ENDED_EARLY and rec.end_reason == "SETTLEMENT_FAULT"
    assert (rec.paid_wh, rec.increments_paid) == (10, 1)  # closed at what was paid: nothing more is due
    assert rec.delivered_wh - rec.paid_wh <= 2 * rec.increment_wh  # at most the increment in flight, and its next
    assert metric("p2pep_settlement_contracts_abandoned_total") == abandoned + 1
    await wait_for(lambda: any(u.state == pb.CONTRACT_STATE_ENDED_EARLY for u in cons.updates), 10,
                   what="the consumer told, so its relay blocks")
    assert cons.paid == [("c10", 1)]


async def wait_for_record(stub: settlement_pb2_grpc.SettlementServiceStub, cid: str,
                          ok: Any) -> pb.ContractRecord:
    async def check() -> pb.ContractRecord | None:
        rec = await stub.GetContract(pb.GetContractRequest(contract_id=cid))
        return rec if ok(rec) else None

    return await wait_for(check, 10, what=f"contract {cid} record")
