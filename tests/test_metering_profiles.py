"""EnergyProfile and SimClock: exact integer energy over arbitrary cuts of time."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pep.metering.clock import SimClock
from p2pep.metering.profiles import WMS_PER_WH, EnergyProfile, ProfileError, net_flows

watts_lists = st.lists(st.integers(0, 20_000), min_size=1, max_size=30)


@given(
    watts=watts_lists,
    interval=st.integers(1, 900_000),
    cuts=st.lists(st.integers(-1_000_000, 40_000_000), max_size=40),
)
def test_energy_over_any_cuts_adds_up_exactly(watts: list[int], interval: int, cuts: list[int]) -> None:
    p = EnergyProfile.from_power(1_000, interval, watts)
    points = sorted({p.start_ms - 5, p.end_ms + 5, *cuts})
    pieces = [p.energy_wms_between(a, b) for a, b in zip(points, points[1:])]
    assert all(x >= 0 for x in pieces)
    assert sum(pieces) == p.total_wms == sum(w * interval for w in watts)


@given(watts=watts_lists, a=st.integers(0, 10**7), b=st.integers(0, 10**7), c=st.integers(0, 10**7))
def test_window_splits_conserve_energy(watts: list[int], a: int, b: int, c: int) -> None:
    p = EnergyProfile.from_power(0, 300_000, watts)
    lo, mid, hi = sorted((a, b, c))
    if not lo < mid < hi:
        return
    left, right, whole = p.window(lo, mid), p.window(mid, hi), p.window(lo, hi)
    assert left.total_wms + right.total_wms == whole.total_wms == p.energy_wms_between(lo, hi)
    assert whole.start_ms == lo and whole.end_ms == hi


def test_power_and_cumulative_at_edges() -> None:
    p = EnergyProfile.from_power(0, 1000, [100, 0, 50])
    assert p.power_w_at(-1) == 0 and p.power_w_at(0) == 100 and p.power_w_at(1500) == 0
    assert p.power_w_at(2999) == 50 and p.power_w_at(3000) == 0
    assert p.cumulative_wms(500) == 50_000
    assert p.energy_wms_between(0, 3000) == 150_000
    assert p.shifted(10).energy_wms_between(10, 3010) == 150_000


def test_one_kw_for_an_hour_is_one_kwh() -> None:
    p = EnergyProfile.from_power(0, 3_600_000, [1000])
    assert p.total_wms == 1000 * WMS_PER_WH


@pytest.mark.parametrize(
    "bounds, energy",
    [((0, 5, 10), (1,)), ((0, 0), (1,)), ((0, 10, 5), (1, 1)), ((0, 10), (-1,)), ((0, 10), (1, 2))],
)
def test_malformed_profiles_are_refused(bounds: tuple[int, ...], energy: tuple[int, ...]) -> None:
    with pytest.raises(ProfileError):
        EnergyProfile(bounds, energy)


def test_net_flows_per_segment() -> None:
    c = EnergyProfile.from_power(0, 10, [100, 100, 0])
    p = EnergyProfile.from_power(0, 10, [30, 250, 0])
    imp, exp = net_flows(c, p)
    assert imp.energy_wms == (700, 0, 0) and exp.energy_wms == (0, 1500, 0)
    with pytest.raises(ProfileError):
        net_flows(c, EnergyProfile.from_power(0, 20, [1]))


@given(factor=st.integers(1, 5000), start=st.integers(0, 2 * 10**12), t=st.integers(0, 10**13))
@settings(max_examples=200)
def test_clock_maps_real_to_sim_and_back(factor: int, start: int, t: int) -> None:
    clock = SimClock(sim_start_ms=start, real_start_ns=7, factor=factor)
    assert clock.sim_ms(7) == start
    target = start + t // 10**6
    r = clock.real_ns_at(target)
    assert clock.sim_ms(r) >= target
    assert clock.sim_ms(r - 1) < target


def test_clock_720_runs_a_day_in_two_minutes() -> None:
    clock = SimClock(0, 0, 720)
    assert clock.sim_ms(120 * 10**9) == 86_400_000
    assert clock.real_seconds_for(86_400_000) == 120
    with pytest.raises(ValueError):
        SimClock(0, 0, 0)
