"""Property tests of the matching core (hypothesis).

Continuous: no order matched beyond its quantity, no trade outside either limit, energy
conserved, no self-trade, tiers and price-time priority respected, book consistent.
Periodic: uniform-price clearing maximises matched volume at the crossing, at one price
within every limit, rationing the long side by tier then price then time.
"""

from __future__ import annotations

import os
from collections import defaultdict

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from market_helpers import book_invariants

from p2pep.market import Market, Order, Side, Tier, clear, uniform_price

METERS = ["A", "B", "C", "D", "E"]
# P2PEP_HYPOTHESIS_EXAMPLES=5000 for a thorough run
FAST = settings(max_examples=int(os.environ.get("P2PEP_HYPOTHESIS_EXAMPLES", "100")), deadline=None, suppress_health_check=[HealthCheck.too_slow])

order_st = st.fixed_dictionaries(
    {
        "meter": st.sampled_from(METERS),
        "side": st.sampled_from([Side.SUPPLY, Side.DEMAND]),
        "energy": st.integers(1, 60),
        "price": st.integers(1, 12),
        "partners": st.frozensets(st.sampled_from(METERS), max_size=2),
        "expiry": st.one_of(st.none(), st.integers(1, 40)),
        "cancel": st.one_of(st.none(), st.integers(0, 30)),
    }
)
contracts_st = st.lists(st.tuples(st.sampled_from(METERS), st.sampled_from(METERS)), max_size=3)


def _preferred(m: Market, o: Order) -> dict[str, Tier]:
    """Tier of each resting counter-order the taker ``o`` prefers (by order id)."""
    act = m.active.by_consumer if o.side is Side.DEMAND else m.active.by_supplier
    pref: dict[str, Tier] = {}
    for r in m.book.side(o.side.opposite).orders.values():
        if r.meter in act.get(o.meter, {}):
            pref[r.id] = Tier.CONTINUING
        elif r.meter in o.partners or o.meter in r.partners:
            pref[r.id] = Tier.NOMINATED
    return pref


@FAST
@given(st.lists(order_st, min_size=1, max_size=40), contracts_st)
def test_continuous_invariants(specs: list[dict], pairs: list[tuple[str, str]]) -> None:
    m = Market()
    for i, (c, s) in enumerate(pairs):
        if c != s:
            m.open_contract(f"c{i}", consumer=c, supplier=s)
    orders: dict[str, Order] = {}
    filled: dict[str, int] = defaultdict(int)
    gone: dict[str, int] = {}  # cancelled/expired -> remaining at that moment
    for step, spec in enumerate(specs):
        now = step
        if spec["cancel"] is not None and spec["cancel"] < step:
            victim = f"o{spec['cancel']}"
            o = m.get(victim)
            if o is not None:
                gone[victim] = m.cancel(victim).remaining
        partners = spec["partners"] - {spec["meter"]}
        expiry = None if spec["expiry"] is None else now + spec["expiry"]
        o = Order(f"o{step}", spec["meter"], spec["side"], spec["energy"], spec["price"], expiry, partners)
        orders[o.id] = o
        pref = _preferred(m, o)
        snapshot = {r.id: (r.price, r.seq, r.meter) for r in m.book.side(o.side.opposite).orders.values()}
        res = m.submit(o, now)
        for x in res.expired:
            gone[x.id] = x.remaining
        for x in m.expire(now):
            gone[x.id] = x.remaining
        ranks = []
        for t in res.trades:
            buy, sell = orders[t.buy_order], orders[t.sell_order]
            assert buy.side is Side.DEMAND and sell.side is Side.SUPPLY
            assert t.energy_wh > 0 and t.buyer != t.seller
            assert sell.price <= t.price_msat_per_kwh <= buy.price  # within both limits
            maker = sell if o.side is Side.DEMAND else buy
            assert t.price_msat_per_kwh == maker.price  # pay-as-bid at the resting price
            filled[t.buy_order] += t.energy_wh
            filled[t.sell_order] += t.energy_wh
            expect = pref.get(maker.id)
            if t.tier in (Tier.CONTINUING, Tier.NOMINATED):
                assert expect is t.tier
            ranks.append(0 if t.tier is Tier.CONTINUING else 1 if t.tier is Tier.NOMINATED else 2)
        assert ranks == sorted(ranks), "tiers out of order"
        # price-time priority among the non-preferred trades, and preferred ones exhausted first
        walk = [t for t in res.trades if t.tier in (Tier.SPLIT, Tier.PRICE_TIME)]
        if walk:
            last = walk[-1]
            maker_id = last.sell_order if o.side is Side.DEMAND else last.buy_order
            sign = 1 if o.side is Side.DEMAND else -1
            last_key = (orders[maker_id].price * sign, orders[maker_id].seq)
            for r in m.book.side(o.side.opposite).orders.values():
                if r.id not in snapshot or r.meter == o.meter:
                    continue
                crosses = r.price <= o.price if o.side is Side.DEMAND else r.price >= o.price
                assert not (crosses and r.id in pref), f"preferred {r} left while walking"
                if r.id not in pref and r.id != maker_id:
                    assert (r.price * sign, r.seq) > last_key, f"price-time violated by {r}"
        book_invariants(m)
    for oid, o in orders.items():
        assert filled[oid] <= o.energy
        rest = o.remaining if o.live else gone.get(oid, 0)
        assert filled[oid] + rest == o.energy, f"energy not conserved for {o}"
    assert sum(filled[o] for o in orders if orders[o].side is Side.DEMAND) == sum(
        filled[o] for o in orders if orders[o].side is Side.SUPPLY
    )


def _brute_volume(bids: list[tuple[int, int]], asks: list[tuple[int, int]], p: int) -> int:
    return min(sum(q for pr, q in bids if pr >= p), sum(q for pr, q in asks if pr <= p))


side_orders = st.lists(st.tuples(st.integers(1, 30), st.integers(1, 50)), max_size=25)


@FAST
@given(side_orders, side_orders)
def test_uniform_price_maximises_volume(bids: list[tuple[int, int]], asks: list[tuple[int, int]]) -> None:
    price, volume = uniform_price(
        np.array([p for p, _ in bids], np.int64), np.array([q for _, q in bids], np.int64),
        np.array([p for p, _ in asks], np.int64), np.array([q for _, q in asks], np.int64),
    )
    best = max((_brute_volume(bids, asks, p) for p in range(0, 32)), default=0)
    assert volume == best
    if best == 0:
        assert price is None
    else:
        assert price is not None and _brute_volume(bids, asks, price) == best
        maximisers = [p for p in range(0, 32) if _brute_volume(bids, asks, p) == best]
        assert price == (min(maximisers) + max(maximisers)) // 2


SUPPLIERS = ["A", "B", "C"]
CONSUMERS = ["X", "Y", "Z"]
auction_order = st.tuples(st.booleans(), st.integers(0, 2), st.integers(1, 40), st.integers(1, 15), st.booleans())


@FAST
@given(st.lists(auction_order, min_size=1, max_size=40),
       st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), max_size=3))
def test_periodic_clearing_invariants(specs: list[tuple], pairs: list[tuple[int, int]]) -> None:
    m = Market()
    for i, (c, s) in enumerate(pairs):
        m.open_contract(f"c{i}", consumer=CONSUMERS[c], supplier=SUPPLIERS[s])
    orders: dict[str, Order] = {}
    for i, (is_supply, who, energy, price, nominate) in enumerate(specs):
        if is_supply:
            partners = frozenset({CONSUMERS[(who + 1) % 3]}) if nominate else frozenset()
            o = Order(f"o{i}", SUPPLIERS[who], Side.SUPPLY, energy, price, None, partners)
        else:
            partners = frozenset({SUPPLIERS[(who + 2) % 3]}) if nominate else frozenset()
            o = Order(f"o{i}", CONSUMERS[who], Side.DEMAND, energy, price, None, partners)
        orders[o.id] = o
        m.add(o)
    bids = [(o.price, o.energy) for o in orders.values() if o.side is Side.DEMAND]
    asks = [(o.price, o.energy) for o in orders.values() if o.side is Side.SUPPLY]
    best = max((_brute_volume(bids, asks, p) for p in range(0, 17)), default=0)
    before = {oid: o.remaining for oid, o in orders.items()}
    result = clear(m, now_ms=0)
    assert result.volume_wh == best
    filled: dict[str, int] = defaultdict(int)
    for t in result.trades:
        assert t.price_msat_per_kwh == result.price
        assert orders[t.sell_order].price <= result.price <= orders[t.buy_order].price
        assert t.buyer in CONSUMERS and t.seller in SUPPLIERS and t.energy_wh > 0
        filled[t.buy_order] += t.energy_wh
        filled[t.sell_order] += t.energy_wh
        if t.tier is Tier.CONTINUING:
            assert m.active.latest(t.buyer, t.seller) == t.renews
    assert sum(t.energy_wh for t in result.trades) == best
    for oid, o in orders.items():
        assert filled[oid] <= before[oid]
        assert (o.remaining if o.live else 0) + filled[oid] == before[oid]
    if result.price is None:
        return
    p = result.price
    # tier 1 then tier 3: an eligible preferred pair is never left with both sides open
    for d in orders.values():
        if d.side is not Side.DEMAND or d.price < p or not d.live:
            continue
        for s in orders.values():
            if s.side is not Side.SUPPLY or s.price > p or not s.live:
                continue
            preferred = (s.meter in m.active.suppliers_of(d.meter) or s.meter in d.partners
                         or d.meter in s.partners)
            assert not preferred, f"preferred pair left open: {d} / {s}"
    # price-time rationing among the rest: an open eligible order has no worse-ranked
    # order of its side that got a plain (tier 2/4) fill
    plain = {t.buy_order for t in result.trades if t.tier in (Tier.SPLIT, Tier.PRICE_TIME)}
    plain |= {t.sell_order for t in result.trades if t.tier in (Tier.SPLIT, Tier.PRICE_TIME)}
    for o in orders.values():
        if not o.live or not (o.price >= p if o.side is Side.DEMAND else o.price <= p):
            continue
        sign = -1 if o.side is Side.DEMAND else 1
        for x in plain:
            other = orders[x]
            if other.side is o.side and x != o.id:
                assert (other.price * sign, other.seq) < (o.price * sign, o.seq), f"{other} served before {o}"
    book_invariants(m, crossed_ok=True)


@FAST
@given(st.lists(st.tuples(st.booleans(), st.sampled_from(METERS), st.integers(1, 40), st.integers(1, 15)),
                min_size=1, max_size=40))
def test_periodic_clearing_with_prosumers_never_self_trades(specs: list[tuple]) -> None:
    m = Market()
    orders = {}
    for i, (is_supply, meter, energy, price) in enumerate(specs):
        o = Order(f"o{i}", meter, Side.SUPPLY if is_supply else Side.DEMAND, energy, price)
        orders[o.id] = o
        m.add(o)
    before = {oid: o.remaining for oid, o in orders.items()}
    result = clear(m, now_ms=0)
    filled: dict[str, int] = defaultdict(int)
    for t in result.trades:
        assert t.buyer != t.seller
        assert orders[t.sell_order].price <= t.price_msat_per_kwh == result.price <= orders[t.buy_order].price
        filled[t.buy_order] += t.energy_wh
        filled[t.sell_order] += t.energy_wh
    for oid, o in orders.items():
        assert (o.remaining if o.live else 0) + filled[oid] == before[oid]
    assert result.volume_wh == sum(t.energy_wh for t in result.trades)
    if result.price is not None:  # what is left eligible can only be a meter facing itself
        p = result.price
        open_d = {o.meter for o in orders.values() if o.live and o.side is Side.DEMAND and o.price >= p}
        open_s = {o.meter for o in orders.values() if o.live and o.side is Side.SUPPLY and o.price <= p}
        assert not open_d or not open_s or (len(open_d) == 1 and open_d == open_s)
    book_invariants(m, crossed_ok=True)
