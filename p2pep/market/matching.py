"""The matching core: continuous pay-as-bid matching with priority tiers (pure, no I/O).

Continuous mode: an arriving order (the *taker*) is matched at once against the resting
orders (the *makers*) of the other side, each trade at the maker's limit price (so
every participant trades at a price it bid: pay-as-bid). Counterparties are taken in
tier order (see :class:`~p2pep.market.model.Tier`):

1. resting orders of meters with which the taker's meter has an active contract;
2. (label only) a demand that takes from more than one supplier is split, cheapest first;
3. resting orders of meters the taker nominated, or that nominated the taker's meter;
4. the rest of the book, best price first, then oldest first.

Tier 1 and 3 counterparties are used first even when dearer, but never beyond the
taker's limit. A meter never trades with itself. What is left of the taker rests in
the book (a demand with a residual is *uncovered* until supply appears).

Periodic mode (uniform price) is :func:`p2pep.market.auction.clear`, run on the same book.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field

from p2pep.market.active_contracts import ActivePairs
from p2pep.market.book import BookSide, OrderBook
from p2pep.market.errors import DuplicateOrder, UnknownContract, UnknownOrder
from p2pep.market.model import Order, Side, Tier, Trade

_CONTINUING = Tier.CONTINUING
_SPLIT = Tier.SPLIT
_NOMINATED = Tier.NOMINATED
_PRICE_TIME = Tier.PRICE_TIME
_DEMAND = Side.DEMAND


@dataclass(slots=True)
class MatchResult:
    order: Order  # the submitted order; ``remaining`` is what rests (0 if filled)
    trades: list[Trade]
    makers: list[Order]  # the resting counter-order of each trade (parallel to ``trades``)
    expired: list[Order] = field(default_factory=list)  # resting orders found expired on the way


class Market:
    """Order book + active contracts + the continuous matching rules."""

    def __init__(self) -> None:
        self.book = OrderBook()
        self.active = ActivePairs()
        self._ids: set[str] = set()
        self._next_seq = 1

    # ----------------------------------------------------------------- state
    def knows(self, order_id: str) -> bool:
        """Was an order with this id ever accepted (ids are never reused)?"""
        return order_id in self._ids

    def get(self, order_id: str) -> Order | None:
        return self.book.get(order_id)

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def _accept(self, o: Order) -> None:
        if o.id in self._ids:
            raise DuplicateOrder("order_id", f"order {o.id!r} already exists")
        if o.renews is not None:
            pair = self.active.pair(o.renews)
            if pair is None:
                raise UnknownContract("renews_contract_id", f"no active contract {o.renews!r}")
            if pair[0] != o.meter:
                raise UnknownContract("renews_contract_id", f"contract {o.renews!r} is not {o.meter!r}'s")
        self._ids.add(o.id)
        o.seq = self._next_seq
        self._next_seq += 1

    def check(self, o: Order) -> None:
        """Raise what :meth:`submit` would raise for ``o``, without changing anything."""
        if o.id in self._ids:
            raise DuplicateOrder("order_id", f"order {o.id!r} already exists")
        if o.renews is not None:
            pair = self.active.pair(o.renews)
            if pair is None or pair[0] != o.meter:
                raise UnknownContract("renews_contract_id", f"no active contract {o.renews!r} of {o.meter!r}")

    def add(self, o: Order) -> None:
        """Accept ``o`` and rest it without matching (periodic mode)."""
        self._accept(o)
        self.book.insert(o)

    def restore(self, o: Order) -> None:
        """Put back an order persisted earlier, keeping its ``seq`` (restart).

        Orders must be restored in ``seq`` order: each side's dict then stays in arrival
        order, which :func:`p2pep.market.auction.clear` relies on for time priority.
        """
        if o.id in self.book:
            raise DuplicateOrder("order_id", f"order {o.id!r} already restored")
        if o.seq < self._next_seq:
            raise ValueError(f"restore in seq order: {o.id!r} has seq {o.seq} < {self._next_seq}")
        self._ids.add(o.id)
        self._next_seq = max(self._next_seq, o.seq + 1)
        self.book.insert(o)

    def remember_ids(self, ids: Iterable[str], next_seq: int) -> None:
        """Ids of orders that are gone (filled, cancelled, expired) but must stay unique."""
        self._ids.update(ids)
        self._next_seq = max(self._next_seq, next_seq)

    def cancel(self, order_id: str, meter: str | None = None) -> Order:
        o = self.book.get(order_id)
        if o is None or (meter and o.meter != meter):
            raise UnknownOrder("order_id", f"no open order {order_id!r}" + (f" of meter {meter!r}" if meter else ""))
        self.book.unlink(o)
        return o

    def expire(self, now_ms: int) -> list[Order]:
        return self.book.pop_expired(now_ms)

    def open_contract(self, contract_id: str, consumer: str, supplier: str) -> None:
        self.active.open(contract_id, consumer, supplier)

    def close_contract(self, contract_id: str) -> bool:
        return self.active.close(contract_id)

    # -------------------------------------------------------------- matching
    def submit(self, o: Order, now_ms: int) -> MatchResult:
        """Accept ``o``, match it at once, rest what is left."""
        # _accept and the book insert are inlined: this is the hot path of continuous mode
        if o.id in self._ids or o.renews is not None:
            self.check(o)
        self._ids.add(o.id)
        o.seq = self._next_seq
        self._next_seq += 1
        trades: list[Trade] = []
        makers: list[Order] = []
        expired: list[Order] = []
        book = self.book
        if o.side is _DEMAND:
            opp, own = book.supply, book.demand
            pref = o.meter in self.active.by_consumer
            limit_key = o.price
        else:
            opp, own = book.demand, book.supply
            pref = o.meter in self.active.by_supplier
            limit_key = -o.price
        if pref or o.partners or o.meter in book.nominated:
            self._match_preferred(o, opp, trades, makers, expired, now_ms)
        heap = opp.heap
        if o.remaining and heap and heap[0] <= limit_key:
            self._walk(o, opp, trades, makers, expired, now_ms)
        if o.remaining:
            if o.expiry_ms is None and not o.partners:
                own.insert(o)
            else:
                book.insert(o)
        return MatchResult(o, trades, makers, expired)

    def _trade(self, taker: Order, maker: Order, qty: int, tier: Tier, renews: str | None) -> Trade:
        if taker.side is _DEMAND:
            return Trade(taker.id, maker.id, taker.meter, maker.meter, qty, maker.price, tier, renews)
        return Trade(maker.id, taker.id, maker.meter, taker.meter, qty, maker.price, tier, renews)

    def _match_preferred(
        self, o: Order, opp: BookSide, trades: list[Trade], makers: list[Order], expired: list[Order], now_ms: int
    ) -> None:
        """Tiers 1 and 3: active-contract partners first, then nominated ones."""
        demand = o.side is _DEMAND
        tiers: dict[str, Tier] = {}
        for m in self.active.suppliers_of(o.meter) if demand else self.active.consumers_of(o.meter):
            tiers[m] = _CONTINUING
        for m in o.partners:
            tiers.setdefault(m, _NOMINATED)
        sign = opp.sign
        limit_key = o.price if demand else -o.price
        cands: list[tuple[Tier, int, int, Order]] = []
        for m, t in tiers.items():
            for r in opp.by_meter.get(m, ()):
                if r.live and r.price * sign <= limit_key:
                    cands.append((t, r.price * sign, r.seq, r))
        for r in self.book.nominated.get(o.meter, {}).values():
            if r.side is opp.side and r.meter not in tiers and r.meter != o.meter and r.price * sign <= limit_key:
                cands.append((_NOMINATED, r.price * sign, r.seq, r))
        if not cands:
            return
        cands.sort(key=lambda c: c[:3])
        book = self.book
        for t, _, _, r in cands:
            if not r.live:
                continue
            if r.expiry_ms is not None and r.expiry_ms <= now_ms:
                book.unlink(r)
                expired.append(r)
                continue
            q = o.remaining if o.remaining < r.remaining else r.remaining
            renews = None
            if t is _CONTINUING:
                consumer, supplier = (o.meter, r.meter) if demand else (r.meter, o.meter)
                if o.renews is not None and self.active.pair(o.renews) == (consumer, supplier):
                    renews = o.renews
                else:
                    renews = self.active.latest(consumer, supplier)
            trades.append(self._trade(o, r, q, t, renews))
            makers.append(r)
            o.remaining -= q
            book.reduce(r, q)
            if not o.remaining:
                break
        if trades:
            o.filled_before = True

    def _walk(
        self, o: Order, opp: BookSide, trades: list[Trade], makers: list[Order], expired: list[Order], now_ms: int
    ) -> None:
        """Tiers 2 and 4: walk the other side best level first, oldest order first."""
        demand = o.side is _DEMAND
        heap = opp.heap
        levels = opp.levels
        sign = opp.sign
        limit_key = o.price if demand else -o.price
        meter = o.meter
        rem = o.remaining
        first_trade = len(trades)
        stash: list[int] = []
        book = self.book
        unlink = opp.unlink
        volume = 0
        while rem and heap:
            key = heap[0]
            if key > limit_key:
                break
            level = levels[key]
            while level and not level[0].live:
                level.popleft()
            if not level:
                heapq.heappop(heap)
                del levels[key]
                continue
            price = key * sign
            for r in level:
                if not r.live or r.meter == meter:
                    continue
                if r.expiry_ms is not None and r.expiry_ms <= now_ms:
                    book.unlink(r)
                    expired.append(r)
                    continue
                q = rem if rem < r.remaining else r.remaining
                if demand:
                    trades.append(Trade(o.id, r.id, meter, r.meter, q, price, _PRICE_TIME, None))
                else:
                    tier = _SPLIT if r.filled_before else _PRICE_TIME
                    trades.append(Trade(r.id, o.id, r.meter, meter, q, price, tier, None))
                makers.append(r)
                rem -= q
                volume += q
                r.filled_before = True
                r.remaining -= q
                if not r.remaining:
                    if r.partners:
                        book.unlink(r)
                    else:
                        unlink(r)
                if not rem:
                    break
            while level and not level[0].live:
                level.popleft()
            if not level:
                heapq.heappop(heap)
                del levels[key]
            elif rem:  # only the taker's own meter's orders are left here: look further
                stash.append(heapq.heappop(heap))
        for key in stash:
            heapq.heappush(heap, key)
        opp.volume_wh -= volume
        o.remaining = rem
        if demand and len(trades) > 1:
            # the demand took from several suppliers: tier 2 for the price-time part
            for i in range(first_trade, len(trades)):
                if trades[i].tier is _PRICE_TIME:
                    trades[i] = trades[i]._replace(tier=_SPLIT)
        if len(trades) > first_trade:
            o.filled_before = True
