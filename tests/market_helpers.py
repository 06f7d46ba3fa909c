"""Small builders shared by the market tests."""

from __future__ import annotations

from p2pep.market import Market, Order, Side


def sup(oid: str, meter: str, energy: int, price: int, **kw: object) -> Order:
    return Order(oid, meter, Side.SUPPLY, energy, price, **kw)  # type: ignore[arg-type]


def dem(oid: str, meter: str, energy: int, price: int, **kw: object) -> Order:
    return Order(oid, meter, Side.DEMAND, energy, price, **kw)  # type: ignore[arg-type]


def book_invariants(m: Market, crossed_ok: bool = False) -> None:
    """Indexes agree with each other and (continuous mode) no two meters' orders cross."""
    for side in (m.book.supply, m.book.demand):
        live = [o for o in side.orders.values()]
        assert all(o.live and o.remaining > 0 and o.side is side.side for o in live)
        assert side.volume_wh == sum(o.remaining for o in live)
        indexed = [o.id for v in side.by_meter.values() for o in v if o.live]
        assert sorted(indexed) == sorted(side.orders)
        assert side.meters() == {o.meter for o in live}
        in_levels = {o.id for level in side.levels.values() for o in level if o.live}
        assert in_levels == set(side.orders)
        assert sorted(side.heap) == sorted(side.levels)
    if crossed_ok:
        return
    asks = list(m.book.supply.orders.values())
    for b in m.book.demand.orders.values():
        for a in asks:
            if b.price >= a.price:
                assert a.meter == b.meter, f"crossed book: {a} vs {b}"
