"""A simulated meter's physics: flows from a source into its registers.

Ties a :class:`~p2pep.metering.sources.FlowTimeline` to
:class:`~p2pep.metering.registers.Registers` over simulated time. The service
drives it with its :class:`~p2pep.metering.clock.SimClock` and its relay:

    sim.advance(clock.sim_ms(time.monotonic_ns()), import_allowed=relay.energized)
    reading = key.sign_reading(sim.registers.read(now_ms))

A blocked relay cuts the household off: demand is not served, so nothing is
imported (the energy is lost to the household, not deferred). Export (PV feeding
the grid) is not affected by the consumer-side relay unless told otherwise.
"""

from __future__ import annotations

from p2pep.metering.profiles import WMS_PER_WH
from p2pep.metering.registers import Registers
from p2pep.metering.relay import Demand
from p2pep.metering.sources import FlowTimeline


class MeterSimulation:
    def __init__(self, timeline: FlowTimeline, registers: Registers, start_ms: int) -> None:
        self.timeline = timeline
        self.registers = registers
        self._t_ms = start_ms
        self.unserved_import_wms = 0
        """Demand not served because the relay was blocked (for reporting)."""
        self.withheld_export_wms = 0

    @property
    def now_ms(self) -> int:
        """Simulated time up to which flows have been accumulated."""
        return self._t_ms

    def advance(self, to_ms: int, *, import_allowed: bool = True, export_allowed: bool = True) -> tuple[int, int]:
        """Accumulate flows in ``[now_ms, to_ms)``; returns the W·ms ``(imported, exported)``.
        A ``to_ms`` not after ``now_ms`` does nothing."""
        if to_ms <= self._t_ms:
            return 0, 0
        imp, exp = self.timeline.energy_wms_between(self._t_ms, to_ms)
        self._t_ms = to_ms
        if not import_allowed:
            self.unserved_import_wms += imp
            imp = 0
        if not export_allowed:
            self.withheld_export_wms += exp
            exp = 0
        self.registers.accumulate(imp, exp)
        return imp, exp

    def demand(self, step_ms: int) -> Demand:
        """The household's demand now: import power at ``now_ms`` and the Wh (rounded
        up) it would import over the next ``step_ms`` — what the relay must see covered."""
        power_w, _ = self.timeline.power_w_at(self._t_ms)
        imp, _ = self.timeline.energy_wms_between(self._t_ms, self._t_ms + max(0, step_ms))
        return Demand(power_w=power_w, energy_wh=-(-imp // WMS_PER_WH))

    def supply_w(self) -> int:
        """Export power available now (W)."""
        return self.timeline.power_w_at(self._t_ms)[1]
