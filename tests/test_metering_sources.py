"""Sources: demandlib H0, pvlib PV, prosumer netting, CSV replay, the day cache.

demandlib and pvlib are slow, so each model runs once per module (fixtures)."""

from __future__ import annotations

import warnings
from datetime import date, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from p2pep.metering.profiles import WMS_PER_WH
from p2pep.metering.sources import (
    CsvReplaySource,
    DayFlows,
    FlowTimeline,
    HouseholdConsumptionSource,
    NetMeteringSource,
    PVProductionSource,
    SiteLocation,
    SourceError,
    day_bounds_ms,
)

BERLIN = ZoneInfo("Europe/Berlin")
MIDSUMMER = date(2025, 6, 21)
EXAMPLE_CSV = Path(__file__).resolve().parent.parent / "scenarios" / "data" / "example-prosumer-day.csv"


@pytest.fixture(scope="module")
def household() -> HouseholdConsumptionSource:
    return HouseholdConsumptionSource(annual_kwh=3650, tz=BERLIN)


@pytest.fixture(scope="module")
def h0_midsummer(household: HouseholdConsumptionSource) -> DayFlows:
    return household.day_flows(MIDSUMMER)


@pytest.fixture(scope="module")
def pv() -> PVProductionSource:
    return PVProductionSource(SiteLocation(52.52, 13.405, BERLIN, 34, "Berlin"), peak_wp=5000)


@pytest.fixture(scope="module")
def pv_midsummer(pv: PVProductionSource) -> DayFlows:
    return pv.day_flows(MIDSUMMER)


def test_h0_day_is_quarter_hours_of_plausible_household_power(h0_midsummer: DayFlows) -> None:
    f = h0_midsummer
    start, end = day_bounds_ms(MIDSUMMER, BERLIN)
    assert (f.start_ms, f.end_ms) == (start, end)
    assert len(f.imports.energy_wms) == 96
    assert f.exports.total_wms == 0
    day_wh = f.imports.total_wms / WMS_PER_WH
    # 3650 kWh/yr is 10 kWh/day on average; H0 summer days are a bit below average
    assert 6_000 < day_wh < 12_000
    watts = [f.imports.power_w_at(t) for t in f.imports.boundaries_ms[:-1]]
    assert min(watts) > 50 and max(watts) < 2_000
    # evening peak above the early-morning trough
    assert f.imports.power_w_at(start + 20 * 3_600_000) > f.imports.power_w_at(start + 4 * 3_600_000)


def test_h0_scales_linearly_with_annual_kwh(h0_midsummer: DayFlows) -> None:
    double = HouseholdConsumptionSource(annual_kwh=7300, tz=BERLIN).day_flows(MIDSUMMER)
    assert abs(double.imports.total_wms - 2 * h0_midsummer.imports.total_wms) <= 96 * 900_000


def test_h0_handles_dst_days(household: HouseholdConsumptionSource) -> None:
    spring = household.day_flows(date(2025, 3, 30))
    autumn = household.day_flows(date(2025, 10, 26))
    assert len(spring.imports.energy_wms) == 92
    assert len(autumn.imports.energy_wms) == 100
    assert all(e > 0 for e in autumn.imports.energy_wms)


def test_demandlib_leaves_warning_filters_alone(household: HouseholdConsumptionSource) -> None:
    before = list(warnings.filters)
    household.day_flows(date(2024, 2, 29))  # another year: builds a new demandlib profile
    assert warnings.filters == before


def test_pv_clear_sky_day(pv_midsummer: DayFlows) -> None:
    f = pv_midsummer
    start, _ = day_bounds_ms(MIDSUMMER, BERLIN)
    assert f.imports.total_wms == 0
    assert f.exports.power_w_at(start + 2 * 3_600_000) == 0  # night
    noon = f.exports.power_w_at(start + 13 * 3_600_000 + 15 * 60_000)  # solar noon ~13:15 CEST
    assert 3_000 < noon <= 5_000
    day_kwh = f.exports.total_wms / WMS_PER_WH / 1000
    assert 20 < day_kwh < 40  # clear-sky midsummer, 5 kWp in Berlin


def test_pv_winter_produces_less(pv: PVProductionSource, pv_midsummer: DayFlows) -> None:
    winter = pv.day_flows(date(2025, 12, 21))
    assert 0 < winter.exports.total_wms < pv_midsummer.exports.total_wms / 2


def test_prosumer_nets_per_interval(
    household: HouseholdConsumptionSource, pv: PVProductionSource, h0_midsummer: DayFlows, pv_midsummer: DayFlows
) -> None:
    f = NetMeteringSource(household, pv).day_flows(MIDSUMMER)
    c, p = h0_midsummer.imports.energy_wms, pv_midsummer.exports.energy_wms
    for i, (ci, pi) in enumerate(zip(c, p)):
        assert f.imports.energy_wms[i] - f.exports.energy_wms[i] == ci - pi
        assert min(f.imports.energy_wms[i], f.exports.energy_wms[i]) == 0


def test_csv_replay_reproduces_register_differences() -> None:
    src = CsvReplaySource(EXAMPLE_CSV, tz=BERLIN)
    lines = [ln for ln in EXAMPLE_CSV.read_text().splitlines() if ln[:1].isdigit()]
    first, last = lines[0].split(","), lines[-1].split(",")
    f = src.day_flows(MIDSUMMER)
    assert f.imports.total_wms == (int(last[1]) - int(first[1])) * WMS_PER_WH
    assert f.exports.total_wms == (int(last[2]) - int(first[2])) * WMS_PER_WH
    # another day replays the recording shifted onto it
    later = src.day_flows(MIDSUMMER + timedelta(days=3))
    assert later.imports.total_wms == f.imports.total_wms
    assert later.start_ms == f.start_ms + 3 * 86_400_000
    assert CsvReplaySource(EXAMPLE_CSV, tz=BERLIN, loop=False).day_flows(date(2025, 7, 1)).imports.total_wms == 0


@pytest.mark.parametrize(
    "body, complaint",
    [
        ("time,import_wh,export_wh\n", "header"),
        ("timestamp,import_wh,export_wh\n2025-06-21T00:00:00Z,0,0\n", "two readings"),
        ("timestamp,import_wh,export_wh\n2025-06-21T00:00:00,0,0\n2025-06-21T01:00:00,1,1\n", "UTC offset"),
        ("timestamp,import_wh,export_wh\n2025-06-21T00:00:00Z,5,0\n2025-06-21T01:00:00Z,4,0\n", "import_wh runs backwards"),
        ("timestamp,import_wh,export_wh\n2025-06-21T01:00:00Z,0,0\n2025-06-21T01:00:00Z,1,0\n", "after the previous"),
        ("timestamp,import_wh,export_wh\n2025-06-21T00:00:00Z,0,0\n2025-06-21T01:00:00Z,1.5,0\n", "integer Wh"),
    ],
)
def test_csv_errors_name_the_problem(tmp_path: Path, body: str, complaint: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(body)
    with pytest.raises(SourceError, match=complaint):
        CsvReplaySource(path)


def test_timeline_spans_days_and_computes_each_day_once(tmp_path: Path) -> None:
    path = tmp_path / "flat.csv"
    path.write_text(
        "timestamp,import_wh,export_wh\n2025-06-21T00:00:00Z,0,0\n2025-06-22T00:00:00Z,2400,0\n"
    )
    calls: list[date] = []

    class Counting:
        tz = ZoneInfo("UTC")
        inner = CsvReplaySource(path)

        def day_flows(self, day: date) -> DayFlows:
            calls.append(day)
            return self.inner.day_flows(day)

    timeline = FlowTimeline(Counting())
    start, _ = day_bounds_ms(MIDSUMMER, ZoneInfo("UTC"))
    total = 0
    step = 7 * 60_000 + 13  # odd step, crossing into the next days
    t = start
    while t < start + 3 * 86_400_000:
        imp, _ = timeline.energy_wms_between(t, t + step)
        total += imp
        t += step
    assert total == 100 * (t - start)  # flat 100 W, the recording looped onto every day
    assert sorted(set(calls)) == calls  # each day computed once, in order
    assert timeline.power_w_at(start + 1) == (100, 0)
