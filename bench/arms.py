"""Runs of a benchmark's arms, interleaved, and medians over them.

The machine is shared and noisy: each arm runs ``runs`` times, the arms one after the other
and their order alternating from run to run, so drift in the machine's load falls on both
arms alike; results are medians over the runs (a missing measurement, None, is left out)."""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any


def median(xs: Iterable[float | None]) -> float | None:
    ok = [x for x in xs if x is not None]
    return statistics.median(ok) if ok else None


async def interleaved(arms: Sequence[str], runs: int,
                      run_arm: Callable[[str, int], Awaitable[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Each arm's samples: ``run_arm(arm, i)`` for run ``i``, timed (``run_s``) and printed."""
    samples: dict[str, list[dict[str, Any]]] = {a: [] for a in arms}
    for i in range(runs):
        for arm in arms if i % 2 == 0 else tuple(reversed(arms)):
            t0 = time.perf_counter()
            s = await run_arm(arm, i)
            s["run_s"] = time.perf_counter() - t0
            samples[arm].append(s)
            print(f"{arm} run {i + 1}/{runs}: {json.dumps(s)}", file=sys.stderr, flush=True)
    return samples
