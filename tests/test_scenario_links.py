"""Lossy links, the pure parts: link profiles as Toxiproxy toxics, the proxies of a meter's
link, ``link`` and ``partition`` in scenario files (and their validation errors), the
report's ``relay_blocked_while_link_down`` check, and the Toxiproxy client against a fake API."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from p2pep.scenario.catalog import load_scenario
from p2pep.scenario.links import (
    LINKS,
    PROFILES,
    Proxy,
    meter_proxies,
    profile,
    proxy_name,
)
from p2pep.scenario.model import ScenarioError, link_target, parse_scenario
from p2pep.scenario.report import EventOutcome, RelaySample, RunFacts, build_report, link_down_grace_s
from p2pep.scenario.run_state import live_services
from p2pep.scenario.toxiproxy import ToxiproxyClient, ToxiproxyError

BASE: dict[str, Any] = {
    "name": "t",
    "timing": {"sim_start": "2026-06-21T11:00:00+02:00", "duration": "40m", "accel": 15},
    "meters": [
        {"role": "producer", "source": "constant", "constant_w": 1200, "price_msat_per_kwh": 250000},
        {"role": "producer", "source": "pv", "pv_wp": 1600, "price_msat_per_kwh": 280000, "link": "satellite"},
        {"role": "consumer", "source": "constant", "constant_w": 2000, "price_msat_per_kwh": 350000,
         "link": "gprs"},
    ],
    "events": [{"at": "10m", "action": "partition", "target": "link:meter-3", "for": "15m"}],
}


def scenario_with(**changes: Any) -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    for path, value in changes.items():
        node: Any = d
        keys = path.split("__")
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node[k]
        if isinstance(node, list):
            node[int(keys[-1])] = value
        elif value is None:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value
    return d


# --- profiles -> toxics ------------------------------------------------------------------


def test_none_has_no_toxics_and_every_profile_is_known_by_name() -> None:
    assert {"none", "gprs", "satellite"} <= set(LINKS)
    assert profile("none").toxics() == []
    with pytest.raises(ValueError, match="'dialup' is not a link profile"):
        profile("dialup")
    for name, p in PROFILES.items():
        assert p.name == name and p.description
        toxics = p.toxics()
        assert len({t.name for t in toxics}) == len(toxics), name  # unique per proxy
        for t in toxics:
            assert t.stream in ("upstream", "downstream") and 0 < t.toxicity <= 1
            assert all(isinstance(v, int) and v >= 0 for v in t.attributes.values()), t


def test_gprs_is_slow_jittery_narrow_and_stalls_and_resets_some_connections() -> None:
    toxics = {t.name: t for t in profile("gprs").toxics()}
    # half the round trip each way, jitter each way: 300..700 ms RTT
    for stream in ("upstream", "downstream"):
        lat = toxics[f"latency-{stream}"]
        assert lat.type == "latency" and lat.stream == stream
        rtt_lo = 2 * (lat.attributes["latency"] - lat.attributes["jitter"])
        rtt_hi = 2 * (lat.attributes["latency"] + lat.attributes["jitter"])
        assert (rtt_lo, rtt_hi) == (300, 700)
        bw = toxics[f"bandwidth-{stream}"]
        assert bw.type == "bandwidth" and bw.attributes == {"rate": 5}  # KB/s: 40 kbit/s
        assert toxics[f"slow-close-{stream}"].type == "slow_close"
    stall, reset = toxics["stall"], toxics["reset"]
    assert stall.type == "timeout" and stall.attributes["timeout"] > 0 and 0 < stall.toxicity < 1
    assert reset.type == "reset_peer" and reset.attributes["timeout"] > 0 and 0 < reset.toxicity < 1
    assert stall.body() == {"name": "stall", "type": "timeout", "stream": "downstream", "toxicity": stall.toxicity,
                            "attributes": {"timeout": stall.attributes["timeout"]}}


def test_satellite_is_a_long_steady_round_trip() -> None:
    toxics = {t.name: t for t in profile("satellite").toxics()}
    assert toxics["latency-upstream"].attributes == {"latency": 300, "jitter": 20}
    assert toxics["latency-downstream"].attributes == {"latency": 300, "jitter": 20}
    assert not {"stall", "reset"} & set(toxics)


def test_a_meters_link_is_three_proxies_one_per_upstream() -> None:
    targets = {"settlement": "127.0.0.1:1", "matcher": "127.0.0.1:2", "meter": "127.0.0.1:3"}
    listen = {"settlement": "127.0.0.1:11", "matcher": "127.0.0.1:12", "meter": "127.0.0.1:13"}
    proxies = meter_proxies("meter-3", targets, listen)  # type: ignore[arg-type]
    assert proxies == [Proxy("meter-3.settlement", "127.0.0.1:11", "127.0.0.1:1"),
                       Proxy("meter-3.matcher", "127.0.0.1:12", "127.0.0.1:2"),
                       Proxy("meter-3.meter", "127.0.0.1:13", "127.0.0.1:3")]
    assert proxy_name("meter-1", "matcher") == "meter-1.matcher"
    assert proxies[0].body() == {"name": "meter-3.settlement", "listen": "127.0.0.1:11",
                                 "upstream": "127.0.0.1:1", "enabled": True}


# --- scenario files ----------------------------------------------------------------------


def test_links_and_partitions_parse() -> None:
    s = parse_scenario(BASE)
    assert [m.link for m in s.meters] == ["", "satellite", "gprs"]
    (e,) = s.events
    assert (e.action, e.target, e.at_s, e.for_s) == ("partition", "link:meter-3", 600, 900)
    assert link_target(e.target) == "meter-3" and link_target("meter-3") is None
    assert e.describe() == "at sim+10m: partition meter-3's link for 15m"
    assert s.linked_meters == {"meter-2": "satellite", "meter-3": "gprs"}
    assert s.to_dict()["events"][0]["for_s"] == 900 and s.to_dict()["meters"][2]["link"] == "gprs"
    # a meter partitioned without a profile of its own goes through bare proxies
    s = parse_scenario(scenario_with(meters__2__link=None))
    assert s.linked_meters == {"meter-2": "satellite", "meter-3": "none"}
    # without links or partitions nothing is proxied
    s = parse_scenario(scenario_with(meters__1__link=None, meters__2__link=None, events=[]))
    assert s.linked_meters == {}


@pytest.mark.parametrize("changes,field,message", [
    ({"meters__2__link": "dialup"}, "meters[2].link", "'dialup' is not one of none, gprs, satellite"),
    ({"meters__2__link": 3}, "meters[2].link", "must be a string"),
    ({"events__0__target": "meter-3"}, "events[0].target", "is not one of link:meter-1"),
    ({"events__0__target": "link:meter-9"}, "events[0].target", "is not one of"),
    ({"events__0__for": None}, "events[0].for", "is required"),
    ({"events__0__for": "0s"}, "events[0].for", "must be > 0"),
    ({"events__0__for": "soon"}, "events[0].for", "is not a duration"),
    ({"events__0__for": "30m"}, "events[0].for", "healed before the end"),
    ({"events__0": {"at": "5m", "action": "stop", "target": "meter-2", "for": "1m"}}, "events[0].for",
     "only a partition lasts"),
    ({"events__0": {"at": "5m", "action": "stop", "target": "link:meter-2"}}, "events[0].target", "is not one of"),
])
def test_bad_links_and_partitions_name_the_field(changes: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=message) as e:
        parse_scenario(scenario_with(**changes))
    assert e.value.field == field


def test_overlapping_partitions_of_one_link_are_refused() -> None:
    d = scenario_with()
    d["events"].append({"at": "20m", "action": "partition", "target": "link:meter-3", "for": "5m"})
    with pytest.raises(ScenarioError, match=r"overlaps events\[0\]") as e:
        parse_scenario(d)
    assert e.value.field == "events[1].at"
    d["events"][1]["at"] = "25m"  # right after the first is healed
    d["events"].append({"at": "12m", "action": "partition", "target": "link:meter-2", "for": "5m"})
    assert len(parse_scenario(d).events) == 3


def test_the_shipped_lossy_scenario() -> None:
    s = load_scenario("lossy")
    assert {m.name: m.link for m in s.meters} == {"meter-1": "gprs", "meter-2": "satellite", "meter-3": "gprs"}
    (cut,) = s.events
    assert cut.action == "partition" and cut.target == "link:meter-3"
    assert cut.for_s / s.timing.accel == 60  # a 60-second partition in real seconds
    assert "relay_blocked_while_link_down" in s.expect
    assert s.timing.real_duration_s <= 150


# --- the report's check ------------------------------------------------------------------


def link_facts(samples: list[tuple[float, bool]], healed: float | None = 70.0) -> RunFacts:
    s = parse_scenario(BASE)
    t = datetime(2026, 1, 1, tzinfo=UTC)
    out = EventOutcome("cut", "partition", "link:meter-3", 600, applied_real_s=10.0, ok=True,
                       detail={"proxies": []} | ({"healed_real_s": healed} if healed is not None else {}))
    return RunFacts(scenario=s, run_dir="/x", started_at=t, ended_at=t, real_seconds=100, sim_reached_ms=0,
                    events=[out], relay_samples={"meter-3": [RelaySample(r, 0, e, "", 1, 0) for r, e in samples]})


def test_the_relay_may_run_on_its_cover_then_must_stay_blocked_until_healed() -> None:
    s = parse_scenario(BASE)
    # two 10 Wh increments at 2 kW: 36 simulated s, 2.4 s at 15x; two ticks; 1.5 s slack
    assert link_down_grace_s(s, "meter-3") == pytest.approx(2.4 + 0.5 + 1.5)
    good = [(5.0, True), (11.0, True), (13.0, False), (40.0, False), (69.9, False), (75.0, True)]
    r = build_report(link_facts(good))
    check = r["checks"]["relay_blocked_while_link_down"]
    assert check["ok"], check
    (w,) = check["detail"]
    assert w["blocked_after_s"] == 3.0 and w["energized_again_after_heal_s"] == 5.0
    assert w["samples_while_down"] == 2  # 13.0 is within the cover (10.0 + 4.4)
    assert r["links"]["profiles"] == {"meter-2": "satellite", "meter-3": "gprs"}
    bad = build_report(link_facts([*good, (50.0, True)]))["checks"]["relay_blocked_while_link_down"]
    assert not bad["ok"] and bad["detail"][0]["energized_while_down"] == [50.0]
    never_healed = build_report(link_facts(good, healed=None))["checks"]["relay_blocked_while_link_down"]
    assert not never_healed["ok"]
    no_samples = build_report(link_facts([(5.0, True)]))["checks"]["relay_blocked_while_link_down"]
    assert not no_samples["ok"]  # nothing observed while it was down proves nothing


# --- the Toxiproxy client, against a fake of its API --------------------------------------


async def test_client_creates_proxies_adds_toxics_partitions_and_heals() -> None:
    proxies: dict[str, dict[str, Any]] = {}
    toxics: dict[str, list[dict[str, Any]]] = {}

    async def create(req: web.Request) -> web.Response:
        body = await req.json()
        if body["name"] in proxies:
            return web.json_response({"error": "proxy already exists", "status": 409}, status=409)
        proxies[body["name"]] = body
        toxics[body["name"]] = []
        return web.json_response(body, status=201)

    async def add(req: web.Request) -> web.Response:
        body = await req.json()
        have = toxics[req.match_info["p"]]
        if any(t["name"] == body["name"] for t in have):
            return web.json_response({"error": "toxic already exists", "status": 409}, status=409)
        have.append(body)
        return web.json_response(body)

    async def listing(req: web.Request) -> web.Response:
        return web.json_response(toxics[req.match_info["p"]])

    async def update(req: web.Request) -> web.Response:
        proxies[req.match_info["p"]].update(await req.json())
        return web.json_response(proxies[req.match_info["p"]])

    async def get(req: web.Request) -> web.Response:
        return web.json_response(proxies[req.match_info["p"]])

    async def remove(req: web.Request) -> web.Response:
        p, name = req.match_info["p"], req.match_info["t"]
        toxics[p] = [t for t in toxics[p] if t["name"] != name]
        return web.Response(status=204)

    async def version(_: web.Request) -> web.Response:
        return web.Response(text="2.5.0")

    app = web.Application()
    app.router.add_get("/version", version)
    app.router.add_post("/proxies", create)
    app.router.add_post("/proxies/{p}/toxics", add)
    app.router.add_get("/proxies/{p}/toxics", listing)
    app.router.add_delete("/proxies/{p}/toxics/{t}", remove)
    app.router.add_post("/proxies/{p}", update)
    app.router.add_get("/proxies/{p}", get)
    async with TestServer(app) as server, ToxiproxyClient(f"{server.host}:{server.port}") as api:
        assert await api.version() == "2.5.0"
        p = Proxy("meter-3.settlement", "127.0.0.1:11", "127.0.0.1:1")
        await api.create_proxy(p)
        with pytest.raises(ToxiproxyError, match="409"):
            await api.create_proxy(p)
        for t in profile("gprs").toxics():
            await api.add_toxic(p.name, t)
        assert len(toxics[p.name]) == len(profile("gprs").toxics())
        assert not await api.partitioned(p.name)
        await api.partition([p.name])  # the proxy is disabled: its toxics stay for when it is back
        assert await api.partitioned(p.name) and proxies[p.name]["enabled"] is False
        await api.heal([p.name])
        await api.heal([p.name])  # healing a link that is not cut changes nothing
        assert not await api.partitioned(p.name) and len(toxics[p.name]) == len(profile("gprs").toxics())


def test_a_left_over_toxiproxy_is_stopped_by_scenario_down(tmp_path: Path) -> None:
    # only a live toxiproxy-server of ours counts (a pid reused by something else is left alone)
    assert live_services({"services": {}, "toxiproxy": {"pid": 1}}) == {}
    assert live_services({"services": {}, "toxiproxy": None}) == {}
