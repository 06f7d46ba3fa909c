"""The authorization table (p2pep.access) and its checks (p2pep.servicekit.auth), without servers."""

from __future__ import annotations

import grpc
import pytest

from p2pep.access import ACCESS, on_behalf_problem
from p2pep.identity import Identity
from p2pep.servicekit.auth import Caller, Denied, check, check_message
from p2pep.v1 import anchor_pb2, common_pb2, enrollment_pb2, matcher_pb2, meter_pb2, settlement_pb2


def proto_methods() -> set[str]:
    out = set()
    for module in (settlement_pb2, matcher_pb2, meter_pb2, anchor_pb2, enrollment_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            out |= {f"/{service.full_name}/{m.name}" for m in service.methods}
    return out


def test_every_rpc_of_every_proto_is_in_the_table_and_nothing_else() -> None:
    methods = proto_methods()
    assert len(methods) > 25
    assert methods - set(ACCESS) == set()
    extra = set(ACCESS) - methods
    assert extra == {"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"}


def test_every_meter_field_path_exists_in_its_request() -> None:
    """A typo in a field path would refuse every meter (or worse, check nothing)."""
    inputs = {}
    for module in (settlement_pb2, matcher_pb2, meter_pb2, anchor_pb2, enrollment_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                inputs[f"/{service.full_name}/{m.name}"] = m.input_type
    for method, rule in ACCESS.items():
        for path in rule.meter or ():
            desc = inputs[method]
            for part in path.rstrip("?").split("."):
                field = desc.fields_by_name[part.removesuffix("[]")]
                assert field.is_repeated == part.endswith("[]"), (method, path)
                desc = field.message_type or desc


def who(kind: str, name: str, serial: int = 1) -> Caller:
    return Caller(Identity(kind, name), serial, None)


def denied(code: grpc.StatusCode, fn, *args) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(Denied) as err:
        fn(*args)
    assert err.value.code == code
    return err.value.message


def test_who_may_call_what() -> None:
    S, M, MT, A = "/p2pep.v1.SettlementService/", "/p2pep.v1.MatcherService/", "/p2pep.v1.MeterService/", \
        "/p2pep.v1.AnchorService/"
    settlement, console, op, meter = (who("service", "settlement"), who("service", "console"),
                                      who("operator", "p2pep"), who("meter", "meter-1"))
    for method in (MT + "SignContract", MT + "CreateInvoice", MT + "PayInvoice", MT + "ResolveInvoice", MT + "UpdateContract",
                   M + "ReportContractEnd", A + "AddLeaves"):
        check(ACCESS[method], settlement, None)
        for other in (console, op, meter, who("service", "matcher")):
            denied(grpc.StatusCode.PERMISSION_DENIED, check, ACCESS[method], other, None)
    for method in (S + "ListContracts", S + "ListPayments", S + "ListMeters", S + "ExportContract", M + "GetBook",
                   MT + "GetStatus", A + "GetProofs"):
        check(ACCESS[method], console, None)
        check(ACCESS[method], op, None)
    for method in (S + "RegisterMeter", S + "StreamReadings", S + "EndContract", M + "SubmitSupply", M + "Cancel",
                   M + "SubmitBatch", M + "ExtendContract"):  # nobody but a meter writes
        check(ACCESS[method], meter, None)
        for other in (console, op, settlement):
            denied(grpc.StatusCode.PERMISSION_DENIED, check, ACCESS[method], other, None)
    for method in (MT + "GetStatus", MT + "ListPayments"):  # a meter does not read another meter
        denied(grpc.StatusCode.PERMISSION_DENIED, check, ACCESS[method], meter, None)
    assert "no client certificate" in denied(grpc.StatusCode.UNAUTHENTICATED, check, ACCESS[S + "ListMeters"],
                                             None, None)
    assert "not open" in denied(grpc.StatusCode.PERMISSION_DENIED, check, None, op, None)  # default deny


def test_a_meter_acts_only_for_itself() -> None:
    S, M = "/p2pep.v1.SettlementService/", "/p2pep.v1.MatcherService/"
    me = who("meter", "meter-1")
    ok = [
        (S + "RegisterMeter", settlement_pb2.RegisterMeterRequest(meter_id="meter-1")),
        (S + "StreamReadings", common_pb2.Reading(meter_id="meter-1")),
        (S + "ListContracts", settlement_pb2.ListSettlementContractsRequest(meter_id="meter-1")),
        (M + "SubmitSupply", matcher_pb2.SubmitOrderRequest(order=common_pb2.Order(meter_id="meter-1"))),
        (M + "SubmitBatch", matcher_pb2.SubmitBatchRequest(orders=[common_pb2.Order(meter_id="meter-1")] * 2)),
        (M + "GetBook", matcher_pb2.GetBookRequest()),  # price levels only
        (M + "StreamEvents", matcher_pb2.StreamEventsRequest(meter_ids=["meter-1"])),
    ]
    for method, req in ok:
        check_message(ACCESS[method], me, req)
    refused = [
        (S + "RegisterMeter", settlement_pb2.RegisterMeterRequest(meter_id="meter-2"), "meter_id"),
        (S + "StreamReadings", common_pb2.Reading(meter_id="meter-2"), "meter_id"),
        (S + "ListContracts", settlement_pb2.ListSettlementContractsRequest(), "meter_id"),  # = everyone's
        (S + "ListPayments", settlement_pb2.ListPaymentsRequest(contract_id="c-1"), "meter_id"),
        (S + "GetUsage", settlement_pb2.EnergyQuery(meter_id="meter-2"), "meter_id"),
        (M + "SubmitDemand", matcher_pb2.SubmitOrderRequest(order=common_pb2.Order(meter_id="meter-2")), "order"),
        (M + "SubmitBatch", matcher_pb2.SubmitBatchRequest(orders=[common_pb2.Order(meter_id="meter-1"),
                                                                   common_pb2.Order(meter_id="meter-2")]), "orders"),
        (M + "Cancel", matcher_pb2.CancelRequest(order_id="o"), "meter_id"),
        (M + "GetBook", matcher_pb2.GetBookRequest(meter_ids=["meter-1", "meter-2"]), "meter_ids"),
        (M + "StreamEvents", matcher_pb2.StreamEventsRequest(), "meter_ids"),  # = every meter's events
        (M + "ListContracts", matcher_pb2.ListContractsRequest(), "meter_id"),
    ]
    for method, req, field in refused:
        message = denied(grpc.StatusCode.PERMISSION_DENIED, check_message, ACCESS[method], me, req)
        assert field in message and "meter-1" in message, message
    # services and operators act for anyone (where the table lets them call at all)
    check_message(ACCESS[S + "ListContracts"], who("service", "console"), settlement_pb2.ListSettlementContractsRequest())
    assert on_behalf_problem(ACCESS[S + "GetUsage"], settlement_pb2.EnergyQuery(meter_id="meter-1"), "meter-1") is None


def test_list_meters_shows_a_meter_its_own_record_and_only_the_others_public_identity() -> None:
    rule = ACCESS["/p2pep.v1.SettlementService/ListMeters"]
    assert rule.meter_view is not None
    resp = settlement_pb2.ListMetersResponse(meters=[settlement_pb2.MeterInfo(
        meter_id=m, address=f"{m}:1", pubkey="02" + "aa" * 32, node_pubkey="03" + "bb" * 32, role="producer",
        node_address=f"{m}:9735", last_seq=7, import_wh=100, export_wh=200,
        location=settlement_pb2.Location(latitude=52.5, longitude=13.4)) for m in ("meter-1", "meter-2")])
    own, other = {m.meter_id: m for m in resp.meters}["meter-2"], {m.meter_id: m for m in resp.meters}["meter-1"]
    own_before = settlement_pb2.MeterInfo()
    own_before.CopyFrom(own)
    seen = {m.meter_id: m for m in rule.meter_view(resp, "meter-2").meters}
    assert seen["meter-2"] == own_before
    assert (seen["meter-1"].address, seen["meter-1"].last_seq, seen["meter-1"].import_wh,
            seen["meter-1"].export_wh) == ("", 0, 0, 0)  # no service address, no load curve
    assert not seen["meter-1"].HasField("location")  # nor the household's place
    assert (other.pubkey, other.node_pubkey, other.node_address) == ("02" + "aa" * 32, "03" + "bb" * 32,
                                                                     "meter-1:9735")
