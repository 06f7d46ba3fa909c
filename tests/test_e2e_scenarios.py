"""The shipped scenarios end to end on a real regtest network: btcd, real lnd nodes, and
the matcher, settlement, anchor and meter services as their own processes.

Each test runs one scenario as ``p2pep scenario run`` does (its own network in a tmp
dir) and asserts on the report: the checks every scenario must pass (suppliers' own
invoices against delivered Wh x price within one increment, relay never energized
without cover, no increment paid twice, nothing paid beyond what was delivered, ...)
plus the scenario's own, and then on the services' own state where the report cannot
see it (settlement's database, its metrics, the chain).
"""

from __future__ import annotations

import asyncio
import copy
import io
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import logcheck
import pytest
from app_browser import artifacts_dir, household_in_browser, operator_in_browser
from grpc.aio import AioRpcError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from web_helpers import WebClient

from p2pep.canonical import canonical_json, contract_hash, settlement_hash
from p2pep.identity import Identity
from p2pep.lndrpc import lightning_pb2 as ln
from p2pep.metering.readings import Reading
from p2pep.metering.signing import MeterKey
from p2pep.pki.tlsdir import TlsDir
from p2pep.regtest import RegtestNetwork, wait_for
from p2pep.regtest.errors import RegtestError
from p2pep.regtest.network import SEGWIT_HEIGHT
from p2pep.scenario.catalog import load_scenario
from p2pep.scenario.live import render, snapshot
from p2pep.scenario.model import Scenario
from p2pep.scenario.runner import RunOptions, ScenarioRunner
from p2pep.servicekit.channels import channel
from p2pep.servicekit.host import LIVENESS
from p2pep.servicekit.tls import Tls
from p2pep.settling.contracts import ContractTerms
from p2pep.v1 import meter_pb2, meter_pb2_grpc, settlement_pb2_grpc
from p2pep.v1 import settlement_pb2 as pb
from services.meter.sender import reading_pb

pytestmark = pytest.mark.regtest

Ack = pb.ReadingAck
During = Callable[[ScenarioRunner], Awaitable[None]]


async def run_scenario(name: str, tmp_path: Path, during: During | None = None, keep_network: bool = False,
                       run_dir: Path | None = None, reuse_network: bool = False,
                       services_env: dict[str, dict[str, str]] | None = None,
                       books_interval_s: float | None = None,
                       expected_log_errors: Sequence[str] = (),
                       adjust: Callable[[Scenario], Scenario] | None = None) -> tuple[dict[str, Any], ScenarioRunner]:
    """Run a shipped scenario to its end; ``during`` runs once the services are up;
    ``adjust`` changes the scenario first (e.g. a shorter window of its timing).
    ``reuse_network``: on the network a kept earlier run left in ``run_dir``.
    The run's service logs must then hold no ERROR or traceback but those matching
    ``expected_log_errors`` (or the test's marker)."""
    said: list[str] = []
    scenario = load_scenario(name)
    if services_env:
        scenario = replace(scenario, services_env={**scenario.services_env, **services_env})
    if adjust is not None:
        scenario = adjust(scenario)
    runner = ScenarioRunner(scenario, RunOptions(
        run_dir=run_dir or tmp_path / "run", report_path=tmp_path / "report.json", keep_network=keep_network,
        reuse_network=reuse_network, books_interval_s=books_interval_s,
        say=lambda m: said.append(f"{time.monotonic() - runner.t0:7.1f}s {m}")))
    task = asyncio.create_task(runner.run(asyncio.Event()))
    try:
        if during is not None:
            await wait_for(lambda: runner.phase == "running" or task.done(), timeout=600,
                           what=f"{name}: services up")
            if not task.done():
                await during(runner)
        report = await task
    except BaseException:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise
    try:
        assert report is not None, "\n".join(said)
        failed = {n: report["checks"][n] for n in report["failed_checks"]}
        assert report["ok"], json.dumps({"failed": failed, "errors": report["errors"], "said": said[-30:]},
                                         indent=1, default=str)[:6000]
        logcheck.assert_service_logs_clean(runner, expected=expected_log_errors)
    except (AssertionError, pytest.fail.Exception):
        if keep_network:  # the caller never gets to take it down
            await RegtestNetwork.attach(runner.run_dir).down()
        raise
    return report, runner


def contracts_of(report: dict[str, Any], consumer: str) -> list[dict[str, Any]]:
    return [c for c in report["contracts"] if c["consumer"] == consumer]


def settlement_db(runner: ScenarioRunner) -> sqlite3.Connection:
    path = runner.layout.data_dir("settlement") / "settlement.db"
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def meter_registers(runner: ScenarioRunner, meter: str) -> dict[str, Any]:
    path = runner.layout.data_dir(meter) / "meter.db"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        (doc,) = db.execute("SELECT v FROM kv WHERE k='registers'").fetchone()
        (outbox,) = db.execute("SELECT COUNT(*) FROM outbox").fetchone()
    return {**json.loads(doc), "outbox": outbox}


def assert_no_reading_lost(runner: ScenarioRunner) -> None:
    """Every reading a meter signed reached settlement's database, in order, none twice:
    settlement holds seq 1..N for each meter, N is the meter's own last seq, and the
    meter's outbox is empty (everything it sent was acknowledged)."""
    with settlement_db(runner) as db:
        for m in runner.scenario.meter_names:
            count, lo, hi = db.execute(
                "SELECT COUNT(*), MIN(seq), MAX(seq) FROM readings WHERE meter_id=?", (m,)).fetchone()
            own = meter_registers(runner, m)
            assert count > 0, m
            assert (lo, hi, count) == (1, own["seq"], own["seq"]), (m, lo, hi, count, own)
            assert own["outbox"] == 0, (m, own)


async def settlement_metrics(runner: ScenarioRunner) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    url = f"http://127.0.0.1:{runner.procs['settlement'].launch.metrics_port}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        text = await resp.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


async def attack_settlement(runner: ScenarioRunner, found: dict[str, Any]) -> None:
    """While the scenario runs: a forged signature, a replayed sequence number, a register
    running backwards and an unknown meter, sent to the real settlement process."""
    target = runner.procs["settlement"].launch.target
    assert runner.tls is not None
    tls = TlsDir(runner.layout.tls_dir)
    tls.issue(Identity("meter", "meter-99"))  # a certificate for an id settlement never saw register
    as_meter = {m: settlement_pb2_grpc.SettlementServiceStub(
        channel(target, peer="settlement", tls=Tls.load(tls.path, Identity("meter", m)))) for m in ("meter-3", "meter-99")}
    async with channel(target, peer="settlement", tls=runner.tls) as ch:
        stub = settlement_pb2_grpc.SettlementServiceStub(ch)

        async def consumer_delivered() -> bool:
            resp = await stub.ListContracts(pb.ListSettlementContractsRequest(meter_id="meter-3"), timeout=10)
            return any(r.delivered_wh > 0 for r in resp.contracts)

        await wait_for(consumer_delivered, timeout=240, what="meter-3 delivered energy under a contract")
        real = MeterKey.load(runner.layout.data_dir("meter-3") / "meter.key")  # a stolen key: replays sign
        thief = MeterKey.generate()
        far = 10_000_000  # far above any seq the real meter reaches in this run
        now_ms = int(time.time() * 1000)
        attempts = {
            "FORGED_SIGNATURE": (thief, Reading("meter-3", far, 10**9, 0, now_ms)),
            "REPLAYED_SEQUENCE": (real, Reading("meter-3", 1, 999_999, 0, now_ms)),
            "REGISTER_BACKWARDS": (real, Reading("meter-3", far + 1, 0, 0, now_ms)),
            "UNKNOWN_METER": (thief, Reading("meter-99", 1, 1, 0, now_ms)),
        }
        before = await settlement_metrics(runner)
        msgs = [reading_pb(key.sign_reading(r), b"") for key, r in attempts.values()]

        async def send(of: str) -> Any:
            for m in msgs:
                if m.meter_id == of:
                    yield m

        # with meter-3's own certificate and key (stolen), and with a certificate of a meter
        # that never registered: mTLS lets them in, settlement's checks refuse the readings
        acks = [a for m in ("meter-3", "meter-99") async for a in as_meter[m].StreamReadings(send(m), timeout=30)]
        after = await settlement_metrics(runner)
    found["acks"] = {reason: (ack.status, ack.reason, ack.message) for reason, ack in zip(attempts, acks)}
    found["metric_delta"] = {
        reason: after.get(("p2pep_settlement_readings_rejected_total", (("reason", reason),)), 0)
        - before.get(("p2pep_settlement_readings_rejected_total", (("reason", reason),)), 0)
        for reason in attempts}
    found["attempts"] = {reason: r for reason, (_, r) in attempts.items()}


async def household_view(runner: ScenarioRunner, meter: str) -> dict[str, Any]:
    """What the household's phone shows, as a new household gets there: register on the
    portal, add its meter with the code the meter's display shows, then read the app (signed
    in) until it shows a payment. Without a session, and for another household, it shows nothing."""
    portal = f"http://127.0.0.1:{runner.procs['portal'].launch.metrics_port}"
    display = f"http://127.0.0.1:{runner.procs[meter].launch.metrics_port}"
    async with aiohttp.ClientSession(display) as http, http.get("/api/pairing") as resp:
        assert resp.status == 200
        code = (await resp.json())["code"]
    async with WebClient(portal) as app, WebClient(portal) as stranger:
        assert (await app.get(f"/api/meters/{meter}/status"))[0] == 401
        status, body = await app.register(f"household-of-{meter}", "a household password")
        assert status == 201, body
        status, body = await app.send("POST", "/api/meters", {"meter_id": meter, "code": code})
        assert status == 201, body
        status, body = await app.send("POST", "/api/meters", {"meter_id": meter, "code": code})
        assert status == 200, body  # already this account's; the code is used up anyway
        async with app.http.get("/") as resp:
            assert resp.status == 200 and "text/html" in resp.headers["Content-Type"]
        await stranger.register("a-stranger", "another household password")
        status, body = await stranger.get(f"/api/meters/{meter}/status")
        assert status == 404, body
        status, body = await stranger.send("POST", "/api/meters", {"meter_id": meter, "code": code})
        assert status == 409, body

        async def paid() -> dict[str, Any] | None:
            status, body = await app.get(f"/api/meters/{meter}/status")
            assert status == 200, body
            return dict(body) if body["payments"] else None

        return await wait_for(paid, timeout=120, what=f"{meter}'s app shows a payment")


async def console_view(runner: ScenarioRunner) -> dict[str, Any]:
    """What the operator's console shows of the running microgrid, signed in as the demo's operator."""
    base = f"http://127.0.0.1:{runner.procs['console'].launch.metrics_port}"
    start = runner.scenario.timing.sim_start
    async with WebClient(base) as c:
        unsigned = (await c.get("/api/overview"))[0]
        status, body = await c.signin(*runner.operator)
        assert status == 200, body
        http = c.http
        async with http.get("/api/overview") as resp:
            overview = await resp.json()
        async with http.get("/api/energy", params={"meter_id": "meter-3", "from": start.isoformat(),
                                                    "to": (start + timedelta(hours=2)).isoformat()}) as resp:
            energy = await resp.json()
        async with http.get("/api/energy", params={"meter_id": "meter-3", "from": "noon"}) as resp:
            bad = (resp.status, await resp.json())
        async with http.get("/api/payments", params={"meter_id": "meter-3"}) as resp:
            payments = await resp.text()
        async with http.get("/api/series.csv", params={"meter_id": "meter-1,meter-2,meter-3", "step": "hour",
                                                       "from": start.isoformat(),
                                                       "to": (start + timedelta(hours=3)).isoformat()}) as resp:
            csv_text = await resp.text()

        async def flowing() -> dict[str, Any] | None:  # the live grid: energy moving producer -> consumer
            async with http.get("/api/grid") as resp:
                g = dict(await resp.json())
            return g if g["flows"] and all(m["online"] for m in g["meters"]) else None

        grid = await wait_for(flowing, timeout=60, what="the live grid shows a flow")

        async def mined() -> dict[str, Any] | None:  # anchor batches with their block space per contract
            async with http.get("/api/anchors") as resp:
                a = dict(await resp.json())
            return a if any(b["height"] for b in a["batches"]) else None

        anchors = await wait_for(mined, timeout=90, what="the console lists a mined anchor batch")
    return {"overview": overview, "energy": energy, "bad": bad, "unsigned": unsigned, "payments": payments,
            "csv": csv_text, "grid": grid, "anchors": anchors}


async def settlement_energy(runner: ScenarioRunner, meters: Sequence[str], t0_ms: int,
                            t1_ms: int) -> dict[str, tuple[int, int]]:
    """Each meter's (usage Wh, production Wh) in ``[t0, t1)`` as settlement's books say, asked as the operator."""
    assert runner.tls is not None
    async with channel(runner.procs["settlement"].launch.target, peer="settlement", tls=runner.tls) as ch:
        stub = settlement_pb2_grpc.SettlementServiceStub(ch)
        out = {}
        for m in meters:
            q = pb.EnergyQuery(meter_id=m)
            getattr(q, "from").FromMilliseconds(t0_ms)
            q.to.FromMilliseconds(t1_ms)
            u, p = await stub.GetUsage(q, timeout=10), await stub.GetProduction(q, timeout=10)
            out[m] = (u.energy_wh, p.energy_wh)
        return out


async def operator_console_in_browser(runner: ScenarioRunner) -> dict[str, Any]:
    """The operator in the console's browser page: the live grid, then a CSV of the run's
    first 15 simulated minutes, taken once every meter's readings are past that window (so
    settlement's books for it are final), with settlement's own totals for the same window."""
    meters = [m.name for m in runner.scenario.meters]
    start = runner.scenario.timing.sim_start
    t0 = runner.scenario.timing.sim_start_ms
    t1 = t0 + 15 * 60_000

    async def past_window() -> bool:  # a later reading of every meter is in: the window's are too
        later = await settlement_energy(runner, meters, t1, t1 + 5 * 60_000)
        return all(u + p > 0 for u, p in later.values())

    await wait_for(past_window, timeout=120, what="every meter's readings past the console's window")
    seen = await operator_in_browser(runner, artifacts_dir("console"), meters, start, timedelta(minutes=15))
    seen["books"] = await settlement_energy(runner, meters, t0, t1)
    return seen


async def attack_consumer_meter(runner: ScenarioRunner) -> dict[str, Any]:
    """While the scenario runs, against the consumer's real meter process: re-point the payee
    of a running contract (a report naming another node, other terms, another supplier), and
    have it sign a fake contract paying a stranger's node. Each must be refused and change
    nothing in its contract book."""
    stranger = "02" + "ee" * 32
    assert runner.tls is not None
    # the checks hold whoever calls: here even settlement's own certificate (a compromised or
    # buggy settlement), the only identity the authorization table lets ask a meter to sign
    as_settlement = Tls.load(runner.layout.tls_dir, Identity("service", "settlement"))
    meter3 = runner.procs["meter-3"].launch.target
    async with channel(runner.procs["settlement"].launch.target, peer="settlement", tls=runner.tls) as sch, \
            channel(meter3, peer="meter-3", tls=as_settlement) as mch, \
            channel(meter3, peer="meter-3", tls=runner.tls) as rch:
        settlement = settlement_pb2_grpc.SettlementServiceStub(sch)
        meter = meter_pb2_grpc.MeterServiceStub(mch)
        reader = meter_pb2_grpc.MeterServiceStub(rch)

        async def running() -> pb.ContractRecord | None:
            resp = await settlement.ListContracts(pb.ListSettlementContractsRequest(meter_id="meter-3"), timeout=10)
            return next((c for c in resp.contracts if c.state == pb.CONTRACT_STATE_ACTIVE), None)

        rec = await wait_for(running, timeout=240, what="an active contract of meter-3")
        terms = ContractTerms.from_canonical(json.loads(rec.terms_json))
        before = {c.contract.contract_id: c.terms_json
                  for c in (await reader.ListContracts(meter_pb2.MeterContractsRequest())).contracts}
        attempts: dict[str, pb.ContractRecord] = {}
        for what, edit in {
            "supplier_node": lambda r: setattr(r, "supplier_node", stranger),
            "terms_json": lambda r: setattr(r, "terms_json", canonical_json(
                replace(terms, supplier_node=stranger).canonical()).decode()),
            "contract.supplier": lambda r: setattr(r.contract, "supplier", "meter-1" if terms.supplier != "meter-1"
                                                   else "meter-2"),
        }.items():
            forged = pb.ContractRecord()
            forged.CopyFrom(rec)
            edit(forged)
            attempts[what] = forged
        refusals: dict[str, tuple[str, str]] = {}
        for what, forged in attempts.items():
            try:
                await meter.UpdateContract(forged, timeout=10)
                refusals[what] = ("OK", "")
            except AioRpcError as e:
                refusals[what] = (e.code().name, e.details() or "")
        now = int(time.time() * 1000)
        fake = replace(terms, contract_id="fake-1", supplier_node=stranger, start_ms=now, end_ms=now + 60_000,
                       energy_wh=10)
        try:
            await meter.SignContract(meter_pb2.SignContractRequest(
                terms_json=canonical_json(fake.canonical()).decode()), timeout=30)
            refusals["fake_contract"] = ("OK", "")
        except AioRpcError as e:
            refusals["fake_contract"] = (e.code().name, e.details() or "")
        after = {c.contract.contract_id: c.terms_json
                 for c in (await reader.ListContracts(meter_pb2.MeterContractsRequest())).contracts}
    return {"refusals": refusals, "unchanged": all(after.get(cid) == tj for cid, tj in before.items()),
            "fake_signed": "fake-1" in after, "supplier": terms.supplier}


def verify_cli(doc_path: Path, run_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "p2pep.cli", "verify", str(doc_path), "--run-dir", str(run_dir),
                           *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
async def hackathon_run_dir(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Path]:
    """One regtest network for every hackathon run of this module (each run has its own services)."""
    run_dir = tmp_path_factory.mktemp("hackathon-net")
    yield run_dir
    try:
        net = RegtestNetwork.attach(run_dir)
    except RegtestError:
        return  # no run got as far as a network
    await net.down()


def assert_suppliers_paid_as_delivered(report: dict[str, Any]) -> None:
    """The consumer's demand split over both producers; each producer's own lnd invoices
    sum to its delivered Wh x price within one increment; nothing defaulted; the relay never
    ran uncovered."""
    suppliers = {c["supplier"] for c in contracts_of(report, "meter-3") if c["delivered_wh"] > 0}
    assert suppliers == {"meter-1", "meter-2"}
    for name, rec in report["suppliers"].items():
        assert rec["received_msat"] > 0, name
        assert abs(rec["difference_msat"]) <= rec["one_increment_msat"], (name, rec)
    # everybody can pay: no contract defaults (a last partial increment below 1 sat is paid too)
    assert not [c for c in report["contracts"] if c["state"] == "CONTRACT_STATE_DEFAULTED"], report["contracts"]
    assert report["relay"]["meter-3"]["samples"] > 50
    assert report["relay"]["meter-3"]["uncovered_samples"] == 0


async def test_hackathon_split_paid_per_increment_anchored_and_forgeries_refused(
        tmp_path: Path, hackathon_run_dir: Path) -> None:
    found: dict[str, Any] = {}

    async def during(r: ScenarioRunner) -> None:
        await attack_settlement(r, found)
        found["meter_attacks"] = await attack_consumer_meter(r)
        # then (about 30 s, well inside the run): a household trades from its app in a browser
        found["browser"] = await household_in_browser(r, "meter-3", artifacts_dir("household-app"))
        found["app"] = await household_view(r, "meter-3")  # (the browser's household let meter-3 go)
        found["console"] = await console_view(r)
        found["console_browser"] = await operator_console_in_browser(r)

    report, runner = await run_scenario("hackathon", tmp_path, during, keep_network=True,
                                        run_dir=hackathon_run_dir, reuse_network=True)
    net = RegtestNetwork.attach(runner.run_dir)
    try:
        # the consumer's 2 kW is split across both producers, each paid by its own invoices
        assert_suppliers_paid_as_delivered(report)
        # the terminal live view's last frame shows the books the final summary was made from
        last = snapshot(runner)
        assert (len(last.contracts), len(last.payments)) == (report["totals"]["contracts"],
                                                             report["totals"]["payments"])
        assert sum(c.delivered_wh for c in last.contracts) == report["totals"]["delivered_wh"]

        # state.json names the pages people open (as the README says), beside the metrics URLs
        from p2pep.scenario import run_state
        pages = (run_state.load(runner.run_dir) or {}).get("pages", {})
        assert set(pages) == {"console", "portal", "meter-1", "meter-2", "meter-3"}, pages
        assert pages["portal"] == f"http://127.0.0.1:{runner.procs['portal'].launch.metrics_port}/"

        # the household app in a browser: signed up, paired meter-3, bid for 20 Wh above its
        # standing price; the contract that order formed appeared in Trade and was paid;
        # producers on the map with their prices; no sideways scroll at 390 px or desktop
        seen = found["browser"]
        assert seen["overflow"] == [], seen["overflow"]
        assert len(seen["screens"]) == 12 and all(Path(p).stat().st_size > 1000 for p in seen["screens"])
        assert "meter clock" in seen["home_clock"] and "simulated, 30×" in seen["home_clock"], seen["home_clock"]
        assert seen["order"]["order"]["meter_id"] == "meter-3" and seen["order"]["order"]["energy_wh"] == "20"
        mine = [c for c in report["contracts"] if c["contract_id"] == seen["contract_id"]]
        assert mine and mine[0]["consumer"] == "meter-3" and mine[0]["delivered_wh"] > 0, mine
        assert mine[0]["price_msat_per_kwh"] <= 400_000 and mine[0]["energy_wh"] <= 20, mine
        assert any(p["contract_id"] == seen["contract_id"] for p in report["payments"])
        assert "payments" in seen["contract_row"] and "delivered of" in seen["contract_row"], seen["contract_row"]
        on_map = dict(seen["map"])
        assert {"meter-1", "meter-2"} <= set(on_map), on_map
        assert "250 sat/kWh" in on_map["meter-1"] and "280 sat/kWh" in on_map["meter-2"], on_map
        assert any("meter-1" in p and "producer" in p and "250 sat/kWh" in p for p in seen["peers"]), seen["peers"]
        assert seen["chart_drawn"] and seen["chart_sum"].startswith("used "), seen["chart_sum"]
        assert seen["week_bars"] == 7 and seen["week_sum"].startswith("used "), (seen["week_bars"], seen["week_sum"])
        assert seen["address"].startswith("bcrt1"), seen["address"]
        assert any(seen["contract_id"] in p for p in seen["activity_payments"]), seen["activity_payments"]
        assert seen["documents"] and "preimage" not in seen["page_text"]
        # a second bid (1 sat/kWh) rested in the matcher's book until the household cancelled it there
        assert (seen["cancel"]["in_book"], seen["cancel"]["in_book_after"]) == (True, False), seen["cancel"]
        # the search for sellers at 260 sat/kWh or less: meter-1 (250), not meter-2 (280); offers read from the book
        assert seen["peers_cheap"] == ["meter-1"], seen["peers_cheap"]
        assert not any("offers unknown" in p for p in seen["peers"]), seen["peers"]
        # the Wallet's channel balance is the household lnd's own (it falls as it pays: read between two reads)
        w = seen["wallet"]
        assert 0 < w["late"] <= w["shown"] <= w["early"], w

        # the household app shows the consumer's contracts and payments while it runs
        app = found["app"]
        assert app["status"]["meter_id"] == "meter-3" and app["status"]["role"] == "consumer"
        assert any(c["contract"]["supplier"] in ("meter-1", "meter-2") and int(c["delivered_wh"]) > 0
                   for c in app["contracts"]), app["contracts"]
        assert app["payments"] and all(not p["incoming"] for p in app["payments"]), app["payments"]

        # the operator's console sees the meters, the contracts and the consumer's usage
        con = found["console"]
        assert {m["meter_id"] for m in con["overview"]["meters"]} == {"meter-1", "meter-2", "meter-3"}
        assert con["overview"]["delivered_wh"] > 0 and con["overview"]["book"] is not None
        assert con["energy"]["usage_wh"] > 0 and con["energy"]["production_wh"] == 0, con["energy"]
        assert con["bad"][0] == 400 and con["bad"][1]["param"] == "from", con["bad"]
        assert con["unsigned"] == 401  # the console shows nothing before the operator signs in
        assert "payment_hash" in con["payments"] and "preimage" not in con["payments"]
        # the operator's CSV of the three meters: per meter, the hourly rows add up to the total
        # row, settlement's own figure for the whole period
        rows = [r.split(",") for r in con["csv"].strip().splitlines()[1:]]
        for m in ("meter-1", "meter-2", "meter-3"):
            mine_rows = [r for r in rows if r[0] == m]
            *hours, total = mine_rows
            assert len(hours) == 3 and total[1:3] == [hours[0][1], hours[-1][2]], mine_rows
            assert sum(int(h[3]) for h in hours) == int(total[3]) and sum(int(h[4]) for h in hours) == int(total[4])
        assert int([r for r in rows if r[0] == "meter-3"][-1][3]) > 0
        assert int([r for r in rows if r[0] == "meter-1"][-1][4]) > 0
        # the live grid: the households where they stand, energy flowing from a producer to meter-3
        grid = con["grid"]
        assert {(f["from"], f["to"]) for f in grid["flows"]} <= {("meter-1", "meter-3"), ("meter-2", "meter-3")}, grid
        assert all(f["power_w"] > 0 for f in grid["flows"]) and grid["accel"] == 30
        assert {m["meter_id"]: (m["lat"], m["lon"]) for m in grid["meters"]}["meter-2"] == (52.5178, 13.4115)
        assert con["anchors"]["configured"] and con["anchors"]["best_height"] > 0
        # the same in the operator's browser: the grid's flows run producer -> consumer; the CSV the
        # usage form downloads totals to settlement's books for the window, meter by meter
        ob = found["console_browser"]
        assert ob["flows"] and {tuple(f) for f in ob["flows"]} <= {("meter-1", "meter-3"), ("meter-2", "meter-3")}, ob
        assert all(" kW · " in t and " sat" in t for t in ob["flow_labels"]), ob["flow_labels"]
        assert ob["chart_drawn"] and ob["csv_name"].endswith(".csv"), ob
        assert ob["contract_starts"] and all(t.startswith("6/21/2026") for t in ob["contract_starts"]), ob

        assert len(ob["screens"]) == 4 and all(Path(p).stat().st_size > 1000 for p in ob["screens"])
        assert ob["overflow"] == [], ob["overflow"]
        totals = {r[0]: (int(r[3]), int(r[4])) for r in (line.split(",") for line in ob["csv"].strip().splitlines()[1:])}
        assert totals == ob["books"] and ob["books"]["meter-3"][0] > 0, (totals, ob["books"])
        for b in (b for b in con["anchors"]["batches"] if b["height"]):  # btcd's vsize of the mined tx
            assert b["vbytes"] > 0 and b["contracts"] > 0, b
            assert b["vbytes_per_contract"] == round(b["vbytes"] / b["contracts"], 1), b
        assert "preimage" not in json.dumps(app)

        # forgeries: refused with a clear status, counted, stored nowhere
        for reason, (status, got, message) in found["acks"].items():
            assert status == Ack.STATUS_REJECTED and got == reason and message, (reason, status, got, message)
            assert found["metric_delta"][reason] == 1, (reason, found["metric_delta"])
        with settlement_db(runner) as db:
            for reason, r in found["attempts"].items():
                rows = db.execute("SELECT import_wh FROM readings WHERE meter_id=? AND seq=?",
                                  (r.meter_id, r.seq)).fetchall()
                assert rows != [(r.import_wh,)], (reason, rows)
                assert all(row[0] != r.import_wh for row in rows), (reason, rows)
        assert_no_reading_lost(runner)  # and the real stream went on undisturbed

        # the consumer's meter: the payee of a signed contract cannot be re-pointed, a fake
        # contract paying a stranger is not signed, and its contract book did not change
        attacks = found["meter_attacks"]
        assert attacks["refusals"] == {
            "supplier_node": ("INVALID_ARGUMENT", attacks["refusals"]["supplier_node"][1]),
            "terms_json": ("INVALID_ARGUMENT", attacks["refusals"]["terms_json"][1]),
            "contract.supplier": ("INVALID_ARGUMENT", attacks["refusals"]["contract.supplier"][1]),
            "fake_contract": ("FAILED_PRECONDITION", attacks["refusals"]["fake_contract"][1]),
        }, attacks
        assert attacks["refusals"]["fake_contract"][1].startswith(("terms_json.supplier_node:", "terms_json.energy_wh:")), attacks
        assert attacks["unchanged"] and not attacks["fake_signed"], attacks
        # every contract's signed terms name the nodes the report saw, and only those were paid
        pubkeys = {name: n["pubkey"] for name, n in report["nodes"].items()}
        for c in report["contracts"]:
            t = json.loads(c["terms_json"])
            assert (t["consumer_node"], t["supplier_node"]) == (pubkeys[c["consumer"]], pubkeys[c["supplier"]]), c

        # contract hashes anchored on-chain; each document's proofs verify against btcd alone
        await net.mine(2)
        signed = {c["contract_id"] for c in report["contracts"] if c["state"] != "CONTRACT_STATE_REJECTED"}
        docs = {cid: d for cid, d in report["documents"].items() if cid in signed}
        assert docs and len(docs) == len(signed)
        for cid, doc in docs.items():  # the terms and the settlement summary, each with its proof
            assert doc["settlement"] is not None, cid
            assert sorted(p["leaf"] for p in doc["proofs"]) == ["contract", "settlement"], (cid, doc["proofs"])
        for cid, doc in docs.items():
            path = tmp_path / f"{cid}.json"
            path.write_text(json.dumps(doc))
            res = verify_cli(path, runner.run_dir)
            assert res.returncode == 0, (cid, res.stdout, res.stderr)
        # the household's Activity showed its contract's anchoring: the transactions its document
        # names, each in a block; the portal said the document verified, and the copy downloaded
        # through the household's session verifies against btcd as p2pep verify checks it
        seen, cid = found["browser"], found["browser"]["contract_id"]
        shown = {(a["leaf"], a["txid"]) for a in seen["anchors"] if a["contract"] == cid}
        assert ("contract", next(p["txid"] for p in docs[cid]["proofs"] if p["leaf"] == "contract")) in shown, seen
        assert shown <= {(p["leaf"], p["txid"]) for p in docs[cid]["proofs"]}, (shown, docs[cid]["proofs"])
        assert all(int(a["confirmations"]) >= 1 for a in seen["anchors"] if a["contract"] == cid), seen["anchors"]
        assert any(r.startswith(cid) and "✓ verified" in r for r in seen["doc_rows"]), seen["doc_rows"]
        downloaded = Path(seen["document_path"])
        got = json.loads(downloaded.read_text())
        assert got["terms"]["contract_id"] == cid and got["contract_hash"] == docs[cid]["contract_hash"]
        res = verify_cli(downloaded, runner.run_dir)
        assert res.returncode == 0, (res.stdout, res.stderr)
        got["terms"]["energy_wh"] += 1
        (tmp_path / "household-tampered.json").write_text(json.dumps(got))
        res = verify_cli(tmp_path / "household-tampered.json", runner.run_dir)
        assert res.returncode == 1 and "contract_hash: hash mismatch" in res.stdout.strip().splitlines()[-1], res.stdout
        # pinned to the operator's settlement key (its file in settlement's data dir), too
        key = MeterKey.load(runner.layout.data_dir("settlement") / "settlement.key")
        (cid, doc), (other_id, other) = list(docs.items())[:2]
        res = verify_cli(tmp_path / f"{cid}.json", runner.run_dir, "--settlement-pubkey", key.pubkey_hex)
        assert res.returncode == 0, (res.stdout, res.stderr)
        assert doc["settlement_signature"]["pubkey"] == key.pubkey_hex
        assert set(doc["signatures"]) == {"consumer", "supplier"}

        def last_line(res: subprocess.CompletedProcess[str]) -> str:
            return res.stdout.strip().splitlines()[-1]

        # a forged summary: another contract's settlement (its summary, hash, settlement's own
        # signature and its anchored proof, all genuine) passed off as this contract's
        forged = copy.deepcopy(doc)
        forged.update(settlement=other["settlement"], settlement_hash=other["settlement_hash"],
                      settlement_signature=other["settlement_signature"],
                      proofs=[p for p in doc["proofs"] if p["leaf"] == "contract"]
                      + [p for p in other["proofs"] if p["leaf"] == "settlement"])
        (tmp_path / "forged.json").write_text(json.dumps(forged))
        res = verify_cli(tmp_path / "forged.json", runner.run_dir)
        assert res.returncode == 1 and last_line(res).startswith("NOT VERIFIED: settlement.contract: summary of "
                                                                 "another contract"), (res.stdout, res.stderr)
        # ... or its figures changed (re-hashed): settlement never signed them
        forged = copy.deepcopy(doc)
        forged["settlement"]["msat_paid"] *= 2
        forged["settlement_hash"] = settlement_hash(forged["settlement"]).hex()
        (tmp_path / "forged2.json").write_text(json.dumps(forged))
        res = verify_cli(tmp_path / "forged2.json", runner.run_dir)
        assert res.returncode == 1 and "settlement.signature: bad signature" in last_line(res), res.stdout
        # the terms' payee re-pointed (re-hashed): neither meter signed that
        tampered = copy.deepcopy(doc)
        tampered["terms"]["supplier_node"] = pubkeys["hub"]
        tampered["contract_hash"] = contract_hash(tampered["terms"]).hex()
        (tmp_path / "tampered.json").write_text(json.dumps(tampered))
        res = verify_cli(tmp_path / "tampered.json", runner.run_dir)
        assert res.returncode == 1 and "signatures.consumer: bad signature" in last_line(res) \
            and "signatures.supplier: bad signature" in last_line(res), res.stdout
        assert other_id != cid
        doc["terms"]["energy_wh"] += 1  # one field changed: the hash check says so
        bad = tmp_path / "tampered.json"
        bad.write_text(json.dumps(doc))
        res = verify_cli(bad, runner.run_dir)
        assert res.returncode != 0 and "hash" in (res.stdout + res.stderr).lower(), (res.stdout, res.stderr)
    finally:
        await net.close()  # the next hackathon runs go on on this network; the fixture takes it down


async def lock_settlement_db(r: ScenarioRunner, found: dict[str, Any]) -> None:
    """Another process locks settlement's database while an increment is being paid, so the
    contract worker's next write fails (``database is locked``) until it lets go: the failure
    must show at once (metric, console, live view), be retried, and change nothing in the end."""
    target = r.procs["settlement"].launch.target
    failures = ("p2pep_settlement_task_failures_total", (("task", "contract_worker"),))
    db = sqlite3.connect(r.layout.data_dir("settlement") / "settlement.db", isolation_level=None, timeout=30,
                         check_same_thread=False)
    console = f"http://127.0.0.1:{r.procs['console'].launch.metrics_port}"
    assert r.tls is not None
    async with channel(target, peer="settlement", tls=r.tls) as ch, WebClient(console) as operator:
        assert (await operator.signin(*r.operator))[0] == 200
        http = operator.http
        stub = settlement_pb2_grpc.SettlementServiceStub(ch)

        async def in_flight() -> bool:  # an increment is due: its worker is paying it right now
            resp = await stub.ListContracts(pb.ListSettlementContractsRequest(meter_id="meter-3"), timeout=10)
            return any(c.increments_paid >= 1 and c.delivered_wh - c.paid_wh >= c.increment_wh
                       for c in resp.contracts if c.state == pb.CONTRACT_STATE_ACTIVE)

        async def console_faults() -> list[dict[str, str]]:
            async with http.get("/api/overview") as resp:
                return list((await resp.json())["faults"])

        before = (await settlement_metrics(r)).get(failures, 0)
        for attempt in range(30):  # the lock can miss the payment's writes; then try the next one
            await wait_for(in_flight, timeout=120, interval=0.02, what="an increment being paid")
            await asyncio.to_thread(db.execute, "BEGIN IMMEDIATE")
            try:
                async def worker_failed() -> bool:
                    return (await settlement_metrics(r)).get(failures, 0) > before

                try:
                    await wait_for(worker_failed, timeout=3, what="the contract worker meets the lock")
                except TimeoutError:
                    continue
                found["attempts"] = attempt + 1
                found["console_faults"] = await wait_for(console_faults, timeout=30, what="the console shows it")
                await wait_for(lambda: any(c.fault for c in r.watcher.books.contracts), timeout=30,
                               what="the live view's books show it")
                screen = Console(record=True, width=200, file=io.StringIO())
                screen.print(render(snapshot(r)))
                found["live_view"] = screen.export_text()
                break
            finally:
                await asyncio.to_thread(db.execute, "ROLLBACK")
        db.close()

        async def recovered() -> bool:
            return not await console_faults()

        await wait_for(recovered, timeout=90, what="every contract worker recovered")
        after = await settlement_metrics(r)
    found["worker_failures"] = after.get(failures, 0) - before
    found["abandoned"] = after.get(("p2pep_settlement_contracts_abandoned_total", ()), 0)


async def test_hackathon_again_on_the_same_network_even_with_settlements_database_locked(
        tmp_path: Path, hackathon_run_dir: Path) -> None:
    """`make up` must never fail: the hackathon twice more, on the network the first run kept,
    with fresh services each time. In the first, settlement's database is locked by another
    process for a while (its writes fail as the shared-connection race once made them fail)."""
    found: dict[str, Any] = {}

    async def during(r: ScenarioRunner) -> None:
        await lock_settlement_db(r, found)

    short_lock_wait = {"settlement": {"P2PEP_SETTLEMENT_SQLITE_BUSY_TIMEOUT_MS": "200"}}
    for i, fault in enumerate((during, None)):
        report, runner = await run_scenario("hackathon", tmp_path / f"run-{i}", fault, keep_network=True,
                                            run_dir=hackathon_run_dir, reuse_network=True,
                                            services_env=short_lock_wait, books_interval_s=0.5,
                                            expected_log_errors=("database is locked",) if fault else ())
        assert_suppliers_paid_as_delivered(report)
        assert_no_reading_lost(runner)
        assert not [c for c in report["contracts"] if c["end_reason"] == "SETTLEMENT_FAULT"], report["contracts"]
    assert found["worker_failures"] >= 1 and found["abandoned"] == 0, found
    assert found["console_faults"] and all("locked" in f["fault"] for f in found["console_faults"]), found
    assert "settlement is failing to pay contract" in found["live_view"], found["live_view"]


async def test_hackathon_adhoc_meters_open_their_own_channels(tmp_path: Path) -> None:
    report, _ = await run_scenario("hackathon-adhoc", tmp_path)
    assert "hub" not in report["nodes"]
    suppliers = {c["supplier"] for c in contracts_of(report, "meter-3") if c["delivered_wh"] > 0}
    assert suppliers == {"meter-1", "meter-2"}
    assert all(p["fee_msat"] == 0 for p in report["payments"])  # direct channels: no routing fee


# producer-leaves runs once, in tests/test_monitoring_regtest.py: its checks and the operator's alert.


async def test_consumer_cannot_pay_defaults_within_one_increment(tmp_path: Path) -> None:
    report, _ = await run_scenario("consumer-cannot-pay", tmp_path)
    defaulted = [c for c in report["contracts"] if c["state"] == "CONTRACT_STATE_DEFAULTED"]
    assert defaulted
    for name, owed in report["checks"]["suppliers_owed_at_most_one_increment"]["detail"].items():
        assert owed["unpaid_msat"] < 2 * owed["one_increment_msat"], (name, owed)  # one complete increment at most
    transitions = report["relay"]["meter-3"]["transitions"]
    assert transitions and not transitions[-1]["energized"], transitions  # blocked once it could not pay


@dataclass
class HealthLog:
    """Each service's health on its plaintext health-only port (what a Kubernetes probe sees),
    polled with a real grpc.health.v1 client while the scenario runs: ``(real s, ready, alive)``
    each time either changed."""

    seen: dict[str, list[tuple[float, str, str]]] = field(default_factory=dict)

    async def poll(self, runner: ScenarioRunner, names: Sequence[str]) -> None:
        async def status(ch: grpc.aio.Channel, service: str) -> str:
            try:
                resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service),
                                                                  timeout=1)
                return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))
            except AioRpcError as e:
                return e.code().name  # not listening (killed): UNAVAILABLE

        channels = {n: grpc.aio.insecure_channel(runner.procs[n].launch.health_target) for n in names}
        try:
            while runner.phase == "running":
                for n, ch in channels.items():
                    now = (await status(ch, ""), await status(ch, LIVENESS))
                    log = self.seen.setdefault(n, [])
                    if not log or log[-1][1:] != now:
                        log.append((round(time.monotonic() - runner.t0, 2), *now))
                await asyncio.sleep(0.2)
        finally:
            for ch in channels.values():
                await ch.close()

    def states(self, name: str) -> list[str]:
        return [ready for _, ready, _ in self.seen[name]]


# settlement-restart's checks (readiness as a probe sees it while settlement is killed) run in the
# faults scenario below, whose first kills include settlement's.


async def payments_in_flight(runner: ScenarioRunner, net: RegtestNetwork, consumer: str) -> dict[str, tuple[str, int]]:
    """Settlement's unsettled payments (hash -> contract, msat) that the consumer's own lnd has
    in flight right now: the only money a run may end with still moving."""
    with settlement_db(runner) as db:
        rows = db.execute("SELECT payment_hash, contract_id, amount_msat FROM payments "
                          "WHERE preimage IS NULL AND payment_hash IS NOT NULL").fetchall()
    out = {}
    for phash, cid, amount in rows:
        found = await net.nodes[consumer].client.track_payment(phash)
        if found is not None and found.status in (ln.Payment.IN_FLIGHT, ln.Payment.INITIATED):
            out[phash] = (cid, int(amount))
    return out


async def test_every_process_killed_mid_contract_loses_nothing_pays_nothing_twice(tmp_path: Path) -> None:
    """The fault matrix in one run (scenarios/faults.toml): matcher, settlement, anchor, a
    producer's and the consumer's meter services, the hub's, a producer's and the consumer's
    lnd, and btcd (back with an empty chain, fetched again from the network's relay peer), each
    SIGKILLed mid-contract and started again on its data, one after the other. After
    all of them: every reading acknowledged is in settlement's store, no increment paid twice,
    each supplier's own lnd settled exactly what settlement recorded and exactly its delivered
    Wh x price on every contract (a payment that failed while a node was down is collected once
    it is back), no relay energized without cover, and every signed contract anchored with both
    its leaves and verifiable."""
    health = HealthLog()

    async def probe(runner: ScenarioRunner) -> None:
        await health.poll(runner, ("settlement", "meter-2"))

    report, runner = await run_scenario("faults", tmp_path, during=probe, keep_network=True)
    net = RegtestNetwork.attach(runner.run_dir)
    try:
        events = report["events"]
        assert len(events) == 18 and all(e["ok"] for e in events), events
        kills = [e for e in events if e["action"] == "stop"]
        assert [e["target"] for e in kills] == ["matcher", "settlement", "anchor", "meter-1", "meter-3", "lnd:hub",
                                                "lnd:meter-2", "lnd:meter-3", "btcd"]
        assert all(e["detail"]["signal"] == "SIGKILL" for e in kills), kills
        # btcd started again with an empty chain (regtest mode) and fetched it back from its peer
        # before anything was mined on it: one chain, no fork, every lnd node following it
        # (at least the height its peer had when it was killed; the run's timing sets that height)
        btcd_back, btcd_killed = events[-1]["detail"], kills[-1]["detail"]
        assert events[-1]["target"] == "btcd" and btcd_killed["peer_height"] > SEGWIT_HEIGHT, btcd_killed
        assert btcd_back["height"] >= btcd_killed["peer_height"], (btcd_killed, btcd_back)
        btcd, peer = net.btcd, net.btcd_peer
        assert btcd is not None and peer is not None

        async def one_chain() -> bool:
            return await btcd.tip() == await peer.tip()

        await wait_for(one_chain, 30, what="btcd and btcd-peer on the same best block")
        assert await btcd.height() > btcd_back["height"] + 3  # mined on after it
        assert_no_reading_lost(runner)
        assert runner.procs["settlement"].starts == 2
        # readiness that means ready, as a Kubernetes probe sees it on the health-only port: the
        # meter never killed (meter-2) is alive throughout, goes NOT_SERVING while settlement is
        # gone and SERVING again after; settlement is gone (UNAVAILABLE) and then SERVING again
        killed, back = (e["applied_real_s"] for e in events if e["target"] == "settlement")
        m2 = health.seen["meter-2"]
        assert m2[0][1] == "SERVING" and m2[-1][1] == "SERVING", m2
        assert {alive for _, _, alive in m2} == {"SERVING"}, m2
        assert any(ready == "NOT_SERVING" and killed <= t <= back + 10 for t, ready, _ in m2), (killed, back, m2)
        st = health.states("settlement")
        assert st[0] == "SERVING" and st[-1] == "SERVING" and "UNAVAILABLE" in st, health.seen["settlement"]
        # contracts ran through the faults: payments settled after the last restart
        t0 = datetime.fromisoformat(report["run"]["started_at"])
        back = t0 + timedelta(seconds=events[-1]["applied_real_s"])
        assert any(datetime.fromisoformat(p["settled"]) > back for p in report["payments"] if p["settled"])
        # each supplier's own node: what it settled per contract is what settlement recorded as
        # paid (nothing paid that settlement does not know of, nothing recorded that never
        # arrived) and exactly delivered Wh x price, defaulted contracts too (their debt collected).
        # The one exception is money still moving: an increment whose payment the consumer's lnd
        # has in flight (resumed after its crash, neither settled nor failed) is owed exactly that
        # payment, and settlement is still asking for it (the contract is not settled unpaid).
        in_flight = await payments_in_flight(runner, net, "meter-3")
        assert_suppliers_paid_exactly(report, in_flight)
        # every signed contract anchored, its terms and its summary (but one whose payment is still
        # in flight: its summary waits for it), and verifiable against btcd
        await net.mine(2)
        signed = {c["contract_id"] for c in report["contracts"] if c["state"] != "CONTRACT_STATE_REJECTED"}
        docs = {cid: d for cid, d in report["documents"].items() if cid in signed}
        assert signed and set(docs) == signed, sorted(signed - set(docs))
        waiting = {cid for cid, _ in in_flight.values()}
        for cid, doc in docs.items():
            leaves = ["contract"] if cid in waiting else ["contract", "settlement"]
            assert sorted(p["leaf"] for p in doc["proofs"]) == leaves, (cid, doc["proofs"])
            path = tmp_path / f"{cid}.json"
            path.write_text(json.dumps(doc))
            res = verify_cli(path, runner.run_dir)
            assert res.returncode == 0, (cid, res.stdout, res.stderr)
    finally:
        await net.down()


def assert_suppliers_paid_exactly(report: dict[str, Any], in_flight: dict[str, tuple[str, int]]) -> None:
    """Each supplier's own lnd settled per contract exactly what settlement recorded as paid, and
    exactly delivered Wh x price, but for a payment the consumer's lnd still has in flight
    (``in_flight``: payment hash -> (contract, msat)), which is owed, at most one increment."""
    for name, rec in report["suppliers"].items():
        assert rec["contracts"], name
        for c in rec["contracts"]:
            assert c["received_msat"] == c["settlement_paid_msat"], (name, c)
            owed = sum(amount for cid, amount in in_flight.values() if cid == c["contract_id"])
            assert c["difference_msat"] == -owed and owed <= c["one_increment_msat"], (name, c, in_flight)


async def test_lossy_links_resend_readings_block_the_relay_while_cut_and_pay_exactly(tmp_path: Path) -> None:
    """scenarios/lossy.toml: the producers on GPRS and satellite links, the consumer on GPRS,
    each through Toxiproxy to settlement and the matcher (and back); the consumer's link cut
    for 60 real seconds mid-contract. After it: every reading a meter signed is in settlement's
    store (the outboxes resent what the links lost), no increment paid twice, each supplier's
    own lnd settled per contract exactly what settlement recorded and exactly delivered Wh x
    price, the consumer's relay stayed blocked while its link was down beyond its cover, and
    contracts ran and were paid again once it was back."""
    report, runner = await run_scenario("lossy", tmp_path, keep_network=True)
    net = RegtestNetwork.attach(runner.run_dir)
    try:
        assert report["links"]["profiles"] == {"meter-1": "gprs", "meter-2": "satellite", "meter-3": "gprs"}
        (cut,) = report["events"]
        assert cut["ok"] and cut["target"] == "link:meter-3", cut
        down_s = cut["detail"]["healed_real_s"] - cut["applied_real_s"]
        assert 58 <= down_s <= 65, cut
        # the relay blocked within its cover and stayed blocked until the link was back
        check = report["checks"]["relay_blocked_while_link_down"]
        assert check["ok"], check
        (window,) = report["links"]["partitions"]
        assert window["samples_while_down"] > 50 and not window["energized_while_down"], window
        assert report["relay"]["meter-3"]["uncovered_samples"] == 0
        assert_no_reading_lost(runner)
        # contracts ran before the cut and again after it was healed, and were paid
        t0 = datetime.fromisoformat(report["run"]["started_at"])
        before = t0 + timedelta(seconds=cut["applied_real_s"])
        healed = t0 + timedelta(seconds=cut["detail"]["healed_real_s"])
        settled = [datetime.fromisoformat(p["settled"]) for p in report["payments"] if p["settled"]]
        assert any(s < before for s in settled) and any(s > healed for s in settled), (before, healed)
        # each supplier's own node: exactly what settlement recorded, exactly delivered Wh x price
        # (but a payment the consumer's lnd still has in flight, which settlement still asks for)
        in_flight = await payments_in_flight(runner, net, "meter-3")
        assert_suppliers_paid_exactly(report, in_flight)
    finally:
        await net.down()
