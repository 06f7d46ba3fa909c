"""The household app's trading, wallet, charts, activity, peers and live updates, through
the portal against real meter services and a real matcher (in process; fake settlement and
lnd). Every bad input is a 4xx with a JSON body; a household reaches only its own meters;
preimages never reach a page. The real-network run (a browser driving the app,
tests/app_browser.py) is tests/test_e2e_scenarios.py's hackathon scenario."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from aiohttp import web
from document_helpers import signed_document, summary, terms
from test_meter_service import Rig, rig  # noqa: F401 - the fixture
from tls_helpers import dial, tls_as
from web_helpers import WebClient

from p2pep.anchor.document import AnchorProof
from p2pep.anchor.merkle import MerkleTree
from p2pep.canonical import contract_hash, settlement_hash
from p2pep.identity import Identity
from p2pep.metering.contract_book import Party
from p2pep.regtest import wait_for
from p2pep.regtest.ports import free_port
from p2pep.servicekit.meter_links import MeterLinks
from p2pep.settings.matcher import MatcherSettings
from p2pep.v1 import common_pb2, matcher_pb2_grpc, settlement_pb2_grpc
from p2pep.v1 import settlement_pb2 as S
from p2pep.webauth.passwords import cheap_passwords
from p2pep.webauth.web import AuthConfig, WebAuth
from services.matcher.app import MatcherApp, start_matcher
from services.meter.app import MeterApp
from services.portal.household import Household, PeerFilter, buckets, distance_m, document_check, public_offers
from services.portal.store import PortalStore
from services.portal.web import Portal, add_portal_routes

PW = "a household password"
PORTAL = Identity("service", "portal")
SIM_START = "2026-06-21T11:00:00+02:00"


@dataclass
class App:
    base: str
    rig: Rig
    matcher: MatcherApp

    async def code(self, meter: str) -> str:
        app: MeterApp = self.rig.apps[meter]
        async with aiohttp.ClientSession(app.host.http_url) as http, http.get("/api/pairing") as r:
            return str((await r.json())["code"])

    async def household(self, name: str, meter: str) -> WebClient:
        c = WebClient(self.base)
        assert (await c.register(name, PW))[0] == 201
        status, body = await c.send("POST", "/api/meters", {"meter_id": meter, "code": await self.code(meter)})
        assert status == 201, body
        return c


@pytest.fixture
async def app(rig: Rig) -> AsyncIterator[App]:  # noqa: F811
    matcher = await start_matcher(MatcherSettings(db_path=str(rig.tmp / "matcher.sqlite"),
                                                  housekeeping_interval_s=0.2, log_json=False))
    # no load: the consumer's own window trading asks for nothing; only the households buy
    common = dict(matcher_target=matcher.target, constant_w=0, sim_start=SIM_START, lat=52.52, lon=13.405)
    await rig.meter("home", "consumer", **common)
    # (the producer produces: its own supply rests in the book at its standing 120 sat/kWh)
    await rig.meter("solar", "producer", **{**common, "constant_w": 1000, "lat": 52.53, "lon": 13.41,
                                            "price_msat_per_kwh": 120_000})
    store = await PortalStore.open_portal(str(rig.tmp / "portal.db"))
    ch = dial(rig.server.target, "settlement", as_=PORTAL)
    to_matcher = dial(matcher.target, "matcher", as_=PORTAL)  # the book's offers, as the portal reads them
    links = MeterLinks(settlement_pb2_grpc.SettlementServiceStub(ch), timeout=5, tls=tls_as(PORTAL))
    auth = WebAuth(store, AuthConfig(site="portal", title="portal", can_register=True), passwords=cheap_passwords())
    web_app = web.Application()
    auth.install(web_app)
    household = Household(links, 5, matcher=matcher_pb2_grpc.MatcherServiceStub(to_matcher), peers_ttl_s=0)
    add_portal_routes(web_app, Portal(store, auth, links, 5), household)
    runner = web.AppRunner(web_app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield App(f"http://127.0.0.1:{port}", rig, matcher)
    await runner.cleanup()
    await links.close()
    await ch.close()
    await to_matcher.close()
    await store.close()
    await matcher.stop(0)


async def test_households_trade_their_own_energy_and_cancel(app: App) -> None:
    home = await app.household("alice", "home")
    solar = await app.household("bob", "solar")
    try:
        # bob sells 50 Wh at 110 sat/kWh (below his meter's standing 120: the order's own price)
        status, body = await solar.send("POST", "/api/meters/solar/orders", {
            "side": "supply", "energy_wh": 50, "price_msat_per_kwh": 110_000, "timeout_s": 600})
        assert status == 201, body
        sell_id = body["order"]["order_id"]
        assert sell_id.startswith("solar:app:supply:") and body["status"] == "ORDER_STATUS_RESTING"
        status, body = await solar.get("/api/meters/solar/orders")
        assert status == 200 and [o["order_id"] for o in body["orders"]] == [sell_id]
        assert body["orders"][0]["remaining_wh"] == "50"
        # alice buys 20 Wh, bidding above her meter's standing limit, naming bob: matched at once
        status, body = await home.send("POST", "/api/meters/home/orders", {
            "side": "demand", "energy_wh": 20, "price_msat_per_kwh": 200_000, "timeout_s": 600, "partner": "solar"})
        assert status == 201, body
        (c,) = body["contracts"]
        assert (c["consumer"], c["supplier"], c["energy_wh"], c["price_msat_per_kwh"]) == \
            ("home", "solar", "20", "110000")
        assert body["status"] == "ORDER_STATUS_FILLED"
        # the meters will sign it: each took the order's price as its limit while it is open
        assert app.rig.apps["home"].meter.household.price_limit(Party.CONSUMER) == 200_000
        assert app.rig.apps["solar"].meter.household.price_limit(Party.SUPPLIER) == 110_000
        status, body = await solar.get("/api/meters/solar/orders")
        assert body["orders"][0]["remaining_wh"] == "30"
        # bob cancels the rest; it is gone, and cancelling again is a 404
        status, body = await solar.send("DELETE", f"/api/meters/solar/orders/{sell_id}")
        assert status == 200 and body["order"]["remaining_wh"] == "30", body
        assert (await solar.get("/api/meters/solar/orders"))[1] == {"orders": []}
        status, body = await solar.send("DELETE", f"/api/meters/solar/orders/{sell_id}")
        assert status == 404 and "error" in body
        # a household cannot cancel, place or list for another household's meter
        status, body = await home.send("DELETE", f"/api/meters/solar/orders/{sell_id}")
        assert status == 404 and body["param"] == "meter_id"
        for path in ("orders", "wallet", "energy", "activity", "peers", "events"):
            status, body = await home.get(f"/api/meters/solar/{path}")
            assert status == 404 and body["param"] == "meter_id", (path, body)
        status, body = await home.send("POST", "/api/meters/solar/orders", {
            "side": "supply", "energy_wh": 50, "price_msat_per_kwh": 1, "timeout_s": 60})
        assert status == 404
        # nor cancel a window order of its own meter that is not a household order
        status, body = await home.send("DELETE", "/api/meters/home/orders/home:w1:demand:abc")
        assert status == 404 and body["error"].startswith("meter: order_id")
    finally:
        await home.http.close()
        await solar.http.close()


@pytest.mark.parametrize("body,param", [
    ({"side": "sell", "energy_wh": 1, "price_msat_per_kwh": 1, "timeout_s": 1}, "side"),
    ({"side": "demand", "energy_wh": 0, "price_msat_per_kwh": 1, "timeout_s": 1}, "energy_wh"),
    ({"side": "demand", "energy_wh": "5", "price_msat_per_kwh": 1, "timeout_s": 1}, "energy_wh"),
    ({"side": "demand", "energy_wh": 1.5, "price_msat_per_kwh": 1, "timeout_s": 1}, "energy_wh"),
    ({"side": "demand", "energy_wh": True, "price_msat_per_kwh": 1, "timeout_s": 1}, "energy_wh"),
    ({"side": "demand", "energy_wh": 1, "price_msat_per_kwh": -1, "timeout_s": 1}, "price_msat_per_kwh"),
    ({"side": "demand", "energy_wh": 1, "price_msat_per_kwh": 10**15, "timeout_s": 1}, "price_msat_per_kwh"),
    ({"side": "demand", "energy_wh": 1, "price_msat_per_kwh": 1, "timeout_s": 0}, "timeout_s"),
    ({"side": "demand", "energy_wh": 1, "price_msat_per_kwh": 1, "timeout_s": 86_401}, "timeout_s"),
    ({"side": "demand", "energy_wh": 1, "price_msat_per_kwh": 1, "timeout_s": 1, "partner": "no spaces!"}, "partner"),
    ({"side": "demand", "energy_wh": 1, "price_msat_per_kwh": 1, "timeout_s": 1, "partner": "home"}, "partner"),
    (["not", "an", "object"], "body"),
])
async def test_bad_orders_are_400_with_the_field(app: App, body: object, param: str) -> None:
    home = await app.household("carol", "home")
    try:
        status, got = await home.send("POST", "/api/meters/home/orders", body)
        assert status == 400 and got["param"] == param, got
        assert (await home.get("/api/meters/home/orders"))[1] == {"orders": []}  # nothing placed
    finally:
        await home.http.close()


async def test_the_meter_refuses_what_its_role_cannot_do_and_csrf_guards_every_change(app: App) -> None:
    solar = await app.household("dave", "solar")
    try:
        status, body = await solar.send("POST", "/api/meters/solar/orders", {
            "side": "demand", "energy_wh": 10, "price_msat_per_kwh": 1000, "timeout_s": 60})
        assert status == 409 and "producer" in body["error"], body
        status, body = await solar.send("POST", "/api/meters/solar/orders", {
            "side": "supply", "energy_wh": 10, "price_msat_per_kwh": 1000, "timeout_s": 60}, csrf="forged")
        assert status == 403 and "CSRF" in body["error"]
        assert (await solar.send("POST", "/api/meters/solar/address", csrf="forged"))[0] == 403
        async with aiohttp.ClientSession(app.base) as anonymous, anonymous.get("/api/meters/solar/orders") as r:
            assert r.status == 401 and "error" in await r.json()
        async with solar.http.post("/api/meters/solar/orders", data="side=supply",
                                   headers={"X-CSRF-Token": solar.csrf}) as r:
            assert r.status == 400 and (await r.json())["param"] == "body"
    finally:
        await solar.http.close()


async def test_wallet_chart_activity_peers_and_live_status(app: App) -> None:
    home = await app.household("erin", "home")
    try:
        status, body = await home.get("/api/meters/home/wallet")
        assert status == 200 and body["meter_id"] == "home" and body["channel_local_sat"] >= 0, body
        status, body = await home.send("POST", "/api/meters/home/address")
        assert status == 201 and body["address"].startswith("bcrt1"), body
        for kind, n in (("today", None), ("week", 7)):
            status, body = await home.get(f"/api/meters/home/energy?range={kind}")
            assert status == 200, body
            assert len(body["labels"]) == len(body["usage_wh"]) == len(body["production_wh"])
            assert n is None or len(body["labels"]) == n
            assert all(isinstance(v, int) for v in body["usage_wh"] + body["production_wh"])
        status, body = await home.get("/api/meters/home/energy?range=year")
        assert status == 400 and body["param"] == "range"
        status, body = await home.get("/api/meters/home/activity")
        assert status == 200 and body["payments"] == [] and body["contracts"] == [] and body["anchoring"] == []
        status, body = await home.get("/api/meters/home/contracts/c-nosuch/document")
        assert status == 404 and body["param"] == "contract_id"
        # settlement holds this contract, but it is not one of this meter's: not shown
        app.rig.settlement.contracts["c-other"] = S.ContractRecord(contract=common_pb2.Contract(
            contract_id="c-other", consumer="x", supplier="y"))
        status, body = await home.get("/api/meters/home/contracts/c-other/document")
        assert status == 404 and body["param"] == "contract_id"
        status, body = await home.get("/api/meters/home/peers")
        assert status == 200, body
        (peer,) = body["peers"]
        assert peer["meter_id"] == "solar" and peer["role"] == "producer" and peer["online"]
        assert peer["price_msat_per_kwh"] == 120_000 and (peer["lat"], peer["lon"]) == (52.53, 13.41)
        assert 1_000 < peer["distance_m"] < 1_400
        assert not {"address", "import_wh", "export_wh", "last_seq"} & set(peer)  # its registers stay private
        # what it offers now: its standing supply resting in the matcher's book (no order id)
        assert {"side": "supply", "price_msat_per_kwh": 120_000} in [
            {k: o[k] for k in ("side", "price_msat_per_kwh")} for o in peer["offers"]], peer["offers"]
        assert all(set(o) == {"side", "energy_wh", "price_msat_per_kwh", "expiry_ms"} and o["energy_wh"] > 0
                   for o in peer["offers"]) and body["offers_known"]
        assert (await home.get("/api/meters/home/peers?q=nobody"))[1]["peers"] == []
        assert (await home.get("/api/meters/home/peers?q=" + "x" * 65))[0] == 400
        # live: the meter's status arrives pushed as server-sent events
        async with home.http.get("/api/meters/home/events") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
            events = []
            while len(events) < 2:
                line = (await asyncio.wait_for(r.content.readline(), 10)).decode()
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
        assert all(e["meter_id"] == "home" and "clock_accel" in e for e in events)
        assert events[0] != events[1]  # pushed on change (the clock moves)
        status, body = await home.get("/api/meters/home/status")
        st = body["status"]
        assert st["clock_accel"] == 60 and st["tz"] == "Europe/Berlin" and st["real_time"] and st["sim_time"]
        async with home.http.get("/static/chart.umd.js") as r:
            assert r.status == 200 and "Chart" in (await r.text())[:5000]
        assert (await home.get("/static/nosuch.js"))[0] == 404
        async with home.http.get("/") as r:
            page = await r.text()
        assert "/static/chart.umd.js" in page and "EventSource" in page and "cdn" not in page.lower()
    finally:
        await home.http.close()


def test_chart_buckets_follow_the_meters_day() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    now = int(datetime(2026, 6, 21, 11, 30, tzinfo=berlin).timestamp() * 1000)
    today = buckets(now, "Europe/Berlin", "today")
    assert [b.label for b in today] == [f"{h:02d}:00" for h in range(12)]
    assert today[0].start_ms == int(datetime(2026, 6, 21, tzinfo=berlin).timestamp() * 1000)
    assert today[-1].end_ms == now and all(a.end_ms == b.start_ms for a, b in zip(today, today[1:], strict=False))
    week = buckets(now, "Europe/Berlin", "week")
    assert len(week) == 7 and week[-1].label == "Sun 21" and week[0].label == "Mon 15" and week[-1].end_ms == now
    assert buckets(now, "Not/AZone", "today")[0].label == "00:00"  # an unknown zone falls back to UTC


def test_distance() -> None:
    assert distance_m(52.52, 13.405, 52.52, 13.405) == 0
    assert 1_090 < distance_m(52.52, 13.405, 52.53, 13.405) < 1_125


async def test_the_app_in_a_browser_at_phone_and_desktop_width(app: App) -> None:
    """The page itself (Chromium through playwright): a producer's app says it produces, not
    that its power is blocked; one clock, labelled; an order placed, listed and cancelled
    from Trade; the neighbours on the map; the chart drawn; a receive address; no sideways
    scroll at 390 px or 1280 px. (With contracts paid on the real network:
    tests/test_e2e_scenarios.py.)"""
    from app_browser import CHROMIUM, CHROMIUM_ARGS, DESKTOP, PHONE, artifacts_dir, horizontal_overflow
    from playwright.async_api import async_playwright

    out = artifacts_dir("household-app-unit")
    solar = await app.household("helen", "solar")
    await solar.http.close()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport=PHONE)
            page.set_default_timeout(20_000)
            await page.goto(app.base + "/signin")
            await page.fill("#si-name", "helen")
            await page.fill("#si-pw", PW)
            await page.get_by_role("button", name="Sign in").click()
            await page.wait_for_selector("#meter-view", state="visible")
            await page.wait_for_function("document.getElementById('relay-state').textContent !== '…'")
            assert (await page.inner_text("#relay-state")).startswith("PRODUCING 1,000 W")
            assert "BLOCKED" not in await page.inner_text("#home")
            assert "(simulated, 60× real time)" in await page.inner_text("#simtime")
            await page.get_by_role("tab", name="Trade").click()
            assert await page.locator("#o-side option[value=demand]").is_disabled()  # a producer sells
            await page.get_by_label("Energy (kWh)").fill("0.1")
            await page.get_by_label("Price (sat per kWh)").fill("150")
            await page.get_by_role("button", name="Place order").click()
            await page.wait_for_selector("#orders li[data-order]")
            assert "sell 0.1 kWh left of 0.1 kWh" in await page.inner_text("#orders")
            await page.screenshot(path=str(out / "trade-390.png"), full_page=True)
            await page.get_by_role("button", name="Place order").click()  # the same again: a second order
            await page.wait_for_function("document.querySelectorAll('#orders li[data-order]').length === 2")
            await page.locator("#orders li[data-order] button").first.click()
            await page.wait_for_function("document.querySelectorAll('#orders li[data-order]').length === 1")
            await page.get_by_label("Energy (kWh)").fill("0")
            await page.get_by_role("button", name="Place order").click()  # the browser's own check first
            assert await page.evaluate("!document.getElementById('o-kwh').checkValidity()")
            await page.get_by_role("tab", name="Peers").click()
            await page.wait_for_selector("#map svg g.peer[data-meter=home]")
            assert "home" in await page.inner_text("#peer-list")
            await page.get_by_label("Who").select_option("sells")  # the search: home only buys
            await page.wait_for_function("document.getElementById('peer-list').textContent.includes('no neighbour found')")
            await page.get_by_label("Who").select_option("buys")
            await page.get_by_label("Within (km)").fill("5")
            await page.wait_for_selector("#peer-list li[data-peer=home]")
            await page.get_by_label("Within (km)").fill("1")  # home is 1.2 km away
            await page.wait_for_function("document.getElementById('peer-list').textContent.includes('no neighbour found')")
            await page.get_by_label("Within (km)").fill("")
            await page.get_by_label("Who").select_option("")
            await page.get_by_role("tab", name="Usage").click()
            await page.wait_for_function("typeof Chart !== 'undefined' && !!Chart.getChart('chart')")
            await page.get_by_role("tab", name="Wallet").click()
            await page.get_by_role("button", name="New receive address").click()
            await page.wait_for_function("document.getElementById('w-address').textContent.startsWith('bcrt1')")
            for tab in ("Home", "Trade", "Wallet", "Usage", "Activity", "Peers"):
                await page.get_by_role("tab", name=tab).click()
                for label, size in (("390", PHONE), ("desktop", DESKTOP)):
                    await page.set_viewport_size(size)
                    await page.screenshot(path=str(out / f"{tab.lower()}-{label}.png"), full_page=True)
                    assert await horizontal_overflow(page) == [], (tab, label)
                await page.set_viewport_size(PHONE)
        finally:
            await browser.close()


async def test_peers_search_by_name_role_distance_price_and_offline_neighbours_stay(app: App) -> None:
    """The neighbour search over the real matcher's book: who sells or buys, within how far, at
    what price (standing or offered now); a neighbour that goes offline stays listed and on the
    map where it was last seen, marked offline. Bad filters are 400s naming the parameter."""
    home = await app.household("ivy", "home")
    solar = await app.household("jon", "solar")
    try:
        status, body = await solar.send("POST", "/api/meters/solar/orders", {
            "side": "supply", "energy_wh": 40, "price_msat_per_kwh": 110_000, "timeout_s": 600})
        assert status == 201, body

        async def peers(query: str = "") -> list[dict[str, object]]:
            status, body = await home.get("/api/meters/home/peers" + query)
            assert status == 200, body
            return list(body["peers"])

        (p,) = await peers()
        offers = sorted((o["side"], o["energy_wh"], o["price_msat_per_kwh"]) for o in p["offers"])
        assert ("supply", 40, 110_000) in offers and any(price == 120_000 for _, _, price in offers), offers
        names = lambda ps: [x["meter_id"] for x in ps]  # noqa: E731
        assert names(await peers("?role=sells")) == ["solar"]
        assert names(await peers("?role=buys")) == []  # a producer with no open demand
        assert names(await peers("?q=SOL&role=sells")) == ["solar"] and names(await peers("?q=wind")) == []
        assert names(await peers("?max_distance_m=1000")) == [] and names(await peers("?max_distance_m=2000")) == ["solar"]
        assert names(await peers("?max_price_msat_per_kwh=100000")) == []
        assert names(await peers("?max_price_msat_per_kwh=115000")) == ["solar"]  # its offer now, not its standing price
        assert names(await peers("?role=buys&max_price_msat_per_kwh=115000")) == []
        for query, param in (("role=sellers", "role"), ("max_distance_m=-1", "max_distance_m"),
                             ("max_distance_m=", "max_distance_m"), ("max_price_msat_per_kwh=1.5", "max_price_msat_per_kwh"),
                             ("max_price_msat_per_kwh=0", "max_price_msat_per_kwh")):
            status, body = await home.get("/api/meters/home/peers?" + query)
            assert status == 400 and body["param"] == param, (query, body)

        # a third household's meter, seen once, then gone: still listed, where it was, offline
        await app.rig.meter("wind", "producer", matcher_target=app.matcher.target, constant_w=500,
                            sim_start=SIM_START, lat=52.60, lon=13.50)

        async def wind_seen(online: bool) -> dict[str, object] | None:  # (the portal's address book refreshes)
            w = {x["meter_id"]: x for x in await peers()}.get("wind")
            return w if w is not None and w["online"] is online else None

        wind = await wait_for(lambda: wind_seen(True), timeout=15, what="wind on the portal's list, online")
        assert (wind["lat"], wind["lon"]) == (52.60, 13.50) and "power_w" in wind
        await app.rig.apps.pop("wind").stop()
        wind = await wait_for(lambda: wind_seen(False), timeout=15, what="wind offline")
        assert (wind["lat"], wind["lon"]) == (52.60, 13.50) and "power_w" not in wind, wind
        assert 9_000 < wind["distance_m"] < 12_000 and wind["offers"] == [], wind  # it cancelled its orders leaving
        assert names(await peers("?role=sells")) == ["solar", "wind"]
    finally:
        await home.http.close()
        await solar.http.close()


async def test_peers_are_placed_where_they_registered_even_a_neighbour_never_seen_online(app: App) -> None:
    """The map's places come from settlement's registry (told at registration): a neighbour
    the portal never saw online is on the map where it registered, marked offline; a registered
    place wins over the one a meter's status tells; a meter registered without one is placed by
    its status."""
    home = await app.household("kim", "home")
    fake = app.rig.settlement
    try:
        assert (fake.meters["home"].location.latitude, fake.meters["solar"].location.longitude) == (52.52, 13.41)
        # a household whose meter registered (from its installation) but never came up
        fake.meters["mill"] = S.RegisterMeterRequest(
            meter_id="mill", pubkey="02" + "11" * 32, node_pubkey="03" + "22" * 32,
            address=f"127.0.0.1:{free_port()}", role="producer", location=S.Location(latitude=52.54, longitude=13.43))
        # the producer corrected its place at settlement; its status still says 52.53, 13.41
        fake.meters["solar"].location.CopyFrom(S.Location(latitude=52.531, longitude=13.412))
        # and one from before locations: no place registered, so its status's
        fake.meters["home"].ClearField("location")
        status, body = await home.get("/api/meters/home/peers")
        assert status == 200, body
        me, peers = body["me"], {p["meter_id"]: p for p in body["peers"]}
        assert (me["lat"], me["lon"], me["online"]) == (52.52, 13.405, True)
        mill = peers["mill"]
        assert (mill["lat"], mill["lon"], mill["online"]) == (52.54, 13.43, False), mill
        assert "power_w" not in mill and "price_msat_per_kwh" not in mill  # never seen: no price known
        assert 2_500 < mill["distance_m"] < 3_500, mill
        solar = peers["solar"]
        assert (solar["lat"], solar["lon"], solar["online"]) == (52.531, 13.412, True), solar
        assert solar["price_msat_per_kwh"] == 120_000 and "power_w" in solar
    finally:
        await home.http.close()


def test_peer_filter_and_public_offers() -> None:
    peer = {"meter_id": "Meter-7", "role": "prosumer", "price_msat_per_kwh": 200_000, "distance_m": 800,
            "offers": [{"side": "demand", "energy_wh": 5, "price_msat_per_kwh": 90_000, "expiry_ms": None}]}
    assert PeerFilter().matches(peer) and PeerFilter(q="ter-7").matches(peer)
    assert PeerFilter(role="sells").matches(peer) and PeerFilter(role="buys").matches(peer)  # a prosumer does both
    assert PeerFilter(role="buys", max_price_msat_per_kwh=100_000).matches(peer)  # its open demand
    assert PeerFilter(max_price_msat_per_kwh=199_999, role="sells").matches(peer) is False  # sells only at 200
    assert PeerFilter(max_distance_m=800).matches(peer) and not PeerFilter(max_distance_m=799).matches(peer)
    assert not PeerFilter(max_distance_m=10**6).matches({**peer, "distance_m": None})  # place unknown
    consumer = {"meter_id": "c", "role": "consumer", "offers": []}
    assert not PeerFilter(role="sells").matches(consumer) and PeerFilter(role="buys").matches(consumer)
    assert not PeerFilter(max_price_msat_per_kwh=10**8).matches(consumer)  # no price known at all
    assert PeerFilter(role="sells").matches({**consumer, "offers": [{"side": "supply", "price_msat_per_kwh": 1}]})

    sell = common_pb2.Order(order_id="secret-id", meter_id="m1", side=common_pb2.SIDE_SUPPLY, energy_wh=100,
                            remaining_wh=60, price_msat_per_kwh=250_000, partners=["m2"])
    sell.expiry.FromMilliseconds(1_700_000_000_000)
    done = common_pb2.Order(order_id="x", meter_id="m1", side=common_pb2.SIDE_DEMAND, energy_wh=5, remaining_wh=0,
                            price_msat_per_kwh=1)
    bid = common_pb2.Order(order_id="y", meter_id="m2", side=common_pb2.SIDE_DEMAND, energy_wh=5, remaining_wh=5,
                           price_msat_per_kwh=300_000)
    assert public_offers([sell, done, bid]) == {
        "m1": [{"side": "supply", "energy_wh": 60, "price_msat_per_kwh": 250_000, "expiry_ms": 1_700_000_000_000}],
        "m2": [{"side": "demand", "energy_wh": 5, "price_msat_per_kwh": 300_000, "expiry_ms": None}]}


def _proof(leaf: str, leaf_hash: bytes, height: int) -> AnchorProof:
    tree = MerkleTree([leaf_hash, contract_hash(terms(99))])
    return AnchorProof(leaf, leaf_hash, 0, 2, tuple(tree.proof(0)), tree.root, "aa" * 32, "bb" * 32,
                       height, 1)


def test_document_check_is_p2pep_verifys_offline_part_with_the_anchor_services_confirmations() -> None:
    t = terms(1)
    s = summary(1)
    active = signed_document(t).to_json()
    assert document_check(active, 120) == {"state": "pending", "failed": ["proofs.contract"], "confirmations": None}
    anchored = signed_document(t, None, [_proof("contract", contract_hash(t), 100)]).to_json()
    assert document_check(anchored, 0)["state"] == "pending"  # no best height: confirmations unknown
    assert document_check(anchored, 101) == {"state": "verified", "failed": [], "confirmations": 2}
    ended = signed_document(t, s, [_proof("contract", contract_hash(t), 100)]).to_json()
    assert document_check(ended, 101) == {"state": "pending", "failed": ["proofs.settlement"], "confirmations": 2}
    both = signed_document(t, s, [_proof("contract", contract_hash(t), 100),
                                  _proof("settlement", settlement_hash(s), 104)]).to_json()
    assert document_check(both, 104) == {"state": "verified", "failed": [], "confirmations": 1}
    tampered = json.loads(json.dumps(both))
    tampered["terms"]["energy_wh"] += 1
    got = document_check(tampered, 104)
    assert got["state"] == "failed" and "contract_hash" in got["failed"], got
    repointed = json.loads(json.dumps(both))
    repointed["proofs"][0]["path"][0] = "00" * 32
    assert document_check(repointed, 104)["failed"] == ["proofs[0].merkle_path"]
    assert document_check({"version": 1}, 104) == {"state": "failed", "failed": ["document"], "confirmations": None}
    assert document_check(None, 104)["state"] == "pending"
