"""The market's value types: sides, tiers, orders and trades (integers only)."""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple


class Side(IntEnum):
    """Numbers equal ``p2pep.v1.Side``."""

    SUPPLY = 1
    DEMAND = 2

    @property
    def opposite(self) -> Side:
        return Side.DEMAND if self is Side.SUPPLY else Side.SUPPLY


class Tier(IntEnum):
    """Matching priority, best first; numbers equal ``p2pep.v1.Tier``.

    1. CONTINUING: the supply of a meter that already supplies this consumer under an
       active contract (and vice versa) is matched before anything else.
    2. SPLIT: a demand larger than any single offer is split across several suppliers,
       cheapest first, so the consumer's usage stays constant; such trades are labelled 2.
    3. NOMINATED: orders whose meter one side nominated as a partner come next.
    4. PRICE_TIME: then the rest of the book in price-time priority.
    """

    CONTINUING = 1
    SPLIT = 2
    NOMINATED = 3
    PRICE_TIME = 4


# Bounds keep every sum of a million orders inside int64 (numpy clearing) and reject
# obviously wrong input. 1 TWh per order; 10 BTC per kWh.
MAX_ENERGY_WH = 10**12
MAX_PRICE_MSAT_PER_KWH = 10**12
MAX_PARTNERS = 32
MAX_ID_LEN = 128
MAX_WINDOW_MS = 366 * 24 * 3600 * 1000  # a power order's window: at most a (leap) year

_NO_PARTNERS: frozenset[str] = frozenset()


class Order:
    """A resting or incoming order. ``remaining`` shrinks as it is matched.

    ``seq`` is the arrival sequence number (time priority), set by the market;
    ``expiry_ms`` is milliseconds since the epoch, or None for good-until-cancelled.
    A plain slotted class (not a dataclass): the market creates millions of these.
    """

    __slots__ = (
        "id", "meter", "side", "energy", "price", "expiry_ms", "partners", "renews",
        "remaining", "seq", "live", "uncovered", "filled_before",
    )

    def __init__(
        self,
        id: str,
        meter: str,
        side: Side,
        energy: int,
        price: int,
        expiry_ms: int | None = None,
        partners: frozenset[str] = _NO_PARTNERS,
        renews: str | None = None,
        remaining: int | None = None,
        seq: int = -1,
    ) -> None:
        self.id = id
        self.meter = meter
        self.side = side
        self.energy = energy
        self.price = price
        self.expiry_ms = expiry_ms
        self.partners = partners
        self.renews = renews
        self.remaining = energy if remaining is None else remaining
        self.seq = seq
        self.live = False  # in the book right now
        self.uncovered = False  # its meter was told nobody can supply it (demand)
        self.filled_before = self.remaining != energy  # had a fill already (tier 2 labels)

    def __repr__(self) -> str:
        return (
            f"Order({self.id!r}, {self.meter!r}, {self.side.name}, energy={self.energy}, "
            f"price={self.price}, remaining={self.remaining}, seq={self.seq}, live={self.live})"
        )


class Trade(NamedTuple):
    """One match: ``energy_wh`` from the seller's order to the buyer's at ``price``."""

    buy_order: str
    sell_order: str
    buyer: str
    seller: str
    energy_wh: int
    price_msat_per_kwh: int
    tier: Tier
    renews: str | None = None  # the active contract a tier-1 trade continues
