"""The household portal against real meter services (in process, fake settlement and lnd):
accounts, pairing by the code a meter's display shows, the household app, and isolation
between households. The real-network run is in tests/test_e2e_scenarios.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web
from test_meter_service import Rig, rig  # noqa: F401 - the fixture
from tls_helpers import dial, tls_as
from web_helpers import WebClient

from p2pep.identity import Identity
from p2pep.regtest.ports import free_port
from p2pep.servicekit.meter_links import MeterLinks
from p2pep.v1 import settlement_pb2_grpc
from p2pep.webauth.passwords import cheap_passwords
from p2pep.webauth.web import AuthConfig, WebAuth
from services.meter.app import MeterApp
from services.portal.store import PortalStore
from services.portal.web import Portal, add_portal_routes

PW = "a household password"
PORTAL = Identity("service", "portal")


@dataclass
class PortalRig:
    base: str
    rig: Rig
    store: PortalStore

    async def code(self, meter: str) -> str:
        """What the meter's display shows."""
        app: MeterApp = self.rig.apps[meter]
        async with aiohttp.ClientSession(app.host.http_url) as http, http.get("/api/pairing") as r:
            return str((await r.json())["code"])


@pytest.fixture
async def portal(rig: Rig) -> AsyncIterator[PortalRig]:  # noqa: F811
    await rig.meter("home", "consumer")
    await rig.meter("solar", "producer")
    store = await PortalStore.open_portal(str(rig.tmp / "portal.db"))
    ch = dial(rig.server.target, "settlement", as_=PORTAL)
    links = MeterLinks(settlement_pb2_grpc.SettlementServiceStub(ch), timeout=5, tls=tls_as(PORTAL))
    auth = WebAuth(store, AuthConfig(site="portal", title="portal", can_register=True), passwords=cheap_passwords())
    app = web.Application()
    auth.install(app)
    add_portal_routes(app, Portal(store, auth, links, 5, pairing_failures_per_account=3))
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield PortalRig(f"http://127.0.0.1:{port}", rig, store)
    await runner.cleanup()
    await links.close()
    await ch.close()
    await store.close()


async def test_household_pairs_its_meter_and_sees_its_app(portal: PortalRig) -> None:
    async with WebClient(portal.base) as a:
        assert (await a.register("alice@example.org", PW))[0] == 201
        assert await a.get("/api/meters") == (200, {"account": "alice@example.org", "meters": []})
        status, body = await a.send("POST", "/api/meters", {"meter_id": "home", "code": "ZZZZ-ZZZZ"})
        assert status == 400 and body["param"] == "code", body
        code = await portal.code("home")
        status, body = await a.send("POST", "/api/meters", {"meter_id": "home", "code": code})
        assert status == 201 and body == {"meter_id": "home", "paired": True}
        status, body = await a.get("/api/meters")
        assert [m["meter_id"] for m in body["meters"]] == ["home"]
        status, body = await a.get("/api/meters/home/status?payments=5")
        assert status == 200, body
        assert body["status"]["meter_id"] == "home" and body["status"]["role"] == "consumer"
        assert body["contracts"] == [] and body["payments"] == []
        assert (await a.get("/api/meters/home/contracts?active_only=true")) == (200, {"contracts": []})
        assert (await a.get("/api/meters/home/payments?limit=3")) == (200, {"payments": []})
        status, body = await a.get("/api/meters/home/payments?limit=0")
        assert status == 400 and body["param"] == "limit"
        async with a.http.get("/") as r:
            assert r.status == 200 and "api/meters" in await r.text()
        # the code worked once: after unpairing, the same code is refused by the meter
        assert (await a.send("DELETE", "/api/meters/home"))[0] == 200
        status, body = await a.send("POST", "/api/meters", {"meter_id": "home", "code": code})
        assert status == 400 and "wrong or expired" in body["error"]
        assert (await a.get("/api/meters/home/status"))[0] == 404


async def test_one_household_never_sees_anothers_meters(portal: PortalRig) -> None:
    async with WebClient(portal.base) as a, WebClient(portal.base) as b:
        await a.register("alice", PW)
        await b.register("bob", PW)
        assert (await a.send("POST", "/api/meters", {"meter_id": "home", "code": await portal.code("home")}))[0] == 201
        assert (await b.send("POST", "/api/meters", {"meter_id": "solar", "code": await portal.code("solar")}))[0] == 201
        for client, mine, theirs in ((a, "home", "solar"), (b, "solar", "home")):
            assert [m["meter_id"] for m in (await client.get("/api/meters"))[1]["meters"]] == [mine]
            assert (await client.get(f"/api/meters/{mine}/status"))[0] == 200
            for path in ("status", "contracts", "payments"):
                status, body = await client.get(f"/api/meters/{theirs}/{path}")
                assert status == 404 and body["param"] == "meter_id", (theirs, path, body)
            status, _ = await client.send("DELETE", f"/api/meters/{theirs}")
            assert status == 404
        # bob has home's current code, but home is alice's: refused, and the code is not used up
        code = await portal.code("home")
        status, body = await b.send("POST", "/api/meters", {"meter_id": "home", "code": code})
        assert status == 409 and "another account" in body["error"]
        assert await portal.code("home") == code
        assert await portal.store.owner("home") == (await portal.store.account("alice")).id  # type: ignore[union-attr]
        # a session cookie of one does not read the other's
        assert (await a.get("/api/meters/solar/status"))[0] == 404


async def test_portal_refuses_without_session_csrf_or_host(portal: PortalRig) -> None:
    async with WebClient(portal.base) as c:
        for path in ("/api/meters", "/api/meters/home/status", "/api/meters/home/payments"):
            status, body = await c.get(path)
            assert status == 401 and body == {"error": "sign in first"}, path
        assert (await c.get("/"))[0] == 303
        await c.register("carol", PW)
        code = await portal.code("home")
        status, body = await c.send("POST", "/api/meters", {"meter_id": "home", "code": code}, csrf="forged")
        assert status == 403 and "CSRF" in body["error"]
        assert await portal.code("home") == code and await portal.store.owner("home") is None
        status, body = await c.get("/api/meters", headers={"Host": "attacker.example"})
        assert status == 421 and "error" in body
        status, body = await c.send("POST", "/api/meters", {"meter_id": "nosuch", "code": "ABCD-EFGH"})
        assert status == 404 and body["param"] == "meter_id"
        status, body = await c.send("POST", "/api/meters", {"meter_id": "no spaces!", "code": "x"})
        assert status == 400 and body["param"] == "meter_id"


async def test_wrong_pairing_codes_are_rate_limited(portal: PortalRig) -> None:
    async with WebClient(portal.base) as c:
        await c.register("dave", PW)
        for _ in range(3):
            assert (await c.send("POST", "/api/meters", {"meter_id": "home", "code": "ZZZZ-ZZZZ"}))[0] == 400
        status, body = await c.send("POST", "/api/meters", {"meter_id": "home", "code": await portal.code("home")})
        assert status == 429 and body["retry_after_s"] > 0
        assert await portal.store.owner("home") is None
