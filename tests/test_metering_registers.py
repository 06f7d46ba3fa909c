"""Registers and the meter simulation: integer Wh, exact conservation, monotonic seq."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pep.metering.profiles import WMS_PER_WH
from p2pep.metering.registers import RegisterError, Registers, RegisterSnapshot
from p2pep.metering.simulation import MeterSimulation
from p2pep.metering.sources import CsvReplaySource, FlowTimeline, day_bounds_ms

chunks = st.lists(st.tuples(st.integers(0, 5 * WMS_PER_WH), st.integers(0, 5 * WMS_PER_WH)), max_size=60)


@given(chunks)
def test_registers_conserve_energy_exactly(parts: list[tuple[int, int]]) -> None:
    regs = Registers.new("m1")
    for imp, exp in parts:
        regs.accumulate(imp, exp)
    assert regs.import_total_wms == sum(i for i, _ in parts)
    assert regs.export_total_wms == sum(e for _, e in parts)
    assert regs.import_wh == sum(i for i, _ in parts) // WMS_PER_WH
    assert regs.export_wh == sum(e for _, e in parts) // WMS_PER_WH


@given(chunks, st.integers(0, 60))
def test_snapshot_resume_is_seamless(parts: list[tuple[int, int]], cut: int) -> None:
    whole, first = Registers.new("m1"), Registers.new("m1")
    for n, (imp, exp) in enumerate(parts):
        whole.accumulate(imp, exp)
        whole.read(n)
        if n < cut:
            first.accumulate(imp, exp)
            first.read(n)
    resumed = Registers(first.snapshot())
    for n, (imp, exp) in enumerate(parts[cut:], start=cut):
        resumed.accumulate(imp, exp)
        resumed.read(n)
    assert resumed.snapshot() == whole.snapshot()


def test_readings_have_increasing_seq_and_current_registers() -> None:
    regs = Registers.new("m1")
    regs.accumulate(WMS_PER_WH * 3 + 5, 0)
    r1 = regs.read(1000)
    regs.accumulate(WMS_PER_WH - 5, 2 * WMS_PER_WH)
    r2 = regs.read(1000)
    assert (r1.seq, r1.import_wh, r1.export_wh) == (1, 3, 0)
    assert (r2.seq, r2.import_wh, r2.export_wh, r2.timestamp_ms) == (2, 4, 2, 1000)
    with pytest.raises(RegisterError, match="before the previous"):
        regs.read(999)
    with pytest.raises(RegisterError):
        regs.accumulate(-1, 0)
    with pytest.raises(RegisterError):
        Registers(RegisterSnapshot("m1", import_remainder_wms=WMS_PER_WH))


def test_simulation_meters_source_and_cuts_import_while_blocked(tmp_path: Path) -> None:
    path = tmp_path / "day.csv"
    path.write_text(
        "timestamp,import_wh,export_wh\n2025-06-21T00:00:00Z,0,0\n2025-06-22T00:00:00Z,2400,1200\n"
    )
    start, end = day_bounds_ms(date(2025, 6, 21), ZoneInfo("UTC"))
    sim = MeterSimulation(FlowTimeline(CsvReplaySource(path)), Registers.new("m1"), start)
    demand = sim.demand(step_ms=3_600_000)
    assert (demand.power_w, demand.energy_wh) == (100, 100)
    assert sim.supply_w() == 50
    t = start
    for i in range(1, 97):
        t = start + i * 900_000 - 7 * i  # irregular ticks
        sim.advance(t, import_allowed=i > 48)
    sim.advance(end)
    assert sim.registers.export_total_wms == 1200 * WMS_PER_WH
    assert sim.registers.import_total_wms + sim.unserved_import_wms == 2400 * WMS_PER_WH
    assert 1150 <= sim.registers.import_wh <= 1250
    assert sim.advance(end - 1) == (0, 0)
