"""Checks on order fields shared by the gRPC service and the offline CLI."""

from __future__ import annotations

import re
from collections.abc import Iterable

from p2pep.market.errors import InvalidOrder
from p2pep.market.model import (
    MAX_ENERGY_WH,
    MAX_ID_LEN,
    MAX_PARTNERS,
    MAX_PRICE_MSAT_PER_KWH,
    Order,
    Side,
)

_ID_RE = re.compile(rf"[A-Za-z0-9._:@/\-]{{1,{MAX_ID_LEN}}}\Z")


def check_id(field: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidOrder(field, "must be a non-empty string")
    if not _ID_RE.match(value):
        raise InvalidOrder(field, f"must be 1..{MAX_ID_LEN} characters of A-Z a-z 0-9 . _ : @ / -")
    return value


def check_side(value: object, field: str = "side") -> Side:
    if isinstance(value, Side):
        return value
    if isinstance(value, str) and value.lower() in ("supply", "demand"):
        return Side[value.upper()]
    if isinstance(value, int) and not isinstance(value, bool) and value in (1, 2):
        return Side(value)
    raise InvalidOrder(field, f"unknown side {value!r} (supply or demand)")


def check_positive_int(field: str, value: object, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidOrder(field, f"must be an integer, got {type(value).__name__}")
    if value <= 0:
        raise InvalidOrder(field, f"must be > 0, got {value}")
    if value > maximum:
        raise InvalidOrder(field, f"must be <= {maximum}, got {value}")
    return value


def check_partners(meter_id: str, partners: Iterable[object], field: str = "partners") -> frozenset[str]:
    out = []
    for i, p in enumerate(partners):
        out.append(check_id(f"{field}[{i}]", p))
        if p == meter_id:
            raise InvalidOrder(f"{field}[{i}]", "a meter cannot nominate itself")
    if len(out) > MAX_PARTNERS:
        raise InvalidOrder(field, f"at most {MAX_PARTNERS} partners")
    return frozenset(out)


def make_order(
    *,
    order_id: object,
    meter_id: object,
    side: object,
    energy_wh: object,
    price_msat_per_kwh: object,
    now_ms: int,
    expiry_ms: int | None = None,
    partners: Iterable[object] = (),
    renews: str | None = None,
) -> Order:
    """A validated :class:`Order`, or :class:`InvalidOrder` naming the first bad field."""
    oid = check_id("order_id", order_id)
    meter = check_id("meter_id", meter_id)
    s = check_side(side)
    energy = check_positive_int("energy_wh", energy_wh, MAX_ENERGY_WH)
    price = check_positive_int("price_msat_per_kwh", price_msat_per_kwh, MAX_PRICE_MSAT_PER_KWH)
    if expiry_ms is not None and expiry_ms <= now_ms:
        raise InvalidOrder("expiry", "is in the past")
    nominated = check_partners(meter, partners)
    if renews is not None and s is not Side.DEMAND:
        raise InvalidOrder("renews_contract_id", "only a demand can renew a contract")
    return Order(oid, meter, s, energy, price, expiry_ms, nominated, renews)
