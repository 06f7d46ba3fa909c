"""Benchmark of meters + settlement on the real regtest network (issue 4). Not a test.

Runs the `hackathon` system (hub, two producers, one 2 kW consumer; matcher, settlement
and three meter services as processes) through :class:`ScenarioRunner` and reads the
services' structured logs afterwards:

* **demand to energized relay**: from the consumer's first demand request (its ``window
  orders`` log line, just before SubmitDemand) to its first ``relay energized`` (matched,
  contract signed by both meters,
  active), and on to the first increment paid (settlement's ``increment paid``,
  increment 1). Median over ``--runs`` short runs, each on a fresh network.
* **increments settled per second** through the hub, with p50/p99 of settlement's own
  invoice + payment round trip per increment, at the shipped rate (30x, ~1.7 increments/s
  asked for) and at ``--fast-accel`` (asks for far more than the machine can pay: what
  comes through is the capacity).
* **baseline in the same run**: bare lnd payments meter-1 -> hub -> meter-2 (one payer,
  invoices made by the payee), the ceiling any per-increment scheme on this machine has.

Run: .venv/bin/python bench/bench_settlement.py [--runs 3] [--fast-accel 240] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_regtest import payments, pct
from save import save_results

from p2pep.regtest import NetworkSpec, RegtestNetwork
from p2pep.scenario.catalog import SCENARIO_DIR
from p2pep.scenario.model import Scenario, parse_scenario
from p2pep.scenario.runner import RunOptions, ScenarioRunner


def hackathon(duration: str, accel: int, tick_s: float) -> Scenario:
    data = tomllib.loads((SCENARIO_DIR / "hackathon.toml").read_text())
    data["anchor"] = False  # not what is measured here
    data["timing"].update(duration=duration, accel=accel, tick_s=tick_s)
    return parse_scenario(data, default_name="hackathon-bench")


def log_events(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(ev, dict) and "timestamp" in ev:
            ev["t"] = datetime.fromisoformat(ev["timestamp"].replace("Z", "+00:00")).timestamp()
            out.append(ev)
    return out


async def run(scenario: Scenario, run_dir: Path) -> ScenarioRunner:
    runner = ScenarioRunner(scenario, RunOptions(run_dir=run_dir, say=lambda m: None))
    report = await runner.run(asyncio.Event())
    if report is None or report["errors"]:
        raise RuntimeError(f"run failed: {report and report['errors']}")
    return runner


def first(events: list[dict[str, Any]], event: str, after: float = 0.0, **match: Any) -> float | None:
    for ev in events:
        if ev["event"] == event and ev["t"] >= after and all(str(ev.get(k)) == str(v) for k, v in match.items()):
            return float(ev["t"])
    return None


def demand_to_energized(runner: ScenarioRunner) -> dict[str, float | None]:
    meter = log_events(runner.layout.log("meter-3"))
    settle = log_events(runner.layout.log("settlement"))
    # logged just before the meter sends its first demand request to the matcher
    t_demand = next((e["t"] for e in meter if e["event"] == "window orders" and int(e.get("demand_wh", 0)) > 0), None)
    if t_demand is None:
        return {"energized_s": None, "first_paid_s": None}
    t_on = first(meter, "relay energized", t_demand)
    # meter-3 is the only consumer: every increment settlement pays is one of its contracts
    t_paid = min((e["t"] for e in settle if e["event"] == "increment paid" and e.get("increment") == 1
                  and e["t"] >= t_demand), default=None)
    return {"energized_s": None if t_on is None else t_on - t_demand,
            "first_paid_s": None if t_paid is None else t_paid - t_demand}


def increments(runner: ScenarioRunner) -> dict[str, float]:
    paid = [e for e in log_events(runner.layout.log("settlement")) if e["event"] == "increment paid"]
    if len(paid) < 2:
        return {"increments": len(paid)}
    span = paid[-1]["t"] - paid[0]["t"]
    lat = [float(e["seconds"]) for e in paid]
    return {"increments": len(paid), "per_s": (len(paid) - 1) / span if span > 0 else float("nan"),
            "p50_ms": pct(lat, 50) * 1000, "p99_ms": pct(lat, 99) * 1000,
            "median_fee_msat": statistics.median(int(e.get("fee_msat", 0)) for e in paid)}


async def main(runs: int, fast_accel: int, seconds: float) -> dict[str, Any]:
    res: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="p2pep-bench-") as d:
        net = await RegtestNetwork.up(NetworkSpec(meters=3), Path(d) / "baseline")
        try:
            res["baseline_lnd"] = await payments(net, 1, min(seconds, 30))
        finally:
            await net.down()
        lat = []
        for i in range(runs):
            runner = await run(hackathon("10m", 30, 0.25), Path(d) / f"latency-{i}")
            lat.append(demand_to_energized(runner))
        ok_on = [x["energized_s"] for x in lat if x["energized_s"] is not None]
        ok_paid = [x["first_paid_s"] for x in lat if x["first_paid_s"] is not None]
        res["demand_to_energized_s"] = {"median": statistics.median(ok_on) if ok_on else None, "runs": lat}
        res["demand_to_first_increment_paid_s"] = {"median": statistics.median(ok_paid) if ok_paid else None}
        shipped = await run(hackathon(f"{max(1, int(seconds * 30 / 60))}m", 30, 0.25), Path(d) / "rate-30x")
        res["increments_30x"] = increments(shipped)
        sim_min = max(1, int(seconds * fast_accel / 60))
        fast = await run(hackathon(f"{sim_min}m", fast_accel, 0.05), Path(d) / f"rate-{fast_accel}x")
        res[f"increments_{fast_accel}x"] = increments(fast)
        asked = 2000 * fast_accel / 3600 / 10
        res[f"increments_{fast_accel}x"]["asked_per_s"] = asked
        base = res["baseline_lnd"]["per_s"]
        for k in ("increments_30x", f"increments_{fast_accel}x"):
            if "per_s" in res[k]:
                res[k]["ratio_to_bare_lnd"] = res[k]["per_s"] / base
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--fast-accel", type=int, default=240)
    ap.add_argument("--seconds", type=float, default=60)
    a = ap.parse_args()
    t0 = time.perf_counter()
    out = asyncio.run(main(a.runs, a.fast_accel, a.seconds))
    out["bench_seconds"] = time.perf_counter() - t0
    save_results("settlement", out)
