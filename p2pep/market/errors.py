"""Errors of the matching core; each names the offending field and is a refusal with its status."""

from __future__ import annotations

from p2pep.refusals import Refused


class MarketError(Refused):
    """Base class. ``field`` is the input field at fault (e.g. ``energy_wh``)."""

    status = "INVALID_ARGUMENT"

    def prefixed(self, prefix: str) -> MarketError:
        """The same error with its field under ``prefix`` (e.g. ``orders[3].``)."""
        return type(self)(prefix + self.field, self.message)


class InvalidOrder(MarketError):
    """A field has a value the market cannot accept (INVALID_ARGUMENT)."""


class DuplicateOrder(MarketError):
    """The order id is already in use (ALREADY_EXISTS)."""

    status = "ALREADY_EXISTS"


class UnknownOrder(MarketError):
    """No live order with that id (NOT_FOUND)."""

    status = "NOT_FOUND"


class UnknownContract(MarketError):
    """No contract with that id, or not an active one (NOT_FOUND)."""

    status = "NOT_FOUND"
