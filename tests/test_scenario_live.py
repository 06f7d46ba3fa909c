"""The live view renders from a snapshot (no network, no runner)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from rich.console import Console

from p2pep.scenario.cli import _summary
from p2pep.scenario.live import View, kwh, render, sats
from p2pep.v1 import common_pb2, meter_pb2, settlement_pb2

SIM0 = 1_782_032_400_000  # 11:00 in Berlin


def test_units_are_formatted_from_integers() -> None:
    assert kwh(1234) == "1.23" and kwh(5) == "0.00" and kwh(-1500) == "-1.50"
    assert sats(2_500) == "2.500" and sats(1_234_567) == "1,234.567"


def test_render_shows_meters_contracts_payments_in_100_columns_on_one_clock() -> None:
    st = meter_pb2.MeterStatus(meter_id="meter-3", role="consumer", import_wh=1530, relay_energized=True,
                               active_contracts=2, paid_msat=382_500, power_w=2000)
    producing = meter_pb2.MeterStatus(meter_id="meter-1", role="producer", export_wh=800, relay_energized=False,
                                      relay_reason="NO_CONTRACT", earned_msat=200_000, power_w=-1100)
    real_now = 1_790_000_000_000  # the wall clock, hours after the simulated one
    recs = []
    for seq, (start_min, state) in enumerate([(40, settlement_pb2.CONTRACT_STATE_DEFAULTED),
                                              (44, settlement_pb2.CONTRACT_STATE_ACTIVE)], start=123):
        c = common_pb2.Contract(contract_id=f"c-7f3a9d-{seq:010d}", consumer="meter-3", supplier="meter-1",
                                energy_wh=300, price_msat_per_kwh=250_000)
        # real times: 5 and 1 real minutes ago = 150 and 30 simulated minutes ago at 30x
        c.start.FromMilliseconds(real_now - (45 - start_min) * 60_000)
        c.end.FromMilliseconds(real_now - (45 - start_min) * 60_000 + 30_000)
        recs.append(settlement_pb2.ContractRecord(contract=c, state=state, delivered_wh=120, paid_msat=30_000))
    pay = settlement_pb2.Payment(contract_id=recs[0].contract.contract_id, increment=12, from_wh=110, to_wh=120,
                                 amount_msat=2_500, payment_hash="ab" * 32, payer="meter-3", payee="meter-1")
    v = View("hackathon", "hub + 2 producers (PV 1.6 kWp, 1.2 kW constant) + 1 consumer (2 kW)", "running", 42.0,
             SIM0, SIM0 + 225 * 60_000, SIM0 + 300 * 60_000, "Europe/Berlin",
             meters=[("meter-1", "producer", producing, True), ("meter-2", "producer", None, False),
                     ("meter-3", "consumer", st, True)],
             contracts=recs, payments=[pay], messages=[(1.0, "network up")], blocks_mined=7,
             urls={"console": "http://127.0.0.1:4100/", "portal": "http://127.0.0.1:4101/",
                   "meter-3": "http://127.0.0.1:4103/", "prometheus": "http://127.0.0.1:9090"},
             login="operator / s3cret", accel=30, real_now_ms=real_now)
    console = Console(record=True, width=100)
    console.print(render(v))
    out = console.export_text()
    assert max(len(line) for line in out.splitlines()) <= 100
    for needle in ["hackathon", "sim 14:45 (30× real)", "75%", "meter-3", "● energized", "1.53/0.00", "382/0",
                   "stopped", "● producing", "meter-3 → meter-1", "0.12/0.30", "defaulted", "active", "110–120",
                   "network up", "7 blocks", "c123", "c124",
                   # the contracts' real times on the simulated clock: 5 real minutes ago = 12:15 sim
                   "12:15–12:30", "14:15–14:30",
                   "console http://127.0.0.1:4100/ (sign in: operator / s3cret)",
                   "household portal http://127.0.0.1:4101/", "meter-3 display http://127.0.0.1:4103/",
                   "prometheus http://127.0.0.1:9090"]:
        assert needle in out, (needle, out)
    assert "blocked" not in out  # a producer's relay is not a blocked household
    # every table row on one line: each row's first and last cell share a line
    rows = [line for line in out.splitlines() if "meter-3 → meter-1" in line]
    assert len(rows) == 3 and all("│" in r and r.rstrip().endswith("│") for r in rows), rows


def test_an_open_ended_run_says_how_it_stops() -> None:
    v = View("hackathon", "demo", "running", 400.0, SIM0, SIM0 + 200 * 60_000, SIM0 + 60 * 60_000, "UTC",
             accel=30, bounded=False)
    console = Console(record=True, width=100)
    console.print(render(v))
    assert "Ctrl-C stops" in console.export_text()


def test_summary_lists_failed_checks() -> None:
    report = {
        "scenario": {"name": "x"}, "run": {"real_seconds": 90.0, "interrupted": False},
        "totals": {"contracts": 1, "payments": 2, "delivered_wh": 20, "paid_msat": 5000, "fees_msat": 2000,
                   "contracts_by_state": {"CONTRACT_STATE_ACTIVE": 1}},
        "meters": {"meter-1": {"role": "producer", "export_wh": 20, "paid_msat_by_payments": 0,
                               "earned_msat_by_payments": 5000}},
        "suppliers": {"meter-1": {"received_msat": 5000, "delivered_wh": 20, "expected_msat": 5000,
                                  "within_one_increment": True}},
        "events": [], "expected_checks": ["payments_made", "no_increment_paid_twice"],
        "checks": {"payments_made": {"ok": True}, "no_increment_paid_twice": {"ok": False, "detail": [1]}},
        "errors": [], "ok": False,
    }
    text = _summary(report)
    assert "check no_increment_paid_twice: FAILED" in text and text.endswith("NOT OK")


async def test_an_open_ended_run_goes_past_the_scenarios_end_until_stopped(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """`p2pep up` (until_end=False) keeps running once the simulated end has passed, and a
    stop request ends it as the normal end (not an interruption); a bounded run stops there."""
    from dataclasses import replace

    from p2pep.scenario.catalog import load_scenario
    from p2pep.scenario.runner import RunOptions, ScenarioRunner

    async def idle(self: ScenarioRunner) -> None:  # no network here: no miner, no events
        await asyncio.Event().wait()

    monkeypatch.setattr(ScenarioRunner, "_miner", idle)
    monkeypatch.setattr(ScenarioRunner, "_events", idle)
    s = load_scenario("hackathon")
    s = replace(s, timing=replace(s.timing, duration_s=60))  # 60 simulated s: 2 real s at 30x
    for until_end in (True, False):
        r = ScenarioRunner(s, RunOptions(run_dir=tmp_path / str(until_end), until_end=until_end, say=lambda m: None))
        r.clock.launched(time.monotonic() - 10)  # the simulated end is long past
        stop = asyncio.Event()
        run = asyncio.create_task(r._run_until_end(stop))
        if until_end:
            await asyncio.wait_for(run, 5)  # at once: the end has passed
        else:
            with pytest.raises(TimeoutError):  # still running a while past the end ...
                await asyncio.wait_for(asyncio.shield(run), 1.0)
            stop.set()  # ... until Ctrl-C
            await asyncio.wait_for(run, 5)
        assert not r.interrupted
        for t in r._tasks:
            t.cancel()
        await asyncio.gather(*r._tasks, return_exceptions=True)


def test_up_runs_until_ctrl_c_unless_bounded() -> None:
    import argparse

    from p2pep.scenario.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["up"]).until_end is False
    assert parser.parse_args(["up", "--until-end"]).until_end is True
