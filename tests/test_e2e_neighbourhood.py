"""The `neighbourhood` scenario on the real regtest network: 12 households, one hub.

Twelve meter services, each with its own lnd node and a channel to the hub (4 PV producers,
5 H0 consumers, 3 prosumers), matcher, settlement and anchor as processes. The shipped
scenario is a simulated day (`p2pep scenario run neighbourhood`, 48 minutes at 30x); this
test runs the half hour around noon of that day at the same speed, the part of the day where
households trade (at night nobody supplies: those relays just stay blocked), so CI pays for
the bring-up of 13 lnd nodes and one minute of trading.

Checks: every check the scenario expects (each supplier's own lnd node received exactly
delivered Wh x price of its contracts, no relay energized without cover, no increment paid
twice, ...); producers sold in merit order (the cheapest three cover noon's demand; the
dearest may sell nothing) and were paid; every consumer bought; every signed contract anchored
(both leaves, the document's proofs verified against btcd by `p2pep verify`); no reading lost.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
from test_e2e_scenarios import assert_no_reading_lost, run_scenario, verify_cli

from p2pep.regtest import RegtestNetwork
from p2pep.scenario.model import Scenario

pytestmark = pytest.mark.regtest

NOON = datetime.fromisoformat("2026-06-21T12:00:00+02:00")
WINDOW_S = 1800


def around_noon(s: Scenario) -> Scenario:
    return replace(s, timing=replace(s.timing, sim_start=NOON.replace(hour=11, minute=45), duration_s=WINDOW_S))


async def test_neighbourhood_of_twelve_households_paid_exactly_and_anchored(tmp_path: Path) -> None:
    t0 = time.monotonic()
    report, runner = await run_scenario("neighbourhood", tmp_path, keep_network=True, adjust=around_noon)
    net = RegtestNetwork.attach(runner.run_dir)
    try:
        s = runner.scenario
        assert len(s.meters) >= 12 and {m.role for m in s.meters} == {"producer", "consumer", "prosumer"}
        assert len(report["nodes"]) == len(s.meters) + 1  # every household's own node, and the hub
        # each supplier's own node received exactly what its contracts delivered, at their prices
        states = {c["contract_id"]: c["state"] for c in report["contracts"]}
        for name, rec in report["suppliers"].items():
            for c in rec["contracts"]:
                if states[c["contract_id"]] != "CONTRACT_STATE_DEFAULTED":
                    assert c["difference_msat"] == 0, (name, c)
        producers = sorted((m for m in s.meters if m.role == "producer"), key=lambda m: m.price_msat_per_kwh)
        received = {p.name: report["suppliers"][p.name]["received_msat"] for p in producers}
        assert all(received[p.name] > 0 for p in producers[:2]) and sum(v > 0 for v in received.values()) >= 2, received
        buyers = {c["consumer"] for c in report["contracts"] if c["delivered_wh"] > 0}
        assert buyers == {m.name for m in s.meters if m.role == "consumer"}, buyers
        assert report["checks"]["relay_never_energized_without_cover"]["ok"]
        assert_no_reading_lost(runner)
        # every signed contract anchored: both leaves in its document, one verified against btcd
        await net.mine(2)
        signed = {c["contract_id"] for c in report["contracts"] if c["state"] != "CONTRACT_STATE_REJECTED"}
        docs = {cid: d for cid, d in report["documents"].items() if cid in signed}
        assert docs and len(docs) == len(signed)
        for cid, doc in docs.items():
            assert sorted(p["leaf"] for p in doc["proofs"]) == ["contract", "settlement"], (cid, doc["proofs"])
        cid, doc = next(iter(docs.items()))
        (tmp_path / "doc.json").write_text(json.dumps(doc))
        res = verify_cli(tmp_path / "doc.json", runner.run_dir)
        assert res.returncode == 0, (cid, res.stdout, res.stderr)
        print(f"neighbourhood: {len(s.meters)} households, {report['totals']['contracts']} contracts, "
              f"{report['totals']['payments']} increments paid, {report['totals']['delivered_wh']} Wh, "
              f"{time.monotonic() - t0:.0f}s in all")
    finally:
        await net.down()  # also closes its btcd client
