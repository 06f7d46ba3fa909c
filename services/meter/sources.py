"""What flows through the meter: the configured source, as a FlowTimeline.

``h0``, ``pv`` and ``csv`` come from :mod:`p2pep.metering.sources`; ``constant`` is a
flat power for predictable scenarios and tests. A prosumer with ``h0`` or ``pv``
nets household consumption against its own PV (both must be configured).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path
from zoneinfo import ZoneInfo

from p2pep.metering.profiles import EnergyProfile
from p2pep.metering.sources import (
    CsvReplaySource,
    DayFlows,
    FlowSource,
    FlowTimeline,
    HouseholdConsumptionSource,
    NetMeteringSource,
    PVProductionSource,
    SiteLocation,
    day_bounds_ms,
)
from p2pep.settings.meter import MeterSettings


@dataclass(frozen=True)
class ConstantPowerSource:
    """Constant import and export power (integer W) all day long."""

    import_w: int
    export_w: int
    tz: ZoneInfo = ZoneInfo("UTC")

    def __post_init__(self) -> None:
        if self.import_w < 0 or self.export_w < 0:
            raise ValueError("constant power must not be negative")

    def day_flows(self, day: date) -> DayFlows:
        start, end = day_bounds_ms(day, self.tz)
        return DayFlows(
            day,
            EnergyProfile.from_power_segments((start, end), [self.import_w]),
            EnergyProfile.from_power_segments((start, end), [self.export_w]),
        )


def build_source(s: MeterSettings) -> FlowSource:
    """The source the settings describe (cheap: models run when a day is prepared)."""
    tz = ZoneInfo(s.tz)
    if s.source == "constant":
        if s.role == "consumer":
            return ConstantPowerSource(max(0, s.constant_w), 0, tz)
        if s.role == "producer":
            return ConstantPowerSource(0, max(0, s.constant_w), tz)
        return ConstantPowerSource(max(0, s.constant_w), max(0, -s.constant_w), tz)
    if s.source == "csv":
        return CsvReplaySource(Path(s.csv_path), tz)
    site = SiteLocation(s.lat, s.lon, tz, s.altitude, s.meter_id)
    household = HouseholdConsumptionSource(s.annual_kwh, tz)
    if s.role == "prosumer":
        if s.peak_watts() <= 0:
            raise ValueError("a prosumer needs pv_kwp or peak_wp")
        return NetMeteringSource(household, PVProductionSource(site, s.peak_watts()))
    if s.source == "h0":
        return household
    return PVProductionSource(site, s.peak_watts())


def build_timeline(s: MeterSettings) -> FlowTimeline:
    return FlowTimeline(build_source(s))
