"""Periodic uniform-price clearing (pay-as-clear) on the market's book."""

from __future__ import annotations

from market_helpers import book_invariants, dem, sup

from p2pep.market import Market, Tier, clear


def test_single_price_at_midpoint_of_the_maximising_interval() -> None:
    m = Market()
    for o in (sup("s1", "A", 100, 10), sup("s2", "B", 100, 30), dem("d1", "C", 150, 25), dem("d2", "D", 100, 5)):
        m.add(o)
    r = clear(m, 0)
    assert (r.price, r.volume_wh) == (17, 100)  # volume 100 for every price in [10, 25]
    assert [(t.buy_order, t.sell_order, t.energy_wh, t.price_msat_per_kwh) for t in r.trades] == [
        ("d1", "s1", 100, 17)
    ]
    assert m.get("d1").remaining == 50 and m.get("s1") is None
    book_invariants(m, crossed_ok=True)


def test_no_crossing_no_trades_book_untouched() -> None:
    m = Market()
    m.add(sup("s1", "A", 100, 30))
    m.add(dem("d1", "C", 100, 20))
    r = clear(m, 0)
    assert r.price is None and r.trades == [] and len(m.book) == 2


def test_empty_side() -> None:
    m = Market()
    m.add(sup("s1", "A", 100, 30))
    assert clear(m, 0).price is None


def test_split_demand_and_price_priority_rationing() -> None:
    m = Market()
    m.add(sup("s1", "A", 60, 10))
    m.add(sup("s2", "B", 60, 12))
    m.add(dem("big", "C", 100, 20))
    m.add(dem("late", "D", 50, 20))  # same price, later: rationed out
    r = clear(m, 0)
    assert r.volume_wh == 120
    fills = {(t.buy_order, t.sell_order): (t.energy_wh, t.tier) for t in r.trades}
    assert fills == {("big", "s1"): (60, Tier.SPLIT), ("big", "s2"): (40, Tier.SPLIT), ("late", "s2"): (20, Tier.PRICE_TIME)}
    assert m.get("late").remaining == 30


def test_tier_1_consumer_served_first_when_supply_is_short() -> None:
    m = Market()
    m.open_contract("c9", consumer="Z", supplier="A")
    m.add(sup("s1", "A", 50, 10))
    m.add(dem("rich", "C", 50, 40))
    m.add(dem("continuing", "Z", 50, 30))
    r = clear(m, 0)
    assert r.price == 25 and r.volume_wh == 50
    assert [(t.buy_order, t.tier, t.renews) for t in r.trades] == [("continuing", Tier.CONTINUING, "c9")]
    assert m.get("rich").remaining == 50


def test_tier_3_partner_pairs_before_price_time() -> None:
    m = Market()
    m.add(sup("cheap", "A", 50, 10))
    m.add(sup("friend", "F", 50, 15))
    m.add(dem("d1", "C", 50, 30, partners=frozenset({"F"})))
    m.add(dem("d2", "D", 50, 30))
    r = clear(m, 0)
    pairs = {(t.buy_order, t.sell_order, t.tier) for t in r.trades}
    assert pairs == {("d1", "friend", Tier.NOMINATED), ("d2", "cheap", Tier.PRICE_TIME)}
    assert len({t.price_msat_per_kwh for t in r.trades}) == 1


def test_self_trade_stays_in_book() -> None:
    m = Market()
    m.add(sup("own", "P", 50, 10))
    m.add(dem("mine", "P", 50, 30))
    m.add(sup("other", "A", 20, 10))
    r = clear(m, 0)
    assert [(t.buy_order, t.sell_order, t.energy_wh) for t in r.trades] == [("mine", "other", 20)]
    assert r.volume_wh == 20 and m.get("own").remaining == 50 and m.get("mine").remaining == 30


def test_expired_orders_are_not_cleared() -> None:
    m = Market()
    m.add(sup("s1", "A", 50, 10, expiry_ms=100))
    m.add(dem("d1", "C", 50, 30))
    r = clear(m, 100)
    assert r.price is None and [o.id for o in r.expired] == ["s1"]
    assert m.get("d1").remaining == 50
