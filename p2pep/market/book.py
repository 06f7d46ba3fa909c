"""The order book: two sides of price levels in price-time priority.

Layout, chosen for speed in pure Python:

* each side keeps ``levels``: a dict from a *key* to a FIFO (deque) of orders, and
  ``heap``: a min-heap of those keys. Supply keys are the price, demand keys the negated
  price, so ``heap[0]`` is always the best level and a counter-order crosses a level
  iff ``key <= limit_key``. A key is in the heap iff it is in ``levels``.
* removal is lazy: a filled, cancelled or expired order is marked ``live = False``
  and unlinked from the id index in O(1); its level entry is dropped when it reaches
  the front of the FIFO, and a level is deleted when it is found empty at the top.
  The per-meter index (for the tiers) is append-only too: lookups skip dead orders,
  and it is compacted in one pass once it holds four times more dead entries than live
  orders (amortised O(1) per removal).

The book only stores; matching lives in :mod:`p2pep.market.matching`.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator

from p2pep.market.errors import UnknownOrder
from p2pep.market.model import Order, Side


class BookSide:
    __slots__ = ("side", "sign", "levels", "heap", "orders", "by_meter", "volume_wh", "dead_in_index")

    def __init__(self, side: Side) -> None:
        self.side = side
        self.sign = 1 if side is Side.SUPPLY else -1
        self.levels: dict[int, deque[Order]] = {}
        self.heap: list[int] = []
        self.orders: dict[str, Order] = {}
        self.by_meter: dict[str, list[Order]] = {}  # may hold dead orders; see orders_of()
        self.volume_wh = 0
        self.dead_in_index = 0

    def key(self, price: int) -> int:
        return price * self.sign

    def insert(self, o: Order) -> None:
        key = o.price * self.sign
        level = self.levels.get(key)
        if level is None:
            level = self.levels[key] = deque()
            heapq.heappush(self.heap, key)
        level.append(o)
        self.orders[o.id] = o
        m = self.by_meter.get(o.meter)
        if m is None:
            self.by_meter[o.meter] = [o]
        else:
            m.append(o)
        self.volume_wh += o.remaining
        o.live = True

    def unlink(self, o: Order) -> None:
        """Take ``o`` out of the id index (its level and meter entries go lazily)."""
        o.live = False
        del self.orders[o.id]
        self.volume_wh -= o.remaining
        self.dead_in_index += 1
        if self.dead_in_index > 1024 and self.dead_in_index > 4 * len(self.orders):
            self.compact_meter_index()

    def orders_of(self, meter: str) -> list[Order]:
        """Live orders of ``meter`` on this side, oldest first."""
        return [o for o in self.by_meter.get(meter, ()) if o.live]

    def meters(self) -> set[str]:
        """Meters with live orders on this side."""
        return {m for m, lst in self.by_meter.items() if any(o.live for o in lst)}

    def compact_meter_index(self) -> None:
        index = self.by_meter
        for meter, lst in list(index.items()):
            live = [o for o in lst if o.live]
            if live:
                lst[:] = live
            else:
                del index[meter]
        self.dead_in_index = 0

    def levels_best_first(self) -> Iterator[tuple[int, int, int]]:
        """``(price, energy_wh, orders)`` of non-empty levels, best first (O(L log L))."""
        for key in sorted(self.levels):
            energy = count = 0
            for o in self.levels[key]:
                if o.live:
                    energy += o.remaining
                    count += 1
            if count:
                yield key * self.sign, energy, count


class OrderBook:
    """Both sides plus the indexes the tiers and expiry need."""

    def __init__(self) -> None:
        self.supply = BookSide(Side.SUPPLY)
        self.demand = BookSide(Side.DEMAND)
        # meter -> live orders (either side) that nominated it as a partner
        self.nominated: dict[str, dict[str, Order]] = {}
        self._expiries: list[tuple[int, int, Order]] = []

    def side(self, side: Side) -> BookSide:
        return self.supply if side is Side.SUPPLY else self.demand

    def __len__(self) -> int:
        return len(self.supply.orders) + len(self.demand.orders)

    def __contains__(self, order_id: str) -> bool:
        return order_id in self.supply.orders or order_id in self.demand.orders

    def get(self, order_id: str) -> Order | None:
        return self.supply.orders.get(order_id) or self.demand.orders.get(order_id)

    def orders(self) -> Iterator[Order]:
        yield from self.supply.orders.values()
        yield from self.demand.orders.values()

    def insert(self, o: Order) -> None:
        (self.supply if o.side is Side.SUPPLY else self.demand).insert(o)
        if o.expiry_ms is not None:
            heapq.heappush(self._expiries, (o.expiry_ms, o.seq, o))
        for p in o.partners:
            self.nominated.setdefault(p, {})[o.id] = o

    def unlink(self, o: Order) -> None:
        (self.supply if o.side is Side.SUPPLY else self.demand).unlink(o)
        for p in o.partners:
            d = self.nominated[p]
            del d[o.id]
            if not d:
                del self.nominated[p]

    def reduce(self, o: Order, qty: int) -> None:
        """A resting order was matched for ``qty``; unlink it when it is used up."""
        o.remaining -= qty
        o.filled_before = True
        if o.side is Side.SUPPLY:
            self.supply.volume_wh -= qty
        else:
            self.demand.volume_wh -= qty
        if o.remaining == 0:
            self.unlink(o)

    def remove_filled(self, side: BookSide, filled: list[Order]) -> None:
        """Bulk :meth:`reduce` to zero of many orders of one side (auction clearing)."""
        orders = side.orders
        total = 0
        bulk = len(filled) * 4 > len(orders)  # cheaper to rebuild the id index than delete
        for o in filled:
            total += o.remaining
            o.remaining = 0
            o.live = False
            o.filled_before = True
            if not bulk:
                del orders[o.id]
            if o.partners:
                for p in o.partners:
                    d = self.nominated[p]
                    del d[o.id]
                    if not d:
                        del self.nominated[p]
        if bulk:  # keeps arrival order
            side.orders = orders = {k: o for k, o in orders.items() if o.live}
        side.volume_wh -= total
        side.dead_in_index += len(filled)
        if side.dead_in_index > 1024 and side.dead_in_index > 4 * len(orders):
            side.compact_meter_index()

    def remove(self, order_id: str) -> Order:
        o = self.get(order_id)
        if o is None:
            raise UnknownOrder("order_id", f"no open order {order_id!r}")
        self.unlink(o)
        return o

    def pop_expired(self, now_ms: int) -> list[Order]:
        """Unlink and return every live order with ``expiry_ms <= now_ms``."""
        out: list[Order] = []
        heap = self._expiries
        while heap and heap[0][0] <= now_ms:
            o = heapq.heappop(heap)[2]
            if o.live:
                self.unlink(o)
                out.append(o)
        return out
