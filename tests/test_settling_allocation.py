"""Multi-supplier allocation: exact conservation, caps, tiers, proportionality."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pep.settling.allocation import (
    AllocationError,
    AllocationTarget,
    allocate,
    split_proportionally,
)

targets_st = st.lists(
    st.builds(
        AllocationTarget,
        contract_id=st.text("abcdef", min_size=1, max_size=3),
        cap_wh=st.integers(0, 500),
        weight=st.integers(0, 5000),
        tier=st.integers(1, 3),
        group=st.sampled_from(["", "", "solar", "wind"]),
    ),
    max_size=6,
    unique_by=lambda t: t.contract_id,
)


@given(total=st.integers(0, 3000), targets=targets_st)
def test_allocation_conserves_energy_and_respects_caps_and_tiers(total: int, targets: list[AllocationTarget]) -> None:
    result = allocate(total, targets)
    assert sum(result.shares.values()) + result.unallocated_wh == total
    assert result.unallocated_wh == max(0, total - sum(t.cap_wh for t in targets))
    for t in targets:
        assert 0 <= result.shares[t.contract_id] <= t.cap_wh
    # a later tier gets energy only once every earlier-tier contract is full
    for t in targets:
        if result.shares[t.contract_id] > 0:
            for earlier in targets:
                if earlier.tier < t.tier:
                    assert result.shares[earlier.contract_id] == earlier.cap_wh
    # deterministic regardless of the order contracts are listed in
    assert allocate(total, list(reversed(targets))) == result


@given(
    amount=st.integers(0, 10_000),
    weights=st.lists(st.integers(1, 5000), min_size=1, max_size=6),
)
def test_uncapped_shares_are_within_one_wh_of_proportional(amount: int, weights: list[int]) -> None:
    named = [(f"c{i}", w) for i, w in enumerate(weights)]
    shares = split_proportionally(amount, named)
    assert sum(shares.values()) == amount
    total_w = sum(weights)
    for cid, w in named:
        assert abs(shares[cid] - Fraction(amount * w, total_w)) < 1


def test_consumer_split_across_two_producers() -> None:
    # 3 kW and 1 kW contracts share a 100 Wh step 3:1
    r = allocate(100, [AllocationTarget("p1", 1000, 3000), AllocationTarget("p2", 1000, 1000)])
    assert r.shares == {"p1": 75, "p2": 25} and r.unallocated_wh == 0
    # when p1 runs out its excess moves to p2
    r = allocate(100, [AllocationTarget("p1", 60, 3000), AllocationTarget("p2", 1000, 1000)])
    assert r.shares == {"p1": 60, "p2": 40}
    # tier 2 only after tier 1 is full; rest is outside any contract
    r = allocate(100, [AllocationTarget("first", 30, 1, tier=1), AllocationTarget("second", 50, 1, tier=2)])
    assert r.shares == {"first": 30, "second": 50} and r.unallocated_wh == 20


def test_ties_and_zero_weights() -> None:
    assert split_proportionally(1, [("b", 1), ("a", 1)]) == {"a": 1, "b": 0}
    assert split_proportionally(3, [("a", 0), ("b", 0)]) == {"a": 2, "b": 1}
    assert allocate(5, []).unallocated_wh == 5


def test_bad_input_is_refused() -> None:
    with pytest.raises(AllocationError):
        allocate(-1, [])
    with pytest.raises(AllocationError):
        allocate(1, [AllocationTarget("a", 1), AllocationTarget("a", 2)])
    with pytest.raises(AllocationError):
        allocate(1, [AllocationTarget("a", -1)])


@given(total=st.integers(0, 3000), targets=targets_st)
def test_one_part_filled_contract_per_counterparty(total: int, targets: list[AllocationTarget]) -> None:
    """Within a tier and a group, contracts fill in contract id order: before one gets
    anything, every smaller one of its group is full."""
    result = allocate(total, targets)
    for t in targets:
        if t.group and result.shares[t.contract_id] > 0:
            for o in targets:
                if o.group == t.group and o.tier == t.tier and o.contract_id < t.contract_id:
                    assert result.shares[o.contract_id] == o.cap_wh, (o, t, result)


def test_group_stands_in_with_its_total_weight() -> None:
    # solar holds two contracts (1000 W + 1000 W), wind one (2000 W): half each, solar's to its first
    r = allocate(100, [AllocationTarget("s2", 500, 1000, group="solar"), AllocationTarget("s1", 500, 1000, group="solar"),
                       AllocationTarget("w1", 500, 2000, group="wind")])
    assert r.shares == {"s1": 50, "s2": 0, "w1": 50}
    # s1 full after 20 Wh: the rest is re-split as a capped contract's always is (s2 1000 : w1 2000),
    # exactly as without groups
    grouped = [AllocationTarget("s1", 20, 1000, group="solar"), AllocationTarget("s2", 500, 1000, group="solar"),
               AllocationTarget("w1", 500, 2000, group="wind")]
    r = allocate(100, grouped)
    assert r.shares == {"s1": 20, "s2": 27, "w1": 53} and r.unallocated_wh == 0
    assert r == allocate(100, [AllocationTarget(t.contract_id, t.cap_wh, t.weight) for t in grouped])
