"""What a lossy link costs (issue 14's lossy links). Not a test.

Arms, run alternately in the same process on fresh regtest networks: the ``hackathon``
system (hub, two producers, one consumer; every service a process) with every meter's link
on one profile of :mod:`p2pep.scenario.links` (Toxiproxy between each meter and settlement
and the matcher, both ways): ``none`` (the proxies without toxics: the baseline, measured in
the same run), ``satellite`` and ``gprs``.

Per run:

* **demand to energized**: the consumer's first demand request to its relay energized
  (matched, both meters sign through settlement, the contract active), and on to the first
  increment paid (``bench_settlement.demand_to_energized``);
* **increment latency**: settlement's own time to have one increment invoiced and paid
  (``seconds`` of its ``increment paid``; median), and increments settled per second;
* **energized share**: of the consumer's relay samples after it first energized, the share
  energized (a payment slower than the energy it covers leaves the relay waiting on it);
* **unpaid exposure**: what the suppliers have delivered and not been paid, as settlement's
  books say (sum over contracts of delivered Wh x price - paid), sampled every 0.5 s:
  median and maximum, in msat.

Reported: medians per arm, and each profile's latencies against ``none``'s.

Run: .venv/bin/python bench/bench_links.py [--runs 2] [--minutes 20] [--accel 30]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from arms import interleaved, median
from bench_settlement import demand_to_energized, hackathon, increments
from save import save_results

from p2pep.scenario.runner import RunOptions, ScenarioRunner
from p2pep.settling.increments import cumulative_msat
from p2pep.v1 import settlement_pb2

ARMS = ("none", "satellite", "gprs")
OPEN = (settlement_pb2.CONTRACT_STATE_PROPOSED, settlement_pb2.CONTRACT_STATE_ACTIVE)


def unpaid_msat(contracts: list[settlement_pb2.ContractRecord]) -> int:
    return sum(max(0, cumulative_msat(r.delivered_wh, r.contract.price_msat_per_kwh) - r.paid_msat)
               for r in contracts if r.state in OPEN)


async def run_arm(arm: str, run_dir: Path, minutes: int, accel: int) -> dict[str, Any]:
    scenario = hackathon(f"{minutes}m", accel, 0.25)
    scenario = replace(scenario, meters=tuple(replace(m, link=arm) for m in scenario.meters))
    runner = ScenarioRunner(scenario, RunOptions(run_dir=run_dir, say=lambda m: None, books_interval_s=0.5))
    exposure: list[int] = []

    async def sample() -> None:
        seen = 0.0
        while True:
            await asyncio.sleep(0.5)
            books = runner.watcher.books
            if runner.phase == "running" and books.updated_real_s > seen:
                seen = books.updated_real_s
                exposure.append(unpaid_msat(books.contracts))

    sampler = asyncio.create_task(sample())
    try:
        report = await runner.run(asyncio.Event())
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
    if report is None or report["errors"]:
        raise RuntimeError(f"{arm} run failed: {report and report['errors']}")
    samples = runner.watcher.samples.get("meter-3", [])
    on = next((i for i, s in enumerate(samples) if s.energized), None)
    after = samples[on:] if on is not None else []
    return {**demand_to_energized(runner), **increments(runner),
            "energized_share": sum(s.energized for s in after) / len(after) if after else None,
            "exposure_median_msat": statistics.median(exposure) if exposure else None,
            "exposure_max_msat": max(exposure, default=None),
            "delivered_wh": report["totals"]["delivered_wh"], "checks_ok": report["ok"]}


async def main(runs: int, minutes: int, accel: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="p2pep-bench-links-") as d:
        samples = await interleaved(ARMS, runs, lambda arm, i: run_arm(arm, Path(d) / f"{arm}-{i}", minutes, accel))
    res: dict[str, Any] = {"accel": accel, "minutes": minutes, "runs_per_arm": runs}
    keys = {"demand_to_energized_s": "energized_s", "demand_to_first_increment_paid_s": "first_paid_s",
            "increment_p50_ms": "p50_ms", "increments_per_s": "per_s", "energized_share": "energized_share",
            "exposure_median_msat": "exposure_median_msat", "exposure_max_msat": "exposure_max_msat",
            "delivered_wh": "delivered_wh"}
    for arm in ARMS:
        res[arm] = {k: median([s.get(v) for s in samples[arm]]) for k, v in keys.items()}
        res[arm]["runs"] = samples[arm]
    base = res["none"]
    res["vs_none"] = {arm: {k: res[arm][k] / base[k] if res[arm][k] and base[k] else None
                            for k in ("demand_to_energized_s", "demand_to_first_increment_paid_s",
                                      "increment_p50_ms")}
                      for arm in ARMS if arm != "none"}
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=2, help="runs per arm")
    ap.add_argument("--minutes", type=int, default=20, help="simulated minutes per run")
    ap.add_argument("--accel", type=int, default=30)
    a = ap.parse_args()
    t0 = time.perf_counter()
    out = asyncio.run(main(a.runs, a.minutes, a.accel))
    out["bench_seconds"] = time.perf_counter() - t0
    save_results("links", out)
