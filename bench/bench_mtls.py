"""What mutual TLS costs the system (issue 11's benchmark). Not a test.

Two arms, run alternately in the same process on fresh regtest networks, the ``hackathon``
system (hub, two producers, one consumer; every service a process) at ``--accel`` (far more
demand than the machine can pay, so what comes through is the capacity):

* **mtls**: as shipped: every P2PEP gRPC port and channel mutual TLS.
* **plaintext**: the same run with ``RunOptions.grpc_plaintext_loopback``: gRPC's local
  credentials (plaintext, loopback only; :mod:`p2pep.servicekit.tls`). The authorization
  interceptor does the same work (same table, same field checks, same revocation check); only
  where the caller's certificate comes from differs (the TLS folder, by the name the client
  claims, instead of the handshake). So the difference between the arms is TLS: handshakes,
  record encryption, certificate verification.

Per run: **demand to energized** (the consumer's first demand request to its relay energized:
matched, contract signed by both meters through settlement, active; a path of ~8 gRPC calls,
first connections included), on to the first increment paid, and **increments settled per
second** through the hub. Reported: medians per arm and ``ratio = mtls / plaintext`` for
increments/s and ``plaintext / mtls`` for the latencies (so 1.0 means "TLS costs nothing" and the aim is >= 0.9 for both). Each arm's
logs are checked for the mode it claims (the plaintext arm's services log that they serve
plaintext; the mtls arm's do not).

Run: .venv/bin/python bench/bench_mtls.py [--runs 3] [--accel 240] [--seconds 40]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from arms import interleaved, median
from bench_settlement import demand_to_energized, hackathon, increments
from save import save_results

from p2pep.scenario.runner import RunOptions, ScenarioRunner

ARMS = ("mtls", "plaintext")
PLAINTEXT_LOG = "plaintext loopback gRPC"


async def run_arm(arm: str, run_dir: Path, accel: int, seconds: float) -> dict[str, Any]:
    scenario = hackathon(f"{max(1, round(seconds * accel / 60))}m", accel, 0.05)
    runner = ScenarioRunner(scenario, RunOptions(run_dir=run_dir, say=lambda m: None,
                                                 grpc_plaintext_loopback=arm == "plaintext"))
    report = await runner.run(asyncio.Event())
    if report is None or report["errors"]:
        raise RuntimeError(f"{arm} run failed: {report and report['errors']}")
    plain = [n for n in runner.procs if PLAINTEXT_LOG in runner.layout.log(n).read_text()]
    if (arm == "plaintext") != (len(plain) == len(runner.procs)) or (arm == "mtls" and plain):
        raise RuntimeError(f"{arm} run: services serving plaintext: {plain} of {sorted(runner.procs)}")
    return {**demand_to_energized(runner), **increments(runner)}


async def main(runs: int, accel: int, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="p2pep-bench-mtls-") as d:
        samples = await interleaved(ARMS, runs, lambda arm, i: run_arm(arm, Path(d) / f"{arm}-{i}", accel, seconds))
    res: dict[str, Any] = {"accel": accel, "seconds": seconds, "runs_per_arm": runs}
    for arm in ARMS:
        res[arm] = {"increments_per_s": median([s.get("per_s") for s in samples[arm]]),
                    "demand_to_energized_s": median([s["energized_s"] for s in samples[arm]]),
                    "demand_to_first_increment_paid_s": median([s["first_paid_s"] for s in samples[arm]]),
                    "increment_p50_ms": median([s.get("p50_ms") for s in samples[arm]]),
                    "runs": samples[arm]}
    m, p = res["mtls"], res["plaintext"]
    res["ratio"] = {
        "increments_per_s": m["increments_per_s"] / p["increments_per_s"]
        if m["increments_per_s"] and p["increments_per_s"] else None,
        **{k.removesuffix("_s"): p[k] / m[k] if m[k] and p[k] else None
           for k in ("demand_to_energized_s", "demand_to_first_increment_paid_s")},
    }
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3, help="runs per arm")
    ap.add_argument("--accel", type=int, default=240)
    ap.add_argument("--seconds", type=float, default=40, help="real seconds of each run's scenario")
    a = ap.parse_args()
    t0 = time.perf_counter()
    out = asyncio.run(main(a.runs, a.accel, a.seconds))
    out["bench_seconds"] = time.perf_counter() - t0
    save_results("mtls", out)
