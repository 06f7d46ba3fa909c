"""Scenario definitions: parsing, validation errors naming the field, the shipped files."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from p2pep.scenario.catalog import list_scenarios, load_scenario, scenario_files
from p2pep.scenario.model import (
    DEFAULT_EXPECT,
    ScenarioError,
    format_duration,
    lnd_target,
    parse_duration_s,
    parse_scenario,
)

BASE: dict[str, Any] = {
    "name": "t",
    "timing": {"sim_start": "2026-06-21T11:00:00+02:00", "duration": "90m", "accel": 60},
    "meters": [
        {"role": "producer", "source": "constant", "constant_w": 1200, "price_msat_per_kwh": 250000},
        {"role": "producer", "source": "pv", "pv_wp": 1600, "price_msat_per_kwh": 280000},
        {"role": "consumer", "source": "constant", "constant_w": 2000, "price_msat_per_kwh": 350000},
    ],
}


def with_(path: str, value: Any) -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    node: Any = d
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
    if isinstance(node, list):
        node[int(keys[-1])] = value
    else:
        node[keys[-1]] = value
    return d


@pytest.mark.parametrize("text,seconds", [("90m", 5400), ("1h30m", 5400), ("45s", 45), ("2h", 7200), (30, 30)])
def test_durations(text: str | int, seconds: int) -> None:
    assert parse_duration_s(text, "f") == seconds
    assert parse_duration_s(format_duration(seconds), "f") == seconds


@pytest.mark.parametrize("bad", ["", "90", "1.5h", "m", -1, True])
def test_bad_duration_names_field(bad: Any) -> None:
    with pytest.raises(ScenarioError, match=r"^timing\.x: "):
        parse_duration_s(bad, "timing.x")


def test_parse_defaults() -> None:
    s = parse_scenario(BASE)
    assert s.meter_names == ["meter-1", "meter-2", "meter-3"]
    assert s.network.hub and s.increment_wh == 10 and s.matcher_mode == "continuous"
    assert s.timing.duration_s == 5400 and s.timing.real_duration_s == 90
    assert s.timing.window_s == 900 and s.timing.tick_s == 0.25
    assert [m.name for m in s.consumers] == ["meter-3"]
    assert [m.name for m in s.suppliers] == ["meter-1", "meter-2"]
    assert s.expect == DEFAULT_EXPECT
    assert s.timing.sim_end_ms - s.timing.sim_start_ms == 5400 * 1000


@pytest.mark.parametrize(
    "path,value,field",
    [
        ("meters.0.role", "seller", "meters[0].role"),
        ("meters.1.source", "wind", "meters[1].source"),
        ("meters.2.price_msat_per_kwh", 0, "meters[2].price_msat_per_kwh"),
        ("meters.2.price_msat_per_kwh", 1.5, "meters[2].price_msat_per_kwh"),
        ("meters.0.constant_w", 0, "meters[0].constant_w"),
        ("meters.1.pv_wp", -5, "meters[1].pv_wp"),
        ("meters.0.watts", 3, "meters[0].watts"),
        ("meters.0.name", "house-1", "meters[0].name"),
        ("timing.sim_start", "2026-06-21T11:00:00", "timing.sim_start"),
        ("timing.sim_start", "noon", "timing.sim_start"),
        ("timing.accel", 0, "timing.accel"),
        ("timing.duration", "forever", "timing.duration"),
        ("timing.tick_s", 0, "timing.tick_s"),
        ("network.push_sat", 20_000_000, "network.push_sat"),
        ("network.hub", "yes", "network.hub"),
        ("network.utxos", 0, "network.utxos"),
        ("settlement.increment_wh", 0, "settlement.increment_wh"),
        ("matcher.mode", "auction", "matcher.mode"),
        ("expect", ["everything_fine"], "expect[0]"),
        ("services_env", {"meter": {}}, "services_env.meter"),
        ("services_env", {"settlement": {"P2PEP_SETTLEMENT_INCREMENT": "5"}},
         "services_env.settlement.P2PEP_SETTLEMENT_INCREMENT"),
        ("services_env", {"matcher": {"P2PEP_SETTLEMENT_MODE": "periodic"}}, "services_env.matcher.P2PEP_SETTLEMENT_MODE"),
        ("meters.2.env", {"P2PEP_METER_PRICE": "1"}, "meters[2].env.P2PEP_METER_PRICE"),
        ("colour", "blue", "colour"),
    ],
)
def test_bad_input_names_the_field(path: str, value: Any, field: str) -> None:
    with pytest.raises(ScenarioError) as e:
        parse_scenario(with_(path, value))
    assert e.value.field == field, str(e.value)
    assert str(e.value).startswith(f"{field}: ")


def test_meter_names_must_match_network() -> None:
    d = copy.deepcopy(BASE)
    d["meters"][0]["name"] = "meter-1"
    d["meters"][1]["name"] = "meter-1"
    with pytest.raises(ScenarioError, match="used twice"):
        parse_scenario(d)
    d["meters"][1]["name"] = "meter-7"
    with pytest.raises(ScenarioError, match="must be named meter-1, meter-2, meter-3"):
        parse_scenario(d)


def test_events_are_validated_and_sorted() -> None:
    d = with_("events", [
        {"at": "40m", "action": "start", "target": "settlement"},
        {"at": "30m", "action": "stop", "target": "settlement", "signal": "SIGKILL"},
        {"at": "20m", "action": "drain_channel", "target": "meter-3", "keep_increments": 3},
    ])
    s = parse_scenario(d)
    assert [(e.at_s, e.action) for e in s.events] == [(1200, "drain_channel"), (1800, "stop"), (2400, "start")]
    assert "drain meter-3" in s.events[0].describe()
    for ev, field in [
        ({"at": "20m", "action": "explode", "target": "meter-1"}, "events[0].action"),
        ({"at": "20m", "action": "drain_channel", "target": "settlement"}, "events[0].target"),
        ({"at": "20m", "action": "stop", "target": "meter-9"}, "events[0].target"),
        ({"at": "20m", "action": "stop", "target": "meter-1", "signal": "SIGHUP"}, "events[0].signal"),
        ({"at": "2h", "action": "stop", "target": "meter-1"}, "events[0].at"),
        ({"action": "stop", "target": "meter-1"}, "events[0].at"),
        ({"at": "20m", "action": "stop", "target": "lnd:meter-9"}, "events[0].target"),
        ({"at": "20m", "action": "drain_channel", "target": "lnd:hub"}, "events[0].target"),
        ({"at": "20m", "action": "drain_channel", "target": "btcd"}, "events[0].target"),
        ({"at": "20m", "action": "stop", "target": "btcd-peer"}, "events[0].target"),  # it keeps the chain
    ]:
        with pytest.raises(ScenarioError) as e:
            parse_scenario(with_("events", [ev]))
        assert e.value.field == field


def test_the_networks_lnd_nodes_and_btcd_are_event_targets() -> None:
    kills = [{"at": "20m", "action": "stop", "target": t, "signal": "SIGKILL"}
             for t in ("lnd:hub", "lnd:meter-2", "btcd")]
    s = parse_scenario(with_("events", kills))
    assert [e.target for e in s.events] == ["lnd:hub", "lnd:meter-2", "btcd"]
    assert lnd_target("lnd:meter-2") == "meter-2" and lnd_target("btcd") is None and lnd_target("meter-2") is None
    adhoc = with_("events", kills[:1])
    adhoc["network"] = {"hub": False}
    with pytest.raises(ScenarioError, match="'lnd:hub' is not one of") as e:
        parse_scenario(adhoc)  # no hub in an ad hoc network
    assert e.value.field == "events[0].target"


def test_shipped_scenarios_load() -> None:
    names = set(scenario_files())
    assert {"hackathon", "hackathon-adhoc", "producer-leaves", "consumer-cannot-pay"} <= names
    for s in list_scenarios():
        if s.name == "neighbourhood":  # a simulated day: tests/test_e2e_neighbourhood.py runs its noon hour
            assert s.timing.duration_s == 24 * 3600 and s.timing.real_duration_s <= 60 * 60
            assert len(s.meters) >= 12 and {m.role for m in s.meters} == {"producer", "consumer", "prosumer"}
        else:  # a minute or two each (producer-leaves: 140 s, its producer away for 90 s,
            # longer than P2PEPMeterSilent takes to fire; lossy: 150 s, its consumer cut off 60 s)
            assert 60 <= s.timing.real_duration_s <= (150 if s.name == "lossy" else 140), s.name
        assert s.to_dict()["name"] == s.name
    h = load_scenario("hackathon")
    assert h.network.hub and len(h.meters) == 3
    (consumer,) = h.consumers
    supplier_w = {m.name: m.constant_w or m.pv_wp for m in h.suppliers}
    assert all(w < consumer.constant_w for w in supplier_w.values())
    assert "consumer_split_across_suppliers" in h.expect
    adhoc = load_scenario("hackathon-adhoc")
    assert not adhoc.network.hub and adhoc.network.utxos == 3
    leave, back = load_scenario("producer-leaves").events
    assert (leave.action, leave.target, leave.signal) == ("stop", "meter-2", "SIGTERM")
    assert (back.action, back.target) == ("start", "meter-2") and back.at_s > leave.at_s
    (drain,) = load_scenario("consumer-cannot-pay").events
    assert (drain.action, drain.target, drain.keep_increments) == ("drain_channel", "meter-3", 5)


def test_anchor_needs_the_hub() -> None:
    d = with_("anchor", True)
    assert parse_scenario(d).anchor
    d["network"] = {"hub": False}
    with pytest.raises(ScenarioError, match="^anchor: needs the hub"):
        parse_scenario(d)
    d = with_("events", [{"at": "10m", "action": "stop", "target": "anchor"}])
    with pytest.raises(ScenarioError, match=r"^events\[0\]\.target"):
        parse_scenario(d)


def test_unknown_scenario_lists_known() -> None:
    with pytest.raises(ScenarioError, match="known: .*hackathon"):
        load_scenario("nope")


def test_payment_rate_fits_a_small_machine() -> None:
    """At most ~5 increments/s in total: consumers' W × accel / 3600 / increment_wh."""
    for s in list_scenarios():
        wh_per_real_s = sum(m.constant_w for m in s.consumers) * s.timing.accel / 3600
        assert wh_per_real_s / s.increment_wh <= 5, s.name


def test_environment_overrides_name_the_setting_they_miss() -> None:
    with pytest.raises(ScenarioError, match=r"P2PEP_SETTLEMENT_INCREMENT is not a setting of SettlementSettings .*"
                                            r"INCREMENT_WH"):
        parse_scenario(with_("services_env", {"settlement": {"P2PEP_SETTLEMENT_INCREMENT": "5"}}))
    s = parse_scenario(with_("services_env", {"settlement": {"p2pep_settlement_sweep_interval_s": 0.25}}))
    assert s.services_env == {"settlement": {"p2pep_settlement_sweep_interval_s": "0.25"}}
