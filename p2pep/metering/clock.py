"""Simulated time with a time-acceleration factor.

The meter runs on *simulated* unix milliseconds that advance ``factor`` times as
fast as a real monotonic clock: with ``factor=720`` a simulated day passes in two
real minutes. The clock is pure: callers pass the real monotonic time
(``time.monotonic_ns()``), which keeps it testable and lets one process run several
meters on one reference.
"""

from __future__ import annotations

from dataclasses import dataclass

NS_PER_MS = 1_000_000


@dataclass(frozen=True)
class SimClock:
    """Maps a real monotonic clock (ns) onto simulated unix time (ms).

    ``sim_ms(real_start_ns) == sim_start_ms``; integer arithmetic throughout, so the
    mapping is exact and monotonic."""

    sim_start_ms: int
    real_start_ns: int
    factor: int = 1

    def __post_init__(self) -> None:
        if self.factor < 1:
            raise ValueError("factor must be a positive integer")

    def sim_ms(self, real_now_ns: int) -> int:
        """Simulated unix ms at real monotonic time ``real_now_ns``."""
        return self.sim_start_ms + (real_now_ns - self.real_start_ns) * self.factor // NS_PER_MS

    def real_ns_at(self, sim_ms: int) -> int:
        """The earliest real monotonic time at which the simulation reaches ``sim_ms``
        (for sleeping until a simulated deadline)."""
        delta_ns = (sim_ms - self.sim_start_ms) * NS_PER_MS
        return self.real_start_ns + -(-delta_ns // self.factor)  # ceiling division

    def real_seconds_for(self, sim_duration_ms: int) -> float:
        """How long ``sim_duration_ms`` of simulated time takes in real seconds."""
        return sim_duration_ms / 1000 / self.factor
