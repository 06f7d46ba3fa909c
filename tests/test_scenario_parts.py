"""Pure parts of the scenario runner: service environments, drain planning, the clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pep.scenario.catalog import load_scenario
from p2pep.scenario.clock import ScenarioClock
from p2pep.scenario.drain import (
    drain_amount_msat,
    increment_cost_msat,
    keep_msat,
    max_sendable,
)
from p2pep.scenario.launch import (
    BtcdEndpoint,
    Layout,
    NodeEndpoint,
    anchor_launch,
    kwp,
    matcher_launch,
    meter_launch,
    settlement_launch,
)

NODE = NodeEndpoint("meter-3", "02" + "ab" * 32, "127.0.0.1:10009", "/x/tls.cert", "/x/admin.macaroon",
                    "127.0.0.1:9735")
HUB = NodeEndpoint("hub", "03" + "cd" * 32, "127.0.0.1:10010", "/h/tls.cert", "/h/admin.macaroon", "127.0.0.1:9736")


def test_service_envs(tmp_path: Path) -> None:
    s = load_scenario("hackathon")
    layout = Layout(tmp_path)
    m = matcher_launch(s, layout, 5001, 5002)
    assert m.module == "services.matcher" and m.target == "127.0.0.1:5001"
    assert m.env["P2PEP_MATCHER_GRPC_PORT"] == "5001" and m.env["P2PEP_MATCHER_METRICS_PORT"] == "5002"
    assert m.env["P2PEP_MATCHER_MODE"] == "continuous"
    assert m.env["P2PEP_MATCHER_DB_PATH"].startswith(str(tmp_path))
    st = settlement_launch(s, layout, 5003, 5004, m.target)
    assert st.env["P2PEP_SETTLEMENT_MATCHER_TARGET"] == "127.0.0.1:5001"
    assert st.env["P2PEP_SETTLEMENT_INCREMENT_WH"] == "10"
    assert st.log_path == tmp_path / "logs" / "settlement.log"

    consumer = s.meter("meter-3")
    other = NodeEndpoint("meter-1", "02" + "ef" * 32, "127.0.0.1:1", "/c", "/m", "127.0.0.1:9737")
    e = meter_launch(s, consumer, layout, 5005, 5006, NODE, m.target, st.target, HUB, peers=[NODE, other]).env
    assert e["P2PEP_METER_PEERS"] == f"meter-1={other.pubkey}@127.0.0.1:9737"
    assert e["P2PEP_METER_METER_ID"] == "meter-3" and e["P2PEP_METER_ROLE"] == "consumer"
    assert e["P2PEP_METER_SOURCE"] == "constant" and e["P2PEP_METER_CONSTANT_W"] == "2000"
    assert e["P2PEP_METER_NETWORK_MODE"] == "hub"
    assert e["P2PEP_METER_HUB"] == f"{HUB.pubkey}@127.0.0.1:9736"
    assert e["P2PEP_METER_LND_P2P"] == "127.0.0.1:9735"
    assert e["P2PEP_METER_SETTLEMENT_TARGET"] == st.target
    assert e["P2PEP_METER_SIM_START"] == "2026-06-21T11:00:00+02:00"
    assert (e["P2PEP_METER_ACCEL"], e["P2PEP_METER_TICK_S"], e["P2PEP_METER_WINDOW_S"]) == ("30", "0.25", "900")
    assert e["P2PEP_METER_PRICE_MSAT_PER_KWH"] == "350000"
    pv = meter_launch(s, s.meter("meter-1"), layout, 5007, 5008, NODE, m.target, st.target, None).env
    assert pv["P2PEP_METER_PV_KWP"] == "1.6" and pv["P2PEP_METER_NETWORK_MODE"] == "adhoc"
    assert "P2PEP_METER_HUB" not in pv
    assert pv["P2PEP_METER_TZ"] == "Europe/Berlin"


def test_anchor_env(tmp_path: Path) -> None:
    s = load_scenario("hackathon")
    assert s.anchor
    a = anchor_launch(s, Layout(tmp_path), 6001, 6002, HUB, BtcdEndpoint("127.0.0.1:18334", "u", "p", "/b/rpc.cert"))
    assert a.module == "services.anchor" and a.env["P2PEP_ANCHOR_LND_RPCSERVER"] == HUB.rpcserver
    assert a.env["P2PEP_ANCHOR_BTCD_CERT"] == "/b/rpc.cert" and a.env["P2PEP_ANCHOR_BTCD_USER"] == "u"
    st = settlement_launch(s, Layout(tmp_path), 6003, 6004, "127.0.0.1:1", anchor_target=a.target)
    assert st.env["P2PEP_SETTLEMENT_ANCHOR_TARGET"] == "127.0.0.1:6001"
    assert "P2PEP_SETTLEMENT_ANCHOR_TARGET" not in settlement_launch(s, Layout(tmp_path), 1, 2, "x").env


@pytest.mark.parametrize("wp,text", [(1600, "1.6"), (1000, "1"), (2250, "2.25"), (1, "0.001")])
def test_kwp_is_exact(wp: int, text: str) -> None:
    assert kwp(wp) == text


def test_keep_and_drain_amounts() -> None:
    # 10 Wh at 350 000 msat/kWh = 3 500 msat, plus the hub's 0 msat + 1000 ppm (3.5 msat, rounded up)
    assert increment_cost_msat(10, 350_000) == 3_500 + 4
    assert increment_cost_msat(10, 350_000, routed=False) == 3_500
    assert keep_msat(5, 10, 350_000) == 5 * (3_500 + 4)  # 0.1% forwarding fee, rounded up
    assert drain_amount_msat(1_000_000, 22_505) == 977_495
    assert drain_amount_msat(10_000, 22_505) == 0


@pytest.mark.parametrize("limit", [0, 1, 999, 123_456_789, 4_877_654_321, 5_000_000_000])
async def test_max_sendable_finds_the_limit(limit: int) -> None:
    calls: list[int] = []

    async def can(amount: int) -> bool:
        calls.append(amount)
        return amount <= limit

    got = await max_sendable(can, 5_000_000_000, resolution_msat=100, lower_msat=4_000_000_000)
    assert got <= limit and limit - got <= 100
    assert len(calls) < 40


async def test_max_sendable_nothing() -> None:
    async def never(amount: int) -> bool:
        return False

    assert await max_sendable(never, 0) == 0
    assert await max_sendable(never, 10_000) == 0


def test_clock_follows_meters() -> None:
    c = ScenarioClock(sim_start_ms=1_000_000, accel=60)
    assert not c.started and c.sim_ms(5.0) == 1_000_000
    c.launched(10.0)
    assert c.sim_ms(11.0) == 1_060_000
    # the first report replaces the guess, even if behind (python start-up)
    c.observe(12.0, 1_030_000)
    assert c.sim_ms(12.0) == 1_030_000 and c.sim_ms(13.0) == 1_090_000
    # a stale report (a stopped meter) does not move it back; a leading one moves it forward
    c.observe(14.0, 1_000_500)
    assert c.sim_ms(14.0) == 1_150_000
    c.observe(14.0, 1_160_000)
    assert c.sim_ms(14.0) == 1_160_000
    assert c.real_until(14.0, 1_220_000) == pytest.approx(1.0)
    assert c.real_until(14.0, 1_000_000) == 0
    assert c.elapsed_sim_s(14.0) == 160
