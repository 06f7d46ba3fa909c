"""The operator console against a fake settlement (in-process gRPC): what it shows to a
signed-in operator (and nothing to anyone else), and its answers to bad input and to a
backend that is down. The real run is in tests/test_e2e_scenarios.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from web_helpers import WebClient

from p2pep.regtest.ports import free_port
from p2pep.v1 import common_pb2, settlement_pb2_grpc
from p2pep.v1 import settlement_pb2 as pb
from p2pep.webauth.accounts import set_account
from p2pep.webauth.passwords import cheap_passwords
from p2pep.webauth.store import AuthStore
from p2pep.webauth.web import AuthConfig, WebAuth
from services.console.reports import Reports, spans
from services.console.web import Console, add_console_routes

OPERATOR = ("ops", "operator password 1")


@asynccontextmanager
async def operator(base: str) -> AsyncIterator[aiohttp.ClientSession]:
    """A browser session of the signed-in operator."""
    async with WebClient(base) as c:
        status, body = await c.signin(*OPERATOR)
        assert status == 200, body
        yield c.http


class FakeSettlement(settlement_pb2_grpc.SettlementServiceServicer):
    def __init__(self) -> None:
        self.asked: list[Any] = []

    async def ListMeters(self, req: pb.ListMetersRequest, ctx: Any) -> pb.ListMetersResponse:
        return pb.ListMetersResponse(meters=[pb.MeterInfo(meter_id="meter-1", role="producer", export_wh=5000,
                                                          location=pb.Location(latitude=52.53, longitude=13.41)),
                                             pb.MeterInfo(meter_id="meter-3", role="consumer", import_wh=4000)])

    async def ListContracts(self, req: pb.ListSettlementContractsRequest, ctx: Any) -> pb.ListSettlementContractsResponse:
        self.asked.append(req)
        c = pb.ContractRecord(contract=common_pb2.Contract(contract_id="c-1", consumer="meter-3", supplier="meter-1",
                                                           energy_wh=500, price_msat_per_kwh=250_000,
                                                           hash=bytes.fromhex("cd" * 32)),
                              consumer_signature=b"\x30\x44\x02",
                              state=pb.CONTRACT_STATE_ACTIVE, delivered_wh=120, paid_msat=30_000)
        return pb.ListSettlementContractsResponse(contracts=[c])

    async def GetUsage(self, req: pb.EnergyQuery, ctx: Any) -> pb.EnergyTotal:
        if req.meter_id != "meter-3":
            await ctx.abort(grpc.StatusCode.NOT_FOUND, f"meter_id: no meter {req.meter_id!r}")
        self.asked.append(req)
        return pb.EnergyTotal(meter_id=req.meter_id, energy_wh=700, readings=12)

    async def GetProduction(self, req: pb.EnergyQuery, ctx: Any) -> pb.EnergyTotal:
        return pb.EnergyTotal(meter_id=req.meter_id, energy_wh=0, readings=12)

    async def ListPayments(self, req: pb.ListPaymentsRequest, ctx: Any) -> pb.ListPaymentsResponse:
        return pb.ListPaymentsResponse(payments=[pb.Payment(contract_id=req.contract_id, increment=1, amount_msat=2500,
                                                                           preimage="ab" * 32)])

    async def ExportContract(self, req: pb.GetContractRequest, ctx: Any) -> pb.ContractDocument:
        if req.contract_id != "c-1":
            await ctx.abort(grpc.StatusCode.NOT_FOUND, f"contract_id: no contract {req.contract_id!r}")
        return pb.ContractDocument(json=json.dumps({"version": 1, "terms": {"contract_id": "c-1"}}))


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[tuple[str, FakeSettlement, grpc.aio.Server]]:
    fake = FakeSettlement()
    await set_account(str(tmp_path / "auth.db"), *OPERATOR, passwords=cheap_passwords())
    store = await AuthStore.open(str(tmp_path / "auth.db"))
    auth = WebAuth(store, AuthConfig(site="console", title="console"), passwords=cheap_passwords())
    server = grpc.aio.server()
    settlement_pb2_grpc.add_SettlementServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    app = web.Application()
    stub = settlement_pb2_grpc.SettlementServiceStub(channel)
    add_console_routes(app, Console(stub, None, timeout=3), auth, Reports(stub, 3))
    runner = web.AppRunner(app)
    await runner.setup()
    http_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", http_port).start()
    yield f"http://127.0.0.1:{http_port}", fake, server
    await runner.cleanup()
    await channel.close()
    await server.stop(None)
    await store.close()


async def test_console_shows_meters_contracts_energy_and_documents(console: Any) -> None:
    base, fake, _ = console
    async with operator(base) as http:
        async with http.get("/") as r:
            assert r.status == 200 and "api/overview" in await r.text()
        async with http.get("/api/overview") as r:
            o = await r.json()
        assert [m["meter_id"] for m in o["meters"]] == ["meter-1", "meter-3"]
        assert o["contracts_by_state"] == {"ACTIVE": 1} and o["delivered_wh"] == 120 and o["paid_msat"] == 30_000
        assert o["book"] is None  # no matcher configured
        async with http.get("/api/contracts?meter_id=meter-3&state=active,defaulted") as r:
            rec = (await r.json())["contracts"][0]
        # hashes and signatures in hex, as documents, reports and `p2pep verify` give them
        assert rec["contract"]["contract_id"] == "c-1" and rec["contract"]["hash"] == "cd" * 32
        assert rec["consumer_signature"] == "304402" and rec["supplier_signature"] == ""
        assert list(fake.asked[-1].states) == [pb.CONTRACT_STATE_ACTIVE, pb.CONTRACT_STATE_DEFAULTED]
        async with http.get("/api/energy", params={"meter_id": "meter-3", "from": "2026-06-21T11:00:00+02:00",
                                                    "to": "2026-06-21T12:00:00Z"}) as r:
            e = await r.json()
        assert (e["usage_wh"], e["production_wh"], e["readings"]) == (700, 0, 12)
        q = fake.asked[-1]
        assert getattr(q, "from").seconds == 1782032400 and q.to.seconds == 1782043200
        async with http.get("/api/contracts/c-1/document") as r:
            assert r.status == 200 and "c-1.json" in r.headers["Content-Disposition"]
            assert (await r.json())["terms"]["contract_id"] == "c-1"
        async with http.get("/api/payments?contract_id=c-1") as r:
            text = await r.text()
            assert json.loads(text)["payments"][0]["increment"] == 1
            assert "preimage" not in text and "ab" * 32 not in text  # preimages never reach a page


async def test_console_shows_nothing_without_an_operator_session(console: Any) -> None:
    base, _, _ = console
    async with WebClient(base) as c:
        for path in ("/api/overview", "/api/contracts", "/api/payments", "/api/contracts/c-1/document"):
            status, body = await c.get(path)
            assert status == 401 and body == {"error": "sign in first"}, path
        assert (await c.get("/"))[0] == 303
        assert (await c.register("mallory", "operator password 2"))[0] in (404, 405)  # operators: by the CLI only
        assert (await c.signin("ops", "not the password"))[0] == 401
        assert (await c.signin(*OPERATOR))[0] == 200
        assert (await c.get("/api/overview"))[0] == 200
        status, body = await c.send("POST", "/api/signout", csrf="forged")
        assert status == 403 and "CSRF" in body["error"]
        assert (await c.signout())[0] == 200
        assert (await c.get("/api/overview"))[0] == 401


@pytest.mark.parametrize("path,status,param", [
    ("/api/energy?from=2026-06-21T11:00:00Z&to=2026-06-21T12:00:00Z", 400, "meter_id"),
    ("/api/energy?meter_id=meter-3&to=2026-06-21T12:00:00Z", 400, "from"),
    ("/api/energy?meter_id=meter-3&from=yesterday&to=2026-06-21T12:00:00Z", 400, "from"),
    ("/api/energy?meter_id=meter-3&from=2026-06-21T11:00:00&to=2026-06-21T12:00:00Z", 400, "from"),
    ("/api/energy?meter_id=meter-3&from=2026-06-21T12:00:00Z&to=2026-06-21T11:00:00Z", 400, "to"),
    ("/api/contracts?state=BURNING", 400, "state"),
    ("/api/energy?meter_id=meter-9&from=2026-06-21T11:00:00Z&to=2026-06-21T12:00:00Z", 404, None),
    ("/api/contracts/c-404/document", 404, None),
])
async def test_bad_requests_get_a_status_and_a_json_error(console: Any, path: str, status: int,
                                                           param: str | None) -> None:
    base, _, _ = console
    async with operator(base) as http, http.get(path) as r:
        body = await r.json()
    assert r.status == status, body
    assert body["error"]
    if param:
        assert body["param"] == param and body["error"].startswith(param + ":")
    else:
        assert "no " in body["error"]


async def test_settlement_down_is_a_503(console: Any) -> None:
    base, _, server = console
    await server.stop(None)
    async with operator(base) as http, http.get("/api/overview") as r:
        assert r.status == 503 and "error" in await r.json()


@pytest.mark.parametrize("time_", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00%2B14:00"])
async def test_console_times_beyond_year_9999_are_400(console: Any, time_: str) -> None:
    base, _, _ = console
    async with operator(base) as http:
        async with http.get(f"/api/energy?meter_id=m&from={time_}&to=2026-01-01T00:00:00Z") as resp:
            assert resp.status == 400
            body = await resp.json()
    assert body["param"] == "from"


async def test_console_page_fits_1280_px_and_shows_one_clock(console: Any) -> None:
    """In Chromium: the console's tables fit 1280 px (no sideways scroll), the contract id is
    short and distinct with the full id and the hex hash as its title, and the page says which
    clock its times are on (without a meter answering: real time, said so)."""
    from app_browser import CHROMIUM, CHROMIUM_ARGS, artifacts_dir, horizontal_overflow
    from playwright.async_api import async_playwright

    base = console[0]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(20_000)
            await page.goto(base + "/signin")
            await page.fill("#si-name", OPERATOR[0])
            await page.fill("#si-pw", OPERATOR[1])
            await page.get_by_role("button", name="Sign in").click()
            await page.wait_for_selector("#contracts tbody tr")
            await page.wait_for_function("document.getElementById('clock').textContent !== 'times: …'")
            assert "real time" in await page.inner_text("#clock")
            cell = page.locator("#contracts tbody tr td").first
            assert await cell.inner_text() == "c-1" and "cd" * 32 in (await cell.get_attribute("title") or "")
            await page.get_by_label("meters (comma-separated)").fill("meter-3")
            await page.get_by_label("from").fill("2026-06-21T11:00:00")
            await page.get_by_label("to").fill("2026-06-21T13:00:00")
            await page.get_by_role("button", name="show").last.click()
            await page.wait_for_function("typeof Chart !== 'undefined' && !!Chart.getChart('series')")
            assert "api/series.csv?" in (await page.get_attribute("#csv", "href") or "")
            assert "meter-3: used 1.4" in await page.inner_text("#energy")  # two hours at the fake's 700 Wh
            await page.wait_for_function("document.getElementById('anchor-tip').textContent.includes('no anchor')")
            assert await horizontal_overflow(page) == []
            await page.screenshot(path=str(artifacts_dir("console") / "console-1280.png"), full_page=True)
        finally:
            await browser.close()



async def test_usage_and_production_of_several_meters_as_series_and_csv(console: Any) -> None:
    base, fake, _ = console
    q = {"meter_id": "meter-3", "from": "2026-06-21T11:00:00+02:00", "to": "2026-06-21T14:30:00+02:00"}
    async with operator(base) as http:
        async with http.get("/api/series", params=q) as r:
            d = await r.json()
        assert r.status == 200, d
        assert d["starts"][0] == "2026-06-21T09:00:00Z" and len(d["starts"]) == 4  # 3 h 30 min: 4 buckets
        # the total is its rows' sum (the fake answers 700 Wh for any span)
        assert d["meters"]["meter-3"]["usage_wh"] == [700] * 4 and d["meters"]["meter-3"]["total_usage_wh"] == 2800
        async with http.get("/api/series.csv", params={**q, "step": "day"}) as r:
            text = await r.text()
            assert r.status == 200 and r.content_type == "text/csv" and ".csv" in r.headers["Content-Disposition"]
        rows = [line.split(",") for line in text.strip().splitlines()]
        assert rows[0] == ["meter_id", "from", "to", "usage_wh", "production_wh"]
        # one day bucket, then the total row: the sum of the meter's rows
        assert rows[1:] == [["meter-3", "2026-06-21T09:00:00Z", "2026-06-21T12:30:00Z", "700", "0"]] * 2
        for params, param in (({**q, "step": "week"}, "step"), ({**q, "meter_id": ""}, "meter_id"),
                              ({**q, "meter_id": "a b"}, "meter_id"), ({**q, "to": q["from"]}, "to"),
                              ({**q, "from": "2026-01-01T00:00:00Z"}, "step"), ({**q, "from": "noon"}, "from")):
            async with http.get("/api/series.csv", params=params) as r:
                body = await r.json()
                assert r.status == 400 and body["param"] == param, (params, body)
        async with http.get("/api/series", params={**q, "meter_id": "meter-3,nosuch"}) as r:
            assert r.status == 404 and "nosuch" in (await r.json())["error"]
        async with http.get("/api/anchors") as r:
            assert await r.json() == {"batches": [], "best_height": 0, "configured": False}
        async with http.get("/api/grid") as r:
            g = await r.json()
        assert [m["meter_id"] for m in g["meters"]] == ["meter-1", "meter-3"] and not g["meters"][0]["online"]
        # placed where it registered, though offline; one that registered no place has none
        assert (g["meters"][0]["lat"], g["meters"][0]["lon"]) == (52.53, 13.41) and "lat" not in g["meters"][1]
        (flow,) = g["flows"]
        assert (flow["from"], flow["to"], flow["delivered_wh"], flow["paid_msat"]) == ("meter-1", "meter-3", 120, 30_000)


def test_spans_cut_the_period() -> None:
    assert [(s.start_ms, s.end_ms) for s in spans(0, 2500, 1000)] == [(0, 1000), (1000, 2000), (2000, 2500)]
