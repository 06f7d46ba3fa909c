"""Benchmark of the regtest network (issue 2). Not a test.

* time of `RegtestNetwork.up` (binaries cached) to btcd + hub + 3 meters with active, announced channels;
* payments/s and p50/p99 latency meter → hub → meter with 1 and 8 concurrent payers over a fixed window.

Run: .venv/bin/python bench/bench_regtest.py [--runs 3] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from save import save_results

from p2pep.regtest import NetworkSpec, RegtestNetwork


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else float("nan")


async def payments(net: RegtestNetwork, payers: int, seconds: float) -> dict[str, float]:
    m1, m2 = net.nodes["meter-1"].client, net.nodes["meter-2"].client
    lat: list[float] = []
    fails = 0
    end = time.monotonic() + seconds

    async def payer() -> None:
        nonlocal fails
        while time.monotonic() < end:
            inv = await m2.add_invoice(10_000, memo="bench")  # 10 sat: one 10 Wh increment at 1 sat/Wh
            t0 = time.perf_counter()
            try:
                await m1.pay(inv.payment_request, timeout_s=30)
                lat.append(time.perf_counter() - t0)
            except Exception:  # noqa: BLE001 - counted
                fails += 1

    t0 = time.monotonic()
    await asyncio.gather(*(payer() for _ in range(payers)))
    wall = time.monotonic() - t0
    return {"payers": payers, "payments": len(lat), "failed": fails, "per_s": len(lat) / wall,
            "p50_ms": pct(lat, 50) * 1000, "p99_ms": pct(lat, 99) * 1000}


async def main(runs: int, seconds: float) -> dict[str, object]:
    ups: list[float] = []
    result: dict[str, object] = {}
    for i in range(runs):
        with tempfile.TemporaryDirectory(prefix="p2pep-bench-") as d:
            t0 = time.perf_counter()
            net = await RegtestNetwork.up(NetworkSpec(meters=3), Path(d))
            ups.append(time.perf_counter() - t0)
            try:
                if i == runs - 1:
                    result["payments"] = [await payments(net, n, seconds) for n in (1, 8)]
            finally:
                await net.down()
    result["up_s"] = {"median": statistics.median(ups), "runs": ups}
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=30)
    a = ap.parse_args()
    res = asyncio.run(main(a.runs, a.seconds))
    save_results("regtest", res)
