"""The TLS benchmark's plaintext loopback mode (``grpc_plaintext_loopback``) cannot weaken a
deployment: refused for any address that is not loopback (one-line config error), not
settable from a scenario, dialled only to loopback, refused by gRPC itself for a peer that
is not loopback; and authorization is the same as with mutual TLS (the caller's identity is
the certificate it claims from the TLS folder; no claim, no caller)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import tls_helpers
from matcher_helpers import demand, settings, supply
from test_access_services import meter, refused

from p2pep.identity import Identity
from p2pep.scenario.launch import service_env
from p2pep.scenario.model import ScenarioError
from p2pep.servicekit.channels import channel
from p2pep.servicekit.loopback import is_loopback_target
from p2pep.servicekit.settings import BadSettings, settings_from_env
from p2pep.servicekit.tls import Tls
from p2pep.settings import MeterSettings
from p2pep.v1 import matcher_pb2_grpc
from services.matcher.app import start_matcher


def test_loopback_addresses() -> None:
    for t in ("127.0.0.1:1", "127.3.0.9:50051", "[::1]:8", "localhost:9", "ipv4:127.0.0.1:5", "::1"):
        assert is_loopback_target(t), t
    for t in ("0.0.0.0:1", "10.0.0.1:1", "[::]:1", "example.org:443", "192.0.2.2:5", "", "127.0.0.1.nip.io:1"):
        assert not is_loopback_target(t), t


def test_settings_refuse_plaintext_off_loopback_in_one_line() -> None:
    base = {"P2PEP_METER_METER_ID": "m-1", "P2PEP_METER_SETTLEMENT_TARGET": "127.0.0.1:7",
            "P2PEP_METER_ROLE": "consumer", "P2PEP_METER_PRICE_MSAT_PER_KWH": "1000",
            "P2PEP_METER_GRPC_PLAINTEXT_LOOPBACK": "true", "P2PEP_METER_TLS_DIR": "/x"}
    assert settings_from_env(MeterSettings, base).grpc_plaintext_loopback
    for host in ("::1", "localhost", "127.0.0.2"):
        assert settings_from_env(MeterSettings, {**base, "P2PEP_METER_GRPC_HOST": host}).grpc_host == host
    for var, value in (("P2PEP_METER_GRPC_HOST", "0.0.0.0"), ("P2PEP_METER_SETTLEMENT_TARGET", "10.1.2.3:7"),
                       ("P2PEP_METER_MATCHER_TARGET", "matcher:50051"), ("P2PEP_METER_ADVERTISE_ADDRESS", "[::]:1")):
        with pytest.raises(BadSettings) as err:
            settings_from_env(MeterSettings, {**base, var: value})
        msg = str(err.value)
        assert "\n" not in msg and "P2PEP_METER_GRPC_PLAINTEXT_LOOPBACK" in msg and f"{var}={value}" in msg, msg
    # off, the same addresses are fine
    assert not settings_from_env(MeterSettings, {**base, "P2PEP_METER_GRPC_PLAINTEXT_LOOPBACK": "false",
                                                 "P2PEP_METER_GRPC_HOST": "0.0.0.0"}).grpc_plaintext_loopback


def test_a_scenario_cannot_turn_tls_off() -> None:
    with pytest.raises(ScenarioError, match="not a scenario's to set"):
        service_env(MeterSettings, "meter-1", {"meter_id": "meter-1", "settlement_target": "127.0.0.1:1",
                                              "role": "consumer", "price_msat_per_kwh": 1000},
                    {"P2PEP_METER_GRPC_PLAINTEXT_LOOPBACK": "true"}, "meters.meter-1.env")


def test_plaintext_channels_dial_loopback_only() -> None:
    tls = Tls.load(tls_helpers.TLS_DIR or "", meter("meter-1"), plaintext_loopback=True)
    with pytest.raises(ValueError, match="loopback addresses only"):
        channel("192.0.2.2:5", peer="matcher", tls=tls)


async def test_authorization_is_the_same_without_tls(tmp_path: Path) -> None:
    app = await start_matcher(settings(tmp_path, grpc_plaintext_loopback=True))
    t = app.target

    def as_(who: Identity) -> matcher_pb2_grpc.MatcherServiceStub:
        tls = Tls.load(tls_helpers.TLS_DIR or "", who, plaintext_loopback=True)
        return matcher_pb2_grpc.MatcherServiceStub(channel(t, peer="matcher", tls=tls))

    try:
        await as_(meter("meter-1")).SubmitSupply(supply("s1", "meter-1", 100, 100))
        # another meter's order: refused by the same table, with the same message
        await refused(as_(meter("meter-2")).SubmitDemand(demand("d1", "meter-1", 40, 120)),
                      grpc.StatusCode.PERMISSION_DENIED, "acts only for itself")
        # no claim (a plain local client), or a claim of a name without a certificate: nobody
        async with grpc.aio.insecure_channel(t) as ch:
            await refused(matcher_pb2_grpc.MatcherServiceStub(ch).SubmitDemand(demand("d2", "meter-2", 40, 120)),
                          grpc.StatusCode.UNAUTHENTICATED)
        async with grpc.aio.insecure_channel(t, options=[("grpc.primary_user_agent", "p2pep-claim/meter/nobody-9")]) as ch:
            await refused(matcher_pb2_grpc.MatcherServiceStub(ch).SubmitDemand(demand("d3", "nobody-9", 40, 120)),
                          grpc.StatusCode.UNAUTHENTICATED)
        # a mutual-TLS client cannot talk to a plaintext port (nor the other way round)
        await refused(as_tls(t).SubmitDemand(demand("d4", "meter-1", 40, 120), timeout=5), grpc.StatusCode.UNAVAILABLE)
    finally:
        await app.stop()


async def test_a_mutual_tls_server_takes_no_claims(tmp_path: Path) -> None:
    app = await start_matcher(settings(tmp_path))
    try:
        async with grpc.aio.insecure_channel(app.target, options=[
                ("grpc.primary_user_agent", "p2pep-claim/meter/meter-1")]) as ch:
            await refused(matcher_pb2_grpc.MatcherServiceStub(ch).SubmitSupply(supply("s1", "meter-1", 1, 1), timeout=5),
                          grpc.StatusCode.UNAVAILABLE)
    finally:
        await app.stop()


def as_tls(target: str) -> matcher_pb2_grpc.MatcherServiceStub:
    return matcher_pb2_grpc.MatcherServiceStub(tls_helpers.dial(target, "matcher", as_=meter("meter-1")))
