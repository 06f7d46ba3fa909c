"""Continuous matching: price-time priority, pay-as-bid, tiers, partial fills, expiry, cancel."""

from __future__ import annotations

import pytest
from market_helpers import book_invariants, dem, sup

from p2pep.market import DuplicateOrder, Market, Tier, UnknownContract, UnknownOrder


def test_trade_at_resting_price_best_price_first() -> None:
    m = Market()
    m.submit(sup("s1", "A", 100, 120), 0)
    m.submit(sup("s2", "B", 100, 100), 0)
    r = m.submit(dem("d1", "C", 50, 150), 0)
    assert [(t.sell_order, t.energy_wh, t.price_msat_per_kwh, t.tier) for t in r.trades] == [
        ("s2", 50, 100, Tier.PRICE_TIME)
    ]
    assert m.get("s2").remaining == 50 and r.order.remaining == 0 and not r.order.live
    book_invariants(m)


def test_time_priority_within_a_price_level_and_residual_keeps_it() -> None:
    m = Market()
    m.submit(sup("s1", "A", 100, 100), 0)
    m.submit(sup("s2", "B", 100, 100), 0)
    r = m.submit(dem("d1", "C", 60, 100), 0)
    assert [t.sell_order for t in r.trades] == ["s1"]
    r = m.submit(dem("d2", "D", 60, 100), 0)
    assert [(t.sell_order, t.energy_wh) for t in r.trades] == [("s1", 40), ("s2", 20)]
    assert m.get("s1") is None and m.get("s2").remaining == 80
    book_invariants(m)


def test_supply_taker_hits_highest_bid_at_its_price() -> None:
    m = Market()
    m.submit(dem("d1", "C", 100, 90), 0)
    m.submit(dem("d2", "D", 100, 110), 0)
    r = m.submit(sup("s1", "A", 150, 80), 0)
    assert [(t.buy_order, t.energy_wh, t.price_msat_per_kwh) for t in r.trades] == [("d2", 100, 110), ("d1", 50, 90)]
    assert r.order.remaining == 0


def test_demand_larger_than_any_offer_is_split_cheapest_first() -> None:
    m = Market()
    m.submit(sup("s1", "A", 300, 130), 0)
    m.submit(sup("s2", "B", 200, 110), 0)
    m.submit(sup("s3", "E", 100, 200), 0)
    r = m.submit(dem("d1", "C", 600, 150), 0)
    assert [(t.seller, t.energy_wh, t.tier) for t in r.trades] == [("B", 200, Tier.SPLIT), ("A", 300, Tier.SPLIT)]
    assert r.order.remaining == 100 and r.order.live  # uncovered residual stays open
    # supply appears: the open demand is matched at once, as a further split
    r2 = m.submit(sup("s4", "F", 100, 140), 0)
    assert [(t.buy_order, t.energy_wh, t.price_msat_per_kwh, t.tier) for t in r2.trades] == [
        ("d1", 100, 150, Tier.SPLIT)
    ]
    assert m.get("d1") is None
    book_invariants(m)


def test_no_trade_beyond_limit() -> None:
    m = Market()
    m.submit(sup("s1", "A", 100, 101), 0)
    r = m.submit(dem("d1", "C", 100, 100), 0)
    assert r.trades == [] and r.order.remaining == 100 and r.order.live


def test_tier_1_active_supplier_first_even_if_dearer() -> None:
    m = Market()
    m.open_contract("c1", consumer="C", supplier="A")
    m.submit(sup("cheap", "B", 100, 100), 0)
    m.submit(sup("dear", "A", 100, 140), 0)
    m.submit(sup("toodear", "A", 100, 200), 0)
    r = m.submit(dem("d1", "C", 150, 150), 0)
    assert [(t.sell_order, t.energy_wh, t.tier, t.renews) for t in r.trades] == [
        ("dear", 100, Tier.CONTINUING, "c1"),
        ("cheap", 50, Tier.SPLIT, None),
    ]


def test_tier_1_also_when_the_supplier_arrives() -> None:
    m = Market()
    m.open_contract("c1", consumer="C", supplier="A")
    m.submit(dem("other", "D", 100, 200), 0)
    m.submit(dem("mine", "C", 100, 120), 0)
    r = m.submit(sup("s1", "A", 100, 100), 0)
    assert [(t.buy_order, t.tier) for t in r.trades] == [("mine", Tier.CONTINUING)]


def test_renewal_names_the_contract_and_must_be_active_and_own() -> None:
    m = Market()
    m.open_contract("c1", consumer="C", supplier="A")
    m.open_contract("c2", consumer="C", supplier="A")
    m.submit(sup("s1", "A", 100, 100), 0)
    r = m.submit(dem("d1", "C", 10, 100, renews="c1"), 0)
    assert r.trades[0].renews == "c1" and r.trades[0].tier is Tier.CONTINUING
    with pytest.raises(UnknownContract) as e:
        m.submit(dem("d2", "X", 10, 100, renews="c1"), 0)
    assert e.value.field == "renews_contract_id"
    m.close_contract("c1")
    with pytest.raises(UnknownContract):
        m.submit(dem("d3", "C", 10, 100, renews="c1"), 0)
    assert not m.knows("d2") and not m.knows("d3")


def test_tier_3_nominated_partner_before_cheaper_stranger() -> None:
    m = Market()
    m.submit(sup("stranger", "B", 100, 100), 0)
    m.submit(sup("friend", "F", 100, 120), 0)
    r = m.submit(dem("d1", "C", 50, 130, partners=frozenset({"F"})), 0)
    assert [(t.sell_order, t.tier) for t in r.trades] == [("friend", Tier.NOMINATED)]


def test_tier_3_when_the_resting_order_nominated_the_taker() -> None:
    m = Market()
    m.submit(sup("stranger", "B", 100, 100), 0)
    m.submit(sup("fan", "F", 100, 120, partners=frozenset({"C"})), 0)
    r = m.submit(dem("d1", "C", 50, 130), 0)
    assert [(t.sell_order, t.tier) for t in r.trades] == [("fan", Tier.NOMINATED)]
    assert m.book.nominated == {"C": {"fan": m.get("fan")}}


def test_tier_order_1_then_3_then_price_time() -> None:
    m = Market()
    m.open_contract("c1", consumer="C", supplier="A")
    m.submit(sup("t4", "B", 10, 100), 0)
    m.submit(sup("t3", "F", 10, 110), 0)
    m.submit(sup("t1", "A", 10, 120), 0)
    r = m.submit(dem("d1", "C", 30, 130, partners=frozenset({"F"})), 0)
    assert [(t.sell_order, t.tier) for t in r.trades] == [
        ("t1", Tier.CONTINUING), ("t3", Tier.NOMINATED), ("t4", Tier.SPLIT)
    ]


def test_a_meter_never_trades_with_itself() -> None:
    m = Market()
    m.submit(sup("own", "C", 100, 90), 0)
    m.submit(sup("other", "B", 100, 100), 0)
    r = m.submit(dem("d1", "C", 150, 120), 0)
    assert [(t.sell_order, t.energy_wh) for t in r.trades] == [("other", 100)]
    assert m.get("own").remaining == 100 and r.order.remaining == 50
    assert m.book.supply.heap[0] == 90  # the skipped level is still in the heap
    book_invariants(m)


def test_expiry_removes_orders_lazily_and_by_sweep() -> None:
    m = Market()
    m.submit(sup("old", "A", 100, 90, expiry_ms=1_000), 0)
    m.submit(sup("new", "B", 100, 100), 0)
    r = m.submit(dem("d1", "C", 50, 120), 1_000)
    assert [t.sell_order for t in r.trades] == ["new"]
    assert [o.id for o in r.expired] == ["old"]
    m.submit(dem("d2", "D", 10, 50, expiry_ms=5_000), 2_000)
    assert m.expire(4_999) == []
    assert [o.id for o in m.expire(5_000)] == ["d2"]
    assert m.get("d2") is None
    book_invariants(m)


def test_cancel_and_unknown_order() -> None:
    m = Market()
    m.submit(sup("s1", "A", 100, 90), 0)
    with pytest.raises(UnknownOrder):
        m.cancel("s1", meter="B")
    assert m.cancel("s1").remaining == 100
    with pytest.raises(UnknownOrder) as e:
        m.cancel("s1")
    assert e.value.field == "order_id"
    assert m.submit(dem("d1", "C", 50, 120), 0).trades == []
    book_invariants(m)


def test_duplicate_ids_are_refused_even_after_fill_and_book_unchanged() -> None:
    m = Market()
    m.submit(sup("s1", "A", 100, 90), 0)
    m.submit(dem("d1", "C", 100, 90), 0)
    assert len(m.book) == 0
    for o in (sup("s1", "A", 5, 90), dem("d1", "C", 5, 90)):
        with pytest.raises(DuplicateOrder) as e:
            m.submit(o, 0)
        assert e.value.field == "order_id"
    assert len(m.book) == 0


def test_restore_keeps_seq_and_time_priority() -> None:
    m = Market()
    a = sup("a", "A", 10, 100, seq=7)
    b = sup("b", "B", 10, 100, seq=9)
    m.restore(a)
    m.restore(b)
    m.remember_ids(["gone"], next_seq=12)
    assert m.knows("gone") and m.next_seq == 12
    r = m.submit(dem("d", "C", 15, 100), 0)
    assert [t.sell_order for t in r.trades] == ["a", "b"] and r.order.seq == 12


def test_meter_index_is_compacted_and_tiers_still_work() -> None:
    m = Market()
    m.open_contract("c1", consumer="C", supplier="A")
    for i in range(3000):
        m.submit(sup(f"s{i}", "A" if i % 2 else "B", 1, 100), 0)
    for i in range(2990):
        m.submit(dem(f"d{i}", "X", 1, 100), 0)
    assert m.book.supply.dead_in_index <= 4 * len(m.book.supply.orders) + 1025
    assert sum(len(v) for v in m.book.supply.by_meter.values()) < 1100
    r = m.submit(dem("mine", "C", 3, 100), 0)
    assert [(t.seller, t.tier) for t in r.trades] == [("A", Tier.CONTINUING)] * len(r.trades)
    book_invariants(m)
