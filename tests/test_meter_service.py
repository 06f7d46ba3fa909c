"""The meter service in process, against a fake settlement (a small grpc.aio
SettlementService) and fake LND nodes: settlement's requests checked by the meter,
refusals with status and field, idempotency, the relay, the reading outbox."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc
import pytest
from fakes.lightning import FakeLightning, FakeLnd
from meter_helpers import own_check_bound_wh, record_import_steps
from tls_helpers import StubAsAllowed, dial, server_credentials

from p2pep.canonical import canonical_json
from p2pep.identity import Identity
from p2pep.lndrpc import lightning_pb2 as ln
from p2pep.metering.readings import Reading, SignedReading
from p2pep.metering.request_checks import STILL_IN_FLIGHT
from p2pep.metering.signing import verify_reading
from p2pep.regtest import wait_for
from p2pep.settings.meter import MeterSettings
from p2pep.settling.contracts import ContractTerms, sign_contract, verify_contract_signature
from p2pep.settling.increments import amount_msat
from p2pep.v1 import common_pb2, meter_pb2, meter_pb2_grpc, settlement_pb2_grpc
from p2pep.v1 import settlement_pb2 as S
from services.meter.app import MeterApp, start_meter
from services.meter.billing import invoice_memo, parse_invoice_memo
from services.meter.meter import Meter

PRICE = 123_457  # msat/kWh: amounts do not divide evenly
Ack = S.ReadingAck


# -- a fake settlement ------------------------------------------------------------------------------


@dataclass
class FakeSettlement(settlement_pb2_grpc.SettlementServiceServicer):
    meters: dict[str, S.RegisterMeterRequest] = field(default_factory=dict)
    readings: dict[str, dict[int, Reading]] = field(default_factory=dict)
    contracts: dict[str, S.ContractRecord] = field(default_factory=dict)
    ended: list[tuple[str, str, str]] = field(default_factory=list)
    duplicates: int = 0
    drop_acks_every: int = 0
    """If set: every Nth reading is stored but the stream breaks before its ack."""
    contracts_unreachable: bool = False
    """If set: GetContract and ListContracts answer UNAVAILABLE (the meter's link is down)."""
    _received: int = 0

    async def RegisterMeter(self, request, context):  # type: ignore[no-untyped-def]
        self.meters[request.meter_id] = request
        return S.RegisterMeterResponse(last_seq=max(self.readings.get(request.meter_id, {0: None}), default=0))

    async def StreamReadings(self, request_iterator, context):  # type: ignore[no-untyped-def]
        async for r in request_iterator:
            reading = Reading(r.meter_id, r.seq, r.import_wh, r.export_wh,
                              r.timestamp.seconds * 1000 + r.timestamp.nanos // 1_000_000)
            reg = self.meters.get(r.meter_id)
            if reg is None or not verify_reading(SignedReading(reading, r.signature), reg.pubkey):
                yield Ack(seq=r.seq, status=Ack.STATUS_REJECTED, reason="FORGED_SIGNATURE")
                continue
            stored = self.readings.setdefault(r.meter_id, {})
            if r.seq in stored:
                assert stored[r.seq] == reading, "a seq was reused with other content"
                self.duplicates += 1
                yield Ack(seq=r.seq, status=Ack.STATUS_DUPLICATE)
                continue
            stored[r.seq] = reading
            self._received += 1
            if self.drop_acks_every and self._received % self.drop_acks_every == 0:
                return  # the stream ends before this reading's ack: the meter must resend it
            yield Ack(seq=r.seq, status=Ack.STATUS_ACCEPTED)

    async def ListMeters(self, request, context):  # type: ignore[no-untyped-def]
        out = []
        for mid, m in self.meters.items():
            last = max(self.readings.get(mid, {}), default=0)
            r = self.readings.get(mid, {}).get(last)
            out.append(S.MeterInfo(meter_id=mid, pubkey=m.pubkey, node_pubkey=m.node_pubkey, address=m.address,
                                   role=m.role, last_seq=last, import_wh=r.import_wh if r else 0,
                                   export_wh=r.export_wh if r else 0, node_address=m.node_address,
                                   location=m.location if m.HasField("location") else None))
        return S.ListMetersResponse(meters=out)

    async def GetContract(self, request, context):  # type: ignore[no-untyped-def]
        if self.contracts_unreachable:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the link is down")
        if request.contract_id not in self.contracts:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"contract_id: no contract {request.contract_id!r}")
        return self.contracts[request.contract_id]

    async def ListContracts(self, request, context):  # type: ignore[no-untyped-def]
        if self.contracts_unreachable:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the link is down")
        return S.ListSettlementContractsResponse(contracts=[
            c for c in self.contracts.values() if request.meter_id in (c.contract.consumer, c.contract.supplier)])

    def _energy(self, request: S.EnergyQuery, field: str) -> S.EnergyTotal:
        t0, t1 = getattr(request, "from").ToMilliseconds(), request.to.ToMilliseconds()
        rs = sorted(self.readings.get(request.meter_id, {}).values(), key=lambda r: r.seq)
        inside = [r for r in rs if t0 <= r.timestamp_ms <= t1]
        wh = getattr(inside[-1], field) - getattr(inside[0], field) if inside else 0
        return S.EnergyTotal(meter_id=request.meter_id, energy_wh=wh, readings=len(inside))

    async def GetUsage(self, request, context):  # type: ignore[no-untyped-def]
        return self._energy(request, "import_wh")

    async def GetProduction(self, request, context):  # type: ignore[no-untyped-def]
        return self._energy(request, "export_wh")

    async def ExportContract(self, request, context):  # type: ignore[no-untyped-def]
        if request.contract_id not in self.contracts:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"contract_id: no contract {request.contract_id!r}")
        return S.ContractDocument(json=json.dumps({"version": 1, "terms": {"contract_id": request.contract_id},
                                                   "proofs": [{"leaf": "contract", "txid": "ab" * 32, "height": 7}]}))

    async def EndContract(self, request, context):  # type: ignore[no-untyped-def]
        self.ended.append((request.contract_id, request.meter_id, request.reason))
        rec = self.contracts[request.contract_id]
        rec.state = S.CONTRACT_STATE_ENDED_EARLY
        rec.end_reason = "ENDED_BY_CONSUMER"
        return rec


class SettlementServer:
    """The fake settlement on a fixed port, stoppable and restartable (link down / up)."""

    def __init__(self, servicer: FakeSettlement) -> None:
        self.servicer = servicer
        self.port = 0
        self.server: grpc.aio.Server | None = None

    async def start(self) -> None:
        self.server = grpc.aio.server()
        settlement_pb2_grpc.add_SettlementServiceServicer_to_server(self.servicer, self.server)
        self.port = self.server.add_secure_port(f"127.0.0.1:{self.port}",
                                               server_credentials(Identity("service", "settlement")))
        await self.server.start()

    async def stop(self) -> None:
        assert self.server is not None
        await self.server.stop(0)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


# -- fixtures ------------------------------------------------------------------------------------------


@dataclass
class Rig:
    settlement: FakeSettlement
    server: SettlementServer
    net: FakeLightning
    tmp: Path
    apps: dict[str, MeterApp] = field(default_factory=dict)
    lnds: dict[str, FakeLnd] = field(default_factory=dict)
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    async def meter(self, meter_id: str, role: str, **kw: object) -> MeterApp:
        base: dict[str, object] = dict(
            meter_id=meter_id, role=role, key_path=self.tmp / f"{meter_id}.key",
            db_path=str(self.tmp / f"{meter_id}.sqlite"), settlement_target=self.server.target,
            price_msat_per_kwh=150_000 if role == "consumer" else 100_000, source="constant", constant_w=2000,
            accel=60, tick_s=0.05, hub="", contract_poll_s=0.2, balance_refresh_s=0.2, flush_timeout_s=10,
            leave_timeout_s=1, log_json=False,
        )
        base.update(kw)
        lnd = self.lnds.get(meter_id) or self.net.node(meter_id)
        self.lnds[meter_id] = lnd
        app = await start_meter(MeterSettings(**base), lnd)  # type: ignore[arg-type]
        await wait_for(lambda: app.meter.ready.is_set() or app.meter.failed.is_set(), 30, what=f"{meter_id} ready")
        assert app.meter.ready.is_set(), app.meter.fatal
        self.apps[meter_id] = app
        return app

    def stub(self, meter_id: str) -> meter_pb2_grpc.MeterServiceStub:
        # the test plays settlement for settlement's requests, an operator for the reads
        stub = StubAsAllowed(meter_pb2_grpc.MeterServiceStub, self.apps[meter_id].host.grpc_target, meter_id,
                             "p2pep.v1.MeterService")
        self.channels.extend(stub.channels)
        return stub  # type: ignore[return-value]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    fake = FakeSettlement()
    server = SettlementServer(fake)
    await server.start()
    r = Rig(fake, server, FakeLightning(), tmp_path)
    yield r
    for ch in r.channels:
        await ch.close()
    for app in r.apps.values():
        await app.stop()
    await server.stop()


async def pair(rig: Rig) -> tuple[meter_pb2_grpc.MeterServiceStub, meter_pb2_grpc.MeterServiceStub]:
    await rig.meter("home", "consumer")
    await rig.meter("solar", "producer")
    return rig.stub("home"), rig.stub("solar")


def make_terms(rig: Rig, cid: str = "k-1", **kw: object) -> ContractTerms:
    now = time.time_ns() // 1_000_000
    base: dict[str, object] = dict(
        contract_id=cid, consumer="home", supplier="solar",
        consumer_pubkey=rig.apps["home"].meter.key.pubkey_hex, supplier_pubkey=rig.apps["solar"].meter.key.pubkey_hex,
        consumer_node=rig.lnds["home"].pubkey, supplier_node=rig.lnds["solar"].pubkey, energy_wh=500, price_msat_per_kwh=PRICE, start_ms=now, end_ms=now + 60_000, tier=1, increment_wh=10,
    )
    base.update(kw)
    return ContractTerms(**base)  # type: ignore[arg-type]


def tj(t: ContractTerms) -> str:
    return canonical_json(t.canonical()).decode()


def record(rig: Rig, t: ContractTerms, state: int = S.CONTRACT_STATE_ACTIVE) -> S.ContractRecord:
    rec = S.ContractRecord(
        contract=common_pb2.Contract(contract_id=t.contract_id, consumer=t.consumer, supplier=t.supplier,
                                     energy_wh=t.energy_wh, price_msat_per_kwh=t.price_msat_per_kwh),
        state=state, terms_json=tj(t), increment_wh=t.increment_wh,
        consumer_node=rig.lnds["home"].pubkey, supplier_node=rig.lnds["solar"].pubkey,
        consumer_signature=sign_contract(t, rig.apps["home"].meter.key),
        supplier_signature=sign_contract(t, rig.apps["solar"].meter.key),
    )
    rig.settlement.contracts[t.contract_id] = rec
    return rec


def report_copy(rig: Rig, t: ContractTerms, state: int = S.CONTRACT_STATE_ACTIVE) -> S.ContractRecord:
    """A report to tamper with (settlement itself keeps listing the true one)."""
    out = S.ContractRecord()
    out.CopyFrom(record(rig, t, state))
    return out


async def refused(call, code: grpc.StatusCode, field: str) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    assert info.value.details().startswith(field + ":"), info.value.details()
    return str(info.value.details())


async def signed_and_active(rig: Rig, home, solar, t: ContractTerms,  # type: ignore[no-untyped-def]
                            state: int = S.CONTRACT_STATE_ACTIVE) -> None:
    for stub in (home, solar):
        await stub.SignContract(meter_pb2.SignContractRequest(terms_json=tj(t)))
    rec = record(rig, t, state)
    for stub in (home, solar):
        await stub.UpdateContract(rec)


async def an_increment_imported(rig: Rig) -> tuple[meter_pb2_grpc.MeterServiceStub, meter_pb2_grpc.MeterServiceStub,
                                                   ContractTerms, Meter]:
    """Home and solar paired, contract ``k-1`` signed and active, and home's first 10 Wh
    imported under it: (home's stub, solar's stub, the terms, home's meter)."""
    home, solar = await pair(rig)
    t = make_terms(rig)
    await signed_and_active(rig, home, solar, t)
    m = rig.apps["home"].meter
    await wait_for(lambda: m.sim_registers().import_wh >= 10, 10, what="an increment imported")
    return home, solar, t, m


def invoice_req(t: ContractTerms, k: int, frm: int, to: int, amount: int | None = None) -> meter_pb2.CreateInvoiceRequest:
    return meter_pb2.CreateInvoiceRequest(contract_id=t.contract_id, increment=k, from_wh=frm, to_wh=to,
                                          amount_msat=amount_msat(frm, to, t.price_msat_per_kwh) if amount is None
                                          else amount)


def pay_req(t: ContractTerms, k: int, frm: int, to: int, pr: str) -> meter_pb2.PayInvoiceRequest:
    return meter_pb2.PayInvoiceRequest(contract_id=t.contract_id, increment=k, from_wh=frm, to_wh=to,
                                       payment_request=pr)


# -- tests ----------------------------------------------------------------------------------------------------


async def test_registers_and_streams_signed_readings(rig: Rig) -> None:
    app = await rig.meter("home", "consumer")
    reg = rig.settlement.meters["home"]
    assert (reg.pubkey, reg.node_pubkey, reg.role) == (app.meter.key.pubkey_hex, rig.lnds["home"].pubkey, "consumer")
    assert reg.address == app.host.grpc_target
    await wait_for(lambda: len(rig.settlement.readings.get("home", {})) >= 5, 10, what="readings")
    seqs = sorted(rig.settlement.readings["home"])
    assert seqs == list(range(1, len(seqs) + 1))
    first = rig.settlement.readings["home"][1]  # the baseline, read before the meter could trade
    assert (first.import_wh, first.export_wh) == (0, 0)
    st = await rig.stub("home").GetStatus(meter_pb2.GetStatusRequest())
    assert st.meter_id == "home" and st.seq >= 5 and not st.relay_energized and st.relay_reason == "NO_CONTRACT"
    assert st.import_wh == 0 and st.unmet_wh >= 0 and st.power_w == 2000  # blocked: nothing imported


async def test_sign_contract_checks_terms_against_its_own_state(rig: Rig) -> None:
    home, solar = await pair(rig)
    t = make_terms(rig)
    sign = meter_pb2.SignContractRequest
    await refused(home.SignContract(sign(terms_json="{nope")), grpc.StatusCode.INVALID_ARGUMENT, "terms_json")
    doc = t.canonical()
    del doc["energy_wh"]
    await refused(home.SignContract(sign(terms_json=canonical_json(doc).decode())),
                  grpc.StatusCode.INVALID_ARGUMENT, "terms_json.energy_wh")
    await refused(home.SignContract(sign(terms_json=tj(make_terms(rig, consumer="elsewhere")))),
                  grpc.StatusCode.FAILED_PRECONDITION, "terms_json.consumer")
    swapped = make_terms(rig, consumer_pubkey=t.supplier_pubkey, supplier_pubkey=t.consumer_pubkey)
    await refused(home.SignContract(sign(terms_json=tj(swapped))), grpc.StatusCode.FAILED_PRECONDITION,
                  "terms_json.consumer_pubkey")
    dear = make_terms(rig, price_msat_per_kwh=150_001)
    msg = await refused(home.SignContract(sign(terms_json=tj(dear))), grpc.StatusCode.FAILED_PRECONDITION,
                        "terms_json.price_msat_per_kwh")
    assert "limit" in msg
    cheap = make_terms(rig, price_msat_per_kwh=99_999)
    await refused(solar.SignContract(sign(terms_json=tj(cheap))), grpc.StatusCode.FAILED_PRECONDITION,
                  "terms_json.price_msat_per_kwh")
    past = make_terms(rig, start_ms=t.start_ms - 120_000, end_ms=t.start_ms - 60_000)
    await refused(home.SignContract(sign(terms_json=tj(past))), grpc.StatusCode.FAILED_PRECONDITION,
                  "terms_json.end_ms")

    resp = await home.SignContract(sign(terms_json=tj(t)))
    assert verify_contract_signature(t, resp.signature, t.consumer_pubkey)
    assert resp.node_pubkey == rig.lnds["home"].pubkey
    again = await home.SignContract(sign(terms_json=tj(t)))
    assert again.signature == resp.signature
    await refused(home.SignContract(sign(terms_json=tj(make_terms(rig, energy_wh=600)))),
                  grpc.StatusCode.FAILED_PRECONDITION, "terms_json.contract_id")
    sup = await solar.SignContract(sign(terms_json=tj(t)))
    assert verify_contract_signature(t, sup.signature, t.supplier_pubkey)
    listed = await home.ListContracts(meter_pb2.MeterContractsRequest())
    assert [c.contract.contract_id for c in listed.contracts] == ["k-1"]
    assert listed.contracts[0].state == S.CONTRACT_STATE_PROPOSED


async def test_update_contract_is_checked(rig: Rig) -> None:
    home, _ = await pair(rig)
    t = make_terms(rig)
    await refused(home.UpdateContract(record(rig, t)), grpc.StatusCode.FAILED_PRECONDITION, "contract.contract_id")
    await home.SignContract(meter_pb2.SignContractRequest(terms_json=tj(t)))
    forged = record(rig, t)
    forged.terms_json = tj(make_terms(rig, price_msat_per_kwh=1))
    await refused(home.UpdateContract(forged), grpc.StatusCode.INVALID_ARGUMENT, "terms_json")


def signed_of(resp: meter_pb2.MeterContractsResponse) -> list[tuple[str, str, str, str, int]]:
    """What a meter's contracts say about who is paid (not their progress)."""
    return [(r.terms_json, r.contract.SerializeToString().hex(), r.supplier_node, r.consumer_node, r.state)
            for r in resp.contracts]


async def test_payee_cannot_be_repointed_after_signing(rig: Rig) -> None:
    """UpdateContract restating another payee (node, supplier, terms, hash) is refused and
    changes nothing; the meter pays only the supplier_node of the terms it signed, whatever
    settlement's registry says now."""
    home, solar = await pair(rig)
    t = make_terms(rig)
    await signed_and_active(rig, home, solar, t)
    m = rig.apps["home"].meter
    mallory = rig.net.node("mallory")
    before = await home.ListContracts(meter_pb2.MeterContractsRequest())
    repointed = report_copy(rig, t)
    repointed.supplier_node = mallory.pubkey
    await refused(home.UpdateContract(repointed), grpc.StatusCode.INVALID_ARGUMENT, "supplier_node")
    other_supplier = report_copy(rig, t)
    other_supplier.contract.supplier = "mallory"
    await refused(home.UpdateContract(other_supplier), grpc.StatusCode.INVALID_ARGUMENT, "contract.supplier")
    evil = make_terms(rig, supplier_node=mallory.pubkey)
    other_terms = report_copy(rig, t)
    other_terms.terms_json = tj(evil)
    await refused(home.UpdateContract(other_terms), grpc.StatusCode.INVALID_ARGUMENT, "terms_json")
    other_hash = report_copy(rig, t)
    other_hash.contract.hash = evil.hash()
    await refused(home.UpdateContract(other_hash), grpc.StatusCode.INVALID_ARGUMENT, "contract.hash")
    # nothing changed that names the payee (its delivery goes on: the relay is energized)
    assert signed_of(await home.ListContracts(meter_pb2.MeterContractsRequest())) == signed_of(before)
    assert m.book.get(t.contract_id).supplier_node == rig.lnds["solar"].pubkey  # type: ignore[union-attr]
    # settlement's registry re-pointed (e.g. a re-registration): no signed contract follows it
    rig.settlement.meters["solar"].node_pubkey = mallory.pubkey
    await wait_for(lambda: m.sim_registers().import_wh >= 10, 10, what="an increment imported")
    stolen = await mallory.add_invoice(value_msat=amount_msat(0, 10, PRICE))
    msg = await refused(home.PayInvoice(pay_req(t, 1, 0, 10, stolen.payment_request)),
                        grpc.StatusCode.FAILED_PRECONDITION, "payment_request")
    assert rig.lnds["solar"].pubkey in msg and "signed terms" in msg
    assert rig.lnds["home"].calls.get("SendPaymentV2", 0) == 0
    inv = await solar.CreateInvoice(invoice_req(t, 1, 0, 10))
    paid = await home.PayInvoice(pay_req(t, 1, 0, 10, inv.payment_request))
    assert paid.preimage and rig.lnds["home"].calls["SendPaymentV2"] == 1


async def test_fake_contract_never_runs_on_a_consumers_meter(rig: Rig) -> None:
    """A stranger's contract: the consumer signs only terms whose supplier key and node are
    the supplier's registered ones and whose consumer node is its own; terms it signed run
    only with the supplier's own signature in the report, so nothing is paid."""
    home, solar = await pair(rig)
    mallory = rig.net.node("mallory")
    sign = meter_pb2.SignContractRequest
    await refused(home.SignContract(sign(terms_json=tj(make_terms(rig, "f-1", supplier_node=mallory.pubkey)))),
                  grpc.StatusCode.FAILED_PRECONDITION, "terms_json.supplier_node")
    await refused(home.SignContract(sign(terms_json=tj(make_terms(rig, "f-2", consumer_node=mallory.pubkey)))),
                  grpc.StatusCode.FAILED_PRECONDITION, "terms_json.consumer_node")
    from p2pep.metering.signing import MeterKey

    mkey = MeterKey.generate()
    await refused(home.SignContract(sign(terms_json=tj(make_terms(
        rig, "f-3", supplier="mallory", supplier_pubkey=mkey.pubkey_hex, supplier_node=mallory.pubkey)))),
        grpc.StatusCode.FAILED_PRECONDITION, "terms_json.supplier")
    await refused(solar.SignContract(sign(terms_json=tj(make_terms(rig, "f-4", supplier_node=mallory.pubkey)))),
                  grpc.StatusCode.FAILED_PRECONDITION, "terms_json.supplier_node")
    # terms as settlement would propose them, but only the consumer was asked to sign
    t = make_terms(rig, "f-5")
    await home.SignContract(sign(terms_json=tj(t)))
    fake = report_copy(rig, t)
    del rig.settlement.contracts[t.contract_id]  # settlement never proposed it
    fake.supplier_signature = b""
    await refused(home.UpdateContract(fake), grpc.StatusCode.FAILED_PRECONDITION, "supplier_signature")
    fake.supplier_signature = sign_contract(t, mkey)
    await refused(home.UpdateContract(fake), grpc.StatusCode.FAILED_PRECONDITION, "supplier_signature")
    fake.supplier_signature = sign_contract(t, rig.apps["home"].meter.key)
    await refused(home.UpdateContract(fake), grpc.StatusCode.FAILED_PRECONDITION, "supplier_signature")
    fake.state = S.CONTRACT_STATE_ENDED_EARLY  # straight to a billable final state: the same check
    await refused(home.UpdateContract(fake), grpc.StatusCode.FAILED_PRECONDITION, "supplier_signature")
    listed = await home.ListContracts(meter_pb2.MeterContractsRequest())
    assert [(c.contract.contract_id, c.state) for c in listed.contracts] == [("f-5", S.CONTRACT_STATE_PROPOSED)]
    inv = await mallory.add_invoice(value_msat=amount_msat(0, 10, PRICE))
    await refused(home.PayInvoice(pay_req(t, 1, 0, 10, inv.payment_request)), grpc.StatusCode.FAILED_PRECONDITION,
                  "contract_id")
    assert rig.lnds["home"].calls.get("SendPaymentV2", 0) == 0
    st = await home.GetStatus(meter_pb2.GetStatusRequest())
    assert not st.relay_energized and st.import_wh == 0  # no contract runs: nothing flows, nothing is owed


async def test_relay_follows_cover_and_payments_one_increment_at_a_time(rig: Rig,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    home, solar = await pair(rig)
    m = rig.apps["home"].meter
    steps = record_import_steps(m, monkeypatch)
    t = make_terms(rig)
    await signed_and_active(rig, home, solar, t)
    await wait_for(lambda: m.relay.energized, 5, what="relay energized")
    # nobody pays: the meter's own check blocks before two increments are unpaid (by its own
    # count, judging the next step by its nominal size: a late tick may take a bigger one)
    await wait_for(lambda: m.relay.reason.value == "NOT_PAID_UP", 10, what="blocked for payment")
    bound = own_check_bound_wh(m, t.increment_wh, steps)
    assert m.book.unpaid_wh() < bound and not m.relay.energized, (m.book.unpaid_wh(), steps)
    imported = m.sim_registers().import_wh
    assert 10 <= imported < bound

    # settlement's round: supplier invoices, consumer pays, preimage matches
    inv = await solar.CreateInvoice(invoice_req(t, 1, 0, 10))
    paid = await home.PayInvoice(pay_req(t, 1, 0, 10, inv.payment_request))
    assert hashlib.sha256(bytes.fromhex(paid.preimage)).hexdigest() == inv.payment_hash == paid.payment_hash
    await wait_for(lambda: m.relay.energized, 5, what="energized again after paying")
    st = await home.GetStatus(meter_pb2.GetStatusRequest())
    assert st.paid_msat == amount_msat(0, 10, PRICE) and st.relay_changes >= 3 and st.active_contracts == 1
    supplier = rig.apps["solar"].meter
    await wait_for(lambda: supplier.status().earned_msat == amount_msat(0, 10, PRICE), 5,
                   what="supplier sees its invoice settled")
    pays = await home.ListPayments(meter_pb2.MeterPaymentsRequest())
    assert [(p.increment, p.incoming) for p in pays.payments] == [(1, False)]
    incoming = await solar.ListPayments(meter_pb2.MeterPaymentsRequest())
    assert [(p.increment, p.incoming, p.amount_msat) for p in incoming.payments] == [(1, True, 1234)]


async def test_create_invoice_checks_and_idempotency(rig: Rig) -> None:
    home, solar = await pair(rig)
    t = make_terms(rig)
    await refused(solar.CreateInvoice(invoice_req(t, 1, 0, 10)), grpc.StatusCode.FAILED_PRECONDITION, "contract_id")
    await signed_and_active(rig, home, solar, t)
    await refused(home.CreateInvoice(invoice_req(t, 1, 0, 10)), grpc.StatusCode.FAILED_PRECONDITION, "contract_id")
    await refused(solar.CreateInvoice(invoice_req(t, 1, 0, 10, amount=1235)), grpc.StatusCode.INVALID_ARGUMENT,
                  "amount_msat")
    await refused(solar.CreateInvoice(invoice_req(t, 2, 10, 20)), grpc.StatusCode.FAILED_PRECONDITION, "increment")
    await refused(solar.CreateInvoice(invoice_req(t, 1, 0, 5)), grpc.StatusCode.FAILED_PRECONDITION, "to_wh")
    first = await solar.CreateInvoice(invoice_req(t, 1, 0, 10))
    again = await solar.CreateInvoice(invoice_req(t, 1, 0, 10))
    assert (again.payment_request, again.payment_hash) == (first.payment_request, first.payment_hash)
    assert rig.lnds["solar"].calls["AddInvoice"] == 1
    inv = rig.lnds["solar"].invoices[first.payment_hash]
    assert inv.memo == "p2pep k-1 #1" and inv.value_msat == 1234 and inv.expiry == 600
    # the next increment only once the previous one is paid on its own node
    await refused(solar.CreateInvoice(invoice_req(t, 2, 10, 20)), grpc.StatusCode.FAILED_PRECONDITION, "increment")
    await rig.lnds["home"].pay(first.payment_request)
    second = await solar.CreateInvoice(invoice_req(t, 2, 10, 20))
    assert second.payment_hash != first.payment_hash
    # the contract ends: a shorter final increment is accepted (settlement says it ended)
    rig.settlement.contracts[t.contract_id].state = S.CONTRACT_STATE_ENDED_EARLY
    await rig.lnds["home"].pay(second.payment_request)
    final = await solar.CreateInvoice(invoice_req(t, 3, 20, 24))
    assert rig.lnds["solar"].invoices[final.payment_hash].value_msat == amount_msat(20, 24, PRICE)


async def test_an_invoice_paid_is_recorded_from_the_nodes_stream_off_the_next_increments_path(rig: Rig) -> None:
    """The supplier's meter hears its node settle an increment's invoice (SubscribeInvoices) and
    records it, with the contract's earned totals in the same commit: the next CreateInvoice
    needs no LookupInvoice. With the stream broken, the rule holds by asking the node."""
    home, solar = await pair(rig)
    t = make_terms(rig)
    await signed_and_active(rig, home, solar, t)
    node, store = rig.lnds["solar"], rig.apps["solar"].meter.store
    await wait_for(lambda: node.invoice_streams, 10, what="the supplier's invoice stream open")
    first = await solar.CreateInvoice(invoice_req(t, 1, 0, 10))
    await rig.lnds["home"].pay(first.payment_request)

    async def recorded(k: int) -> bool:
        row = await store.invoice(t.contract_id, k)
        return row is not None and row.settled
    await wait_for(lambda: recorded(1), 10, what="increment 1 recorded paid from the stream")
    view = next(v for v in await store.contracts() if v.contract_id == t.contract_id)
    assert (view.paid_wh, view.paid_msat, view.increments) == (10, amount_msat(0, 10, PRICE), 1)
    assert node.calls.get("LookupInvoice", 0) == 0
    await solar.CreateInvoice(invoice_req(t, 2, 10, 20))
    assert node.calls.get("LookupInvoice", 0) == 0
    # the stream breaks (lnd restarting): increment 2 paid meanwhile is found by asking the node
    node.break_invoice_streams()
    await wait_for(lambda: not node.invoice_streams, 10, what="the stream gone")
    second = (await store.invoice(t.contract_id, 2))
    assert second is not None
    await rig.lnds["home"].pay(second.payment_request)
    await solar.CreateInvoice(invoice_req(t, 3, 20, 30))
    assert node.calls["LookupInvoice"] >= 1 and await recorded(2)
    await wait_for(lambda: node.invoice_streams, 10, what="the stream opened again")


def test_invoice_memo_round_trip() -> None:
    assert parse_invoice_memo(invoice_memo("c-1 #x", 7)) == ("c-1 #x", 7)
    for memo in ("", "bench", "p2pep", "p2pep c-1", "p2pep c-1 #", "p2pep c-1 #-1", "other c-1 #2"):
        assert parse_invoice_memo(memo) is None, memo


async def test_pay_invoice_checks_and_idempotency(rig: Rig) -> None:
    home, solar, t, m = await an_increment_imported(rig)
    # an invoice for another amount, and one from a node that is not the supplier's
    wrong_amount = await rig.lnds["solar"].add_invoice(value_msat=5000)
    await refused(home.PayInvoice(pay_req(t, 1, 0, 10, wrong_amount.payment_request)),
                  grpc.StatusCode.INVALID_ARGUMENT, "payment_request")
    stranger = rig.net.node("mallory")
    wrong_payee = await stranger.add_invoice(value_msat=amount_msat(0, 10, PRICE))
    msg = await refused(home.PayInvoice(pay_req(t, 1, 0, 10, wrong_payee.payment_request)),
                        grpc.StatusCode.FAILED_PRECONDITION, "payment_request")
    assert "supplier" in msg
    await refused(home.PayInvoice(pay_req(t, 1, 0, 10, "lnbogus")), grpc.StatusCode.INVALID_ARGUMENT,
                  "payment_request")
    inv = await solar.CreateInvoice(invoice_req(t, 1, 0, 10))
    await refused(home.PayInvoice(pay_req(t, 2, 10, 20, inv.payment_request)), grpc.StatusCode.FAILED_PRECONDITION,
                  "increment")
    await refused(solar.PayInvoice(pay_req(t, 1, 0, 10, inv.payment_request)), grpc.StatusCode.FAILED_PRECONDITION,
                  "contract_id")
    assert rig.lnds["home"].calls.get("SendPaymentV2", 0) == 0  # nothing refused was paid

    first = await home.PayInvoice(pay_req(t, 1, 0, 10, inv.payment_request))
    again = await home.PayInvoice(pay_req(t, 1, 0, 10, inv.payment_request))
    assert again.preimage == first.preimage and rig.lnds["home"].calls["SendPaymentV2"] == 1
    assert m.book.paid_wh_total() == 10

    # paid out of band (e.g. before a restart): lnd says "already paid", the meter finds the preimage
    inv2 = await solar.CreateInvoice(invoice_req(t, 2, 10, 20))
    await wait_for(lambda: m.sim_registers().import_wh >= 10, 5)
    out_of_band = await rig.lnds["home"].pay(inv2.payment_request)
    got = await home.PayInvoice(pay_req(t, 2, 10, 20, inv2.payment_request))
    assert got.preimage == out_of_band.preimage


async def test_a_last_partial_increment_is_asked_again_while_settlement_cannot_say_the_contract_ended(
        rig: Rig) -> None:
    """The contract ended while the consumer's link was down, so its meter was never told and
    still shows it running. Asked to pay the last, partial increment, it asks settlement; if
    settlement cannot be reached it answers UNAVAILABLE (settlement asks again), not
    FAILED_PRECONDITION ("cannot pay": the debt would be given up). Once settlement answers, it pays."""
    home, solar, t, m = await an_increment_imported(rig)
    ended = record(rig, t, S.CONTRACT_STATE_DEFAULTED)  # settlement's books; the consumer is not told
    await solar.UpdateContract(ended)
    inv = await solar.CreateInvoice(invoice_req(t, 1, 0, 5))
    rig.settlement.contracts_unreachable = True
    msg = await refused(home.PayInvoice(pay_req(t, 1, 0, 5, inv.payment_request)), grpc.StatusCode.UNAVAILABLE,
                        "to_wh")
    assert "ask again" in msg and rig.lnds["home"].calls.get("SendPaymentV2", 0) == 0
    rig.settlement.contracts_unreachable = False
    paid = await home.PayInvoice(pay_req(t, 1, 0, 5, inv.payment_request))
    assert paid.preimage and rig.lnds["home"].calls["SendPaymentV2"] == 1


async def test_never_pays_for_energy_it_did_not_import(rig: Rig) -> None:
    home, solar = await pair(rig)
    t = make_terms(rig, energy_wh=100)
    # the contract ended before this meter imported anything under it
    await signed_and_active(rig, home, solar, t, state=S.CONTRACT_STATE_ENDED_EARLY)
    assert rig.apps["home"].meter.import_since_first_contract_wh == 0
    inv1 = await solar.CreateInvoice(invoice_req(t, 1, 0, 10))
    await home.PayInvoice(pay_req(t, 1, 0, 10, inv1.payment_request))  # one increment ahead is allowed
    inv2 = await solar.CreateInvoice(invoice_req(t, 2, 10, 20))
    msg = await refused(home.PayInvoice(pay_req(t, 2, 10, 20, inv2.payment_request)),
                        grpc.StatusCode.FAILED_PRECONDITION, "to_wh")
    assert "imported" in msg
    assert rig.lnds["home"].calls["SendPaymentV2"] == 1


async def test_a_payment_failure_that_passes_answers_unavailable_and_is_paid_when_asked_again(rig: Rig) -> None:
    """No route (the hub restarting), INSUFFICIENT_BALANCE while the channel is inactive, or this
    meter's own lnd unreachable: UNAVAILABLE, which settlement takes as "ask again" (it collects
    the increment once the failure passed); asked again with the same invoice, the meter pays it
    once. INSUFFICIENT_BALANCE with the channel active is the consumer unable to pay."""
    home, solar, t, m = await an_increment_imported(rig)
    inv = await solar.CreateInvoice(invoice_req(t, 1, 0, 10))
    lnd = rig.lnds["home"]
    lnd.fail_pay = "FAILURE_REASON_NO_ROUTE"
    assert "NO_ROUTE" in await refused(home.PayInvoice(pay_req(t, 1, 0, 10, inv.payment_request)),
                                       grpc.StatusCode.UNAVAILABLE, "payment_request")
    lnd.fail_pay, lnd.channels_inactive = "FAILURE_REASON_INSUFFICIENT_BALANCE", True
    await refused(home.PayInvoice(pay_req(t, 1, 0, 10, inv.payment_request)), grpc.StatusCode.UNAVAILABLE,
                  "payment_request")
    lnd.channels_inactive = False
    await refused(home.PayInvoice(pay_req(t, 1, 0, 10, inv.payment_request)), grpc.StatusCode.FAILED_PRECONDITION,
                  "payment_request")
    lnd.fail_pay, lnd.down = None, True
    assert "cannot be reached" in await refused(home.PayInvoice(pay_req(t, 1, 0, 10, inv.payment_request)),
                                                grpc.StatusCode.UNAVAILABLE, "payment_request")
    lnd.down = False
    paid = await home.PayInvoice(pay_req(t, 1, 0, 10, inv.payment_request))
    sent = lnd.calls["SendPaymentV2"]
    again = await home.PayInvoice(pay_req(t, 1, 0, 10, inv.payment_request))
    assert paid.preimage == again.preimage and lnd.calls["SendPaymentV2"] == sent  # answered, not paid again


async def test_an_invoice_whose_payment_is_stuck_is_cancelled_or_found_paid_at_the_supplier(rig: Rig) -> None:
    """ResolveInvoice (settlement's, for a payment the consumer's lnd holds in flight too long):
    the supplier's own node says. Open and asked to cancel: cancelled, so it can never be paid,
    and the increment is invoiced anew; paid: SETTLED with the preimage, never cancelled."""
    home, solar, t, m = await an_increment_imported(rig)
    inv = await solar.CreateInvoice(invoice_req(t, 1, 0, 10))
    R = meter_pb2.ResolveInvoiceResponse

    def resolve(payment_hash: str, cancel: bool = True) -> meter_pb2.ResolveInvoiceRequest:
        return meter_pb2.ResolveInvoiceRequest(contract_id=t.contract_id, increment=1, payment_hash=payment_hash,
                                               cancel=cancel)

    await refused(solar.ResolveInvoice(resolve("00" * 32)), grpc.StatusCode.NOT_FOUND, "payment_hash")
    await refused(home.ResolveInvoice(resolve(inv.payment_hash)), grpc.StatusCode.FAILED_PRECONDITION, "contract_id")
    assert (await solar.ResolveInvoice(resolve(inv.payment_hash, cancel=False))).state == R.OPEN
    rig.lnds["home"].stuck_in_flight = True
    assert STILL_IN_FLIGHT in await refused(home.PayInvoice(pay_req(t, 1, 0, 10, inv.payment_request)),
                                            grpc.StatusCode.UNAVAILABLE, "payment_request")
    assert (await solar.ResolveInvoice(resolve(inv.payment_hash))).state == R.CANCELED
    assert rig.lnds["solar"].invoices[inv.payment_hash].state == ln.Invoice.CANCELED
    anew = await solar.CreateInvoice(invoice_req(t, 1, 0, 10))
    assert anew.payment_hash != inv.payment_hash  # invoiced anew, not the cancelled one again
    rig.lnds["home"].stuck_in_flight = False
    paid = await home.PayInvoice(pay_req(t, 1, 0, 10, anew.payment_request))
    found = await solar.ResolveInvoice(resolve(anew.payment_hash))
    assert (found.state, found.preimage) == (R.SETTLED, paid.preimage)
    assert rig.lnds["solar"].invoices[anew.payment_hash].state == ln.Invoice.SETTLED  # not cancelled


async def test_failed_payment_blocks_relay_until_a_new_contract(rig: Rig) -> None:
    home, solar, t, m = await an_increment_imported(rig)
    inv = await solar.CreateInvoice(invoice_req(t, 1, 0, 10))
    rig.lnds["home"].fail_pay = "FAILURE_REASON_INSUFFICIENT_BALANCE"
    msg = await refused(home.PayInvoice(pay_req(t, 1, 0, 10, inv.payment_request)),
                        grpc.StatusCode.FAILED_PRECONDITION, "payment_request")
    assert "INSUFFICIENT_BALANCE" in msg
    st = await home.GetStatus(meter_pb2.GetStatusRequest())
    assert not st.relay_energized and st.relay_reason == "PAYMENT_FAILED"
    # settlement defaults the contract; the relay stays blocked ...
    rig.settlement.contracts[t.contract_id].state = S.CONTRACT_STATE_DEFAULTED
    await home.UpdateContract(rig.settlement.contracts[t.contract_id])
    await asyncio.sleep(0.2)  # a few ticks: nothing may energize it
    assert not m.relay.energized and m.relay.reason.value == "PAYMENT_FAILED"
    # ... until a new contract is signed and active
    rig.lnds["home"].fail_pay = None
    t2 = make_terms(rig, "k-2")
    await signed_and_active(rig, home, solar, t2)
    await wait_for(lambda: m.relay.energized, 5, what="energized under the new contract")


async def test_outbox_survives_settlement_outage_and_broken_streams(rig: Rig) -> None:
    home = await rig.meter("home", "consumer")
    m = home.meter
    fake = rig.settlement
    await wait_for(lambda: len(fake.readings.get("home", {})) >= 3, 10, what="first readings")
    await rig.server.stop()
    await wait_for(lambda: m.sender.size >= 10, 10, what="readings buffered while settlement is down")
    st = m.status()
    assert st.unacked_readings >= 10
    # back, but the link drops before some acks: those readings are resent and acked DUPLICATE
    fake.drop_acks_every = 4
    await rig.server.start()
    await wait_for(lambda: fake.duplicates >= 2, 15, what="resent readings")
    fake.drop_acks_every = 0
    await wait_for(lambda: m.sender.size <= 2, 15, what="outbox drained")
    seqs = sorted(fake.readings["home"])
    assert seqs == list(range(1, seqs[-1] + 1)), "a reading was lost"


async def test_restart_resumes_sequence_and_leaving_ends_contracts(rig: Rig) -> None:
    home, solar = await pair(rig)
    t = make_terms(rig)
    await signed_and_active(rig, home, solar, t)
    await wait_for(lambda: rig.apps["home"].meter.relay.energized, 30, what="relay energized")
    app = rig.apps.pop("home")
    await app.stop()  # SIGTERM path: ends its contract, final reading, flush
    assert ("k-1", "home", "meter leaving") in rig.settlement.ended
    last = max(rig.settlement.readings["home"])
    assert rig.settlement.readings["home"][last].import_wh == app.meter.sim_registers().import_wh
    again = await rig.meter("home", "consumer")
    await wait_for(lambda: max(rig.settlement.readings["home"]) > last + 2, 30, what="readings after restart")
    seqs = sorted(rig.settlement.readings["home"])
    assert seqs == list(range(1, seqs[-1] + 1))
    assert again.meter.book.get("k-1") is not None  # its contracts survive the restart


async def test_leaving_during_a_slow_tick_skips_no_sequence_number(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM while a tick is storing its reading (a slow disk): shutdown waits for that tick
    instead of cancelling it halfway (registers advanced in memory, reading never stored), so
    the final reading takes the next seq and settlement holds 1..N without a gap."""
    app = await rig.meter("home", "consumer")
    store = app.meter.store
    real_save = store.save_tick
    inside, release = asyncio.Event(), asyncio.Event()

    async def slow_save(*args: object, **kw: object) -> None:
        inside.set()
        await release.wait()
        await real_save(*args, **kw)  # type: ignore[arg-type]

    await wait_for(lambda: len(rig.settlement.readings.get("home", {})) >= 3, 30, what="first readings")
    monkeypatch.setattr(store, "save_tick", slow_save)
    await wait_for(inside.is_set, 30, what="a tick storing its reading")
    stopping = asyncio.create_task(rig.apps.pop("home").stop())
    await wait_for(lambda: app.meter.leaving, 10, what="shutdown begun")
    assert not stopping.done()  # it waits for the tick
    release.set()
    await stopping
    seqs = sorted(rig.settlement.readings["home"])
    assert seqs == list(range(1, seqs[-1] + 1)), seqs
    assert seqs[-1] == app.meter.sim_registers().seq


async def test_hub_channel_opened_at_startup_when_missing(rig: Rig) -> None:
    hub = "02" + "33" * 32
    app = await rig.meter("home", "consumer", hub=f"{hub}@127.0.0.1:9736", channel_sat=1_000_000)
    lnd = rig.lnds["home"]
    await wait_for(lambda: lnd.channels_opened, 5, what="hub channel")
    assert lnd.channels_opened == [(hub, 1_000_000, 500_000)] and lnd.calls["ConnectPeer"] == 1
    assert app.meter.ready.is_set()


async def test_adhoc_consumer_opens_a_channel_to_its_supplier_before_signing(rig: Rig) -> None:
    await rig.meter("home", "consumer", network_mode="adhoc", channel_sat=100_000)
    await rig.meter("solar", "producer", network_mode="adhoc", lnd_p2p="127.0.0.1:9737")
    assert rig.settlement.meters["solar"].node_address == "127.0.0.1:9737"
    t = make_terms(rig, energy_wh=2_000_000, price_msat_per_kwh=150_000, increment_wh=100)  # 300,000 sat
    await rig.stub("home").SignContract(meter_pb2.SignContractRequest(terms_json=tj(t)))
    need = amount_msat(0, 2_000_000, 150_000) // 1000
    ((peer, sat, push),) = rig.lnds["home"].channels_opened
    assert peer == rig.lnds["solar"].pubkey and sat >= need and push == 0
    # enough capacity now: the next contract with that supplier opens nothing
    await rig.stub("home").SignContract(meter_pb2.SignContractRequest(terms_json=tj(make_terms(rig, "k-2"))))
    assert len(rig.lnds["home"].channels_opened) == 1
    assert not rig.lnds["solar"].channels_opened


async def test_consumer_refuses_contracts_its_channels_cannot_pay(rig: Rig) -> None:
    hub = "03" + "11" * 32  # the fake node's channel peer: 1,000,000 sat spendable
    await rig.meter("home", "consumer", hub=f"{hub}@127.0.0.1:9736", channel_sat=100_000)
    await rig.meter("solar", "producer")
    home, lnd = rig.stub("home"), rig.lnds["home"]
    assert not lnd.channels_opened  # it has a hub channel already
    small = make_terms(rig, "k-1", energy_wh=1000, price_msat_per_kwh=150_000)  # 150 sat
    await home.SignContract(meter_pb2.SignContractRequest(terms_json=tj(small)))
    assert not lnd.channels_opened
    big = make_terms(rig, "k-2", energy_wh=8_000_000, increment_wh=100, price_msat_per_kwh=150_000)  # 1.2M sat
    await home.SignContract(meter_pb2.SignContractRequest(terms_json=tj(big)))
    ((peer, sat, push),) = lnd.channels_opened  # another hub channel for the capacity
    assert peer == hub and push == 0 and sat >= 1_200_000
    lnd.fail_open = "not enough witness outputs to create funding transaction"
    lnd.channels_opened.clear()
    huge = make_terms(rig, "k-3", energy_wh=9_000_000, increment_wh=100, price_msat_per_kwh=150_000)
    msg = await refused(home.SignContract(meter_pb2.SignContractRequest(terms_json=tj(huge))),
                        grpc.StatusCode.FAILED_PRECONDITION, "terms_json.energy_wh")
    assert "witness outputs" in msg


async def test_signed_contract_settlement_never_activates_is_dropped(rig: Rig) -> None:
    home, _ = await pair(rig)
    t = make_terms(rig)
    await home.SignContract(meter_pb2.SignContractRequest(terms_json=tj(t)))
    m = rig.apps["home"].meter
    assert m.book.energy_left_wh(m.book.get("k-1").party) == 500  # type: ignore[union-attr]
    await m.contracts._forget_unknown({"other"}, grace_ms=0)
    view = m.book.get("k-1")
    assert view is not None and view.final and view.end_reason == "UNKNOWN_TO_SETTLEMENT"
    assert m.book.energy_left_wh(view.party) == 0


async def test_display_shows_the_pairing_code_and_no_household_data(rig: Rig) -> None:
    app = await rig.meter("home", "consumer")
    async with aiohttp.ClientSession(app.host.http_url) as http:
        async with http.get("/") as resp:
            assert resp.status == 200 and "text/html" in resp.headers["Content-Type"]
            assert "api/pairing" in await resp.text()
        async with http.get("/api/pairing") as resp:
            body = await resp.json()
        assert body["meter_id"] == "home" and len(body["code"]) == 9 and 0 < body["expires_in_s"] <= 600
        for path in ("/api/status", "/api/contracts", "/api/payments"):  # the household app is in the portal now
            async with http.get(path) as resp:
                assert resp.status == 404, path
        async with http.get("/api/pairing", headers={"Host": "rebound.example"}) as resp:
            assert resp.status == 421 and "error" in await resp.json()
        async with http.get("/metrics", headers={"Host": "10.0.0.7:9100"}) as resp:
            assert resp.status == 200


async def test_pairing_code_claimed_once_and_wrong_codes_locked_out(rig: Rig) -> None:
    app = await rig.meter("home", "consumer", pairing_max_failures=3, pairing_lockout_s=30)
    with pytest.raises(grpc.aio.AioRpcError) as e:  # only the households' portal may claim a meter
        await rig.stub("home").ClaimPairing(meter_pb2.ClaimPairingRequest(code="ZZZZ-ZZZZ"))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    portal = dial(app.host.grpc_target, "home", as_=Identity("service", "portal"))
    rig.channels.append(portal)
    stub = meter_pb2_grpc.MeterServiceStub(portal)
    async with aiohttp.ClientSession(app.host.http_url) as http, http.get("/api/pairing") as resp:
        code = (await resp.json())["code"]
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.ClaimPairing(meter_pb2.ClaimPairingRequest(code="ZZZZ-ZZZZ"))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and e.value.details().startswith("code:")
    got = await stub.ClaimPairing(meter_pb2.ClaimPairingRequest(code=code.lower()))
    assert got.meter_id == "home"
    with pytest.raises(grpc.aio.AioRpcError) as e:  # once only
        await stub.ClaimPairing(meter_pb2.ClaimPairingRequest(code=code))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    new = app.host.http_url
    async with aiohttp.ClientSession(new) as http, http.get("/api/pairing") as resp:
        fresh = (await resp.json())["code"]
    assert fresh != code
    for _ in range(2):  # with the reused code above: the third wrong code locks claims and replaces the code
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.ClaimPairing(meter_pb2.ClaimPairingRequest(code="ZZZZ-ZZZZ"))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.ClaimPairing(meter_pb2.ClaimPairingRequest(code=fresh))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_consumer_refuses_what_its_channel_balance_shows_but_lnd_cannot_route(rig: Rig) -> None:
    """A drained channel: local balance above the reserve still looks like enough, but
    lnd finds no route for it (its fee buffer holds it back) and the wallet cannot open
    another channel: the contract is refused, not signed and then defaulted on."""
    hub = "03" + "11" * 32
    await rig.meter("home", "consumer", hub=f"{hub}@127.0.0.1:9736", channel_sat=100_000)
    await rig.meter("solar", "producer")
    home, lnd = rig.stub("home"), rig.lnds["home"]
    lnd.local_sat = 100  # 100 sat in the hub channel ...
    lnd.unroutable_sat = 95  # ... of which lnd can send 5
    lnd.fail_open = "insufficient funds available to construct transaction"
    t = make_terms(rig, "k-1", energy_wh=200, price_msat_per_kwh=150_000)  # 30 sat + fees
    msg = await refused(home.SignContract(meter_pb2.SignContractRequest(terms_json=tj(t))),
                        grpc.StatusCode.FAILED_PRECONDITION, "terms_json.energy_wh")
    assert "insufficient funds" in msg and "k-1" not in {v.terms.contract_id for v in rig.apps["home"].meter.book.all()}
    lnd.unroutable_sat = 0  # the same balance, all of it routable: signed
    await home.SignContract(meter_pb2.SignContractRequest(terms_json=tj(t)))


async def test_contracts_are_listed_in_pages(rig: Rig) -> None:
    from p2pep.paging import follow

    home, solar = await pair(rig)
    for i in range(1, 4):
        await signed_and_active(rig, home, solar, make_terms(rig, cid=f"k-{i}"))
    first = await home.ListContracts(meter_pb2.MeterContractsRequest(page_size=2))
    assert [c.contract.contract_id for c in first.contracts] == ["k-3", "k-2"] and first.next_page_token
    every = await follow(home.ListContracts, meter_pb2.MeterContractsRequest(page_size=1), "contracts", 10)
    assert [c.contract.contract_id for c in every] == ["k-3", "k-2", "k-1"]
    empty = await home.ListPayments(meter_pb2.MeterPaymentsRequest(limit=1))
    assert list(empty.payments) == [] and empty.next_page_token == ""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await home.ListContracts(meter_pb2.MeterContractsRequest(page_token="forged"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
