"""Periodic clearing: a uniform-price double auction (pay-as-clear), vectorised with numpy.

1. **Price.** With D(p) the demand bidding at least p and S(p) the supply asking at most
   p, the matched volume at p is V(p) = min(D(p), S(p)). V only rises at ask prices and
   only falls just above bid prices, and it is unimodal; so the integer prices that
   maximise it form one interval [lo, hi] with lo an ask price and hi a bid price. The
   clearing price is its midpoint, rounded down: every matched order gets at least its
   limit and the surplus is split between the sides.
2. **Allocation.** Eligible are bids >= price and asks <= price; the short side is filled
   completely, the long side is rationed by tier, then price, then time: first tier-1
   pairs (consumer and supplier of an active contract), then tier-3 pairs (nominated
   partners), then everyone else in price-time order. That last step is one vectorised
   merge of the two sorted cumulative-quantity curves, so clearing a million orders is a
   few numpy sorts plus one pass over the filled orders to update the book.
3. Everything trades at the one price. A meter never trades with itself: a segment that
   would pair a meter's own bid and ask stays in the book (the volume drops by it).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from itertools import repeat
from operator import attrgetter

import numpy as np

from p2pep.market.matching import Market
from p2pep.market.model import Order, Side, Tier, Trade

_I64 = np.int64
_price = attrgetter("price")
_remaining = attrgetter("remaining")
_id = attrgetter("id")
_meter = attrgetter("meter")
_filled_before = attrgetter("filled_before")
_new_trade = partial(tuple.__new__, Trade)  # C-level: no Python frame per trade
_TIER_BY_CODE = [None, Tier.CONTINUING, Tier.SPLIT, Tier.NOMINATED, Tier.PRICE_TIME]


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Bulk steps allocate many acyclic objects; rescanning them would dominate."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@dataclass(slots=True)
class Clearing:
    """Result of one clearing. Trades are kept in columns and built on first access."""

    price: int | None  # None when nothing crosses
    volume_wh: int
    expired: list[Order] = field(default_factory=list)
    eligible_demand: int = 0
    eligible_supply: int = 0
    _pref: list[Trade] = field(default_factory=list)
    _cols: tuple[list[Order], list[Order], list[int], list[int], list[int], list[int]] | None = None
    _trades: list[Trade] | None = None

    @property
    def trades(self) -> list[Trade]:
        if self._trades is None:
            out = list(self._pref)
            if self._cols is not None:
                D, S, dl, sl, el, codes = self._cols
                with _gc_paused():
                    buys = list(map(D.__getitem__, dl))
                    sells = list(map(S.__getitem__, sl))
                    out.extend(map(_new_trade, zip(
                        map(_id, buys), map(_id, sells), map(_meter, buys), map(_meter, sells),
                        el, repeat(self.price), map(_TIER_BY_CODE.__getitem__, codes), repeat(None),
                    )))
            self._trades = out
        return self._trades

    @property
    def trade_count(self) -> int:
        return len(self._pref) + (len(self._cols[2]) if self._cols is not None else 0)


def _curves(prices: np.ndarray, qty: np.ndarray, descending: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Price-time order (stable sort of arrays already in time order), sorted keys
    (ascending; negated prices for bids) and prefix sums of quantity (leading 0)."""
    keys = -prices if descending else prices
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    cum = np.zeros(len(prices) + 1, _I64)
    np.cumsum(qty[order], dtype=_I64, out=cum[1:])
    return order, sk, cum


def _price_from_curves(
    bk: np.ndarray, bcum: np.ndarray, ak: np.ndarray, acum: np.ndarray
) -> tuple[int | None, int]:
    """``bk``: negated bid prices ascending, ``ak``: ask prices ascending."""
    if len(bk) == 0 or len(ak) == 0 or -int(bk[0]) < int(ak[0]):
        return None, 0
    bid_prices = -bk  # descending
    # V at every ask price a: S(a) = asks <= a, D(a) = bids >= a  (-bid <= -a)
    s_at_a = acum[np.searchsorted(ak, ak, "right")]
    d_at_a = bcum[np.searchsorted(bk, -ak, "right")]
    v_a = np.minimum(s_at_a, d_at_a)
    vmax = int(v_a.max())
    if vmax <= 0:
        return None, 0
    lo = int(ak[np.flatnonzero(v_a == vmax)[0]])
    s_at_b = acum[np.searchsorted(ak, bid_prices, "right")]
    d_at_b = bcum[np.searchsorted(bk, bk, "right")]
    v_b = np.minimum(s_at_b, d_at_b)
    hi = int(bid_prices[np.flatnonzero(v_b == vmax)[0]])  # bid_prices descending: first = highest
    return (lo + hi) // 2, vmax


def uniform_price(
    bid_prices: np.ndarray, bid_qty: np.ndarray, ask_prices: np.ndarray, ask_qty: np.ndarray
) -> tuple[int | None, int]:
    """``(price, volume)`` maximising matched volume; ``(None, 0)`` if the curves do not cross."""
    _, bk, bcum = _curves(np.asarray(bid_prices, _I64), np.asarray(bid_qty, _I64), True)
    _, ak, acum = _curves(np.asarray(ask_prices, _I64), np.asarray(ask_qty, _I64), False)
    return _price_from_curves(bk, bcum, ak, acum)


def _pref_pairs(
    market: Market, D: list[Order], S: list[Order], price: int, rem_d: np.ndarray, rem_s: np.ndarray
) -> list[tuple[int, int, int, Tier, str | None]]:
    """Tier 1 and 3 pairs among eligible orders, greedily, best demand first."""
    book = market.book
    active = market.active
    pref: dict[str, Order] = {}
    for consumer in active.by_consumer:
        pref.update((o.id, o) for o in book.demand.orders_of(consumer))
    for nominee, orders in book.nominated.items():
        for o in orders.values():
            if o.side is Side.DEMAND:
                pref[o.id] = o
            else:
                pref.update((x.id, x) for x in book.demand.orders_of(nominee))
    pref_d = sorted((o for o in pref.values() if o.price >= price), key=lambda o: (-o.price, o.seq))
    if not pref_d:
        return []
    d_index = {o.id: i for i, o in enumerate(D)}
    s_index = {o.id: i for i, o in enumerate(S)}
    out: list[tuple[int, int, int, Tier, str | None]] = []
    for d in pref_d:
        tiers: dict[str, Tier] = {m: Tier.CONTINUING for m in active.suppliers_of(d.meter)}
        for m in d.partners:
            tiers.setdefault(m, Tier.NOMINATED)
        cands = [
            (t, s.price, s.seq, s)
            for m, t in tiers.items()
            for s in book.supply.orders_of(m)
            if s.price <= price
        ]
        cands += [
            (Tier.NOMINATED, s.price, s.seq, s)
            for s in book.nominated.get(d.meter, {}).values()
            if s.side is Side.SUPPLY and s.meter not in tiers and s.meter != d.meter and s.price <= price
        ]
        cands.sort(key=lambda c: c[:3])
        i = d_index[d.id]
        for t, _, _, s in cands:
            j = s_index[s.id]
            q = int(min(rem_d[i], rem_s[j]))
            if q <= 0:
                continue
            renews = None
            if t is Tier.CONTINUING:
                if d.renews and active.pair(d.renews) == (d.meter, s.meter):
                    renews = d.renews
                else:
                    renews = active.latest(d.meter, s.meter)
            out.append((i, j, q, t, renews))
            rem_d[i] -= q
            rem_s[j] -= q
            if rem_d[i] == 0:
                break
    return out


def _pair_leftovers(
    D: list[Order], S: list[Order], d_order: np.ndarray, s_order: np.ndarray,
    left_d: np.ndarray, left_s: np.ndarray,
) -> list[tuple[int, int, int]]:
    """Greedy price-time pairing of eligible leftovers, skipping same-meter pairs.

    Only runs after self-trade segments were dropped, so one side's leftovers are just
    those few segments' quantities; the loop is short.
    """
    ld = d_order[left_d[d_order] > 0].tolist()
    ls = s_order[left_s[s_order] > 0].tolist()
    if len(ld) > len(ls):  # iterate over the short side
        outer, inner, left_o, left_i, so, si_ = ls, ld, left_s, left_d, S, D
        flip = True
    else:
        outer, inner, left_o, left_i, so, si_ = ld, ls, left_d, left_s, D, S
        flip = False
    out: list[tuple[int, int, int]] = []
    start = 0
    for a in outer:
        need = int(left_o[a])
        meter = so[a].meter
        while start < len(inner) and left_i[inner[start]] == 0:
            start += 1
        for b in inner[start:]:
            if need == 0:
                break
            have = int(left_i[b])
            if have == 0 or si_[b].meter == meter:
                continue
            q = min(need, have)
            need -= q
            left_i[b] -= q
            out.append((b, a, q) if flip else (a, b, q))
        left_o[a] = need
    return out


def clear(market: Market, now_ms: int) -> Clearing:
    """Clear the whole book at one price; matched orders leave the book or shrink.

    Relies on each side's order dict being in arrival (seq) order, which the book keeps
    (orders are inserted with increasing seq; see :meth:`Market.restore`).
    """
    with _gc_paused():
        return _clear(market, now_ms)


def _clear(market: Market, now_ms: int) -> Clearing:
    expired = market.expire(now_ms)
    book = market.book
    D = list(book.demand.orders.values())
    S = list(book.supply.orders.values())
    if not D or not S:
        return Clearing(None, 0, expired)
    nd, ns = len(D), len(S)
    dp = np.fromiter(map(_price, D), _I64, nd)
    dq = np.fromiter(map(_remaining, D), _I64, nd)
    sp = np.fromiter(map(_price, S), _I64, ns)
    sq = np.fromiter(map(_remaining, S), _I64, ns)
    d_order, bk, bcum = _curves(dp, dq, True)
    s_order, ak, acum = _curves(sp, sq, False)
    price, _ = _price_from_curves(bk, bcum, ak, acum)
    if price is None:
        return Clearing(None, 0, expired)
    d_order = d_order[: np.searchsorted(bk, -price, "right")]  # bids >= price
    s_order = s_order[: np.searchsorted(ak, price, "right")]  # asks <= price

    rem_d = dq.copy()
    rem_s = sq.copy()
    pref = _pref_pairs(market, D, S, price, rem_d, rem_s)

    cd = np.cumsum(rem_d[d_order], dtype=_I64)
    cs = np.cumsum(rem_s[s_order], dtype=_I64)
    total = min(int(cd[-1]) if len(cd) else 0, int(cs[-1]) if len(cs) else 0)
    if total > 0:
        # breakpoints: the union of both cumulative curves up to the volume (both are
        # sorted, so a stable sort is a linear merge)
        bps = np.concatenate((cd[cd <= total], cs[cs <= total]))
        bps.sort(kind="stable")
        keep = np.empty(len(bps), bool)
        keep[0] = True
        np.not_equal(bps[1:], bps[:-1], out=keep[1:])
        bps = bps[keep & (bps > 0)]
        starts = np.concatenate((np.zeros(1, _I64), bps[:-1]))
        di = d_order[np.searchsorted(cd, starts, "right")]
        si = s_order[np.searchsorted(cs, starts, "right")]
        e = bps - starts
    else:
        di = si = e = np.zeros(0, _I64)

    if book.demand.by_meter.keys() & book.supply.by_meter.keys():
        # a meter with orders on both sides: drop segments pairing it with itself, then
        # re-pair what they left with other meters' leftovers
        dl0, sl0 = di.tolist(), si.tolist()
        keep = np.fromiter((D[a].meter != S[b].meter for a, b in zip(dl0, sl0)), bool, len(dl0))
        if not keep.all():
            di, si, e = di[keep], si[keep], e[keep]
            left_d = rem_d.copy()
            left_s = rem_s.copy()
            np.subtract.at(left_d, di, e)
            np.subtract.at(left_s, si, e)
            extra = _pair_leftovers(D, S, d_order, s_order, left_d, left_s)
            if extra:
                xd, xs, xe = (np.asarray(c, _I64) for c in zip(*extra))
                di, si, e = np.concatenate((di, xd)), np.concatenate((si, xs)), np.concatenate((e, xe))

    fill_d = np.zeros(nd, _I64)
    fill_s = np.zeros(ns, _I64)
    np.add.at(fill_d, di, e)
    np.add.at(fill_s, si, e)
    ntr = np.bincount(di, minlength=nd)
    prior = np.zeros(nd, bool)
    pref_trades: list[Trade] = []
    for i, j, q, t, renews in pref:
        d, s = D[i], S[j]
        pref_trades.append(Trade(d.id, s.id, d.meter, s.meter, q, price, t, renews))
        fill_d[i] += q
        fill_s[j] += q
        ntr[i] += 1
    # tier 2: a demand served by several suppliers (in this clearing or before)
    touched = np.flatnonzero(ntr)
    prior[touched] = np.fromiter(map(_filled_before, map(D.__getitem__, touched.tolist())), bool, len(touched))
    codes = np.where((ntr >= 2) | prior, int(Tier.SPLIT), int(Tier.PRICE_TIME))

    # book update
    for side, orders, fill, before in ((book.demand, D, fill_d, dq), (book.supply, S, fill_s, sq)):
        full = np.flatnonzero((fill == before) & (fill > 0)).tolist()
        book.remove_filled(side, list(map(orders.__getitem__, full)))
        part = np.flatnonzero((fill > 0) & (fill < before)).tolist()
        for i in part:
            book.reduce(orders[i], int(fill[i]))

    cols = (D, S, di.tolist(), si.tolist(), e.tolist(), codes[di].tolist())
    return Clearing(
        price, int(fill_d.sum()), expired, len(d_order), len(s_order), pref_trades, cols
    )
