"""The scenario's view of simulated time (pure).

Every meter runs its own simulated clock from ``SIM_START`` at ``ACCEL``×, started
when its process starts. The runner schedules events and the end of the scenario
on the meters' clocks as they report them (``MeterStatus.sim_time``), extrapolated
between reports; before the first report it assumes the meters started when they
were launched.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ScenarioClock:
    sim_start_ms: int
    accel: int
    _anchor_real_s: float | None = None
    _anchor_sim_ms: int = 0
    _observed: bool = False

    def launched(self, real_s: float) -> None:
        """The meters were launched at monotonic ``real_s`` (a first guess)."""
        if not self._observed:
            self._anchor_real_s, self._anchor_sim_ms = real_s, self.sim_start_ms

    def observe(self, real_s: float, sim_ms: int) -> None:
        """A meter reported ``sim_ms`` at monotonic ``real_s``. The first report replaces
        the guess; later ones move the clock only forward (the most advanced meter leads,
        a stopped meter's stale time is ignored)."""
        if sim_ms <= 0:
            return
        if not self._observed or self._anchor_real_s is None or sim_ms > self.sim_ms(real_s):
            self._anchor_real_s, self._anchor_sim_ms = real_s, sim_ms
            self._observed = True

    @property
    def started(self) -> bool:
        return self._anchor_real_s is not None

    def sim_ms(self, real_s: float) -> int:
        """Estimated simulated ms at monotonic ``real_s`` (sim start before launch)."""
        if self._anchor_real_s is None:
            return self.sim_start_ms
        return self._anchor_sim_ms + int((real_s - self._anchor_real_s) * 1000) * self.accel

    def elapsed_sim_s(self, real_s: float) -> float:
        return max(0, self.sim_ms(real_s) - self.sim_start_ms) / 1000

    def real_until(self, real_s: float, sim_ms: int) -> float:
        """Real seconds from ``real_s`` until the clock reaches ``sim_ms`` (0 if passed)."""
        return max(0.0, (sim_ms - self.sim_ms(real_s)) / 1000 / self.accel)
