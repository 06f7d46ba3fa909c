"""The matcher's order rate through its gRPC API with durable commits, against its pure core
in the same run (issue 14). Not a test.

* **through gRPC**: the matcher service in this process (``start_matcher``: mutual TLS, the
  authorization interceptor, SQLite ``synchronous=FULL``, every order committed before it is
  answered), ``--meters`` meters each on its own mTLS channel with its own certificate,
  submitting orders one after another (as a meter does: SubmitSupply / SubmitDemand, the
  next after the answer), all meters at once; orders/s over all of them.
* **pure core**: :class:`p2pep.market.Market.submit` on the same orders, one after another,
  no I/O.

Orders: half the meters supply (asks 200,000-300,000 msat/kWh), half demand (bids
250,000-350,000), 1-100 Wh each, so about half cross and trade. Run:
.venv/bin/python bench/bench_matcher_grpc.py [--meters 12] [--orders 2400]
Writes bench/results/matcher-grpc.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from p2pep.identity import Identity, service
from p2pep.market import Market, Order, Side
from p2pep.pbconv import now_ms
from p2pep.pki.tlsdir import TlsDir
from p2pep.servicekit.channels import channel
from p2pep.servicekit.tls import Tls
from p2pep.settings.matcher import MatcherSettings
from p2pep.v1 import common_pb2, matcher_pb2, matcher_pb2_grpc
from services.matcher.app import start_matcher


def orders(meters: int, n: int, seed: int = 14) -> list[tuple[str, bool, int, int]]:
    """``(meter, supply?, Wh, price)``, round robin over the meters."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        m = i % meters
        supply = m < meters // 2
        price = rng.randint(200_000, 300_000) if supply else rng.randint(250_000, 350_000)
        out.append((f"meter-{m + 1}", supply, rng.randint(1, 100), price))
    return out


def pure(book: list[tuple[str, bool, int, int]]) -> float:
    market = Market()
    items = [Order(f"o{i}", m, Side.SUPPLY if s else Side.DEMAND, wh, p) for i, (m, s, wh, p) in enumerate(book)]
    t0, now = time.perf_counter(), now_ms()
    for o in items:
        market.submit(o, now)
    return len(items) / (time.perf_counter() - t0)


async def through_grpc(book: list[tuple[str, bool, int, int]], meters: int, d: Path) -> dict[str, Any]:
    tls = TlsDir(d / "tls")
    tls.init_ca()
    tls.issue(service("matcher"))
    names = [f"meter-{i + 1}" for i in range(meters)]
    for n in names:
        tls.issue(Identity("meter", n))
    s = MatcherSettings(grpc_port=0, metrics_port=0, db_path=str(d / "matcher.sqlite"), tls_dir=str(d / "tls"),
                        sqlite_synchronous="FULL", shutdown_grace_s=1)
    app = await start_matcher(s)
    channels = {n: channel(app.target, peer="matcher", tls=Tls.load(d / "tls", Identity("meter", n))) for n in names}
    stubs = {n: matcher_pb2_grpc.MatcherServiceStub(ch) for n, ch in channels.items()}
    per_meter: dict[str, list[tuple[int, bool, int, int]]] = {n: [] for n in names}
    for i, (m, sup, wh, p) in enumerate(book):
        per_meter[m].append((i, sup, wh, p))
    contracts = 0

    async def meter(name: str) -> None:
        nonlocal contracts
        stub = stubs[name]
        for i, sup, wh, p in per_meter[name]:
            o = common_pb2.Order(order_id=f"o{i}", meter_id=name, side=common_pb2.SIDE_SUPPLY if sup else
                                 common_pb2.SIDE_DEMAND, energy_wh=wh, price_msat_per_kwh=p)
            call = stub.SubmitSupply if sup else stub.SubmitDemand
            resp = await call(matcher_pb2.SubmitOrderRequest(order=o), timeout=30)
            contracts += len(resp.contracts)

    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(meter(n) for n in names))
        rate = len(book) / (time.perf_counter() - t0)
    finally:
        for ch in channels.values():
            await ch.close()
        await app.stop(grace=0.5)
    return {"orders": len(book), "meters": meters, "per_s": round(rate), "contracts": contracts}


async def main(meters: int, n: int) -> dict[str, Any]:
    book = orders(meters, n)
    with tempfile.TemporaryDirectory(prefix="p2pep-bench-") as d:
        grpc_res = await through_grpc(book, meters, Path(d))
    core = pure(book)
    return {"grpc_durable": grpc_res, "pure_core_per_s": round(core), "grpc_to_pure": grpc_res["per_s"] / core}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--meters", type=int, default=12)
    ap.add_argument("--orders", type=int, default=2400)
    a = ap.parse_args()
    out = asyncio.run(main(a.meters, a.orders))
    results = Path("bench/results")
    results.mkdir(parents=True, exist_ok=True)
    (results / "matcher-grpc.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
