"""Between protobuf messages and the matching core, with input validation.

Every check raises a :class:`~p2pep.market.MarketError` whose ``field`` is the path
of the bad field in the request (``order.energy_wh``, ``orders[3].side``...).
"""

from __future__ import annotations

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from p2pep.market import InvalidOrder, Order, Side
from p2pep.market.model import MAX_ENERGY_WH, MAX_PRICE_MSAT_PER_KWH, MAX_WINDOW_MS
from p2pep.market.validation import check_id, check_partners, check_positive_int
from p2pep.pbconv import duration_ms, enum_value, ms_ts, ts_ms
from p2pep.refusals import InvalidArgument
from p2pep.v1 import common_pb2

SIDE_NAMES = {common_pb2.SIDE_SUPPLY: Side.SUPPLY, common_pb2.SIDE_DEMAND: Side.DEMAND}


class ServiceOrder(Order):
    """A core order plus what the service keeps about it."""

    __slots__ = ("accepted_ms", "window_ms")

    accepted_ms: int
    window_ms: int | None


def time_ms(ts: Timestamp, field: str) -> int:
    """A request's Timestamp in ms; a time outside years 1..9999 is an :class:`InvalidOrder`."""
    try:
        return ts_ms(ts, field)
    except InvalidArgument as e:
        raise InvalidOrder(e.field, e.message) from None


def window_ms_of(d: Duration, field: str) -> int:
    """A power order's window in ms: 1 ms .. :data:`MAX_WINDOW_MS` (so a contract's end,
    now + window, always fits the store and a Timestamp)."""
    try:
        ms = duration_ms(d, field)
    except InvalidArgument as e:
        raise InvalidOrder(e.field, e.message) from None
    if ms <= 0:
        raise InvalidOrder(field, "must be > 0")
    if ms > MAX_WINDOW_MS:
        raise InvalidOrder(field, f"must be at most {MAX_WINDOW_MS} ms, got {ms}")
    return ms


def parse_side(value: common_pb2.Side.ValueType, field: str, expected: Side | None) -> Side:
    """``expected`` is the side implied by the RPC (SubmitSupply/SubmitDemand), if any."""
    if value == common_pb2.SIDE_UNSPECIFIED and expected is not None:
        return expected
    side = SIDE_NAMES.get(value)
    if side is None:
        name = common_pb2.Side.Name(value) if value in common_pb2.Side.values() else str(value)
        raise InvalidOrder(field, f"unknown side {name} (SIDE_SUPPLY or SIDE_DEMAND)")
    if expected is not None and side is not expected:
        raise InvalidOrder(field, f"this call takes {expected.name.lower()} orders, got {common_pb2.Side.Name(value)}")
    return side


def parse_order(msg: common_pb2.Order, path: str, expected: Side | None, now_ms: int) -> ServiceOrder:
    """Validate a submitted order (output-only fields are ignored)."""
    oid = check_id(path + "order_id", msg.order_id)
    meter = check_id(path + "meter_id", msg.meter_id)
    side = parse_side(msg.side, path + "side", expected)
    window_ms: int | None = None
    which = msg.WhichOneof("amount")
    if which == "energy_wh":
        energy = check_positive_int(path + "energy_wh", msg.energy_wh, MAX_ENERGY_WH)
    elif which == "power":
        power = check_positive_int(path + "power.power_w", msg.power.power_w, MAX_ENERGY_WH)
        if not msg.power.HasField("window"):
            raise InvalidOrder(path + "power.window", "must be > 0")
        window_ms = window_ms_of(msg.power.window, path + "power.window")
        energy = power * window_ms // 3_600_000
        if energy < 1:
            raise InvalidOrder(path + "power", "power over window is less than 1 Wh")
        check_positive_int(path + "power", energy, MAX_ENERGY_WH)
    else:
        raise InvalidOrder(path + "energy_wh", "required (or power)")
    price = check_positive_int(path + "price_msat_per_kwh", msg.price_msat_per_kwh, MAX_PRICE_MSAT_PER_KWH)
    expiry_ms: int | None = None
    if msg.HasField("expiry"):
        expiry_ms = time_ms(msg.expiry, path + "expiry")
        if expiry_ms <= now_ms:
            raise InvalidOrder(path + "expiry", "is in the past")
    partners = check_partners(meter, msg.partners, path + "partners")
    renews: str | None = None
    if msg.renews_contract_id:
        if side is not Side.DEMAND:
            raise InvalidOrder(path + "renews_contract_id", "only a demand can renew a contract")
        renews = check_id(path + "renews_contract_id", msg.renews_contract_id)
    o = ServiceOrder(oid, meter, side, energy, price, expiry_ms, partners, renews)
    o.accepted_ms = now_ms
    o.window_ms = window_ms
    return o


def order_msg(o: ServiceOrder, remaining: int | None = None) -> common_pb2.Order:
    """The order as the matcher holds it; the amount is always given as ``energy_wh``."""
    msg = common_pb2.Order(
        order_id=o.id,
        meter_id=o.meter,
        side=enum_value(common_pb2.Side, int(o.side)),
        price_msat_per_kwh=o.price,
        partners=sorted(o.partners),
        renews_contract_id=o.renews or "",
        remaining_wh=o.remaining if remaining is None else remaining,
        accepted=ms_ts(o.accepted_ms),
        seq=o.seq,
        energy_wh=o.energy,
    )
    if o.expiry_ms is not None:
        msg.expiry.CopyFrom(ms_ts(o.expiry_ms))
    return msg
