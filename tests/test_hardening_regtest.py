"""The hardening of issue 11 against the real processes of a scenario on the real regtest
network: while `hackathon` runs, hostile input to the matcher, settlement, a meter and its
household app is refused with the right status, changes nothing, and the scenario still
passes its checks with clean service logs."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from test_e2e_scenarios import run_scenario
from web_helpers import WebClient

from p2pep.identity import Identity
from p2pep.metering.readings import Reading
from p2pep.metering.signing import MeterKey
from p2pep.scenario.runner import ScenarioRunner
from p2pep.servicekit.channels import channel
from p2pep.servicekit.tls import Tls
from p2pep.v1 import common_pb2, matcher_pb2, matcher_pb2_grpc, meter_pb2, meter_pb2_grpc, settlement_pb2_grpc
from p2pep.v1 import settlement_pb2 as pb
from services.meter.sender import reading_pb

pytestmark = pytest.mark.regtest


async def _code(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def as_(runner: ScenarioRunner, kind: str, name: str) -> Tls:
    """A certificate of the run's (the hostile input comes from a caller the table lets in:
    what is tested here is what the services accept, not who may call them)."""
    return Tls.load(runner.layout.tls_dir, Identity(kind, name))


async def hostile(runner: ScenarioRunner, found: dict[str, Any]) -> None:
    procs = runner.procs
    meter1 = as_(runner, "meter", "meter-1")
    async with channel(procs["matcher"].launch.target, peer="matcher", tls=meter1) as ch:
        matcher = matcher_pb2_grpc.MatcherServiceStub(ch)
        far = common_pb2.Order(order_id="h-1", meter_id="meter-1", side=common_pb2.SIDE_SUPPLY, energy_wh=10,
                               price_msat_per_kwh=1, expiry=Timestamp(seconds=2**62))
        found["matcher_expiry"] = await _code(matcher.SubmitSupply(matcher_pb2.SubmitOrderRequest(order=far),
                                                                   timeout=10))
        big = common_pb2.Order(order_id="h-2", meter_id="meter-1", side=common_pb2.SIDE_SUPPLY, energy_wh=10,
                               price_msat_per_kwh=1, partners=["p" * 100] * 20_000)  # > 1 MiB
        async with grpc.aio.secure_channel(procs["matcher"].launch.target, meter1.channel_credentials(),
                                           options=[("grpc.max_send_message_length", -1),
                                                    ("grpc.ssl_target_name_override", "matcher")]) as raw:
            found["matcher_size"] = await _code(matcher_pb2_grpc.MatcherServiceStub(raw).SubmitSupply(
                matcher_pb2.SubmitOrderRequest(order=big), timeout=10))
    async with channel(procs["settlement"].launch.target, peer="settlement", tls=as_(runner, "meter", "meter-3")) as ch:
        settlement = settlement_pb2_grpc.SettlementServiceStub(ch)
        before = {m.meter_id: m for m in (await settlement.ListMeters(pb.ListMetersRequest(), timeout=10)).meters}
        stolen = MeterKey.load(runner.layout.data_dir("meter-3") / "meter.key")
        m3 = before["meter-3"]
        found["register"] = [await _code(settlement.RegisterMeter(pb.RegisterMeterRequest(
            meter_id="meter-3", pubkey=stolen.pubkey_hex, node_pubkey=m3.node_pubkey, role="consumer",
            address=address, node_address=m3.node_address), timeout=10))
            for address in ("169.254.169.254:80", "0.0.0.0:1", "evil_host:1", "127.0.0.1:0")]
        found["usage"] = await _code(settlement.GetUsage(pb.EnergyQuery(
            meter_id="meter-3", to=Timestamp(seconds=2**62)), timeout=10))
        reading = reading_pb(stolen.sign_reading(Reading("meter-3", 2**63, 0, 0, int(time.time() * 1000))), b"")
        reading.seq = 2**64 - 1

        async def one() -> Any:
            yield reading

        found["reading"] = [(a.status, a.reason) async for a in settlement.StreamReadings(one(), timeout=30)]
        after = {m.meter_id: m for m in (await settlement.ListMeters(pb.ListMetersRequest(), timeout=10)).meters}
        found["addresses"] = ({k: m.address for k, m in before.items()}, {k: m.address for k, m in after.items()})
    async with channel(procs["meter-3"].launch.target, peer="meter-3", tls=as_(runner, "service", "settlement")) as ch:
        meter = meter_pb2_grpc.MeterServiceStub(ch)
        found["terms"] = [await _code(meter.SignContract(meter_pb2.SignContractRequest(terms_json=text), timeout=10))
                          for text in (json.dumps({"contract_id": "x\ud800"}), json.dumps({"\ud800": 1}),
                                       json.dumps({f"k{i}": 1 for i in range(50)}), "[" * 50_000)]
    async with WebClient(f"http://127.0.0.1:{procs['console'].launch.metrics_port}") as console:
        assert (await console.signin(*runner.operator))[0] == 200
        found["limit"] = await console.get("/api/energy?meter_id=meter-3&from=99999-01-01T00:00:00%2B00:00")
    base = f"http://127.0.0.1:{procs['meter-3'].launch.metrics_port}"
    async with aiohttp.ClientSession(base) as http:
        async with http.get("/metrics") as resp:
            found["labels"] = [line for line in (await resp.text()).splitlines()
                               if line.startswith("p2pep_meter_requests_refused_total{")]


async def test_hostile_input_to_the_real_services_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    found: dict[str, Any] = {}

    async def during(r: ScenarioRunner) -> None:
        await hostile(r, found)

    report, _ = await run_scenario("hackathon", tmp_path, during)
    C = grpc.StatusCode
    assert found["matcher_expiry"] == C.INVALID_ARGUMENT
    assert found["matcher_size"] == C.RESOURCE_EXHAUSTED
    assert found["register"] == [C.INVALID_ARGUMENT] * 4
    assert found["usage"] == C.INVALID_ARGUMENT
    assert found["reading"] == [(pb.ReadingAck.STATUS_REJECTED, "MALFORMED")]
    before, after = found["addresses"]
    assert before == after
    assert found["terms"] == [C.INVALID_ARGUMENT] * 4
    assert found["limit"][0] == 400 and found["limit"][1]["param"] == "from", found["limit"]
    assert all('field="terms_json' in line for line in found["labels"]), found["labels"]
    assert report["ok"]
