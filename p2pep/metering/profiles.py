"""Exact, integer energy profiles over simulated time.

A profile is a sequence of consecutive segments ``[b0, b1), [b1, b2), ...`` (unix
milliseconds) with an integer amount of energy in each, in *watt-milliseconds*
(W·ms; 1 Wh = 3_600_000 W·ms). Within a segment the energy flows at a constant
rate, so a segment is exactly "average power over an interval", the form both
demandlib (average power per 15 min) and metered CSV data take.

Energy between two instants is the difference of the integer cumulative function
``C(t) = prefix(segment) + floor(e * (t - b) / len)``, so however a day is cut into
metering ticks the pieces add up exactly to the segment energies: energy is
conserved to the W·ms, independent of the tick size or time acceleration.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate

WMS_PER_WH = 3_600_000
"""Watt-milliseconds per watt-hour."""


class ProfileError(ValueError):
    """A profile that is not well formed (boundaries not increasing, negative energy...)."""


@dataclass(frozen=True)
class EnergyProfile:
    """Piecewise-uniform energy flow: ``energy_wms[i]`` flows evenly over
    ``[boundaries_ms[i], boundaries_ms[i + 1])``. Outside the boundaries nothing flows."""

    boundaries_ms: tuple[int, ...]
    energy_wms: tuple[int, ...]
    _prefix: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        b, e = self.boundaries_ms, self.energy_wms
        if len(b) != len(e) + 1:
            raise ProfileError("a profile needs exactly one more boundary than segments")
        if any(not isinstance(x, int) for x in (*b, *e)):
            raise ProfileError("boundaries and energies must be integers")
        if any(b1 <= b0 for b0, b1 in zip(b, b[1:])):
            raise ProfileError("segment boundaries must be strictly increasing")
        if any(x < 0 for x in e):
            raise ProfileError("segment energy must not be negative")
        object.__setattr__(self, "_prefix", (0, *accumulate(e)))

    # -- construction ---------------------------------------------------------

    @classmethod
    def from_power(cls, start_ms: int, interval_ms: int, watts: Sequence[int]) -> EnergyProfile:
        """Constant average power (integer W) per fixed-length interval."""
        if interval_ms <= 0:
            raise ProfileError("interval_ms must be positive")
        if any(w < 0 for w in watts):
            raise ProfileError("power must not be negative")
        bounds = tuple(start_ms + i * interval_ms for i in range(len(watts) + 1))
        return cls(bounds, tuple(int(w) * interval_ms for w in watts))

    @classmethod
    def from_power_segments(cls, boundaries_ms: Sequence[int], watts: Sequence[int]) -> EnergyProfile:
        """Constant average power (integer W) over each of the given segments."""
        b = tuple(int(x) for x in boundaries_ms)
        if len(b) != len(watts) + 1:
            raise ProfileError("a profile needs exactly one more boundary than segments")
        return cls(b, tuple(int(w) * (b1 - b0) for w, b0, b1 in zip(watts, b, b[1:])))

    @classmethod
    def zero(cls, start_ms: int, end_ms: int) -> EnergyProfile:
        return cls((start_ms, end_ms), (0,))

    # -- queries --------------------------------------------------------------

    @property
    def start_ms(self) -> int:
        return self.boundaries_ms[0]

    @property
    def end_ms(self) -> int:
        return self.boundaries_ms[-1]

    @property
    def total_wms(self) -> int:
        return self._prefix[-1]

    def cumulative_wms(self, t_ms: int) -> int:
        """Energy that has flowed from the start of the profile up to ``t_ms``."""
        b = self.boundaries_ms
        if t_ms <= b[0]:
            return 0
        if t_ms >= b[-1]:
            return self._prefix[-1]
        i = bisect.bisect_right(b, t_ms) - 1
        return self._prefix[i] + self.energy_wms[i] * (t_ms - b[i]) // (b[i + 1] - b[i])

    def energy_wms_between(self, t0_ms: int, t1_ms: int) -> int:
        """Energy flowing in ``[t0_ms, t1_ms)``; exact and additive over adjacent windows."""
        if t1_ms < t0_ms:
            raise ProfileError("t1_ms must not be before t0_ms")
        return self.cumulative_wms(t1_ms) - self.cumulative_wms(t0_ms)

    def power_w_at(self, t_ms: int) -> int:
        """Average power (W, rounded down) of the segment holding ``t_ms``; 0 outside."""
        b = self.boundaries_ms
        if t_ms < b[0] or t_ms >= b[-1]:
            return 0
        i = bisect.bisect_right(b, t_ms) - 1
        return self.energy_wms[i] // (b[i + 1] - b[i])

    # -- transformations --------------------------------------------------------

    def shifted(self, delta_ms: int) -> EnergyProfile:
        return EnergyProfile(tuple(x + delta_ms for x in self.boundaries_ms), self.energy_wms)

    def window(self, t0_ms: int, t1_ms: int) -> EnergyProfile:
        """The part of the profile in ``[t0_ms, t1_ms)``, zero-padded where it has no data.

        Segments cut by the window keep exactly the energy the cumulative function
        assigns to each side, so ``p.window(a, m)`` and ``p.window(m, c)`` add up to
        ``p.window(a, c)``."""
        if t1_ms <= t0_ms:
            raise ProfileError("a window needs t1_ms > t0_ms")
        inner = [x for x in self.boundaries_ms if t0_ms < x < t1_ms]
        bounds = (t0_ms, *inner, t1_ms)
        energy = tuple(self.energy_wms_between(a, c) for a, c in zip(bounds, bounds[1:]))
        return EnergyProfile(bounds, energy)


def net_flows(consumption: EnergyProfile, production: EnergyProfile) -> tuple[EnergyProfile, EnergyProfile]:
    """Net metering of a prosumer, per segment: ``(import, export)``.

    Both profiles must share their segment boundaries (sources on the same 15-min
    grid do). In each segment the meter imports ``max(0, c - p)`` and exports
    ``max(0, p - c)``; netting per interval is how interval meters settle."""
    if consumption.boundaries_ms != production.boundaries_ms:
        raise ProfileError("net metering needs consumption and production on the same segments")
    imp = tuple(max(0, c - p) for c, p in zip(consumption.energy_wms, production.energy_wms))
    exp = tuple(max(0, p - c) for c, p in zip(consumption.energy_wms, production.energy_wms))
    return (
        EnergyProfile(consumption.boundaries_ms, imp),
        EnergyProfile(consumption.boundaries_ms, exp),
    )
