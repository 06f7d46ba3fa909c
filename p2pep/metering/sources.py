"""Energy sources of a simulated meter: what flows through it, day by day.

Every source answers ``day_flows(day)`` with the meter's grid-side flows over that
local calendar day (``[midnight, next midnight)`` in the source's time zone, so DST
days have 23 or 25 hours): an import profile and an export profile
(:class:`~p2pep.metering.profiles.EnergyProfile`, integer W·ms per segment).

- :class:`HouseholdConsumptionSource`: demandlib's BDEW H0 standard load profile
  scaled to an annual kWh (import only).
- :class:`PVProductionSource`: pvlib clear-sky irradiance at a location through a
  PVWatts ModelChain (export only).
- :class:`NetMeteringSource`: a prosumer, consumption netted against production per
  15-min interval.
- :class:`CsvReplaySource`: cumulative register readings from a CSV file (format in
  its docstring), replayed onto any simulated day.

pandas, demandlib and pvlib are slow, so sources compute a whole day at once and
:class:`FlowTimeline` caches it; per-reading work is a bisect and a few integer
operations. Power values from the models are rounded to integer watts once, when
the day is computed; energy is integer from there on.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as dtime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from unittest import mock
from zoneinfo import ZoneInfo

from p2pep.metering.profiles import WMS_PER_WH, EnergyProfile, ProfileError, net_flows

if TYPE_CHECKING:
    import pandas as pd

INTERVAL_15_MIN_MS = 15 * 60 * 1000


class SourceError(ValueError):
    """A source that cannot be built from its configuration or data."""


@dataclass(frozen=True)
class DayFlows:
    """What flows through a meter over one local day, in W·ms per segment."""

    day: date
    imports: EnergyProfile
    exports: EnergyProfile

    @property
    def start_ms(self) -> int:
        return self.imports.start_ms

    @property
    def end_ms(self) -> int:
        return self.imports.end_ms


class FlowSource(Protocol):
    """Anything that can tell a meter's flows for a local day."""

    @property
    def tz(self) -> ZoneInfo: ...

    def day_flows(self, day: date) -> DayFlows: ...


def day_bounds_ms(day: date, tz: ZoneInfo) -> tuple[int, int]:
    """Unix ms of local midnight of ``day`` and of the next day in ``tz``."""
    start = datetime.combine(day, dtime(0), tzinfo=tz)
    end = datetime.combine(day + timedelta(days=1), dtime(0), tzinfo=tz)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


def local_day(t_ms: int, tz: ZoneInfo) -> date:
    """The local calendar day holding unix ms ``t_ms``."""
    return datetime.fromtimestamp(t_ms / 1000, tz).date()


def _quarter_hour_index(day: date, tz: ZoneInfo) -> pd.DatetimeIndex:
    import pandas as pd

    start = pd.Timestamp(datetime.combine(day, dtime(0), tzinfo=tz))
    end = pd.Timestamp(datetime.combine(day + timedelta(days=1), dtime(0), tzinfo=tz))
    return pd.date_range(start, end, freq="15min", inclusive="left")


def _index_bounds_ms(index: pd.DatetimeIndex, end_ms: int) -> tuple[int, ...]:
    starts = [int(ts.timestamp() * 1000) for ts in index]
    return (*starts, end_ms)


def _to_watts(values: Iterable[float]) -> list[int]:
    """Model output (float W, may be NaN or slightly negative at night) -> integer W."""
    out = []
    for v in values:
        f = float(v)
        out.append(0 if f != f or f <= 0 else int(round(f)))
    return out


# -- household consumption: demandlib BDEW H0 --------------------------------------


@lru_cache(maxsize=4)
def _h0_year_shape(year: int, dynamic: bool) -> pd.Series:
    """demandlib's H0 (or dynamised H0) profile for ``year``, normalised to sum 1,
    indexed by naive local wall-clock quarter hours.

    demandlib 0.2.2's ``ElecSlp`` calls ``warnings.simplefilter("error")`` while it
    builds the profiles: that would make every later warning in the process an
    exception, and under pandas 3 its own deprecated ``inplace=`` calls raise. So the
    call is made with that ``simplefilter`` neutralised inside ``catch_warnings``,
    which restores the process's filters afterwards. Computed once per year (cached).
    """
    from demandlib import bdew

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mock.patch.object(warnings, "simplefilter", lambda *a, **k: None):
            slp = bdew.ElecSlp(year=year, holidays=None)
    column = "h0_dyn" if dynamic else "h0"
    series = slp.get_profiles(column)[column]
    return series / series.sum()


@dataclass(frozen=True)
class HouseholdConsumptionSource:
    """Household consumption from the BDEW H0 standard load profile (demandlib).

    The profile is scaled so the year sums to ``annual_kwh``; its values are average
    power per 15-min interval (annual Wh x share x 4 = W). ``dynamic`` applies the
    BDEW dynamisation factor (seasonal smoothing) that H0 is meant to be used with.
    No holidays are applied (weekdays follow the calendar only)."""

    annual_kwh: int
    tz: ZoneInfo = ZoneInfo("UTC")
    dynamic: bool = True

    def __post_init__(self) -> None:
        if self.annual_kwh <= 0:
            raise SourceError("annual_kwh must be positive")

    def day_watts(self, day: date) -> tuple[tuple[int, ...], list[int]]:
        """Segment boundaries (unix ms) and integer average power (W) for ``day``."""
        index = _quarter_hour_index(day, self.tz)
        shape = _h0_year_shape(day.year, self.dynamic)
        wall = index.tz_localize(None)
        shares = shape.reindex(wall).fillna(0.0).to_numpy()
        watts = _to_watts(list(shares * (self.annual_kwh * 1000 * 4)))
        _, end_ms = day_bounds_ms(day, self.tz)
        return _index_bounds_ms(index, end_ms), watts

    def day_flows(self, day: date) -> DayFlows:
        bounds, watts = self.day_watts(day)
        imports = EnergyProfile.from_power_segments(bounds, watts)
        return DayFlows(day, imports, EnergyProfile(bounds, (0,) * len(watts)))


# -- PV production: pvlib clear sky + PVWatts ModelChain ----------------------------


@dataclass(frozen=True)
class SiteLocation:
    """Where a PV system stands (pvlib Location)."""

    latitude: float
    longitude: float
    tz: ZoneInfo = ZoneInfo("UTC")
    altitude_m: float = 0.0
    name: str = ""


@dataclass(frozen=True)
class PVProductionSource:
    """PV production under clear sky: pvlib's Ineichen clear-sky irradiance at
    ``site``, through a PVWatts ModelChain for a fixed-tilt system of ``peak_wp``
    watt-peak (DC nameplate; the inverter is sized to match, 96 % efficient).

    Power is modelled at the middle of each 15-min interval and taken as the
    interval's average."""

    site: SiteLocation
    peak_wp: int
    surface_tilt: float = 30.0
    surface_azimuth: float = 180.0
    gamma_pdc: float = -0.004

    def __post_init__(self) -> None:
        if self.peak_wp <= 0:
            raise SourceError("peak_wp must be positive")

    @property
    def tz(self) -> ZoneInfo:
        return self.site.tz

    def day_watts(self, day: date) -> tuple[tuple[int, ...], list[int]]:
        import pandas as pd
        from pvlib.location import Location
        from pvlib.modelchain import ModelChain
        from pvlib.pvsystem import PVSystem
        from pvlib.temperature import TEMPERATURE_MODEL_PARAMETERS

        index = _quarter_hour_index(day, self.tz)
        mid = index + pd.Timedelta(minutes=7, seconds=30)
        location = Location(
            self.site.latitude,
            self.site.longitude,
            tz=str(self.tz),
            altitude=self.site.altitude_m,
            name=self.site.name or None,
        )
        system = PVSystem(
            surface_tilt=self.surface_tilt,
            surface_azimuth=self.surface_azimuth,
            module_parameters={"pdc0": float(self.peak_wp), "gamma_pdc": self.gamma_pdc},
            inverter_parameters={"pdc0": float(self.peak_wp)},
            temperature_model_parameters=TEMPERATURE_MODEL_PARAMETERS["sapm"]["open_rack_glass_polymer"],
        )
        with warnings.catch_warnings():
            # pvlib 0.16 still uses pandas accessors that pandas 3 deprecates
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            chain = ModelChain.with_pvwatts(system, location)
            chain.run_model(location.get_clearsky(mid))
            ac = chain.results.ac
        watts = _to_watts(list(ac.to_numpy()))
        _, end_ms = day_bounds_ms(day, self.tz)
        return _index_bounds_ms(index, end_ms), watts

    def day_flows(self, day: date) -> DayFlows:
        bounds, watts = self.day_watts(day)
        exports = EnergyProfile.from_power_segments(bounds, watts)
        return DayFlows(day, EnergyProfile(bounds, (0,) * len(watts)), exports)


# -- prosumer -------------------------------------------------------------------------


@dataclass(frozen=True)
class NetMeteringSource:
    """A prosumer: household consumption netted against its own PV per interval."""

    consumption: FlowSource
    production: FlowSource

    def __post_init__(self) -> None:
        if self.consumption.tz != self.production.tz:
            raise SourceError("consumption and production must use the same time zone")

    @property
    def tz(self) -> ZoneInfo:
        return self.consumption.tz

    def day_flows(self, day: date) -> DayFlows:
        c = self.consumption.day_flows(day)
        p = self.production.day_flows(day)
        try:
            imports, exports = net_flows(c.imports, p.exports)
        except ProfileError as e:
            raise SourceError(str(e)) from e
        return DayFlows(day, imports, exports)


# -- CSV replay -----------------------------------------------------------------------


CSV_HEADER = ("timestamp", "import_wh", "export_wh")


@dataclass(frozen=True)
class CsvReplaySource:
    """Replays cumulative register readings from a CSV file.

    Format (UTF-8, comma separated, ``#`` lines are comments)::

        timestamp,import_wh,export_wh
        2025-06-21T00:00:00+03:00,120345,5012
        2025-06-21T00:15:00+03:00,120467,5012

    - ``timestamp``: ISO 8601 with a UTC offset (or ``Z``), strictly increasing;
    - ``import_wh``, ``export_wh``: the meter's cumulative registers in integer Wh,
      never decreasing (only differences matter: any starting value works).

    Between two rows the energy difference flows evenly. A day the file covers is
    replayed as recorded; other days (``loop=True``, the default) replay the
    recorded days in turn, shifted to the requested day, so a one-day recording
    drives a simulation of any length. Hours without data flow nothing.
    """

    path: Path
    tz: ZoneInfo = ZoneInfo("UTC")
    loop: bool = True
    _profiles: tuple[EnergyProfile, EnergyProfile] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        object.__setattr__(self, "_profiles", _read_register_csv(self.path))

    @property
    def imports(self) -> EnergyProfile:
        return self._profiles[0]

    @property
    def exports(self) -> EnergyProfile:
        return self._profiles[1]

    def recorded_days(self) -> list[date]:
        first = local_day(self.imports.start_ms, self.tz)
        last = local_day(self.imports.end_ms - 1, self.tz)
        return [first + timedelta(days=i) for i in range((last - first).days + 1)]

    def day_flows(self, day: date) -> DayFlows:
        start, end = day_bounds_ms(day, self.tz)
        days = self.recorded_days()
        if day in days or not self.loop:
            return DayFlows(day, self.imports.window(start, end), self.exports.window(start, end))
        source_day = days[(day - days[0]).days % len(days)]
        src_start, src_end = day_bounds_ms(source_day, self.tz)
        shift = start - src_start
        imports = self.imports.window(src_start, src_end).shifted(shift).window(start, end)
        exports = self.exports.window(src_start, src_end).shifted(shift).window(start, end)
        return DayFlows(day, imports, exports)


def _parse_timestamp_ms(text: str, where: str) -> int:
    try:
        ts = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as e:
        raise SourceError(f"{where}: timestamp {text!r} is not ISO 8601") from e
    if ts.tzinfo is None:
        raise SourceError(f"{where}: timestamp {text!r} needs a UTC offset")
    return int(ts.timestamp() * 1000)


def _parse_wh(text: str, name: str, where: str) -> int:
    try:
        value = int(text.strip())
    except ValueError as e:
        raise SourceError(f"{where}: {name} {text!r} is not an integer Wh") from e
    if value < 0:
        raise SourceError(f"{where}: {name} must not be negative")
    return value


def _read_register_csv(path: Path) -> tuple[EnergyProfile, EnergyProfile]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SourceError(f"{path}: {e.strerror or e}") from e
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    rows = list(csv.reader(lines))
    if not rows or tuple(c.strip() for c in rows[0]) != CSV_HEADER:
        raise SourceError(f"{path}: the header must be {','.join(CSV_HEADER)}")
    if len(rows) < 3:
        raise SourceError(f"{path}: needs at least two readings")
    times: list[int] = []
    imp: list[int] = []
    exp: list[int] = []
    for n, row in enumerate(rows[1:], start=2):
        where = f"{path} row {n}"
        if len(row) != 3:
            raise SourceError(f"{where}: expected 3 columns, got {len(row)}")
        t = _parse_timestamp_ms(row[0], where)
        i = _parse_wh(row[1], "import_wh", where)
        x = _parse_wh(row[2], "export_wh", where)
        if times and t <= times[-1]:
            raise SourceError(f"{where}: timestamp must be after the previous row")
        if imp and i < imp[-1]:
            raise SourceError(f"{where}: import_wh runs backwards")
        if exp and x < exp[-1]:
            raise SourceError(f"{where}: export_wh runs backwards")
        times.append(t)
        imp.append(i)
        exp.append(x)
    bounds = tuple(times)
    return (
        EnergyProfile(bounds, tuple((b - a) * WMS_PER_WH for a, b in zip(imp, imp[1:]))),
        EnergyProfile(bounds, tuple((b - a) * WMS_PER_WH for a, b in zip(exp, exp[1:]))),
    )


# -- timeline: day cache over simulated time --------------------------------------------


class FlowTimeline:
    """A source's flows over continuous simulated time, one day computed at a time.

    Days are computed on first use and cached (the last ``keep_days``), so pandas,
    demandlib and pvlib run once per simulated day, never per reading. Call
    :meth:`prepare` ahead of time (e.g. in a worker thread) to take the cost out of
    the metering loop."""

    def __init__(self, source: FlowSource, keep_days: int = 3) -> None:
        self._source = source
        self._keep = max(2, keep_days)
        self._days: dict[date, DayFlows] = {}

    @property
    def tz(self) -> ZoneInfo:
        return self._source.tz

    def prepare(self, day: date) -> DayFlows:
        flows = self._days.get(day)
        if flows is None:
            flows = self._source.day_flows(day)
            self._days[day] = flows
            for old in sorted(self._days)[: -self._keep]:
                del self._days[old]
        return flows

    def day_of(self, t_ms: int) -> date:
        return local_day(t_ms, self.tz)

    def energy_wms_between(self, t0_ms: int, t1_ms: int) -> tuple[int, int]:
        """``(import, export)`` W·ms flowing in ``[t0_ms, t1_ms)``, across days if needed."""
        if t1_ms < t0_ms:
            raise ValueError("t1_ms must not be before t0_ms")
        imp = exp = 0
        t = t0_ms
        while t < t1_ms:
            flows = self.prepare(self.day_of(t))
            upto = min(t1_ms, flows.end_ms)
            imp += flows.imports.energy_wms_between(t, upto)
            exp += flows.exports.energy_wms_between(t, upto)
            t = upto
        return imp, exp

    def power_w_at(self, t_ms: int) -> tuple[int, int]:
        """``(import, export)`` average power (W) of the interval holding ``t_ms``."""
        flows = self.prepare(self.day_of(t_ms))
        return flows.imports.power_w_at(t_ms), flows.exports.power_w_at(t_ms)
