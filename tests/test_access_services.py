"""Hostile callers against the real services (in process, mutual TLS, the real table).

For representative RPCs of each service: (a) no client certificate: the TLS handshake
refuses the connection (``require_client_auth``; the client sees UNAVAILABLE, no handler
runs); a revoked certificate: UNAUTHENTICATED; an expired one: the handshake refuses it;
(b) another meter's (or a service's) certificate: PERMISSION_DENIED with a message, counted
in ``p2pep_grpc_auth_refusals_total``; afterwards nothing changed. Registration takeover and
id squatting are tried and fail.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import tls_helpers
from matcher_helpers import demand, settings, supply
from prometheus_client import REGISTRY
from test_anchor_service import Service as AnchorRig
from test_settlement_service import FakeMeter, Harness, match, node_of, reading
from tls_helpers import dial, dial_without_certificate

from p2pep.identity import Identity
from p2pep.metering.signing import MeterKey
from p2pep.pki.enrollment import Enrollment, enroll_local
from p2pep.pki.tlsdir import TlsDir
from p2pep.servicekit import BaseServiceSettings, ServiceHost
from p2pep.servicekit.channels import channel
from p2pep.servicekit.tls import Tls
from p2pep.v1 import (
    anchor_pb2,
    anchor_pb2_grpc,
    matcher_pb2,
    matcher_pb2_grpc,
    meter_pb2,
    meter_pb2_grpc,
    settlement_pb2_grpc,
)
from p2pep.v1 import settlement_pb2 as pb
from services.matcher.app import start_matcher

SETTLEMENT = Identity("service", "settlement")
CONSOLE = Identity("service", "console")
OPERATOR = Identity("operator", "test")


def meter(name: str) -> Identity:
    return Identity("meter", name)


def refusals(method: str, code: str) -> float:
    return REGISTRY.get_sample_value("p2pep_grpc_auth_refusals_total", {"method": method, "code": code}) or 0.0


async def refused(call: Any, code: grpc.StatusCode, *words: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, (err.value.code(), err.value.details())
    details = str(err.value.details())
    for w in words:
        assert w in details, details
    return details


def settlement_as(target: str, who: Identity) -> settlement_pb2_grpc.SettlementServiceStub:
    return settlement_pb2_grpc.SettlementServiceStub(dial(target, "settlement", as_=who))


def register_req(m: FakeMeter, meter_id: str | None = None, **kw: Any) -> pb.RegisterMeterRequest:
    base: dict[str, Any] = dict(meter_id=meter_id or m.meter_id, pubkey=m.key.pubkey_hex, node_pubkey=node_of(m.meter_id),
                                address=m.addr, role="consumer" if m.meter_id == "consumer" else "producer")  # type: ignore[attr-defined]
    base.update(kw)
    return pb.RegisterMeterRequest(**base)


@pytest.fixture
async def settled(tmp_path: Path) -> AsyncIterator[tuple[Harness, Any, str, FakeMeter, FakeMeter]]:
    h = Harness(tmp_path)
    cons, sup = FakeMeter("consumer"), FakeMeter("supplier")
    cons.addr = await h.start_meter(cons)  # type: ignore[attr-defined]
    sup.addr = await h.start_meter(sup)  # type: ignore[attr-defined]
    engine, _, host = await h.start_settlement()
    target = host.grpc_target
    for m in (cons, sup):
        await settlement_as(target, meter(m.meter_id)).RegisterMeter(register_req(m))
    try:
        yield h, engine, target, cons, sup
    finally:
        await h.close()


async def test_settlement_refuses_strangers_and_other_meters_and_changes_nothing(settled: Any) -> None:
    h, engine, target, cons, sup = settled
    await engine.propose(match("k-1", 100, 200_000))
    rows = {m: (engine.meters[m].row, engine.meters[m].head) for m in engine.meters}
    contracts = {c: (lc.contract.state, lc.ledger.delivered_wh) for c, lc in engine.contracts.items()}

    # (a) no certificate: the handshake fails, no handler runs
    no_cert = settlement_pb2_grpc.SettlementServiceStub(dial_without_certificate(target, "settlement"))
    await refused(no_cert.ListMeters(pb.ListMetersRequest(), timeout=5), grpc.StatusCode.UNAVAILABLE)
    await refused(no_cert.RegisterMeter(register_req(sup, "consumer"), timeout=5), grpc.StatusCode.UNAVAILABLE)

    # (b) the supplier's certificate, acting for the consumer
    thief = settlement_as(target, meter("supplier"))
    before = refusals("RegisterMeter", "PERMISSION_DENIED")
    await refused(thief.RegisterMeter(register_req(cons, address="127.0.0.1:9")), grpc.StatusCode.PERMISSION_DENIED,
                  "meter_id", "consumer", "supplier")
    assert refusals("RegisterMeter", "PERMISSION_DENIED") == before + 1
    await refused(thief.EndContract(pb.EndContractRequest(contract_id="k-1", meter_id="consumer")),
                  grpc.StatusCode.PERMISSION_DENIED, "meter_id")
    await refused(thief.ListContracts(pb.ListSettlementContractsRequest()), grpc.StatusCode.PERMISSION_DENIED)
    await refused(thief.ListPayments(pb.ListPaymentsRequest(meter_id="consumer")), grpc.StatusCode.PERMISSION_DENIED)
    await refused(thief.GetUsage(pb.EnergyQuery(meter_id="consumer")), grpc.StatusCode.PERMISSION_DENIED)

    async def readings() -> AsyncIterator[Any]:
        yield reading(sup, 1, 0, 0)  # its own first: accepted
        yield reading(cons, 1, 0, 0)  # then one of the consumer's: the stream is ended

    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in thief.StreamReadings(readings()):
            pass
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "consumer" in str(err.value.details())
    # reads of its own: its own contracts, its own registry record only
    own = await thief.ListContracts(pb.ListSettlementContractsRequest(meter_id="supplier"))
    assert [r.contract.contract_id for r in own.contracts] == ["k-1"]
    listed = {m.meter_id: m for m in (await thief.ListMeters(pb.ListMetersRequest())).meters}
    assert listed["supplier"].address and not listed["consumer"].address  # others: public identity only
    assert listed["consumer"].pubkey == cons.key.pubkey_hex
    # a meter that is not a party of k-1 reads nothing of it
    third = FakeMeter("third")
    third.addr = "127.0.0.1:1"  # type: ignore[attr-defined]
    outsider = settlement_as(target, meter("third"))
    await outsider.RegisterMeter(register_req(third))
    await refused(outsider.GetContract(pb.GetContractRequest(contract_id="k-1")), grpc.StatusCode.PERMISSION_DENIED,
                  "not a party")
    await refused(outsider.ExportContract(pb.GetContractRequest(contract_id="k-1")),
                  grpc.StatusCode.PERMISSION_DENIED, "not a party")
    # services and operators do not write to settlement; the console reads
    for who in (CONSOLE, OPERATOR, Identity("service", "matcher")):
        await refused(settlement_as(target, who).RegisterMeter(register_req(sup)), grpc.StatusCode.PERMISSION_DENIED,
                      str(who))
    assert len((await settlement_as(target, CONSOLE).ListMeters(pb.ListMetersRequest())).meters) == 3

    # nothing changed (the outsider's own registration aside)
    assert {m: (engine.meters[m].row, engine.meters[m].head) for m in ("consumer", "supplier")} == {
        m: rows[m] for m in ("consumer", "supplier")} | {"supplier": (rows["supplier"][0], engine.meters["supplier"].head)}
    assert engine.meters["supplier"].head is not None and engine.meters["supplier"].head.seq == 1  # its own reading
    assert engine.meters["consumer"].head == rows["consumer"][1]
    assert {c: (lc.contract.state, lc.ledger.delivered_wh) for c, lc in engine.contracts.items()} == contracts


async def test_revoked_and_expired_certificates_are_refused(settled: Any) -> None:
    h, engine, target, cons, sup = settled
    tls = TlsDir(tls_helpers.TLS_DIR)  # type: ignore[arg-type]
    tls.issue(Identity("operator", "leaver"))
    stub = settlement_as(target, Identity("operator", "leaver"))
    assert len((await stub.ListMeters(pb.ListMetersRequest())).meters) == 2
    tls.revoke("leaver")
    before = refusals("ListMeters", "UNAUTHENTICATED")
    await refused(stub.ListMeters(pb.ListMetersRequest()), grpc.StatusCode.UNAUTHENTICATED, "revoked")
    assert refusals("ListMeters", "UNAUTHENTICATED") == before + 1
    tls.issue(Identity("operator", "expired"), days=0)
    await refused(settlement_as(target, Identity("operator", "expired")).ListMeters(pb.ListMetersRequest(), timeout=5),
                  grpc.StatusCode.UNAVAILABLE)


async def test_registration_takeover_and_id_squatting_fail(settled: Any) -> None:
    """A meter enrolled with its key: nobody else registers under its id, not even with its
    public key (no proof of possession is needed to copy a public key); its certificate binds
    the registration to the enrolled key; and an id nobody enrolled cannot be registered."""
    h, engine, target, cons, sup = settled
    tls = TlsDir(tls_helpers.TLS_DIR)  # type: ignore[arg-type]
    key = MeterKey.generate()
    enroll_local(tls, "enrolled-1", Enrollment(tls).allow("enrolled-1"), key)
    own = settlement_pb2_grpc.SettlementServiceStub(
        channel(target, peer="settlement", tls=Tls.load(tls.path, meter("enrolled-1"))))
    # its own certificate with another key than the one it enrolled: refused
    await refused(own.RegisterMeter(pb.RegisterMeterRequest(
        meter_id="enrolled-1", pubkey=MeterKey.generate().pubkey_hex, node_pubkey="02" + "cd" * 32, address="127.0.0.1:5", role="producer")),
        grpc.StatusCode.PERMISSION_DENIED, "pubkey", "enrolled")
    assert "enrolled-1" not in engine.meters
    await own.RegisterMeter(pb.RegisterMeterRequest(meter_id="enrolled-1", pubkey=key.pubkey_hex,
                                                    node_pubkey="02" + "cd" * 32, address="127.0.0.1:5", role="producer"))
    row = engine.meters["enrolled-1"].row
    # takeover: another meter's certificate, the victim's public key, a new address
    await refused(settlement_as(target, meter("supplier")).RegisterMeter(pb.RegisterMeterRequest(
        meter_id="enrolled-1", pubkey=key.pubkey_hex, node_pubkey="02" + "cd" * 32, address="127.0.0.1:6", role="producer")),
        grpc.StatusCode.PERMISSION_DENIED, "meter_id")
    assert engine.meters["enrolled-1"].row == row
    # squatting: a new id, from a certificate of another id
    await refused(settlement_as(target, meter("supplier")).RegisterMeter(pb.RegisterMeterRequest(
        meter_id="squatted", pubkey=MeterKey.generate().pubkey_hex, node_pubkey="02" + "cd" * 32, address="127.0.0.1:7", role="producer")),
        grpc.StatusCode.PERMISSION_DENIED, "meter_id")
    assert "squatted" not in engine.meters
    # ... and no certificate for that id without the operator's token
    from p2pep.pki.enrollment import enrollment_request
    from p2pep.refusals import PermissionDenied

    squatter = MeterKey.generate()
    _, csr, sig = enrollment_request("squatted", "guessed", squatter)
    with pytest.raises(PermissionDenied):
        Enrollment(tls).enroll("squatted", "guessed", squatter.pubkey_hex, sig, csr)


async def test_meter_obeys_settlement_alone(tmp_path: Path) -> None:
    victim = FakeMeter("victim")
    host = ServiceHost(BaseServiceSettings(), name="victim", identity=meter("victim"))
    meter_pb2_grpc.add_MeterServiceServicer_to_server(victim, host.grpc_server)
    await host.start()
    try:
        pay = meter_pb2.PayInvoiceRequest(contract_id="k-1", increment=1, payment_request="lnbcrt-x")
        rec = pb.ContractRecord(supplier_node="02" + "33" * 32)
        for who in (meter("supplier"), CONSOLE, OPERATOR, Identity("service", "matcher")):
            stub = meter_pb2_grpc.MeterServiceStub(dial(host.grpc_target, "victim", as_=who))
            await refused(stub.PayInvoice(pay), grpc.StatusCode.PERMISSION_DENIED, str(who))
            await refused(stub.UpdateContract(rec), grpc.StatusCode.PERMISSION_DENIED)
            await refused(stub.SignContract(meter_pb2.SignContractRequest(terms_json="{}")),
                          grpc.StatusCode.PERMISSION_DENIED)
            await refused(stub.CreateInvoice(meter_pb2.CreateInvoiceRequest(contract_id="k-1")),
                          grpc.StatusCode.PERMISSION_DENIED)
        other = meter_pb2_grpc.MeterServiceStub(dial(host.grpc_target, "victim", as_=meter("supplier")))
        await refused(other.ListPayments(meter_pb2.MeterPaymentsRequest()), grpc.StatusCode.PERMISSION_DENIED)
        no_cert = meter_pb2_grpc.MeterServiceStub(dial_without_certificate(host.grpc_target, "victim"))
        await refused(no_cert.PayInvoice(pay, timeout=5), grpc.StatusCode.UNAVAILABLE)
        assert victim.paid == [] and victim.updates == []
        # settlement's certificate is obeyed (the fake meter pays anything)
        settlement = meter_pb2_grpc.MeterServiceStub(dial(host.grpc_target, "victim", as_=SETTLEMENT))
        await settlement.UpdateContract(rec)
        assert len(victim.updates) == 1
    finally:
        await host.stop(0)


async def test_matcher_takes_orders_of_a_meter_for_itself_only(tmp_path: Path) -> None:
    app = await start_matcher(settings(tmp_path))
    t = app.target

    def as_(who: Identity) -> matcher_pb2_grpc.MatcherServiceStub:
        return matcher_pb2_grpc.MatcherServiceStub(dial(t, "matcher", as_=who))

    try:
        await as_(meter("A")).SubmitSupply(supply("s1", "A", 100, 100))
        await as_(meter("C")).SubmitDemand(demand("d1", "C", 40, 120))  # a contract A -> C
        await as_(meter("D")).SubmitDemand(demand("d2", "D", 500, 10))  # rests
        console = as_(CONSOLE)
        book = await console.GetBook(matcher_pb2.GetBookRequest(meter_ids=["A", "C", "D"]))
        [contract] = (await console.ListContracts(matcher_pb2.ListContractsRequest())).contracts
        mallory = as_(meter("B"))
        await refused(mallory.SubmitSupply(supply("fake", "A", 1000, 1)), grpc.StatusCode.PERMISSION_DENIED, "order")
        await refused(mallory.Cancel(matcher_pb2.CancelRequest(order_id="d2", meter_id="D")),
                      grpc.StatusCode.PERMISSION_DENIED, "meter_id")
        await refused(mallory.Cancel(matcher_pb2.CancelRequest(order_id="d2")), grpc.StatusCode.PERMISSION_DENIED)
        await refused(mallory.Cancel(matcher_pb2.CancelRequest(order_id="d2", meter_id="B")),
                      grpc.StatusCode.NOT_FOUND)  # for itself: not its order
        await refused(mallory.ReportContractEnd(matcher_pb2.ReportContractEndRequest(
            contract_id=contract.contract_id, outcome=matcher_pb2.CONTRACT_OUTCOME_SUPPLIER_DEFAULTED)),
            grpc.StatusCode.PERMISSION_DENIED)
        await refused(mallory.ExtendContract(matcher_pb2.ExtendContractRequest(
            contract_id=contract.contract_id, order_id="x", energy_wh=10, price_msat_per_kwh=200)),
            grpc.StatusCode.PERMISSION_DENIED, "consumer")
        await refused(mallory.GetBook(matcher_pb2.GetBookRequest(meter_ids=["D"])), grpc.StatusCode.PERMISSION_DENIED)
        events = mallory.StreamEvents(matcher_pb2.StreamEventsRequest(from_seq=1))
        await refused(events.read(), grpc.StatusCode.PERMISSION_DENIED, "meter_ids")
        for who in (OPERATOR, CONSOLE, SETTLEMENT):  # nobody but a meter places orders
            await refused(as_(who).SubmitSupply(supply("op", "A", 1, 1)), grpc.StatusCode.PERMISSION_DENIED)
        assert await console.GetBook(matcher_pb2.GetBookRequest(meter_ids=["A", "C", "D"])) == book
        assert list((await console.ListContracts(matcher_pb2.ListContractsRequest())).contracts) == [contract]
        # the consumer extends its own contract
        await as_(meter("C")).ExtendContract(matcher_pb2.ExtendContractRequest(
            contract_id=contract.contract_id, order_id="x2", energy_wh=10, price_msat_per_kwh=200))
    finally:
        await app.stop(grace=0.5)


async def test_anchor_adds_leaves_for_settlement_alone(tmp_path: Path) -> None:
    rig = AnchorRig(tmp_path)
    await rig.start()
    try:
        leaf = anchor_pb2.Leaf(kind=anchor_pb2.LEAF_KIND_CONTRACT, contract_id="c-1", leaf_hash=b"\x01" * 32)
        for who in (meter("A"), OPERATOR, CONSOLE):
            stub = anchor_pb2_grpc.AnchorServiceStub(dial(f"127.0.0.1:{rig.port}", "anchor", as_=who))
            await refused(stub.AddLeaves(anchor_pb2.AddLeavesRequest(leaves=[leaf])), grpc.StatusCode.PERMISSION_DENIED)
        reader = anchor_pb2_grpc.AnchorServiceStub(dial(f"127.0.0.1:{rig.port}", "anchor", as_=OPERATOR))
        assert list((await reader.ListBatches(anchor_pb2.ListBatchesRequest())).batches) == []
    finally:
        await rig.stop()
