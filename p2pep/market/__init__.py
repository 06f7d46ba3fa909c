"""P2PEP's matching core: pure Python (numpy for batch clearing), no I/O.

* :class:`Market` — order book, active contracts and continuous pay-as-bid matching
  (:meth:`Market.submit`), with the priority tiers of :class:`Tier`.
* :func:`clear` — periodic uniform-price (pay-as-clear) double auction on the same book.
* :func:`make_order` — validated construction of an :class:`Order` (shared by the gRPC
  service and the ``p2pep market clear`` command).
"""

from p2pep.market.active_contracts import ActivePairs, contract_terms, terms_hash
from p2pep.market.auction import Clearing, clear, uniform_price
from p2pep.market.errors import (
    DuplicateOrder,
    InvalidOrder,
    MarketError,
    UnknownContract,
    UnknownOrder,
)
from p2pep.market.matching import Market, MatchResult
from p2pep.market.model import Order, Side, Tier, Trade
from p2pep.market.validation import make_order

__all__ = [
    "ActivePairs",
    "Clearing",
    "DuplicateOrder",
    "InvalidOrder",
    "Market",
    "MarketError",
    "MatchResult",
    "Order",
    "Side",
    "Tier",
    "Trade",
    "UnknownContract",
    "UnknownOrder",
    "clear",
    "contract_terms",
    "make_order",
    "terms_hash",
    "uniform_price",
]
