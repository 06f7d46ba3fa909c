"""Pure parts of the scenario runner: service environments, drain planning, the clock."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from p2pep.scenario.catalog import load_scenario, scenario_files
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
    ServiceLaunch,
    anchor_launch,
    console_launch,
    kwp,
    matcher_launch,
    meter_launch,
    settlement_launch,
    with_health_port,
)
from p2pep.scenario.model import Scenario, ScenarioError
from p2pep.servicekit.settings import settings_env, settings_from_env
from p2pep.settings import SERVICE_SETTINGS, MeterSettings, SettlementSettings

NODE = NodeEndpoint("meter-3", "02" + "ab" * 32, "127.0.0.1:10009", "/x/tls.cert", {"meter": "/x/meter.macaroon"},
                    "127.0.0.1:9735")
HUB = NodeEndpoint("hub", "03" + "cd" * 32, "127.0.0.1:10010", "/h/tls.cert", {"anchor": "/h/anchor.macaroon"},
                   "127.0.0.1:9736")


def test_every_service_gets_its_plaintext_health_port(tmp_path: Path) -> None:
    s = load_scenario("hackathon")
    layout = Layout(tmp_path)
    m = with_health_port(matcher_launch(s, layout, 5001, 5002), 5009)
    assert m.health_port == 5009 and m.health_target == "127.0.0.1:5009"
    assert m.env["P2PEP_MATCHER_HEALTH_PORT"] == "5009" and m.env["P2PEP_MATCHER_GRPC_PORT"] == "5001"
    meter = with_health_port(meter_launch(s, s.meter("meter-1"), layout, 5003, 5004, NODE, m.target, "127.0.0.1:1",
                                          HUB), 5010)
    assert meter.env["P2PEP_METER_HEALTH_PORT"] == "5010"
    assert matcher_launch(s, layout, 5001, 5002).health_port == -1  # none unless given


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
    other = NodeEndpoint("meter-1", "02" + "ef" * 32, "127.0.0.1:1", "/c", {"meter": "/m"}, "127.0.0.1:9737")
    e = meter_launch(s, consumer, layout, 5005, 5006, NODE, m.target, st.target, HUB, peers=[NODE, other]).env
    assert e["P2PEP_METER_PEERS"] == f"meter-1={other.pubkey}@127.0.0.1:9737"
    assert e["P2PEP_METER_METER_ID"] == "meter-3" and e["P2PEP_METER_ROLE"] == "consumer"
    assert e["P2PEP_METER_SOURCE"] == "constant" and e["P2PEP_METER_CONSTANT_W"] == "2000"
    assert e["P2PEP_METER_NETWORK_MODE"] == "hub"
    assert e["P2PEP_METER_HUB"] == f"{HUB.pubkey}@127.0.0.1:9736"
    assert e["P2PEP_METER_LND_P2P"] == "127.0.0.1:9735"
    assert e["P2PEP_METER_LND_MACAROON"] == "/x/meter.macaroon"  # its own, never admin's
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
    assert a.env["P2PEP_ANCHOR_LND_MACAROON"] == "/h/anchor.macaroon"
    assert a.env["P2PEP_ANCHOR_BTCD_CERT"] == "/b/rpc.cert" and a.env["P2PEP_ANCHOR_BTCD_USER"] == "u"
    st = settlement_launch(s, Layout(tmp_path), 6003, 6004, "127.0.0.1:1", anchor_target=a.target)
    assert st.env["P2PEP_SETTLEMENT_ANCHOR_TARGET"] == "127.0.0.1:6001"
    assert "P2PEP_SETTLEMENT_ANCHOR_TARGET" not in settlement_launch(s, Layout(tmp_path), 1, 2, "x").env


@pytest.mark.parametrize("wp,text", [(1600, "1.6"), (1000, "1"), (2250, "2.25"), (1, "0.001")])
def test_kwp_is_exact(wp: int, text: str) -> None:
    assert str(kwp(wp)) == text


def all_launches(s: Scenario, root: Path) -> list[ServiceLaunch]:
    layout = Layout(root)
    m = matcher_launch(s, layout, 5001, 5002)
    a = anchor_launch(s, layout, 5003, 5004, HUB, BtcdEndpoint("127.0.0.1:18334", "u", "p", "/b/rpc.cert"))
    st = settlement_launch(s, layout, 5005, 5006, m.target, anchor_target=a.target)
    c = console_launch(s, layout, 5007, 5008, st.target, m.target, "DEBUG")
    nodes = [NodeEndpoint(x.name, "02" + f"{i:02x}" * 32, f"127.0.0.1:{10009 + i}", "/t", {"meter": "/m"},
                          f"127.0.0.1:{9735 + i}") for i, x in enumerate(s.meters)]
    hub = HUB if s.network.hub else None
    meters = [meter_launch(s, x, layout, 6000 + 2 * i, 6001 + 2 * i, nodes[i], m.target, st.target, hub, nodes)
              for i, x in enumerate(s.meters)]
    return [m, a, st, c, *meters]


@pytest.mark.parametrize("name", sorted(scenario_files()))
def test_every_launch_env_is_read_back_by_its_service(name: str, tmp_path: Path) -> None:
    """What the runner hands each process is exactly what that process's settings read."""
    s = load_scenario(name)
    for launch in all_launches(s, tmp_path):
        cls = SERVICE_SETTINGS[launch.kind]
        read = settings_from_env(cls, launch.env)
        assert (read.grpc_host, read.grpc_port, read.metrics_port, read.log_json) == (
            "127.0.0.1", launch.grpc_port, launch.metrics_port, True)
        assert settings_env(cls, **{f: getattr(read, f) for f in read.model_fields_set}) == launch.env
        if isinstance(read, MeterSettings):
            spec = s.meter(launch.name)
            assert (read.meter_id, read.role, read.source, read.price_msat_per_kwh) == (
                spec.name, spec.role, spec.source, spec.price_msat_per_kwh)
            assert read.sim_start == s.timing.sim_start and read.tick_s == s.timing.tick_s
            assert read.key_path == tmp_path / spec.name / "meter.key"
            assert read.peak_watts() == spec.pv_wp
        if isinstance(read, SettlementSettings):
            assert (read.increment_wh, read.payment_timeout_s) == (s.increment_wh, s.payment_timeout_s)


def test_services_env_overrides_are_applied_and_checked(tmp_path: Path) -> None:
    s = load_scenario("hackathon")
    layout = Layout(tmp_path)
    over = replace(s, services_env={"settlement": {"p2pep_settlement_increment_wh": "5",
                                                   "P2PEP_SETTLEMENT_SWEEP_INTERVAL_S": "0.25"}})
    env = settlement_launch(over, layout, 1, 2, "127.0.0.1:3").env
    assert env["P2PEP_SETTLEMENT_INCREMENT_WH"] == "5" and "p2pep_settlement_increment_wh" not in env
    assert settings_from_env(SettlementSettings, env).sweep_interval_s == 0.25
    bad = replace(s, services_env={"settlement": {"P2PEP_SETTLEMENT_INCREMENT_WH": "-1"}})
    with pytest.raises(ScenarioError) as info:
        settlement_launch(bad, layout, 1, 2, "127.0.0.1:3")
    assert str(info.value) == ("services_env.settlement: SettlementSettings: P2PEP_SETTLEMENT_INCREMENT_WH: "
                               "Input should be greater than 0")
    unknown = replace(s, services_env={"matcher": {"P2PEP_MATCHER_MODES": "periodic"}})
    with pytest.raises(ScenarioError, match=r"^services_env\.matcher\.P2PEP_MATCHER_MODES: P2PEP_MATCHER_MODES is not"):
        matcher_launch(unknown, layout, 1, 2)
    meter = replace(s.meter("meter-3"), env={"P2PEP_METER_ACCEL": "0"})
    with pytest.raises(ScenarioError, match=r"^meters\[2\]\.env: MeterSettings: P2PEP_METER_ACCEL: "):
        meter_launch(s, meter, layout, 1, 2, NODE, "127.0.0.1:3", "127.0.0.1:4", HUB)


def test_a_bad_launch_value_names_the_service(tmp_path: Path) -> None:
    s = load_scenario("hackathon")
    with pytest.raises(ScenarioError, match=r"^anchor: AnchorSettings: P2PEP_ANCHOR_GRPC_PORT: "):
        anchor_launch(s, Layout(tmp_path), 70000, 2, HUB, BtcdEndpoint("127.0.0.1:1", "u", "p", "/c"))


def test_a_service_gets_only_its_own_macaroon_of_a_node(tmp_path: Path) -> None:
    """The hub's endpoint carries the anchor's macaroon only: a meter launched against it
    (or the anchor against a household's node) is refused before any process starts."""
    s = load_scenario("hackathon")
    with pytest.raises(ScenarioError, match=r"^meter: no lnd macaroon baked for it on node hub$"):
        meter_launch(s, s.meter("meter-3"), Layout(tmp_path), 1, 2, HUB, "127.0.0.1:3", "127.0.0.1:4", HUB)
    with pytest.raises(ScenarioError, match=r"^anchor: no lnd macaroon baked for it on node meter-3$"):
        anchor_launch(s, Layout(tmp_path), 1, 2, NODE, BtcdEndpoint("127.0.0.1:1", "u", "p", "/c"))


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
