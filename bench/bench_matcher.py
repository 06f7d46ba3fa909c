"""Matcher benchmark: continuous matching throughput and latency, periodic clearing time,
and a naive quadratic pay-as-bid baseline measured in the same run.

Run: ``.venv/bin/python bench/bench_matcher.py [--quick] [--json PATH]``
(writes ``bench/results/matcher-<time>.json`` by default).

What is measured (the pure matching core, :mod:`p2pep.market`, one core, no I/O):

* **continuous** — a book of N resting orders (10k, 100k, 1M; non-crossing: asks
  100,000-149,999 msat/kWh, bids 50,000-99,999), then a stream of incoming orders
  (demands bid 90,000-115,000, supplies ask 85,000-110,000, 1 % with a nominated
  partner), so about a third cross and trade with one or more resting orders and the
  rest rest. Order objects are built before timing. Throughput is measured on a stream
  without per-order timers, as wall-clock and as CPU time of the process (the machine
  is shared, so wall time includes waiting for a core); p50/p99 latency per order on
  other streams, a ``perf_counter_ns`` (wall) or ``thread_time_ns`` (CPU; each call
  costs ~0.8 us here, included) pair around each ``Market.submit``.
* **periodic** — N orders (half supply, half demand, prices 80,000-120,000 both sides, so
  the curves cross in the middle) placed in the book, then one ``clear()``: expiry,
  uniform price, allocation with tiers, and the book update, with the trades held in
  columns; then also with every ``Trade`` object built from them ("with Trade objects").
* **baseline** — a naive pay-as-bid matcher shaped like gsy-framework's
  ``PayAsBidMatchingAlgorithm``: for every offer (sorted by price) scan every bid
  (sorted by price) until the offer is used up: O(offers x bids). Integers instead of
  Decimal, so if anything it is faster than the original. Run on the same order sets as
  our clearing and continuous matching, at sizes it can handle.

Every figure is the median of several repetitions ("best" is the fastest one, the
closest to an idle core on a shared machine). GC: like the matcher service, the
benchmark calls ``gc.freeze()`` once a book is loaded, so the collector does not rescan
the long-lived book (default thresholds otherwise).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from p2pep.market import Market, Order, Side, clear

ROOT = Path(__file__).resolve().parent.parent
SUPPLY, DEMAND = Side.SUPPLY, Side.DEMAND


# ---------------------------------------------------------------- workloads
def resting_book(n: int, rng: random.Random) -> list[Order]:
    out = []
    for i in range(n):
        if i % 2:
            out.append(Order(f"r{i}", f"p{i % 10_000}", SUPPLY, rng.randint(1, 10_000), rng.randint(100_000, 149_999)))
        else:
            out.append(Order(f"r{i}", f"c{i % 10_000}", DEMAND, rng.randint(1, 10_000), rng.randint(50_000, 99_999)))
    return out


def incoming(n: int, rng: random.Random, tag: str) -> list[Order]:
    out = []
    for i in range(n):
        partners = frozenset({f"p{rng.randrange(10_000)}"}) if rng.random() < 0.01 else frozenset()
        if i % 2:
            out.append(Order(f"{tag}{i}", f"p{rng.randrange(10_000)}", SUPPLY, rng.randint(1, 10_000),
                             rng.randint(85_000, 110_000)))
        else:
            out.append(Order(f"{tag}{i}", f"c{rng.randrange(10_000)}", DEMAND, rng.randint(1, 10_000),
                             rng.randint(90_000, 115_000), None, partners))
    return out


def crossing_orders(n: int, rng: random.Random) -> list[Order]:
    out = []
    for i in range(n):
        side = SUPPLY if i % 2 else DEMAND
        meter = f"p{i % 10_000}" if side is SUPPLY else f"c{i % 10_000}"
        out.append(Order(f"o{i}", meter, side, rng.randint(1, 10_000), rng.randint(80_000, 120_000)))
    return out


def copy_orders(orders: list[Order]) -> list[Order]:
    return [Order(o.id, o.meter, o.side, o.energy, o.price, o.expiry_ms, o.partners) for o in orders]


def loaded_market(orders: list[Order]) -> Market:
    m = Market()
    add = m.add
    gc.disable()
    try:
        for o in orders:
            add(o)
    finally:
        gc.enable()
    gc.collect()
    gc.freeze()
    return m


def release() -> None:
    gc.unfreeze()
    gc.collect()


# ---------------------------------------------------------------- baseline
def naive_pay_as_bid(orders: list[Order]) -> tuple[int, int]:
    """O(offers x bids) matching in the style of gsy-framework's pay-as-bid; (trades, Wh)."""
    bids = sorted((o for o in orders if o.side is DEMAND), key=lambda o: o.price, reverse=True)
    offers = sorted((o for o in orders if o.side is SUPPLY), key=lambda o: o.price, reverse=True)
    available: dict[str, int] = {}
    trades = 0
    matched = 0
    for offer in offers:
        for bid in bids:
            if offer.meter == bid.meter:
                continue
            if offer.price <= bid.price:
                b = available.setdefault(bid.id, bid.energy)
                s = available.setdefault(offer.id, offer.energy)
                q = min(b, s)
                if q > 0:
                    available[bid.id] = b - q
                    available[offer.id] = s - q
                    trades += 1
                    matched += q
            if available.get(offer.id, 1) <= 0:
                break
    return trades, matched


# ---------------------------------------------------------------- measurements
def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def _latencies(m: Market, batch: list[Order], clock: Callable[[], int]) -> np.ndarray:
    lat = np.empty(len(batch), dtype=np.int64)
    submit = m.submit
    for i, o in enumerate(batch):
        a = clock()
        submit(o, 0)
        lat[i] = clock() - a
    return lat


def bench_continuous(n_resting: int, stream: int, repeats: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    m = loaded_market(resting_book(n_resting, rng))
    wall_rates, cpu_rates, p50, p99, cpu_p50, cpu_p99, worst, trades = [], [], [], [], [], [], [], 0
    try:
        for r in range(repeats):
            batch = incoming(stream, rng, f"t{r}-")
            submit = m.submit
            c0, t0 = time.process_time(), time.perf_counter()
            for o in batch:
                trades += len(submit(o, 0).trades)
            wall_rates.append(stream / (time.perf_counter() - t0))
            cpu_rates.append(stream / (time.process_time() - c0))
            lat = _latencies(m, incoming(stream, rng, f"w{r}-"), time.perf_counter_ns)
            p50.append(float(np.percentile(lat, 50)) / 1e3)
            p99.append(float(np.percentile(lat, 99)) / 1e3)
            worst.append(float(lat.max()) / 1e3)
            lat = _latencies(m, incoming(stream, rng, f"c{r}-"), time.thread_time_ns)
            cpu_p50.append(float(np.percentile(lat, 50)) / 1e3)
            cpu_p99.append(float(np.percentile(lat, 99)) / 1e3)
        book_after = len(m.book)
    finally:
        del m
        release()
    return {
        "resting_orders": n_resting, "stream_orders": stream, "repeats": repeats,
        "orders_per_s_wall": round(median(wall_rates)), "orders_per_s_cpu": round(median(cpu_rates)),
        "orders_per_s_wall_best": round(max(wall_rates)),
        "orders_per_s_wall_all": [round(x) for x in wall_rates],
        "p50_us": round(median(p50), 2), "p99_us": round(median(p99), 2), "p99_us_worst": round(max(p99), 2),
        "max_us_worst": round(max(worst), 1),
        "cpu_p50_us": round(median(cpu_p50), 2), "cpu_p99_us": round(median(cpu_p99), 2),
        "trades_per_order": round(trades / (stream * repeats), 3), "book_after": book_after,
    }


def bench_clearing(n: int, repeats: int, seed: int) -> dict[str, Any]:
    base = crossing_orders(n, random.Random(seed))
    wall, cpu, wall_tr, cpu_tr, result, n_trades = [], [], [], [], None, 0
    for _ in range(repeats):
        m = loaded_market(copy_orders(base))
        try:
            c0, t0 = time.process_time(), time.perf_counter()
            result = clear(m, 0)
            c1, t1 = time.process_time(), time.perf_counter()
            trades = result.trades
            c2, t2 = time.process_time(), time.perf_counter()
            wall.append(t1 - t0)
            cpu.append(c1 - c0)
            wall_tr.append(t2 - t0)
            cpu_tr.append(c2 - c0)
            n_trades = len(trades)
            del trades
        finally:
            del m
            release()
    assert result is not None
    return {
        "orders": n, "repeats": repeats,
        "clear_s": round(median(wall), 4), "clear_cpu_s": round(median(cpu), 4), "clear_s_best": round(min(wall), 4),
        "clear_plus_trades_s": round(median(wall_tr), 4), "clear_plus_trades_cpu_s": round(median(cpu_tr), 4),
        "clear_s_all": [round(x, 4) for x in wall], "clear_cpu_s_all": [round(x, 4) for x in cpu],
        "price": result.price, "matched_wh": result.volume_wh, "trades": n_trades,
    }


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return median(times), out


def bench_baseline(n: int, repeats: int, seed: int) -> dict[str, Any]:
    base = crossing_orders(n, random.Random(seed))
    naive_s, (naive_trades, naive_wh) = timed(lambda: naive_pay_as_bid(base), repeats)

    def ours_clear() -> Any:
        m = Market()
        for o in copy_orders(base):
            m.add(o)
        t0 = time.perf_counter()
        r = clear(m, 0)
        _ = r.trades  # building every Trade object is part of what is timed
        return time.perf_counter() - t0, r.volume_wh

    def ours_continuous() -> Any:
        m = Market()
        orders = copy_orders(base)
        t0 = time.perf_counter()
        wh = sum(t.energy_wh for o in orders for t in m.submit(o, 0).trades)
        return time.perf_counter() - t0, wh

    clears = [ours_clear() for _ in range(repeats)]
    conts = [ours_continuous() for _ in range(repeats)]
    clear_s = median([c[0] for c in clears])
    cont_s = median([c[0] for c in conts])
    return {
        "orders": n, "bids_x_offers": f"{n // 2}x{n // 2}", "repeats": repeats,
        "naive_s": round(naive_s, 4), "naive_trades": naive_trades, "naive_matched_wh": naive_wh,
        "ours_clear_s": round(clear_s, 5), "ours_clear_matched_wh": clears[0][1],
        "ours_continuous_s": round(cont_s, 5), "ours_continuous_matched_wh": conts[0][1],
        "speedup_clear": round(naive_s / clear_s, 1), "speedup_continuous": round(naive_s / cont_s, 1),
    }


def environment() -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=False).stdout.strip()
    except OSError:
        commit = ""
    return {
        "python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine(),
        "cpus": os.cpu_count(), "loadavg_at_start": list(os.getloadavg()), "commit": commit,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run, seconds)")
    ap.add_argument("--json", type=Path, help="where to write the results (default bench/results/matcher-<time>.json)")
    ap.add_argument("--seed", type=int, default=20240601)
    args = ap.parse_args(argv)

    if args.quick:
        cont_sizes, stream, cont_rep = [1_000, 10_000], 5_000, 3
        clear_sizes = [(1_000, 3), (10_000, 3)]
        base_sizes = [(2_000, 1)]
    else:
        cont_sizes, stream, cont_rep = [10_000, 100_000, 1_000_000], 20_000, 5
        clear_sizes = [(10_000, 5), (100_000, 5), (1_000_000, 5)]
        base_sizes = [(2_000, 3), (6_000, 1)]

    out: dict[str, Any] = {"environment": environment(), "continuous": [], "periodic": [], "baseline": []}
    print(f"matcher benchmark ({'quick' if args.quick else 'full'}), load average {os.getloadavg()[0]:.2f}")
    for n in cont_sizes:
        r = bench_continuous(n, stream, cont_rep, args.seed)
        out["continuous"].append(r)
        print(f"continuous  {n:>9,} resting: {r['orders_per_s_wall']:>9,} orders/s wall "
              f"(best {r['orders_per_s_wall_best']:,}; {r['orders_per_s_cpu']:,}/s CPU)  p50 {r['p50_us']:6.1f} us  p99 {r['p99_us']:6.1f} us wall "
              f"(CPU p50 {r['cpu_p50_us']:.1f} p99 {r['cpu_p99_us']:.1f})  {r['trades_per_order']} trades/order",
              flush=True)
    for n, rep in clear_sizes:
        r = bench_clearing(n, rep, args.seed)
        out["periodic"].append(r)
        print(f"periodic    {n:>9,} orders : clear {r['clear_s']:7.4f} s wall (best {r['clear_s_best']:.4f}; "
              f"{r['clear_cpu_s']:.4f} s CPU); "
              f"with Trade objects {r['clear_plus_trades_s']:7.4f} s ({r['clear_plus_trades_cpu_s']:.4f} s CPU)  "
              f"price {r['price']}  {r['trades']:,} trades", flush=True)
    for n, rep in base_sizes:
        r = bench_baseline(n, rep, args.seed)
        out["baseline"].append(r)
        print(f"baseline    {r['bids_x_offers']:>9} : naive {r['naive_s']:8.3f} s  ours: clear {r['ours_clear_s']:.4f} s "
              f"(x{r['speedup_clear']}), continuous {r['ours_continuous_s']:.4f} s (x{r['speedup_continuous']})",
              flush=True)
    out["environment"]["loadavg_at_end"] = list(os.getloadavg())
    path = args.json or ROOT / "bench" / "results" / f"matcher-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
